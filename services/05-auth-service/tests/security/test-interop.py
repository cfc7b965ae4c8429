#!/usr/bin/python3
"""test-interop.py BIN - auth-service against independent implementations.

  test-interop.py build/bin/05-auth-service

Starts the service (authsvc.py; SQLite in a temporary DATA_DIR) and checks:
  1. bcrypt (python3-passlib): hashes of the $2b$, $2a$ and $2y$ kinds imported through
     POST /api/v1/auth/users/import {email, password_hash} (as the bootstrap super_admin) log
     in with their password; a wrong password neither logs in nor touches the stored hash;
     the first success replaces it with an Argon2id PHC string (m=19456, t=2, p=1; read from
     the SQLite file), which the next login verifies and keeps; a bcrypt hash of a cost the
     service refuses to compute ($2b$31$) is a quick 401, not minutes of CPU;
  2. client credentials (RFC 6749 §2.3.1/§4.4) with HTTP Basic built by the standard library:
     the token verifies with python3-jwt against the JWKS, sub = client_id, role service;
  3. TOTP (RFC 6238) with python3-pyotp as the authenticator app: the otpauth URI parses
     (issuer, account), a code from pyotp enables MFA, login then needs a code; a code is
     usable once (its step is spent); the next step's code works; a recovery code works once;
     DELETE /mfa/totp turns it off. Skipped with a message while /mfa/totp answers 503.
Prints one line per check and "N checks, N failed"; exits 1 if any failed.
"""

import base64
import json
import os
import re
import sqlite3
import sys
import time

import jwt
import pyotp
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from passlib.hash import bcrypt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authsvc  # noqa: E402

results = []
ARGON2_RE = re.compile(r"^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")


def check(ok, what):
    results.append((ok, what))
    print(("ok   " if ok else "FAIL ") + what)
    return ok


def stored_hash(svc, email):
    db = sqlite3.connect("file:%s?mode=ro" % svc.db_path, uri=True)
    try:
        row = db.execute("SELECT password_hash FROM credentials WHERE email = ?",
                         (email,)).fetchone()
        return row[0] if row else None
    finally:
        db.close()


def login(svc, email, pw, **extra):
    body = {"email": email, "password": pw}
    body.update(extra)
    return svc.api("POST", "/login", body, source=svc.fresh_source())


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    svc = authsvc.Service(os.path.abspath(sys.argv[1]))
    try:
        svc.start()
        root = svc.root_token()
        bcrypt_import(svc, root)
        client_credentials(svc, root)
        totp(svc)
        svc.stop()
    except authsvc.Failure as e:
        check(False, str(e))
    finally:
        failed = sum(1 for ok, _ in results if not ok)
        if failed:
            print("server log (last 20 lines):\n" + svc.log_tail(20))
        svc.cleanup()
    print("%d checks, %d failed" % (len(results), failed))
    return 1 if failed else 0


def bcrypt_import(svc, root):
    for ident, rounds in (("2b", 12), ("2a", 10), ("2y", 10)):
        email = "legacy-%s-%s@example.com" % (ident, os.urandom(4).hex())
        pw = "Legacy pässword %s!" % ident
        h = bcrypt.using(rounds=rounds, ident=ident).hash(pw)
        r = svc.api("POST", "/users/import", {"email": email, "password_hash": h}, token=root)
        if not check(r.status == 201, "import a $%s$ cost-%d bcrypt hash: 201 (%r)"
                     % (ident, rounds, r)):
            continue
        check(stored_hash(svc, email) == h, "$%s$: stored as given until the first login" % ident)
        r = login(svc, email, pw + "x")
        check(r.status == 401, "$%s$: a wrong password is a 401 (%d)" % (ident, r.status))
        check(stored_hash(svc, email) == h, "$%s$: a wrong password leaves the hash alone"
              % ident)
        r = login(svc, email, pw)
        check(r.status == 200, "$%s$: the password logs in (%d)" % (ident, r.status))
        up = stored_hash(svc, email)
        check(bool(up and ARGON2_RE.match(up)),
              "$%s$: after the login the stored hash is Argon2id m=19456,t=2,p=1 (%s)"
              % (ident, (up or "")[:32]))
        r = login(svc, email, pw)
        check(r.status == 200 and stored_hash(svc, email) == up,
              "$%s$: the next login verifies the Argon2id hash and keeps it (%d)"
              % (ident, r.status))
        r = login(svc, email, "Legacy pässword")
        check(r.status == 401, "$%s$: and refuses a wrong password (%d)" % (ident, r.status))

    # A cost the service refuses to compute (2^31 rounds) is refused quickly.
    email = "costly-%s@example.com" % os.urandom(4).hex()
    pw = "costly-password"
    h = bcrypt.using(rounds=4).hash(pw)
    h31 = "$2b$31$" + h[7:]
    r = svc.api("POST", "/users/import", {"email": email, "password_hash": h31}, token=root)
    if r.status == 201:
        t = time.monotonic()
        r = login(svc, email, pw)
        dt = time.monotonic() - t
        check(r.status == 401 and dt < 2,
              "a $2b$31$ hash is not computed: 401 in %.2f s (%d)" % (dt, r.status))
    else:
        check(r.status == 422, "a $2b$31$ hash is refused at import (%r)" % r)


