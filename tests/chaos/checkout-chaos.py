#!/usr/bin/python3
"""Checkout saga under kill -9 chaos (issue 6 point 5): every order ends CONFIRMED or CANCELLED,
0 oversold, 0 charged twice, stock conserved.

  checkout-chaos.py BUILD_DIR [--pg-url URL] [--kills N] [--orders N] [--seed S]
                    [--clients C] [--gap SECONDS] [--settle SECONDS] [--converge SECONDS]
                    [--reservation-ttl SECONDS] [--log-level L] [--keep]

Defaults are the short variant of `make test` (20 kills, 60 orders, about 40-95 s per engine);
`make chaos` runs --kills 200 --orders 600 (tests/chaos/run-checkout-chaos.sh).

Starts 14-event-bus-service, 17-product-service, 18-inventory-service, 21-invoice-service,
22-discount-service, 15-payment-service (PAYMENT_PROVIDER=stripe against the Stripe test double
tests/doubles/stripe/stripe_double.py, run in this process so every PaymentIntent and refund it
holds can be read at the end) and 16-order-service on free ports of 127.0.0.1, every service
publishing and consuming through 14 (EVENT_BUS=http). SQLite files in a temp dir, or with
--pg-url one fresh PostgreSQL database per service (dropped at the end).

Seeds four products (two of them with little stock, one spread over two warehouses), a US tax
rate, and a 10 % coupon with max_redemptions. Then C client threads send ORDERS checkouts on a
schedule spread over the kill window (Idempotency-Key per order; a connection error, a 5xx or
409 idempotency_in_flight is retried with the same key and body, with capped backoff, as a real
client does; a 201 PENDING is an answer), 40 % with the coupon, 8 % with a declined card, and
about 12 % of them cancelled by their customer right after the answer (refund and release),
while a killer thread kill -9's a random participant (weights: 16 ×4, 18 ×3, 15 ×3, 22 ×3, 17,
21, 14 ×1) at random moments (mean gap --gap; it aims at a moment when a client request is in
flight when one comes within a gap) and restarts it after a short random pause (same database,
same port). Kills and orders both end when their count is reached. Note: a kill of 16 during a
POST leaves gr's Idempotency-Key record pending until its lease runs out (GR_IDEM_LEASE_MS,
10 s), so that client's retries get 409 for up to about 10 s. Then it waits (deadline --settle)
until every order is CONFIRMED or CANCELLED and every saga done, and checks, reading each
service's database and API:

  orders   one order per Idempotency-Key, none PENDING, every saga done;
  stock    Σ quantities of CONFIRMED orders per sku ≤ stock seeded (0 oversold); on_hand =
           seeded and Σ movements = on_hand per (sku, warehouse); reserved per sku = Σ
           quantities of CONFIRMED orders; no active reservation left; a confirmed reservation
           belongs to a CONFIRMED order (its reservation_id, same quantities per sku), every
           CONFIRMED order has one, a CANCELLED order's is released or expired; the API's
           GET /inventory/{sku} agrees with the database;
  money    at the provider double: per order, Σ captured − Σ refunded = grand_total when
           CONFIRMED, else 0, and never two succeeded PaymentIntents for one order; every
           PaymentIntent belongs to a payment of 15; 15's payments agree;
  coupon   confirmed redemptions ≤ max_redemptions, each of a CONFIRMED order that names it;
           none left reserved; every CONFIRMED order with the coupon has its confirmed one.

Finally every service is stopped with SIGTERM (must exit 0) and no log may hold a sanitizer
report or a bearer token. Prints

  chaos-checkout engine=E orders=N confirmed=.. cancelled=.. (reason=n ...) kills=K
  (svc=n ...) restarts=R secs=..

Exit status 0 iff every check holds. Every process it starts is killed by PID, and the temp dir
(unless --keep) and the PostgreSQL databases removed, on every exit path. Standard library only.
"""

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOUBLE = os.path.join(ROOT, "tests", "doubles", "stripe", "stripe_double.py")
START_DEADLINE = 60.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
BUS = "14-event-bus-service"
PROD, INV, TAX, DISC, PAY, ORDER = ("17-product-service", "18-inventory-service",
                                    "21-invoice-service", "22-discount-service",
                                    "15-payment-service", "16-order-service")
ALL = [BUS, PROD, INV, TAX, DISC, PAY, ORDER]
WEIGHTS = {ORDER: 4, INV: 3, PAY: 3, DISC: 3, PROD: 1, TAX: 1, BUS: 1}


class Fail(Exception):
    pass


def log(msg):
    print("# " + msg, flush=True)


def wait_for(what, cond, deadline=START_DEADLINE, every=0.05):
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= end:
            raise Fail("timed out after %.0f s waiting for %s" % (deadline, what))
        time.sleep(every)


