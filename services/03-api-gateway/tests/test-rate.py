#!/usr/bin/python3
"""api-gateway rate limits (SERVICES §03: "Rate limits run in-process or on Redis. Login is
capped at 5/min per IP and user → 429").

  test-rate.py BUILD_DIR [--redis-url URL]

Starts BUILD_DIR/bin/03-api-gateway (SQLite, PORT=0, GR_PORT_FILE, two data-plane workers) in
front of a threaded http.server double that counts the requests it gets, with GATEWAY_UPSTREAMS
naming it for every service, and checks, each limit with a tiny refill so nothing comes back
during the test:
  1. per route (rate_policy "3-per-min"): 3 requests pass, then 429 problem+json with
     Retry-After, the upstream is not reached, other routes are not limited;
  2. login (the seeded /api/v1/auth route has rate_policy "login", migration 0003): the 6th
     POST /api/v1/auth/login from one IP is a 429 at the gateway and never reaches 05; other
     /api/v1/auth paths are not limited;
  3. per IP (GATEWAY_RATE_IP=0.001:5): 5 requests over any routes, then 429;
  4. per user (GATEWAY_RATE_USER=0.001:4): the token subject's 4 requests over all routes,
     then 429 on every route (the gateway's own paths too); another subject and requests
     without a token are not limited by it;
  5. on a real Redis (--redis-url, else GR_TEST_REDIS_URL, else scripts/redis.sh starts one):
     two gateway processes share one budget: a user limit of 6 and a route limit of 4 let 6
     and 4 requests through in total over both, not 12 and 8.
The Redis keys are per run (a fresh subject, a fresh route prefix). Standard library only.
"""

import http.client
import http.server
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DEADLINE = 20.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
ISS = AUD = "gravity-test"
G = "/api/v1/gateway"
failures = []


def check(cond, msg):
    print(("ok: " if cond else "FAIL: ") + msg, flush=True)
    if not cond:
        failures.append(msg)
    return cond


def die(msg):
    print("FAIL: " + msg, flush=True)
    raise SystemExit(1)


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    die("timed out waiting for " + what)


