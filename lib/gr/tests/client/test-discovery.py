#!/usr/bin/python3
"""gr/client.h end to end with a real registry (SERVICES §02, decision 6).

  test-discovery.py BUILD_DIR

Starts 02-service-discovery, registers a dead product-service instance in it, starts
17-product-service registering itself (DISCOVERY_URL) and 19-cart-service with DISCOVERY_URL and
no PRODUCT_URL, then checks:
  1. the cart prices lines at 17 found through 02 (no URL given), call after call, although one
     of the two listed instances refuses connections; 17 sees the caller's X-Request-Id;
  2. cart's /metrics counts the calls: upstream_requests_total{peer="product-service",
     outcome="2xx"} and no call ended unavailable;
  3. with PRODUCT_URL set the registry is bypassed (a cart pointed at a dead URL answers 503
     product_service_unavailable although 02 lists a live 17).
Every wait is for a condition with a deadline; service logs must hold no sanitizer report.
Only the standard library is used.
"""
import os
import re
import shutil
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..",
                                "tests", "lib"))
import gravity_test as gt  # noqa: E402
from gravity_test import fail, wait_for  # noqa: E402

passed = 0


def check(cond, msg):
    global passed
    if not cond:
        fail(msg)
    passed += 1


def req(base, method, path, body=None, token=None, headers=None, raw=False):
    """(status, body) of a request to base + path (gt.request)."""
    st, _, b = gt.request(base + path, method, body, token, headers, raw=raw)
    return st, b


def metric(text, name, labels):
    pat = re.compile(r'^%s\{%s\} (\S+)$' % (re.escape(name), re.escape(labels)), re.M)
    m = pat.search(text)
    return float(m.group(1)) if m else 0.0


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
    for b in ("02-service-discovery", "17-product-service", "19-cart-service", "gr-jwt"):
        if not os.access(os.path.join(build, "bin", b), os.X_OK):
            print("skip: no %s binary" % b)
            return
    tmp = tempfile.mkdtemp(prefix="client-test-")
    os.chmod(tmp, 0o755)
    svcs = []
    try:
        run(build, tmp, svcs)
    finally:
        for s in reversed(svcs):
            s.stop()  # fails on a status other than 0 or a sanitizer report in the log
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, 0 failed" % passed)


