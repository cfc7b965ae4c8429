#!/usr/bin/python3
"""cart-service end to end (SERVICES §19), against a real 17-product-service, a real
22-discount-service when its binary exists, and a test double of 16-order-service.

  test-cart.py BUILD_DIR [PG_URL]    (with PG_URL the carts live in a new PostgreSQL database)

Starts 17 (and 22) and two cart-services on free 127.0.0.1 ports, with tokens minted by
BUILD_DIR/bin/gr-jwt against a JWKS file, and checks:
  1. lines: adding a variant twice grows one line (also 50 concurrent adds: quantity 50); 99 is the cap (422 quantity_exceeded); an
     archived variant, a draft product's variant and an unknown one are 422 variant_unavailable;
     another currency is 422 currency_mismatch; PATCH quantity 0 removes the line; each add
     writes one cart.item_added to the outbox;
  2. totals reprice every line at 17: after a price change the line shows price_changed with
     the old and the new unit price, and the subtotal uses the new one;
  3. coupon preview through 22 (valid → discount; unknown code → valid:false with 22's slug);
     with 22 stopped (or absent) the totals still answer, coupon previewed:false;
  4. merge at sign-in: quantities add up, capped at 99; the anonymous cart becomes merged and
     read-only (409); a cart of another user is 404;
  5. checkout [IK!] at the order double: one order; the same key replays the same order without
     a second call to 16; the call carried the user's token and the key cart:{id}:checkout:v{n};
     a 503 from 16 leaves the cart active and the retry gets an order with the same key; an
     archived variant stops checkout with 422 variant_unavailable and no call to 16;
     afterwards every write is 409 cart_checked_out, and cart.checked_out is in the outbox once;
  6. the sweeper (second cart-service, CART_ABANDON_AFTER_S=1): an idle cart with lines becomes
     abandoned with exactly one cart.abandoned, an idle empty cart stays active, and a write
     makes the abandoned cart active again.
Every wait is for a condition with a deadline. Only the standard library is used.
"""
import json
import os
import shutil
import sys
import tempfile
import threading
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "doubles"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tests", "lib"))
from order_service_double import OrderServiceDouble  # noqa: E402
import gravity_test as gt  # noqa: E402
from gravity_test import fail, wait_for  # noqa: E402

passed = 0


def check(cond, msg):
    global passed
    if not cond:
        fail(msg)
    passed += 1


def req(base, method, path, body=None, token=None, headers=None):
    """(status, body, headers) of a request to base + path (gt.request)."""
    st, h, b = gt.request(base + path, method, body, token, headers)
    return st, b, h


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
    pg_url = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="cart-test-")
    os.chmod(tmp, 0o755)
    svcs, pgdbs = [], []
    order = OrderServiceDouble()
    try:
        run(build, pg_url, tmp, svcs, pgdbs, order)
    finally:
        for s in reversed(svcs):
            s.stop()  # fails on a status other than 0 or a sanitizer report in the log
        order.close()
        for name in pgdbs:
            gt.pg_drop(pg_url, name)
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, 0 failed" % passed)


