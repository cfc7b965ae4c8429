#!/usr/bin/python3
"""inventory-service concurrency and expiry with real processes (SERVICES §18).

  test-race.py BUILD_DIR [PG_URL]    (with PG_URL the service runs on a new PostgreSQL database)

Starts two replicas of 18-inventory-service on one database (SQLite file or PostgreSQL), each
with its own expiry sweeper (INVENTORY_SWEEP_MS=50), and checks:
  1. 50 parallel 1-unit reservations on stock 10, spread over both replicas: exactly 10 get
     201, 40 get 409 insufficient_stock; on_hand 10, reserved 10, available 0;
  2. a mixed concurrent load (adjustments up and down, transfers, multi-line reservations,
     confirms, commits, releases; 60 clients) never makes available negative, and afterwards
     the sum of movements equals on_hand for every (sku, warehouse), and reserved equals the
     units of the reservations still active or confirmed; commit and release racing on one
     reservation (5 clients each): one transition wins, the others get 409, effects once;
  3. 20 reservations with ttl_s=1 expire with both sweepers racing: each ends `expired`, its
     stock is free again, and exactly one inventory.released (reason "expired") is in the outbox
     for each; a release after expiry is a no-op and publishes nothing.
The outbox is read straight from the database (the bus URL points at a closed port, so rows
stay there). Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
import random
import shutil
import sys
import tempfile
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "tests", "lib"))
import gravity_test as gt  # noqa: E402
from gravity_test import Db, fail, parallel, wait_for  # noqa: E402

BIN = "18-inventory-service"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-inv-race-")
    jwks, tok = gt.mint(build, tmp, "service", "inventory:write")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + jwks, "LOG_LEVEL": "warn",
                "CURSOR_SECRET": "t", "INVENTORY_SWEEP_MS": "50",
                "EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:%d" % gt.free_port(),
                "DATA_DIR": os.path.join(tmp, "data")})
    dbname = None
    if pg:
        dbname = "gr_inv_race_" + uuid.uuid4().hex[:8]
        url = gt.pg_database(pg, dbname)
        env["DATABASE_URL"] = url
        db = Db(pg_url=url)
    else:
        path = os.path.join(tmp, "data", "inventory.db")
        env["DATABASE_URL"] = "sqlite://" + path
        db = Db(sqlite_path=path)
    a = gt.Service(build, tmp, "a", env, BIN, data_dir=None)
    b = gt.Service(build, tmp, "b", env, BIN, data_dir=None)
    ok = False
    try:
        a.start()
        b.start()
        reps = [a, b]

        def call(i, method, path, body=None):
            return reps[i % 2].req(method, path, body, tok)

        st, wh = a.req("POST", "/api/v1/warehouses", {"code": "main", "priority": 1}, tok)
        if st != 201:
            fail("create warehouse: %s %s" % (st, wh))
        st, wh2 = a.req("POST", "/api/v1/warehouses", {"code": "side", "priority": 2}, tok)
        if st != 201:
            fail("create warehouse: %s %s" % (st, wh2))
        whs = [wh["id"], wh2["id"]]

        # 1. 50 parallel 1-unit reservations on stock 10.
        st, body = a.req("POST", "/api/v1/inventory/adjustments",
                         {"sku": "RACE", "warehouse_id": whs[0], "delta": 10}, tok)
        if st != 201:
            fail("stock 10: %s %s" % (st, body))
        res = parallel(50, lambda i: call(i, "POST", "/api/v1/inventory/reservations",
                                          {"order_id": "race-%d" % i,
                                           "items": [{"sku": "RACE", "quantity": 1}]}))
        codes = [r[0] for r in res]
        won, lost = codes.count(201), codes.count(409)
        if won != 10 or lost != 40:
            fail("50 racing reservations on stock 10: %d x201, %d x409, others %s"
                 % (won, lost, sorted(c for c in codes if c not in (201, 409))))
        for st, body in res:
            if st == 409 and body.get("type") != "urn:gravity:problem:insufficient_stock":
                fail("a loser's problem: %s" % body)
        st, lvl = a.req("GET", "/api/v1/inventory/RACE", token=tok)
        if (lvl["on_hand"], lvl["reserved"], lvl["available"]) != (10, 10, 0):
            fail("after the race: %s" % lvl)
        print("ok: 50 parallel 1-unit reservations on stock 10: 10 x201, 40 x409 "
              "insufficient_stock")

        # 2. Mixed load; then sum(movements) = on_hand and reserved = active units.
        skus = ["MIX-%d" % k for k in range(3)]
        for s in skus:
            for w in whs:
                st, body = a.req("POST", "/api/v1/inventory/adjustments",
                                 {"sku": s, "warehouse_id": w, "delta": 20}, tok)
                if st != 201:
                    fail("stock %s: %s %s" % (s, st, body))
        negative = []

        def worker(i):
            rnd = random.Random(i)
            seen = []
            for step in range(12):
                op = rnd.choice(["adj", "adj", "tr", "res", "res", "res"])
                s = rnd.choice(skus)
                if op == "adj":
                    st, body = call(i, "POST", "/api/v1/inventory/adjustments",
                                    {"sku": s, "warehouse_id": rnd.choice(whs),
                                     "delta": rnd.choice([-3, -2, -1, 1, 2, 3])})
                    if st not in (201, 409):
                        fail("adjustment: %s %s" % (st, body))
                elif op == "tr":
                    f = rnd.randrange(2)
                    st, body = call(i, "POST", "/api/v1/inventory/transfers",
                                    {"sku": s, "from_warehouse_id": whs[f],
                                     "to_warehouse_id": whs[1 - f], "quantity": rnd.randint(1, 4)})
                    if st not in (201, 409):
                        fail("transfer: %s %s" % (st, body))
                else:
                    items = [{"sku": x, "quantity": rnd.randint(1, 3)}
                             for x in rnd.sample(skus, rnd.randint(1, 3))]
                    st, body = call(i, "POST", "/api/v1/inventory/reservations",
                                    {"order_id": "mix-%d-%d" % (i, step), "items": items})
                    if st not in (201, 409):
                        fail("reservation: %s %s" % (st, body))
                    if st == 201:
                        rid = body["id"]
                        nxt = rnd.choice(["confirm", "commit", "release", "keep",
                                          "confirm+commit"])
                        for t in nxt.split("+"):
                            if t == "keep":
                                continue
                            st, body = call(i + 1, "POST",
                                            "/api/v1/inventory/reservations/%s/%s" % (rid, t))
                            if st != 200:
                                fail("%s: %s %s" % (t, st, body))
                st, lvl = call(i, "GET", "/api/v1/inventory/" + s)
                if st != 200:
                    fail("read %s: %s" % (s, st))
                for w in lvl["warehouses"]:
                    if w["available"] < 0 or w["reserved"] < 0 or w["on_hand"] < 0:
                        negative.append(w)
            return seen

        parallel(60, worker)
        if negative:
            fail("negative stock seen: %s" % negative[:3])
        levels = db.rows("SELECT sku, warehouse_id, on_hand, reserved FROM stock_levels")
        sums = {(r[0], r[1]): int(r[2]) for r in db.rows(
            "SELECT sku, warehouse_id, SUM(delta) FROM movements GROUP BY sku, warehouse_id")}
        held = {(r[0], r[1]): int(r[2]) for r in db.rows(
            "SELECT i.sku, i.warehouse_id, SUM(i.quantity) FROM reservation_items i"
            " JOIN reservations r ON r.id = i.reservation_id"
            " WHERE r.status IN ('active', 'confirmed') GROUP BY i.sku, i.warehouse_id")}
        for sku, w, on_hand, reserved in levels:
            if sums.get((sku, w), 0) != int(on_hand):
                fail("sum of movements %s != on_hand %s for %s/%s"
                     % (sums.get((sku, w)), on_hand, sku, w))
            if held.get((sku, w), 0) != int(reserved):
                fail("reserved %s != units held %s for %s/%s"
                     % (reserved, held.get((sku, w)), sku, w))
        # The API agrees with the ledger: page through the movements of one level.
        total, cursor = 0, None
        while True:
            q = "?warehouse_id=%s&limit=100" % whs[0] + ("&cursor=" + cursor if cursor else "")
            st, page = a.req("GET", "/api/v1/inventory/MIX-0/movements" + q, token=tok)
            if st != 200:
                fail("movements page: %s %s" % (st, page))
            total += sum(m["delta"] for m in page["data"])
            if not page["has_more"]:
                break
            cursor = urllib.parse.quote(page["next_cursor"])
        st, lvl = a.req("GET", "/api/v1/inventory/MIX-0", token=tok)
        if total != next(w["on_hand"] for w in lvl["warehouses"] if w["warehouse_id"] == whs[0]):
            fail("movements over the API sum to %d, level %s" % (total, lvl))
        print("ok: mixed load of 60 clients: available never negative, sum(movements) = "
              "on_hand and reserved = held units for %d levels" % len(levels))

        # 2b. commit and release racing on one reservation: one wins, the other is a 409.
        st, body = a.req("POST", "/api/v1/inventory/adjustments",
                         {"sku": "CR", "warehouse_id": whs[0], "delta": 20}, tok)
        if st != 201:
            fail("stock CR: %s %s" % (st, body))
        commits = 0
        for k in range(10):
            st, r = a.req("POST", "/api/v1/inventory/reservations",
                          {"order_id": "cr-%d" % k, "items": [{"sku": "CR", "quantity": 2}]}, tok)
            if st != 201:
                fail("reserve cr-%d: %s %s" % (k, st, r))
            ops = ["commit", "release"] * 5
            res = parallel(10, lambda i: call(i, "POST", "/api/v1/inventory/reservations/%s/%s"
                                              % (r["id"], ops[i])))
            by = {op: sorted(set(res[i][0] for i in range(10) if ops[i] == op))
                  for op in ("commit", "release")}
            if by == {"commit": [200], "release": [409]}:
                commits += 1
                want = "urn:gravity:problem:reservation_committed"
                losers = [res[i][1] for i in range(10) if ops[i] == "release"]
            elif by == {"commit": [409], "release": [200]}:
                want = "urn:gravity:problem:reservation_released"
                losers = [res[i][1] for i in range(10) if ops[i] == "commit"]
            else:
                fail("commit and release racing on cr-%d: %s" % (k, by))
            if any(b["type"] != want for b in losers):
                fail("losers of the commit/release race: %s" % losers)
        st, lvl = a.req("GET", "/api/v1/inventory/CR", token=tok)
        if (lvl["on_hand"], lvl["reserved"]) != (20 - 2 * commits, 0):
            fail("after %d commits: %s" % (commits, lvl))
        n_mov = db.rows("SELECT COUNT(*) FROM movements WHERE sku = 'CR' AND reason = 'commit'")
        if int(n_mov[0][0]) != commits:
            fail("commit movements %s, commits %d" % (n_mov, commits))
        print("ok: commit and release racing (5 + 5 clients, 10 reservations): one wins each "
              "time, %d commits applied once" % commits)

        # 3. Expiry with two sweepers: released exactly once each.
        st, body = a.req("POST", "/api/v1/inventory/adjustments",
                         {"sku": "EXP", "warehouse_id": whs[1], "delta": 40}, tok)
        if st != 201:
            fail("stock EXP: %s %s" % (st, body))
        rids = []
        for i in range(20):
            st, body = call(i, "POST", "/api/v1/inventory/reservations",
                            {"order_id": "exp-%d" % i, "ttl_s": 1,
                             "items": [{"sku": "EXP", "quantity": 2}]})
            if st != 201 or body["status"] != "active":
                fail("short reservation: %s %s" % (st, body))
            rids.append(body["id"])
        st, lvl = a.req("GET", "/api/v1/inventory/EXP", token=tok)
        if lvl["available"] != 0:
            fail("40 units should be held: %s" % lvl)

        def all_expired():
            for rid in rids:
                st, r = a.req("GET", "/api/v1/inventory/reservations/" + rid, token=tok)
                if st != 200 or r["status"] != "expired":
                    return False
            return True

        wait_for("20 reservations to expire", all_expired)
        st, lvl = b.req("GET", "/api/v1/inventory/EXP", token=tok)
        if (lvl["on_hand"], lvl["reserved"], lvl["available"]) != (40, 0, 40):
            fail("expired stock not freed: %s" % lvl)
        # Confirm and commit after expiry are refused; release is a no-op.
        st, body = a.req("POST", "/api/v1/inventory/reservations/%s/commit" % rids[0], token=tok)
        if st != 409 or body["type"] != "urn:gravity:problem:reservation_expired":
            fail("commit after expiry: %s %s" % (st, body))
        st, body = a.req("POST", "/api/v1/inventory/reservations/%s/release" % rids[0], token=tok)
        if st != 200 or body["status"] != "expired":
            fail("release after expiry: %s %s" % (st, body))
        released = db.rows("SELECT subject, envelope FROM outbox"
                           " WHERE type = 'inventory.released'")
        per = {}
        for subject, env_text in released:
            if subject not in rids:
                continue  # the releases of the mixed load
            data = json.loads(env_text)["data"]
            if data.get("reason") != "expired" or data.get("status") != "expired":
                fail("released event data: %s" % data)
            per[subject] = per.get(subject, 0) + 1
        wrong = {r: per.get(r, 0) for r in rids if per.get(r, 0) != 1}
        if wrong:
            fail("inventory.released per expired reservation should be 1: %s" % wrong)
        print("ok: 20 reservations with ttl_s=1 and two sweepers: each expired once, one "
              "inventory.released each, stock freed")
        ok = True
    finally:
        a.stop()
        b.stop()
        if dbname:
            gt.pg_drop(pg, dbname)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept " + tmp)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
