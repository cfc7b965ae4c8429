#!/usr/bin/python3
"""seed_products.py BASE_URL TOKEN N OUT_LUA - creates N active products (2 variants each) with
8 client threads, prints progress, and writes a wrk Lua script that GETs random ones by id."""
import http.client
import json
import sys
import threading
import time
import urllib.parse

base, token, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(base)
ids, lock, errors = [], threading.Lock(), []
counter = iter(range(n))
brands = ["acme", "globex", "initech", "umbrella", "hooli"]


def worker():
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    while True:
        with lock:
            i = next(counter, None)
        if i is None:
            return
        body = {"title": "Product %d" % i, "slug": "seed-%d" % i, "status": "active",
                "brand": brands[i % len(brands)], "attributes": {"color": "red"},
                "variants": [{"sku": "SEED-%d-A" % i, "price": {"amount": 100 + i % 5000, "currency": "usd"}},
                             {"sku": "SEED-%d-B" % i, "price": {"amount": 200 + i % 7000, "currency": "usd"}}]}
        conn.request("POST", "/api/v1/products", json.dumps(body),
                     {"Content-Type": "application/json", "Authorization": "Bearer " + token})
        r = conn.getresponse()
        data = r.read()
        with lock:
            if r.status == 201:
                ids.append(json.loads(data)["id"])
                if len(ids) % 2000 == 0:
                    print("seed: %d/%d products" % (len(ids), n), file=sys.stderr, flush=True)
            else:
                errors.append((r.status, data[:200]))


t0 = time.time()
ts = [threading.Thread(target=worker) for _ in range(8)]
for t in ts:
    t.start()
for t in ts:
    t.join()
if errors:
    sys.exit("seed: %d errors, first: %r" % (len(errors), errors[0]))
print("seed: %d products in %.1fs" % (len(ids), time.time() - t0), file=sys.stderr)
with open(out, "w") as f:
    f.write("local ids = {\n")
    for i in ids:
        f.write('"%s",\n' % i)
    f.write("}\nmath.randomseed(42)\n")
    f.write('request = function()\n  return wrk.format("GET", "/api/v1/products/" .. ids[math.random(#ids)])\nend\n')