class Upstream:
    """Answers 200 {"path": …} to anything and counts requests by path and X-User-Id."""

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                with up.lock:
                    up.seen.append((self.command, self.path.split("?")[0],
                                    self.headers.get("X-User-Id", "")))
                out = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = handle_any

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.srv = S(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def count(self, path=None, user=None, method=None):
        with self.lock:
            return sum(1 for m, p, u in self.seen if (path is None or p == path) and
                       (user is None or u == user) and (method is None or m == method))


def req(port, method, path, token=None, body=None):
    """One request on its own connection: (status, headers lower-case, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {}
    data = None
    if token:
        h["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    try:
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def is_429(res):
    st, h, b = res
    if st != 429:
        return False
    try:
        doc = json.loads(b)
    except ValueError:
        return False
    ra = h.get("retry-after", "")
    return (h.get("content-type", "").startswith("application/problem+json") and
            doc.get("status") == 429 and doc.get("type", "").endswith(":rate_limited") and
            ra.isdigit() and int(ra) >= 1)


def statuses(results):
    return [r[0] for r in results]


class Gateway:
    def __init__(self, binary, tmp, name, env):
        self.bin, self.name, self.env = binary, name, env
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.logpath = os.path.join(self.dir, "log")

    def start(self, db):
        pf = os.path.join(self.dir, "port")
        env = dict(self.env, PORT="0", HOST="127.0.0.1", GR_PORT_FILE=pf, DATA_DIR=self.dir,
                   DATABASE_URL="sqlite://" + db)
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def port():
            if self.proc.poll() is not None:
                die("%s exited: %s" % (self.name, open(self.logpath).read()[-2000:]))
            try:
                t = open(pf).read().strip()
            except OSError:
                return None
            return int(t) if t.isdigit() else None
        self.port = wait_for(self.name + " port file", port, 60)
        return self

    def stop(self):
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            rc = self.proc.returncode
        self.log.close()
        check(rc == 0, "%s exits 0 on SIGTERM (got %s)" % (self.name, rc))
        text = open(self.logpath, errors="replace").read()
        for m in SANITIZER_MARKS:
            check(m not in text, "%s log holds no %r" % (self.name, m))


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__)
        return 2
    build = os.path.abspath(args[0])
    redis_url = args[args.index("--redis-url") + 1] if "--redis-url" in args else \
        os.environ.get("GR_TEST_REDIS_URL")
    gw_bin = os.path.join(build, "bin", "03-api-gateway")
    jwt = os.path.join(build, "bin", "gr-jwt")
    tmp = tempfile.mkdtemp(prefix="gw-rate-")
    os.chmod(tmp, 0o755)
    redis_dir = None
    running = []
    try:
        key, jwks = os.path.join(tmp, "es.pem"), os.path.join(tmp, "jwks.json")
        subprocess.run([jwt, "keygen", "--alg", "ES256", "--kid", "k1", "--key", key,
                        "--jwks", jwks], check=True, capture_output=True)

        def mint(sub, perms=()):
            a = [jwt, "sign", "--key", key, "--kid", "k1", "--alg", "ES256", "--sub", sub,
                 "--ttl", "3600", "--iss", ISS, "--aud", AUD, "--roles", "customer"]
            if perms:
                a += ["--perms", ",".join(perms)]
            return subprocess.run(a, check=True, capture_output=True).stdout.decode().strip()

        admin = mint(str(uuid.uuid4()), ["gateway:admin"])
        up = Upstream()
        env = {k: v for k, v in os.environ.items()
               if k not in ("DISCOVERY_URL", "REDIS_URL", "SERVICE_TOKEN", "EVENT_BUS_URL",
                            "GATEWAY_RATE_IP", "GATEWAY_RATE_USER", "DATABASE_URL")}
        env.update({"JWKS_URL": "file://" + jwks, "JWT_ISSUER": ISS, "JWT_AUDIENCE": AUD,
                    "LOG_LEVEL": "warn", "GATEWAY_THREADS": "2",
                    "GATEWAY_UPSTREAMS": "svc-r=127.0.0.1:%d,auth-service=127.0.0.1:%d" %
                    (up.port, up.port)})
        db = os.path.join(tmp, "gw.db")
        uniq = uuid.uuid4().hex[:10]
        shared = "/api/v1/rt-shared-" + uniq

        # ---- routes, per-route limits and login, no global limit --------------------------
        gw = Gateway(gw_bin, tmp, "gw-route", env).start(db)
        running.append(gw)
        for prefix, auth, policy in (("/api/v1/rt-open", "public", ""),
                                     ("/api/v1/rt-other", "public", ""),
                                     ("/api/v1/rt-jwt", "jwt", ""),
                                     ("/api/v1/rt-lim", "public", "3-per-min"),
                                     (shared, "public", "4-per-min")):
            st, _, b = req(gw.port, "POST", G + "/routes", token=admin, body={
                "prefix": prefix, "service": "svc-r", "auth": auth, "rate_policy": policy})
            if st != 201:
                die("create route %s: %d %s" % (prefix, st, b[:300]))
        st, _, b = req(gw.port, "GET", G + "/routes/019b76da-a800-7001-8001-000000000000",
                       token=admin)
        check(st == 200 and json.loads(b).get("rate_policy") == "login",
              "the seeded /api/v1/auth route has rate_policy \"login\" (migration 0003)")
        wait_for("the new routes in the data plane",
                 lambda: req(gw.port, "GET", "/api/v1/rt-other/warm")[0] == 200)
        # shared's budget is for the Redis step: not touched here
        res = [req(gw.port, "GET", "/api/v1/rt-lim/x") for _ in range(5)]
        check(statuses(res)[:3] == [200] * 3 and all(is_429(r) for r in res[3:]),
              "route rate_policy 3-per-min: 3 pass, then 429 problem+json with Retry-After "
              "(%s)" % statuses(res))
        check(up.count("/api/v1/rt-lim/x") == 3,
              "the limited requests never reached the upstream (%d of 5 did)" %
              up.count("/api/v1/rt-lim/x"))
        res = [req(gw.port, "GET", "/api/v1/rt-open/x") for _ in range(6)]
        check(statuses(res) == [200] * 6, "a route without a policy is not limited (%s)" %
              statuses(res))
        # login: 5 per minute per IP on /api/v1/auth/login
        res = [req(gw.port, "POST", "/api/v1/auth/login", body={"email": "a@b.c",
                                                                "password": "wrong"})
               for _ in range(6)]
        check(statuses(res)[:5] == [200] * 5 and is_429(res[5]),
              "the 6th login from one IP within a minute is 429 at the gateway (%s)" %
              statuses(res))
        check(up.count("/api/v1/auth/login", method="POST") == 5,
              "auth-service saw 5 logins, not the 6th (%d)" % up.count("/api/v1/auth/login"))
        res = [req(gw.port, "GET", "/api/v1/auth/jwks") for _ in range(8)]
        res += [req(gw.port, "POST", "/api/v1/auth/refresh", body={}) for _ in range(3)]
        check(statuses(res) == [200] * 11, "other /api/v1/auth paths are not limited (%s)" %
              statuses(res))
        gw.stop()
        running.remove(gw)

        # ---- per IP ----------------------------------------------------------------------
        gw = Gateway(gw_bin, tmp, "gw-ip", dict(env, GATEWAY_RATE_IP="0.001:5")).start(db)
        running.append(gw)
        n0 = up.count()
        res = [req(gw.port, "GET", "/api/v1/rt-open/ip%d" % (i % 2)) for i in range(3)]
        res += [req(gw.port, "GET", "/api/v1/rt-other/ip") for _ in range(2)]
        res += [req(gw.port, "GET", p) for p in ("/api/v1/rt-open/ip0", "/api/v1/rt-other/ip",
                                                  "/api/v1/rt-jwt/ip")]
        check(statuses(res)[:5] == [200] * 5 and all(is_429(r) for r in res[5:]),
              "GATEWAY_RATE_IP=0.001:5: 5 requests over any routes, then 429 (%s)" %
              statuses(res))
        check(up.count() - n0 == 5, "the upstream saw 5 of the 8 requests (%d)" %
              (up.count() - n0))
        gw.stop()
        running.remove(gw)

        # ---- per user --------------------------------------------------------------------
        gw = Gateway(gw_bin, tmp, "gw-user", dict(env, GATEWAY_RATE_USER="0.001:4")).start(db)
        running.append(gw)
        sub_a, sub_b = str(uuid.uuid4()), str(uuid.uuid4())
        ta, tb = mint(sub_a), mint(sub_b)
        res = [req(gw.port, "GET", p, token=ta) for p in (
            "/api/v1/rt-open/u", "/api/v1/rt-other/u", "/api/v1/rt-jwt/u", "/api/v1/rt-open/u")]
        check(statuses(res) == [200] * 4, "user A: 4 requests over three routes pass (%s)" %
              statuses(res))
        res = [req(gw.port, "GET", p, token=ta) for p in (
            "/api/v1/rt-open/u", "/api/v1/rt-other/u", "/api/v1/rt-jwt/u", G + "/routes")]
        check(all(is_429(r) for r in res),
              "user A's 5th..8th requests are 429 on every route, the gateway's own paths "
              "too (%s)" % statuses(res))
        check(up.count(user=sub_a) == 4, "the upstream saw 4 of user A's requests (%d)" %
              up.count(user=sub_a))
        res = [req(gw.port, "GET", "/api/v1/rt-jwt/u", token=tb) for _ in range(3)]
        check(statuses(res) == [200] * 3, "user B has a budget of its own (%s)" % statuses(res))
        res = [req(gw.port, "GET", "/api/v1/rt-open/anon") for _ in range(6)]
        check(statuses(res) == [200] * 6, "requests without a token are not user-limited (%s)" %
              statuses(res))
        gw.stop()
        running.remove(gw)

        # ---- Redis: two gateways, one budget ---------------------------------------------
        if not redis_url:
            redis_dir = os.path.join(tmp, "redis")
            r = subprocess.run([os.path.join(ROOT, "scripts", "redis.sh"), "start", redis_dir],
                               capture_output=True, text=True)
            if r.returncode != 0:
                die("redis.sh start: " + r.stderr[-500:])
            redis_url = r.stdout.strip().splitlines()[-1]
        print("redis: " + redis_url, flush=True)
        db2 = os.path.join(tmp, "gw2.db")
        for sfx in ("", "-wal", "-shm"):
            if os.path.exists(db + sfx):
                shutil.copyfile(db + sfx, db2 + sfx)
        renv = dict(env, REDIS_URL=redis_url, GATEWAY_RATE_USER="0.001:6")
        g1 = Gateway(gw_bin, tmp, "gw-redis-1", renv).start(db)
        running.append(g1)
        g2 = Gateway(gw_bin, tmp, "gw-redis-2", renv).start(db2)
        running.append(g2)
        sub_c = str(uuid.uuid4())
        tc = mint(sub_c)
        res = [req((g1, g2)[i % 2].port, "GET", "/api/v1/rt-open/redis", token=tc)
               for i in range(12)]
        check(statuses(res)[:6] == [200] * 6 and all(is_429(r) for r in res[6:]),
              "GATEWAY_RATE_USER=0.001:6 on Redis: 6 requests in total over two gateways, "
              "then 429 from both (%s)" % statuses(res))
        check(up.count(user=sub_c) == 6, "the upstream saw 6 of the user's 12 requests, not "
              "12 (%d)" % up.count(user=sub_c))
        res = [req((g1, g2)[i % 2].port, "GET", shared + "/x") for i in range(8)]
        check(statuses(res)[:4] == [200] * 4 and all(is_429(r) for r in res[4:]),
              "a route's 4-per-min on Redis: 4 requests in total over two gateways (%s)" %
              statuses(res))
        check(up.count(shared + "/x") == 4, "the upstream saw 4 of the route's 8 requests (%d)" %
              up.count(shared + "/x"))
        for g in (g1, g2):
            g.stop()
            running.remove(g)
    finally:
        for g in running:
            if g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait()
        if redis_dir:
            subprocess.run([os.path.join(ROOT, "scripts", "redis.sh"), "stop", redis_dir],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
