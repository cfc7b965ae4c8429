#!/usr/bin/python3
"""test-jwt-attacks.py BIN - forged and tampered access tokens against auth-service.

  test-jwt-attacks.py build/bin/05-auth-service

Starts the service (authsvc.py: PORT=0, SQLite in a temporary DATA_DIR, an unreachable bus),
registers and logs in an account, then sends every token below to BOTH GET /api/v1/auth/me (as
the bearer token) and POST /api/v1/auth/validate-token (as {"token": ...}); each must be
refused with a 401 application/problem+json. Nothing may be accepted.

Most forgeries are built two ways. Without any key (alg none, HMAC with the public key,
attacker keys, header URLs, tampered bytes), and WITH the service's real signing key: the test
knows AUTH_KEY_SECRET, so, like an insider holding the database and the secret, it opens the
sealed private key from signing_keys (AES-256-GCM under SHA-256 of the secret, secrets.c) and
signs tokens that carry exactly one defect each (expired, wrong aud, crit, duplicated alg,
DER signature...). A positive control signed the same way must be accepted, which proves those
tokens are refused for their defect and not for their signature.

Also checked: the service's own access token verifies with python3-jwt against the published
JWKS (iss, aud, exp, typ at+jwt, the claims of decision 10); after a key rotation a new token
carries the new kid; header URLs (jku, x5u) are never fetched; the key of JWKS_URL, which the
service must ignore (it verifies its own tokens), signs nothing acceptable; no token reaches
the log; and the refresh-token grace window (decision 20) as far as it can be tested without a
test clock: within 10 s a rotated token returns the same child, even after that child was
itself rotated; after 10 s its reuse revokes the whole session (awaited by polling, at most
15 s).

Prints "N forged tokens, 0 accepted" and exits 1 on any acceptance or failed check.
Needs python3-jwt and python3-cryptography (Debian).
"""

import base64
import datetime
import hashlib
import http.client
import http.server
import json
import os
import sqlite3
import sys
import threading
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authsvc  # noqa: E402

KEY_SECRET = "test-key-secret-of-at-least-32-bytes!!"
ISS = AUD = "gravity"

failures = []
notes = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL " + what)
    return ok


# ---- JWS building blocks ----------------------------------------------------------------------

def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def enc(obj):
    """A JSON part: a dict is dumped compactly, str/bytes are taken as the exact JSON text."""
    if isinstance(obj, dict):
        obj = json.dumps(obj, separators=(",", ":"))
    if isinstance(obj, str):
        obj = obj.encode()
    return b64(obj)


def es256_raw(priv, data):
    r, s = decode_dss_signature(priv.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_der(priv, data):
    return priv.sign(data, ec.ECDSA(hashes.SHA256()))


def rs256(priv, data):
    return priv.sign(data, padding.PKCS1v15(), hashes.SHA256())


def hmac(alg, key, data):
    import hmac as h
    return h.new(key, data, {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
                             "HS512": hashlib.sha512}[alg]).digest()


def token(header, payload, signer=None, sig=None):
    """header.payload.signature; @signer(signing_input) makes the signature, or @sig (bytes or
    an already-encoded str) is used as is."""
    si = enc(header) + "." + enc(payload)
    if signer is not None:
        sig = signer(si.encode())
    if sig is None:
        sig = b""
    return si + "." + (sig if isinstance(sig, str) else b64(sig))


def flip(s, i, bit=1):
    """@s with one bit flipped in the base64url character at @i (stays in the alphabet)."""
    alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = alpha[alpha.index(s[i]) ^ bit]
    return s[:i] + c + s[i + 1:]


# ---- the attacker's web server (jku / x5u targets) -----------------------------------------

class Attacker:
    """Serves the attacker's JWKS and certificate on 127.0.0.1 and counts requests."""

    def __init__(self, jwks, pem):
        hits = self.hits = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = pem if self.path.endswith(".pem") else json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


# ---- keys ------------------------------------------------------------------------------------

def service_private_keys(db_path):
    """kid -> (alg, private key) of the service's signing keys, opened with the KEK."""
    kek = hashlib.sha256(KEY_SECRET.encode()).digest()
    out = {}
    db = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True)
    try:
        for kid, alg, sealed in db.execute("SELECT kid, alg, private_enc FROM signing_keys"):
            raw = unb64(sealed)
            pem = AESGCM(kek).decrypt(raw[:12], raw[12:], None)
            out[kid] = (alg, serialization.load_pem_private_key(pem, password=None))
    finally:
        db.close()
    return out


