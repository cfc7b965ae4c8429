#!/usr/bin/python3
"""inventory-service events end to end with real processes (SERVICES §18, §0 Events).

  test-events.py BUILD_DIR [PG_URL]    (with PG_URL both services run on PostgreSQL)

Starts 14-event-bus-service and 18-inventory-service (EVENT_BUS=http) on free ports and checks:
  1. product.created (delivered twice) makes its variants' skus known;
  2. order.confirmed confirms the order's reservation, order.shipped (twice) commits it once
     (inventory.committed once on the bus), a late order.cancelled is acknowledged and ignored;
  3. order.cancelled (twice) releases once (inventory.released reason released, once);
  4. a reservation with ttl_s=1 expires and publishes inventory.released (reason expired) once;
     inventory.stock_changed carries each on_hand change.
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

DEADLINE = 20.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
BIN = "18-inventory-service"


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


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Svc:
    def __init__(self, build, name, tmp, env, binary=BIN):
        self.bin = os.path.join(build, "bin", binary)
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
        env.update({"PORT": "0", "GR_PORT_FILE": pf})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(self.name + " port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for(self.name + " /ready", lambda: self.req("GET", "/ready")[0] == 200)

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def req(self, method, path, body=None, token=None, headers=None, ctype="application/json"):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data,
                                   method=method)
        if data is not None:
            r.add_header("Content-Type", ctype)
        if token:
            r.add_header("Authorization", "Bearer " + token)
        for k, v in (headers or {}).items():
            r.add_header(k, v)
        try:
            with urllib.request.urlopen(r, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, None

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
        self.log.close()
        text = open(self.logpath, errors="replace").read()
        for m in SANITIZER_MARKS:
            if m in text:
                fail("%s log has %s:\n%s" % (self.name, m, text[-4000:]))


def mint(build, tmp):
    tool = os.path.join(build, "bin", "gr-jwt")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)
    tok = subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--sub",
                          str(uuid.uuid4()), "--roles", "super_admin", "--ttl", "86400",
                          "--perms", "*"], check=True, stdout=subprocess.PIPE)
    return jwks, tok.stdout.decode().strip()


class Db:
    """Read-only SQL on the service's database (sqlite3 module, or psql)."""

    def __init__(self, sqlite_path=None, pg_url=None):
        self.sqlite_path, self.pg_url = sqlite_path, pg_url

    def rows(self, sql):
        if self.sqlite_path:
            con = sqlite3.connect("file:%s?mode=ro" % self.sqlite_path, uri=True, timeout=30)
            try:
                return [tuple(str(c) for c in r) for r in con.execute(sql).fetchall()]
            finally:
                con.close()
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-d", self.pg_url,
                              "-c", sql], check=True, stdout=subprocess.PIPE).stdout.decode()
        return [tuple(line.split("\t")) for line in out.splitlines() if line]


def parallel(n, fn):
    """Runs fn(i) for i in 0..n-1 on n threads released together; returns the results."""
    barrier = threading.Barrier(n)
    res = [None] * n
    errors = []

    def run(i):
        barrier.wait()
        try:
            res[i] = fn(i)
        except BaseException as e:  # fail() in a thread raises SystemExit there
            errors.append(repr(e))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        fail("%d of %d clients failed: %s" % (len(errors), n, errors[:3]))
    return res



