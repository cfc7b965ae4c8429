#!/usr/bin/python3
"""Checkout end to end through the gateway, with every expected event on the bus (issue 6.4).

  test-checkout.py BUILD_DIR [--pg-url URL]

Starts, on free ports of 127.0.0.1 in a temp dir, 02-service-discovery, 05-auth-service,
14-event-bus-service (the HTTP bus every service publishes to; 05's and 14's ports are picked
before the start, since 02 and 05 need both URLs), 03-api-gateway, and the commerce
services 17 product, 18 inventory, 21 invoice (tax rates), 22 discount, 15 payment
(PAYMENT_PROVIDER=test) and 16 order and 19 cart. Each database is SQLite, or with --pg-url one
new PostgreSQL database per service. Nothing is faked:

  - every service verifies user tokens against 05's JWKS (JWKS_URL over HTTP), and calls other
    services, the bus and the registry with a client-credentials token from 05: 05, 14, 02
    and 03 use the bootstrap client (AUTH_BOOTSTRAP_CLIENT_ID, as `gravity up` does); the
    admin registers one client per commerce service through the gateway (POST
    /api/v1/auth/clients, role service) and each service gets its own pair;
  - every service registers with 02 and the gateway routes to what 02 lists;
  - peers are named explicitly (PRODUCT_URL, INVENTORY_URL, TAX_URL, DISCOUNT_URL,
    PAYMENT_URL, ORDER_URL).

Steps, all through the gateway's public port (every wait polls a condition with a deadline):
  1. the bootstrap admin (SERVICES decision 11) logs in, subscribes a test consumer at 14 to
     every type, creates a product with two variants at 17, a warehouse and stock at 18, the
     US tax rate at 21 and a 10 % coupon at 22;
  2. a customer registers and logs in, browses the products without a token, creates a cart at
     19, adds both variants, applies the coupon, and sees totals with the discount; a second
     customer gets 404 for that cart (read and checkout);
  3. checkout with an Idempotency-Key and tok_visa → order CONFIRMED at 16 with grand_total =
     Σ lines − discount + tax = the amount paid at 15; the same key replays the same order;
     reservation and redemption confirmed; stock reserved;
  4. cancel → CANCELLED; the payment refunded exactly once at 15, the stock available again at
     18, the coupon's redemption released (its slot back) at 22, the saga done;
  5. the test consumer sees exactly these events naming the checkout's entities (user,
     product, skus, cart, order, reservation, payment, redemption), each once: user.created,
     auth.login.succeeded, product.created, inventory.stock_changed (per sku),
     cart.checked_out, order.created|confirmed|cancelled, inventory.reserved|released,
     payment.initiated|completed|refunded, coupon.redeemed|released, plus cart.item_added
     once per added line — so no duplicate and nothing that must not happen (a second refund,
     inventory.committed, payment.failed, ...); and a registry.instance.registered for every
     service, no low-stock, exhausted or dead-letter event;
  6. every service drains on SIGTERM with status 0, no sanitizer report and no token or client
     secret in any log.
Prints a short timeline. Standard library only.
"""

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

DEADLINE = 30.0
START_DEADLINE = 60.0
QUIET_S = 2.5  # no new event for this long: the bus has settled
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
ADMIN_EMAIL, ADMIN_PASSWORD = "root@example.com", "root-password-e2e-1"
COMMERCE = ["17-product-service", "18-inventory-service", "21-invoice-service",
            "22-discount-service", "15-payment-service", "16-order-service", "19-cart-service"]
PLATFORM = ["05-auth-service", "14-event-bus-service", "02-service-discovery", "03-api-gateway"]
T0 = time.monotonic()
TIMELINE = []


def fail(msg):
    print("FAIL: " + msg, flush=True)
    raise SystemExit(1)


def expect(cond, msg, detail=None):
    if not cond:
        fail(msg + ("" if detail is None else ": " + json.dumps(detail, default=str)[:2000]))


def mark(what):
    TIMELINE.append((time.monotonic() - T0, what))
    print("  %7.3f s  %s" % (time.monotonic() - T0, what), flush=True)


