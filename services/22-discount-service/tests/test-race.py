#!/usr/bin/python3
"""discount-service reservation limits under concurrency (SERVICES §22 Rules).

  test-race.py BUILD_DIR [PG_URL]    (with PG_URL the service runs on a new PostgreSQL database)

Starts 22-discount-service on a free port and checks:
  1. 100 parallel reservations (100 orders, 100 customers) of a coupon with max_redemptions 10:
     exactly 10 answer 201 and 90 answer 409 coupon_exhausted; the coupon counts 10 and lists
     10 reserved redemptions;
  2. 50 parallel reservations by one customer (per_customer_limit 2, 50 orders): exactly 2;
  3. releasing one of the 10 frees its slot: of 20 more parallel reservations exactly one wins;
  4. expiry: the service restarted on the same database with DISCOUNT_RESERVATION_TTL_S=1;
     a coupon with 2 slots, both reserved, a third is 409 until the reservations run out, then
     succeeds; the expired ones read as released with release_reason "expired" and each
     published coupon.released (outbox), and the coupon counts the new reservation only.
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
from gravity_test import Minter, fail, parallel, pg_database, pg_drop, wait_for  # noqa: E402

BIN = "22-discount-service"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-discount-race-")
    mint = Minter(build, tmp)
    admin = mint.token(str(uuid.uuid4()), "*", "super_admin")
    service = mint.token(str(uuid.uuid4()), "coupons:read,coupon-redemptions:write", "service")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks, "LOG_LEVEL": "info",
                "CURSOR_SECRET": "t"})
    db = None
    expect_released = -1
    if pg:
        db = "gr_disc_" + uuid.uuid4().hex[:8]
        env["DATABASE_URL"] = pg_database(pg, db)
    else:
        env["DATABASE_URL"] = "sqlite://" + os.path.join(tmp, "discount.db")
    svc = gt.Service(build, tmp, BIN, env)
    svc.start({"DISCOUNT_RESERVATION_TTL_S": "3600"})
    line = [{"product_id": str(uuid.uuid4()), "quantity": 1,
             "unit_price": {"amount": 1000, "currency": "usd"}}]

    def coupon(code, **kw):
        body = {"code": code, "kind": "percent", "percent_off_bp": 1000}
        body.update(kw)
        st, c = svc.req("POST", "/api/v1/coupons", body, admin)
        if st != 201:
            fail("create coupon %s: %s %s" % (code, st, c))
        return c

    def reserve(code, user=None, order=None):
        return svc.req("POST", "/api/v1/coupon-redemptions",
                       {"code": code, "order_id": order or str(uuid.uuid4()),
                        "user_id": user or str(uuid.uuid4()), "currency": "usd", "lines": line},
                       service)

    def tally(results):
        counts = {}
        for st, body in results:
            key = st if st != 409 else "409 " + body.get("type", "").rsplit(":", 1)[-1]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def redeemed(cid):
        st, c = svc.req("GET", "/api/v1/coupons/" + cid, token=admin)
        if st != 200:
            fail("get coupon: %s %s" % (st, c))
        return c["redeemed_count"]

    def redemptions(cid, status):
        st, page = svc.req("GET", "/api/v1/coupons/%s/redemptions?status=%s&limit=100"
                           % (cid, status), token=admin)
        if st != 200:
            fail("list redemptions: %s %s" % (st, page))
        return page["data"]

    try:
        # 1. 100 parallel reservations of 10 slots.
        c = coupon("RACE10", max_redemptions=10)
        res = parallel(100, lambda i: reserve("RACE10"))
        counts = tally(res)
        if counts != {201: 10, "409 coupon_exhausted": 90}:
            fail("100 parallel reservations of 10 slots: %s" % counts)
        if redeemed(c["id"]) != 10 or len(redemptions(c["id"], "reserved")) != 10:
            fail("after the race the coupon counts %d" % redeemed(c["id"]))
        print("ok: 100 parallel reservations of 10 slots -> exactly 10 (%s)" % counts)

        # 2. one customer, 50 parallel orders, per_customer_limit 2.
        c2 = coupon("PERCUST", per_customer_limit=2)
        user = str(uuid.uuid4())
        counts2 = tally(parallel(50, lambda i: reserve("PERCUST", user=user)))
        if counts2 != {201: 2, "409 coupon_limit_reached": 48}:
            fail("50 parallel reservations by one customer, limit 2: %s" % counts2)
        if len(redemptions(c2["id"], "reserved")) != 2:
            fail("the customer holds more than 2 reservations")
        print("ok: 50 parallel reservations by one customer with limit 2 -> exactly 2")

        # 3. a release frees one slot: 20 more racers, exactly one wins.
        won = [b for st, b in res if st == 201]
        st, r = svc.req("POST", "/api/v1/coupon-redemptions/%s/release" % won[0]["id"], None,
                        service)
        if st != 200 or r["status"] != "released":
            fail("release: %s %s" % (st, r))
        if redeemed(c["id"]) != 9:
            fail("a release did not give the slot back")
        counts3 = tally(parallel(20, lambda i: reserve("RACE10")))
        if counts3 != {201: 1, "409 coupon_exhausted": 19}:
            fail("20 parallel reservations of the released slot: %s" % counts3)
        if redeemed(c["id"]) != 10:
            fail("the coupon counts %d after the freed slot was taken" % redeemed(c["id"]))
        print("ok: a release frees its slot, exactly one of 20 racers takes it")
        svc.stop()

        # 4. expiry frees slots: reservations that live 1 s.
        svc.start({"DISCOUNT_RESERVATION_TTL_S": "1"})
        c4 = coupon("SHORT", max_redemptions=2)
        first = [reserve("SHORT") for _ in range(2)]
        if [st for st, _ in first] != [201, 201]:
            fail("reserving 2 of 2: %s" % first)
        st, body = reserve("SHORT")
        if st != 409:
            fail("a third reservation before expiry: %s %s" % (st, body))
        st, _ = wait_for("an expired reservation to free its slot",
                         lambda: (lambda r: r if r[0] == 201 else None)(reserve("SHORT")), 15)

        def swept():
            # A reservation attempt releases whatever ran out (it may also take a slot).
            reserve("SHORT")
            return all(svc.req("GET", "/api/v1/coupon-redemptions/" + b["id"],
                               token=service)[1]["status"] == "released" for _, b in first)
        wait_for("both first reservations to be released", swept, 15)
        for _, b in first:
            st, r = svc.req("GET", "/api/v1/coupon-redemptions/" + b["id"], token=service)
            if st != 200 or r["status"] != "released" or r["release_reason"] != "expired":
                fail("an expired reservation reads %s %s" % (st, r))
            st, r = svc.req("POST", "/api/v1/coupon-redemptions/%s/confirm" % b["id"], None,
                            service)
            if st != 409 or not r["type"].endswith(":redemption_released"):
                fail("confirming an expired reservation: %s %s" % (st, r))
        released = redemptions(c4["id"], "released")
        if any(r["release_reason"] != "expired" for r in released):
            fail("released without expiring: %s" % released)
        if redeemed(c4["id"]) != len(redemptions(c4["id"], "reserved")):
            fail("the counter disagrees with the reservations after expiry")
        expect_released = 1 + len(released)  # the release of 3, then one per expired one
        print("ok: expired reservations free their slots and read as released (expired)")
    finally:
        svc.stop()
        try:
            outbox = gt.Db.from_url(env["DATABASE_URL"]).rows(
                "SELECT count(*) FROM outbox WHERE type = 'coupon.released'")[0][0]
        finally:
            if pg:
                pg_drop(pg, db)
    if outbox != str(expect_released):
        fail("coupon.released events in the outbox: %s, expected %d" % (outbox, expect_released))
    # svc.stop() failed on a sanitizer report in the log
    shutil.rmtree(tmp, ignore_errors=True)
    print("all discount-service race checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
