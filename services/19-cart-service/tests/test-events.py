#!/usr/bin/python3
"""cart-service events end to end with real processes (SERVICES §19 Events, §0 Events).

  test-events.py BUILD_DIR [PG_URL]    (with PG_URL the bus and the carts run on PostgreSQL)

Starts 14-event-bus-service, 17-product-service (publishing to the bus) and 19-cart-service
(EVENT_BUS=http) on free 127.0.0.1 ports. 17's own events are real (a price change, a deletion);
18's and 06's are published to the bus with their services' payloads. Checks, as a shopper
sees it in GET cart and totals:
  1. product.price_changed: open carts' lines of the variant keep the old unit price and show
     price_changed with old_unit_price/new_unit_price (totals agree), the cart version grows by
     one; a merged (read-only) cart is untouched; the same event under a new id, a replay of
     the subscription and an older event change nothing; a price back at the snapshot clears
     the mark; adding the variant again reprices the line;
  2. inventory.out_of_stock flags the sku's lines (also a line merged into a signed-in cart)
     once; a stock_changed with stock available clears it; checkout is not refused for it;
  3. product.deleted makes the product's lines unavailable (reason product_deleted, out of the
     subtotal) and checkout answers 422 variant_unavailable; a redelivery changes nothing;
  4. user.deleted erases the user's carts and the anonymous cart merged into them (404, no
     rows), leaves other users' carts, and a second erasure is a no-op.
Events are awaited through a marker event applied after them (a sku toggled out of stock and
back on a marker cart): the consumer applies events in bus order, so once the marker shows,
everything published before it was applied. Every wait has a deadline. Stdlib only.
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

passed = 0


def check(cond, msg):
    global passed
    if not cond:
        fail(msg)
    passed += 1


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = os.path.abspath(sys.argv[1])
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-cart-events-")
    os.chmod(tmp, 0o755)
    svcs, dbs = [], []
    try:
        run(build, pg, tmp, svcs, dbs)
    finally:
        for s in reversed(svcs):
            s.stop()  # fails on a status other than 0 or a sanitizer report in the log
        for d in dbs:
            pg_drop(pg, d)
    shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, 0 failed" % passed)
    return 0


def run(build, pg, tmp, svcs, dbs):
    mint = Minter(build, tmp)
    admin = mint.token(str(uuid.uuid4()), "*", "super_admin")
    alice_sub, bob_sub = str(uuid.uuid4()), str(uuid.uuid4())
    alice = mint.token(alice_sub, "", "customer")
    bob = mint.token(bob_sub, "", "customer")
    base = {k: v for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "SERVICE_TOKEN", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET")}
    base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks, "LOG_LEVEL": "info",
                 "CURSOR_SECRET": "t"})
    benv, cenv = dict(base), dict(base)
    if pg:
        tag = uuid.uuid4().hex[:8]
        dbs += ["gr_bus_" + tag, "gr_cart_" + tag]
        benv["DATABASE_URL"] = pg_database(pg, dbs[0])
        cart_url = pg_database(pg, dbs[1])
    else:
        os.makedirs(os.path.join(tmp, "cart-db"))
        cart_url = "sqlite://" + os.path.join(tmp, "cart-db", "cart.db")
    bus = gt.Service(build, tmp, "14-event-bus-service", benv).start()
    svcs.append(bus)
    busenv = {"EVENT_BUS": "http", "EVENT_BUS_URL": bus.base, "SERVICE_TOKEN": admin}
    prod = gt.Service(build, tmp, "17-product-service", dict(base, **busenv)).start()
    svcs.append(prod)
    cenv.update(busenv)
    cenv.update({"DATABASE_URL": cart_url, "PRODUCT_URL": prod.base, "DISCOUNT_URL": "off",
                 "ORDER_URL": "http://127.0.0.1:1", "CART_UPSTREAM_TIMEOUT_MS": "3000"})
    cart = gt.Service(build, tmp, "19-cart-service", cenv).start()
    svcs.append(cart)
    db = gt.Db.from_url(cart_url)
    bc = gt.BusClient(bus, admin)

    def req(method, path, body=None, token=None, headers=None, base_url=None):
        st, _, b = gt.request((base_url or cart.base) + path, method, body, token, headers)
        return st, b

    def publish(type_, subject, data, source):
        return bc.publish(type_, subject, data, source)

    # ---- catalogue at 17 ----
    u = uuid.uuid4().hex[:8]
    sku = {k: "%s-%s" % (k, u) for k in ("SA", "SB", "SE", "SD", "SM")}
    st, p = req("POST", "/api/v1/products", {
        "title": "Shoe", "slug": "shoe-" + u, "status": "active",
        "variants": [{"sku": sku["SA"], "price": {"amount": 1000, "currency": "usd"}},
                     {"sku": sku["SB"], "price": {"amount": 2500, "currency": "usd"}},
                     {"sku": sku["SE"], "price": {"amount": 100, "currency": "usd"}},
                     {"sku": sku["SM"], "price": {"amount": 50, "currency": "usd"}}]},
        admin, base_url=prod.base)
    check(st == 201, "create product: %s %s" % (st, p))
    pid = p["id"]
    va, vb, ve, vm = (v["id"] for v in p["variants"])
    st, q = req("POST", "/api/v1/products", {
        "title": "Doomed", "slug": "doomed-" + u, "status": "active",
        "variants": [{"sku": sku["SD"], "price": {"amount": 300, "currency": "usd"}}]},
        admin, base_url=prod.base)
    check(st == 201, "create product Q: %s %s" % (st, q))
    qid, vd = q["id"], q["variants"][0]["id"]

    def add(cid, vid, qty, token=None, headers=None):
        st, c = req("POST", "/api/v1/carts/%s/items" % cid, {"variant_id": vid, "quantity": qty},
                    token, headers)
        if st != 201:
            fail("add %s x%d to %s: %s %s" % (vid, qty, cid, st, c))
        return c

    def anon_cart():
        st, c = req("POST", "/api/v1/carts", {})
        check(st == 201, "anonymous cart: %s" % st)
        return c["id"], {"X-Cart-Token": c["cart_token"]}

    # ---- carts ----
    st, ac = req("POST", "/api/v1/carts", {}, alice)
    check(st == 201, "alice's cart: %s %s" % (st, ac))
    alc = ac["id"]
    add(alc, va, 2, alice)
    add(alc, vb, 1, alice)
    add(alc, vd, 1, alice)
    xid, xh = anon_cart()  # an open anonymous cart with A
    add(xid, va, 1, headers=xh)
    nid, nh = anon_cart()  # merged into alice's cart: erased with her
    add(nid, ve, 1, headers=nh)
    st, _ = req("POST", "/api/v1/carts/%s/merge" % nid, None, alice, nh)
    check(st == 200, "merge N into alice's cart: %s" % st)
    st, bcart = req("POST", "/api/v1/carts", {}, bob)
    bid = bcart["id"]
    mid, mh = anon_cart()  # merged into bob's: read-only, its lines never change
    add(mid, va, 1, headers=mh)
    st, _ = req("POST", "/api/v1/carts/%s/merge" % mid, None, bob, mh)
    check(st == 200, "merge M into bob's cart: %s" % st)
    kid, kh = anon_cart()  # the marker cart
    add(kid, vm, 1, headers=kh)  # its sku SM is on no other line

    def get(cid, token=None, headers=None):
        st, c = req("GET", "/api/v1/carts/" + cid, None, token, headers)
        if st != 200:  # not counted: wait_for polls it
            fail("GET cart %s: %s %s" % (cid, st, c))
        return c

    def line(c, vid):
        ls = [i for i in c["items"] if i["variant_id"] == vid]
        return ls[0] if ls else None

    marker_on = [False]

    def marker():
        """Toggles SM out of stock / back and waits for the marker cart to show it: every
        event published before is applied by then."""
        marker_on[0] = not marker_on[0]
        if marker_on[0]:
            publish("inventory.out_of_stock", sku["SM"],
                    {"sku": sku["SM"], "available": 0, "threshold": 0}, "/gravity/inventory-service")
        else:
            publish("inventory.stock_changed", sku["SM"],
                    {"sku": sku["SM"], "warehouse_id": "w1", "on_hand": 5, "reserved": 0,
                     "available": 5, "version": 9, "updated_at": "2026-11-25T12:00:00.000Z"},
                    "/gravity/inventory-service")
        wait_for("the marker event", lambda: line(get(kid, headers=kh), vm)["out_of_stock"] is marker_on[0])

    c = get(alc, alice)
    check(all(not i["price_changed"] and i["available"] and not i["out_of_stock"] for i in c["items"])
          and c["price_changed"] is False and c["has_unavailable"] is False
          and c["has_out_of_stock"] is False, "fresh lines carry no flags: %s" % c)
    v_alice, v_x, v_bob, v_m = c["version"], get(xid, headers=xh)["version"], get(bid, bob)["version"], \
        get(mid, headers=mh)["version"]

    # ---- 1. product.price_changed ----
    st, _ = req("PATCH", "/api/v1/products/%s/variants/%s" % (pid, va),
                {"price": {"amount": 1200, "currency": "usd"}}, admin, base_url=prod.base)
    check(st == 200, "price change at 17: %s" % st)
    c = wait_for("alice's line A to show the price change",
                 lambda: (lambda c: c if line(c, va)["price_changed"] else None)(get(alc, alice)))
    la = line(c, va)
    check(la["unit_price"] == {"amount": 1000, "currency": "usd"}
          and la["old_unit_price"] == {"amount": 1000, "currency": "usd"}
          and la["new_unit_price"] == {"amount": 1200, "currency": "usd"}
          and la["line_total"] == {"amount": 2000, "currency": "usd"}
          and c["price_changed"] is True and not line(c, vb)["price_changed"],
          "the line keeps its old price and shows old and new: %s" % c)
    check(c["version"] == v_alice + 1, "alice's cart version +1: %d -> %d" % (v_alice, c["version"]))
    st, t = req("GET", "/api/v1/carts/%s/totals" % alc, None, alice)
    tl = [x for x in t["lines"] if x["variant_id"] == va][0]
    check(st == 200 and t["price_changed"] and tl["price_changed"]
          and tl["old_unit_price"]["amount"] == 1000 and tl["new_unit_price"]["amount"] == 1200,
          "totals agree with GET cart: %s %s" % (st, t))
    cx = wait_for("the anonymous cart's line A", lambda: (lambda c: c if line(c, va)["price_changed"] else None)(
        get(xid, headers=xh)))
    check(cx["version"] == v_x + 1, "the anonymous cart's version +1")
    cb = wait_for("bob's merged line A", lambda: (lambda c: c if line(c, va)["price_changed"] else None)(get(bid, bob)))
    check(cb["version"] == v_bob + 1, "bob's cart version +1")
    # Redelivery under a new id, a replay of the subscription: nothing changes.
    evs = wait_for("product.price_changed on the bus", lambda: bc.events("product.price_changed", pid))
    check(len(evs) == 1 and evs[0]["data"]["id"] == va and evs[0]["data"]["old_price"]["amount"] == 1000,
          "17 published one price change: %s" % evs)
    first_change = evs[0]["data"]
    publish("product.price_changed", pid, first_change, "/gravity/product-service")
    st, subs = bus.req("GET", "/api/v1/event-subscriptions", token=admin)
    sid = [s["id"] for s in subs["data"] if s["name"] == "cart-service"]
    check(st == 200 and len(sid) == 1, "cart-service has a subscription on the bus: %s" % subs)
    st, rep = bus.req("POST", "/api/v1/event-subscriptions/%s/replay" % sid[0], {"after_seq": 0}, admin)
    check(st == 200 and rep.get("replayed", 0) >= 1, "replay: %s %s" % (st, rep))
    marker()
    c = get(alc, alice)
    cm = get(mid, headers=mh)
    check(c["version"] == v_alice + 1 and line(c, va)["new_unit_price"]["amount"] == 1200,
          "a redelivery and a replay change nothing: %s" % c)
    check(cm["version"] == v_m and not line(cm, va)["price_changed"],
          "a merged cart is not touched: %s" % cm)
    # Back to the snapshot price: the mark goes.
    st, _ = req("PATCH", "/api/v1/products/%s/variants/%s" % (pid, va),
                {"price": {"amount": 1000, "currency": "usd"}}, admin, base_url=prod.base)
    check(st == 200, "price back at 17")
    c = wait_for("the mark to clear", lambda: (lambda c: c if not line(c, va)["price_changed"] else None)(
        get(alc, alice)))
    check(c["version"] == v_alice + 2 and "new_unit_price" not in line(c, va) and not c["price_changed"],
          "price back at the snapshot: %s" % c)
    # A new change, then the variant added again: the line is priced afresh.
    st, _ = req("PATCH", "/api/v1/products/%s/variants/%s" % (pid, va),
                {"price": {"amount": 1500, "currency": "usd"}}, admin, base_url=prod.base)
    wait_for("the 1500 change", lambda: line(get(alc, alice), va)["price_changed"])
    c = add(alc, va, 1, alice)
    la = line(c, va)
    check(la["quantity"] == 3 and la["unit_price"]["amount"] == 1500 and not la["price_changed"],
          "adding again reprices the line: %s" % la)
    # The first change again (an older variant version) under a new id: skipped.
    v_now = c["version"]
    publish("product.price_changed", pid, first_change, "/gravity/product-service")
    marker()
    c = get(alc, alice)
    check(c["version"] == v_now and not line(c, va)["price_changed"]
          and line(c, va)["unit_price"]["amount"] == 1500, "an older price change is skipped: %s" % c)
    print("ok: product.price_changed shows old and new on open carts, once")

    # ---- 2. inventory.out_of_stock / stock_changed ----
    v_alice, v_bob, v_m = get(alc, alice)["version"], get(bid, bob)["version"], get(mid, headers=mh)["version"]
    oos = {"sku": sku["SA"], "available": 0, "threshold": 0}
    publish("inventory.out_of_stock", sku["SA"], oos, "/gravity/inventory-service")
    c = wait_for("alice's line A out of stock",
                 lambda: (lambda c: c if line(c, va)["out_of_stock"] else None)(get(alc, alice)))
    check(c["has_out_of_stock"] and not line(c, vb)["out_of_stock"] and line(c, va)["available"]
          and c["version"] == v_alice + 1, "the out-of-stock line: %s" % c)
    st, t = req("GET", "/api/v1/carts/%s/totals" % alc, None, alice)
    tl = [x for x in t["lines"] if x["variant_id"] == va][0]
    check(st == 200 and t["has_out_of_stock"] and tl["out_of_stock"] and tl["available"],
          "totals show it: %s" % t)
    wait_for("bob's merged line A out of stock", lambda: line(get(bid, bob), va)["out_of_stock"])
    publish("inventory.out_of_stock", sku["SA"], oos, "/gravity/inventory-service")
    publish("inventory.stock_changed", sku["SA"],
            {"sku": sku["SA"], "warehouse_id": "w1", "on_hand": 2, "reserved": 2, "available": 0,
             "version": 4, "updated_at": "2026-11-25T12:00:00.000Z"}, "/gravity/inventory-service")
    marker()
    c, cm = get(alc, alice), get(mid, headers=mh)
    check(c["version"] == v_alice + 1 and line(c, va)["out_of_stock"],
          "out_of_stock twice and stock_changed at 0 change nothing more: %s" % c)
    check(get(bid, bob)["version"] == v_bob + 1, "bob's cart flagged once")
    check(cm["version"] == v_m and not line(cm, va)["out_of_stock"], "the merged cart is untouched")
    # 18 decides at checkout: the flag does not stop it (here 16 is unreachable: 503).
    ck = {"shipping_address": {"line1": "1 Main St", "city": "Springfield", "country": "US"},
          "payment_method_id": "pm_visa"}
    st, e = req("POST", "/api/v1/carts/%s/checkout" % alc, ck, alice, {"Idempotency-Key": "oos-1"})
    check(st == 503, "an out-of-stock flag does not refuse checkout (16 down: 503): %s %s" % (st, e))
    publish("inventory.stock_changed", sku["SA"],
            {"sku": sku["SA"], "warehouse_id": "w1", "on_hand": 7, "reserved": 2, "available": 5,
             "version": 5, "updated_at": "2026-11-25T12:00:01.000Z"}, "/gravity/inventory-service")
    c = wait_for("the flag to clear", lambda: (lambda c: c if not line(c, va)["out_of_stock"] else None)(
        get(alc, alice)))
    check(c["version"] == v_alice + 2 and not c["has_out_of_stock"], "back in stock: %s" % c)
    print("ok: inventory.out_of_stock flags the sku's lines once; stock back clears it")

    # ---- 3. product.deleted ----
    st, _ = req("PATCH", "/api/v1/products/" + qid, {"status": "draft"}, admin, base_url=prod.base)
    check(st == 200, "Q back to draft: %s" % st)
    st, _ = req("DELETE", "/api/v1/products/" + qid, None, admin, base_url=prod.base)
    check(st == 204, "delete Q at 17: %s" % st)
    c = wait_for("alice's line D unavailable",
                 lambda: (lambda c: c if not line(c, vd)["available"] else None)(get(alc, alice)))
    ld = line(c, vd)
    check(ld["reason"] == "product_deleted" and c["has_unavailable"] and line(c, va)["available"],
          "the deleted product's line: %s" % c)
    v_alice = c["version"]
    st, t = req("GET", "/api/v1/carts/%s/totals" % alc, None, alice)
    tl = [x for x in t["lines"] if x["variant_id"] == vd][0]
    check(st == 200 and t["has_unavailable"] and tl["available"] is False and tl["reason"] == "product_deleted"
          and t["subtotal"] == {"amount": 3 * 1500 + 2500 + 100, "currency": "usd"},
          "totals leave it out: %s" % t)
    st, e = req("POST", "/api/v1/carts/%s/checkout" % alc, ck, alice, {"Idempotency-Key": "del-1"})
    check(st == 422 and e["type"].endswith(":variant_unavailable")
          and any(x["field"].endswith("/variant_id") for x in e.get("errors", [])),
          "checkout refuses the deleted product's line: %s %s" % (st, e))
    evs = wait_for("product.deleted on the bus", lambda: bc.events("product.deleted", qid))
    publish("product.deleted", qid, evs[0]["data"], "/gravity/product-service")
    marker()
    check(get(alc, alice)["version"] == v_alice, "a redelivered product.deleted changes nothing")
    print("ok: product.deleted makes its lines unavailable; checkout refuses them")

    # ---- 4. user.deleted ----
    def count(sql):
        return int(db.rows(sql)[0][0])

    check(count("SELECT COUNT(*) FROM carts WHERE user_id = '%s'" % alice_sub) == 1
          and count("SELECT COUNT(*) FROM cart_items WHERE cart_id = '%s'" % alc) == 4,
          "alice has one cart with four lines before")
    gone = {"id": alice_sub, "user_id": alice_sub, "version": 3, "deleted_at": "2026-11-25T12:00:00.000Z"}
    publish("user.deleted", alice_sub, gone, "/gravity/user-service")
    wait_for("alice's cart to be erased", lambda: req("GET", "/api/v1/carts/" + alc, None, alice)[0] == 404)
    st, _ = req("GET", "/api/v1/carts/me", None, alice)
    check(st == 404, "alice has no open cart: %s" % st)
    st, _ = req("GET", "/api/v1/carts/" + nid, None, None, nh)
    check(st == 404, "the anonymous cart merged into hers is gone too: %s" % st)
    check(count("SELECT COUNT(*) FROM carts WHERE user_id = '%s' OR id IN ('%s', '%s')" % (alice_sub, alc, nid)) == 0
          and count("SELECT COUNT(*) FROM cart_items WHERE cart_id IN ('%s', '%s')" % (alc, nid)) == 0,
          "no rows of alice's carts remain")
    publish("user.deleted", alice_sub, gone, "/gravity/user-service")
    marker()
    check(len(get(bid, bob)["items"]) == 1 and get(xid, headers=xh)["items"], "other carts stay")
    st, c = req("POST", "/api/v1/carts", {}, alice)
    check(st == 201 and c["items"] == [], "alice can start a new cart after the erasure: %s" % st)
    print("ok: user.deleted erases the user's carts once")

    check("Bearer " not in cart.log_text() and admin not in cart.log_text(), "no token in the log")


if __name__ == "__main__":
    sys.exit(main())