def wait_for(what, cond, deadline=DEADLINE, step=0.05):
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            fail("timed out (%.0f s) waiting for %s" % (deadline, what))
        time.sleep(step)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(base, method, path, body=None, token=None, key=None, headers=None, timeout=30):
    """One request: (status, parsed JSON or None). Status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        r.add_header("Content-Type", "application/json")
    if token:
        r.add_header("Authorization", "Bearer " + token)
    if key:
        r.add_header("Idempotency-Key", key)
    for k, v in (headers or {}).items():
        r.add_header(k, v)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


class Svc:
    def __init__(self, build, tmp, name, env, port=0):
        self.name = name
        self.bin = os.path.join(build, "bin", name)
        self.dir = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.env = env
        self.want_port = port
        self.port = None
        self.proc = None
        self.logpath = os.path.join(self.dir, "log")

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        pf = os.path.join(self.dir, "port")
        env = dict(self.env, PORT=str(self.want_port), HOST="127.0.0.1", GR_PORT_FILE=pf,
                   DATA_DIR=os.path.join(self.dir, "data"))
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.dir)

    def wait_ready(self):
        pf = os.path.join(self.dir, "port")

        def port():
            if self.proc.poll() is not None:
                fail("%s exited with %s:\n%s" % (self.name, self.proc.returncode, self.tail()))
            try:
                t = open(pf).read().strip()
            except OSError:
                return None
            return int(t) if t.isdigit() else None
        self.port = wait_for(self.name + " port file", port, START_DEADLINE)
        wait_for(self.name + " /ready", lambda: http(self.url(), "GET", "/ready")[0] == 200,
                 START_DEADLINE)

    def tail(self, n=30):
        try:
            with open(self.logpath, errors="replace") as f:
                return "\n    ".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM; returns a problem string or None."""
        if self.proc is None:
            return None
        why = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=30)
                if rc != 0:
                    why = "%s exited with status %d" % (self.name, rc)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                why = "%s did not stop on SIGTERM within 30 s" % self.name
        else:
            why = "%s had exited with status %d" % (self.name, self.proc.returncode)
        self.proc = None
        self.log.close()
        return why

    def log_text(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()


def jwt_claims(token):
    p = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def pg_database(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, stdout=subprocess.DEVNULL)
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pg_drop(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c",
                    'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Bus:
    """The test consumer: a pull subscription at 14 to every type, read through the gateway."""

    def __init__(self, gw, admin):
        self.gw, self.admin = gw, admin
        st, s = http(gw, "POST", "/api/v1/event-subscriptions",
                     {"name": "e2e-checkout-" + uuid.uuid4().hex[:8], "type_filters": ["*"],
                      "start": "all", "ack_wait_s": 30, "max_deliver": 100}, token=admin)
        expect(st == 201, "subscribe the test consumer at 14 (through the gateway)", [st, s])
        self.sid = s["id"]
        self.events = {}  # event id -> (arrival s, seq, event)
        self.lock = threading.Lock()
        self.error = None

    def pull(self, wait_ms=500):
        st, b = http(self.gw, "POST", "/api/v1/event-subscriptions/%s/pull" % self.sid,
                     {"max": 500, "wait_ms": wait_ms}, token=self.admin)
        if st != 200:
            return 0
        seqs = []
        with self.lock:
            for d in b["data"]:
                ev = d["event"]
                seqs.append(d["seq"])
                if ev["id"] not in self.events:
                    self.events[ev["id"]] = (time.monotonic() - T0, d["seq"], ev)
        if seqs:
            st, a = http(self.gw, "POST", "/api/v1/event-subscriptions/%s/ack" % self.sid,
                         {"seqs": seqs}, token=self.admin)
            if st != 200:
                self.error = "ack of %s: %s %s" % (seqs, st, a)
        return len(seqs)

    def of(self, type_, subject=None):
        with self.lock:
            evs = list(self.events.values())
        return sorted((v for v in evs
                       if v[2].get("type") == type_ and
                       (subject is None or v[2].get("subject") == subject)),
                      key=lambda v: v[1])

    def count(self):
        with self.lock:
            return len(self.events)

    def start(self):
        """Pulls in a thread until stop(), so arrival times mean something."""
        self.done = threading.Event()

        def loop():
            while not self.done.is_set():
                self.pull(300)
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join(10)

    def settled(self, what, cond, deadline=DEADLINE):
        def step():
            expect(self.error is None, "the test consumer: " + str(self.error))
            return cond()
        return wait_for(what, step, deadline)


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__)
        return 2
    build = os.path.abspath(args[0])
    pg = args[args.index("--pg-url") + 1] if "--pg-url" in args else None
    missing = [b for b in PLATFORM + COMMERCE
               if not os.access(os.path.join(build, "bin", b), os.X_OK)]
    if missing:
        fail("missing binaries in %s/bin: %s (build them first)" % (build, ", ".join(missing)))
    tmp = tempfile.mkdtemp(prefix="e2e-checkout-")
    os.chmod(tmp, 0o755)
    dbs, svcs, secrets_seen = [], {}, []
    engine = "postgres" if pg else "sqlite"
    print("checkout end to end through the gateway (%s), in %s" % (engine, tmp), flush=True)
    ok = False
    try:
        run(build, tmp, pg, dbs, svcs, secrets_seen)
        problems = []
        took = []
        # Clients of the bus first and 14 after them: a bus with consumers still long-polling
        # never sees a quiet moment and drains only at DRAIN_TIMEOUT. 02 last (deregistrations).
        order = [n for n in reversed(list(svcs)) if n not in PLATFORM]
        order += [n for n in ("03-api-gateway", "05-auth-service", "14-event-bus-service",
                              "02-service-discovery") if n in svcs]
        for name in order:
            t = time.monotonic()
            why = svcs[name].stop()
            took.append("%s %.1f s" % (name[:2], time.monotonic() - t))
            if why:
                problems.append(why)
        print("  drain times: " + ", ".join(took), flush=True)
        for s in svcs.values():
            text = s.log_text()
            for m in SANITIZER_MARKS:
                if m in text:
                    problems.append("%s log holds %r" % (s.name, m))
            for sec in secrets_seen:
                if sec in text:
                    problems.append("%s logged a token or client secret" % s.name)
                    break
        if problems:
            fail("; ".join(problems))
        mark("every service drained on SIGTERM with status 0; no sanitizer report, no token "
             "or secret in any log")
        ok = True
    finally:
        for s in svcs.values():
            if not ok and s.proc and s.proc.poll() is not None:
                print("%s had exited with %s; its log ends:\n    %s" % (
                    s.name, s.proc.returncode, s.tail()))
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        for db in dbs:
            pg_drop(pg, db)
        if os.environ.get("KEEP_TMP") or not ok:
            print("logs kept in " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("checkout end to end (%s): ok in %.1f s" % (engine, time.monotonic() - T0))
    return 0


def run(build, tmp, pg, dbs, svcs, secrets_seen):
    p05, p14 = free_port(), free_port()
    auth_url = "http://127.0.0.1:%d" % p05
    bus_url = "http://127.0.0.1:%d" % p14
    platform_secret = secrets.token_urlsafe(36)
    secrets_seen.append(platform_secret)
    base = {k: v for k, v in os.environ.items()
            if k not in ("SERVICE_TOKEN", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET",
                         "DATABASE_URL", "DISCOVERY_URL", "EVENT_BUS", "EVENT_BUS_URL",
                         "NATS_URL", "REDIS_URL", "JWKS_URL", "AUTH_URL", "JWT_ISSUER",
                         "JWT_AUDIENCE", "GATEWAY_UPSTREAMS", "CONFIG_URL")
            and not k.startswith(("AUTH_BOOTSTRAP_", "PAYMENT_", "ORDER_", "CART_"))}
    base.update({"JWKS_URL": auth_url + "/api/v1/auth/jwks", "AUTH_URL": auth_url,
                 "EVENT_BUS": "http", "EVENT_BUS_URL": bus_url, "CURSOR_SECRET": "e2e-checkout",
                 "LOG_LEVEL": "info", "LOG_FORMAT": "json", "DISCOVERY_TTL": "10"})

    def env_for(name, extra):
        e = dict(base)
        if pg:
            db = "e2e_co_%s_%s" % (name[:2], uuid.uuid4().hex[:10])
            e["DATABASE_URL"] = pg_database(pg, db)
            dbs.append(db)
        else:
            e["DATABASE_URL"] = "sqlite://" + os.path.join(tmp, name + ".db")
        e.update(extra)
        return e

    platform_client = {"SERVICE_CLIENT_ID": "e2e-platform",
                       "SERVICE_CLIENT_SECRET": platform_secret}

    # ---- the platform: 02 first (everybody registers there), then 05, 14 and 03 ----
    svcs["02-service-discovery"] = reg = Svc(build, tmp, "02-service-discovery", env_for(
        "02-service-discovery", platform_client))
    reg.start()
    reg.wait_ready()
    base["DISCOVERY_URL"] = reg.url()
    svcs["05-auth-service"] = auth = Svc(build, tmp, "05-auth-service", env_for(
        "05-auth-service", dict(platform_client, AUTH_BOOTSTRAP_ADMIN_EMAIL=ADMIN_EMAIL,
                                AUTH_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
                                AUTH_KEY_SECRET="e2e-checkout-key-secret-of-32-bytes-or-more",
                                AUTH_BOOTSTRAP_CLIENT_ID="e2e-platform",
                                AUTH_BOOTSTRAP_CLIENT_SECRET=platform_secret)), port=p05)
    auth.start()
    auth.wait_ready()
    svcs["14-event-bus-service"] = bus = Svc(build, tmp, "14-event-bus-service", env_for(
        "14-event-bus-service", platform_client), port=p14)
    bus.start()
    bus.wait_ready()
    svcs["03-api-gateway"] = gwsvc = Svc(build, tmp, "03-api-gateway", env_for(
        "03-api-gateway", dict(platform_client, GATEWAY_THREADS="2", GATEWAY_SYNC_MS="200")))
    gwsvc.start()
    gwsvc.wait_ready()
    gw = gwsvc.url()
    mark("platform up: 05 :%d, 14 :%d, 02 :%d, gateway :%d" % (auth.port, bus.port, reg.port,
                                                               gwsvc.port))

    # ---- the admin through the gateway ----
    def login(email, password):
        return http(gw, "POST", "/api/v1/auth/login", {"email": email, "password": password})
    # (the gateway caps logins at 5 a minute per IP: wait for the route on the JWKS, not there)
    wait_for("05 routed by the gateway", lambda: http(gw, "GET", "/api/v1/auth/jwks")[0] == 200,
             START_DEADLINE)
    st, tok = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    expect(st == 200, "admin login through the gateway", [st, tok])
    admin = tok["access_token"]
    secrets_seen.append(admin)
    expect("super_admin" in jwt_claims(admin).get("roles", []), "the bootstrap admin is "
           "super_admin", jwt_claims(admin))
    mark("admin logged in through the gateway")
    wait_for("14 routed by the gateway", lambda: http(
        gw, "GET", "/api/v1/event-subscriptions", token=admin)[0] == 200, START_DEADLINE)

    clients = {}
    for name in COMMERCE:
        cid = "e2e-" + name[3:]
        st, c = http(gw, "POST", "/api/v1/auth/clients", {"client_id": cid}, token=admin)
        expect(st == 201 and c.get("roles") == ["service"] and len(c["client_secret"]) >= 32,
               "register the client of " + name + " at 05", [st, c])
        clients[name] = {"SERVICE_CLIENT_ID": cid, "SERVICE_CLIENT_SECRET": c["client_secret"]}
        secrets_seen.append(c["client_secret"])
    st, t = http(gw, "POST", "/api/v1/auth/token", {
        "grant_type": "client_credentials", "client_id": clients[COMMERCE[0]]["SERVICE_CLIENT_ID"],
        "client_secret": clients[COMMERCE[0]]["SERVICE_CLIENT_SECRET"]})
    expect(st == 200 and "service" in jwt_claims(t["access_token"]).get("roles", []),
           "a client-credentials token of role service", [st, t])
    secrets_seen.append(t["access_token"])
    mark("%d service clients registered at 05 through the gateway" % len(clients))

    consumer = Bus(gw, admin)
    consumer.start()
    mark("test consumer subscribed at 14 to every type (pulling through the gateway)")

    # ---- the commerce services, each with its own client; peers named explicitly ----
    started = {}
    for name in COMMERCE[:5]:
        extra = dict(clients[name])
        if name == "15-payment-service":
            extra.update({"PAYMENT_PROVIDER": "test", "PAYMENT_WEBHOOK_SECRET": "whsec_e2e",
                          "PAYMENT_SWEEP_MS": "200"})
        svcs[name] = started[name] = Svc(build, tmp, name, env_for(name, extra))
        started[name].start()
    for s in started.values():
        s.wait_ready()
    prod, inv, tax, disc, pay = (started[n] for n in COMMERCE[:5])
    svcs["16-order-service"] = order = Svc(build, tmp, "16-order-service", env_for(
        "16-order-service", dict(clients["16-order-service"], PRODUCT_URL=prod.url(),
                                 INVENTORY_URL=inv.url(), TAX_URL=tax.url(),
                                 DISCOUNT_URL=disc.url(), PAYMENT_URL=pay.url(),
                                 ORDER_RESUME_INTERVAL_MS="200", ORDER_SAGA_LEASE_MS="5000")))
    order.start()
    order.wait_ready()
    svcs["19-cart-service"] = cart = Svc(build, tmp, "19-cart-service", env_for(
        "19-cart-service", dict(clients["19-cart-service"], PRODUCT_URL=prod.url(),
                                DISCOUNT_URL=disc.url(), ORDER_URL=order.url())))
    cart.start()
    cart.wait_ready()
    commerce = [prod, inv, tax, disc, pay, order, cart]

    # Registered at 02 (which needs a token from 05 with registry:write: each client works) and
    # routed by the gateway.
    def routed():
        st, up = http(gw, "GET", "/api/v1/gateway/upstreams", token=admin)
        if st != 200:
            return None
        have = {(u["service"], i["port"]) for u in up["data"] for i in u.get("instances", [])}
        want = {(s.name[3:], s.port) for s in commerce}
        return want <= have
    wait_for("every commerce service registered at 02 and routed by the gateway", routed,
             START_DEADLINE)
    mark("17 18 21 22 15 16 19 up, registered at 02 with their own client tokens, routed")

    run_flow(gw, admin, consumer, secrets_seen)


def run_flow(gw, admin, consumer, secrets_seen):
    u = uuid.uuid4().hex[:8]
    # ---- 1. catalogue, stock, tax, coupon: the admin through the gateway ----
    st, p = http(gw, "POST", "/api/v1/products", {
        "title": "E2E Tee " + u, "slug": "e2e-tee-" + u, "status": "active",
        "variants": [{"sku": "TEE-S-" + u, "price": {"amount": 1999, "currency": "usd"}},
                     {"sku": "TEE-M-" + u, "price": {"amount": 2500, "currency": "usd"}}]},
        token=admin, key="prod-" + u)
    expect(st == 201 and len(p["variants"]) == 2, "create a product with two variants at 17",
           [st, p])
    pid = p["id"]
    vs = {v["sku"]: v for v in p["variants"]}
    vs_, vm = vs["TEE-S-" + u], vs["TEE-M-" + u]
    st, w = http(gw, "POST", "/api/v1/warehouses", {"code": "main-" + u, "name": "Main"},
                 token=admin, key="wh-" + u)
    expect(st == 201, "create a warehouse at 18", [st, w])
    for v, qty in ((vs_, 10), (vm, 10)):
        st, a = http(gw, "POST", "/api/v1/inventory/adjustments",
                     {"sku": v["sku"], "warehouse_id": w["id"], "delta": qty, "note": "e2e"},
                     token=admin, key="adj-%s-%s" % (v["sku"], u))
        expect(st == 201, "stock %s at 18" % v["sku"], [st, a])
    st, t = http(gw, "POST", "/api/v1/tax-rates", {"country": "US", "rate_bp": 800},
                 token=admin, key="tax-" + u)
    expect(st == 201, "the US tax rate at 21", [st, t])
    code = "E2E10-" + u
    st, cp = http(gw, "POST", "/api/v1/coupons", {"code": code, "kind": "percent",
                                                   "percent_off_bp": 1000,
                                                   "max_redemptions": 5},
                  token=admin, key="cp-" + u)
    expect(st == 201, "a 10 % coupon at 22", [st, cp])
    mark("admin: product %s (2 variants), warehouse and 10 + 10 in stock, US tax 8 %%, "
         "coupon %s" % (pid, code))

    # ---- 2. the customer ----
    email, password = "shopper-%s@example.com" % u, "shopper-pass-" + u
    st, r = http(gw, "POST", "/api/v1/auth/register", {"email": email, "password": password})
    expect(st == 201, "register through the gateway", [st, r])
    st, tok = http(gw, "POST", "/api/v1/auth/login", {"email": email, "password": password})
    expect(st == 200, "customer login through the gateway", [st, tok])
    customer = tok["access_token"]
    secrets_seen.append(customer)
    uid = jwt_claims(customer)["sub"]
    st, me = http(gw, "GET", "/api/v1/auth/me", token=customer)
    expect(st == 200 and me.get("id") == uid, "/me is the customer", [st, me])
    mark("customer %s registered and logged in" % uid)

    def listed():
        st, lst = http(gw, "GET", "/api/v1/products?limit=100")
        return st == 200 and any(x["id"] == pid for x in lst["data"]) and lst
    wait_for("the product listed publicly", listed)
    st, got = http(gw, "GET", "/api/v1/products/" + pid)
    expect(st == 200 and {v["id"] for v in got["variants"]} == {vs_["id"], vm["id"]},
           "browse the product without a token", [st, got])
    st, e = http(gw, "POST", "/api/v1/products", {"title": "x"}, token=customer)
    expect(st == 403, "a customer cannot create products", [st, e])
    mark("browsed: product listed and read without a token")

    st, c = http(gw, "POST", "/api/v1/carts", {"currency": "usd"}, token=customer)
    expect(st == 201 and c["status"] == "active", "create the customer's cart at 19", [st, c])
    cid = c["id"]
    for v, q in ((vs_, 2), (vm, 1)):
        st, c = http(gw, "POST", "/api/v1/carts/%s/items" % cid,
                     {"variant_id": v["id"], "quantity": q}, token=customer)
        expect(st in (200, 201), "add %d × %s" % (q, v["sku"]), [st, c])
    st, c = http(gw, "PUT", "/api/v1/carts/%s/coupon" % cid, {"code": code}, token=customer)
    expect(st == 200, "apply the coupon", [st, c])
    st, tot = http(gw, "GET", "/api/v1/carts/%s/totals" % cid, token=customer)
    lines = 2 * 1999 + 2500
    discount = (2 * 1999 * 1000 + 5000) // 10000 + (2500 * 1000 + 5000) // 10000  # 400 + 250
    expect(st == 200 and tot["subtotal"]["amount"] == lines and
           tot["coupon"]["previewed"] is True and tot["coupon"]["valid"] is True and
           tot["discount"]["amount"] == discount and tot["total"]["amount"] == lines - discount,
           "cart totals with the coupon's discount", [st, tot])
    email2 = "other-%s@example.com" % u
    st, r = http(gw, "POST", "/api/v1/auth/register", {"email": email2, "password": password})
    expect(st == 201, "register a second customer", [st, r])
    st, tok2 = http(gw, "POST", "/api/v1/auth/login", {"email": email2, "password": password})
    expect(st == 200, "second customer login", [st, tok2])
    other = tok2["access_token"]
    secrets_seen.append(other)
    st, e = http(gw, "GET", "/api/v1/carts/%s" % cid, token=other)
    expect(st == 404, "another user's cart is 404", [st, e])
    st, e = http(gw, "POST", "/api/v1/carts/%s/checkout" % cid, {
        "shipping_address": {"country": "US"}, "payment_method_id": "tok_visa"}, token=other,
        key="steal-" + u)
    expect(st == 404, "checkout of another user's cart is 404", [st, e])
    mark("cart %s: 2 × S + 1 × M = %d, coupon −%d → %d" % (cid, lines, discount,
                                                           lines - discount))

    # ---- 3. checkout ----
    key = "e2e-checkout-" + u
    checkout_t0 = time.monotonic() - T0
    body = {"shipping_address": {"country": "US", "name": "E2E Shopper", "city": "Springfield"},
            "payment_method_id": "tok_visa"}
    st, co = http(gw, "POST", "/api/v1/carts/%s/checkout" % cid, body, token=customer, key=key)
    expect(st == 201 and co["status"] == "checked_out" and co["order"]["status"] == "CONFIRMED",
           "checkout → 201, order CONFIRMED", [st, co])
    o = co["order"]
    oid = o["id"]
    expect(co["order_id"] == oid, "the cart names its order", co)
    tax_amount = sum((il * 800 + 5000) // 10000 for il in (2 * 1999 - 400, 2500 - 250))
    sum_lines = sum(i["line_total"]["amount"] for i in o["items"])
    expect(sum_lines == lines and o["subtotal"]["amount"] == lines, "Σ lines from 17's prices", o)
    expect(o["discount_total"]["amount"] == discount, "the coupon's discount", o)
    expect(o["tax_total"]["amount"] == tax_amount and o["shipping_total"]["amount"] == 0,
           "tax from 21's rate on what the discount left", o)
    expect(o["grand_total"]["amount"] == lines - discount + tax_amount,
           "grand_total = Σ lines − discount + tax", o)
    expect(o["user_id"] == uid, "the order is the customer's", o)
    mark("checkout → order %s %s CONFIRMED, grand_total %d (= %d − %d + %d)" % (
        o.get("number"), oid, o["grand_total"]["amount"], lines, discount, tax_amount))
    st, again = http(gw, "POST", "/api/v1/carts/%s/checkout" % cid, body, token=customer, key=key)
    expect(st == 201 and again["order"]["id"] == oid, "the same Idempotency-Key → the same order",
           [st, again])
    st, g = http(gw, "GET", "/api/v1/orders/" + oid, token=customer)
    expect(st == 200 and g["status"] == "CONFIRMED", "the order at 16", [st, g])
    st, py = http(gw, "GET", "/api/v1/payments/" + o["payment_id"], token=customer)
    expect(st == 200 and py["status"] == "succeeded" and py["amount"] == o["grand_total"]["amount"]
           and py["currency"] == "usd" and py["amount_refunded"] == 0,
           "paid at 15: the grand total", [st, py])
    st, rs = http(gw, "GET", "/api/v1/inventory/reservations/" + o["reservation_id"], token=admin)
    expect(st == 200 and rs["status"] == "confirmed", "reservation confirmed at 18", [st, rs])
    st, rd = http(gw, "GET", "/api/v1/coupon-redemptions/" + o["coupon_redemption_id"],
                  token=admin)
    expect(st == 200 and rd["status"] == "confirmed", "redemption confirmed at 22", [st, rd])

    def stock(v):
        st, s = http(gw, "GET", "/api/v1/inventory/" + urllib.parse.quote(v["sku"]), token=admin)
        expect(st == 200, "stock of " + v["sku"], [st, s])
        return s["total"] if "total" in s else s
    s_s, s_m = stock(vs_), stock(vm)
    expect(s_s["available"] == 8 and s_s["reserved"] == 2 and s_s["on_hand"] == 10 and
           s_m["available"] == 9 and s_m["reserved"] == 1, "stock reserved at 18", [s_s, s_m])
    st, cpn = http(gw, "GET", "/api/v1/coupons/" + cp["id"], token=admin)
    expect(st == 200 and cpn["redeemed_count"] == 1, "one coupon slot taken", [st, cpn])
    mark("paid %d at 15 (succeeded), reservation and redemption confirmed, stock 8 + 9 available"
         % py["amount"])

    # ---- 4. cancel ----
    st, x = http(gw, "POST", "/api/v1/orders/%s/cancel" % oid, token=customer)
    expect(st == 200 and x["status"] == "CANCELLED", "cancel → 200 CANCELLED", [st, x])
    mark("cancelled by the customer")
    wait_for("the saga's compensation to finish", lambda: http(
        gw, "GET", "/api/v1/orders/%s/saga" % oid, token=customer)[1].get("status") == "done")

    def refunded():
        st, p2 = http(gw, "GET", "/api/v1/payments/" + o["payment_id"], token=customer)
        return st == 200 and p2["amount_refunded"] == p2["amount"] and p2
    py = wait_for("the refund at 15", refunded)
    st, rs = http(gw, "GET", "/api/v1/inventory/reservations/" + o["reservation_id"], token=admin)
    expect(st == 200 and rs["status"] == "released", "reservation released at 18", [st, rs])
    s_s, s_m = stock(vs_), stock(vm)
    expect(s_s["available"] == 10 and s_s["reserved"] == 0 and s_m["available"] == 10 and
           s_m["reserved"] == 0, "stock available again at 18", [s_s, s_m])
    st, rd = http(gw, "GET", "/api/v1/coupon-redemptions/" + o["coupon_redemption_id"],
                  token=admin)
    expect(st == 200 and rd["status"] == "released", "redemption released at 22", [st, rd])
    st, cpn = http(gw, "GET", "/api/v1/coupons/" + cp["id"], token=admin)
    expect(st == 200 and cpn["redeemed_count"] == 0, "the coupon's slot given back", [st, cpn])
    st, h = http(gw, "GET", "/api/v1/orders/%s/history" % oid, token=customer)
    expect(st == 200 and [r["to_status"] for r in h["data"]] == ["PENDING", "CONFIRMED",
                                                                  "CANCELLED"],
           "history PENDING → CONFIRMED → CANCELLED", [st, h])
    st, e = http(gw, "POST", "/api/v1/orders/%s/cancel" % oid, token=customer)
    expect(st == 409, "a second cancel → 409", [st, e])
    mark("refunded %d at 15, reservation released (10 + 10 available), redemption released"
         % py["amount_refunded"])

    # ---- 5. the events ----
    rid, pay_id, red_id = o["reservation_id"], o["payment_id"], o["coupon_redemption_id"]
    once = [("user.created", uid), ("auth.login.succeeded", uid), ("product.created", pid),
            ("inventory.stock_changed", vs_["sku"]), ("inventory.stock_changed", vm["sku"]),
            ("cart.checked_out", cid),
            ("order.created", oid), ("order.confirmed", oid), ("order.cancelled", oid),
            ("inventory.reserved", rid), ("inventory.released", rid),
            ("payment.initiated", pay_id), ("payment.completed", pay_id),
            ("payment.refunded", pay_id),
            ("coupon.redeemed", red_id), ("coupon.released", red_id)]
    at_least = [("cart.item_added", cid, 2), ("auth.login.succeeded", None, 3)]
    never = [("inventory.committed", rid), ("payment.failed", pay_id),
             ("payment.cancelled", pay_id), ("order.processing", oid), ("order.shipped", oid),
             ("inventory.low_stock", None), ("inventory.out_of_stock", None),
             ("coupon.exhausted", None), ("eventbus.dead_lettered", None)]
    services = {s[3:] for s in COMMERCE} | {"auth-service", "event-bus-service", "api-gateway"}

    def registered():
        return {e[2].get("data", {}).get("service") for e in consumer.of(
            "registry.instance.registered")}

    def all_seen():
        return (all(consumer.of(t, s) for t, s in once) and
                all(len(consumer.of(t, s)) >= n for t, s, n in at_least) and
                services <= registered())
    consumer.settled("every expected event at the test consumer", all_seen)
    # Anything still on its way: a second copy would come from a relay (polls every 1 s) or
    # from a consumer of order.cancelled at 15, 18 or 22 (long poll, then its own relay), so
    # pull until QUIET_S passed with nothing new.
    quiet = {"n": -1, "at": time.monotonic()}

    def quiet_for_1s():
        n = consumer.count()
        if n != quiet["n"]:
            quiet["n"], quiet["at"] = n, time.monotonic()
        return time.monotonic() - quiet["at"] >= QUIET_S
    consumer.settled("the bus to go quiet", quiet_for_1s)
    consumer.stop()
    for t, s in once:
        got = consumer.of(t, s)
        expect(len(got) == 1, "%s of %s exactly once" % (t, s), [g[2] for g in got])
    for t, s in never:
        got = consumer.of(t, s)
        expect(not got, "no %s%s" % (t, " of " + s if s else ""), [g[2] for g in got])
    got = consumer.of("cart.item_added", cid)
    expect(len(got) == 2, "cart.item_added once per added line", [g[2] for g in got])
    # Exactly these events name the checkout's entities, nothing more: no duplicate from a
    # relay, a redelivered consumer or a second refund, no step that must not happen.
    ours = {oid, cid, rid, pay_id, red_id, uid, pid, vs_["sku"], vm["sku"]}
    want = sorted([list(x) for x in once] + [["cart.item_added", cid]] * 2)
    with consumer.lock:
        have = sorted([ev["type"], ev["subject"]] for _, _, ev in consumer.events.values()
                      if ev.get("subject") in ours)
    expect(have == want, "the events of the checkout's entities, each exactly as often as "
           "expected", {"unexpected": [h for h in have if h not in want or
                                       have.count(h) > want.count(h)],
                        "missing": [w for w in want if have.count(w) < want.count(w)]})
    od = consumer.of("order.confirmed", oid)[0][2]
    expect(od["data"]["grand_total"]["amount"] == o["grand_total"]["amount"],
           "order.confirmed carries the order", od)
    pr = consumer.of("payment.refunded", pay_id)[0][2]
    expect(pr["data"]["amount_refunded"] == py["amount"], "payment.refunded carries the refund",
           pr)
    rel = consumer.of("inventory.released", rid)[0][2]
    expect(rel["data"].get("reason") in (None, "released"), "released, not expired", rel)
    mark("the test consumer saw %d events; each expected one exactly once per entity"
         % len(consumer.events))

    print("timeline (seconds since start; steps and the checkout's events as the test consumer"
          " received them, with their bus seq):")
    rows = [(t, "step", w) for t, w in TIMELINE if t >= checkout_t0 - 0.5]
    rows += [(arr, "#%d" % seq, "%s (%s)" % (ev["type"], ev.get("source", "").rsplit("/", 1)[-1]))
             for arr, seq, ev in consumer.events.values() if ev.get("subject") in ours]
    for t, k, w in sorted(rows, key=lambda r: r[0]):
        print("  %7.3f s  %-5s %s" % (t, k, w))


if __name__ == "__main__":
    sys.exit(main())