def run(build, pg_url, tmp, svcs, pgdbs, order):
    tk = gt.Minter(build, tmp, kid="cart-test")
    admin = tk.token(str(uuid.uuid4()), ["*"], ["super_admin"], ttl=3600)
    alice_sub, bob_sub = str(uuid.uuid4()), str(uuid.uuid4())
    alice = tk.token(alice_sub, [], ["customer"], ttl=3600)
    bob = tk.token(bob_sub, [], ["customer"], ttl=3600)
    service = tk.token("cart-service", ["products:read", "coupons:read"], ["service"], ttl=3600)
    base_env = dict(os.environ, JWKS_URL="file://" + tk.jwks, LOG_LEVEL="info", CURSOR_SECRET="test",
                    EVENT_BUS_URL="http://127.0.0.1:1", JWT_ISSUER="gravity", JWT_AUDIENCE="gravity")
    for k in ("SERVICE_TOKEN", "DATABASE_URL", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET"):
        base_env.pop(k, None)

    prod = gt.Service(build, tmp, "product", binary="17-product-service", env=base_env).start()
    svcs.append(prod)
    disc = None
    if os.access(os.path.join(build, "bin", "22-discount-service"), os.X_OK):
        disc = gt.Service(build, tmp, "discount", binary="22-discount-service", env=base_env).start()
        svcs.append(disc)
    else:
        print("note: no 22-discount-service binary; the coupon preview is checked as unavailable")

    def cart_db(name):
        if pg_url:
            db = "cart_t_%s_%s" % (name, uuid.uuid4().hex[:10])
            pgdbs.append(db)
            return gt.pg_database(pg_url, db)
        d = os.path.join(tmp, name + "-db")
        os.makedirs(d, exist_ok=True)
        return "sqlite://" + d + "/cart.db"

    url1 = cart_db("main")
    cart = gt.Service(build, tmp, "cart", binary="19-cart-service", env=dict(
        base_env, DATABASE_URL=url1, SERVICE_TOKEN=service, PRODUCT_URL=prod.base,
        DISCOUNT_URL=disc.base if disc else "http://127.0.0.1:1", ORDER_URL=order.url,
        CART_UPSTREAM_TIMEOUT_MS="3000")).start()
    svcs.append(cart)
    db = gt.Db.from_url(url1)
    C = cart.base

    # ---- catalogue at 17 ----
    u = uuid.uuid4().hex[:8]
    st, p, _ = req(prod.base, "POST", "/api/v1/products", {
        "title": "Shoe", "slug": "shoe-" + u, "status": "active",
        "variants": [{"sku": "SA-" + u, "price": {"amount": 1000, "currency": "usd"}},
                     {"sku": "SB-" + u, "price": {"amount": 2500, "currency": "usd"}},
                     {"sku": "SX-" + u, "price": {"amount": 700, "currency": "usd"}}]}, admin)
    check(st == 201, "create product: %s %s" % (st, p))
    pid = p["id"]
    va, vb, vx = (v["id"] for v in p["variants"])
    st, q, _ = req(prod.base, "POST", "/api/v1/products", {
        "title": "Euro", "slug": "euro-" + u, "status": "active",
        "variants": [{"sku": "EU-" + u, "price": {"amount": 500, "currency": "eur"}}]}, admin)
    check(st == 201, "create eur product")
    veur = q["variants"][0]["id"]
    st, d, _ = req(prod.base, "POST", "/api/v1/products", {
        "title": "Draft", "slug": "draft-" + u,
        "variants": [{"sku": "DR-" + u, "price": {"amount": 100, "currency": "usd"}}]}, admin)
    check(st == 201, "create draft product")
    vdraft = d["variants"][0]["id"]
    st, _, _ = req(prod.base, "DELETE", "/api/v1/products/%s/variants/%s" % (pid, vx), None, admin)
    check(st == 204, "archive variant X: %s" % st)

    # ---- 1. lines ----
    st, ac, _ = req(C, "POST", "/api/v1/carts", {})
    check(st == 201 and ac.get("cart_token"), "anonymous cart")
    anon, tokh = ac["id"], {"X-Cart-Token": ac["cart_token"]}
    st, c, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": va, "quantity": 2}, headers=tokh)
    check(st == 201 and len(c["items"]) == 1 and c["items"][0]["quantity"] == 2, "add A x2: %s %s" % (st, c))
    check(c["currency"] == "usd" and c["items"][0]["unit_price"] == {"amount": 1000, "currency": "usd"},
          "the line is priced at 17: %s" % c)
    line_a = c["items"][0]["id"]
    st, c, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": va, "quantity": 3}, headers=tokh)
    check(st == 201 and len(c["items"]) == 1 and c["items"][0]["id"] == line_a and c["items"][0]["quantity"] == 5,
          "adding A again grows its line: %s" % c)
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": va, "quantity": 95}, headers=tokh)
    check(st == 422 and e["type"].endswith(":quantity_exceeded"), "5 + 95 > 99: %s %s" % (st, e))
    for vid, what in ((vx, "archived"), (vdraft, "draft product's"), (str(uuid.uuid4()), "unknown")):
        st, e, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": vid, "quantity": 1}, headers=tokh)
        check(st == 422 and e["type"].endswith(":variant_unavailable"), "%s variant: %s %s" % (what, st, e))
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": veur, "quantity": 1}, headers=tokh)
    check(st == 422 and e["type"].endswith(":currency_mismatch"), "eur into a usd cart: %s %s" % (st, e))
    st, c, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": vb, "quantity": 1}, headers=tokh)
    check(st == 201 and len(c["items"]) == 2, "add B")
    line_b = [i for i in c["items"] if i["variant_id"] == vb][0]["id"]
    st, c, _ = req(C, "PATCH", "/api/v1/carts/%s/items/%s" % (anon, line_b), {"quantity": 0}, headers=tokh)
    check(st == 200 and [i["variant_id"] for i in c["items"]] == [va], "PATCH 0 removes B: %s" % c)
    st, c, _ = req(C, "PATCH", "/api/v1/carts/%s/items/%s" % (anon, line_a), {"quantity": 50}, headers=tokh)
    check(st == 200 and c["items"][0]["quantity"] == 50, "PATCH A to 50")
    ev = db.events("cart.item_added", anon)
    check(len(ev) == 3 and all(x["data"]["variant_id"] in (va, vb) for x in ev),
          "three cart.item_added events (A, A, B): %d" % len(ev))
    check(ev[1]["data"]["line_quantity"] == 5 and ev[0]["source"] == "/gravity/cart-service",
          "event data: %s" % ev[1])

    # 50 concurrent adds of one variant to one cart: one line, nothing lost.
    st, pc, _ = req(C, "POST", "/api/v1/carts", {})
    pt = {"X-Cart-Token": pc["cart_token"]}
    results = []
    barrier = threading.Barrier(50)

    def add_one():
        barrier.wait()
        results.append(req(C, "POST", "/api/v1/carts/%s/items" % pc["id"], {"variant_id": va, "quantity": 1},
                           headers=pt)[0])

    threads = [threading.Thread(target=add_one) for _ in range(50)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    st, c, _ = req(C, "GET", "/api/v1/carts/" + pc["id"], headers=pt)
    check(results.count(201) == 50 and len(c["items"]) == 1 and c["items"][0]["quantity"] == 50
          and c["version"] == 51 and len(db.events("cart.item_added", pc["id"])) == 50,
          "50 parallel adds: %s, line %s" % (sorted(set(results)), c["items"]))

    # ---- 2. totals reprice ----
    st, t, _ = req(C, "GET", "/api/v1/carts/%s/totals" % anon, headers=tokh)
    check(st == 200 and t["subtotal"] == {"amount": 50000, "currency": "usd"} and not t["price_changed"],
          "totals before a price change: %s" % t)
    st, _, _ = req(prod.base, "PATCH", "/api/v1/products/%s/variants/%s" % (pid, va),
                   {"price": {"amount": 1200, "currency": "usd"}}, admin)
    check(st == 200, "price change at 17: %s" % st)
    st, t, _ = req(C, "GET", "/api/v1/carts/%s/totals" % anon, headers=tokh)
    line = t["lines"][0]
    check(st == 200 and t["price_changed"] and line["price_changed"]
          and line["old_unit_price"] == {"amount": 1000, "currency": "usd"}
          and line["new_unit_price"] == {"amount": 1200, "currency": "usd"}
          and t["subtotal"] == {"amount": 60000, "currency": "usd"}, "price_changed with old and new: %s" % t)
    st, _, _ = req(C, "GET", "/api/v1/carts/%s/totals" % anon)
    check(st == 404, "totals without the cart token: %s" % st)

    # ---- 3. coupon preview ----
    st, _, _ = req(C, "PUT", "/api/v1/carts/%s/coupon" % anon, {"code": "SAVE10"}, headers=tokh)
    check(st == 200, "PUT coupon")
    if disc:
        st, cp, _ = req(disc.base, "POST", "/api/v1/coupons",
                        {"code": "SAVE10", "kind": "percent", "percent_off_bp": 1000}, admin)
        check(st == 201, "coupon at 22: %s %s" % (st, cp))
        st, t, _ = req(C, "GET", "/api/v1/carts/%s/totals" % anon, headers=tokh)
        check(st == 200 and t["coupon"]["previewed"] and t["coupon"]["valid"]
              and t["discount"] == {"amount": 6000, "currency": "usd"}
              and t["total"] == {"amount": 54000, "currency": "usd"}, "10%% preview: %s" % t)
        st, _, _ = req(C, "PUT", "/api/v1/carts/%s/coupon" % anon, {"code": "NOPE"}, headers=tokh)
        st, t, _ = req(C, "GET", "/api/v1/carts/%s/totals" % anon, headers=tokh)
        check(st == 200 and t["coupon"]["previewed"] and t["coupon"]["valid"] is False
              and t["coupon"]["reason"] == "coupon_not_found" and t["discount"]["amount"] == 0,
              "unknown coupon previewed as invalid: %s" % t)
        disc.stop()
    st, t, _ = req(C, "GET", "/api/v1/carts/%s/totals" % anon, headers=tokh)
    check(st == 200 and t["coupon"]["previewed"] is False
          and t["coupon"]["reason"] == "discount_service_unavailable"
          and t["total"] == {"amount": 60000, "currency": "usd"}, "22 down: not previewed: %s" % t)
    st, _, _ = req(C, "DELETE", "/api/v1/carts/%s/coupon" % anon, headers=tokh)
    check(st == 200, "DELETE coupon")

    # ---- 4. merge ----
    st, al, _ = req(C, "POST", "/api/v1/carts", {}, alice)
    check(st == 201 and al["user_id"] == alice_sub, "alice's cart")
    alc = al["id"]
    st, c, _ = req(C, "POST", "/api/v1/carts/%s/items" % alc, {"variant_id": va, "quantity": 60}, alice)
    check(st == 201, "alice adds A x60")
    st, c, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": vb, "quantity": 2}, headers=tokh)
    check(st == 201, "anon adds B x2")
    st, c, _ = req(C, "GET", "/api/v1/carts/%s" % alc, None, bob)
    check(st == 404, "bob cannot see alice's cart: %s" % st)
    st, m, _ = req(C, "POST", "/api/v1/carts/%s/merge" % anon, None, alice, tokh)
    q = {i["variant_id"]: i["quantity"] for i in (m or {}).get("items", [])}
    check(st == 200 and m["id"] == alc and q == {va: 99, vb: 2}, "merge adds, capped at 99: %s %s" % (st, m))
    st, c, _ = req(C, "GET", "/api/v1/carts/%s" % anon, headers=tokh)
    check(st == 200 and c["status"] == "merged", "the anonymous cart is merged: %s" % c)
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/items" % anon, {"variant_id": va, "quantity": 1}, headers=tokh)
    check(st == 409 and e["type"].endswith(":cart_merged"), "a merged cart is read-only: %s" % st)
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/merge" % anon, None, alice, tokh)
    check(st == 409, "merging twice: %s" % st)

    # ---- 5. checkout ----
    ck = {"shipping_address": {"line1": "1 Main St", "city": "Springfield", "country": "US"},
          "payment_method_id": "pm_visa"}
    order.fail_next = 1
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/checkout" % alc, ck, alice, {"Idempotency-Key": "co-0"})
    check(st == 503 and order.count() == 1, "16 down: 503: %s %s" % (st, e))
    st, c, _ = req(C, "GET", "/api/v1/carts/%s" % alc, None, alice)
    check(c["status"] == "active" and c["order_id"] is None, "the cart is unchanged after a 503")
    n0 = order.count()
    st, r1, h1 = req(C, "POST", "/api/v1/carts/%s/checkout" % alc, ck, alice, {"Idempotency-Key": "co-1"})
    check(st == 201 and r1["status"] == "checked_out" and r1["order_id"] == r1["order"]["id"],
          "checkout: %s %s" % (st, r1))
    check(order.count() == n0 + 1, "one call to 16")
    hdrs, body = order.requests[-1]
    key = hdrs.get("idempotency-key", "")
    check(key == order.requests[0][0].get("idempotency-key") and key.startswith("cart:%s:checkout:v" % alc),
          "the key is derived from the cart and the same after the 503: %s" % key)
    check(hdrs.get("authorization") == "Bearer " + alice, "16 got alice's token")
    check(sorted((i["variant_id"], i["quantity"]) for i in body["items"]) == sorted([(va, 99), (vb, 2)])
          and body["currency"] == "usd" and body["payment_method_id"] == "pm_visa"
          and body["shipping_address"]["city"] == "Springfield" and "unit_price" not in json.dumps(body),
          "the order body: %s" % body)
    st, r2, h2 = req(C, "POST", "/api/v1/carts/%s/checkout" % alc, ck, alice, {"Idempotency-Key": "co-1"})
    check(st == 201 and r2["order_id"] == r1["order_id"] and h2.get("Idempotent-Replayed") == "true",
          "the same key replays the same order: %s %s" % (st, h2))
    check(order.count() == n0 + 1, "no second call to 16")
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/checkout" % alc, ck, alice, {"Idempotency-Key": "co-2"})
    check(st == 409 and e["type"].endswith(":cart_checked_out"), "a new key after checkout: %s" % st)
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/items" % alc, {"variant_id": va, "quantity": 1}, alice)
    check(st == 409 and e["type"].endswith(":cart_checked_out"), "read-only after checkout: %s" % st)
    st, e, _ = req(C, "PUT", "/api/v1/carts/%s/coupon" % alc, {"code": "X"}, alice)
    check(st == 409, "coupon after checkout: %s" % st)
    ev = db.events("cart.checked_out", alc)
    check(len(ev) == 1 and ev[0]["data"]["order_id"] == r1["order_id"], "one cart.checked_out: %s" % ev)
    st, c, _ = req(C, "GET", "/api/v1/carts/%s" % alc, None, alice)
    check(st == 200 and c["status"] == "checked_out", "GET still works after checkout")
    st, e, _ = req(C, "GET", "/api/v1/carts/me", None, alice)
    check(st == 404, "alice has no open cart after checkout: %s" % st)

    # An archived variant stops checkout before 16; a refusal by 16 is 422 order_rejected.
    st, bc, _ = req(C, "POST", "/api/v1/carts", {}, bob)
    st, c, _ = req(C, "POST", "/api/v1/carts/%s/items" % bc["id"], {"variant_id": vb, "quantity": 1}, bob)
    check(st == 201, "bob adds B")
    order.reject_next = 1
    n0 = order.count()
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/checkout" % bc["id"], ck, bob, {"Idempotency-Key": "b-1"})
    check(st == 422 and e["type"].endswith(":order_rejected") and "out_of_stock" in e.get("detail", ""),
          "16's 422 comes back as order_rejected: %s %s" % (st, e))
    st, _, _ = req(prod.base, "DELETE", "/api/v1/products/%s/variants/%s" % (pid, vb), None, admin)
    check(st == 204, "archive B")
    n0 = order.count()
    st, e, _ = req(C, "POST", "/api/v1/carts/%s/checkout" % bc["id"], ck, bob, {"Idempotency-Key": "b-2"})
    check(st == 422 and e["type"].endswith(":variant_unavailable") and order.count() == n0,
          "archived variant: 422 and no call to 16: %s %s" % (st, e))
    st, t, _ = req(C, "GET", "/api/v1/carts/%s/totals" % bc["id"], None, bob)
    check(st == 200 and t["has_unavailable"] and t["lines"][0]["available"] is False
          and t["subtotal"]["amount"] == 0, "totals flag the archived line: %s" % t)

    # ---- 6. the sweeper ----
    url2 = cart_db("sweep")
    cart2 = gt.Service(build, tmp, "cart-sweep", binary="19-cart-service", env=dict(
        base_env, DATABASE_URL=url2, SERVICE_TOKEN=service, PRODUCT_URL=prod.base,
        DISCOUNT_URL="off", ORDER_URL=order.url, CART_ABANDON_AFTER_S="1",
        CART_SWEEP_INTERVAL_MS="100")).start()
    svcs.append(cart2)
    db2 = gt.Db.from_url(url2)
    st, full, _ = req(cart2.base, "POST", "/api/v1/carts", {})
    ft = {"X-Cart-Token": full["cart_token"]}
    st, _, _ = req(cart2.base, "POST", "/api/v1/carts/%s/items" % full["id"], {"variant_id": va, "quantity": 1},
                   headers=ft)
    check(st == 201, "sweep cart with a line")
    st, empty, _ = req(cart2.base, "POST", "/api/v1/carts", {})
    et = {"X-Cart-Token": empty["cart_token"]}
    wait_for("the idle cart to be abandoned",
             lambda: req(cart2.base, "GET", "/api/v1/carts/" + full["id"], headers=ft)[1]["status"] == "abandoned")
    # Later sweeps must not publish it again: a second cart filled after the first was abandoned
    # is abandoned by a later sweep, which has looked at the first cart again by then.
    st, later, _ = req(cart2.base, "POST", "/api/v1/carts", {})
    lt = {"X-Cart-Token": later["cart_token"]}
    st, _, _ = req(cart2.base, "POST", "/api/v1/carts/%s/items" % later["id"], {"variant_id": va, "quantity": 3},
                   headers=lt)
    check(st == 201, "a second sweep cart")
    wait_for("the second cart to be abandoned",
             lambda: req(cart2.base, "GET", "/api/v1/carts/" + later["id"], headers=lt)[1]["status"] == "abandoned")
    ev = db2.events("cart.abandoned", full["id"])
    check(len(ev) == 1 and ev[0]["data"]["status"] == "abandoned" and ev[0]["data"]["item_count"] == 1,
          "exactly one cart.abandoned for the first cart: %s" % ev)
    check(len(db2.events("cart.abandoned")) == 2, "two cart.abandoned in all")
    st, c, _ = req(cart2.base, "GET", "/api/v1/carts/" + empty["id"], headers=et)
    check(c["status"] == "active", "an idle empty cart stays active: %s" % c["status"])
    st, c, _ = req(cart2.base, "POST", "/api/v1/carts/%s/items" % full["id"], {"variant_id": va, "quantity": 1},
                   headers=ft)
    check(st == 201 and c["status"] == "active" and c["items"][0]["quantity"] == 2,
          "a write makes an abandoned cart active again: %s" % c)

    for s in (cart, cart2):
        check("Bearer " not in s.log_text() and alice not in s.log_text() and service not in s.log_text(),
              "no token in %s's log" % s.name)
        for tok_ in (ac["cart_token"], full["cart_token"]):
            check(tok_ not in s.log_text(), "no cart token in the log")


if __name__ == "__main__":
    main()
