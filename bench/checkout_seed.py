#!/usr/bin/python3
"""checkout_seed.py PRODUCT_URL INVENTORY_URL TAX_URL ADMIN_TOKEN N - seeds the checkout bench:
N active products of one variant each at 17, a warehouse at 18 with 1,000,000 units of every
variant (the most one adjustment may add; the bench never runs out), and an 8 % US tax rate at
21. Prints the variant ids, comma separated, on stdout (bench/lua/checkout.lua reads them from
BENCH_VARIANTS)."""
import http.client
import json
import sys
import urllib.parse
import uuid

prod, inv, tax, token, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
run = uuid.uuid4().hex[:8]
conns = {}


def call(base, method, path, body):
    u = urllib.parse.urlparse(base)
    c = conns.get(base)
    if c is None:
        c = conns[base] = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, path, json.dumps(body), {"Content-Type": "application/json",
                                               "Authorization": "Bearer " + token,
                                               "Idempotency-Key": uuid.uuid4().hex})
    r = c.getresponse()
    data = r.read()
    if r.status != 201:
        sys.exit("seed: %s %s%s -> %d %r" % (method, base, path, r.status, data[:300]))
    return json.loads(data)


ids = []
w = call(inv, "POST", "/api/v1/warehouses", {"code": "bench-" + run})
for i in range(n):
    p = call(prod, "POST", "/api/v1/products", {
        "title": "Bench %d" % i, "slug": "bench-%s-%d" % (run, i), "status": "active",
        "variants": [{"sku": "BENCH-%s-%d" % (run, i),
                      "price": {"amount": 500 + i, "currency": "usd"}}]})
    v = p["variants"][0]
    call(inv, "POST", "/api/v1/inventory/adjustments",
         {"sku": v["sku"], "warehouse_id": w["id"], "delta": 1000000})
    ids.append(v["id"])
call(tax, "POST", "/api/v1/tax-rates", {"country": "US", "rate_bp": 800})
print(",".join(ids))
