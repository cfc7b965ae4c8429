#!/usr/bin/python3
"""A tiny fake Gravity service used only to self-test runner.py.

It honours the service environment contract (PORT=0 binds a free port whose
number goes to GR_PORT_FILE, HOST, DATABASE_URL sqlite://… or postgres://…,
JWKS_URL=file://…, JWT_ISSUER, JWT_AUDIENCE), logs JSON lines to stderr,
answers GET /ready, drains on SIGTERM and exits 0.

Endpoints:
  GET    /ready                 200
  POST   /api/v1/items          items:write; JSON {name, slug} -> 201 (Location, ETag),
                                400 bad UTF-8/JSON, 409 slug_taken, 413 > 1 MiB (answered
                                before reading the body, then the connection closes),
                                415 wrong Content-Type, 422 validation
  GET    /api/v1/items          items:read -> {"data": [...], "has_more": false, "next_cursor": null}
  GET    /api/v1/items/{id}     items:read -> 200 | 404
  DELETE /api/v1/items/{id}     items:write -> 204 | 404
  GET    /whoami                any valid token -> {sub, roles, perms}
  ANY    /echo                  no auth: what arrived (method, path, body length/sha256/hex, headers)
  GET    /types                 fixed JSON for type-strict matching tests
  GET    /debug/leak            logs the Authorization header (a bug the runner must catch)
  POST   /debug/bad-exit        the process exits 3 on SIGTERM
  POST   /debug/hang            the process ignores SIGTERM
  POST   /debug/asan            prints a fake UBSan "runtime error:" line
  POST   /debug/raw-insert      writes a row to items without any checks (for @nochange tests)

PostgreSQL is reached through psql (slow but dependency-free).
"""

import datetime
import hashlib
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

MAX_BODY = 1024 * 1024
STATE = {"exit": 0, "hang": False}
DB_LOCK = threading.Lock()


def log(level, msg, **kw):
    rec = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(), "level": level,
           "msg": msg}
    rec.update(kw)
    sys.stderr.write(json.dumps(rec) + "\n")
    sys.stderr.flush()


