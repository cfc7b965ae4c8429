#!/usr/bin/python3
"""Hot reload through gr/confwatch.h (SERVICES §04: whitelisted keys hot-reload without restart).

  test-hot-reload.py BUILD_DIR

Needs gr_main to start the watcher (gr_confwatch_start in lib/gr/src/service.c). Starts
04-config-service and 17-product-service with CONFIG_URL pointing at it, LOG_LEVEL=warn and a
static SERVICE_TOKEN and GRAVITY_ENV=prod. 17's access log ("request" lines, logged at info)
is the observable: absent at warn; product-service/default LOG_LEVEL=info turns it on;
product-service/prod LOG_LEVEL=error (the more specific layer) turns it off; another service's
key changes nothing; deleting the prod value falls back to info. Both services must stop at
once on SIGTERM (the long-poll in flight is aborted).
Only the standard library is used.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEADLINE = 10.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    fail("timed out waiting for " + what)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="gr-hot-reload-")
    tool = os.path.join(build, "bin", "gr-jwt")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)
    tok = subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--roles",
                          "service", "--perms", "configs:read,configs:write,configs:delete",
                          "--ttl", "3600"], check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    procs = {}

    def start(name, extra):
        pf = os.path.join(tmp, name + ".port")
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CONFIG_URL",
                                                                 "GRAVITY_ENV", "SERVICE_TOKEN",
                                                                 "REDIS_URL")}
        env.update({"HOST": "127.0.0.1", "PORT": "0", "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(tmp, name), "JWKS_URL": "file://" + jwks,
                    "CURSOR_SECRET": "t", "EVENT_BUS_URL": "http://127.0.0.1:9",
                    "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
        env.update(extra)
        log = open(os.path.join(tmp, name + ".log"), "ab")
        procs[name] = (subprocess.Popen([os.path.join(build, "bin", name)], env=env, stdout=log,
                                        stderr=log), log)
        return int(wait_for(name + " port", lambda: os.path.exists(pf) and open(pf).read().strip()))

    def req(port, method, path, body=None, auth=True):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        h = {"Authorization": "Bearer " + tok} if auth else {}
        if body is not None:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status

    def plog():
        return open(os.path.join(tmp, "17-product-service.log"), errors="replace").read()

    def glog():
        return open(os.path.join(tmp, "03-api-gateway.log"), errors="replace").read()

    def logged_requests():
        return sum(1 for line in plog().splitlines() if '"msg":"request"' in line)

    def applied():
        return plog().count('"msg":"config applied"')

    rc = 0
    try:
        cport = start("04-config-service", {})
        wait_for("04 ready", lambda: req(cport, "GET", "/ready", auth=False) == 200)
        pport = start("17-product-service", {"CONFIG_URL": "http://127.0.0.1:%d" % cport,
                                             "GRAVITY_ENV": "prod", "SERVICE_TOKEN": tok})
        wait_for("17 ready", lambda: req(pport, "GET", "/ready", auth=False) == 200)

        # warn: a request is not logged.
        if req(pport, "GET", "/api/v1/products", auth=False) != 200:
            fail("product list")
        time.sleep(0.05)
        if logged_requests() != 0:
            fail("a request was logged at warn")

        # product-service/default LOG_LEVEL=info: applied without restart.
        if req(cport, "PUT", "/api/v1/configs/product-service/default/LOG_LEVEL", {"value": "info"}) != 201:
            fail("PUT LOG_LEVEL")
        wait_for("LOG_LEVEL=info applied", lambda: applied() >= 1)
        if req(pport, "GET", "/api/v1/products", auth=False) != 200:
            fail("product list")
        wait_for("a request logged at info", lambda: logged_requests() >= 1)

        # product-service/prod (GRAVITY_ENV) wins over product-service/default: error.
        n = logged_requests()
        if req(cport, "PUT", "/api/v1/configs/product-service/prod/LOG_LEVEL", {"value": "error"}) != 201:
            fail("PUT prod LOG_LEVEL")
        wait_for("LOG_LEVEL=error applied", lambda: applied() >= 2)
        if req(pport, "GET", "/api/v1/products", auth=False) != 200:
            fail("product list")
        time.sleep(0.05)
        if logged_requests() != n:
            fail("a request was logged at error")

        # Another service's key does not touch it.
        if req(cport, "PUT", "/api/v1/configs/order-service/prod/LOG_LEVEL", {"value": "debug"}) != 201:
            fail("PUT other service")
        time.sleep(0.2)
        if applied() != 2:
            fail("another service's key was applied")

        # Deleting the prod value falls back to product-service/default (info).
        if req(cport, "DELETE", "/api/v1/configs/product-service/prod/LOG_LEVEL") != 204:
            fail("DELETE")
        wait_for("fallback applied", lambda: applied() >= 3)
        if req(pport, "GET", "/api/v1/products", auth=False) != 200:
            fail("product list")
        wait_for("a request logged again", lambda: logged_requests() > n)
        print("ok: LOG_LEVEL hot-reloads from config-service (layers, fallback, other services)")

        # The gateway's rate limits (GATEWAY_RATE_IP) hot-reload too: set → the 4th request in
        # a burst of a client is 429 at the edge; deleted → the environment's value (none).
        gport = start("03-api-gateway", {
            "CONFIG_URL": "http://127.0.0.1:%d" % cport, "GRAVITY_ENV": "prod",
            "SERVICE_TOKEN": tok, "GATEWAY_UPSTREAMS": "product-service=127.0.0.1:%d" % pport,
            "GATEWAY_THREADS": "1", "LOG_LEVEL": "info"})
        wait_for("03 ready", lambda: req(gport, "GET", "/ready", auth=False) == 200)

        def burst(n):
            return [req(gport, "GET", "/api/v1/products", auth=False) for _ in range(n)]

        if any(st != 200 for st in burst(10)):
            fail("the gateway limited requests before any limit was set")
        if req(cport, "PUT", "/api/v1/configs/api-gateway/default/GATEWAY_RATE_IP",
               {"value": "0.001:3"}) != 201:
            fail("PUT GATEWAY_RATE_IP")
        wait_for("GATEWAY_RATE_IP applied", lambda: "rate limit reloaded" in glog())
        got = burst(5)
        if got[:3] != [200, 200, 200] or got[3:] != [429, 429]:
            fail("GATEWAY_RATE_IP 0.001:3 from the config service: %r" % got)
        if req(cport, "PUT", "/api/v1/configs/api-gateway/default/GATEWAY_RATE_IP",
               {"value": "lots"}) not in (200, 201):
            fail("PUT a bad GATEWAY_RATE_IP")
        wait_for("the bad value ignored", lambda: "does not parse" in glog())
        if req(gport, "GET", "/api/v1/products", auth=False) != 429:
            fail("a bad value replaced the limit")
        if req(cport, "DELETE", "/api/v1/configs/api-gateway/default/GATEWAY_RATE_IP") != 204:
            fail("DELETE GATEWAY_RATE_IP")
        wait_for("the limit lifted", lambda: req(gport, "GET", "/api/v1/products", auth=False) == 200)
        if any(st != 200 for st in burst(10)):
            fail("the gateway still limits after the key was deleted")
        print("ok: the gateway's GATEWAY_RATE_IP hot-reloads (set, bad value ignored, deleted)")
    finally:
        for name in ("03-api-gateway", "17-product-service", "04-config-service"):
            if name not in procs:
                continue
            p, log = procs[name]
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            try:
                code = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                code = -1
            log.close()
            if code != 0:
                print("FAIL: %s did not drain cleanly (status %d)" % (name, code))
                rc = 1
            elif time.monotonic() - t0 > 5:
                print("FAIL: %s took %.1f s to stop (long-poll not aborted?)" % (name, time.monotonic() - t0))
                rc = 1
        for f in os.listdir(tmp):
            if f.endswith(".log"):
                text = open(os.path.join(tmp, f), errors="replace").read()
                if any(m in text for m in SANITIZER_MARKS):
                    print("FAIL: sanitizer report in %s" % f)
                    rc = 1
                if tok in text:
                    print("FAIL: the service token is in %s" % f)
                    rc = 1
    if rc == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        print("all hot-reload checks passed")
    return rc


if __name__ == "__main__":
    sys.exit(main())
