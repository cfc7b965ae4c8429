#!/usr/bin/python3
"""payment-service: a kill -9 while the provider is being called, then a restart.

  test-reconcile.py BUILD_DIR [PG_URL]     (with PG_URL the service runs on a new PostgreSQL db)

A payment write parks the payment in `processing` (a refund: `pending`), calls the provider
with no transaction open, then applies the answer. The test switch PAYMENT_TEST_KILL_AT makes
15 SIGKILL itself at the dangerous moment: right after the provider answered (`create`,
`capture`, `cancel`, `confirm`, `refund`: the provider did it, we recorded nothing) or right
before the call (`create_unsent`, `capture_unsent`). The client sees its connection dropped.
15 is restarted with PAYMENT_RECONCILE_AFTER_MS=300 and no client action; the test awaits (poll
with a deadline) the payment leaving `processing` for the provider's real state, and checks
that it was applied once, as the API would have: the version, one event of the kind in the
outbox, and, at the Stripe double (tests/doubles/stripe/stripe_double.py), one PaymentIntent
per payment, no second capture/cancel/confirm, the repeated create or refund answered from the
Idempotency-Key (`replayed`), and the refunded amount once.

  stripe: create (kill after the answer) -> succeeded, 1 intent, the client's retry with its key
          gets the same payment; capture_unsent -> back to requires_capture (the double shows
          no capture), then captured by the API; capture -> succeeded; cancel -> cancelled with
          the reason that was asked; confirm (3-D Secure) -> succeeded; refund -> succeeded,
          refunded once; create_unsent -> the reconciler makes the one charge; a webhook that
          settles a stuck payment before reconciliation (long grace) wins, and a later
          reconciling instance leaves it alone.
  test:   (the built-in simulator, which has no read: the call in flight is repeated with its
          key) create, a partial capture, refund_unsent and refund.
Standard library only.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import gravity_test as gt  # noqa: E402

DOUBLE = os.path.join(ROOT, "tests", "doubles", "stripe", "stripe_double.py")
PY = "/usr/bin/python3"
SANITIZER_MARKS = gt.SANITIZER_MARKS
GRACE_MS = "300"
passed = 0


fail = gt.fail


def ok(msg):
    global passed
    passed += 1
    print("ok - " + msg, flush=True)


def wait_for(what, cond, deadline=30.0):
    return gt.wait_for(what, cond, deadline)


def call(port, method, path, token=None, body=None, key=None, headers=None):
    """One request to 127.0.0.1:port -> (status, JSON body); status 0 when nothing answers."""
    h = dict(headers or {})
    if key:
        h["Idempotency-Key"] = key
    st, _, js = gt.request("http://127.0.0.1:%d%s" % (port, path), method, body, token, h,
                           timeout=60)
    return st, js


class Double:
    def __init__(self, tmp):
        self.pf = os.path.join(tmp, "double.port")
        self.log = open(os.path.join(tmp, "double.log"), "ab")
        self.proc = subprocess.Popen([PY, DOUBLE, "--port-file", self.pf], stdout=self.log,
                                     stderr=self.log)
        self.port = int(wait_for("double port", lambda: os.path.exists(self.pf)
                                 and open(self.pf).read().strip()))

    def get(self, path):
        return call(self.port, "GET", path)[1]

    def post(self, path, body):
        st, js = call(self.port, "POST", path, body=body)
        if st != 200:
            fail("double %s: %s %s" % (path, st, js))
        return js

    def calls(self, path, **match):
        cs = self.get("/_double/calls?path=" + urllib.parse.quote(path))["calls"]
        return [c for c in cs if all(c.get(k) == v for k, v in match.items())]

    def intents_of(self, pid):
        return [pi for pi in self.get("/_double/intents")["intents"]
                if pi["metadata"].get("payment_id") == pid]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Service:
    """One 15 database, started, killed and restarted over and over."""

    def __init__(self, build, tmp, name, jwks, pg, provider, double_port=None):
        self.build = build
        self.tmp = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.tmp, "data"))
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.pf = os.path.join(self.tmp, "port")
        env.update({"HOST": "127.0.0.1", "PORT": "0", "GR_PORT_FILE": self.pf,
                    "DATA_DIR": os.path.join(self.tmp, "data"), "JWKS_URL": "file://" + jwks,
                    "LOG_LEVEL": "warn", "CURSOR_SECRET": "t",
                    "EVENT_BUS_URL": "http://127.0.0.1:9",  # no bus: events stay in the outbox
                    "PAYMENT_PROVIDER": provider, "HTTP_THREADS": "8",
                    "PAYMENT_RECONCILE_AFTER_MS": GRACE_MS,
                    # a dead holder's Idempotency-Key lease lapses after 0.5 s, not 10 s
                    "GR_IDEM_LEASE_MS": "500"})
        env.pop("PAYMENT_TEST_KILL_AT", None)
        if provider == "stripe":
            env.update({"STRIPE_API_KEY": "sk_test_double",
                        "STRIPE_API_BASE": "http://127.0.0.1:%d" % double_port,
                        "STRIPE_WEBHOOK_SECRET": "whsec_double"})
        self.pg, self.dbname, self.sqlite = pg, None, None
        if pg:
            self.dbname = "gr_payrec_" + uuid.uuid4().hex[:8]
            subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", 'CREATE DATABASE "%s"' % self.dbname],
                           check=True, stdout=subprocess.DEVNULL)
            u = urllib.parse.urlsplit(pg)
            self.dburl = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + self.dbname, u.query,
                                                  u.fragment))
        else:
            self.sqlite = os.path.join(self.tmp, "data", "pay.db")
            self.dburl = "sqlite://" + self.sqlite
        env["DATABASE_URL"] = self.dburl
        self.env = env
        self.logpath = os.path.join(self.tmp, "log")
        self.proc = None
        self.port = None

    def start(self, kill_at=None, **extra):
        env = dict(self.env)
        env.update(extra)
        if kill_at:
            env["PAYMENT_TEST_KILL_AT"] = kill_at
        if os.path.exists(self.pf):
            os.unlink(self.pf)
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen([os.path.join(self.build, "bin", "15-payment-service")],
                                         env=env, stdout=log, stderr=log)
        self.port = int(wait_for("service port", lambda: os.path.exists(self.pf)
                                 and open(self.pf).read().strip()))
        wait_for("/ready", lambda: call(self.port, "GET", "/ready")[0] == 200)
        return self.port

    def killed(self, what):
        """The request @what ran into the kill switch: the process died of SIGKILL."""
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("%s: PAYMENT_TEST_KILL_AT did not kill the service" % what)
        if rc != -signal.SIGKILL:
            fail("%s: the service exited with %s, not SIGKILL" % (what, rc))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                fail("service did not drain")
            if rc != 0:
                fail("service exited with %s" % rc)

    def check_log(self):
        log = open(self.logpath, errors="replace").read() if os.path.exists(self.logpath) else ""
        for m in SANITIZER_MARKS:
            if m in log:
                print(log[-4000:])
                fail("sanitizer report in the service log")

    def drop(self):
        if self.dbname:
            subprocess.run(["psql", "-X", "-q", "-d", self.pg, "-c",
                            'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.dbname],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def events(self, pid, etype):
        """How many @etype events for payment @pid wait in the outbox (no bus in this test)."""
        if self.sqlite:
            db = sqlite3.connect("file:%s?mode=ro" % self.sqlite, uri=True, timeout=10)
            try:
                return db.execute("SELECT COUNT(*) FROM outbox WHERE type = ? AND subject = ?",
                                  (etype, pid)).fetchone()[0]
            finally:
                db.close()
        # psql interpolates :'v' (quoted as a literal) in what it reads, not in -c
        out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.dburl,
                              "-v", "t=" + etype, "-v", "s=" + pid],
                             input=b"SELECT COUNT(*) FROM outbox WHERE type = :'t' AND subject = :'s';\n",
                             check=True, stdout=subprocess.PIPE)
        return int(out.stdout.decode().strip())


def pay(port, token, key, **body):
    b = {"amount": 1000, "currency": "usd", "payment_method_id": "tok_visa"}
    b.update(body)
    return call(port, "POST", "/api/v1/payments", token, b, key=key)


def retry(what, fn, deadline=30.0):
    """A client's retry: 409 idempotency_in_flight (the killed holder's lease) is tried again."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        st, js = fn()
        if not (st == 409 and isinstance(js, dict) and
                js.get("type", "").endswith("idempotency_in_flight")):
            return st, js
        time.sleep(0.05)
    fail("%s: still 409 idempotency_in_flight" % what)