def public_pem(pub, fmt=serialization.PublicFormat.SubjectPublicKeyInfo):
    return pub.public_bytes(serialization.Encoding.PEM, fmt)


def self_signed_cert(priv):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gravity")])
    now = datetime.datetime.utcnow()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(priv.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(priv, hashes.SHA256()))


def jwk_of(pub, kid, alg):
    mod = ECAlgorithm if alg == "ES256" else RSAAlgorithm
    d = json.loads(mod.to_jwk(pub))
    d.update({"kid": kid, "alg": alg, "use": "sig"})
    return d


# ---- the checks --------------------------------------------------------------------------------

def refused_401(r):
    ct = (r.header("Content-Type") or "").split(";")[0]
    j = r.json if isinstance(r.json, dict) else {}
    return (r.status == 401 and ct == "application/problem+json" and j.get("status") == 401
            and str(j.get("type", "")).startswith("urn:gravity:problem:"))


class Forgeries:
    def __init__(self, svc):
        self.svc = svc
        self.count = 0
        self.accepted = 0
        self.sent = []

    def send(self, name, tok, me_ok=refused_401, validate_ok=refused_401):
        """Sends @tok to /me and /validate-token; each answer must satisfy its predicate."""
        self.count += 1
        self.sent.append(tok)
        try:
            r1 = self.svc.request("GET", authsvc.PREFIX + "/me",
                                  headers={"Authorization": "Bearer " + tok})
        except (ValueError, http.client.HTTPException) as e:  # not sendable as a header
            r1 = None
            notes.append("'%s' cannot be sent as a header (%s); checked on validate-token only"
                         % (name, e))
        r2 = self.svc.api("POST", "/validate-token", {"token": tok})
        bad = []
        if r1 is not None:
            if 200 <= r1.status < 300:
                bad.append("GET /me ACCEPTED it: %r" % r1)
            elif not me_ok(r1):
                bad.append("GET /me: %r" % r1)
        if 200 <= r2.status < 300:
            bad.append("validate-token ACCEPTED it: %r" % r2)
        elif not validate_ok(r2):
            bad.append("validate-token: %r" % r2)
        if any("ACCEPTED" in b for b in bad):
            self.accepted += 1
        check(not bad, "forgery '%s': %s" % (name, "; ".join(bad)))

    def control(self, name, tok):
        """A well-made token that both endpoints must accept (proves the forging is right)."""
        r1 = self.svc.request("GET", authsvc.PREFIX + "/me",
                              headers={"Authorization": "Bearer " + tok})
        r2 = self.svc.api("POST", "/validate-token", {"token": tok})
        check(r1.status == 200 and r2.status == 200,
              "control '%s' must be accepted: me %r, validate %r" % (name, r1, r2))