def run(build, tmp, svcs):
    tk = gt.Minter(build, tmp, kid="client-test")
    admin = tk.token(str(uuid.uuid4()), ["*"], ["super_admin"], ttl=3600)
    env = dict(os.environ, JWKS_URL="file://" + tk.jwks, LOG_LEVEL="info", CURSOR_SECRET="test",
               EVENT_BUS_URL="http://127.0.0.1:1", JWT_ISSUER="gravity", JWT_AUDIENCE="gravity")
    for k in ("SERVICE_TOKEN", "DATABASE_URL", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET",
              "DISCOVERY_URL", "PRODUCT_URL", "DISCOUNT_URL", "ORDER_URL", "REDIS_URL"):
        env.pop(k, None)
    reg = gt.Service(build, tmp, "registry", binary="02-service-discovery", env=env).start()
    svcs.append(reg)
    R = reg.base + "/api/v1/registry"

    # A product-service instance that refuses connections, listed as passing.
    st, b = req(R, "POST", "/instances", {"service": "product-service", "address": "127.0.0.1",
                                          "port": gt.free_port(),
                                          "check": {"kind": "ttl", "ttl_s": 300, "deregister_after_s": 600}},
                admin)
    check(st == 201, "register a dead instance: %s %s" % (st, b))

    prod_tok = tk.token("product-service", ["registry:write"], ["service"], ttl=3600)
    prod = gt.Service(build, tmp, "product", binary="17-product-service",
                      env=dict(env, DISCOVERY_URL=reg.base, SERVICE_TOKEN=prod_tok)).start()
    svcs.append(prod)

    def listed():
        st, b = req(R, "GET", "/services/product-service/instances")
        return st == 200 and sorted(i["port"] for i in b["data"]) if st == 200 else None

    ports = wait_for("17 registered", lambda: (lambda p: p if p and prod.port in p and len(p) == 2 else None)(listed()))
    check(len(ports) == 2, "02 lists the dead instance and 17: %s" % ports)

    cart_tok = tk.token("cart-service", ["products:read", "registry:write"], ["service"], ttl=3600)
    cart = gt.Service(build, tmp, "cart", binary="19-cart-service",
                      env=dict(env, DISCOVERY_URL=reg.base, SERVICE_TOKEN=cart_tok,
                               DISCOUNT_URL="off", ORDER_URL="http://127.0.0.1:1",
                               DATABASE_URL="sqlite://" + os.path.join(tmp, "cart.db"))).start()
    svcs.append(cart)

    u = uuid.uuid4().hex[:8]
    st, p = req(prod.base, "POST", "/api/v1/products", {
        "title": "Shoe", "slug": "shoe-" + u, "status": "active",
        "variants": [{"sku": "SA-" + u, "price": {"amount": 1000, "currency": "usd"}}]}, admin)
    check(st == 201, "create product: %s %s" % (st, p))
    va = p["variants"][0]["id"]

    # 1. twenty adds, each pricing at 17 through the registry (one listed instance is dead).
    st, c = req(cart.base, "POST", "/api/v1/carts", {})
    check(st == 201, "anonymous cart")
    th = {"X-Cart-Token": c["cart_token"]}
    codes = []
    for _ in range(20):
        codes.append(req(cart.base, "POST", "/api/v1/carts/%s/items" % c["id"], {"variant_id": va, "quantity": 1},
                         headers=th)[0])
    check(codes == [201] * 20, "every add priced through discovery: %s" % codes)
    st, c = req(cart.base, "GET", "/api/v1/carts/" + c["id"], headers=th)
    check(st == 200 and c["items"][0]["quantity"] == 20 and
          c["items"][0]["unit_price"] == {"amount": 1000, "currency": "usd"}, "the line: %s" % c)

    # The calls reached 17 (access log) after a lookup at 02, with the caller's request id.
    rid = str(uuid.uuid4())
    st, _ = req(cart.base, "POST", "/api/v1/carts/%s/items" % c["id"], {"variant_id": va, "quantity": 1},
                headers=dict(th, **{"X-Request-Id": rid}))
    check(st == 201, "one more add")
    plog = prod.log_text()
    check(plog.count("/api/v1/products/variants") >= 21 and rid in plog,
          "17 served the prices, the request id passed on")
    check("/api/v1/registry/services/product-service/instances" in reg.log_text(), "cart asked 02")

    # 2. metrics
    st, text = req(cart.base, "GET", "/metrics", raw=True)
    check(st == 200, "cart /metrics")
    ok = metric(text, "upstream_requests_total", 'peer="product-service",outcome="2xx"')
    bad = metric(text, "upstream_requests_total", 'peer="product-service",outcome="unavailable"')
    check(ok >= 21 and bad == 0, "upstream_requests_total 2xx=%s unavailable=%s" % (ok, bad))

    # 3. PRODUCT_URL wins over the registry.
    cart2 = gt.Service(build, tmp, "cart2", binary="19-cart-service",
                       env=dict(env, DISCOVERY_URL=reg.base, SERVICE_TOKEN=cart_tok,
                                DISCOUNT_URL="off", ORDER_URL="http://127.0.0.1:1",
                                PRODUCT_URL="http://127.0.0.1:%d" % gt.free_port(),
                                DATABASE_URL="sqlite://" + os.path.join(tmp, "cart2.db"))).start()
    svcs.append(cart2)
    st, c2 = req(cart2.base, "POST", "/api/v1/carts", {})
    st, e = req(cart2.base, "POST", "/api/v1/carts/%s/items" % c2["id"], {"variant_id": va, "quantity": 1},
                headers={"X-Cart-Token": c2["cart_token"]})
    check(st == 503 and e["type"].endswith(":product_service_unavailable"),
          "PRODUCT_URL overrides the registry: %s %s" % (st, e))


if __name__ == "__main__":
    main()