def http(method, url, body=None, token=None, key=None, timeout=30.0):
    """(status, parsed JSON or None); status 0 when the server cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        r.add_header("Content-Type", "application/json")
    if token:
        r.add_header("Authorization", "Bearer " + token)
    if key:
        r.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        try:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None
        except (ValueError, OSError):
            return e.code, None
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return 0, None


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def log_tail(path, lines=15):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Svc:
    """One service process; restarts keep its database, data dir and port."""

    def __init__(self, build, tmp, name, env):
        self.name = name
        self.bin = os.path.join(build, "bin", name)
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = 0
        self.proc = None
        self.lock = threading.Lock()
        self.logpath = os.path.join(self.dir, "log")
        self.log = open(self.logpath, "ab")

    def url(self, path=""):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def start(self):
        env = dict(self.env)
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": str(self.port), "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        proc = self.proc

        def port_written():
            if proc.poll() is not None:
                raise Fail("%s exited with %s at start:\n%s" % (self.name, proc.returncode,
                                                               log_tail(self.logpath)))
            try:
                with open(pf) as f:
                    return f.read().strip()
            except OSError:
                return None
        self.port = int(wait_for(self.name + " port file", port_written))
        wait_for(self.name + " /ready",
                 lambda: http("GET", self.url("/ready"), timeout=2)[0] == 200)

    def req(self, method, path, body=None, token=None, key=None, timeout=30.0):
        return http(method, self.url(path), body, token, key, timeout)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self):
        """SIGTERM; returns the exit status (None when it had to be killed)."""
        if not self.proc:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = None
        else:
            rc = self.proc.returncode
        self.proc = None
        return rc

    def log_text(self):
        self.log.flush()
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")


class Minter:
    """One ES256 key and its JWKS; tokens through BUILD_DIR/bin/gr-jwt."""

    def __init__(self, build, tmp):
        self.tool = os.path.join(build, "bin", "gr-jwt")
        self.key = os.path.join(tmp, "k.pem")
        self.jwks = os.path.join(tmp, "jwks.json")
        subprocess.run([self.tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", self.key,
                        "--jwks", self.jwks], check=True, stdout=subprocess.DEVNULL)

    def token(self, sub, perms, roles):
        args = [self.tool, "sign", "--key", self.key, "--alg", "ES256", "--kid", "t", "--sub",
                sub, "--roles", roles, "--ttl", "86400", "--perms", perms]
        return subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.decode().strip()


def psql(url, sql, rows=False):
    out = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "\x1f",
                          "-d", url, "-c", sql], check=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    if not rows:
        return None
    return [tuple(line.split("\x1f")) for line in out.stdout.decode().splitlines() if line]


def pg_db_url(admin_url, name):
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def query(db_url, sql):
    """Rows of @sql (strings, NULL as '') on a service's database, read-only."""
    if db_url.startswith("sqlite://"):
        con = sqlite3.connect("file:%s?mode=ro" % db_url[len("sqlite://"):], uri=True,
                              timeout=30)
        try:
            return [tuple("" if c is None else str(c) for c in r)
                    for r in con.execute(sql).fetchall()]
        finally:
            con.close()
    return psql(db_url, sql, rows=True)


