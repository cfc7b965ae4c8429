#!/usr/bin/python3
"""api-gateway in production mode on loopback: registry, gateway and two product-service
instances on one real PostgreSQL, Redis and NATS, with an instance killed under load.

  test-prod-mode.py BUILD_DIR [--pg-url URL] [--redis-url URL] [--nats-url URL]
                    [--duration S] [--rate R] [--clients N] [--ttl S]

Servers: the PostgreSQL of --pg-url (else GR_TEST_PG_URL, else one started here with
scripts/pg.sh), the Redis of --redis-url (else GR_TEST_REDIS_URL, else scripts/redis.sh), the
nats-server of --nats-url (else GR_TEST_NATS_URL, else scripts/nats.sh). Only what this test
started is stopped. Every service gets its own database (02, 03, and one shared by the two 17
instances, as replicas share theirs), REDIS_URL, EVENT_BUS=nats, DISCOVERY_URL and a small
DISCOVERY_TTL, and registers itself with 02 (SERVICE_TOKEN with registry:write).

Steps, every wait polling a condition with a deadline:
  1. 02 starts; 03 and two 17 instances register; each reports PostgreSQL and the NATS bus
     up (/health/detailed); the gateway lists both 17 instances (its GATEWAY_RATE_IP is far
     above the load, so every request also takes a token on Redis);
  2. products are created through the gateway (a products:write token) and read back;
  3. CLIENTS keep-alive client threads GET the products through the gateway at a bounded
     total RATE for DURATION seconds; after ~5 s one 17 instance is killed with SIGKILL;
  4. asserts: no failed client request (each answer 200 with the product asked for); the dead
     instance leaves 02's passing list within its TTL (plus one checker round and a margin for
     sanitizer builds; the time is printed); the gateway drops it from its upstreams; the
     surviving instance served every request made after the kill (its own /metrics);
  5. everything left stops on SIGTERM with status 0 and no sanitizer report in its log.
Prints the figures (requests, failures, rate, time to leave the registry). Standard library only.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DEADLINE = 30.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
R = "/api/v1/registry"
G = "/api/v1/gateway"
ISS = AUD = "gravity"


def fail(msg):
    print("FAIL: " + msg, flush=True)
    raise SystemExit(1)


def wait_for(what, cond, deadline=DEADLINE, step=0.05):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    fail("timed out waiting for " + what)


def request(port, method, path, body=None, token=None, timeout=10):
    """One request on a fresh connection: (status, parsed JSON or raw bytes, headers)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        h = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if token:
            h["Authorization"] = "Bearer " + token
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw
        return r.status, doc, dict((k.lower(), v) for k, v in r.getheaders())
    except OSError:
        return 0, None, {}


def script(*args):
    r = subprocess.run([os.path.join(ROOT, "scripts", args[0])] + list(args[1:]),
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail("scripts/%s: %s" % (" ".join(args), r.stderr.strip()[-500:]))
    return r.stdout.strip().splitlines()[-1]


class Svc:
    """A gr service binary on a free loopback port, its own data dir and log."""

    def __init__(self, binary, name, tmp, env):
        self.bin, self.name, self.env = binary, name, env
        self.dir = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.logpath = os.path.join(self.dir, "log")
        self.proc = None
        self.port = None

    def start(self):
        pf = os.path.join(self.dir, "port")
        env = dict(self.env, PORT="0", HOST="127.0.0.1", GR_PORT_FILE=pf,
                   DATA_DIR=os.path.join(self.dir, "data"))
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)

        def port():
            if self.proc.poll() is not None:
                fail("%s exited with %d: %s" % (self.name, self.proc.returncode, self.tail()))
            try:
                t = open(pf).read().strip()
            except OSError:
                return None
            return int(t) if t.isdigit() else None
        self.port = wait_for(self.name + " port file", port, 60)
        wait_for(self.name + " /ready", lambda: request(self.port, "GET", "/ready")[0] == 200, 60)

    def tail(self, n=20):
        try:
            with open(self.logpath, errors="replace") as f:
                return "\n    ".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, deadline=20):
        """SIGTERM; returns a problem string or None."""
        why = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=deadline)
                if rc != 0:
                    why = "%s exited with status %d" % (self.name, rc)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                why = "%s did not stop on SIGTERM within %d s" % (self.name, deadline)
        elif self.proc.returncode not in (0, -signal.SIGKILL):
            why = "%s had exited with status %d" % (self.name, self.proc.returncode)
        self.log.close()
        with open(self.logpath, errors="replace") as f:
            text = f.read()
        for m in SANITIZER_MARKS:
            if m in text:
                why = "%s log holds %r" % (self.name, m)
        return why