def expect(what, got, want):
    if got != want:
        fail("%s: %r, want %r" % (what, got, want))


def stripe_flow(build, tmp, jwks, pg, mint):
    dbl = Double(tmp)
    svc = Service(build, tmp, "stripe", jwks, pg, "stripe", dbl.port)
    try:
        admin = mint("super_admin", "*")

        def get(pid):
            return call(svc.port, "GET", "/api/v1/payments/" + pid, admin)[1]

        def settles(pid, status, deadline=30):
            return wait_for("payment %s to become %s" % (pid, status),
                            lambda: (lambda p: p if p.get("status") == status else None)(get(pid)),
                            deadline)

        def crash(what, st, js):
            if st != 0:
                fail("%s: the request answered %s %s instead of dying with 15" % (what, st, js))
            svc.killed(what)

        # 1. kill -9 right after the provider answered the create call
        ua = mint("customer")
        port = svc.start("create")
        crash("create", *pay(port, ua, "a-1"))
        port = svc.start("capture_unsent")
        hist = wait_for("the stuck payment in history", lambda: call(
            port, "GET", "/api/v1/payments/history", ua)[1]["data"])
        pid = hist[0]["id"]
        p = settles(pid, "succeeded")
        expect("create: version", p["version"], 2)
        expect("create: amount_captured", p["amount_captured"], 1000)
        pis = dbl.intents_of(pid)
        creates = dbl.calls("/v1/payment_intents", idempotency_key=pid)
        if len(pis) != 1 or pis[0]["status"] != "succeeded" or p["provider_ref"] != pis[0]["id"]:
            fail("create: intents at the double %s" % pis)
        if len(creates) != 2 or [c["replayed"] for c in creates] != [False, True]:
            fail("create: the reconciler must resend the create with the same key: %s" % creates)
        expect("create: payment.completed events", svc.events(pid, "payment.completed"), 1)
        st, again = retry("create retry", lambda: pay(port, ua, "a-1"))
        if st != 201 or again["id"] != pid or again["status"] != "succeeded" or \
                len(dbl.intents_of(pid)) != 1:
            fail("create: the client's retry: %s %s" % (st, again))
        ok("kill -9 after the create call: restart -> succeeded (v2), 1 PaymentIntent, the "
           "resent create was a replay of its key, 1 payment.completed; the client's retry "
           "gets the same payment")

        # 2. kill -9 before the capture call: the provider never saw it -> back to requires_capture
        ub = mint("customer")
        st, p2 = pay(port, ub, "b-1", capture_method="manual")
        if st != 201 or p2["status"] != "requires_capture":
            fail("manual payment: %s %s" % (st, p2))
        crash("capture_unsent", *call(port, "POST", "/api/v1/payments/%s/capture" % p2["id"], admin))
        port = svc.start("capture")
        p = settles(p2["id"], "requires_capture")
        expect("capture_unsent: version", p["version"], 4)
        if dbl.calls("/v1/payment_intents/{id}/capture", idempotency_key="capture-" + p2["id"]):
            fail("capture_unsent: a capture reached the double")
        if not dbl.calls("/v1/payment_intents/{id}", id=p2["provider_ref"]):
            fail("capture_unsent: the reconciler did not ask the double")
        expect("capture_unsent: payment.authorized events",
               svc.events(p2["id"], "payment.authorized"), 1)
        ok("kill -9 before the capture call: restart -> the double still says requires_capture, "
           "the payment goes back to requires_capture (no capture, no second event)")

        # 3. kill -9 after the capture call (the same payment, captured through the API now)
        crash("capture", *call(port, "POST", "/api/v1/payments/%s/capture" % p2["id"], admin))
        port = svc.start("cancel")
        p = settles(p2["id"], "succeeded")
        expect("capture: amount_captured", p["amount_captured"], 1000)
        expect("capture: version", p["version"], 6)
        expect("capture: capture calls",
               len(dbl.calls("/v1/payment_intents/{id}/capture",
                             idempotency_key="capture-" + p2["id"])), 1)
        expect("capture: payment.completed events", svc.events(p2["id"], "payment.completed"), 1)
        ok("kill -9 after the capture call: restart -> succeeded from the double's state, "
           "1 capture call, 1 payment.completed")

        # 4. kill -9 after the cancel call: the reason asked for is the one applied
        st, p3 = pay(port, ub, "b-2", capture_method="manual")
        crash("cancel", *call(port, "POST", "/api/v1/payments/%s/cancel" % p3["id"], admin,
                              {"cancellation_reason": "duplicate"}))
        port = svc.start("confirm")
        p = settles(p3["id"], "cancelled")
        expect("cancel: cancellation_reason", p["cancellation_reason"], "duplicate")
        expect("cancel: cancel calls", len(dbl.calls("/v1/payment_intents/{id}/cancel",
                                                     idempotency_key="cancel-" + p3["id"])), 1)
        expect("cancel: payment.cancelled events", svc.events(p3["id"], "payment.cancelled"), 1)
        ok("kill -9 after the cancel call: restart -> cancelled (reason 'duplicate' kept), "
           "1 cancel call, 1 payment.cancelled")

        # 5. kill -9 after the confirm call (3-D Secure)
        st, p4 = pay(port, ub, "b-3", payment_method_id="tok_threeDSecureRequired")
        if p4["status"] != "requires_action":
            fail("3ds: %s" % p4)
        crash("confirm", *call(port, "POST", "/api/v1/payments/%s/confirm" % p4["id"], ub))
        port = svc.start("refund")
        p = settles(p4["id"], "succeeded")
        expect("confirm: confirm calls", len(dbl.calls("/v1/payment_intents/{id}/confirm",
                                                       idempotency_key="confirm-" + p4["id"])), 1)
        expect("confirm: payment.completed events", svc.events(p4["id"], "payment.completed"), 1)
        ok("kill -9 after the confirm call: restart -> succeeded, 1 confirm call, "
           "1 payment.completed")

        # 6. kill -9 after the refund call: the pending refund is sent again with its key
        crash("refund", *call(port, "POST", "/api/v1/payments/%s/refund" % p4["id"], admin,
                              {"amount": 600, "reason": "requested_by_customer"}, key="rf-1"))
        port = svc.start("create_unsent")
        wait_for("payment.refunded", lambda: svc.events(p4["id"], "payment.refunded") == 1)
        refunds = dbl.calls("/v1/refunds")
        if [c["replayed"] for c in refunds] != [False, True] or \
                len({c["idempotency_key"] for c in refunds}) != 1:
            fail("refund: calls at the double %s" % refunds)
        expect("refund: refunded at the double", dbl.intents_of(p4["id"])[0]["refunded"], 600)
        st, rf = retry("refund retry", lambda: call(
            port, "POST", "/api/v1/payments/%s/refund" % p4["id"], admin,
            {"amount": 600, "reason": "requested_by_customer"}, key="rf-1"))
        if st != 201 or rf["status"] != "succeeded" or rf["amount"] != 600 or \
                rf["id"] != refunds[0]["idempotency_key"]:
            fail("refund: the client's retry: %s %s" % (st, rf))
        expect("refund: amount_refunded", get(p4["id"])["amount_refunded"], 600)
        expect("refund: refund calls", len(dbl.calls("/v1/refunds")), 2)
        ok("kill -9 after the refund call: restart -> the refund is resent with its key "
           "(a replay at the double), succeeded, 600 refunded once, 1 payment.refunded")

        # 7. kill -9 before the create call: the reconciler makes the one charge
        uc = mint("customer")
        crash("create_unsent", *pay(port, uc, "c-1"))
        port = svc.start("capture")
        hist = wait_for("the stuck payment in history", lambda: call(
            port, "GET", "/api/v1/payments/history", uc)[1]["data"])
        pid = hist[0]["id"]
        settles(pid, "succeeded")
        creates = dbl.calls("/v1/payment_intents", idempotency_key=pid)
        if [c["replayed"] for c in creates] != [False] or len(dbl.intents_of(pid)) != 1:
            fail("create_unsent: %s" % creates)
        expect("create_unsent: payment.completed events", svc.events(pid, "payment.completed"), 1)
        ok("kill -9 before the create call: restart -> the reconciler's create (same key) is the "
           "one charge: succeeded, 1 PaymentIntent")

        # 8. a webhook settles a stuck payment first; reconciliation later leaves it alone
        st, p5 = pay(port, ub, "b-5", capture_method="manual")
        crash("capture (webhook)", *call(port, "POST",
                                         "/api/v1/payments/%s/capture" % p5["id"], admin))
        port = svc.start("cancel", PAYMENT_RECONCILE_AFTER_MS="600000")
        expect("webhook: still processing under a long grace", get(p5["id"])["status"],
               "processing")
        dbl.post("/_double/config", {"webhook_url":
                                     "http://127.0.0.1:%d/api/v1/payments/webhooks/stripe" % port})
        r = dbl.post("/_double/send_webhook", {"type": "payment_intent.succeeded",
                                               "payment_intent": p5["provider_ref"]})
        if r["statuses"] != [200]:
            fail("webhook: %s" % r)
        p = get(p5["id"])
        if p["status"] != "succeeded" or p["version"] != 4:
            fail("webhook: %s" % p)
        # a marker the next instance reconciles: once it is, that pass has run
        st, p6 = pay(port, ub, "b-6", capture_method="manual")
        crash("cancel (marker)", *call(port, "POST", "/api/v1/payments/%s/cancel" % p6["id"], admin))
        port = svc.start()
        settles(p6["id"], "cancelled")
        p_after = get(p5["id"])
        if p_after != p:
            fail("webhook: reconciliation changed a settled payment: %s -> %s" % (p, p_after))
        expect("webhook: payment.completed events", svc.events(p5["id"], "payment.completed"), 1)
        expect("webhook: capture calls", len(dbl.calls("/v1/payment_intents/{id}/capture",
                                                       idempotency_key="capture-" + p5["id"])), 1)
        ok("a webhook settles a stuck payment before reconciliation: applied once (v4, "
           "1 payment.completed); a later reconciling instance leaves it alone")
        svc.stop()
    finally:
        if svc.proc and svc.proc.poll() is None:
            svc.proc.kill()
        svc.check_log()
        svc.drop()
        dbl.stop()