def client_credentials(svc, root):
    cid = "interop-%s" % os.urandom(4).hex()
    r = svc.api("POST", "/clients", {"client_id": cid}, token=root)
    if not check(r.status == 201, "create client %s: 201 (%r)" % (cid, r)):
        return
    secret = r.json["client_secret"]
    basic = base64.b64encode(("%s:%s" % (cid, secret)).encode()).decode()
    r = svc.request("POST", authsvc.PREFIX + "/token", raw=b"grant_type=client_credentials",
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             "Authorization": "Basic " + basic})
    if not check(r.status == 200 and r.json.get("token_type") == "Bearer",
                 "client credentials with HTTP Basic: 200 (%r)" % r):
        return
    tok = r.json["access_token"]
    hdr = jwt.get_unverified_header(tok)
    jwks = svc.api("GET", "/jwks").json
    k = next((k for k in jwks["keys"] if k["kid"] == hdr.get("kid")), None)
    if not check(k is not None, "the service token's kid is in the JWKS"):
        return
    pub = (ECAlgorithm if k["kty"] == "EC" else RSAAlgorithm).from_jwk(json.dumps(k))
    try:
        claims = jwt.decode(tok, pub, algorithms=[hdr["alg"]], audience="gravity",
                            issuer="gravity", options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError as e:
        check(False, "python3-jwt verifies the service token: %s" % e)
        return
    check(hdr.get("typ") == "at+jwt", "service token typ at+jwt (%r)" % hdr.get("typ"))
    check(claims["sub"] == cid and claims["roles"] == ["service"]
          and "events:write" in claims["permissions"],
          "service token: sub %r, roles %r, permissions %r" % (claims["sub"], claims["roles"],
                                                                claims["permissions"]))
    wrong = base64.b64encode(("%s:%s" % (cid, secret + "x")).encode()).decode()
    r = svc.request("POST", authsvc.PREFIX + "/token", raw=b"grant_type=client_credentials",
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             "Authorization": "Basic " + wrong})
    check(r.status == 401 and (r.json or {}).get("type") == "urn:gravity:problem:invalid_client",
          "a wrong Basic secret: 401 invalid_client (%d)" % r.status)


def totp(svc):
    email, pw, _ = svc.register()
    access = svc.login(email, pw, source=svc.fresh_source())["access_token"]
    r = svc.api("POST", "/mfa/totp", token=access)
    if r.status == 503:
        print("skip TOTP: POST /mfa/totp answers 503 (%s)" % (r.json or {}).get("detail"))
        return
    if not check(r.status == 201, "enrol: 201 (%r)" % r):
        return
    secret, uri, codes = r.json["secret"], r.json["otpauth_uri"], r.json["recovery_codes"]
    check(r.header("Cache-Control") == "no-store", "the enrolment is not cached")
    app = pyotp.parse_uri(uri)
    check(app.secret == secret and app.issuer == "gravity" and app.name == email,
          "pyotp reads the otpauth URI: issuer %r, account %r" % (app.issuer, app.name))
    check(app.digits == 6 and app.interval == 30, "6 digits, 30 s steps")
    check(len(codes) == 10 and len(set(codes)) == 10, "ten distinct recovery codes")
    bad = "%06d" % ((int(app.now()) + 500000) % 1000000)
    r = svc.api("POST", "/mfa/totp/verify", {"code": bad}, token=access)
    check(r.status == 422 and (r.json or {}).get("type") == "urn:gravity:problem:invalid_totp",
          "verify with a wrong code: 422 invalid_totp (%r)" % r)
    now = time.time()
    code = app.at(now)
    r = svc.api("POST", "/mfa/totp/verify", {"code": code}, token=access)
    if not check(r.status == 200 and r.json == {"enabled": True},
                 "verify with pyotp's code: 200 {enabled: true} (%r)" % r):
        return
    me = svc.api("GET", "/me", token=access).json
    check(me.get("mfa_enabled") is True, "/me shows mfa_enabled")
    r = login(svc, email, pw)
    check(r.status == 401 and (r.json or {}).get("type") == "urn:gravity:problem:mfa_required",
          "login without a code: 401 mfa_required (%d)" % r.status)
    r = login(svc, email, pw, totp=code)
    check(r.status == 401 and (r.json or {}).get("type") == "urn:gravity:problem:invalid_totp",
          "the code spent by verify is refused in its step: 401 invalid_totp (%d)" % r.status)
    nxt = app.at(now + 30)
    r = login(svc, email, pw, totp=nxt)
    check(r.status == 200, "the next step's code logs in (one step of drift) (%d)" % r.status)
    r = login(svc, email, pw, totp=nxt)
    check(r.status == 401, "the same code again is refused (%d)" % r.status)
    r = login(svc, email, "wrong-password", totp=app.at(now + 60))
    check(r.status == 401 and (r.json or {}).get("type") ==
          "urn:gravity:problem:invalid_credentials", "a good code with a wrong password: "
          "invalid_credentials (%d)" % r.status)
    r = login(svc, email, pw, totp=codes[0])
    check(r.status == 200, "a recovery code logs in (%d)" % r.status)
    r = login(svc, email, pw, totp=codes[0])
    check(r.status == 401, "the recovery code works once (%d)" % r.status)
    r = svc.api("DELETE", "/mfa/totp", {"code": codes[1]}, token=access)
    check(r.status == 204, "DELETE /mfa/totp with a recovery code: 204 (%r)" % r)
    r = login(svc, email, pw)
    check(r.status == 200, "without MFA the password alone logs in again (%d)" % r.status)


if __name__ == "__main__":
    sys.exit(main())