def interop(svc, access, jwks, expect_alg, expect_kid=None):
    """Our access token verifies with python3-jwt against the JWKS (decision 10)."""
    hdr = jwt.get_unverified_header(access)
    check(hdr.get("typ") == "at+jwt", "access token typ is %r, expected at+jwt" % hdr.get("typ"))
    check(hdr.get("alg") == expect_alg, "access token alg %r, expected %s" % (hdr.get("alg"),
                                                                              expect_alg))
    if expect_kid:
        check(hdr.get("kid") == expect_kid, "access token kid %r, expected the new key %s"
              % (hdr.get("kid"), expect_kid))
    keys = {k["kid"]: k for k in jwks["keys"]}
    if not check(hdr.get("kid") in keys, "access token kid %r is not in the JWKS" % hdr.get("kid")):
        return None
    k = keys[hdr["kid"]]
    mod = ECAlgorithm if k["kty"] == "EC" else RSAAlgorithm
    pub = mod.from_jwk(json.dumps(k))
    try:
        claims = jwt.decode(access, pub, algorithms=[expect_alg], audience=AUD, issuer=ISS,
                            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub",
                                                 "jti"]})
    except jwt.PyJWTError as e:
        check(False, "python3-jwt cannot verify our access token: %s" % e)
        return None
    check(set(claims) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "roles",
                          "permissions"}, "access token claims are %s" % sorted(claims))
    check(claims["exp"] - claims["iat"] == 3600, "access token lives %s s, expected 3600"
          % (claims["exp"] - claims["iat"]))
    check(isinstance(claims["roles"], list) and isinstance(claims["permissions"], list),
          "roles/permissions must be arrays")
    check(abs(claims["iat"] - time.time()) < 120, "iat %s is not now" % claims["iat"])
    return claims


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    binary = os.path.abspath(sys.argv[1])

    # A JWKS_URL file holding an attacker key: the service must ignore it (it verifies its
    # own tokens with its own keys, gr_auth_set_jwks).
    evil_ec = ec.generate_private_key(ec.SECP256R1())
    evil_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    evil_jwks = {"keys": [jwk_of(evil_ec.public_key(), "evil-es", "ES256"),
                          jwk_of(evil_rsa.public_key(), "evil-rs", "RS256")]}
    cert = self_signed_cert(evil_rsa)
    attacker = Attacker(evil_jwks, cert.public_bytes(serialization.Encoding.PEM))

    svc = authsvc.Service(binary)
    jwks_file = os.path.join(svc.tmp, "jwks_url.json")
    with open(jwks_file, "w") as f:
        json.dump(evil_jwks, f)
    svc.extra_env["JWKS_URL"] = "file://" + jwks_file
    rc = 1
    try:
        svc.start()
        rc = run(svc, attacker, evil_ec, evil_rsa, cert)
        svc.stop()
    except authsvc.Failure as e:
        print("FAIL " + str(e))
        rc = 1
    finally:
        attacker.close()
        if rc != 0:
            print("server log (last 20 lines):\n" + svc.log_tail(20))
        svc.cleanup()
    return rc


