#!/usr/bin/python3
"""Every service verifies auth's tokens through gr against auth's JWKS (issue 4, point 3).

  test-auth-jwks.py BUILD_DIR

Starts 05-auth-service (with a bootstrap super_admin) and 17-product-service whose JWKS_URL
is auth's /api/v1/auth/jwks (over HTTP, as in `make run`), then:
  1. a token from auth's login creates a product (201): the product service fetched auth's
     JWKS and verified the ES256 token; a customer's token is refused (403), a tampered one
     and no token are 401;
  2. auth rotates to an RS256 key that signs at once; a token signed by it has a kid the
     product service has not seen: within gr's refetch interval (10 s) it may be refused, and
     then it is accepted after one refetch — no restart, no configuration;
  3. the old ES256 token still works (the old key stays published until its tokens expire);
  4. after logout, auth's own /me refuses the access token (its jti is revoked).
Every wait is for a condition with a deadline.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEADLINE = 20.0


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def start(binary, tmp, name, extra):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    env = dict(os.environ, PORT="0", HOST="127.0.0.1", GR_PORT_FILE=d + "/port",
               DATA_DIR=d + "/data", LOG_LEVEL="info", EVENT_BUS_URL="http://127.0.0.1:1",
               CURSOR_SECRET="test")
    env.pop("SERVICE_TOKEN", None)
    env.pop("DATABASE_URL", None)
    env.update(extra)
    proc = subprocess.Popen([binary], env=env, stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + DEADLINE
    while not (os.path.exists(d + "/port") and open(d + "/port").read().strip()):
        if time.monotonic() > end or proc.poll() is not None:
            fail(name + " did not start:\n" + open(d + "/log").read()[-2000:])
        time.sleep(0.05)
    base = "http://127.0.0.1:" + open(d + "/port").read().strip()
    while call(base, "GET", "/ready")[0] != 200:
        if time.monotonic() > end:
            fail(name + " not ready")
        time.sleep(0.05)
    return proc, base


def call(base, method, path, body=None, token=None):
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, method=method, headers=h,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, None
    except OSError:
        return 0, None


def product(n):
    return {"title": "P %d" % n, "slug": "p-%d-%d" % (n, os.getpid()), "status": "active",
            "variants": [{"sku": "SKU-%d-%d" % (n, os.getpid()),
                          "price": {"amount": 1000 + n, "currency": "usd"}}]}


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    tmp = tempfile.mkdtemp(prefix="e2e-jwks-")
    procs = []
    try:
        auth, abase = start(os.path.join(build, "bin/05-auth-service"), tmp, "auth", {
            "AUTH_BOOTSTRAP_ADMIN_EMAIL": "root@example.com",
            "AUTH_BOOTSTRAP_ADMIN_PASSWORD": "root-password-1",
            "AUTH_KEY_SECRET": "e2e-key-secret-of-at-least-32-bytes!!"})
        procs.append(auth)
        prod, pbase = start(os.path.join(build, "bin/17-product-service"), tmp, "product",
                            {"JWKS_URL": abase + "/api/v1/auth/jwks"})
        procs.append(prod)

        st, tok = call(abase, "POST", "/api/v1/auth/login",
                       {"email": "root@example.com", "password": "root-password-1"})
        if st != 200:
            fail("admin login: %s %s" % (st, tok))
        es_token = tok["access_token"]
        st, body = call(pbase, "POST", "/api/v1/products", product(1), es_token)
        if st != 201:
            fail("create with auth's ES256 token: %s %s" % (st, body))

        assert call(abase, "POST", "/api/v1/auth/register",
                    {"email": "shopper@example.com", "password": "shopper-pass"})[0] == 201
        st, ctok = call(abase, "POST", "/api/v1/auth/login",
                        {"email": "shopper@example.com", "password": "shopper-pass"})
        st, body = call(pbase, "POST", "/api/v1/products", product(2), ctok["access_token"])
        if st != 403:
            fail("a customer's token must be 403 on products:write, got %s" % st)
        head, payload, sig = es_token.split(".")
        bad = head + "." + payload + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
        if call(pbase, "POST", "/api/v1/products", product(3), bad)[0] != 401:
            fail("a tampered token must be 401")
        if call(pbase, "POST", "/api/v1/products", product(4))[0] != 401:
            fail("no token must be 401")

        st, rot = call(abase, "POST", "/api/v1/auth/keys/rotate", {"alg": "RS256", "delay_s": 0},
                       es_token)
        if st != 201:
            fail("rotate: %s %s" % (st, rot))
        st, tok = call(abase, "POST", "/api/v1/auth/login",
                       {"email": "root@example.com", "password": "root-password-1"})
        rs_token = tok["access_token"]
        hdr = json.loads(__import__("base64").urlsafe_b64decode(rs_token.split(".")[0] + "=="))
        if hdr.get("alg") != "RS256" or hdr.get("kid") != rot["kid"]:
            fail("the new token is not signed by the new key: %s" % hdr)
        end = time.monotonic() + DEADLINE
        n = 10
        while True:
            n += 1
            st, body = call(pbase, "POST", "/api/v1/products", product(n), rs_token)
            if st == 201:
                break
            if st != 401 or time.monotonic() > end:
                fail("the rotated key's token was never accepted: %s %s" % (st, body))
            time.sleep(0.25)
        if call(pbase, "POST", "/api/v1/products", product(100), es_token)[0] != 201:
            fail("the old key's token must keep working until it expires")

        if call(abase, "POST", "/api/v1/auth/logout", {}, rs_token)[0] != 204:
            fail("logout")
        if call(abase, "GET", "/api/v1/auth/me", token=rs_token)[0] != 401:
            fail("a logged-out token must be refused by auth")
        print("auth JWKS end to end: ok (ES256 then RS256 after rotation, %d tries)" % (n - 10))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    for p in procs:
        if p.returncode != 0:
            fail("a service did not drain cleanly (exit %s)" % p.returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
