#!/usr/bin/python3
"""Outbox -> 14-event-bus-service -> inbox, end to end with real processes (SERVICES §0 Events).

  test-outbox.py BUILD_DIR [PG_URL]    (with PG_URL both services run on PostgreSQL)

Starts 14-event-bus-service and 17-product-service (EVENT_BUS=http) on free ports and checks:
  1. a product created through the API is published once as product.created, with the
     CloudEvents attributes and the product as data; a refused write (422, 409) publishes
     nothing and leaves no outbox row;
  2. with the bus down, a create stays in the outbox; the product service is then killed
     with SIGKILL, the bus and the service restart, and the event is published exactly once;
  3. the product service consumes file.deleted: the image leaves the product and one
     product.updated follows; a replay of the subscription redelivers the event and the
     inbox makes it a no-op (no second product.updated, no change).
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402  (mint)

DEADLINE = 15.0


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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Svc:
    def __init__(self, build, name, tmp, env):
        self.bin = os.path.join(build, "bin", name)
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = None
        self.proc = None
        self.log = open(os.path.join(self.dir, "log"), "ab")

    def start(self):
        env = dict(self.env)
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": str(self.port or 0), "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(self.name + " port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for(self.name + " /ready", lambda: self.get("/ready")[0] == 200)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def req(self, method, path, body=None, token=None, ctype="application/json"):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request(self.url(path), data=data, method=method)
        if data is not None:
            r.add_header("Content-Type", ctype)
        if token:
            r.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, None

    def get(self, path, token=None):
        return self.req("GET", path, token=token)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None


def events_of(bus, token, type_):
    st, body = bus.get("/api/v1/events?type=%s&limit=100" % type_, token)
    if st != 200:
        return None
    return [d["event"] for d in body["data"]]


def metric(svc, name):
    r = urllib.request.urlopen(svc.url("/metrics"), timeout=10)
    total = 0.0
    for line in r.read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def outbox_rows(db):
    """Rows in the product service's outbox: db is a SQLite path or a PostgreSQL URL."""
    if db.startswith("postgres"):
        out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-d", db, "-c",
                              "SELECT COUNT(*) FROM outbox"], check=True,
                             stdout=subprocess.PIPE).stdout.decode().strip()
        return int(out)
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        c.close()


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
    tmp = tempfile.mkdtemp(prefix="gr-bus-")
    jwks, token = chaos.mint(build, tmp)
    base = dict(os.environ)
    base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + jwks, "LOG_LEVEL": "info",
                 "CURSOR_SECRET": "t"})
    base.pop("DATABASE_URL", None)
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    benv = dict(base)
    penv = dict(base)
    if pg:
        tag = uuid.uuid4().hex[:8]
        benv["DATABASE_URL"] = pg_database(pg, "gr_bus_" + tag)
        penv["DATABASE_URL"] = pg_database(pg, "gr_prod_" + tag)
    bus = Svc(build, "14-event-bus-service", tmp, benv)
    bus.start()
    penv.update({"EVENT_BUS": "http", "EVENT_BUS_URL": bus.url(""), "SERVICE_TOKEN": token})
    prod = Svc(build, "17-product-service", tmp, penv)
    prod.start()
    pdb = penv.get("DATABASE_URL") or os.path.join(prod.dir, "data", "product-service.db")
    try:
        # 1. one create -> one event; refused writes -> nothing.
        slug = "p-" + uuid.uuid4().hex[:8]
        st, p = prod.req("POST", "/api/v1/products", {"title": "Lamp", "slug": slug,
                                                      "status": "active"}, token)
        if st != 201:
            fail("create: %s %s" % (st, p))
        ev = wait_for("product.created on the bus",
                      lambda: [e for e in events_of(bus, token, "product.created") or []
                               if e.get("subject") == p["id"]])
        if len(ev) != 1:
            fail("expected one product.created, got %d" % len(ev))
        e = ev[0]
        for k, want in (("specversion", "1.0"), ("source", "/gravity/product-service"),
                        ("type", "product.created"), ("subject", p["id"])):
            if e.get(k) != want:
                fail("event %s = %r, want %r" % (k, e.get(k), want))
        if e["data"] != p:
            fail("event data is not the created product")
        st, _ = prod.req("POST", "/api/v1/products", {"title": "", "slug": "x"}, token)
        st2, _ = prod.req("POST", "/api/v1/products", {"title": "Dup", "slug": slug}, token)
        if (st, st2) != (422, 409):
            fail("refused writes gave %s, %s" % (st, st2))
        wait_for("outbox drained", lambda: outbox_rows(pdb) == 0)
        n_created = len(events_of(bus, token, "product.created"))
        if n_created != 1:
            fail("refused writes published events: %d product.created" % n_created)
        print("ok: create publishes once, refused writes publish nothing")

        # 2. bus down: the event waits in the outbox, survives kill -9, is published once.
        bus.stop()
        st, p2 = prod.req("POST", "/api/v1/products", {"title": "Desk", "slug": slug + "-2"},
                          token)
        if st != 201:
            fail("create with the bus down: %s" % st)
        if outbox_rows(pdb) != 1:
            fail("the event is not waiting in the outbox")

        def bus_health():
            st, h = prod.get("/health/detailed")
            return h if st == 200 else None

        h = wait_for("/health/detailed to report the bus down with one event waiting",
                     lambda: (lambda x: x if x and x["checks"]["bus"]["status"] == "down"
                              and x["checks"]["bus"]["outbox_pending"] == 1 else None)(
                                  bus_health()))
        if h["status"] != "degraded":
            fail("a bus that is down must make /health/detailed degraded: %s" % h)
        prod.stop(signal.SIGKILL)
        bus.start()
        prod.start()
        ev = wait_for("product.created after kill -9",
                      lambda: [e for e in events_of(bus, token, "product.created") or []
                               if e.get("subject") == p2["id"]])
        wait_for("outbox drained after restart", lambda: outbox_rows(pdb) == 0)
        if len(ev) != 1:
            fail("kill -9: expected one event, got %d" % len(ev))
        wait_for("/health/detailed to report the bus up again",
                 lambda: (lambda x: x and x["checks"]["bus"]["status"] == "up"
                          and x["checks"]["bus"]["outbox_pending"] == 0)(bus_health()))
        print("ok: kill -9 after commit still publishes, once")

        # 3. consuming file.deleted, and a replay is a no-op thanks to the inbox.
        fid = str(uuid.uuid4())
        st, _ = prod.req("POST", "/api/v1/products/%s/images" % p["id"],
                         {"file_id": fid, "position": 0}, token)
        if st != 201:
            fail("image add: %s" % st)
        wait_for("outbox drained", lambda: outbox_rows(pdb) == 0)
        updates_before = len([x for x in events_of(bus, token, "product.updated")
                              if x.get("subject") == p["id"]])
        fe = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/gravity/file-storage",
              "type": "file.deleted", "subject": fid, "data": {"id": fid}}
        st, _ = bus.req("POST", "/api/v1/events", fe, token, "application/cloudevents+json")
        if st != 201:
            fail("publish file.deleted: %s" % st)

        def image_gone():
            s, body = prod.get("/api/v1/products/" + p["id"], token)
            return s == 200 and body["images"] == []
        wait_for("image removed by file.deleted", image_gone)

        def updates():
            return len([x for x in events_of(bus, token, "product.updated")
                        if x.get("subject") == p["id"]])
        wait_for("product.updated after file.deleted", lambda: updates() == updates_before + 1)
        st, subs = bus.get("/api/v1/event-subscriptions", token)
        sid = [s["id"] for s in subs["data"] if s["name"] == "product-service"]
        if st != 200 or len(sid) != 1:
            fail("product-service has no subscription on the bus")
        consumed = metric(prod, "inbox_applied_total")
        st, rep = bus.req("POST", "/api/v1/event-subscriptions/%s/replay" % sid[0],
                          {"after_seq": 0}, token)
        if st != 200 or rep.get("replayed", 0) < 1:
            fail("replay: %s %s" % (st, rep))
        # The consumer acks every delivery it took, applied or found in the inbox.
        wait_for("replayed event consumed",
                 lambda: metric(prod, "inbox_applied_total") >= consumed + rep["replayed"])
        if updates() != updates_before + 1:
            fail("the replayed file.deleted was applied twice")
        print("ok: file.deleted consumed once; a replay is a no-op")
    finally:
        prod.stop()
        bus.stop()
    print("all bus checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
