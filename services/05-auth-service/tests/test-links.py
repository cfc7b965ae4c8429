#!/usr/bin/python3
"""Password reset and email verification links, end to end (SERVICES §05).

Starts a notification-service test double (tests/doubles style: it speaks 07's
POST /api/v1/notifications and records what it gets) and the auth service pointed at it with
NOTIFICATION_URL, then follows the links the double received:
  - reset for a known email: 202, the double gets one link; confirm with its token → 204; the
    new password logs in, the old one does not; the session that existed is revoked (its
    refresh token → 401); the same token again → 401;
  - reset for an unknown email: the same 202 body, and the double gets nothing;
  - a random token → 401;
  - email verification: request → link → confirm → /me says email_verified; again → 401.
Usage: test-links.py SERVICE_BINARY [--pg-url URL]
"""
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

received = []
cond = threading.Condition()


class Double(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"null")
        with cond:
            received.append((self.path, body))
            cond.notify_all()
        out = json.dumps({"id": "double-%d" % len(received), "status": "queued"}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def wait_for(n, timeout=10.0):
    deadline = time.monotonic() + timeout
    with cond:
        while len(received) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the notification double got %d of %d messages" % (len(received), n))
            cond.wait(left)


def main():
    binary = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="auth-links-")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Double)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = dict(os.environ, PORT="0", HOST="127.0.0.1", GR_PORT_FILE=tmp + "/port",
               DATA_DIR=tmp + "/data", LOG_LEVEL="info", EVENT_BUS_URL="http://127.0.0.1:1",
               NOTIFICATION_URL="http://127.0.0.1:%d" % srv.server_address[1],
               AUTH_RESET_LINK_BASE="https://shop.example/reset?token=",
               AUTH_VERIFY_LINK_BASE="https://shop.example/verify?token=")
    env.pop("SERVICE_TOKEN", None)
    if "--pg-url" in sys.argv:
        env["DATABASE_URL"] = sys.argv[sys.argv.index("--pg-url") + 1]
    log = open(tmp + "/server.log", "w")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not (os.path.exists(tmp + "/port") and open(tmp + "/port").read().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("service did not start")
            time.sleep(0.05)
        base = "http://127.0.0.1:" + open(tmp + "/port").read().strip()

        def call(method, path, body=None, token=None):
            h = {"Content-Type": "application/json"}
            if token:
                h["Authorization"] = "Bearer " + token
            req = urllib.request.Request(base + path, method=method, headers=h,
                                         data=json.dumps(body).encode() if body is not None else None)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    raw = r.read()
                    return r.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                raw = e.read()
                return e.code, json.loads(raw) if raw else None

        while True:
            try:
                if call("GET", "/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("service not ready")
            time.sleep(0.05)

        assert call("POST", "/api/v1/auth/register",
                    {"email": "reset@example.com", "password": "old-password"})[0] == 201
        st, tok = call("POST", "/api/v1/auth/login", {"email": "reset@example.com", "password": "old-password"})
        assert st == 200, st
        old_refresh = tok["refresh_token"]

        st, known = call("POST", "/api/v1/auth/password-reset", {"email": "RESET@example.com"})
        assert st == 202, st
        wait_for(1)
        path, msg = received[0]
        assert path == "/api/v1/notifications", path
        assert msg["to"] == "reset@example.com" and msg["template"] == "password_reset", msg
        link = msg["data"]["link"]
        assert link.startswith("https://shop.example/reset?token="), link
        token = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["token"][0]

        st, unknown = call("POST", "/api/v1/auth/password-reset", {"email": "nobody@example.com"})
        assert st == 202 and unknown == known, (st, unknown, known)
        assert call("POST", "/api/v1/auth/password-reset/confirm",
                    {"token": "A" * 43, "new_password": "new-password"})[0] == 401
        assert call("POST", "/api/v1/auth/password-reset/confirm",
                    {"token": token, "new_password": "short"})[0] == 422
        st, _ = call("POST", "/api/v1/auth/password-reset/confirm",
                     {"token": token, "new_password": "new-password"})
        assert st == 204, st
        assert call("POST", "/api/v1/auth/password-reset/confirm",
                    {"token": token, "new_password": "other-password"})[0] == 401
        assert call("POST", "/api/v1/auth/login",
                    {"email": "reset@example.com", "password": "old-password"})[0] == 401
        st, tok = call("POST", "/api/v1/auth/login", {"email": "reset@example.com", "password": "new-password"})
        assert st == 200, st
        assert call("POST", "/api/v1/auth/refresh", {"refresh_token": old_refresh})[0] == 401
        # the unknown email sent nothing (the handler sends before it answers 202)
        assert len(received) == 1, received

        access = tok["access_token"]
        assert call("GET", "/api/v1/auth/me", token=access)[1]["email_verified"] is False
        assert call("POST", "/api/v1/auth/verify-email", token=access)[0] == 202
        wait_for(2)
        path, msg = received[1]
        assert msg["template"] == "email_verification" and msg["to"] == "reset@example.com", msg
        vtoken = urllib.parse.parse_qs(urllib.parse.urlparse(msg["data"]["link"]).query)["token"][0]
        assert call("POST", "/api/v1/auth/verify-email/confirm", {"token": vtoken})[0] == 204
        assert call("GET", "/api/v1/auth/me", token=access)[1]["email_verified"] is True
        assert call("POST", "/api/v1/auth/verify-email/confirm", {"token": vtoken})[0] == 401
        assert call("POST", "/api/v1/auth/verify-email", token=access)[0] == 409

        logtext = open(tmp + "/server.log").read()
        for secret in (token, vtoken, "new-password", "old-password", access):
            assert secret not in logtext, "a secret reached the log"
        print("reset and verification links: ok (%d messages to the double)" % len(received))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        srv.shutdown()
    if proc.returncode != 0:
        print("service exit status %s" % proc.returncode)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
