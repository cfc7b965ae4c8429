#!/usr/bin/python3
"""discount-service events end to end with real processes (SERVICES §22 Events, §0 Events).

  test-events.py BUILD_DIR [PG_URL]    (with PG_URL both services run on PostgreSQL)

Starts 14-event-bus-service and 22-discount-service (EVENT_BUS=http) on free ports and checks:
  1. order.confirmed (published twice with two event ids, and replayed) confirms the order's
     reservation once: coupon.redeemed reaches the bus exactly once with the redemption
     (status confirmed, version 2) as data, source /gravity/discount-service;
  2. order.cancelled releases a reservation (release_reason order_cancelled) and a confirmed
     redemption alike, frees their slots and publishes coupon.released for each;
  3. taking the last slot publishes coupon.exhausted with the coupon as data.
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

DEADLINE = 20.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")


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
    def __init__(self, build, name, tmp, env):
        self.bin = os.path.join(build, "bin", name)
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = None
        self.proc = None
        self.name = name
        self.log = open(os.path.join(self.dir, "log"), "ab")

    def start(self, extra=None):
        env = dict(self.env)
        env.update(extra or {})
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": "0", "GR_PORT_FILE": pf, "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(self.name + " port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for(self.name + " /ready", lambda: self.req("GET", "/ready")[0] == 200)

    def req(self, method, path, body=None, token=None, ctype="application/json"):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data,
                                   method=method)
        if data is not None:
            r.add_header("Content-Type", ctype)
        if token:
            r.add_header("Authorization", "Bearer " + token)
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


class Minter:
    """One ES256 key and JWKS; tokens through build/bin/gr-jwt."""

    def __init__(self, build, tmp):
        self.tool = os.path.join(build, "bin", "gr-jwt")
        self.key = os.path.join(tmp, "k.pem")
        self.jwks = os.path.join(tmp, "jwks.json")
        subprocess.run([self.tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", self.key,
                        "--jwks", self.jwks], check=True, stdout=subprocess.DEVNULL)

    def token(self, sub, perms, roles):
        args = [self.tool, "sign", "--key", self.key, "--alg", "ES256", "--kid", "t", "--sub",
                sub, "--roles", roles, "--ttl", "86400", "--perms", perms]
        return subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.decode().strip()


def pg_database(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, stdout=subprocess.DEVNULL)
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pg_drop(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c",
                    'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-discount-events-")
    mint = Minter(build, tmp)
    admin = mint.token(str(uuid.uuid4()), "*", "super_admin")
    service = mint.token(str(uuid.uuid4()), "coupons:read,coupon-redemptions:write", "service")
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks, "LOG_LEVEL": "info",
                 "CURSOR_SECRET": "t"})
    benv, denv, dbs = dict(base), dict(base), []
    if pg:
        tag = uuid.uuid4().hex[:8]
        dbs = ["gr_bus_" + tag, "gr_disc_" + tag]
        benv["DATABASE_URL"] = pg_database(pg, dbs[0])
        denv["DATABASE_URL"] = pg_database(pg, dbs[1])
    bus = Svc(build, "14-event-bus-service", tmp, benv)
    bus.start()
    denv.update({"EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:%d" % bus.port,
                 "SERVICE_TOKEN": admin})
    disc = Svc(build, "22-discount-service", tmp, denv)
    disc.start()
    line = [{"product_id": str(uuid.uuid4()), "quantity": 2,
             "unit_price": {"amount": 1250, "currency": "usd"}}]

    def publish(type_, subject, data, event_id=None):
        ev = {"specversion": "1.0", "id": event_id or str(uuid.uuid4()),
              "source": "/gravity/order-service", "type": type_, "subject": subject, "data": data}
        st, b = bus.req("POST", "/api/v1/events", ev, admin, "application/cloudevents+json")
        if st not in (200, 201):
            fail("publish %s: %s %s" % (type_, st, b))
        return ev["id"]

    def bus_events(type_, subject):
        st, b = bus.req("GET", "/api/v1/events?type=%s&limit=100" % type_, token=admin)
        if st != 200:
            fail("list %s: %s" % (type_, st))
        return [d["event"] for d in b["data"] if d["event"].get("subject") == subject]

    def reserve(code, order):
        st, r = disc.req("POST", "/api/v1/coupon-redemptions",
                         {"code": code, "order_id": order, "user_id": str(uuid.uuid4()),
                          "currency": "usd", "lines": line}, service)
        if st != 201:
            fail("reserve %s for %s: %s %s" % (code, order, st, r))
        return r

    def redemption(rid):
        return disc.req("GET", "/api/v1/coupon-redemptions/" + rid, token=service)[1]

    def coupon(cid):
        return disc.req("GET", "/api/v1/coupons/" + cid, token=admin)[1]

    try:
        st, c = disc.req("POST", "/api/v1/coupons", {"code": "EVT", "kind": "percent",
                                                     "percent_off_bp": 1000,
                                                     "max_redemptions": 3}, admin)
        if st != 201:
            fail("create coupon: %s %s" % (st, c))
        # 1. order.confirmed twice (two event ids) and a replay: confirmed once.
        o1 = str(uuid.uuid4())
        r1 = reserve("EVT", o1)
        publish("order.confirmed", o1, {"id": o1, "status": "CONFIRMED", "version": 2})
        publish("order.confirmed", o1, {"id": o1, "status": "CONFIRMED", "version": 2})
        wait_for("order.confirmed to confirm the reservation",
                 lambda: redemption(r1["id"])["status"] == "confirmed")
        st, subs = bus.req("GET", "/api/v1/event-subscriptions", token=admin)
        sid = [s["id"] for s in subs["data"] if s["name"] == "discount-service"]
        if st != 200 or len(sid) != 1:
            fail("discount-service has no subscription on the bus")
        st, rep = bus.req("POST", "/api/v1/event-subscriptions/%s/replay" % sid[0],
                          {"after_seq": 0}, admin)
        if st != 200 or rep.get("replayed", 0) < 2:
            fail("replay: %s %s" % (st, rep))
        # A marker after the replay: once it is applied, so is everything before it.
        om = str(uuid.uuid4())
        rm = reserve("EVT", om)
        publish("order.cancelled", om, {"id": om, "status": "CANCELLED", "version": 2})
        wait_for("the marker's release", lambda: redemption(rm["id"])["status"] == "released")
        if redemption(r1["id"])["version"] != 2:
            fail("a replayed order.confirmed changed the redemption: %s" % redemption(r1["id"]))
        ev = wait_for("coupon.redeemed on the bus", lambda: bus_events("coupon.redeemed", r1["id"]))
        if (len(ev) != 1 or ev[0]["source"] != "/gravity/discount-service"
                or ev[0]["data"]["status"] != "confirmed" or ev[0]["data"]["version"] != 2
                or ev[0]["data"]["order_id"] != o1
                or ev[0]["data"]["discount"] != {"amount": 250, "currency": "usd"}):
            fail("coupon.redeemed: %s" % ev)
        print("ok: order.confirmed confirms once (two ids, a replay); coupon.redeemed once")

        # 2. order.cancelled releases a confirmed redemption and a reservation.
        r = redemption(rm["id"])
        if r["release_reason"] != "order_cancelled":
            fail("released by order.cancelled: %s" % r)
        publish("order.cancelled", o1, {"id": o1, "status": "CANCELLED", "version": 3})
        wait_for("order.cancelled to release the confirmed redemption",
                 lambda: redemption(r1["id"])["status"] == "released")
        if coupon(c["id"])["redeemed_count"] != 0:
            fail("releases did not free the slots: %s" % coupon(c["id"]))
        for rid in (rm["id"], r1["id"]):
            ev = wait_for("coupon.released of " + rid, lambda: bus_events("coupon.released", rid))
            if len(ev) != 1 or ev[0]["data"]["release_reason"] != "order_cancelled":
                fail("coupon.released: %s" % ev)
        print("ok: order.cancelled releases reservations and confirmed redemptions")

        # 3. the last slot: coupon.exhausted.
        for _ in range(3):
            reserve("EVT", str(uuid.uuid4()))
        ev = wait_for("coupon.exhausted", lambda: bus_events("coupon.exhausted", c["id"]))
        if len(ev) != 1 or ev[0]["data"]["redeemed_count"] != 3 or ev[0]["data"]["code"] != "EVT":
            fail("coupon.exhausted: %s" % ev)
        print("ok: taking the last slot publishes coupon.exhausted")
    finally:
        disc.stop()
        bus.stop()
        for d in dbs:
            pg_drop(pg, d)
    for svc in (disc, bus):
        svc.log.close()
        text = open(os.path.join(svc.dir, "log"), errors="replace").read()
        if any(m in text for m in SANITIZER_MARKS):
            fail("%s: sanitizer report in its log (%s)" % (svc.name, svc.dir))
    shutil.rmtree(tmp, ignore_errors=True)
    print("all discount-service event checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