def load_double():
    spec = importlib.util.spec_from_file_location("stripe_double", DOUBLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class QuietServer(ThreadingHTTPServer):
    """A client (15) killed mid-request resets its connection: not worth a traceback."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class StripeDouble:
    """tests/doubles/stripe/stripe_double.py served from a thread of this process."""

    def __init__(self):
        mod = load_double()
        args = argparse.Namespace(api_key="sk_test_double", webhook_url="",
                                  webhook_secret="whsec_double", port_file="")
        self.st = mod.State(args)
        handler = type("ChaosHandler", (mod.Handler,), {"st": self.st})
        self.srv = QuietServer(("127.0.0.1", 0), handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def webhooks_to(self, url):
        self.st.args.webhook_url = url
        self.st.mode = "after"

    def snapshot(self):
        with self.st.lock:
            return ([dict(pi) for pi in self.st.intents.values()], dict(self.st.refunded),
                    len(self.st.calls))

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class Stack:
    def __init__(self, build, tmp, pg_url, log_level, order_env):
        self.build, self.tmp, self.pg_url = build, tmp, pg_url
        self.order_env = order_env
        self.dbs = []
        self.svcs = {}
        self.mint = Minter(build, tmp)
        self.admin = self.mint.token(str(uuid.uuid4()), "*", "super_admin")
        bus_perms = "events:write,events:read,events:admin"
        self.service = self.mint.token(
            "order-service", "products:read,inventory:write,coupon-redemptions:write,"
            "coupons:read,payments:write,payments:read," + bus_perms, "service")
        self.peer = self.mint.token(
            "peer-service", "products:read,inventory:write,coupons:read,"
            "coupon-redemptions:write,payments:write," + bus_perms, "service")
        self.users = [str(uuid.uuid4()) for _ in range(6)]
        self.customers = {u: self.mint.token(u, "", "customer") for u in self.users}
        self.double = StripeDouble()
        base = dict(os.environ)
        base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + self.mint.jwks,
                     "CURSOR_SECRET": "test", "LOG_LEVEL": log_level, "LOG_FORMAT": "json",
                     "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity"})
        for k in ("SERVICE_TOKEN", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET",
                  "DATABASE_URL", "DISCOVERY_URL", "EVENT_BUS_URL", "EVENT_BUS"):
            base.pop(k, None)
        self.base = base

    def env_for(self, name, extra):
        e = dict(self.base)
        if self.pg_url:
            db = "gr_cc_%s_%s" % (name[:2], uuid.uuid4().hex[:10])
            psql(self.pg_url, 'CREATE DATABASE "%s"' % db)
            self.dbs.append(db)
            e["DATABASE_URL"] = pg_db_url(self.pg_url, db)
        else:
            e["DATABASE_URL"] = "sqlite://" + os.path.join(self.tmp, name + ".db")
        e.update(extra)
        return e

    def start(self):
        bus = Svc(self.build, self.tmp, BUS, self.env_for(BUS, {}))
        self.svcs[BUS] = bus
        bus.start()
        on_bus = {"EVENT_BUS": "http", "EVENT_BUS_URL": bus.url(), "SERVICE_TOKEN": self.peer}
        for name in (PROD, INV, TAX, DISC, PAY):
            extra = dict(on_bus)
            if name == PAY:
                extra.update({"PAYMENT_PROVIDER": "stripe", "STRIPE_API_KEY": "sk_test_double",
                              "STRIPE_API_BASE": "http://127.0.0.1:%d" % self.double.port,
                              "STRIPE_WEBHOOK_SECRET": "whsec_double",
                              "PAYMENT_SWEEP_MS": "200"})
            self.svcs[name] = Svc(self.build, self.tmp, name, self.env_for(name, extra))
            self.svcs[name].start()
        self.double.webhooks_to(self.svcs[PAY].url("/api/v1/payments/webhooks/stripe"))
        s = self.svcs
        order = Svc(self.build, self.tmp, ORDER, self.env_for(ORDER, dict(
            on_bus, SERVICE_TOKEN=self.service, PRODUCT_URL=s[PROD].url(),
            INVENTORY_URL=s[INV].url(), TAX_URL=s[TAX].url(), DISCOUNT_URL=s[DISC].url(),
            PAYMENT_URL=s[PAY].url(), ORDER_SAGA_LEASE_MS="1500",
            ORDER_RESUME_INTERVAL_MS="100", ORDER_CALL_TIMEOUT_MS="3000",
            **self.order_env)))
        s[ORDER] = order
        order.start()

    def db(self, name):
        return self.svcs[name].env["DATABASE_URL"]

    def cleanup(self):
        for s in self.svcs.values():
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        try:
            self.double.close()
        except OSError:
            pass
        for db in self.dbs:
            try:
                psql(self.pg_url, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
            except subprocess.CalledProcessError:
                pass


def seed(stack, n_orders):
    """Products, stock, tax and the coupon. -> (catalogue {name: (variant, sku, price, stock,
    {warehouse: qty})}, coupon code, coupon id, max_redemptions)."""
    s, admin, u = stack.svcs, stack.admin, uuid.uuid4().hex[:8]
    whs = []
    for code in ("east", "west"):
        st, w = s[INV].req("POST", "/api/v1/warehouses", {"code": "%s-%s" % (code, u)},
                           token=admin, key="wh-" + code + u)
        if st != 201:
            raise Fail("seed warehouse: %s %s" % (st, w))
        whs.append(w["id"])
    # scarce A (two warehouses), scarce B, plenty of C, some D
    # (a client buys about 0.75 units of A and of D, 0.4 of B per order: some sell out)
    plan = {"a": (1999, {whs[0]: max(2, n_orders // 3), whs[1]: max(1, n_orders // 6)}),
            "b": (500, {whs[0]: max(1, n_orders // 5)}),
            "c": (1000, {whs[0]: 5000, whs[1]: 5000}),
            "d": (250, {whs[1]: max(3, n_orders // 2)})}
    cat = {}
    for name, (price, stock) in plan.items():
        st, p = s[PROD].req("POST", "/api/v1/products", {
            "title": "Chaos " + name, "slug": "chaos-%s-%s" % (name, u), "status": "active",
            "variants": [{"sku": "CH-%s-%s" % (name.upper(), u),
                          "price": {"amount": price, "currency": "usd"}}]},
            token=admin, key="p-" + name + u)
        if st != 201:
            raise Fail("seed product %s: %s %s" % (name, st, p))
        v = p["variants"][0]
        for wh, qty in stock.items():
            st, a = s[INV].req("POST", "/api/v1/inventory/adjustments",
                               {"sku": v["sku"], "warehouse_id": wh, "delta": qty},
                               token=admin, key="adj-%s-%s-%s" % (name, wh, u))
            if st != 201:
                raise Fail("seed stock %s: %s %s" % (name, st, a))
        cat[name] = (v["id"], v["sku"], price, sum(stock.values()), dict(stock))
    st, t = s[TAX].req("POST", "/api/v1/tax-rates", {"country": "US", "rate_bp": 800},
                       token=admin, key="tax-" + u)
    if st != 201:
        raise Fail("seed tax rate: %s %s" % (st, t))
    max_red = max(2, n_orders // 4)
    st, c = s[DISC].req("POST", "/api/v1/coupons", {
        "code": "CHAOS10-" + u, "kind": "percent", "percent_off_bp": 1000,
        "max_redemptions": max_red}, token=admin, key="cp-" + u)
    if st != 201:
        raise Fail("seed coupon: %s %s" % (st, c))
    return cat, c["code"], c["id"], max_red


class Killer(threading.Thread):
    def __init__(self, stack, kills, gap, rng):
        super().__init__(daemon=True)
        self.stack, self.kills, self.gap, self.rng = stack, kills, gap, rng
        self.done_kills = 0
        self.restarts = 0
        self.per = {n: 0 for n in ALL}
        self.error = None
        self.stop_now = threading.Event()
        self.hot = 0  # kills while a client request was in flight

    def run(self):
        names = [n for n in ALL for _ in range(WEIGHTS[n])]
        try:
            while self.done_kills < self.kills and not self.stop_now.is_set():
                if self.stop_now.wait(self.rng.uniform(0.2, 1.8) * self.gap):
                    break
                # aim at work in progress: wait (briefly) for a request in flight, then a
                # random moment of its first tens of milliseconds
                end = time.monotonic() + self.gap
                while INFLIGHT.n == 0 and time.monotonic() < end:
                    time.sleep(0.002)
                time.sleep(self.rng.uniform(0.0, 0.015))
                if INFLIGHT.n:
                    self.hot += 1
                victim = self.stack.svcs[self.rng.choice(names)]
                victim.kill9()
                self.done_kills += 1
                self.per[victim.name] += 1
                time.sleep(self.rng.uniform(0.0, 0.4))
                victim.start()
                self.restarts += 1
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = e


class InFlight:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def add(self, d):
        with self.lock:
            self.n += d


INFLIGHT = InFlight()


def client(stack, jobs, results, cancels, t0, deadline_s):
    """Runs its checkouts at their scheduled times; retries what a real client retries."""
    order = stack.svcs[ORDER]
    for idx, at, user, key, body, cancel in jobs:
        pause = t0 + at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        began = time.monotonic()
        end = began + deadline_s
        tries = 0
        while True:
            tries += 1
            INFLIGHT.add(1)
            try:
                st, o = http("POST", order.url("/api/v1/orders"), body, stack.customers[user],
                             key, timeout=15)
            finally:
                INFLIGHT.add(-1)
            retry = st == 0 or st >= 500 or (
                st == 409 and isinstance(o, dict) and
                str(o.get("type", "")).endswith(":idempotency_in_flight"))
            if not retry or time.monotonic() >= end:
                break
            time.sleep(min(1.0, 0.05 * 2 ** min(tries, 5)) * (0.5 + random.random()))
        results[idx] = (st, o, tries, time.monotonic() - began)
        if cancel and st == 201 and isinstance(o, dict) and o.get("id"):
            # the customer changes their mind: cancel (refund and release), retried like POST
            end = time.monotonic() + deadline_s
            while True:
                INFLIGHT.add(1)
                try:
                    cst, c = http("POST", order.url("/api/v1/orders/%s/cancel" % o["id"]),
                                  None, stack.customers[user], timeout=15)
                finally:
                    INFLIGHT.add(-1)
                if (cst != 0 and cst < 500) or time.monotonic() >= end:
                    break
                time.sleep(0.1 + 0.2 * random.random())
            cancels[idx] = (cst, c)


def make_jobs(n, cat, code, window, clients, rng, users):
    """Per client: [(index, seconds after the start, user, Idempotency-Key, body, cancel?)]."""
    jobs = [[] for _ in range(clients)]
    keys = []
    names = ["a", "a", "b", "c", "c", "d", "d"]
    for i in range(n):
        picked = []
        for nm in rng.sample(names, rng.choice((1, 1, 2))):
            if nm not in picked:
                picked.append(nm)
        body = {"items": [{"variant_id": cat[nm][0], "quantity": rng.randint(1, 3)}
                          for nm in picked],
                "currency": "usd", "shipping_address": {"country": "US", "name": "Chaos"},
                "payment_method_id": "tok_chargeDeclined" if rng.random() < 0.08 else "tok_visa"}
        if rng.random() < 0.4:
            body["coupon_code"] = code
        key = "chaos-%d-%s" % (i, uuid.UUID(int=rng.getrandbits(128)).hex)
        keys.append(key)
        at = window * i / max(1, n)
        jobs[i % clients].append((i, at, users[i % len(users)], key, body,
                                  rng.random() < 0.12))
    return jobs, keys


def run(args):
    build = args.build
    bins = ALL + ["gr-jwt"]
    missing = [b for b in bins if not os.access(os.path.join(build, "bin", b), os.X_OK)]
    if missing:
        raise Fail("missing binaries in %s/bin: %s (build them first)" % (build,
                                                                           ", ".join(missing)))
    engine = "pg" if args.pg_url else "sqlite"
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="checkout-chaos-")
    stack = None
    t_start = time.monotonic()
    try:
        order_env = {}
        if args.reservation_ttl:
            order_env["ORDER_RESERVATION_TTL_S"] = str(args.reservation_ttl)
        stack = Stack(build, tmp, args.pg_url, args.log_level, order_env)
        stack.start()
        s = stack.svcs
        cat, code, coupon_id, max_red = seed(stack, args.orders)
        log("engine=%s seed=%d stack up in %.1f s; stock %s; coupon max_redemptions=%d" % (
            engine, args.seed, time.monotonic() - t_start,
            {k: v[3] for k, v in cat.items()}, max_red))

        window = max(args.kills * args.gap, 1.0)
        jobs, keys = make_jobs(args.orders, cat, code, window, args.clients, rng, stack.users)
        results = [None] * args.orders
        cancels = {}
        killer = Killer(stack, args.kills, args.gap, rng)
        t0 = time.monotonic()
        ths = [threading.Thread(target=client, args=(stack, lst, results, cancels, t0,
                                                       args.settle),
                                daemon=True) for lst in jobs]
        killer.start()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        killer.join()
        t_stream = time.monotonic() - t0
        if killer.error:
            raise Fail("killer: %s" % killer.error)
        if killer.done_kills != args.kills:
            raise Fail("only %d of %d kills" % (killer.done_kills, args.kills))
        for n in ALL:
            if not (s[n].proc and s[n].proc.poll() is None):
                raise Fail("%s is not running after the stream:\n%s" % (n, log_tail(
                    s[n].logpath)))
        answers = {}
        bad = []
        for i, r in enumerate(results):
            st, o, tries, _ = r
            if st != 201:
                bad.append((keys[i], st, o))
            else:
                answers[keys[i]] = o
        slow = max(results, key=lambda r: r[3])
        log("stream: %d checkouts in %.1f s, %d kills (%d with a request in flight); %d retries"
            " in all; slowest answer %.1f s (%d tries); answers %s" % (
            args.orders, t_stream, killer.done_kills, killer.hot, sum(r[2] - 1 for r in results),
            slow[3], slow[2],
            {k: sum(1 for o in answers.values() if o["status"] == k)
             for k in ("PENDING", "CONFIRMED", "CANCELLED")}))
        bad_cancel = [(i, c) for i, c in cancels.items() if c[0] not in (200, 202, 409)]
        if bad_cancel:
            raise Fail("cancels answered (index, (status, body)): %s" % json.dumps(
                bad_cancel[:3])[:1500])
        n_cancel = sum(1 for c in cancels.values() if c[0] in (200, 202))
        log("customer cancels: %d sent, %d accepted (200/202)" % (len(cancels), n_cancel))
        if bad:
            raise Fail("%d checkouts got no 201 (status, body): %s" % (
                len(bad), json.dumps(bad[:3])[:1500]))

        # ---- settle: every order CONFIRMED or CANCELLED, every saga done ------------------
        odb = stack.db(ORDER)

        def open_sagas():
            rows = query(odb, "SELECT o.id, o.status, s.status, s.step, s.attempts,"
                         " s.last_error FROM orders o JOIN saga_state s ON s.order_id = o.id"
                         " WHERE o.status = 'PENDING' OR s.status <> 'done'")
            return rows
        t1 = time.monotonic()
        end = t1 + args.settle
        left = open_sagas()
        while left and time.monotonic() < end:
            time.sleep(0.25)
            left = open_sagas()
        t_settle = time.monotonic() - t1
        if left:
            raise Fail("%d orders not settled after %.0f s (id, order, saga, step, attempts,"
                       " last_error): %s" % (len(left), args.settle, json.dumps(left[:5])))
        log("settled in %.1f s" % t_settle)

        # ---- invariants (they may need the bus a moment: poll until they hold) ---------
        problems = wait_invariants(stack, cat, keys, answers, coupon_id, max_red, args)
        if problems:
            raise Fail("invariants violated:\n  " + "\n  ".join(problems[:40]))
        summary = SUMMARY.copy()

        # ---- graceful stop, logs -------------------------------------------------------
        for n in reversed(ALL):
            rc = s[n].stop()
            if rc != 0:
                raise Fail("%s exited with status %s on SIGTERM:\n%s" % (n, rc,
                                                                        log_tail(s[n].logpath)))
        secrets = [stack.admin, stack.service, stack.peer] + list(stack.customers.values())
        for n in ALL:
            text = s[n].log_text()
            for mark in SANITIZER_MARKS:
                if mark in text:
                    i = text.index(mark)
                    raise Fail("%s log has %s:\n%s" % (n, mark, text[max(0, i - 200):i + 3000]))
            if any(t in text for t in secrets):
                raise Fail(n + " logged a bearer token")
        reasons = " ".join("%s=%d" % kv for kv in sorted(summary["reasons"].items()))
        per = " ".join("%s=%d" % (n[:2], killer.per[n]) for n in ALL if killer.per[n])
        refunds = " ".join("%s=%d" % kv for kv in sorted(summary["refund_reasons"].items()))
        print("chaos-checkout engine=%s orders=%d confirmed=%d cancelled=%d (%s) "
              "pending_answers=%d customer_cancels=%d kills=%d (%s) kills_in_flight=%d "
              "restarts=%d charges=%d refunds=%d (%s) provider_calls=%d coupon_confirmed=%d/%d "
              "oversold=0 charged_twice=0 stream=%.1fs settle=%.1fs secs=%.1f" % (
                  engine, summary["orders"], summary["confirmed"], summary["cancelled"],
                  reasons, sum(1 for o in answers.values() if o["status"] == "PENDING"),
                  n_cancel, killer.done_kills, per, killer.hot, killer.restarts,
                  summary["charges"], summary["refunds"], refunds, summary["calls"],
                  summary["coupon_confirmed"], max_red, t_stream, t_settle,
                  time.monotonic() - t_start), flush=True)
        return 0
    finally:
        if stack:
            stack.cleanup()
        if args.keep:
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


SUMMARY = {}


def wait_invariants(stack, cat, keys, answers, coupon_id, max_red, args):
    end = time.monotonic() + args.converge
    while True:
        problems = check_invariants(stack, cat, keys, answers, coupon_id, max_red)
        if not problems or time.monotonic() >= end:
            return problems
        time.sleep(0.5)


def check_invariants(stack, cat, keys, answers, coupon_id, max_red):
    p = []
    s = stack.svcs
    stock_of = {v[1]: v[3] for v in cat.values()}
    seeded = {(v[1], wh): q for v in cat.values() for wh, q in v[4].items()}

    # orders (16)
    orows = query(stack.db(ORDER), "SELECT id, status, COALESCE(cancel_reason, ''),"
                  " grand_total, COALESCE(coupon_code, ''), COALESCE(coupon_redemption_id, ''),"
                  " COALESCE(reservation_id, ''), COALESCE(payment_id, ''), idem_key"
                  " FROM orders")
    orders = {r[0]: {"status": r[1], "reason": r[2], "total": int(r[3]), "coupon": r[4],
                     "redemption": r[5], "reservation": r[6], "payment": r[7], "key": r[8]}
              for r in orows}
    items = {}
    for oid, sku, qty in query(stack.db(ORDER), "SELECT order_id, sku, quantity"
                               " FROM order_items"):
        items.setdefault(oid, {}).setdefault(sku, 0)
        items[oid][sku] += int(qty)
    by_key = {}
    for oid, o in orders.items():
        by_key.setdefault(o["key"], []).append(oid)
    for k in keys:
        if len(by_key.get(k, [])) != 1:
            p.append("key %s has %d orders" % (k, len(by_key.get(k, []))))
        elif answers.get(k) and answers[k]["id"] != by_key[k][0]:
            p.append("key %s answered order %s, the database has %s" % (
                k, answers[k]["id"], by_key[k][0]))
    if len(orders) != len(keys):
        p.append("%d orders for %d keys" % (len(orders), len(keys)))
    for oid, o in orders.items():
        if o["status"] not in ("CONFIRMED", "CANCELLED"):
            p.append("order %s is %s" % (oid, o["status"]))
    confirmed = {oid for oid, o in orders.items() if o["status"] == "CONFIRMED"}
    sold = {sku: 0 for sku in stock_of}
    for oid in confirmed:
        for sku, q in items.get(oid, {}).items():
            sold[sku] += q
    for sku, q in sold.items():
        if q > stock_of[sku]:
            p.append("OVERSOLD %s: %d confirmed of %d" % (sku, q, stock_of[sku]))

    # stock (18)
    idb = stack.db(INV)
    levels = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in query(
        idb, "SELECT sku, warehouse_id, on_hand, reserved FROM stock_levels")}
    moves = {(r[0], r[1]): int(r[2]) for r in query(
        idb, "SELECT sku, warehouse_id, SUM(delta) FROM movements GROUP BY sku, warehouse_id")}
    for lv, (on_hand, _) in levels.items():
        if moves.get(lv, 0) != on_hand:
            p.append("Σ movements %d ≠ on_hand %d for %s" % (moves.get(lv, 0), on_hand, lv))
        if lv in seeded and on_hand != seeded[lv]:
            p.append("on_hand %d ≠ seeded %d for %s (nothing shipped)" % (on_hand, seeded[lv],
                                                                       lv))
    for lv in moves:
        if lv not in levels:
            p.append("movements for %s without a level" % (lv,))
    reserved = {}
    for (sku, _), (_, r) in levels.items():
        reserved[sku] = reserved.get(sku, 0) + r
    for sku in stock_of:
        if reserved.get(sku, 0) != sold[sku]:
            p.append("reserved %d ≠ %d confirmed for %s" % (reserved.get(sku, 0), sold[sku],
                                                            sku))
        st, lvl = s[INV].req("GET", "/api/v1/inventory/" + urllib.parse.quote(sku),
                             token=stack.admin)
        if st != 200:
            p.append("GET inventory %s → %s" % (sku, st))
        else:
            tot = lvl.get("total", lvl)
            if tot.get("on_hand") != stock_of[sku] or tot.get("reserved") != sold[sku]:
                p.append("GET inventory %s: %s, expected on_hand %d reserved %d" % (
                    sku, json.dumps(tot), stock_of[sku], sold[sku]))
    resv = {r[0]: {"order": r[1], "status": r[2]} for r in query(
        idb, "SELECT id, order_id, status FROM reservations")}
    rqty = {}
    for rid, sku, q in query(idb, "SELECT reservation_id, sku, quantity FROM reservation_items"):
        rqty.setdefault(rid, {}).setdefault(sku, 0)
        rqty[rid][sku] += int(q)
    res_of_order = {}
    for rid, r in resv.items():
        res_of_order.setdefault(r["order"], []).append(rid)
        o = orders.get(r["order"])
        if r["status"] == "active":
            p.append("reservation %s of order %s still active" % (rid, r["order"]))
        if r["status"] in ("confirmed", "committed"):
            if not o or o["status"] != "CONFIRMED":
                p.append("reservation %s %s for order %s that is %s" % (
                    rid, r["status"], r["order"], o and o["status"]))
            elif o["reservation"] != rid:
                p.append("order %s names reservation %s, 18 confirmed %s" % (
                    r["order"], o["reservation"], rid))
            elif rqty.get(rid, {}) != items.get(r["order"], {}):
                p.append("reservation %s holds %s, order %s bought %s" % (
                    rid, rqty.get(rid), r["order"], items.get(r["order"])))
    for oid in confirmed:
        rid = orders[oid]["reservation"]
        if not rid or resv.get(rid, {}).get("status") != "confirmed":
            p.append("CONFIRMED order %s: reservation %s is %s" % (
                oid, rid, resv.get(rid, {}).get("status")))
    for oid, o in orders.items():
        if o["status"] == "CANCELLED":
            for rid in res_of_order.get(oid, []):
                if resv[rid]["status"] not in ("released", "expired"):
                    p.append("CANCELLED order %s: reservation %s %s" % (oid, rid,
                                                                      resv[rid]["status"]))

    # money (15 and the provider double)
    pay_rows = query(stack.db(PAY), "SELECT id, COALESCE(order_id, ''), status, amount,"
                     " amount_captured, amount_refunded, COALESCE(provider_ref, '')"
                     " FROM payments")
    payments = {r[0]: {"order": r[1], "status": r[2], "amount": int(r[3]),
                       "captured": int(r[4]), "refunded": int(r[5]), "ref": r[6]}
                for r in pay_rows}
    intents, refunded, calls = stack.double.snapshot()
    net = {}
    charges = {}
    refunded_orders = set()
    n_charges = n_refunds = 0
    for pi in intents:
        pid = pi.get("metadata", {}).get("payment_id", "")
        pay = payments.get(pid)
        got = int(pi.get("amount_received") or 0) if pi["status"] == "succeeded" else 0
        back = int(refunded.get(pi["id"], 0))
        if back:
            n_refunds += 1
        if not pay:
            if got:
                p.append("PaymentIntent %s captured %d for unknown payment %r" % (pi["id"], got,
                                                                               pid))
            continue
        oid = pay["order"]
        if back:
            refunded_orders.add(oid)
        if got:
            n_charges += 1
            charges[oid] = charges.get(oid, 0) + 1
        net[oid] = net.get(oid, 0) + got - back
    for oid, n in charges.items():
        if n > 1:
            p.append("CHARGED TWICE: order %s has %d succeeded PaymentIntents" % (oid, n))
    for oid, o in orders.items():
        want = o["total"] if o["status"] == "CONFIRMED" else 0
        if net.get(oid, 0) != want:
            p.append("order %s %s (%s): provider net %d ≠ %d" % (oid, o["status"], o["reason"],
                                                                 net.get(oid, 0), want))
    pay_net = {}
    for pid, pay in payments.items():
        pay_net[pay["order"]] = pay_net.get(pay["order"], 0) + pay["captured"] - pay["refunded"]
        if pay["order"] and pay["order"] not in orders:
            p.append("payment %s for unknown order %s" % (pid, pay["order"]))
    for oid, o in orders.items():
        want = o["total"] if o["status"] == "CONFIRMED" else 0
        if pay_net.get(oid, 0) != want:
            p.append("order %s %s: 15 net %d ≠ %d" % (oid, o["status"], pay_net.get(oid, 0),
                                                      want))
        if o["status"] == "CONFIRMED":
            pay = payments.get(o["payment"])
            if not pay or pay["status"] != "succeeded" or pay["amount"] != o["total"]:
                p.append("CONFIRMED order %s: payment %s" % (oid, pay))

    # coupon (22)
    red = query(stack.db(DISC), "SELECT id, order_id, status FROM redemptions"
                " WHERE coupon_id = '%s'" % coupon_id)
    n_conf_red = 0
    red_of = {}
    for rid, oid, status in red:
        red_of.setdefault(oid, []).append((rid, status))
        if status == "reserved":
            p.append("redemption %s of order %s still reserved" % (rid, oid))
        if status == "confirmed":
            n_conf_red += 1
            o = orders.get(oid)
            if not o or o["status"] != "CONFIRMED" or o["redemption"] != rid:
                p.append("redemption %s confirmed for order %s (%s)" % (rid, oid, o))
    if n_conf_red > max_red:
        p.append("coupon over-redeemed: %d confirmed > max %d" % (n_conf_red, max_red))
    for oid in confirmed:
        if orders[oid]["coupon"]:
            mine = [x for x in red_of.get(oid, []) if x[1] == "confirmed"]
            if len(mine) != 1:
                p.append("CONFIRMED order %s with the coupon has redemptions %s" % (
                    oid, red_of.get(oid)))
    st, c = s[DISC].req("GET", "/api/v1/coupons/" + coupon_id, token=stack.admin)
    if st != 200 or c.get("redeemed_count") != n_conf_red:
        p.append("coupon redeemed_count %s ≠ %d confirmed" % (c and c.get("redeemed_count"),
                                                               n_conf_red))

    refund_reasons = {}
    for oid in refunded_orders:
        r = orders[oid]["reason"] if oid in orders else "?"
        refund_reasons[r] = refund_reasons.get(r, 0) + 1
    reasons = {}
    for o in orders.values():
        if o["status"] == "CANCELLED":
            reasons[o["reason"]] = reasons.get(o["reason"], 0) + 1
    SUMMARY.update({"orders": len(orders), "confirmed": len(confirmed),
                    "cancelled": sum(reasons.values()), "reasons": reasons,
                    "charges": n_charges, "refunds": n_refunds, "refund_reasons": refund_reasons,
                    "calls": calls,
                    "coupon_confirmed": n_conf_red})
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--orders", type=int, default=60)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--gap", type=float, default=1.2, help="mean seconds between kills")
    ap.add_argument("--settle", type=float, default=240.0,
                    help="deadline for the sagas to settle (and for a client's retries)")
    ap.add_argument("--converge", type=float, default=30.0,
                    help="deadline for the invariants once every saga is done")
    ap.add_argument("--reservation-ttl", type=int, default=0,
                    help="ORDER_RESERVATION_TTL_S for 16 (short: stalled sagas see their"
                    " reservation expire, are refunded and end out_of_stock)")
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    # make's or the suite's SIGTERM: leave through the finally blocks (kill what we started)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(run(args))
    except Fail as e:
        print("FAIL (seed %d): %s" % (args.seed, e), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
