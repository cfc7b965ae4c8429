#!/usr/bin/python3
"""api-gateway's registry watcher against a registry (SERVICES §03 and §02).

  test-registry-watch.py BUILD_DIR [--fake] [--pg-url URL]

The registry is BUILD_DIR/bin/02-service-discovery when it exists (unless --fake), else a small
http.server double of the two endpoints the gateway reads (GET …/services with index/wait long
polling and X-Registry-Index, GET …/services/{name}/instances), plus register/deregister.
With --pg-url the gateway runs on PostgreSQL (a fresh database).

Checks, each wait being for a condition with a deadline (no sleeps):
  1. the gateway starts with DISCOVERY_URL and reports source "registry";
  2. an instance registered for product-service appears in GET /api/v1/gateway/upstreams
     (with its registry id, host and port and a closed circuit) within 5 s;
  3. a second registered service shows up; a registered service that no route names is not
     listed, and a route added for it gets its instances within 5 s (the route change cuts
     the watcher's long poll short);
  4. deregistering the instance removes it from the upstreams;
  5. with the registry gone, the upstreams report its error (last_error) and keep the last
     instances; when it comes back the watcher recovers;
  6. SIGTERM during a long poll drains and exits 0 within the deadline;
  7. a malformed GATEWAY_UPSTREAMS stops start-up with exit 2 and one line naming it.
Standard library only.
"""

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
import urllib.error
import urllib.parse
import urllib.request
import uuid

DEADLINE = 10.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
R = "/api/v1/registry"
G = "/api/v1/gateway"


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    fail("timed out waiting for " + what)


def request(base, method, path, body=None, token=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        r.add_header("Content-Type", "application/json")
    if token:
        r.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None
    except (urllib.error.URLError, ConnectionError, OSError):
        return 0, None


class Svc:
    """A gr service binary on a free port, with its own data dir and log."""

    def __init__(self, binary, name, tmp, env):
        self.bin, self.name, self.env = binary, name, env
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.logpath = os.path.join(self.dir, "log")
        self.proc = None
        self.port = None

    def start(self):
        env = dict(self.env)
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(self.dir, "data")})
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(self.name + " port file",
                                 lambda: (self.proc.poll() is None or fail(self.name + " exited"))
                                 and os.path.exists(pf) and open(pf).read().strip()))
        self.base = "http://127.0.0.1:%d" % self.port
        wait_for(self.name + " /ready", lambda: request(self.base, "GET", "/ready")[0] == 200)

    def stop(self, deadline=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("%s did not drain on SIGTERM within %d s" % (self.name, deadline))
            if rc != 0:
                fail("%s exited with status %d" % (self.name, rc))
        self.proc = None
        self.log.close()
        with open(self.logpath, errors="replace") as f:
            text = f.read()
        for m in SANITIZER_MARKS:
            if m in text:
                fail("%s log holds %r" % (self.name, m))


class FakeRegistry:
    """The registry endpoints the gateway reads, with blocking queries, on a free port."""

    def __init__(self):
        self.cond = threading.Condition()
        self.index = 1
        self.instances = {}  # id -> {service, address, port}
        self.closed = False
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def send(self, status, body, index=None):
                raw = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if index is not None:
                    self.send_header("X-Registry-Index", str(index))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                parts = u.path.split("/")
                with fake.cond:
                    if "index" in q:
                        want = int(q["index"][0])
                        end = time.monotonic() + min(float(q.get("wait", ["30s"])[0].rstrip("s")), 30)
                        while fake.index <= want and time.monotonic() < end and not fake.closed:
                            fake.cond.wait(end - time.monotonic())
                    if fake.closed:  # the registry "died": drop the connection unanswered
                        self.close_connection = True
                        return
                    idx = fake.index
                    insts = list(fake.instances.items())
                if u.path == R + "/services":
                    names = sorted({i["service"] for _, i in insts})
                    data = [{"name": n, "instances": sum(1 for _, i in insts if i["service"] == n),
                             "tags": []} for n in names]
                    return self.send(200, {"data": data, "has_more": False, "next_cursor": None}, idx)
                if len(parts) == 7 and u.path.startswith(R + "/services/") and parts[6] == "instances":
                    data = [dict(i, id=k, status="passing") for k, i in insts if i["service"] == parts[5]]
                    return self.send(200, {"data": data, "has_more": False, "next_cursor": None}, idx)
                if u.path == "/ready":
                    return self.send(200, {"status": "ready"})
                self.send(404, None)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                iid = str(uuid.uuid4())
                with fake.cond:
                    fake.instances[iid] = {k: body[k] for k in ("service", "address", "port")}
                    fake.index += 1
                    fake.cond.notify_all()
                self.send(201, dict(body, id=iid))

            def do_DELETE(self):
                iid = self.path.rsplit("/", 1)[1]
                with fake.cond:
                    gone = fake.instances.pop(iid, None)
                    fake.index += 1
                    fake.cond.notify_all()
                self.send(204 if gone else 404, None)

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.srv = S(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.base = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def start(self):
        pass

    def stop(self, deadline=15):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.srv.shutdown()
        self.srv.server_close()


def mint(tool, key, perms):
    return subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--sub",
                           str(uuid.uuid4()), "--roles", "admin", "--ttl", "3600", "--perms", perms],
                          check=True, stdout=subprocess.PIPE).stdout.decode().strip()