def test_provider_flow(build, tmp, jwks, pg, mint):
    svc = Service(build, tmp, "simulator", jwks, pg, "test")
    try:
        admin = mint("super_admin", "*")
        user = mint("customer")

        def get(pid):
            return call(svc.port, "GET", "/api/v1/payments/" + pid, admin)[1]

        def settles(pid, status):
            return wait_for("payment %s to become %s" % (pid, status),
                            lambda: (lambda p: p if p.get("status") == status else None)(get(pid)))

        def crash(what, st, js):
            if st != 0:
                fail("%s: the request answered %s %s instead of dying with 15" % (what, st, js))
            svc.killed(what)

        port = svc.start("create")
        crash("test create", *pay(port, user, "t-1"))
        port = svc.start("capture")
        pid = wait_for("the stuck payment", lambda: call(
            port, "GET", "/api/v1/payments/history", user)[1]["data"])[0]["id"]
        p = settles(pid, "succeeded")
        if p["version"] != 2 or not p["provider_ref"].startswith("pi_test_"):
            fail("test create: %s" % p)
        expect("test create: payment.completed", svc.events(pid, "payment.completed"), 1)

        st, pm = pay(port, user, "t-2", capture_method="manual")
        crash("test capture", *call(port, "POST", "/api/v1/payments/%s/capture" % pm["id"], admin,
                                    {"amount_to_capture": 700}))
        port = svc.start("refund")
        p = settles(pm["id"], "succeeded")
        expect("test capture: amount_captured", p["amount_captured"], 700)
        expect("test capture: payment.completed", svc.events(pm["id"], "payment.completed"), 1)

        crash("test refund_unsent", *call(port, "POST", "/api/v1/payments/%s/refund" % pm["id"],
                                          admin, {"amount": 300, "reason": "duplicate"},
                                          key="t-rf0"))
        port = svc.start("refund")
        wait_for("payment.refunded", lambda: svc.events(pm["id"], "payment.refunded") == 1)
        expect("test refund_unsent: amount_refunded", get(pm["id"])["amount_refunded"], 300)
        crash("test refund", *call(port, "POST", "/api/v1/payments/%s/refund" % pm["id"], admin,
                                   {"reason": "requested_by_customer"}, key="t-rf"))
        port = svc.start()
        wait_for("payment.refunded", lambda: svc.events(pm["id"], "payment.refunded") == 2)
        st, rf = retry("test refund retry", lambda: call(
            port, "POST", "/api/v1/payments/%s/refund" % pm["id"], admin,
            {"reason": "requested_by_customer"}, key="t-rf"))
        if st != 201 or rf["status"] != "succeeded" or rf["amount"] != 400:
            fail("test refund: retry %s %s" % (st, rf))
        expect("test refund: amount_refunded", get(pm["id"])["amount_refunded"], 700)
        expect("test refund: payment.refunded", svc.events(pm["id"], "payment.refunded"), 2)
        ok("PAYMENT_PROVIDER=test: kill -9 after create, after capture (700 of 1000), before a "
           "300 refund and after the 400 remainder's -> restart repeats each call with its key: "
           "succeeded, captured 700, refunded 300 + 400 once each")
        svc.stop()
    finally:
        if svc.proc and svc.proc.poll() is None:
            svc.proc.kill()
        svc.check_log()
        svc.drop()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = os.path.abspath(sys.argv[1])
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-pay-reconcile-")
    minter = gt.Minter(build, tmp)
    jwks = minter.jwks

    def mint(roles, perms=""):
        return minter.token(str(uuid.uuid4()), perms, roles, ttl=3600)

    stripe_flow(build, tmp, jwks, pg, mint)
    test_provider_flow(build, tmp, jwks, pg, mint)
    shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, 0 failed" % passed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
