"""order_service_double.py - a test double [TD] of 16-order-service's POST /api/v1/orders, for
cart-service's checkout tests. It is not the order service: it keeps no orders beyond memory,
prices nothing and runs no saga. It speaks the wire format the cart uses (SERVICES §16:
POST /api/v1/orders [IK!] {items[{variant_id, quantity}], currency, shipping_address,
shipping_rate_id?, coupon_code?, payment_method_id} → 201 with the order), records every
request, honours Idempotency-Key (same key → the same order, `Idempotent-Replayed: true`), and
injects faults: `fail_next` answers that many requests 503, `reject_next` that many 422
(`urn:gravity:problem:out_of_stock`). Binds 127.0.0.1 on a free port.
"""
import http.server
import json
import threading
import uuid


class OrderServiceDouble:
    def __init__(self):
        self.requests = []  # (headers dict, body dict) of every POST /api/v1/orders
        self.orders = {}    # Idempotency-Key -> order
        self.fail_next = 0
        self.reject_next = 0
        self.lock = threading.Lock()
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body, extra=None):
                raw = json.dumps(body).encode()
                self.send_response(status)
                ctype = "application/problem+json" if status >= 400 else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                if self.path != "/api/v1/orders":
                    return self.reply(404, {"type": "urn:gravity:problem:not_found", "status": 404})
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self.reply(400, {"type": "urn:gravity:problem:malformed_request", "status": 400})
                headers = {k.lower(): v for k, v in self.headers.items()}
                with double.lock:
                    double.requests.append((headers, body))
                    if not headers.get("authorization", "").startswith("Bearer "):
                        return self.reply(401, {"type": "urn:gravity:problem:unauthorized", "status": 401})
                    key = headers.get("idempotency-key")
                    if not key:
                        return self.reply(400, {"type": "urn:gravity:problem:idempotency_key_required",
                                                "status": 400})
                    if double.fail_next > 0:
                        double.fail_next -= 1
                        return self.reply(503, {"type": "urn:gravity:problem:unavailable", "status": 503})
                    if double.reject_next > 0:
                        double.reject_next -= 1
                        return self.reply(422, {"type": "urn:gravity:problem:out_of_stock", "status": 422,
                                                "title": "Validation failed"})
                    if key in double.orders:
                        return self.reply(201, double.orders[key], {"Idempotent-Replayed": "true"})
                    order = {"id": str(uuid.uuid4()), "number": "GRV-%06d" % (len(double.orders) + 1),
                             "status": "PENDING", "currency": body.get("currency"),
                             "items": body.get("items"), "coupon_code": body.get("coupon_code")}
                    double.orders[key] = order
                    return self.reply(201, order)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return len(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
