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

import os
import shutil
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "tests", "lib"))
import gravity_test as gt  # noqa: E402
from gravity_test import Minter, fail, pg_database, pg_drop, wait_for  # noqa: E402


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
    bus = gt.Service(build, tmp, "14-event-bus-service", benv)
    bus.start()
    denv.update({"EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:%d" % bus.port,
                 "SERVICE_TOKEN": admin})
    disc = gt.Service(build, tmp, "22-discount-service", denv)
    disc.start()
    line = [{"product_id": str(uuid.uuid4()), "quantity": 2,
             "unit_price": {"amount": 1250, "currency": "usd"}}]

    bc = gt.BusClient(bus, admin)
    bus_events = bc.events

    def publish(type_, subject, data, event_id=None):
        return bc.publish(type_, subject, data, "/gravity/order-service", event_id)

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
    # stop() failed on a sanitizer report in either log
    shutil.rmtree(tmp, ignore_errors=True)
    print("all discount-service event checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
