"""authsvc.py - starts one 05-auth-service process for the security scripts of this directory
and talks HTTP to it (standard library only).

The service runs on 127.0.0.1 with PORT=0 (GR_PORT_FILE tells the port), SQLite in a temporary
DATA_DIR, an unreachable event bus (events stay in the outbox), the bootstrap super_admin of
tests/http/service.env, and the library's defaults otherwise. Every wait is for a condition
with a deadline.
"""

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

DEADLINE = 15.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
PREFIX = "/api/v1/auth"
ROOT_EMAIL = "root@example.com"
ROOT_PASSWORD = "root-password-1"


class Failure(Exception):
    """A check failed; the message says which and why."""


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise Failure("timed out waiting for " + what)


def dead_port():
    """A local port with nothing listening (the event bus the service cannot reach)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Response:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "%d %s" % (self.status, self.raw[:300].decode("utf-8", "replace"))


class Service:
    """One auth-service process in its own temporary directory."""

    def __init__(self, binary, extra_env=None):
        self.bin = binary
        self.tmp = tempfile.mkdtemp(prefix="auth-sec-")
        self.data = os.path.join(self.tmp, "data")
        os.makedirs(self.data)
        self.db_path = os.path.join(self.data, "auth.db")
        self.port = None
        self.proc = None
        self.extra_env = extra_env or {}
        self.log_path = os.path.join(self.tmp, "server.log")
        self.nsource = 1

    def fresh_source(self):
        """Another loopback source address (127.0.x.y): the login limits are per client IP,
        so a test that needs more attempts than one IP allows spreads them over several."""
        self.nsource += 1
        n = self.nsource
        return "127.0.%d.%d" % (n // 250, n % 250 + 2)

    def start(self):
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env.update({
            "PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": os.path.join(self.tmp, "port"),
            "DATA_DIR": self.data, "DATABASE_URL": "sqlite://" + self.db_path,
            "LOG_LEVEL": "info", "LOG_FORMAT": "json", "CURSOR_SECRET": "test",
            "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity",
            "EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:%d" % dead_port(),
            "AUTH_BOOTSTRAP_ADMIN_EMAIL": ROOT_EMAIL,
            "AUTH_BOOTSTRAP_ADMIN_PASSWORD": ROOT_PASSWORD,
            "AUTH_KEY_SECRET": "test-key-secret-of-at-least-32-bytes!!",
        })
        env.update(self.extra_env)
        pf = env["GR_PORT_FILE"]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin], env=env, stdout=log, stderr=log)
        log.close()

        def port():
            if self.proc.poll() is not None:
                raise Failure("service exited with %s at start-up; log:\n%s"
                              % (self.proc.returncode, self.log_tail()))
            try:
                with open(pf) as f:
                    return int(f.read().strip() or 0)
            except (OSError, ValueError):
                return 0

        self.port = wait_for("the port file", port)
        wait_for("GET /ready", lambda: self.request("GET", "/ready").status == 200)
        return self

    def stop(self):
        """SIGTERM, a clean exit (status 0) within 10 s, and no sanitizer report in the log."""
        if not self.proc:
            return
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise Failure("service did not drain within 10 s of SIGTERM")
        else:
            rc = self.proc.returncode
        self.proc = None
        if rc != 0:
            raise Failure("service exited with status %s; log:\n%s" % (rc, self.log_tail()))
        log = self.log_text()
        for mark in SANITIZER_MARKS:
            if mark in log:
                raise Failure("the server log holds a sanitizer report (%s)" % mark)

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    # ---- HTTP ------------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, raw=None, source=None):
        """One request on a new connection. @body is JSON-encoded; @raw is sent as is.
        @source binds the client socket to that local address (e.g. "127.0.0.2")."""
        h = {}
        if body is not None:
            raw = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(source, 0) if source else None)
        try:
            conn.request(method, path, body=raw, headers=h)
            r = conn.getresponse()
            return Response(r.status, r.getheaders(), r.read())
        finally:
            conn.close()

    def api(self, method, path, body=None, token=None, headers=None, **kw):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + token
        return self.request(method, PREFIX + path, body=body, headers=h, **kw)

    # ---- accounts ------------------------------------------------------------------------

    def register(self, email=None, password=None, username=None):
        email = email or "u-%s@example.com" % secrets.token_hex(6)
        password = password or "pw-" + secrets.token_hex(8)
        body = {"email": email, "password": password}
        if username:
            body["username"] = username
        r = self.api("POST", "/register", body)
        if r.status != 201:
            raise Failure("register %s: %r" % (email, r))
        return email, password, r.json

    def login(self, ident, password, field="email", source=None):
        r = self.api("POST", "/login", {field: ident, "password": password}, source=source)
        if r.status != 200:
            raise Failure("login %s: %r" % (ident, r))
        return r.json

    def root_token(self):
        return self.login(ROOT_EMAIL, ROOT_PASSWORD)["access_token"]