def pg_database(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, stdout=subprocess.DEVNULL)
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-inv-events-")
    jwks, tok = mint(build, tmp)
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + jwks, "LOG_LEVEL": "info",
                 "CURSOR_SECRET": "t"})
    benv, ienv, dbs = dict(base), dict(base), []
    benv["DATA_DIR"] = os.path.join(tmp, "bus-data")
    ienv["DATA_DIR"] = os.path.join(tmp, "inv-data")
    if pg:
        tag = uuid.uuid4().hex[:8]
        dbs = ["gr_bus_" + tag, "gr_inv_" + tag]
        benv["DATABASE_URL"] = pg_database(pg, dbs[0])
        ienv["DATABASE_URL"] = pg_database(pg, dbs[1])
    bus = Svc(build, "bus", tmp, benv, "14-event-bus-service")
    inv = None
    ok = False
    try:
        bus.start()
        ienv.update({"EVENT_BUS": "http", "EVENT_BUS_URL": bus.url(), "SERVICE_TOKEN": tok,
                     "INVENTORY_SWEEP_MS": "100"})
        inv = Svc(build, "inv", tmp, ienv)
        inv.start()

        def publish(type_, subject, data):
            ev = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/gravity/test",
                  "type": type_, "subject": subject, "data": data}
            st, body = bus.req("POST", "/api/v1/events", ev, tok,
                               ctype="application/cloudevents+json")
            if st not in (200, 201):
                fail("publish %s: %s %s" % (type_, st, body))

        def bus_events(type_, subject):
            st, body = bus.req("GET", "/api/v1/events?type=%s&limit=100" % type_, token=tok)
            if st != 200:
                fail("list %s: %s" % (type_, st))
            return [d["event"] for d in body["data"] if d["event"].get("subject") == subject]

        def api(method, path, body=None):
            return inv.req(method, "/api/v1" + path, body, tok)

        def status_is(rid, want):
            return lambda: api("GET", "/inventory/reservations/" + rid)[1]["status"] == want

        # 1. product.created makes its variants' skus known (twice: still fine).
        pid = str(uuid.uuid4())
        prod = {"id": pid, "title": "Kettle", "version": 1,
                "variants": [{"id": str(uuid.uuid4()), "sku": "EV-A"},
                             {"id": str(uuid.uuid4()), "sku": "EV-B"}]}
        if api("GET", "/inventory/EV-A")[0] != 404:
            fail("EV-A known before product.created")
        publish("product.created", pid, prod)
        publish("product.created", pid, prod)
        wait_for("product.created to make EV-A known",
                 lambda: api("GET", "/inventory/EV-B")[0] == 200)
        st, body = api("GET", "/inventory/EV-A")
        if (st, body["on_hand"], body["warehouses"]) != (200, 0, []):
            fail("a known sku without stock: %s %s" % (st, body))
        st, wh = api("POST", "/warehouses", {"code": "main"})
        if st != 201:
            fail("warehouse: %s %s" % (st, wh))
        # a negative adjustment of a known sku without stock is a 409, not unknown_sku
        st, body = api("POST", "/inventory/adjustments",
                       {"sku": "EV-B", "warehouse_id": wh["id"], "delta": -1})
        if st != 409 or body["type"] != "urn:gravity:problem:below_reserved":
            fail("negative adjustment of a known sku: %s %s" % (st, body))
        st, body = api("POST", "/inventory/adjustments",
                       {"sku": "EV-A", "warehouse_id": wh["id"], "delta": 5})
        if st != 201:
            fail("stock EV-A: %s %s" % (st, body))
        print("ok: product.created makes its skus known")

        # 2. order.confirmed confirms, order.shipped commits; a late order.cancelled is ignored.
        o1 = str(uuid.uuid4())
        st, r1 = api("POST", "/inventory/reservations",
                     {"order_id": o1, "items": [{"sku": "EV-A", "quantity": 2}]})
        if st != 201:
            fail("reserve o1: %s %s" % (st, r1))
        publish("order.confirmed", o1, {"id": o1, "status": "CONFIRMED", "version": 2})
        wait_for("order.confirmed to confirm", status_is(r1["id"], "confirmed"))
        publish("order.shipped", o1, {"id": o1, "status": "SHIPPED", "version": 4})
        publish("order.shipped", o1, {"id": o1, "status": "SHIPPED", "version": 4})
        wait_for("order.shipped to commit", status_is(r1["id"], "committed"))
        publish("order.cancelled", o1, {"id": o1, "status": "CANCELLED", "version": 5})
        st, lvl = api("GET", "/inventory/EV-A")
        if (lvl["on_hand"], lvl["reserved"]) != (3, 0):
            fail("after commit: %s" % lvl)
        ev = wait_for("inventory.committed on the bus",
                      lambda: bus_events("inventory.committed", r1["id"]))
        if len(ev) != 1 or ev[0]["source"] != "/gravity/inventory-service" \
                or ev[0]["data"]["order_id"] != o1 or ev[0]["data"]["status"] != "committed":
            fail("inventory.committed: %s" % ev)
        if len(wait_for("inventory.reserved on the bus",
                        lambda: bus_events("inventory.reserved", r1["id"]))) != 1:
            fail("inventory.reserved not once")
        print("ok: order.confirmed confirms, order.shipped (twice) commits once")

        # 3. order.cancelled releases once.
        o2 = str(uuid.uuid4())
        st, r2 = api("POST", "/inventory/reservations",
                     {"order_id": o2, "items": [{"sku": "EV-A", "quantity": 3}]})
        if st != 201:
            fail("reserve o2: %s %s" % (st, r2))
        publish("order.cancelled", o2, {"id": o2, "status": "CANCELLED", "version": 2})
        publish("order.cancelled", o2, {"id": o2, "status": "CANCELLED", "version": 2})
        wait_for("order.cancelled to release", status_is(r2["id"], "released"))
        # a marker event after them (o4): once applied, both cancellations were consumed
        o3 = str(uuid.uuid4())
        st, r3 = api("POST", "/inventory/reservations",
                     {"order_id": o3, "ttl_s": 1, "items": [{"sku": "EV-A", "quantity": 1}]})
        if st != 201:
            fail("reserve o3: %s %s" % (st, r3))
        o4 = str(uuid.uuid4())
        st, r4 = api("POST", "/inventory/reservations",
                     {"order_id": o4, "items": [{"sku": "EV-A", "quantity": 1}]})
        if st != 201:
            fail("reserve o4: %s %s" % (st, r4))
        publish("order.confirmed", o4, {"id": o4, "status": "CONFIRMED", "version": 2})
        wait_for("the marker order.confirmed", status_is(r4["id"], "confirmed"))
        st, _ = api("POST", "/inventory/reservations/%s/release" % r4["id"])
        if st != 200:
            fail("release o4: %s" % st)
        ev = wait_for("inventory.released of o2 on the bus",
                      lambda: bus_events("inventory.released", r2["id"]))
        if len(ev) != 1 or ev[0]["data"]["reason"] != "released":
            fail("inventory.released of o2: %s" % ev)
        if len(bus_events("inventory.committed", r1["id"])) != 1:
            fail("the second order.shipped committed again")
        print("ok: order.cancelled (twice) releases once")

        # 4. expiry publishes inventory.released (reason expired) once; stock is back.
        wait_for("o3 to expire", status_is(r3["id"], "expired"))
        ev = wait_for("inventory.released of o3 on the bus",
                      lambda: bus_events("inventory.released", r3["id"]))
        if len(ev) != 1 or ev[0]["data"]["reason"] != "expired":
            fail("inventory.released of o3: %s" % ev)
        st, lvl = api("GET", "/inventory/EV-A")
        if (lvl["on_hand"], lvl["reserved"], lvl["available"]) != (3, 0, 3):
            fail("after expiry: %s" % lvl)
        changed = wait_for("stock_changed events of EV-A",
                           lambda: (lambda l: l if len(l) >= 2 else None)(
                               bus_events("inventory.stock_changed", "EV-A")))
        if sorted(e["data"]["on_hand"] for e in changed) != [3, 5]:
            fail("stock_changed of EV-A: %s" % [e["data"] for e in changed])
        print("ok: expiry publishes inventory.released once; stock_changed per on_hand change")
        ok = True
    finally:
        if inv:
            inv.stop()
        bus.stop()
        for d in dbs:
            subprocess.run(["psql", "-X", "-q", "-d", pg, "-c",
                            'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % d],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept " + tmp)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
