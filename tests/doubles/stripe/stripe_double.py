#!/usr/bin/python3
"""stripe_double.py - a local TEST DOUBLE of the parts of Stripe's API that payment-service
uses. It is not Stripe and never moves money: every object it returns has livemode false.

  stripe_double.py --port-file FILE [--api-key sk_test_double] [--webhook-url URL]
                   [--webhook-secret whsec_double]

Binds 127.0.0.1 on a free port (written to --port-file). Speaks Stripe's wire format for:
  POST /v1/payment_methods               type=card, card[token]=tok_…       -> pm_…
  POST /v1/payment_intents               amount, currency, confirm=true, capture_method,
                                         payment_method | payment_method_data[card][token],
                                         metadata[payment_id]
  POST /v1/payment_intents/{id}/confirm|capture|cancel
  GET  /v1/payment_intents/{id}          the intent as it is now (a read: changes nothing)
  POST /v1/refunds                       payment_intent, amount
Requests need `Authorization: Bearer <api key>`; `Idempotency-Key` replays the first answer
(as Stripe does: a create sent again with the key returns the intent the first one made, and
makes no second one), and concurrent requests with one key are serialised. The first request
is carried out even when its client is gone before the answer (a killed caller).
Known tokens: tok_visa (approved), tok_chargeDeclined (402 card_declined),
tok_threeDSecureRequired (requires_action until confirmed).

Webhooks: when --webhook-url is set, state changes are sent there as signed events
(Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.payload")): mode "off" (default), "after"
(sent from a thread after the API reply) or "before" (sent, and answered, before the API reply,
like an event that overtakes the response).

Control endpoints (not Stripe's; for tests):
  GET  /_double/calls[?path=/v1/payment_intents]  {"count": n, "calls": [{method, path, …,
                                                  "replayed": the Idempotency-Key's stored answer}]}
                                                  (GET /v1/payment_intents/{id} is recorded too)
  GET  /_double/intents                           {"intents": [every PaymentIntent made, with
                                                  "refunded": the amount refunded]}
  GET  /_double/webhooks                          every webhook sent and the answer status
  POST /_double/config   {"webhooks": "off"|"after"|"before", "webhook_url"?: URL,
                          "fail_next"?: n}   (n: the next n Stripe calls answer 500 api_error)
  POST /_double/send_webhook {"type": …, "payment_intent": id, "id"?: evt id,
                              "age_s"?: seconds in the past, "times"?: n, "secret"?: …}
       -> {"statuses": [...], "id": evt id}   (duplicates: same id sent n times)
  POST /_double/reset                             forgets calls (objects stay)
Standard library only.
"""

import argparse
import hashlib
import hmac
import http.client
import json
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = {
    "tok_visa": ("4242", "fp_dbl_visa_4242"),
    "tok_chargeDeclined": ("0002", "fp_dbl_visa_0002"),
    "tok_threeDSecureRequired": ("3220", "fp_dbl_visa_3220"),
}


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.calls = []
        self.webhooks = []
        self.pms = {}        # pm id -> token
        self.intents = {}    # pi id -> dict
        self.refunded = {}   # pi id -> amount refunded
        self.idem = {}       # (key, path) -> (status, body)
        self.idem_locks = {}
        self.mode = "off"
        self.fail_next = 0   # answer the next n Stripe calls with 500 (fault injection)


def new_id(prefix):
    return prefix + uuid.uuid4().hex[:24]


def sign(secret, payload, t):
    mac = hmac.new(secret.encode(), ("%d." % t).encode() + payload, hashlib.sha256).hexdigest()
    return "t=%d,v1=%s" % (t, mac)


def deliver(st, event, age_s=0, secret=None):
    """POSTs one signed event to the webhook URL; returns the HTTP status (0 = unreachable)."""
    url = st.args.webhook_url
    if not url:
        return 0
    payload = json.dumps(event).encode()
    t = int(time.time()) - int(age_s)
    u = urllib.parse.urlsplit(url)
    status = 0
    try:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("POST", u.path, body=payload,
                  headers={"Content-Type": "application/json",
                           "Stripe-Signature": sign(secret or st.args.webhook_secret, payload, t)})
        r = c.getresponse()
        r.read()
        status = r.status
        c.close()
    except OSError:
        status = 0
    with st.lock:
        st.webhooks.append({"id": event["id"], "type": event["type"], "status": status,
                            "age_s": age_s})
    return status


