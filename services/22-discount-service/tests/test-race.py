#!/usr/bin/python3
"""discount-service reservation limits under concurrency (SERVICES §22 Rules).

  test-race.py BUILD_DIR [PG_URL]    (with PG_URL the service runs on a new PostgreSQL database)

Starts 22-discount-service on a free port and checks:
  1. 100 parallel reservations (100 orders, 100 customers) of a coupon with max_redemptions 10:
     exactly 10 answer 201 and 90 answer 409 coupon_exhausted; the coupon counts 10 and lists
     10 reserved redemptions;
  2. 50 parallel reservations by one customer (per_customer_limit 2, 50 orders): exactly 2;
  3. releasing one of the 10 frees its slot: of 20 more parallel reservations exactly one wins;
  4. expiry: the service restarted on the same database with DISCOUNT_RESERVATION_TTL_S=1;
     a coupon with 2 slots, both reserved, a third is 409 until the reservations run out, then
     succeeds; the expired ones read as released with release_reason "expired" and each
     published coupon.released (outbox), and the coupon counts the new reservation only.
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
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

DEADLINE = 20.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
BIN = "22-discount-service"


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    fail("timed out waiting for " + what)


class Svc:
    def __init__(self, build, tmp, env):
        self.bin = os.path.join(build, "bin", BIN)
        self.dir = os.path.join(tmp, BIN)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = None
        self.proc = None
        self.log = open(os.path.join(self.dir, "log"), "ab")

    def start(self, extra=None):
        env = dict(self.env)
        env.update(extra or {})
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": "0", "GR_PORT_FILE": pf, "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for("port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for("/ready", lambda: self.req("GET", "/ready")[0] == 200)

    def req(self, method, path, body=None, token=None):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data,
                                   method=method)
        if data is not None:
            r.add_header("Content-Type", "application/json")
        if token:
            r.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(r, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("the service did not drain on SIGTERM")
            if rc != 0:
                fail("the service exited with status %d" % rc)
        self.proc = None


class Minter:
    """One ES256 key and JWKS; tokens through build/bin/gr-jwt."""

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


def pg_database(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, stdout=subprocess.DEVNULL)
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pg_drop(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c",
                    'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parallel(n, fn):
    """Runs fn(i) for i in 0..n-1 on n threads released together; returns the results."""
    barrier = threading.Barrier(n)
    out = [None] * n

    def run(i):
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-discount-race-")
    mint = Minter(build, tmp)
    admin = mint.token(str(uuid.uuid4()), "*", "super_admin")
    service = mint.token(str(uuid.uuid4()), "coupons:read,coupon-redemptions:write", "service")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks, "LOG_LEVEL": "info",
                "CURSOR_SECRET": "t"})
    db = None
    expect_released = -1
    if pg:
        db = "gr_disc_" + uuid.uuid4().hex[:8]
        env["DATABASE_URL"] = pg_database(pg, db)
    else:
        env["DATABASE_URL"] = "sqlite://" + os.path.join(tmp, "discount.db")
    svc = Svc(build, tmp, env)
    svc.start({"DISCOUNT_RESERVATION_TTL_S": "3600"})
    line = [{"product_id": str(uuid.uuid4()), "quantity": 1,
             "unit_price": {"amount": 1000, "currency": "usd"}}]

    def coupon(code, **kw):
        body = {"code": code, "kind": "percent", "percent_off_bp": 1000}
        body.update(kw)
        st, c = svc.req("POST", "/api/v1/coupons", body, admin)
        if st != 201:
            fail("create coupon %s: %s %s" % (code, st, c))
        return c

    def reserve(code, user=None, order=None):
        return svc.req("POST", "/api/v1/coupon-redemptions",
                       {"code": code, "order_id": order or str(uuid.uuid4()),
                        "user_id": user or str(uuid.uuid4()), "currency": "usd", "lines": line},
                       service)

    def tally(results):
        counts = {}
        for st, body in results:
            key = st if st != 409 else "409 " + body.get("type", "").rsplit(":", 1)[-1]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def redeemed(cid):
        st, c = svc.req("GET", "/api/v1/coupons/" + cid, token=admin)
        if st != 200:
            fail("get coupon: %s %s" % (st, c))
        return c["redeemed_count"]

    def redemptions(cid, status):
        st, page = svc.req("GET", "/api/v1/coupons/%s/redemptions?status=%s&limit=100"
                           % (cid, status), token=admin)
        if st != 200:
            fail("list redemptions: %s %s" % (st, page))
        return page["data"]

    try:
        # 1. 100 parallel reservations of 10 slots.
        c = coupon("RACE10", max_redemptions=10)
        res = parallel(100, lambda i: reserve("RACE10"))
        counts = tally(res)
        if counts != {201: 10, "409 coupon_exhausted": 90}:
            fail("100 parallel reservations of 10 slots: %s" % counts)
        if redeemed(c["id"]) != 10 or len(redemptions(c["id"], "reserved")) != 10:
            fail("after the race the coupon counts %d" % redeemed(c["id"]))
        print("ok: 100 parallel reservations of 10 slots -> exactly 10 (%s)" % counts)

        # 2. one customer, 50 parallel orders, per_customer_limit 2.
        c2 = coupon("PERCUST", per_customer_limit=2)
        user = str(uuid.uuid4())
        counts2 = tally(parallel(50, lambda i: reserve("PERCUST", user=user)))
        if counts2 != {201: 2, "409 coupon_limit_reached": 48}:
            fail("50 parallel reservations by one customer, limit 2: %s" % counts2)
        if len(redemptions(c2["id"], "reserved")) != 2:
            fail("the customer holds more than 2 reservations")
        print("ok: 50 parallel reservations by one customer with limit 2 -> exactly 2")

        # 3. a release frees one slot: 20 more racers, exactly one wins.
        won = [b for st, b in res if st == 201]
        st, r = svc.req("POST", "/api/v1/coupon-redemptions/%s/release" % won[0]["id"], None,
                        service)
        if st != 200 or r["status"] != "released":
            fail("release: %s %s" % (st, r))
        if redeemed(c["id"]) != 9:
            fail("a release did not give the slot back")
        counts3 = tally(parallel(20, lambda i: reserve("RACE10")))
        if counts3 != {201: 1, "409 coupon_exhausted": 19}:
            fail("20 parallel reservations of the released slot: %s" % counts3)
        if redeemed(c["id"]) != 10:
            fail("the coupon counts %d after the freed slot was taken" % redeemed(c["id"]))
        print("ok: a release frees its slot, exactly one of 20 racers takes it")
        svc.stop()

        # 4. expiry frees slots: reservations that live 1 s.
        svc.start({"DISCOUNT_RESERVATION_TTL_S": "1"})
        c4 = coupon("SHORT", max_redemptions=2)
        first = [reserve("SHORT") for _ in range(2)]
        if [st for st, _ in first] != [201, 201]:
            fail("reserving 2 of 2: %s" % first)
        st, body = reserve("SHORT")
        if st != 409:
            fail("a third reservation before expiry: %s %s" % (st, body))
        st, _ = wait_for("an expired reservation to free its slot",
                         lambda: (lambda r: r if r[0] == 201 else None)(reserve("SHORT")), 15)

        def swept():
            # A reservation attempt releases whatever ran out (it may also take a slot).
            reserve("SHORT")
            return all(svc.req("GET", "/api/v1/coupon-redemptions/" + b["id"],
                               token=service)[1]["status"] == "released" for _, b in first)
        wait_for("both first reservations to be released", swept, 15)
        for _, b in first:
            st, r = svc.req("GET", "/api/v1/coupon-redemptions/" + b["id"], token=service)
            if st != 200 or r["status"] != "released" or r["release_reason"] != "expired":
                fail("an expired reservation reads %s %s" % (st, r))
            st, r = svc.req("POST", "/api/v1/coupon-redemptions/%s/confirm" % b["id"], None,
                            service)
            if st != 409 or not r["type"].endswith(":redemption_released"):
                fail("confirming an expired reservation: %s %s" % (st, r))
        released = redemptions(c4["id"], "released")
        if any(r["release_reason"] != "expired" for r in released):
            fail("released without expiring: %s" % released)
        if redeemed(c4["id"]) != len(redemptions(c4["id"], "reserved")):
            fail("the counter disagrees with the reservations after expiry")
        expect_released = 1 + len(released)  # the release of 3, then one per expired one
        print("ok: expired reservations free their slots and read as released (expired)")
    finally:
        svc.stop()
        if pg:
            outbox = subprocess.run(["psql", "-X", "-qAt", "-d", env["DATABASE_URL"], "-c",
                                     "SELECT count(*) FROM outbox WHERE type = 'coupon.released'"],
                                    stdout=subprocess.PIPE, check=False).stdout.decode().strip()
            pg_drop(pg, db)
        else:
            con = sqlite3.connect("file:%s?mode=ro" % os.path.join(tmp, "discount.db"), uri=True)
            outbox = str(con.execute(
                "SELECT count(*) FROM outbox WHERE type = 'coupon.released'").fetchone()[0])
            con.close()
    if outbox != str(expect_released):
        fail("coupon.released events in the outbox: %s, expected %d" % (outbox, expect_released))
    svc.log.close()
    text = open(os.path.join(svc.dir, "log"), errors="replace").read()
    if any(m in text for m in SANITIZER_MARKS):
        fail("sanitizer report in the log (%s)" % svc.dir)
    shutil.rmtree(tmp, ignore_errors=True)
    print("all discount-service race checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
