#!/usr/bin/python3
"""api-gateway's data plane (front.c) end to end (SERVICES §03, ARCHITECTURE §4).

  test-front.py BUILD_DIR

Starts BUILD_DIR/bin/03-api-gateway (SQLite, PORT=0, GR_PORT_FILE) with GATEWAY_UPSTREAMS
pointing at a threaded http.server double that records every request, a JWKS file made with
BUILD_DIR/bin/gr-jwt, and routes created through the admin API (itself reached through the
front). Checks proxying with keep-alive, X-User-* stripping, X-Request-Id, edge JWT checks,
request smuggling, unsafe paths, body limits, upstream timeouts, dead instances and retries,
and the circuit breaker. Waits poll for a condition with a deadline. Standard library only.
"""

import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid

DEADLINE = 10.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
ISS, AUD = "gravity-test", "gravity-test"
G = "/api/v1/gateway"
failures = []


def check(cond, msg):
    if cond:
        print("ok: " + msg)
    else:
        print("FAIL: " + msg)
        failures.append(msg)


def die(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    die("timed out waiting for " + what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---- upstream double --------------------------------------------------------------------------

class Upstream:
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
                body = self.rfile.read(n) if n else b""
                with up.lock:
                    up.seen.append({"method": self.command, "path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body_len": len(body), "conn": id(self.connection)})
                if "/slow" in self.path:
                    time.sleep(2.0)
                status = 503 if "/fail503" in self.path else 200
                out = json.dumps({"path": self.path, "method": self.command,
                                  "len": len(body)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("X-Request-Id", "upstream-must-not-leak")
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(out)
                    except OSError:
                        pass  # the gateway gave up on a slow answer (504)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass  # connections the gateway closed (timeouts) are expected

        self.srv = S(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def count(self, sub=""):
        with self.lock:
            return len([r for r in self.seen if sub in r["path"]])

    def last(self, sub):
        with self.lock:
            for r in reversed(self.seen):
                if sub in r["path"]:
                    return r
        return None


# ---- raw HTTP client --------------------------------------------------------------------------

_pending = {}  # socket -> bytes read past the previous response (pipelining)


def read_response(sock, head_req=False, timeout=10):
    """Reads one response from @sock: (status, headers dict lower-case, body bytes) or None."""
    sock.settimeout(timeout)
    buf = _pending.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            return None
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for ln in lines[1:]:
        k, v = ln.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    n = 0 if head_req else int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        d = sock.recv(65536)
        if not d:
            break
        rest += d
    if len(rest) > n:
        _pending[sock] = rest[n:]
    return status, hdrs, rest[:n]


def closed(sock, timeout=5):
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


class Client:
    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send_raw(self, data):
        self.sock.sendall(data)

    def req(self, method, path, headers=None, body=b"", token=None, timeout=10):
        h = {"Host": "gw.test"}
        if token:
            h["Authorization"] = "Bearer " + token
        if body:
            h["Content-Length"] = str(len(body))
        h.update(headers or {})
        data = ("%s %s HTTP/1.1\r\n" % (method, path)).encode()
        for k, v in h.items():
            data += ("%s: %s\r\n" % (k, v)).encode()
        data += b"\r\n" + body
        self.sock.sendall(data)
        return read_response(self.sock, method == "HEAD", timeout)

    def close(self):
        self.sock.close()


def one(port, method, path, **kw):
    c = Client(port)
    try:
        return c.req(method, path, **kw)
    finally:
        c.close()


# ---- the run ----------------------------------------------------------------------------------

def main():
    if len(sys.argv) < 2:
        die("usage: test-front.py BUILD_DIR")
    build = sys.argv[1]
    gw_bin = os.path.join(build, "bin", "03-api-gateway")
    jwt = os.path.join(build, "bin", "gr-jwt")
    tmp = tempfile.mkdtemp(prefix="gw-front-")
    proc = None
    log = os.path.join(tmp, "gw.log")
    try:
        key, jwks = os.path.join(tmp, "es.pem"), os.path.join(tmp, "jwks.json")
        subprocess.run([jwt, "keygen", "--alg", "ES256", "--kid", "k1", "--key", key,
                        "--jwks", jwks], check=True, capture_output=True)

        def mint(sub, roles=(), perms=(), ttl=3600):
            a = [jwt, "sign", "--key", key, "--kid", "k1", "--alg", "ES256", "--sub", sub,
                 "--ttl", str(ttl), "--iss", ISS, "--aud", AUD]
            if roles:
                a += ["--roles", ",".join(roles)]
            if perms:
                a += ["--perms", ",".join(perms)]
            return subprocess.run(a, check=True, capture_output=True).stdout.decode().strip()

        admin = mint("0190a000-0000-7000-8000-000000000001", ["admin"], ["gateway:admin"])
        user = mint("0190a000-0000-7000-8000-0000000000aa", ["customer", "vip"])

        up = Upstream()
        up2 = Upstream()
        dead = free_port()
        dead2 = free_port()
        env = dict(os.environ)
        env.update({
            "PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": os.path.join(tmp, "port"),
            "DATA_DIR": tmp, "DATABASE_URL": "sqlite://" + os.path.join(tmp, "gw.db"),
            "JWKS_URL": "file://" + jwks, "JWT_ISSUER": ISS, "JWT_AUDIENCE": AUD,
            "LOG_LEVEL": "warn", "GATEWAY_THREADS": "2",
            "GATEWAY_UPSTREAMS": ",".join([
                "svc-a=127.0.0.1:%d" % up.port,
                "svc-dead=127.0.0.1:%d" % dead,
                "svc-two=127.0.0.1:%d" % dead2, "svc-two=127.0.0.1:%d" % up2.port]),
        })
        for k in ("DISCOVERY_URL", "REDIS_URL", "SERVICE_TOKEN", "EVENT_BUS_URL"):
            env.pop(k, None)

        def start(extra):
            e = dict(env)
            e.update(extra)
            pf = os.path.join(tmp, "port")
            if os.path.exists(pf):
                os.unlink(pf)
            with open(log, "ab") as lf:
                p = subprocess.Popen([gw_bin], env=e, stdout=lf, stderr=subprocess.STDOUT)
            wait_for("the port file", lambda: os.path.exists(pf) or p.poll() is not None)
            if p.poll() is not None:
                die("gateway exited: " + open(log).read()[-2000:])
            return p, int(open(pf).read().strip())

        proc, port = start({})

        # admin API through the front
        st, h, b = one(port, "GET", "/health")
        check(st == 200 and "x-request-id" in h, "GET /health through the front is 200 with X-Request-Id")

        def mkroute(doc):
            body = json.dumps(doc).encode()
            st, _, b = one(port, "POST", G + "/routes", body=body, token=admin,
                           headers={"Content-Type": "application/json"})
            if st != 201:
                die("creating route %s: %d %s" % (doc["prefix"], st, b[:300]))

        mkroute({"prefix": "/api/v1/ft-orders", "service": "svc-a", "auth": "jwt"})
        mkroute({"prefix": "/api/v1/ft-pub", "service": "svc-a", "auth": "public"})
        mkroute({"prefix": "/api/v1/ft-slowr", "service": "svc-a", "auth": "public",
                 "timeout_ms": 500, "retries": 0})
        mkroute({"prefix": "/api/v1/ft-dead", "service": "svc-dead", "auth": "public", "retries": 0})
        mkroute({"prefix": "/api/v1/ft-two", "service": "svc-two", "auth": "public", "retries": 1})
        st, _, b = one(port, "GET", G + "/routes", token=admin)
        check(st == 200 and b"/api/v1/ft-orders" in b, "admin API lists routes through the front")
        st, _, _ = one(port, "GET", G + "/routes")
        check(st == 401, "admin API without a token is 401 (the control plane checks)")

        # proxying with keep-alive, headers
        c = Client(port)
        rid = str(uuid.uuid4())
        st, h, b = c.req("GET", "/api/v1/ft-pub/items?x=1", headers={
            "X-User-Id": "evil", "X-User-Roles": "super_admin", "X-Request-Id": rid})
        r = up.last("/api/v1/ft-pub/items")
        check(st == 200 and json.loads(b)["path"] == "/api/v1/ft-pub/items?x=1",
              "public GET proxied with its query")
        check(r is not None and "x-user-id" not in r["headers"] and
              "x-user-roles" not in r["headers"], "client X-User-* stripped (no token)")
        check(h.get("x-request-id") == rid and r["headers"].get("x-request-id") == rid,
              "a valid X-Request-Id is kept, forwarded and echoed (not the upstream's)")
        check(r["headers"].get("x-forwarded-for", "").endswith("127.0.0.1"),
              "X-Forwarded-For carries the client address")
        tp = r["headers"].get("traceparent", "")
        check(len(tp) == 55 and tp.startswith("00-"), "a traceparent is generated")
        st, h, b = c.req("POST", "/api/v1/ft-orders", body=b'{"a":1}', token=user,
                         headers={"Content-Type": "application/json", "X-User-Id": "evil",
                                  "X-Request-Id": "not-a-uuid"})
        r = up.last("/api/v1/ft-orders")
        check(st == 200 and json.loads(b)["len"] == 7, "POST with a body proxied on the same connection")
        check(r["headers"].get("x-user-id") == "0190a000-0000-7000-8000-0000000000aa" and
              r["headers"].get("x-user-roles") == "customer,vip",
              "X-User-Id/X-User-Roles set from the verified token, client's replaced")
        gen = h.get("x-request-id", "")
        check(gen != "not-a-uuid" and len(gen) == 36 and gen[14] == "7" and
              r["headers"].get("x-request-id") == gen, "an invalid X-Request-Id is replaced by a UUIDv7")
        st, h, b = c.req("GET", "/api/v1/ft-pub/again")
        check(st == 200, "third request on the same client connection")
        c.close()
        # chunked request body: decoded and forwarded with Content-Length
        c = Client(port)
        c.send_raw(b"POST /api/v1/ft-pub/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        res = read_response(c.sock)
        r = up.last("/chunky")
        check(res and res[0] == 200 and r and r["body_len"] == 11 and
              r["headers"].get("content-length") == "11" and "transfer-encoding" not in r["headers"],
              "chunked request body decoded and forwarded with Content-Length")
        c.close()
        # Expect: 100-continue is answered by the gateway, which buffers the body
        c = Client(port)
        c.send_raw(b"POST /api/v1/ft-pub/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                   b"Expect: 100-continue\r\n\r\n")
        c.sock.settimeout(5)
        interim = c.sock.recv(64)
        c.send_raw(b"abcd")
        res = read_response(c.sock)
        r = up.last("/expect")
        check(interim.startswith(b"HTTP/1.1 100") and res and res[0] == 200 and r["body_len"] == 4
              and "expect" not in r["headers"], "Expect: 100-continue answered at the edge")
        c.close()

        # upstream keep-alive reuse
        with up.lock:
            up.seen.clear()
        for i in range(5):
            st, _, _ = one(port, "GET", "/api/v1/ft-pub/reuse")
        with up.lock:
            conns = {r["conn"] for r in up.seen}
        check(len(conns) <= 2, "upstream connections are reused (%d for 5 requests)" % len(conns))

        # edge auth
        n0 = up.count("/api/v1/ft-orders")
        st, h, b = one(port, "GET", "/api/v1/ft-orders/1")
        check(st == 401 and h.get("content-type") == "application/problem+json" and
              "x-request-id" in h, "jwt route without a token is 401 problem+json with X-Request-Id")
        none_tok = "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0." + \
            "eyJzdWIiOiJ4IiwiaXNzIjoiZ3Jhdml0eS10ZXN0IiwiYXVkIjoiZ3Jhdml0eS10ZXN0IiwiZXhwIjo0MDAwMDAwMDAwfQ."
        st, _, _ = one(port, "GET", "/api/v1/ft-orders/1", token=none_tok)
        check(st == 401, "alg:none token is 401")
        st, _, _ = one(port, "GET", "/api/v1/ft-pub/x", token=user[:-4] + "AAAA")
        check(st == 401, "a bad token on a public route is 401")
        st, _, _ = one(port, "GET", "/api/v1/ft-orders/1", token=mint("u", ttl=-120))
        check(st == 401, "an expired token is 401")
        check(up.count("/api/v1/ft-orders") == n0, "the upstream was not called for rejected tokens")

        # smuggling and unsafe paths
        n0 = len(up.seen)
        for name, raw in [
            ("TE+CL", b"POST /api/v1/ft-pub/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("duplicate CL", b"POST /api/v1/ft-pub/s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                             b"Content-Length: 1\r\n\r\nAA"),
            ("bare LF", b"GET /api/v1/ft-pub/s HTTP/1.1\nHost: x\r\n\r\n"),
            ("TE gzip", b"POST /api/v1/ft-pub/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        ]:
            c = Client(port)
            c.send_raw(raw)
            res = read_response(c.sock)
            ok = res is not None and res[0] == 400 and res[1].get("connection") == "close"
            check(ok and closed(c.sock), "%s is 400 + Connection: close, connection closed" % name)
            c.close()
        check(len(up.seen) == n0, "the upstream saw none of the smuggling attempts")
        st, _, _ = one(port, "GET", "/api/v1/orders/..%2f..%2fgateway/routes", token=admin)
        check(st == 400, "encoded ../ path is 400")
        st, _, _ = one(port, "GET", "/api/v1/nothing-here")
        check(st == 404, "no route is 404")
        c = Client(port)
        c.send_raw(b"GET /api/v1/ft-pub/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        res = read_response(c.sock)
        check(res is not None and res[0] == 431, "a 20 KiB head is 431")
        c.close()

        # body limit
        n0 = len(up.seen)
        c = Client(port)
        c.send_raw(b"POST /api/v1/ft-pub/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
        res = read_response(c.sock)
        check(res is not None and res[0] == 413, "2 MiB Content-Length on a 1 MiB route is 413")
        c.close()
        c = Client(port)
        try:
            c.send_raw(b"POST /api/v1/ft-pub/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
            c.send_raw(chunk)
            c.send_raw(chunk)
        except OSError:
            pass
        res = read_response(c.sock)
        check(res is not None and res[0] == 413, "2 MiB chunked body on a 1 MiB route is 413")
        c.close()
        check(len(up.seen) == n0, "the upstream saw nothing of the oversize bodies")

        # timeouts, dead instances, retries
        t0 = time.monotonic()
        st, h, _ = one(port, "GET", "/api/v1/ft-slowr/slow")
        check(st == 504 and time.monotonic() - t0 < 1.8 and "x-request-id" in h,
              "slow upstream past timeout_ms is 504")
        st, _, _ = one(port, "GET", "/api/v1/ft-dead/x")
        check(st == 503, "an unreachable single instance is 503")
        oks = 0
        c = Client(port)
        for i in range(20):
            st, _, _ = c.req("GET", "/api/v1/ft-two/%d" % i)
            oks += st == 200
        c.close()
        check(oks == 20, "two instances, one dead: 20/20 GETs succeed (%d)" % oks)
        # a POST without Idempotency-Key is not retried; with one it is
        st, _, _ = one(port, "POST", "/api/v1/ft-two/idem", body=b"x",
                       headers={"Idempotency-Key": str(uuid.uuid4())})
        check(st == 200, "POST with Idempotency-Key succeeds (retried if the dead one came first)")

        # breaker: five failures open it
        for i in range(5):
            one(port, "GET", "/api/v1/ft-dead/x")

        def dead_state():
            st, _, b = one(port, "GET", G + "/upstreams?service=svc-dead", token=admin)
            if st != 200:
                return None
            insts = json.loads(b)["data"][0]["instances"]
            return insts[0]["state"] if insts else None
        check(dead_state() == "open", "the dead instance's breaker is open after 5 failures")
        st, _, b = one(port, "GET", "/api/v1/ft-dead/x")
        check(st == 503, "an open breaker gives 503 at once")

        # CORS preflight (no origins configured → no CORS headers)
        st, h, _ = one(port, "OPTIONS", "/api/v1/ft-pub/x", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        check(st == 204 and "access-control-allow-origin" not in h,
              "preflight without GATEWAY_CORS_ORIGINS grants nothing")

        # HEAD and pipelining
        c = Client(port)
        c.send_raw(b"GET /api/v1/ft-pub/p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/ft-pub/p2 HTTP/1.1\r\nHost: x\r\n\r\n")
        r1 = read_response(c.sock)
        r2 = read_response(c.sock)
        check(r1 and r2 and b"/p1" in r1[2] and b"/p2" in r2[2], "pipelined requests answered in order")
        st, h, b = c.req("HEAD", "/api/v1/ft-pub/h")
        check(st == 200 and b == b"", "HEAD proxied without a body")
        st, _, _ = c.req("GET", "/api/v1/ft-pub/after-head")
        check(st == 200, "the connection still works after HEAD")
        c.close()

        st, _, b = one(port, "GET", "/metrics")
        check(st == 200 and b'http_requests_total{method="GET",route="/api/v1/ft-pub",status="200"}'
              in b, "/metrics counts proxied requests by route prefix (http_requests_total)")
        check(b'route="self"' not in b, "requests for the gateway's own routes are counted once")

        # drain: an in-flight request finishes after SIGTERM, then the process exits 0
        mkroute({"prefix": "/api/v1/ft-slow5", "service": "svc-a", "auth": "public",
                 "timeout_ms": 5000})
        res = {}
        n0 = up.count("/api/v1/ft-slow5")

        def slow_call():
            res["r"] = one(port, "GET", "/api/v1/ft-slow5/slow")
        th = threading.Thread(target=slow_call)
        th.start()
        wait_for("the slow request upstream", lambda: up.count("/api/v1/ft-slow5") > n0)
        proc.send_signal(signal.SIGTERM)
        th.join(10)
        check(res.get("r") is not None and res["r"][0] == 200,
              "a request in flight at SIGTERM completes (drain)")
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "SIGTERM drains and exits 0 (rc=%s)" % rc)
        proc = None
        # phase 2: per-IP rate limit and CORS origins (a fresh gateway on the same database)
        proc, port = start({"GATEWAY_RATE_IP": "1:3",
                            "GATEWAY_CORS_ORIGINS": "https://app.example"})
        codes = []
        for i in range(5):
            st, h, _ = one(port, "GET", "/api/v1/ft-pub/rl",
                           headers={"Origin": "https://app.example"})
            codes.append((st, h))
        check([c[0] for c in codes[:3]] == [200, 200, 200] and codes[3][0] == 429 and
              codes[3][1].get("retry-after", "0").isdigit() and int(codes[3][1]["retry-after"]) >= 1,
              "GATEWAY_RATE_IP 1:3: burst of 3, then 429 with Retry-After (%s)" %
              [c[0] for c in codes])
        check(codes[0][1].get("access-control-allow-origin") == "https://app.example",
              "an allowed Origin is echoed on proxied responses")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        proc, port = start({"GATEWAY_CORS_ORIGINS": "https://app.example"})
        st, h, _ = one(port, "OPTIONS", "/api/v1/ft-orders/x", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        check(st == 204 and h.get("access-control-allow-origin") == "https://app.example" and
              "POST" in h.get("access-control-allow-methods", ""),
              "preflight from an allowed origin is answered at the edge (no token needed)")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "second gateway exits 0")
        proc = None
        text = open(log, errors="replace").read()
        bad = [m for m in SANITIZER_MARKS if m in text]
        check(not bad, "no sanitizer reports in the gateway log")
        if bad:
            print(text[-4000:])
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if failures and os.path.exists(log):
            print("---- gateway log (tail) ----")
            print(open(log, errors="replace").read()[-3000:])
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d failed" % len(failures))
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
