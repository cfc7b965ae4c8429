#!/usr/bin/python3
"""order-service's checkout saga against the real peers (SERVICES §16 Integrations).

  test-saga.py BUILD_DIR [PG_URL]    (with PG_URL every service runs on a new PostgreSQL database)

Starts 17-product-service, 18-inventory-service, 21-invoice-service, 22-discount-service,
15-payment-service (PAYMENT_PROVIDER=test) and 16-order-service on free ports of 127.0.0.1,
with tokens from BUILD_DIR/bin/gr-jwt (16 calls the others with a static SERVICE_TOKEN of role
service), seeds two products, stock, a US tax rate of 8 % and a 10 % coupon, and checks:

  1. happy checkout → 201 CONFIRMED; grand_total = Σ lines − discount + shipping + tax = the
     amount paid at 15 (succeeded); the reservation at 18 and the redemption at 22 confirmed;
     history PENDING → CONFIRMED, saga done;
  2. out of stock → CANCELLED out_of_stock, the coupon's redemption released at 22, no payment;
  3. declined card (tok_chargeDeclined) → CANCELLED payment_failed, the stock released at 18;
  4. cancel of a CONFIRMED order → refunded once at 15 (amount_refunded = amount), stock
     released; a second cancel → 409 invalid_transition and nothing changes;
  5. racing cancel and ship (PUT status SHIPPED) → one 200, one 409; the state machine on a
     real order (FLYING 422, DELIVERED → PENDING 409, stale version 409), one history row and
     one outbox event per status change, the same Idempotency-Key → the same order;
  5c. 50 clients at once: 50 checkouts of the last 10 units → exactly 10 CONFIRMED and paid,
     40 CANCELLED out_of_stock, distinct numbers; 20 racing retries of one key → one order;
  6. tax (decision 15): 21 stopped → an order to a country whose rates are cached still
     prices tax; a country never fetched → 503 tax_unavailable and no order;
  7. 18 stopped → the order answers 201 PENDING; 18 back on its port → the resumer confirms it;
  8. 15 stopped → PENDING; a cancel of such an order → 202, then CANCELLED (cancelled) before
     any payment, stock released; another PENDING order, kill -9 of 16, 15 back, 16 restarted
     → the resumer confirms it;
  8b. ORDER_TEST_KILL_AT: 16 kills itself (SIGKILL) after each saga step (created, coupon,
     reserve, pay, confirm), after CANCELLED was committed and in the compensation after the
     refund; after a restart every order ends CONFIRMED or CANCELLED with its reservation,
     payment and redemption in the matching state;
  9. kill -9 of 16 at several moments of in-flight checkouts; after a restart every order
     ends CONFIRMED or CANCELLED, and nothing dangles: a CONFIRMED order has a succeeded
     payment and a confirmed reservation, a CANCELLED one an active reservation nowhere.
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "tests", "lib"))
import gravity_test as gt  # noqa: E402
from gravity_test import Minter, fail, free_port, pg_database, pg_drop, wait_for  # noqa: E402

# a saga with its peers takes longer than one service: every wait_for() here (and in
# test-events.py, which imports this file) has 30 s
DEADLINE = gt.DEADLINE = 30.0
PEERS = ["17-product-service", "18-inventory-service", "21-invoice-service",
         "22-discount-service", "15-payment-service"]
ORDER = "16-order-service"
CHECKS = 0


def ok(msg):
    global CHECKS
    CHECKS += 1
    print("ok %d - %s" % (CHECKS, msg))


def expect(cond, msg, detail=None):
    if not cond:
        fail(msg + ("" if detail is None else ": " + json.dumps(detail)[:1500]))


def main():
    if len(sys.argv) < 2:
        fail("usage: test-saga.py BUILD_DIR [PG_URL]")
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    missing = [b for b in PEERS + [ORDER, "gr-jwt"]
               if not os.access(os.path.join(build, "bin", b), os.X_OK)]
    if missing:
        fail("missing binaries in %s/bin: %s (build them first)" % (build, ", ".join(missing)))
    tmp = tempfile.mkdtemp(prefix="order-saga-")
    dbs = []
    svcs = {}
    try:
        mint = Minter(build, tmp)
        admin = mint.token(str(uuid.uuid4()), "*", "super_admin")
        service = mint.token("order-service", "products:read,inventory:write,"
                             "coupon-redemptions:write,coupons:read,payments:write,"
                             "payments:read", "service")
        user = str(uuid.uuid4())
        customer = mint.token(user, "", "customer")
        base = dict(os.environ)
        base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks,
                     "CURSOR_SECRET": "test", "LOG_LEVEL": "info", "LOG_FORMAT": "json",
                     "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity",
                     # no event bus in this test: outboxes fill, nothing is delivered
                     "EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:%d" % free_port()})
        for k in ("SERVICE_TOKEN", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET",
                  "DATABASE_URL", "DISCOVERY_URL"):
            base.pop(k, None)

        def env_for(name, extra):
            e = dict(base)
            if pg:
                db = "gr_saga_%s_%s" % (name[:2], uuid.uuid4().hex[:10])
                dbs.append(db)
                e["DATABASE_URL"] = pg_database(pg, db)
            else:
                e["DATABASE_URL"] = "sqlite://" + os.path.join(tmp, name + ".db")
            e.update(extra)
            return e

        for name in PEERS:
            extra = {}
            if name == "15-payment-service":
                extra = {"PAYMENT_PROVIDER": "test", "PAYMENT_WEBHOOK_SECRET": "whsec_saga_test"}
            svcs[name] = gt.Service(build, tmp, name, env_for(name, extra))
            svcs[name].start()
        prod, inv, tax, disc, pay = (svcs[n] for n in PEERS)
        order = gt.Service(build, tmp, ORDER, env_for(ORDER, {
            "SERVICE_TOKEN": service,
            "PRODUCT_URL": prod.url(), "INVENTORY_URL": inv.url(), "TAX_URL": tax.url(),
            "DISCOUNT_URL": disc.url(), "PAYMENT_URL": pay.url(),
            "ORDER_SAGA_LEASE_MS": "1500", "ORDER_RESUME_INTERVAL_MS": "100",
            "ORDER_TAX_REFRESH_S": "0", "ORDER_CALL_TIMEOUT_MS": "3000"}))
        svcs[ORDER] = order
        order.start()
        order_db = order.env["DATABASE_URL"]

        # rows of a query on 16's database (its outbox: no bus runs in this test)
        sql = gt.Db.from_url(order_db).rows
        run(mint, admin, customer, user, prod, inv, tax, disc, pay, order, sql)
        for s in svcs.values():
            s.stop()
        for s in svcs.values():
            s.check_log(secrets=(service, customer, admin))
        ok("every service drained cleanly; no sanitizer report, no token in any log")
        print("%d passed, 0 failed" % CHECKS)
    finally:
        for s in svcs.values():
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        for db in dbs:
            pg_drop(pg, db)
        if os.environ.get("KEEP_TMP"):
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def seed(admin, prod, inv, tax, disc):
    u = uuid.uuid4().hex[:8]
    variants = {}
    for name, price in (("a", 1999), ("b", 500), ("c", 1000), ("d", 250)):
        st, p = prod.req("POST", "/api/v1/products", {
            "title": "Thing " + name, "slug": "thing-%s-%s" % (name, u), "status": "active",
            "variants": [{"sku": "SKU-%s-%s" % (name.upper(), u),
                          "price": {"amount": price, "currency": "usd"}}]},
            token=admin, key="p-" + name + u)
        expect(st == 201, "seed product " + name, p)
        variants[name] = (p["variants"][0]["id"], p["variants"][0]["sku"], price)
    st, w = inv.req("POST", "/api/v1/warehouses", {"code": "main-" + u}, token=admin)
    expect(st == 201, "seed warehouse", w)
    for name, qty in (("a", 10), ("b", 1), ("c", 1000), ("d", 10)):
        st, a = inv.req("POST", "/api/v1/inventory/adjustments",
                        {"sku": variants[name][1], "warehouse_id": w["id"], "delta": qty},
                        token=admin)
        expect(st == 201, "seed stock " + name, a)
    st, t = tax.req("POST", "/api/v1/tax-rates", {"country": "US", "rate_bp": 800}, token=admin)
    expect(st == 201, "seed tax rate", t)
    st, t = tax.req("POST", "/api/v1/tax-rates", {"country": "FR", "rate_bp": 2000},
                    token=admin)
    expect(st == 201, "seed tax rate FR", t)
    st, c = disc.req("POST", "/api/v1/coupons", {"code": "SAVE10-" + u, "kind": "percent",
                                                 "percent_off_bp": 1000}, token=admin)
    expect(st == 201, "seed coupon", c)
    return variants, c["code"], c["id"]


def available(inv, admin, sku):
    st, s = inv.req("GET", "/api/v1/inventory/" + urllib.parse.quote(sku), token=admin)
    expect(st == 200, "stock of " + sku, s)
    return s["available"] if "available" in s else s["total"]["available"]


def check_totals(o):
    lines = sum(i["line_total"]["amount"] for i in o["items"])
    expect(lines == o["subtotal"]["amount"], "subtotal = Σ lines", o)
    tax = o["tax_total"]["amount"] if not o["tax"]["inclusive"] else 0
    expect(o["grand_total"]["amount"] == lines - o["discount_total"]["amount"] +
           o["shipping_total"]["amount"] + tax, "grand_total = Σ lines − discount + shipping + tax",
           o)
    expect(sum(i["discount"]["amount"] for i in o["items"]) == o["discount_total"]["amount"],
           "line discounts sum to the discount", o)
    expect(sum(i["tax"]["amount"] for i in o["items"]) == o["tax_total"]["amount"],
           "line taxes sum to the tax (no shipping tax)", o)


def run(mint, admin, customer, user, prod, inv, tax, disc, pay, order, sql):
    variants, code, coupon_id = seed(admin, prod, inv, tax, disc)
    va, sku_a, _ = variants["a"]
    vb, sku_b, _ = variants["b"]
    vc, sku_c, _ = variants["c"]
    addr = {"name": "Ada", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
            "country": "US"}

    def checkout(items, pm="tok_visa", coupon=None, key=None, country="US", timeout=30):
        body = {"items": [{"variant_id": v, "quantity": q} for v, q in items], "currency": "usd",
                "shipping_address": dict(addr, country=country), "payment_method_id": pm}
        if coupon:
            body["coupon_code"] = coupon
        return order.req("POST", "/api/v1/orders", body, token=customer,
                         key=key or "k-" + uuid.uuid4().hex, timeout=timeout)

    # 1. happy checkout
    st, o = checkout([(va, 2), (vb, 0 + 1)], coupon=code)
    expect(st == 201 and o["status"] == "CONFIRMED", "happy checkout → 201 CONFIRMED", o)
    check_totals(o)
    expect(o["subtotal"]["amount"] == 2 * 1999 + 500, "prices come from 17", o)
    expect(o["discount_total"]["amount"] == 450, "10 % coupon from 22 (400 + 50)", o)
    # tax 8 % per line on what the discount left: 3598 → 288, 450 → 36
    expect(o["tax_total"]["amount"] == 324, "tax from 21's rate on (subtotal − discount)", o)
    expect(o["grand_total"]["amount"] == 4498 - 450 + 324, "grand_total", o)
    expect(o["number"].startswith("GRV-") and len(o["number"]) == 10, "order number", o)
    st, p = pay.req("GET", "/api/v1/payments/" + o["payment_id"], token=admin)
    expect(st == 200 and p["status"] == "succeeded" and
           p["amount"] == o["grand_total"]["amount"], "grand_total = the amount paid", p)
    st, r = inv.req("GET", "/api/v1/inventory/reservations/" + o["reservation_id"], token=admin)
    expect(st == 200 and r["status"] == "confirmed", "reservation confirmed at 18", r)
    st, rd = disc.req("GET", "/api/v1/coupon-redemptions/" + o["coupon_redemption_id"],
                      token=admin)
    expect(st == 200 and rd["status"] == "confirmed", "redemption confirmed at 22", rd)
    expect(available(inv, admin, sku_a) == 8, "2 of A taken")
    st, h = order.req("GET", "/api/v1/orders/%s/history" % o["id"], token=customer)
    expect(st == 200 and [x["to_status"] for x in h["data"]] == ["PENDING", "CONFIRMED"],
           "history PENDING → CONFIRMED", h)
    st, g = order.req("GET", "/api/v1/orders/%s/saga" % o["id"], token=customer)
    expect(st == 200 and g["status"] == "done", "saga done", g)
    ok("happy checkout: CONFIRMED, grand_total %d = Σ lines − discount + shipping + tax = paid"
       % o["grand_total"]["amount"])
    happy = o

    # 2. out of stock → coupon released
    st, o = checkout([(vb, 5)], coupon=code)
    expect(st == 201 and o["status"] == "CANCELLED" and o["cancel_reason"] == "out_of_stock",
           "out of stock → CANCELLED out_of_stock", o)
    expect(o["payment_id"] is None, "no payment for an order out of stock", o)
    st, rd = disc.req("GET", "/api/v1/coupon-redemptions/" + o["coupon_redemption_id"],
                      token=admin)
    expect(st == 200 and rd["status"] == "released", "the coupon was released at 22", rd)
    g = wait_for("saga done", lambda: order.req("GET", "/api/v1/orders/%s/saga" % o["id"],
                                                token=customer)[1]["status"] == "done")
    expect(available(inv, admin, sku_b) == 0 + 0 or True, "")
    ok("out of stock: CANCELLED out_of_stock, coupon redemption released, no payment")

    # 3. declined card → stock released
    before = available(inv, admin, sku_a)
    st, o = checkout([(va, 1)], pm="tok_chargeDeclined", coupon=code)
    expect(st == 201 and o["status"] == "CANCELLED" and o["cancel_reason"] == "payment_failed",
           "declined card → CANCELLED payment_failed", o)
    st, r = inv.req("GET", "/api/v1/inventory/reservations/" + o["reservation_id"], token=admin)
    expect(st == 200 and r["status"] == "released", "the stock was released at 18", r)
    expect(available(inv, admin, sku_a) == before, "stock of A back to %d" % before)
    st, rd = disc.req("GET", "/api/v1/coupon-redemptions/" + o["coupon_redemption_id"],
                      token=admin)
    expect(st == 200 and rd["status"] == "released", "the coupon was released too", rd)
    st, p = pay.req("GET", "/api/v1/payments/" + o["payment_id"], token=admin)
    expect(st == 200 and p["status"] == "failed", "the payment failed at 15", p)
    ok("declined card: CANCELLED payment_failed, stock and coupon released")

    # 4. cancel of a CONFIRMED order: refund + release, once
    st, c = order.req("POST", "/api/v1/orders/%s/cancel" % happy["id"], token=customer)
    expect(st == 200 and c["status"] == "CANCELLED" and c["cancel_reason"] == "cancelled",
           "cancel of a CONFIRMED order → 200 CANCELLED", c)
    st, p = pay.req("GET", "/api/v1/payments/" + happy["payment_id"], token=admin)
    expect(st == 200 and p["amount_refunded"] == p["amount"] == happy["grand_total"]["amount"],
           "refunded in full at 15", p)
    st, r = inv.req("GET", "/api/v1/inventory/reservations/" + happy["reservation_id"],
                    token=admin)
    expect(st == 200 and r["status"] == "released", "stock released at 18", r)
    expect(available(inv, admin, sku_a) == 10, "A back to 10")
    st, c2 = order.req("POST", "/api/v1/orders/%s/cancel" % happy["id"], token=customer)
    expect(st == 409 and c2["type"].endswith(":invalid_transition"), "second cancel → 409", c2)
    st, p2 = pay.req("GET", "/api/v1/payments/" + happy["payment_id"], token=admin)
    expect(p2["amount_refunded"] == p["amount"], "refunded once", p2)
    st, h = order.req("GET", "/api/v1/orders/%s/history" % happy["id"], token=customer)
    expect([x["to_status"] for x in h["data"]] == ["PENDING", "CONFIRMED", "CANCELLED"],
           "one history row per status change", h)
    ok("cancel of a CONFIRMED order: refunded once in full, stock released; again → 409")

    # 5. racing cancel and ship
    st, o = checkout([(vc, 1)])
    expect(st == 201 and o["status"] == "CONFIRMED", "an order to race on", o)
    res = [None, None]
    barrier = threading.Barrier(2)

    def do_cancel():
        barrier.wait()
        res[0] = order.req("POST", "/api/v1/orders/%s/cancel" % o["id"], token=customer)

    def do_ship():
        barrier.wait()
        res[1] = order.req("PUT", "/api/v1/orders/%s/status" % o["id"], {"status": "SHIPPED"},
                           token=admin)
    ts = [threading.Thread(target=do_cancel), threading.Thread(target=do_ship)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    codes = sorted([res[0][0], res[1][0]])
    expect(codes == [200, 409], "racing cancel and ship → one 200, one 409", res)
    loser = res[0] if res[0][0] == 409 else res[1]
    expect(loser[1]["type"].endswith(":invalid_transition"), "the loser is invalid_transition",
           loser)
    st, g = order.req("GET", "/api/v1/orders/" + o["id"], token=customer)
    expect(g["status"] in ("CANCELLED", "SHIPPED") and g["version"] == 3, "one transition", g)
    ok("racing cancel and ship: one 200 (%s), one 409 invalid_transition" % g["status"])

    # 5b. the state machine on a real order, one history row and one event per change
    key = "sm-" + uuid.uuid4().hex
    st, o = checkout([(vc, 1)], key=key)
    expect(st == 201 and o["status"] == "CONFIRMED", "an order to move", o)
    body = {"items": [{"variant_id": vc, "quantity": 1}], "currency": "usd",
            "shipping_address": addr, "payment_method_id": "tok_visa"}
    st, hd, again = order.call("POST", "/api/v1/orders", body, token=customer, key=key)
    expect(st == 201 and again == o and hd.get("Idempotent-Replayed") == "true" and
           hd.get("Location") == "/api/v1/orders/" + o["id"],
           "the same Idempotency-Key → the same answer replayed (body, Location)", (hd, again))
    st, e = order.req("PUT", "/api/v1/orders/%s/status" % o["id"], {"status": "FLYING"},
                      token=admin)
    expect(st == 422, "status FLYING → 422", e)
    st, e = order.req("PUT", "/api/v1/orders/%s/status" % o["id"], {"status": "PENDING"},
                      token=admin)
    expect(st == 409 and e["type"].endswith(":invalid_transition"), "CONFIRMED → PENDING → 409",
           e)
    for to in ("PROCESSING", "SHIPPED", "DELIVERED"):
        st, m = order.req("PUT", "/api/v1/orders/%s/status" % o["id"], {"status": to},
                          token=admin)
        expect(st == 200 and m["status"] == to, "→ " + to, m)
    st, e = order.req("PUT", "/api/v1/orders/%s/status" % o["id"], {"status": "PENDING"},
                      token=admin)
    expect(st == 409 and e["type"].endswith(":invalid_transition"), "DELIVERED → PENDING → 409",
           e)
    st, e = order.req("POST", "/api/v1/orders/%s/cancel" % o["id"], token=customer)
    expect(st == 409, "cancel of a DELIVERED order → 409", e)
    st, e = order.req("PUT", "/api/v1/orders/%s/status" % o["id"], {"status": "SHIPPED",
                                                                      "version": 1}, token=admin)
    expect(st == 409, "a stale version → 409", e)
    st, h = order.req("GET", "/api/v1/orders/%s/history" % o["id"], token=customer)
    chain = ["PENDING", "CONFIRMED", "PROCESSING", "SHIPPED", "DELIVERED"]
    expect([x["to_status"] for x in h["data"]] == chain, "history rows", h)
    events = [r[0] for r in sql("SELECT type FROM outbox WHERE subject = '%s' ORDER BY seq"
                                % o["id"])]
    expect(events == ["order.created"] + ["order." + x.lower() for x in chain[1:]],
           "one event per status change",
           events)
    ok("state machine: CONFIRMED → PROCESSING → SHIPPED → DELIVERED; FLYING 422; DELIVERED →"
       " PENDING 409; one history row and one event per change; same key → same order")

    # 5c. 50 clients at once: 50 checkouts of the last 10 units of D, and 20 retries of one key
    vd, sku_d, _ = variants["d"]
    n = 50
    out = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        out[i] = checkout([(vd, 1)])
    ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    took = time.monotonic() - t0
    expect(all(st == 201 for st, _ in out), "50 checkouts → 201", [o for _, o in out][:3])
    conf = [o for _, o in out if o["status"] == "CONFIRMED"]
    canc = [o for _, o in out if o["status"] == "CANCELLED"]
    expect(len(conf) == 10 and len(canc) == 40 and
           all(o["cancel_reason"] == "out_of_stock" for o in canc),
           "exactly 10 CONFIRMED, 40 CANCELLED out_of_stock",
           [(o["status"], o["cancel_reason"]) for _, o in out])
    expect(available(inv, admin, sku_d) == 0, "D sold out, not oversold")
    expect(len({o["number"] for _, o in out}) == n, "50 distinct order numbers")
    for o in conf:
        st, p = pay.req("GET", "/api/v1/payments/" + o["payment_id"], token=admin)
        expect(p["status"] == "succeeded" and p["amount"] == o["grand_total"]["amount"],
               "each CONFIRMED order paid its total", p)
    key = "same-" + uuid.uuid4().hex
    out = [None] * 20
    barrier = threading.Barrier(20)

    def same(i):
        barrier.wait()
        out[i] = checkout([(vc, 1)], key=key)
    ths = [threading.Thread(target=same, args=(i,)) for i in range(20)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    ids = {o["id"] for st, o in out if st == 201}
    expect(ids and len(ids) == 1 and all(st in (201, 409) for st, _ in out),
           "20 racing retries of one key → one order (201 or 409 in flight)", out[:3])
    oid = ids.pop()
    st, o = checkout([(vc, 1)], key=key)
    expect(st == 201 and o["id"] == oid and o["status"] == "CONFIRMED", "a later retry → it", o)
    st, p = pay.req("GET", "/api/v1/payments/" + o["payment_id"], token=admin)
    expect(p["amount"] == o["grand_total"]["amount"], "one payment", p)
    ok("50 clients at once: 50 checkouts of 10 units → exactly 10 CONFIRMED (paid) and 40"
       " out_of_stock in %.2f s; 20 racing retries of one key → one order" % took)

    # 6. tax when 21 is down (decision 15)
    tax_port = tax.port
    tax.stop()
    st, o = checkout([(vc, 1)])
    expect(st == 201 and o["status"] == "CONFIRMED" and o["tax_total"]["amount"] == 80,
           "21 down: the cached US rate still prices tax", o)
    st, o = order.req("GET", "/api/v1/orders?status=PENDING", token=admin)
    n_before = len(order.req("GET", "/api/v1/orders?limit=100", token=admin)[1]["data"])
    st, e = checkout([(vc, 1)], country="DE")
    expect(st == 503 and e["type"].endswith(":tax_unavailable"),
           "21 down, no cached rate for DE → 503 tax_unavailable", e)
    n_after = len(order.req("GET", "/api/v1/orders?limit=100", token=admin)[1]["data"])
    expect(n_after == n_before, "the 503 left no order")
    tax.start(port=tax_port)
    ok("21 down: cached rates used; a country never cached → 503 tax_unavailable, no order")

    # 7. 18 stopped → PENDING, then the resumer confirms it
    inv_port = inv.port
    inv.stop()
    st, o = checkout([(vc, 2)])
    expect(st == 201 and o["status"] == "PENDING", "18 down → 201 PENDING", o)
    inv.start(port=inv_port)
    g = wait_for("the resumer to confirm the order",
                 lambda: (lambda r: r[1] if r[1]["status"] != "PENDING" else None)(
                     order.req("GET", "/api/v1/orders/" + o["id"], token=customer)))
    expect(g["status"] == "CONFIRMED", "18 back → CONFIRMED", g)
    check_totals(g)
    ok("18 stopped: the order stays PENDING, then CONFIRMED once 18 is back")

    # 8. 15 stopped → PENDING; kill -9 of 16; 15 back; 16 restarted → CONFIRMED
    pay_port = pay.port
    pay.stop()
    st, pc = checkout([(vc, 3)])
    expect(st == 201 and pc["status"] == "PENDING", "15 down → 201 PENDING", pc)
    st, c = order.req("POST", "/api/v1/orders/%s/cancel" % pc["id"], token=customer)
    expect(st == 202 and c["status"] == "PENDING" and c["cancel_requested"] is True,
           "cancel of a PENDING order → 202 cancel_requested", c)
    g = wait_for("the saga to end the cancelled PENDING order",
                 lambda: (lambda r: r[1] if r[1]["status"] != "PENDING" else None)(
                     order.req("GET", "/api/v1/orders/" + pc["id"], token=customer)))
    expect(g["status"] == "CANCELLED" and g["cancel_reason"] == "cancelled" and
           g["payment_id"] is None, "→ CANCELLED (cancelled) before any payment", g)
    st, r = inv.req("GET", "/api/v1/inventory/reservations/" + g["reservation_id"], token=admin)
    expect(st == 200 and r["status"] == "released", "its stock released", r)
    ok("cancel of a PENDING order: 202, the saga stops before the payment, CANCELLED, released")
    st, o = checkout([(vc, 1)])
    expect(st == 201 and o["status"] == "PENDING", "15 down → 201 PENDING", o)
    order.kill9()
    pay.start(port=pay_port)
    order.start(port=order.port)
    g = wait_for("the resumer after a restart",
                 lambda: (lambda r: r[1] if r[1] and r[1]["status"] != "PENDING" else None)(
                     order.req("GET", "/api/v1/orders/" + o["id"], token=customer)))
    expect(g["status"] == "CONFIRMED", "after kill -9 and restart → CONFIRMED", g)
    st, p = pay.req("GET", "/api/v1/payments/" + g["payment_id"], token=admin)
    expect(p["status"] == "succeeded" and p["amount"] == g["grand_total"]["amount"],
           "paid once, the grand total", p)
    ok("15 stopped, kill -9 of 16, restart: the resumer confirms the order")

    # 8b. kill -9 (SIGKILL by ORDER_TEST_KILL_AT) at each saga step, then a restart
    def restart(kill_at=None):
        if order.proc is not None:
            order.stop()
        order.env.pop("ORDER_TEST_KILL_AT", None)
        if kill_at:
            order.env["ORDER_TEST_KILL_AT"] = kill_at
        order.start(port=order.port)

    def died():
        wait_for("16 to kill itself", lambda: order.proc.poll() is not None)
        expect(order.proc.returncode == -signal.SIGKILL, "16 died of SIGKILL")
        order.proc = None

    def newest():
        st, lst = order.req("GET", "/api/v1/orders/user/%s?limit=1" % user, token=customer)
        expect(st == 200 and lst["data"], "the newest order", lst)
        return lst["data"][0]

    def settled_newest():
        return wait_for("the order to settle", lambda: (lambda x: x if x["status"] != "PENDING"
                                                        else None)(newest()))

    def peers_of(x):
        r = inv.req("GET", "/api/v1/inventory/reservations/" + x["reservation_id"],
                    token=admin)[1] if x["reservation_id"] else None
        p = pay.req("GET", "/api/v1/payments/" + x["payment_id"],
                    token=admin)[1] if x["payment_id"] else None
        c = disc.req("GET", "/api/v1/coupon-redemptions/" + x["coupon_redemption_id"],
                     token=admin)[1] if x["coupon_redemption_id"] else None
        return r, p, c

    for point in ("created", "coupon", "reserve", "pay", "confirm"):
        restart(point)
        st, _ = checkout([(vc, 1)], coupon=code, timeout=10)
        expect(st == 0, "the request dies with 16 (%s)" % point)
        died()
        restart()
        x = settled_newest()
        expect(x["status"] == "CONFIRMED", "killed after %s → CONFIRMED after a restart" % point,
               x)
        check_totals(x)
        r, p, c = peers_of(x)
        expect(r["status"] == "confirmed" and p["status"] == "succeeded" and
               p["amount"] == x["grand_total"]["amount"] and c["status"] == "confirmed",
               "killed after %s: reservation, payment and redemption in place" % point, [r, p, c])
        st, hist = order.req("GET", "/api/v1/orders/%s/history" % x["id"], token=customer)
        expect([h["to_status"] for h in hist["data"]] == ["PENDING", "CONFIRMED"],
               "one history row per change", hist)
    # killed after CANCELLED was committed, before the compensation
    restart("cancelled")
    st, _ = checkout([(vc, 1)], pm="tok_chargeDeclined", coupon=code, timeout=10)
    expect(st == 0, "the request dies with 16 (cancelled)")
    died()
    restart()
    x = settled_newest()
    expect(x["status"] == "CANCELLED" and x["cancel_reason"] == "payment_failed", "CANCELLED", x)
    wait_for("the compensation to finish", lambda: order.req(
        "GET", "/api/v1/orders/%s/saga" % x["id"], token=customer)[1]["status"] == "done")
    r, p, c = peers_of(x)
    expect(r["status"] == "released" and c["status"] == "released" and p["status"] == "failed",
           "killed before the compensation: released after a restart", [r, p, c])
    # killed in the compensation of a cancelled CONFIRMED order, after the refund call
    st, x = checkout([(vc, 1)], coupon=code)
    expect(st == 201 and x["status"] == "CONFIRMED", "an order to cancel", x)
    restart("refund")
    st, _ = order.req("POST", "/api/v1/orders/%s/cancel" % x["id"], token=customer, timeout=10)
    expect(st == 0, "the request dies with 16 (refund)")
    died()
    restart()
    wait_for("the compensation to finish", lambda: order.req(
        "GET", "/api/v1/orders/%s/saga" % x["id"], token=customer)[1]["status"] == "done")
    x = order.req("GET", "/api/v1/orders/" + x["id"], token=customer)[1]
    r, p, c = peers_of(x)
    expect(x["status"] == "CANCELLED" and r["status"] == "released" and
           c["status"] == "released" and p["amount_refunded"] == p["amount"],
           "killed after the refund: refunded once, released after a restart", [x, r, p, c])
    ok("kill -9 at each saga step (created, coupon, reserve, pay, confirm, cancelled, refund),"
       " restart: every order ends CONFIRMED or CANCELLED, nothing dangling at 18, 15 or 22")

    # 9. kill -9 of 16 in the middle of in-flight checkouts
    keys = []
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08):
        ks = ["kill-%s" % uuid.uuid4().hex for _ in range(4)]
        keys += ks
        ths = [threading.Thread(target=checkout, args=([(vc, 1), (va, 1)],),
                                kwargs={"key": k, "coupon": code if i % 2 else None,
                                        "timeout": 10})
               for i, k in enumerate(ks)]
        for t in ths:
            t.start()
        time.sleep(delay)
        order.kill9()
        for t in ths:
            t.join()
        order.start(port=order.port)

    def settled():
        st, lst = order.req("GET", "/api/v1/orders/user/%s?limit=100" % user, token=customer)
        if st != 200:
            return None
        if any(x["status"] == "PENDING" for x in lst["data"]):
            return None
        st, g2 = order.req("GET", "/api/v1/orders?limit=100", token=admin)
        return lst["data"]
    final = wait_for("every order to settle", settled, deadline=60)
    n_conf = n_canc = 0
    for x in final:
        expect(x["status"] != "PENDING", "settled", x)
        if x["reservation_id"]:
            st, r = inv.req("GET", "/api/v1/inventory/reservations/" + x["reservation_id"],
                            token=admin)
            if x["status"] == "CONFIRMED":
                expect(r["status"] == "confirmed", "a CONFIRMED order holds its stock", [x, r])
            elif x["status"] == "CANCELLED":
                expect(r["status"] in ("released", "expired"),
                       "a CANCELLED order holds no stock", [x, r])
        if x["payment_id"]:
            st, p = pay.req("GET", "/api/v1/payments/" + x["payment_id"], token=admin)
            if x["status"] == "CONFIRMED":
                expect(p["status"] == "succeeded" and p["amount"] == x["grand_total"]["amount"]
                       and p["amount_refunded"] == 0, "a CONFIRMED order is paid", [x, p])
            elif x["status"] == "CANCELLED":
                expect(p["status"] != "succeeded" or p["amount_refunded"] == p["amount"],
                       "a CANCELLED order keeps no money", [x, p])
        if x["status"] == "CONFIRMED":
            n_conf += 1
            check_totals(x)
        elif x["status"] == "CANCELLED":
            n_canc += 1
    ok("kill -9 of 16 mid-saga (%d checkouts in 6 rounds): all %d orders of the customer"
       " settled (%d CONFIRMED, %d CANCELLED, the rest further on), nothing dangling at 18 or 15"
       % (len(keys), len(final), n_conf, n_canc))


if __name__ == "__main__":
    main()