def event_for(pi, etype, evt_id=None):
    return {"id": evt_id or new_id("evt_"), "object": "event", "type": etype,
            "livemode": False, "created": int(time.time()),
            "data": {"object": dict(pi)}}


EVENT_OF = {"succeeded": "payment_intent.succeeded",
            "requires_capture": "payment_intent.amount_capturable_updated",
            "requires_action": "payment_intent.requires_action",
            "canceled": "payment_intent.canceled"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    st = None

    def log_message(self, fmt, *a):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the caller is gone (killed): the work is done

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # ---- control ------------------------------------------------------------------------
    def do_GET(self):
        st = self.st
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        if u.path == "/_double/calls":
            with st.lock:
                calls = [c for c in st.calls
                         if "path" not in q or c["path"] == q["path"][0]]
                self.reply(200, {"count": len(calls), "calls": calls})
            return
        if u.path == "/_double/intents":
            with st.lock:
                self.reply(200, {"intents": [dict(pi, refunded=st.refunded.get(k, 0))
                                             for k, pi in st.intents.items()]})
            return
        if u.path == "/_double/webhooks":
            with st.lock:
                self.reply(200, {"webhooks": list(st.webhooks)})
            return
        if u.path.startswith("/v1/payment_intents/"):
            if not self.authorised():
                return
            with st.lock:
                st.calls.append({"method": "GET", "path": "/v1/payment_intents/{id}",
                                 "id": u.path.rsplit("/", 1)[1], "time": time.time()})
                pi = st.intents.get(u.path.rsplit("/", 1)[1])
            if not pi:
                self.reply(404, {"error": {"type": "invalid_request_error",
                                           "code": "resource_missing"}})
            else:
                self.reply(200, pi)
            return
        self.reply(404, {"error": {"type": "invalid_request_error", "message": "no such route"}})

    def control(self, path, raw):
        st = self.st
        body = json.loads(raw or b"{}")
        if path == "/_double/config":
            st.mode = body.get("webhooks", st.mode)
            st.args.webhook_url = body.get("webhook_url", st.args.webhook_url)
            st.fail_next = int(body.get("fail_next", st.fail_next))
            self.reply(200, {"webhooks": st.mode, "webhook_url": st.args.webhook_url})
        elif path == "/_double/reset":
            with st.lock:
                st.calls.clear()
                st.webhooks.clear()
            self.reply(200, {})
        elif path == "/_double/send_webhook":
            with st.lock:
                pi = st.intents.get(body.get("payment_intent"))
            if not pi:
                self.reply(404, {"error": "unknown payment_intent"})
                return
            ev = event_for(pi, body["type"], body.get("id"))
            statuses = [deliver(st, ev, body.get("age_s", 0), body.get("secret"))
                        for _ in range(int(body.get("times", 1)))]
            self.reply(200, {"statuses": statuses, "id": ev["id"]})
        else:
            self.reply(404, {})

    # ---- Stripe ---------------------------------------------------------------------------
    def authorised(self):
        if self.headers.get("Authorization") != "Bearer " + self.st.args.api_key:
            self.reply(401, {"error": {"type": "invalid_request_error",
                                       "message": "Invalid API Key provided"}})
            return False
        return True

    def do_POST(self):
        st = self.st
        raw = self.body()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_double/"):
            self.control(path, raw)
            return
        if not self.authorised():
            return
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(), keep_blank_values=True).items()}
        key = self.headers.get("Idempotency-Key")
        rec = {"method": "POST", "path": path if not path.startswith("/v1/payment_intents/")
               else "/v1/payment_intents/{id}/" + path.rsplit("/", 1)[1],
               "idempotency_key": key, "form": form, "time": time.time(), "replayed": False}
        with st.lock:
            st.calls.append(rec)
            lk = st.idem_locks.setdefault(key, threading.Lock()) if key else None
            fault = st.fail_next > 0
            if fault:
                st.fail_next -= 1
        if fault:
            self.reply(500, {"error": {"type": "api_error", "message": "injected by the double"}})
            return
        if lk:
            with lk:
                with st.lock:
                    done = st.idem.get((key, path))
                if done:
                    with st.lock:
                        rec["replayed"] = True
                    self.reply(done[0], done[1])
                    return
                status, obj, after = self.stripe(path, form)
                with st.lock:
                    st.idem[(key, path)] = (status, obj)
        else:
            status, obj, after = self.stripe(path, form)
        if after and st.mode == "before":
            after()
        self.reply(status, obj)
        if after and st.mode == "after":
            threading.Thread(target=after, daemon=True).start()

    def stripe(self, path, form):
        """-> (status, body, webhook sender or None)."""
        st = self.st
        err = lambda status, code, **kw: (status, {"error": dict({"type": "invalid_request_error",
                                                                  "code": code}, **kw)}, None)
        if path == "/v1/payment_methods":
            tok = form.get("card[token]")
            if tok not in TOKENS:
                return err(400, "token_invalid")
            pm = new_id("pm_")
            with st.lock:
                st.pms[pm] = tok
            return 200, {"id": pm, "object": "payment_method", "type": "card", "livemode": False,
                         "card": {"brand": "visa", "last4": TOKENS[tok][0],
                                  "fingerprint": TOKENS[tok][1]}}, None
        if path == "/v1/payment_intents":
            tok = form.get("payment_method_data[card][token]")
            if not tok:
                with st.lock:
                    tok = st.pms.get(form.get("payment_method", ""))
            if tok not in TOKENS:
                return err(400, "resource_missing")
            try:
                amount = int(form["amount"])
            except (KeyError, ValueError):
                return err(400, "parameter_invalid_integer")
            pi = {"id": new_id("pi_"), "object": "payment_intent", "amount": amount,
                  "currency": form.get("currency"), "livemode": False,
                  "capture_method": form.get("capture_method", "automatic"),
                  "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
                  "amount_received": 0, "amount_capturable": 0, "last_payment_error": None,
                  "status": "requires_payment_method"}
            if tok == "tok_chargeDeclined":
                pi["last_payment_error"] = {"type": "card_error", "code": "card_declined",
                                            "decline_code": "generic_decline"}
                with st.lock:
                    st.intents[pi["id"]] = pi
                ev = event_for(pi, "payment_intent.payment_failed")
                return 402, {"error": {"type": "card_error", "code": "card_declined",
                                       "decline_code": "generic_decline",
                                       "payment_intent": pi}}, lambda: deliver(st, ev)
            if tok == "tok_threeDSecureRequired":
                pi["status"] = "requires_action"
                pi["next_action"] = {"type": "use_stripe_sdk"}
            else:
                self.approve(pi)
            with st.lock:
                st.intents[pi["id"]] = pi
            return 200, pi, self.sender(pi)
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "payment_intents":
            with st.lock:
                pi = st.intents.get(parts[3])
                if not pi:
                    return err(404, "resource_missing")
                verb, cur = parts[4], pi["status"]
                if verb == "confirm" and cur == "requires_action":
                    pi.pop("next_action", None)
                    self.approve(pi)
                elif verb == "capture" and cur == "requires_capture":
                    amt = int(form.get("amount_to_capture") or pi["amount"])
                    pi.update(status="succeeded", amount_received=amt, amount_capturable=0)
                elif verb == "cancel" and cur in ("requires_payment_method", "requires_action",
                                                  "requires_capture"):
                    pi.update(status="canceled", amount_capturable=0,
                              cancellation_reason="requested_by_customer")
                else:
                    return err(400, "payment_intent_unexpected_state")
                snap = dict(pi)
            return 200, snap, self.sender(snap)
        if path == "/v1/refunds":
            with st.lock:
                pi = st.intents.get(form.get("payment_intent", ""))
                if not pi or pi["status"] != "succeeded":
                    return err(400, "charge_not_refundable")
                amt = int(form.get("amount") or pi["amount_received"])
                done = st.refunded.get(pi["id"], 0)
                if done + amt > pi["amount_received"]:
                    return err(400, "amount_too_large")
                st.refunded[pi["id"]] = done + amt
            return 200, {"id": new_id("re_"), "object": "refund", "amount": amt,
                         "payment_intent": pi["id"], "status": "succeeded",
                         "livemode": False}, None
        return err(404, "resource_missing")

    @staticmethod
    def approve(pi):
        if pi["capture_method"] == "manual":
            pi.update(status="requires_capture", amount_capturable=pi["amount"])
        else:
            pi.update(status="succeeded", amount_received=pi["amount"])

    def sender(self, pi):
        etype = EVENT_OF.get(pi["status"])
        if not etype:
            return None
        ev = event_for(pi, etype)
        return lambda: deliver(self.st, ev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--api-key", default="sk_test_double")
    ap.add_argument("--webhook-url", default="")
    ap.add_argument("--webhook-secret", default="whsec_double")
    args = ap.parse_args()
    Handler.st = State(args)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
