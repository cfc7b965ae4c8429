#!/usr/bin/python3
"""order-service's events end to end, on a real bus (SERVICES §16 Events, §0 Events).

  test-events.py BUILD_DIR [PG_URL]    (with PG_URL every service runs on PostgreSQL)

Starts 14-event-bus-service and, publishing and consuming through it (EVENT_BUS=http), 17, 18,
21, 22, 15 and 16 on free ports, then checks:
  1. a checkout publishes order.created and order.confirmed, once each, on the bus;
  2. shipment.created (delivered twice) → PROCESSING once; shipment.delivered → DELIVERED
     (skipping SHIPPED); a late shipment.shipped is acknowledged and changes nothing; one
     history row and one order.<status> event per change;
  3. payment.failed for a CONFIRMED order's payment → CANCELLED payment_failed, its stock
     released at 18 by the resumer's compensation;
  4. cancel of a CONFIRMED order with 15 also consuming order.cancelled: refunded exactly
     once in total (amount_refunded = amount, one refund), and 18 / 22 released once.
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import importlib.util
import os
import shutil
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tests", "lib"))
import gravity_test as gt  # noqa: E402

# the saga test's seed data, checks and counters (it sets gt.DEADLINE to 30 s)
_spec = importlib.util.spec_from_file_location("saga", os.path.join(HERE, "test-saga.py"))
saga = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(saga)
expect, ok, wait_for, fail = saga.expect, saga.ok, saga.wait_for, saga.fail


def main():
    if len(sys.argv) < 2:
        fail("usage: test-events.py BUILD_DIR [PG_URL]")
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    bins = saga.PEERS + [saga.ORDER, "14-event-bus-service", "gr-jwt"]
    missing = [b for b in bins if not os.access(os.path.join(build, "bin", b), os.X_OK)]
    if missing:
        fail("missing binaries in %s/bin: %s (build them first)" % (build, ", ".join(missing)))
    tmp = tempfile.mkdtemp(prefix="order-events-")
    dbs, svcs = [], {}
    try:
        mint = gt.Minter(build, tmp)
        admin = mint.token(str(uuid.uuid4()), "*", "super_admin")
        bus_perms = "events:write,events:read,events:admin"
        service = mint.token("order-service", "inventory:write,coupon-redemptions:write,"
                             "payments:write," + bus_perms, "service")
        peer_tok = mint.token("peer-service", "products:read,inventory:write,coupons:read,"
                              "coupon-redemptions:write,payments:write," + bus_perms, "service")
        user = str(uuid.uuid4())
        customer = mint.token(user, "", "customer")
        base = dict(os.environ)
        base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks,
                     "CURSOR_SECRET": "test", "LOG_LEVEL": "info", "LOG_FORMAT": "json",
                     "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity"})
        for k in ("SERVICE_TOKEN", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET",
                  "DATABASE_URL", "DISCOVERY_URL", "EVENT_BUS_URL"):
            base.pop(k, None)

        def env_for(name, extra):
            e = dict(base)
            if pg:
                db = "gr_ev_%s_%s" % (name[:2], uuid.uuid4().hex[:10])
                dbs.append(db)
                e["DATABASE_URL"] = gt.pg_database(pg, db)
            else:
                e["DATABASE_URL"] = "sqlite://" + os.path.join(tmp, name + ".db")
            e.update(extra)
            return e

        bus = gt.Service(build, tmp, "14-event-bus-service", env_for("14-event-bus-service", {}))
        svcs["bus"] = bus
        bus.start()
        on_bus = {"EVENT_BUS": "http", "EVENT_BUS_URL": bus.url()}
        for name in saga.PEERS:
            extra = dict(on_bus, SERVICE_TOKEN=peer_tok)
            if name == "15-payment-service":
                extra.update({"PAYMENT_PROVIDER": "test",
                              "PAYMENT_WEBHOOK_SECRET": "whsec_events_test",
                              "PAYMENT_SWEEP_MS": "100"})
            svcs[name] = gt.Service(build, tmp, name, env_for(name, extra))
            svcs[name].start()
        prod, inv, tax, disc, pay = (svcs[n] for n in saga.PEERS)
        order = gt.Service(build, tmp, saga.ORDER, env_for(saga.ORDER, dict(
            on_bus, SERVICE_TOKEN=service, PRODUCT_URL=prod.url(), INVENTORY_URL=inv.url(),
            TAX_URL=tax.url(), DISCOUNT_URL=disc.url(), PAYMENT_URL=pay.url(),
            ORDER_SAGA_LEASE_MS="1500", ORDER_RESUME_INTERVAL_MS="100")))
        svcs[saga.ORDER] = order
        order.start()
        run(admin, customer, bus, prod, inv, tax, disc, pay, order)
        for s in svcs.values():
            s.stop()
        for s in svcs.values():
            s.check_log(secrets=(service, customer, admin, peer_tok))
        ok("every service drained cleanly; no sanitizer report, no token in any log")
        print("%d passed, 0 failed" % saga.CHECKS)
    finally:
        for s in svcs.values():
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        for db in dbs:
            gt.pg_drop(pg, db)
        if os.environ.get("KEEP_TMP"):
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(admin, customer, bus, prod, inv, tax, disc, pay, order):
    variants, code, _ = saga.seed(admin, prod, inv, tax, disc)
    va, sku_a, _ = variants["a"]
    vc, sku_c, _ = variants["c"]

    def checkout(items, coupon=None):
        body = {"items": [{"variant_id": v, "quantity": q} for v, q in items], "currency": "usd",
                "shipping_address": {"country": "US"}, "payment_method_id": "tok_visa"}
        if coupon:
            body["coupon_code"] = coupon
        st, o = order.req("POST", "/api/v1/orders", body, token=customer,
                          key="k-" + uuid.uuid4().hex)
        expect(st == 201 and o["status"] == "CONFIRMED", "checkout → CONFIRMED", o)
        return o

    publish = gt.BusClient(bus, admin).publish

    def bus_types(subject):
        """The order.* events of @subject on the bus, sorted."""
        out = []
        for t in ("created", "confirmed", "processing", "shipped", "delivered", "cancelled"):
            st, body = bus.req("GET", "/api/v1/events?limit=100&type=order." + t, token=admin)
            expect(st == 200, "list bus events", body)
            out += [e["type"] for e in (d.get("event", d) for d in body["data"])
                    if e.get("subject") == subject]
        return sorted(out)

    def get(oid):
        return order.req("GET", "/api/v1/orders/" + oid, token=customer)[1]

    # 1. order.created and order.confirmed reach the bus once each
    o = checkout([(vc, 1)])
    wait_for("order events on the bus",
             lambda: bus_types(o["id"]) == ["order.confirmed", "order.created"])
    ok("a checkout publishes order.created and order.confirmed once each")

    # 2. shipment events drive the state machine
    shipment = str(uuid.uuid4())
    for _ in range(2):
        publish("shipment.created", shipment, {"id": shipment, "order_id": o["id"],
                                               "status": "created", "version": 1})
    wait_for("PROCESSING", lambda: get(o["id"])["status"] == "PROCESSING")
    publish("shipment.delivered", shipment, {"id": shipment, "order_id": o["id"],
                                             "status": "delivered", "version": 3})
    wait_for("DELIVERED", lambda: get(o["id"])["status"] == "DELIVERED")
    publish("shipment.shipped", shipment, {"id": shipment, "order_id": o["id"],
                                           "status": "in_transit", "version": 2})
    # 16 consumes in bus order: once a later event for another order applied, this one did
    marker = checkout([(vc, 1)])
    publish("shipment.created", str(uuid.uuid4()), {"order_id": marker["id"], "version": 1})
    wait_for("the marker PROCESSING", lambda: get(marker["id"])["status"] == "PROCESSING")
    expect(get(o["id"])["status"] == "DELIVERED", "a late shipment.shipped changes nothing")
    st, h = order.req("GET", "/api/v1/orders/%s/history" % o["id"], token=customer)
    expect([x["to_status"] for x in h["data"]] ==
           ["PENDING", "CONFIRMED", "PROCESSING", "DELIVERED"], "history", h)
    wait_for("order.delivered on the bus", lambda: bus_types(o["id"]) == sorted(
        ["order.created", "order.confirmed", "order.processing", "order.delivered"]))
    ok("shipment.created (twice) → PROCESSING once, shipment.delivered → DELIVERED, a late"
       " shipment.shipped changes nothing; one event per change")

    # 3. payment.failed for a CONFIRMED order's payment
    o = checkout([(va, 2)])
    before = saga.available(inv, admin, sku_a)
    publish("payment.failed", o["payment_id"], {"id": o["payment_id"], "order_id": o["id"],
                                                "status": "failed", "version": 3})
    wait_for("CANCELLED", lambda: get(o["id"])["status"] == "CANCELLED")
    g = get(o["id"])
    expect(g["cancel_reason"] == "payment_failed", "reason payment_failed", g)
    wait_for("the stock released", lambda: inv.req(
        "GET", "/api/v1/inventory/reservations/" + g["reservation_id"],
        token=admin)[1]["status"] == "released")
    wait_for("the saga done", lambda: order.req("GET", "/api/v1/orders/%s/saga" % o["id"],
                                                token=customer)[1]["status"] == "done")
    expect(saga.available(inv, admin, sku_a) == before + 2, "A back")
    ok("payment.failed of a CONFIRMED order → CANCELLED payment_failed, stock released")

    # 4. cancel with 15, 18 and 22 also consuming order.cancelled: once in total
    o = checkout([(vc, 2)], coupon=code)
    st, c = order.req("POST", "/api/v1/orders/%s/cancel" % o["id"], token=customer)
    expect(st == 200 and c["status"] == "CANCELLED", "cancel → 200", c)
    wait_for("order.cancelled on the bus", lambda: "order.cancelled" in bus_types(o["id"]))
    # 15 consumes in bus order: a later order.cancelled of another paid order, refunded by
    # 15's own consumer and sweeper, shows that 15 has handled this order's event as well
    marker = checkout([(vc, 1)])
    publish("order.cancelled", marker["id"], {"id": marker["id"], "status": "CANCELLED",
                                              "version": 9})
    wait_for("15 to refund the marker", lambda: pay.req(
        "GET", "/api/v1/payments/" + marker["payment_id"],
        token=admin)[1]["amount_refunded"] == marker["grand_total"]["amount"])
    st, p = pay.req("GET", "/api/v1/payments/" + o["payment_id"], token=admin)
    expect(st == 200 and p["amount_refunded"] == p["amount"] == o["grand_total"]["amount"],
           "refunded in full, not twice", p)
    st, rd = disc.req("GET", "/api/v1/coupon-redemptions/" + o["coupon_redemption_id"],
                      token=admin)
    expect(rd["status"] == "released", "coupon released", rd)
    st, r = inv.req("GET", "/api/v1/inventory/reservations/" + o["reservation_id"], token=admin)
    expect(r["status"] == "released", "stock released", r)
    ok("cancel of a CONFIRMED order with the bus: refunded exactly once in total, released")


if __name__ == "__main__":
    main()