def uuid7():
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    x = b.hex()
    return "%s-%s-%s-%s-%s" % (x[:8], x[8:12], x[12:16], x[16:20], x[20:])


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DB:
    def __init__(self, url):
        self.url = url
        if url.startswith("sqlite://"):
            self.path = url[len("sqlite://"):]
            self.pg = False
        else:
            self.pg = True

    def _lit(self, v):
        if v is None:
            return "NULL"
        return "'" + str(v).replace("'", "''") + "'"

    def run(self, sql, params=()):
        """Run one statement; return rows as lists of strings; raise ValueError on a conflict."""
        with DB_LOCK:
            if not self.pg:
                con = sqlite3.connect(self.path, timeout=10)
                try:
                    cur = con.execute(sql.replace("%s", "?"), params)
                    rows = cur.fetchall()
                    con.commit()
                    return [list(r) for r in rows]
                except sqlite3.IntegrityError as e:
                    raise ValueError(str(e))
                finally:
                    con.close()
            text = sql.replace("%s", "{}").format(*[self._lit(p) for p in params])
            p = subprocess.run(["psql", "-X", "-At", "-F", "\x1f", "-v", "ON_ERROR_STOP=1",
                                "-d", self.url, "-c", text],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if p.returncode != 0:
                err = p.stderr.decode()
                if "duplicate key" in err:
                    raise ValueError(err)
                raise RuntimeError(err)
            out = p.stdout.decode()
            return [l.split("\x1f") for l in out.split("\n") if l and not l.startswith("INSERT")
                    and not l.startswith("DELETE")]

    def migrate(self):
        self.run("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                 "slug TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)")
        self.run("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        if not self.run("SELECT version FROM schema_migrations"):
            self.run("INSERT INTO schema_migrations (version) VALUES (%s)", (1,))


class Auth:
    def __init__(self, url):
        self.path = urllib.parse.urlsplit(url).path
        self.iss = os.environ.get("JWT_ISSUER", "gravity")
        self.aud = os.environ.get("JWT_AUDIENCE", "gravity")
        with open(self.path) as f:
            self.keys = {k["kid"]: k for k in json.load(f)["keys"]}

    def verify(self, header):
        if not header or not header.startswith("Bearer "):
            return None, "missing bearer token"
        tok = header[7:]
        try:
            head = jwt.get_unverified_header(tok)
            jwk = self.keys.get(head.get("kid"))
            if jwk is None:
                return None, "unknown kid"
            alg = jwk.get("alg") or {"EC": "ES256", "RSA": "RS256"}.get(jwk.get("kty"))
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims = jwt.decode(tok, key.key, algorithms=[alg], audience=self.aud,
                                issuer=self.iss, leeway=30)
        except jwt.PyJWTError as e:
            return None, str(e)
        return claims, None


def perms_of(claims):
    """The permission list, whatever claim name the token tool uses."""
    for name in ("perms", "permissions"):
        if isinstance(claims.get(name), list):
            return claims[name]
    scope = claims.get("scope")
    return scope.split() if isinstance(scope, str) else []


def problem(status, slug, title, errors=None):
    return status, {"type": "urn:gravity:problem:" + slug, "title": title, "status": status,
                    "errors": errors or []}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-gravity/1"

    def log_message(self, fmt, *args):  # access log is written by respond()
        pass

    def respond(self, status, body=None, headers=(), close=False):
        data = b""
        ctype = None
        if body is not None:
            data = json.dumps(body).encode()
            ctype = "application/json"
            if isinstance(body, dict) and str(body.get("type", "")).startswith("urn:gravity:problem:"):
                ctype = "application/problem+json"
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        log("info", "request", method=self.command, path=self.path, status=status)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def need(self, perm):
        claims, why = self.server.auth.verify(self.headers.get("Authorization"))
        if claims is None:
            self.respond(*problem(401, "unauthorized", "Unauthorized"))
            return None
        perms = perms_of(claims)
        if perm and "*" not in perms and perm not in perms:
            self.respond(*problem(403, "forbidden", "Forbidden"))
            return None
        return claims

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PUT(self):
        self.route("PUT")

    def do_HEAD(self):
        self.route("HEAD")

    def route(self, method):
        path = urllib.parse.urlsplit(self.path).path
        db = self.server.db
        if path == "/ready":
            return self.respond(200, {"status": "ready"})
        if path == "/echo":
            body = self.read_body()
            hdrs = {k.lower(): v for k, v in self.headers.items()}
            return self.respond(200, {
                "method": method, "path": self.path, "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_hex": body.hex() if len(body) <= 64 else None,
                "headers": {k: v for k, v in hdrs.items() if len(v) <= 256},
                "header_lens": {k: len(v) for k, v in hdrs.items()}})
        if path == "/types":
            return self.respond(200, {"f": 1.0, "i": 1, "s": "1", "b": True, "n": None,
                                      "t": now(), "u4": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
                                      "u7": uuid7(), "arr": [1, 2, 3],
                                      "nested": {"a": {"b": [{"c": "d"}]}}, "sl/ash": "x"})
        if path == "/whoami":
            c = self.need(None)
            if c:
                self.respond(200, {"sub": c["sub"], "roles": c.get("roles", []),
                                   "perms": perms_of(c)})
            return None
        if path == "/debug/leak":
            log("info", "auth header", authorization=self.headers.get("Authorization"))
            return self.respond(200, {})
        if path == "/debug/bad-exit" and method == "POST":
            STATE["exit"] = 3
            return self.respond(200, {})
        if path == "/debug/hang" and method == "POST":
            STATE["hang"] = True
            return self.respond(200, {})
        if path == "/debug/asan" and method == "POST":
            sys.stderr.write("service.c:42:7: runtime error: signed integer overflow\n")
            sys.stderr.flush()
            return self.respond(200, {})
        if path == "/debug/raw-insert" and method == "POST":
            db.run("INSERT INTO items (id, name, slug, created_at) VALUES (%s, %s, %s, %s)",
                   (uuid7(), "raw", "raw-" + secrets.token_hex(4), now()))
            return self.respond(204)
        if path == "/api/v1/items" and method == "POST":
            return self.create_item()
        if path == "/api/v1/items" and method == "GET":
            if self.need("items:read"):
                rows = db.run("SELECT id, name, slug, created_at FROM items "
                              "ORDER BY created_at DESC, id DESC")
                self.respond(200, {"data": [self.item(r) for r in rows], "has_more": False,
                                   "next_cursor": None})
            return None
        m = re.match(r"^/api/v1/items/([^/]+)$", path)
        if m and method in ("GET", "DELETE"):
            if not self.need("items:read" if method == "GET" else "items:write"):
                return None
            rows = db.run("SELECT id, name, slug, created_at FROM items WHERE id = %s",
                          (m.group(1),))
            if not rows:
                return self.respond(*problem(404, "not_found", "Not Found"))
            if method == "GET":
                return self.respond(200, self.item(rows[0]), [("ETag", '"1"')])
            db.run("DELETE FROM items WHERE id = %s", (m.group(1),))
            return self.respond(204)
        self.read_body()
        return self.respond(*problem(404, "not_found", "Not Found"))

    @staticmethod
    def item(r):
        return {"id": r[0], "name": r[1], "slug": r[2], "created_at": r[3]}

    def create_item(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:  # answer before reading, then close: the client sees a reset
            return self.respond(*problem(413, "payload_too_large", "Payload Too Large"),
                                close=True)
        body = self.read_body()
        if not self.need("items:write"):
            return None
        if (self.headers.get("Content-Type") or "").split(";")[0] != "application/json":
            return self.respond(*problem(415, "unsupported_media_type", "Unsupported Media Type"))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self.respond(*problem(400, "invalid_utf8", "Bad Request"))
        try:
            doc = json.loads(text)
        except ValueError:
            return self.respond(*problem(400, "malformed_json", "Bad Request"))
        errors = []
        if not isinstance(doc, dict):
            return self.respond(*problem(422, "validation", "Unprocessable", [{"field": "",
                                         "message": "must be an object"}]))
        for k in doc:
            if k not in ("name", "slug"):
                errors.append({"field": "/" + k, "message": "unknown field"})
        if not isinstance(doc.get("name"), str) or not doc.get("name"):
            errors.append({"field": "/name", "message": "required"})
        if not isinstance(doc.get("slug"), str) or not re.match(r"^[a-z0-9-]+$", doc["slug"]):
            errors.append({"field": "/slug", "message": "must match [a-z0-9-]+"})
        if errors:
            return self.respond(*problem(422, "validation", "Unprocessable", errors))
        iid = uuid7()
        try:
            self.server.db.run("INSERT INTO items (id, name, slug, created_at) "
                               "VALUES (%s, %s, %s, %s)", (iid, doc["name"], doc["slug"], now()))
        except ValueError:
            return self.respond(*problem(409, "slug_taken", "Conflict",
                                         [{"field": "/slug", "message": "taken"}]))
        row = self.server.db.run("SELECT id, name, slug, created_at FROM items WHERE id = %s",
                                 (iid,))[0]
        return self.respond(201, self.item(row), [("Location", "/api/v1/items/" + iid),
                                                  ("ETag", '"1"')])


def main():
    ThreadingHTTPServer.request_queue_size = 128  # @parallel connects all at once
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "0"))
    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    srv.db = DB(os.environ["DATABASE_URL"])
    srv.db.migrate()
    srv.auth = Auth(os.environ["JWKS_URL"])
    port_file = os.environ.get("GR_PORT_FILE")
    if port_file:
        with open(port_file + ".tmp", "w") as f:
            f.write("%d\n" % srv.server_address[1])
        os.rename(port_file + ".tmp", port_file)

    def on_term(signo, frame):
        if STATE["hang"]:
            log("info", "ignoring SIGTERM")
            return
        log("info", "draining")
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    log("info", "listening", port=srv.server_address[1])
    srv.serve_forever(poll_interval=0.05)
    srv.server_close()
    log("info", "stopped")
    sys.exit(STATE["exit"])


if __name__ == "__main__":
    main()
