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

import os
import shutil
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "tests", "lib"))
import gravity_test as gt  # noqa: E402
from gravity_test import fail, wait_for  # noqa: E402

BIN = "18-inventory-service"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-inv-events-")
    jwks, tok = gt.mint(build, tmp, "super_admin", "*")
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + jwks, "LOG_LEVEL": "info",
                 "CURSOR_SECRET": "t"})
    benv, ienv, dbs = dict(base), dict(base), []
    benv["DATA_DIR"] = os.path.join(tmp, "bus-data")
    ienv["DATA_DIR"] = os.path.join(tmp, "inv-data")
    if pg:
        tag = uuid.uuid4().hex[:8]
        dbs = ["gr_bus_" + tag, "gr_inv_" + tag]
        benv["DATABASE_URL"] = gt.pg_database(pg, dbs[0])
        ienv["DATABASE_URL"] = gt.pg_database(pg, dbs[1])
    bus = gt.Service(build, tmp, "bus", benv, "14-event-bus-service", data_dir=None)
    inv = None
    ok = False
    try:
        bus.start()
        ienv.update({"EVENT_BUS": "http", "EVENT_BUS_URL": bus.url(), "SERVICE_TOKEN": tok,
                     "INVENTORY_SWEEP_MS": "100"})
        inv = gt.Service(build, tmp, "inv", ienv, BIN, data_dir=None)
        inv.start()

        bc = gt.BusClient(bus, tok)
        publish, bus_events = bc.publish, bc.events

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
            gt.pg_drop(pg, d)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept " + tmp)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