def metric_sum(port, pred):
    st, body, _ = request(port, "GET", "/metrics")
    if st != 200:
        return None
    text = body.decode() if isinstance(body, bytes) else str(body)
    total = 0.0
    for ln in text.splitlines():
        m = re.match(r"^http_requests_total\{(.*)\} ([0-9.eE+]+)$", ln)
        if m and pred(dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))):
            total += float(m.group(2))
    return total


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__)
        return 2

    def opt(name, default=None):
        return args[args.index(name) + 1] if name in args else default

    build = os.path.abspath(args[0])
    pg_url = opt("--pg-url", os.environ.get("GR_TEST_PG_URL"))
    redis_url = opt("--redis-url", os.environ.get("GR_TEST_REDIS_URL"))
    nats_url = opt("--nats-url", os.environ.get("GR_TEST_NATS_URL"))
    duration = float(opt("--duration", "20"))
    rate = float(opt("--rate", "200"))
    nclients = int(opt("--clients", "4"))
    ttl = int(opt("--ttl", "3"))
    kill_at = min(5.0, duration / 4)
    bindir = os.path.join(build, "bin")
    for b in ("02-service-discovery", "03-api-gateway", "17-product-service", "gr-jwt"):
        if not os.access(os.path.join(bindir, b), os.X_OK):
            fail("%s not built in %s" % (b, bindir))
    tool = os.path.join(bindir, "gr-jwt")

    tmp = tempfile.mkdtemp(prefix="gw-prod-")
    os.chmod(tmp, 0o755)
    started = []  # (script, dir) of the servers this test started
    svcs = []
    problems = []
    try:
        if not pg_url:
            pg_url = script("pg.sh", "start", os.path.join(tmp, "pg"))
            started.append(("pg.sh", os.path.join(tmp, "pg")))
        if not redis_url:
            redis_url = script("redis.sh", "start", os.path.join(tmp, "redis"))
            started.append(("redis.sh", os.path.join(tmp, "redis")))
        if not nats_url:
            nats_url = script("nats.sh", "start", os.path.join(tmp, "nats"))
            started.append(("nats.sh", os.path.join(tmp, "nats")))
        print("servers: %s, %s, %s" % (pg_url, redis_url, nats_url), flush=True)

        def database(svc):
            name = "gwprod_%s_%s" % (svc, uuid.uuid4().hex[:8])
            subprocess.run(["psql", "-q", "-d", pg_url, "-c", "CREATE DATABASE " + name],
                           check=True, stdout=subprocess.DEVNULL)
            return pg_url.rsplit("/", 1)[0] + "/" + name

        key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
        subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key,
                        "--jwks", jwks], check=True, stdout=subprocess.DEVNULL)

        def mint(perms, roles):
            return subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t",
                                   "--sub", str(uuid.uuid4()), "--roles", roles, "--ttl", "3600",
                                   "--iss", ISS, "--aud", AUD, "--perms", perms],
                                  check=True, stdout=subprocess.PIPE).stdout.decode().strip()

        svc_token = mint("registry:write", "service")
        admin = mint("gateway:admin", "admin")
        manager = mint("products:read,products:write", "manager")
        base = {k: v for k, v in os.environ.items()
                if k not in ("DISCOVERY_URL", "GATEWAY_UPSTREAMS", "DATABASE_URL", "REDIS_URL",
                             "NATS_URL", "EVENT_BUS", "EVENT_BUS_URL", "SERVICE_TOKEN")}
        base.update({"JWKS_URL": "file://" + jwks, "JWT_ISSUER": ISS, "JWT_AUDIENCE": AUD,
                     "LOG_LEVEL": "warn", "LOG_FORMAT": "json", "CURSOR_SECRET": "prod-mode-test",
                     "REDIS_URL": redis_url, "EVENT_BUS": "nats", "NATS_URL": nats_url,
                     "SERVICE_TOKEN": svc_token, "DISCOVERY_TTL": str(ttl)})

        reg = Svc(os.path.join(bindir, "02-service-discovery"), "registry", tmp,
                  dict(base, DATABASE_URL=database("registry")))
        svcs.append(reg)
        reg.start()
        base["DISCOVERY_URL"] = "http://127.0.0.1:%d" % reg.port
        gw = Svc(os.path.join(bindir, "03-api-gateway"), "gateway", tmp,
                 dict(base, DATABASE_URL=database("gateway"), GATEWAY_THREADS="2",
                      # a per-IP limit far above the load: every request takes a token on Redis
                      GATEWAY_RATE_IP="100000:100000"))
        svcs.append(gw)
        gw.start()
        pdb = database("product")
        p1 = Svc(os.path.join(bindir, "17-product-service"), "product-1", tmp,
                 dict(base, DATABASE_URL=pdb))
        p2 = Svc(os.path.join(bindir, "17-product-service"), "product-2", tmp,
                 dict(base, DATABASE_URL=pdb))
        svcs += [p1, p2]
        p1.start()
        p2.start()
        print("02 on :%d, 03 on :%d, 17 on :%d and :%d (TTL %d s)" %
              (reg.port, gw.port, p1.port, p2.port, ttl), flush=True)

        def registry_ports():
            st, doc, _ = request(reg.port, "GET", R + "/services/product-service/instances")
            if st != 200:
                return None
            return {i["port"] for i in doc["data"] if i.get("status", "passing") == "passing"}

        def gateway_ports():
            st, doc, _ = request(gw.port, "GET", G + "/upstreams?service=product-service",
                                 token=admin)
            if st != 200 or not doc["data"]:
                return set()
            return {i["port"] for i in doc["data"][0]["instances"]}

        def backends_up(s):
            st, doc, _ = request(s.port, "GET", "/health/detailed")
            checks = doc.get("checks", {}) if st == 200 and isinstance(doc, dict) else {}
            db, bus = checks.get("database", {}), checks.get("bus", {})
            return (db.get("engine") == "postgres" and db.get("status") == "up" and
                    bus.get("backend") == "nats" and bus.get("status") == "up")
        for s in (reg, gw, p1, p2):
            wait_for(s.name + " on PostgreSQL and the NATS bus (/health/detailed)",
                     lambda: backends_up(s))
        print("ok: every service reports PostgreSQL and the NATS bus up", flush=True)
        wait_for("both 17 instances passing in 02",
                 lambda: registry_ports() == {p1.port, p2.port})
        wait_for("both 17 instances in the gateway's upstreams",
                 lambda: gateway_ports() == {p1.port, p2.port})
        print("ok: both product-service instances registered and routed", flush=True)

        # 2. seed through the gateway
        uniq = uuid.uuid4().hex[:8]
        products = []
        for i in range(12):
            slug = "prod-%s-%d" % (uniq, i)
            st, doc, _ = request(gw.port, "POST", "/api/v1/products", token=manager, body={
                "title": "Product %d" % i, "slug": slug, "status": "active",
                "variants": [{"sku": "SKU-%s-%d" % (uniq, i),
                              "price": {"amount": 100 + i, "currency": "usd"}}]})
            if st != 201:
                fail("create product %d through the gateway: %d %r" % (i, st, doc))
            products.append((doc["id"], slug))
        st, doc, _ = request(gw.port, "POST", "/api/v1/products", body={"title": "x"})
        if st not in (401, 403):
            fail("a create without a token was %d, not 401/403" % st)
        for pid, slug in products:
            st, doc, _ = request(gw.port, "GET", "/api/v1/products/" + pid)
            if st != 200 or doc.get("slug") != slug:
                fail("read back %s: %d %r" % (pid, st, doc))
        print("ok: %d products created and read back through the gateway" % len(products),
              flush=True)
        # A local answer (404, no route) on a kept-alive connection is given once; the next
        # request on that connection gets its own answer.
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        got = []
        try:
            for path in ("/api/v1/no-such-route/x", "/api/v1/products/" + products[0][0]):
                conn.request("GET", path)
                r = conn.getresponse()
                got.append((r.status, r.read()))
        except (OSError, http.client.HTTPException) as e:
            got.append((0, ("%s: %s" % (type(e).__name__, e)).encode()))
        conn.close()
        got += [(0, b"")] * (2 - len(got))
        if (got[0][0] != 404 or got[1][0] != 200 or
                json.loads(got[1][1]).get("id") != products[0][0]):
            fail("404 then 200 on one kept-alive connection: got %r" %
                 [(st, b[:80]) for st, b in got])
        print("ok: a 404 on a kept-alive connection is answered once, the next request served")

        def served(port):
            return metric_sum(port, lambda l: l.get("method") == "GET" and l.get("status") == "200"
                              and l.get("route", "").startswith("/api/v1/products/"))

        # 3. load, and a kill -9 after kill_at seconds
        lock = threading.Lock()
        stats = {"ok": 0, "fail": 0, "after_kill": 0, "errors": []}
        killed = threading.Event()
        stop_at = time.monotonic() + duration
        per_client = rate / nclients

        def client(n):
            conn = None
            k = n
            next_t = time.monotonic()
            while time.monotonic() < stop_at:
                next_t += 1.0 / per_client
                pause = next_t - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pid, slug = products[k % len(products)]
                k += 1
                after = killed.is_set()
                err = None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
                    conn.request("GET", "/api/v1/products/" + pid)
                    r = conn.getresponse()
                    raw = r.read()
                    if r.status != 200:
                        err = "status %d: %s" % (r.status, raw[:300])
                    else:
                        doc = json.loads(raw)
                        if doc.get("id") != pid or doc.get("slug") != slug:
                            err = "wrong body for %s: %s" % (pid, raw[:200])
                    if r.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException, ValueError) as e:
                    err = "%s: %s" % (type(e).__name__, e)
                    if conn is not None:
                        conn.close()
                    conn = None
                with lock:
                    if err:
                        stats["fail"] += 1
                        if len(stats["errors"]) < 10:
                            stats["errors"].append(err)
                    else:
                        stats["ok"] += 1
                        if after:
                            stats["after_kill"] += 1
            if conn is not None:
                conn.close()

        before2 = served(p2.port)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(nclients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(kill_at)  # load runs meanwhile; the kill happens at a point in time
        with lock:
            at_kill = stats["ok"] + stats["fail"]
        p1.kill9()
        t_kill = time.monotonic()
        killed.set()
        print("killed product-1 (:%d) with SIGKILL after %.1f s and %d requests" %
              (p1.port, t_kill - t0, at_kill), flush=True)
        left = wait_for("the dead instance to leave 02's passing list",
                        lambda: (p1.port not in (registry_ports() or {p1.port})) and
                        time.monotonic(), deadline=ttl + 15, step=0.02)
        t_left = left - t_kill
        gone = wait_for("the gateway to drop the dead instance",
                        lambda: gateway_ports() == {p2.port} and time.monotonic(),
                        deadline=15, step=0.02)
        t_gone = gone - t_kill
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        after2 = served(p2.port)

        total = stats["ok"] + stats["fail"]
        print("figures: %d requests in %.1f s (%.0f/s) by %d keep-alive clients, %d failed, "
              "%d after the kill" % (total, elapsed, total / elapsed, nclients, stats["fail"],
                                     stats["after_kill"]))
        print("figures: the dead instance left 02's passing list %.2f s after the kill "
              "(TTL %d s); the gateway dropped it after %.2f s" % (t_left, ttl, t_gone))
        print("figures: the surviving instance served %d product GETs during the run" %
              (after2 - before2), flush=True)
        if stats["fail"]:
            fail("%d client requests failed, e.g. %s" % (stats["fail"], stats["errors"]))
        print("ok: no client request failed")
        if total < duration * rate * 0.5:
            fail("only %d requests in %.1f s (asked for %.0f/s)" % (total, elapsed, rate))
        # Heartbeats every TTL/3, a checker round every 250 ms: critical at most TTL after the
        # last heartbeat, i.e. within TTL of the kill; 1.5 s of margin for sanitizer builds.
        if t_left > ttl + 1.5:
            fail("the dead instance stayed passing %.2f s (TTL %d s)" % (t_left, ttl))
        print("ok: the dead instance left the registry within its TTL (%.2f s)" % t_left)
        if after2 - before2 < stats["after_kill"]:
            fail("the survivor served %d requests, fewer than the %d answered after the kill" %
                 (after2 - before2, stats["after_kill"]))
        print("ok: the surviving instance served every request after the kill")
        st, doc, _ = request(gw.port, "GET", "/api/v1/products/" + products[0][0])
        if st != 200:
            fail("GET after the run: %d" % st)
        for s in (gw, p2, reg):
            why = s.stop()
            svcs.remove(s)
            if why:
                problems.append(why)
        why = p1.stop()
        svcs.remove(p1)
        if why:
            problems.append(why)
        if problems:
            fail("; ".join(problems))
        print("ok: every process stopped cleanly")
        return 0
    finally:
        for s in svcs:
            s.stop(5)
        for sc, d in reversed(started):
            subprocess.run([os.path.join(ROOT, "scripts", sc), "stop", d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