def run(svc, attacker, evil_ec, evil_rsa, cert):
    email, password, acct = svc.register()
    pair = svc.login(email, password)
    access, refresh = pair["access_token"], pair["refresh_token"]
    root = svc.root_token()
    r = svc.api("GET", "/jwks")
    check(r.status == 200 and (r.header("Content-Type") or "").startswith(
        "application/jwk-set+json"), "GET /jwks: %r" % r)
    jwks = r.json

    # ---- interop: our token with python3-jwt -------------------------------------------------
    claims = interop(svc, access, jwks, "ES256")
    if claims is None:
        return 1
    check(claims["sub"] == acct["id"] and claims["roles"] == ["customer"]
          and claims["permissions"] == [], "claims of a customer: %r" % claims)
    ec_kid = jwt.get_unverified_header(access)["kid"]

    # Rotate to an RS256 key (delay 0): both key types are published, a new token uses it.
    r = svc.api("POST", "/keys/rotate", {"alg": "RS256", "delay_s": 0}, token=root)
    if not check(r.status == 201, "rotate: %r" % r):
        return 1
    rs_kid = r.json["kid"]
    jwks = svc.api("GET", "/jwks").json
    check(len(jwks["keys"]) == 2 and {k["kid"] for k in jwks["keys"]} == {ec_kid, rs_kid},
          "JWKS after rotation: %r" % jwks)
    access_rs = svc.login(email, password)["access_token"]
    interop(svc, access_rs, jwks, "RS256", expect_kid=rs_kid)
    check(svc.api("GET", "/me", token=access_rs).status == 200, "the new RS256 token works")
    check(svc.api("GET", "/me", token=access).status == 200, "the old ES256 token still works")

    keys = service_private_keys(svc.db_path)
    ec_alg, ec_key = keys[ec_kid]
    rs_alg, rs_key = keys[rs_kid]
    assert ec_alg == "ES256" and rs_alg == "RS256"
    ec_pub, rs_pub = ec_key.public_key(), rs_key.public_key()

    now = int(time.time())
    good = {"iss": ISS, "aud": AUD, "sub": acct["id"], "iat": now, "nbf": now,
            "exp": now + 600, "jti": "forged-" + os.urandom(6).hex(), "roles": ["customer"],
            "permissions": []}
    H_ES = {"alg": "ES256", "kid": ec_kid, "typ": "at+jwt"}
    H_RS = {"alg": "RS256", "kid": rs_kid, "typ": "at+jwt"}

    def es(data):
        return es256_raw(ec_key, data)

    def rs(data):
        return rs256(rs_key, data)

    def claims_with(**kw):
        c = dict(good)
        for k, v in kw.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        return c

    f = Forgeries(svc)

    # Positive controls: the real key with correct claims is accepted (so the forgeries below
    # signed with it fail for their one defect).
    f.control("real ES256 key, correct claims", token(H_ES, good, es))
    f.control("real RS256 key, correct claims", token(H_RS, good, rs))
    f.control("typ application/at+jwt", token(dict(H_ES, typ="application/at+jwt"), good, es))

    hdr_s, pay_s, sig_s = access.split(".")
    header = json.loads(unb64(hdr_s))
    payload = json.loads(unb64(pay_s))

    # -- alg none and friends (no key at all)
    for alg in ("none", "None", "NONE", "nOnE"):
        f.send("alg %s, no signature" % alg, token(dict(header, alg=alg), payload))
        f.send("alg %s, original signature" % alg, token(dict(header, alg=alg), payload,
                                                          sig=sig_s))
    f.send("alg none without kid", token({"alg": "none", "typ": "at+jwt"}, payload))
    f.send("alg empty", token(dict(header, alg=""), payload, sig=sig_s))
    f.send("alg missing", token({"kid": ec_kid, "typ": "at+jwt"}, payload, sig=sig_s))
    f.send("alg null", token(dict(header, alg=None), payload, sig=sig_s))
    f.send("alg array", token(dict(header, alg=["ES256"]), payload, sig=sig_s))

    # -- HMAC with public material as the secret (algorithm confusion)
    ec_pem = public_pem(ec_pub)
    rs_pem = public_pem(rs_pub)
    rs_pem_pkcs1 = public_pem(rs_pub, serialization.PublicFormat.PKCS1)
    ec_jwk_text = json.dumps(next(k for k in jwks["keys"] if k["kid"] == ec_kid),
                             separators=(",", ":")).encode()
    rs_jwk_text = json.dumps(next(k for k in jwks["keys"] if k["kid"] == rs_kid),
                             separators=(",", ":")).encode()
    jwks_text = json.dumps(jwks, separators=(",", ":")).encode()
    for label, kid, secret in (("EC public key PEM", ec_kid, ec_pem),
                               ("EC public key PEM without newline", ec_kid, ec_pem.rstrip()),
                               ("EC public JWK", ec_kid, ec_jwk_text),
                               ("RSA public key PEM", rs_kid, rs_pem),
                               ("RSA public key PKCS#1 PEM", rs_kid, rs_pem_pkcs1),
                               ("RSA public JWK", rs_kid, rs_jwk_text),
                               ("the whole JWKS", ec_kid, jwks_text)):
        f.send("HS256 keyed with the %s" % label,
               token({"alg": "HS256", "kid": kid, "typ": "at+jwt"}, good,
                     lambda d, s=secret: hmac("HS256", s, d)))
    f.send("HS512 keyed with the EC public key PEM",
           token({"alg": "HS512", "kid": ec_kid, "typ": "at+jwt"}, good,
                 lambda d: hmac("HS512", ec_pem, d)))
    f.send("HS256 with an empty key", token({"alg": "HS256", "kid": ec_kid, "typ": "at+jwt"},
                                            good, lambda d: hmac("HS256", b"", d)))

    # -- kid injection, signed with an attacker key (and HMAC of empty content for /dev/null)
    def evil_es(d):
        return es256_raw(evil_ec, d)

    for kid in ("../../../../../../../../etc/passwd", "/etc/passwd", "/dev/null",
                "file:///etc/passwd", "' OR '1'='1", "x' UNION SELECT 'k', 'ES256' --",
                "%s' --" % ec_kid, ec_kid + "\u0000evil", "01a20000-0000-7000-8000-000000000000",
                "evil-es"):
        f.send("kid %r, attacker ES256 key" % kid, token(dict(H_ES, kid=kid), good, evil_es))
    f.send("kid /dev/null with HS256 of an empty key",
           token({"alg": "HS256", "kid": "/dev/null", "typ": "at+jwt"}, good,
                 lambda d: hmac("HS256", b"", d)))
    f.send("kid missing, attacker key", token({"alg": "ES256", "typ": "at+jwt"}, good, evil_es))
    f.send("kid missing, real key", token({"alg": "ES256", "typ": "at+jwt"}, good, es))
    f.send("kid a number", token(dict(H_ES, kid=1), good, es))
    f.send("real kid, attacker key", token(H_ES, good, evil_es))
    f.send("the JWKS_URL file's key (ignored by the service)",
           token({"alg": "ES256", "kid": "evil-es", "typ": "at+jwt"}, good, evil_es))

    # -- header-supplied keys and URLs, with the attacker key and with the real key
    evil_jwk = jwk_of(evil_ec.public_key(), "evil-es", "ES256")
    cert_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    for hname, hval, signer, kid in (
            ("jku", attacker.url + "/jwks.json", evil_es, "evil-es"),
            ("jku", attacker.url + "/jwks.json", evil_es, ec_kid),
            ("x5u", attacker.url + "/cert.pem", lambda d: rs256(evil_rsa, d), rs_kid),
            ("x5c", [cert_b64], lambda d: rs256(evil_rsa, d), rs_kid),
            ("jwk", evil_jwk, evil_es, "evil-es"),
            ("jwk", evil_jwk, evil_es, ec_kid)):
        alg = "RS256" if hname in ("x5u", "x5c") else "ES256"
        f.send("%s header (attacker key, kid %s)" % (hname, kid),
               token({"alg": alg, "kid": kid, "typ": "at+jwt", hname: hval}, good, signer))
    for hname, hval in (("jku", attacker.url + "/jwks.json"), ("x5u", attacker.url + "/c.pem"),
                        ("x5c", [cert_b64]), ("jwk", evil_jwk)):
        f.send("%s header on a token the real key signed" % hname,
               token(dict(H_ES, **{hname: hval}), good, es))
    f.send("crit [\"exp\"] (real key)", token(dict(H_ES, crit=["exp"]), good, es))
    f.send("crit [\"b64\"] with b64 false (real key)",
           token(dict(H_ES, crit=["b64"], b64=False), good, es))

    # -- one bad claim each, real key
    f.send("expired 120 s ago (real key)", token(H_ES, claims_with(exp=now - 120), es))
    f.send("exp missing (real key)", token(H_ES, claims_with(exp=None), es))
    f.send("exp a string (real key)", token(H_ES, claims_with(exp=str(now + 600)), es))
    f.send("exp a float (real key)", token(H_ES, claims_with(exp=now + 600.5), es))
    f.send("nbf 5 minutes ahead (real key)", token(H_ES, claims_with(nbf=now + 300), es))
    f.send("iat an hour ahead (real key)", token(H_ES, claims_with(iat=now + 3600), es))
    f.send("wrong iss (real key)", token(H_ES, claims_with(iss="evil"), es))
    f.send("iss missing (real key)", token(H_ES, claims_with(iss=None), es))
    f.send("iss in another case (real key)", token(H_ES, claims_with(iss="Gravity"), es))
    f.send("wrong aud (real key)", token(H_ES, claims_with(aud="other-api"), es))
    f.send("aud array without ours (real key)", token(H_ES, claims_with(aud=["a", "b"]), es))
    f.send("aud missing (real key)", token(H_ES, claims_with(aud=None), es))
    f.send("sub missing (real key)", token(H_ES, claims_with(sub=None), es))
    f.send("sub empty (real key)", token(H_ES, claims_with(sub=""), es))
    f.send("sub a number (real key)", token(H_ES, claims_with(sub=42), es))
    f.send("roles a string (real key)", token(H_ES, claims_with(roles="super_admin"), es))
    f.send("permissions with a number (real key)", token(H_ES, claims_with(permissions=[1]), es))
    f.send("typ JWT (real key)", token(dict(H_ES, typ="JWT"), good, es))
    f.send("typ missing (real key)", token({"alg": "ES256", "kid": ec_kid}, good, es))
    f.send("typ at+jwt on the payload only (real key)",
           token({"alg": "ES256", "kid": ec_kid}, claims_with(typ="at+jwt"), es))

    # -- malformed JSON inside a good signature, real key
    hx = '{"alg":"ES256","kid":"%s","typ":"at+jwt","alg":"none"}' % ec_kid
    f.send("duplicated alg (ES256 then none), real key", token(hx, good, es))
    hx = '{"alg":"none","kid":"%s","typ":"at+jwt","alg":"ES256"}' % ec_kid
    f.send("duplicated alg (none then ES256), real key", token(hx, good, es))
    px = json.dumps(good)[:-1] + ',"sub":"%s"}' % acct["id"]
    f.send("duplicated sub in the payload, real key", token(H_ES, px, es))
    f.send("payload a JSON array, real key", token(H_ES, "[1,2]", es))
    f.send("header with trailing bytes, real key", token(json.dumps(H_ES) + "x", good, es))
    f.send("payload not UTF-8, real key", token(H_ES, b'{"sub":"\xff"}', es))

    # -- wrong signature encodings and alg/key mismatches, real keys
    f.send("ES256 signature in DER form", token(H_ES, good, lambda d: es256_der(ec_key, d)))
    f.send("RS256 header on the EC key's kid (EC signature)", token(dict(H_ES, alg="RS256"),
                                                                     good, es))
    f.send("ES256 header on the RSA key's kid (RSA signature)", token(dict(H_RS, alg="ES256"),
                                                                       good, rs))
    f.send("ES256 header on the RSA key's kid (EC signature)", token(dict(H_ES, kid=rs_kid),
                                                                      good, es))
    f.send("PS256 with the RSA key", token(dict(H_RS, alg="PS256"), good,
                                           lambda d: rs_key.sign(d, padding.PSS(
                                               padding.MGF1(hashes.SHA256()), 32),
                                               hashes.SHA256())))
    f.send("ES384 header (real EC key signature)", token(dict(H_ES, alg="ES384"), good, es))

    # -- tampering with the service's own token (no key)
    esc = dict(payload, roles=["super_admin"], permissions=["*"])
    f.send("roles/permissions escalated, original signature", token(header, esc, sig=sig_s))
    f.send("permissions [\"*\"] only, original signature",
           token(header, dict(payload, permissions=["*"]), sig=sig_s))
    f.send("sub changed, original signature", token(header, dict(payload, sub="someone-else"),
                                                     sig=sig_s))
    f.send("exp extended, original signature", token(header, dict(payload, exp=payload["exp"]
                                                                  + 86400), sig=sig_s))
    for part, idx in (("header", 0), ("header", len(hdr_s) // 2), ("payload", 0),
                      ("payload", len(pay_s) // 2), ("payload", len(pay_s) - 2),
                      ("signature", 0), ("signature", len(sig_s) // 2),
                      ("signature", len(sig_s) - 2)):
        parts = [hdr_s, pay_s, sig_s]
        n = ("header", "payload", "signature").index(part)
        parts[n] = flip(parts[n], idx)
        f.send("bit flipped in the %s at %d" % (part, idx), ".".join(parts))
    f.send("signature truncated by 4", "%s.%s.%s" % (hdr_s, pay_s, sig_s[:-4]))
    f.send("signature cut in half", "%s.%s.%s" % (hdr_s, pay_s, sig_s[:len(sig_s) // 2]))
    f.send("signature empty", "%s.%s." % (hdr_s, pay_s))
    f.send("signature missing (two parts)", "%s.%s" % (hdr_s, pay_s))
    f.send("extra segment", access + ".e30")
    f.send("extra empty segment", access + ".")
    f.send("padding added to the signature", access + "==")
    f.send("standard base64 characters", access.replace("-", "+").replace("_", "/")
           if ("-" in access or "_" in access) else access[:-1] + "+")
    f.send("non-base64 characters", "%s.%s!.%s" % (hdr_s, pay_s, sig_s))
    f.send("asterisk in the header", "*" + access[1:])
    f.send("whitespace inside (space)", "%s. %s.%s" % (hdr_s, pay_s, sig_s))
    f.send("whitespace inside (tab)", "%s.%s\t.%s" % (hdr_s, pay_s, sig_s))
    f.send("upper-cased token", access.upper())
    f.send("the refresh token used as an access token", refresh)
    f.send("JWS JSON serialization", json.dumps({"protected": hdr_s, "payload": pay_s,
                                                 "signature": sig_s}))
    f.send("the header part alone", hdr_s)
    f.send("dots only", "..")
    # 100 KB: over every limit; the header is refused by the HTTP server (431), the body's
    # field by validation (422). Both are refusals; neither may be a 2xx.
    big = token(H_ES, dict(good, pad="A" * 100000), es)
    f.send("100 KB token (real key)", big,
           me_ok=lambda r: r.status in (401, 431),
           validate_ok=lambda r: r.status == 422 and (r.header("Content-Type") or "")
           .startswith("application/problem+json"))
    f.send("9 KB token (real key), just over the 8 KiB token limit",
           token(H_ES, dict(good, pad="A" * 9000), es),
           validate_ok=lambda r: r.status in (401, 422))
    # An empty bearer: /me 401; validate-token refuses the empty string (422).
    f.send("empty bearer", "", validate_ok=lambda r: r.status == 422)

    # -- a validly signed token of the service, logged out: revoked by jti
    t2 = svc.login(email, password)["access_token"]
    check(svc.api("POST", "/logout", {}, token=t2).status == 204, "logout")
    f.send("a logged-out token (revoked jti)", t2)

    # The header URLs were never fetched.
    check(not attacker.hits, "the service fetched header-supplied URLs: %r" % attacker.hits)

    # No token reached the log.
    log = svc.log_text()
    leaked = [t for t in f.sent + [access, access_rs, refresh, root] if len(t) > 20 and
              (t in log or t.split(".")[-1] in log and len(t.split(".")[-1]) > 20)]
    check(not leaked, "%d tokens appear in the server log" % len(leaked))

    # ---- refresh grace (decision 20) ---------------------------------------------------------
    refresh_checks(svc, email, password)

    print("%d forged tokens, %d accepted" % (f.count, f.accepted))
    for n in notes:
        print("note: " + n)
    if failures:
        print("%d checks failed" % len(failures))
        return 1
    return 0


def refresh_checks(svc, email, password):
    """Grace window of decision 20 without a test clock."""
    r1 = svc.login(email, password)["refresh_token"]
    t1 = time.monotonic()
    a = svc.api("POST", "/refresh", {"refresh_token": r1})
    if not check(a.status == 200, "refresh r1: %r" % a):
        return
    r2 = a.json["refresh_token"]
    check(r2 != r1, "refresh rotates the token")
    b = svc.api("POST", "/refresh", {"refresh_token": r2})
    if not check(b.status == 200, "refresh r2: %r" % b):
        return
    r3 = b.json["refresh_token"]
    # r1 again, within 10 s of its rotation, after its child r2 was itself rotated.
    c = svc.api("POST", "/refresh", {"refresh_token": r1})
    within = time.monotonic() - t1 < 9
    if within:
        check(c.status == 200 and c.json.get("refresh_token") == r2,
              "r1 within the grace window returns its child r2: %r" % c)
        if c.status == 200 and c.json.get("refresh_token") == r2:
            notes.append("within 10 s, a rotated refresh token returns its child even when "
                         "that child was rotated already (the answer's refresh token is used; "
                         "it works only while it is itself in its grace window)")
    # After the window, reuse of r1 revokes the whole session. Await it: keep presenting r1
    # (each answer within the window is the same child) until it is refused.
    deadline = t1 + 16
    last = None
    while time.monotonic() < deadline:
        last = svc.api("POST", "/refresh", {"refresh_token": r1})
        if last.status != 200:
            break
        check(last.json.get("refresh_token") == r2, "grace answers the same child: %r" % last)
        time.sleep(0.5)
    if not check(last is not None and last.status == 401,
                 "r1 reused after the grace window must be a 401: %r" % last):
        return
    check(time.monotonic() - t1 >= 9.5, "r1 was refused before its 10 s grace window ended")
    for name, tok in (("r2", r2), ("r3 (the live head)", r3)):
        r = svc.api("POST", "/refresh", {"refresh_token": tok})
        check(r.status == 401, "after reuse of r1, %s must be revoked: %r" % (name, r))
    notes.append("reuse after the grace window revoked the session (r1's family): its live "
                 "refresh token is refused; access tokens already issued stay valid until "
                 "their exp (stateless JWTs)")


if __name__ == "__main__":
    sys.exit(main())
