#!/usr/bin/python3
"""service-discovery with real processes (SERVICES §02).

  test-registry.py BUILD_DIR [PG_URL]    (with PG_URL the registry runs on PostgreSQL)

Checks, each wait being for a condition with a deadline:
  1. a blocking query (?index=N&wait=30s) returns within 100 ms of a registration, with a
     larger X-Registry-Index and the new instance;
  2. TTL: heartbeats keep an instance passing; without them it turns critical after ttl_s and
     is removed after deregister_after_s, with exactly one outbox event per transition;
  3. HTTP checks: /ready failing twice turns the instance critical, one success passing again;
  4. lib/gr's registration client (build/tests/test_discovery run against this registry);
  5. with PG_URL: two replicas on one database publish exactly one event per transition;
  6. Prometheus (the real Debian binary, scripts/prometheus.sh) discovers the passing
     instances through http_sd_configs on /prometheus-targets and lists them in
     /api/v1/targets.
Only the standard library is used (plus psql for PostgreSQL row counts).
"""

import http.server
import json
import os
import shutil
import signal
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

DEADLINE = 20.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
R = "/api/v1/registry"


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


class Svc:
    def __init__(self, binary, name, tmp, env):
        self.bin = binary
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = None
        self.proc = None
        self.logpath = os.path.join(self.dir, "log")
        self.log = open(self.logpath, "ab")

    def start(self):
        env = dict(self.env)
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(self.name + " port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for(self.name + " /ready", lambda: self.req("GET", "/ready")[0] == 200)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def req(self, method, path, body=None, token=None, timeout=10):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request(self.url(path), data=data, method=method)
        if data is not None:
            r.add_header("Content-Type", "application/json")
        if token:
            r.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(r, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None, dict(e.headers)
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, None, {}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("%s did not drain on SIGTERM" % self.name)
            if rc != 0:
                fail("%s exited with status %d" % (self.name, rc))
        self.proc = None
        with open(self.logpath, errors="replace") as f:
            text = f.read()
        for m in SANITIZER_MARKS:
            if m in text:
                fail("%s log holds %r" % (self.name, m))


class Minter:
    def __init__(self, build, tmp):
        self.tool = os.path.join(build, "bin", "gr-jwt")
        self.key = os.path.join(tmp, "k.pem")
        self.jwks = os.path.join(tmp, "jwks.json")
        subprocess.run([self.tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", self.key,
                        "--jwks", self.jwks], check=True, stdout=subprocess.DEVNULL)

    def token(self, perms):
        args = [self.tool, "sign", "--key", self.key, "--alg", "ES256", "--kid", "t", "--sub",
                str(uuid.uuid4()), "--roles", "service", "--ttl", "86400", "--iss", "gravity",
                "--aud", "gravity", "--perms", perms]
        return subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.decode().strip()


class Events:
    """Counts outbox rows of one subject by type, in the SQLite file or through psql."""

    def __init__(self, db_url):
        self.url = db_url

    def count(self, subject):
        if self.url.startswith("sqlite://"):
            con = sqlite3.connect("file:%s?mode=ro" % self.url[len("sqlite://"):], uri=True)
            try:
                rows = con.execute("SELECT type, count(*) FROM outbox WHERE subject = ?"
                                   " GROUP BY type", (subject,)).fetchall()
            finally:
                con.close()
        else:
            out = subprocess.run(["psql", "-At", "-F", "|", self.url, "-c",
                                  "SELECT type, count(*) FROM outbox WHERE subject = '%s'"
                                  " GROUP BY type" % subject],
                                 check=True, stdout=subprocess.PIPE).stdout.decode()
            rows = [tuple(line.split("|")) for line in out.splitlines() if line]
        return {t: int(n) for t, n in rows}


def register(svc, tok, body):
    st, doc, hdr = svc.req("POST", R + "/instances", body, tok)
    if st not in (200, 201):
        fail("register %r: %d %r" % (body, st, doc))
    return doc


def status_of(svc, iid):
    st, doc, _ = svc.req("GET", R + "/instances/" + iid)
    return doc["status"] if st == 200 else ("gone" if st == 404 else "error %d" % st)


def test_blocking(svc, tok):
    st, doc, hdr = svc.req("GET", R + "/services/blk/instances")
    idx = int(hdr["X-Registry-Index"])
    result = {}

    def blocked():
        t0 = time.monotonic()
        result["resp"] = svc.req("GET", R + "/services/blk/instances?index=%d&wait=30s" % idx,
                                 timeout=40)
        result["t"] = time.monotonic()
        result["waited"] = result["t"] - t0

    th = threading.Thread(target=blocked)
    th.start()
    time.sleep(0.3)  # the blocking call must really be waiting before the change
    if "resp" in result:
        fail("blocking query returned before any change: %r" % (result["resp"],))
    register(svc, tok, {"service": "blk", "address": "127.0.0.1", "port": 7001})
    t_reg = time.monotonic()
    th.join(40)
    st, doc, hdr = result["resp"]
    lag = result["t"] - t_reg
    if st != 200 or int(hdr["X-Registry-Index"]) <= idx or len(doc["data"]) != 1:
        fail("blocking query: %d %r %r" % (st, hdr.get("X-Registry-Index"), doc))
    if lag > 0.1:
        fail("blocking query returned %.3f s after the registration (limit 0.1 s)" % lag)
    print("ok: blocking query returned %.1f ms after the registration (blocked %.2f s)"
          % (max(lag, 0) * 1000, result["waited"]))


def test_ttl(svc, tok, events):
    a = register(svc, tok, {"service": "ttl-kept", "address": "127.0.0.1", "port": 7002,
                            "check": {"kind": "ttl", "ttl_s": 1, "deregister_after_s": 1}})
    b = register(svc, tok, {"service": "ttl-lost", "address": "127.0.0.1", "port": 7003,
                            "check": {"kind": "ttl", "ttl_s": 1, "deregister_after_s": 1}})
    beats = {"bad": None, "n": 0}
    stop = threading.Event()

    def beat():  # ttl-kept heartbeats every 0.3 s meanwhile and stays passing
        while not stop.is_set():
            st, doc, _ = svc.req("PUT", R + "/instances/%s/heartbeat" % a["id"], None, tok)
            if st != 200 or doc["status"] != "passing":
                beats["bad"] = (st, doc)
            beats["n"] += 1
            stop.wait(0.3)

    th = threading.Thread(target=beat)
    th.start()
    try:
        t0 = time.monotonic()
        wait_for("ttl-lost critical", lambda: status_of(svc, b["id"]) == "critical")
        crit_after = time.monotonic() - t0
        wait_for("ttl-lost removed", lambda: status_of(svc, b["id"]) == "gone")
    finally:
        stop.set()
        th.join()
    if beats["bad"] is not None:
        fail("heartbeat: %r" % (beats["bad"],))
    if status_of(svc, a["id"]) != "passing":
        fail("an instance that heartbeats went %s" % status_of(svc, a["id"]))
    # Critical only after ttl_s (1 s).
    if crit_after < 0.9:
        fail("critical after %.2f s, before ttl_s" % crit_after)
    ev = events.count(b["id"])
    want = {"registry.instance.registered": 1, "registry.instance.status_changed": 1,
            "registry.instance.deregistered": 1}
    if ev != want:
        fail("events of the expired instance: %r, want %r" % (ev, want))
    if events.count(a["id"]) != {"registry.instance.registered": 1}:
        fail("events of the heartbeating instance: %r" % events.count(a["id"]))
    st, doc, _ = svc.req("GET", R + "/services/ttl-lost/instances")
    if doc["data"]:
        fail("a removed instance is still listed: %r" % doc)
    print("ok: TTL critical after %.2f s, removed, one event per transition" % crit_after)


class Ready(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self):
        self.send_response(Ready.code if self.path == "/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def test_http(svc, tok, events):
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Ready)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        port = srv.server_address[1]
        inst = register(svc, tok, {"service": "web", "address": "127.0.0.1", "port": port,
                                   "check": {"kind": "http", "ttl_s": 1,
                                             "deregister_after_s": 600}})
        time.sleep(1.5)  # at least one successful check round
        if status_of(svc, inst["id"]) != "passing":
            fail("http instance with a ready /ready is %s" % status_of(svc, inst["id"]))
        Ready.code = 503
        t0 = time.monotonic()
        wait_for("http instance critical", lambda: status_of(svc, inst["id"]) == "critical")
        crit_after = time.monotonic() - t0
        if crit_after < 0.9:
            fail("critical after %.2f s: fewer than 2 failed checks 1 s apart" % crit_after)
        Ready.code = 200
        wait_for("http instance passing again", lambda: status_of(svc, inst["id"]) == "passing")
        ev = events.count(inst["id"])
        if ev != {"registry.instance.registered": 1, "registry.instance.status_changed": 2}:
            fail("events of the http-checked instance: %r" % ev)
        svc.req("DELETE", R + "/instances/" + inst["id"], None, tok)
    finally:
        srv.shutdown()
        srv.server_close()
    print("ok: HTTP check: critical after 2 failures (%.2f s), passing after 1 success"
          % crit_after)


def test_client(svc, tok, build):
    """lib/gr's registration client (gr/discovery.h) against this registry: its unit test."""
    binary = os.path.join(build, "tests", "test_discovery")
    if not os.path.exists(binary):
        fail("%s is missing" % binary)
    env = dict(os.environ)
    env.update({"GR_TEST_DISCOVERY_URL": svc.url(""), "GR_TEST_DISCOVERY_TOKEN": tok})
    p = subprocess.run([binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120)
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0 or "SKIPPED" in out:
        fail("test_discovery against the registry:\n" + out)
    print("ok: gr_discovery_start/stop register, heartbeat, re-register and deregister")


def test_replicas(svc, svc2, tok, events):
    inst = register(svc, tok, {"service": "twice", "address": "127.0.0.1", "port": 7004,
                               "check": {"kind": "ttl", "ttl_s": 1, "deregister_after_s": 1}})
    wait_for("removed with two replicas", lambda: status_of(svc2, inst["id"]) == "gone")
    time.sleep(1.0)  # both checkers run several more rounds
    ev = events.count(inst["id"])
    want = {"registry.instance.registered": 1, "registry.instance.status_changed": 1,
            "registry.instance.deregistered": 1}
    if ev != want:
        fail("two replicas: events %r, want %r" % (ev, want))
    print("ok: two replicas on one PostgreSQL published one event per transition")


def test_prometheus(svc, tok, tmp):
    # Two instances that really serve /metrics: the registry itself, under two job names.
    a = register(svc, tok, {"service": "prom-a", "address": "127.0.0.1", "port": svc.port})
    b = register(svc, tok, {"service": "prom-b", "address": "localhost", "port": svc.port})
    pdir = os.path.join(tmp, "prometheus")
    url = subprocess.run([os.path.join(ROOT, "scripts", "prometheus.sh"), "start", pdir,
                          svc.url(R + "/prometheus-targets")], check=True,
                         stdout=subprocess.PIPE).stdout.decode().strip()
    try:
        def listed():
            try:
                with urllib.request.urlopen(url + "/api/v1/targets", timeout=5) as r:
                    doc = json.load(r)
            except (urllib.error.URLError, OSError, ValueError):
                return None
            got = {(t["labels"].get("job"), t["labels"].get("instance_id"))
                   for t in doc["data"]["activeTargets"]}
            return got if {("prom-a", a["id"]), ("prom-b", b["id"])} <= got else None

        got = wait_for("Prometheus to list the registered instances", listed, deadline=30)
        print("ok: Prometheus lists %d targets from http_sd_configs" % len(got))
        # A deregistered instance leaves Prometheus' targets.
        svc.req("DELETE", R + "/instances/" + b["id"], None, tok)

        def dropped():
            with urllib.request.urlopen(url + "/api/v1/targets", timeout=5) as r:
                doc = json.load(r)
            return all(t["labels"].get("instance_id") != b["id"]
                       for t in doc["data"]["activeTargets"])

        wait_for("Prometheus to drop the deregistered instance", dropped, deadline=30)
        print("ok: Prometheus drops a deregistered instance")
    finally:
        subprocess.run([os.path.join(ROOT, "scripts", "prometheus.sh"), "stop", pdir])


def main():
    if len(sys.argv) not in (2, 3):
        fail("usage: test-registry.py BUILD_DIR [PG_URL]")
    build = os.path.abspath(sys.argv[1])
    pg = sys.argv[2] if len(sys.argv) == 3 else None
    binary = os.path.join(build, "bin", "02-service-discovery")
    tmp = tempfile.mkdtemp(prefix="gr-registry-")
    dbname = None
    svcs = []
    try:
        minter = Minter(build, tmp)
        tok = minter.token("registry:write")
        if pg:
            dbname = "gr_reg_%s" % uuid.uuid4().hex[:12]
            subprocess.run(["psql", "-q", pg, "-c", "CREATE DATABASE %s" % dbname], check=True)
            db_url = pg.rsplit("/", 1)[0] + "/" + dbname
        else:
            db_url = "sqlite://" + os.path.join(tmp, "registry.db")
        env = dict(os.environ)
        env.update({"DATABASE_URL": db_url, "JWKS_URL": "file://" + minter.jwks,
                    "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity", "CURSOR_SECRET": "test",
                    "LOG_LEVEL": "info", "LOG_FORMAT": "json",
                    # No bus: events stay in the outbox, where the test counts them.
                    "EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:9"})
        svc = Svc(binary, "registry", tmp, env)
        svcs.append(svc)
        svc.start()
        events = Events(db_url)
        test_blocking(svc, tok)
        test_ttl(svc, tok, events)
        test_http(svc, tok, events)
        test_client(svc, tok, build)
        if pg:
            svc2 = Svc(binary, "registry2", tmp, env)
            svcs.append(svc2)
            svc2.start()
            test_replicas(svc, svc2, tok, events)
        test_prometheus(svc, tok, tmp)
        for s in svcs:
            s.stop()
        print("PASS: test-registry (%s)" % ("pg" if pg else "sqlite"))
    finally:
        for s in svcs:
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        if dbname:
            subprocess.run(["psql", "-q", pg, "-c", "DROP DATABASE IF EXISTS %s" % dbname],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