def upstreams(gw, token, service):
    st, body = request(gw.base, "GET", G + "/upstreams?service=" + service, token=token)
    if st != 200:
        fail("GET upstreams: %d %r" % (st, body))
    return body


def instances(body):
    return body["data"][0]["instances"] if body["data"] else []


def pg_database(pg_url):
    name = "gw_watch_%s" % uuid.uuid4().hex[:10]
    subprocess.run(["psql", "-q", "-d", pg_url, "-c", "CREATE DATABASE " + name], check=True)
    return name, pg_url.rsplit("/", 1)[0] + "/" + name


def main():
    args = sys.argv[1:]
    if not args:
        fail("usage: test-registry-watch.py BUILD_DIR [--fake] [--pg-url URL]")
    build = os.path.abspath(args[0])
    use_fake = "--fake" in args
    pg_url = args[args.index("--pg-url") + 1] if "--pg-url" in args else None
    gw_bin = os.path.join(build, "bin", "03-api-gateway")
    reg_bin = os.path.join(build, "bin", "02-service-discovery")
    tool = os.path.join(build, "bin", "gr-jwt")
    if not os.path.exists(reg_bin):
        use_fake = True
    tmp = tempfile.mkdtemp(prefix="gw-watch-")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)
    admin = mint(tool, key, "gateway:admin")
    writer = mint(tool, key, "registry:write")
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("DISCOVERY_URL", "GATEWAY_UPSTREAMS", "DATABASE_URL")}
    base_env.update({"JWKS_URL": "file://" + jwks, "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity",
                     "LOG_LEVEL": "info", "LOG_FORMAT": "json", "CURSOR_SECRET": "test"})
    dbname = None
    reg = gw = None
    try:
        if use_fake:
            reg = FakeRegistry()
            print("registry: python double on :%d" % reg.port)
        else:
            reg = Svc(reg_bin, "registry", tmp, base_env)
            reg.start()
            print("registry: %s on :%d" % (reg_bin, reg.port))
        env = dict(base_env, DISCOVERY_URL=reg.base)
        if pg_url:
            dbname, env["DATABASE_URL"] = pg_database(pg_url)
        gw = Svc(gw_bin, "gateway", tmp, env)
        gw.start()

        # 1. source
        body = upstreams(gw, admin, "product-service")
        if body["registry"]["source"] != "registry" or instances(body):
            fail("fresh gateway: %r" % body)

        # 2. registration shows up
        t0 = time.monotonic()
        st, inst = request(reg.base, "POST", R + "/instances",
                           {"service": "product-service", "address": "127.0.0.1", "port": 18007},
                           token=writer)
        if st not in (200, 201):
            fail("register: %d %r" % (st, inst))
        iid = inst["id"]
        got = wait_for("the registered instance in the upstreams", lambda: [
            i for i in instances(upstreams(gw, admin, "product-service"))
            if i["id"] == iid and i["host"] == "127.0.0.1" and i["port"] == 18007
            and i["state"] == "closed"], deadline=5.0)
        print("ok: instance %s visible after %.0f ms" % (iid, (time.monotonic() - t0) * 1000))
        if upstreams(gw, admin, "product-service")["registry"]["index"] < 1:
            fail("registry index not reported")

        # 3. a new route to a registered service gets its instances at once
        st, r = request(gw.base, "POST", G + "/routes",
                        {"prefix": "/api/v1/catalogue", "service": "product-service"}, token=admin)
        if st != 201:
            fail("create route: %d %r" % (st, r))
        st, r2 = request(reg.base, "POST", R + "/instances",
                         {"service": "cart-service", "address": "127.0.0.1", "port": 18009},
                         token=writer)
        if st not in (200, 201):
            fail("register cart: %d %r" % (st, r2))
        wait_for("cart-service instance", lambda: [
            i for i in instances(upstreams(gw, admin, "cart-service")) if i["port"] == 18009])
        print("ok: second service visible")

        # 3b. a service no route names is not fetched; a new route to it gets its instances
        st, r3 = request(reg.base, "POST", R + "/instances",
                         {"service": "widget-service", "address": "127.0.0.1", "port": 18100},
                         token=writer)
        if st not in (200, 201):
            fail("register widget: %d %r" % (st, r3))
        wait_for("the widget registration to be seen", lambda: upstreams(
            gw, admin, "cart-service")["registry"]["index"] >= 3)
        if upstreams(gw, admin, "widget-service")["data"]:
            fail("an unrouted service is in the upstreams")
        t0 = time.monotonic()
        st, r = request(gw.base, "POST", G + "/routes",
                        {"prefix": "/api/v1/widgets", "service": "widget-service"}, token=admin)
        if st != 201:
            fail("create widget route: %d %r" % (st, r))
        wait_for("the new route's registered instance", lambda: [
            i for i in instances(upstreams(gw, admin, "widget-service")) if i["port"] == 18100],
            deadline=5.0)
        print("ok: new route got its instances after %.0f ms" % ((time.monotonic() - t0) * 1000))

        # 4. deregistration removes it
        st, _ = request(reg.base, "DELETE", R + "/instances/" + iid, token=writer)
        if st not in (200, 204):
            fail("deregister: %d" % st)
        wait_for("the deregistered instance to disappear",
                 lambda: not instances(upstreams(gw, admin, "product-service")), deadline=5.0)
        if not instances(upstreams(gw, admin, "cart-service")):
            fail("cart-service lost its instance on an unrelated change")
        print("ok: deregistered instance gone")

        # 5. registry outage: error reported, last instances kept
        reg.stop()
        reg = None
        wait_for("the registry error in the upstreams",
                 lambda: "last_error" in upstreams(gw, admin, "cart-service")["registry"])
        if not instances(upstreams(gw, admin, "cart-service")):
            fail("instances dropped during a registry outage")
        print("ok: outage reported (%s), instances kept" %
              upstreams(gw, admin, "cart-service")["registry"]["last_error"])

        # 6. SIGTERM while the watcher waits (backoff or long poll) drains quickly
        t0 = time.monotonic()
        gw.stop(deadline=5)
        gw = None
        print("ok: drained in %.0f ms" % ((time.monotonic() - t0) * 1000))

        # 6b. SIGTERM during a long poll against a live registry
        reg = FakeRegistry() if use_fake else Svc(reg_bin, "registry", tmp, base_env)
        reg.start()
        gw = Svc(gw_bin, "gateway", tmp, dict(env, DISCOVERY_URL=reg.base))
        gw.start()
        wait_for("the first registry answer",
                 lambda: upstreams(gw, admin, "product-service")["registry"]["index"] >= 1)
        t0 = time.monotonic()
        gw.stop(deadline=5)
        gw = None
        print("ok: drained during a long poll in %.0f ms" % ((time.monotonic() - t0) * 1000))

        # 7. bad GATEWAY_UPSTREAMS
        for bad in ("product-service", "Product=127.0.0.1:1", "svc=127.0.0.1:0",
                    "svc=127.0.0.1:70000", "svc=:80", "svc=127.0.0.1:80,,x=1.2.3.4:5"):
            e = dict(base_env, GATEWAY_UPSTREAMS=bad, PORT="0", HOST="127.0.0.1",
                     DATA_DIR=os.path.join(tmp, "bad"))
            p = subprocess.run([gw_bin], env=e, capture_output=True, timeout=20)
            # JSON log lines (migrations, jwks) aside, exactly one plain line names the variable.
            lines = [ln for ln in p.stderr.decode().splitlines()
                     if ln.strip() and not ln.startswith("{")]
            if p.returncode != 2 or len(lines) != 1 or "GATEWAY_UPSTREAMS" not in lines[0]:
                fail("GATEWAY_UPSTREAMS=%r: exit %d, stderr %r" % (bad, p.returncode, lines))
        print("ok: malformed GATEWAY_UPSTREAMS refused")
    finally:
        for s in (gw, reg):
            if s is not None and getattr(s, "proc", None) is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
            elif isinstance(s, FakeRegistry):
                s.stop()
        if dbname:
            subprocess.run(["psql", "-q", "-d", pg_url, "-c", "DROP DATABASE IF EXISTS " + dbname],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(tmp, ignore_errors=True)
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
