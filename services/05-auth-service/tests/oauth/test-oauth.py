#!/usr/bin/python3
"""test-oauth.py BIN [--pg-url URL] - OAuth/OIDC login of 05-auth-service, black-box.

Starts two provider doubles (tests/doubles/oauth2-mock, npm oauth2-mock-server: an RS256 one
playing "google" and "github", an ES256 one playing a generic OIDC provider "acme" with a
public client) and the service binary BIN with PORT=0 and a fresh database (SQLite, or a new
PostgreSQL database on --pg-url), then drives the flows a client relies on:

  authorize → 302 to the provider with PKCE S256, state and nonce → the provider's redirect
  back with code and state → callback → 200 tokens → /me; the second login reaches the same
  account; a replayed, tampered, expired or other-provider state → 400; a code with another
  authorization's verifier (PKCE) → 401; error=access_denied → 401; id_tokens with a bad
  signature, alg none, an unknown kid, another aud/iss, expired or with a wrong nonce → 401;
  no verified email → 401; a password account with an unverified email is not taken over
  (409); GitHub's API flow with client_secret_basic; provider failures → 503 in bounded time;
  every refusal leaves the database as it was; the log never holds a code, state, verifier,
  token or secret; the server drains cleanly and the log has no sanitizer report.

The doubles' npm packages are installed into tests/doubles/oauth2-mock when missing. Only the
Python standard library is used. The last line is `N passed, N failed`.
"""

import argparse
import base64
import fcntl
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
DOUBLE = os.path.join(ROOT, "tests", "doubles", "oauth2-mock")
NPM = shutil.which("npm") or "/usr/bin/npm"
NODE = shutil.which("node") or "/usr/bin/node"
DEADLINE = 20.0
POLL = 0.02
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
APP_RETURN = "http://127.0.0.1:9/app/oauth-return"  # the client app's page (never called)
APP_RETURN_ALT = "http://localhost:9/alt-return"
TIMEOUT_MS = 1500
TABLES = ("credentials", "oauth_accounts", "oauth_states", "refresh_tokens", "user_roles",
          "outbox")


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def wait_for(pred, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(POLL)
    raise Failure("timed out waiting for %s" % what)


def read_port(path):
    try:
        with open(path) as f:
            t = f.read().strip()
    except OSError:
        return None
    return int(t) if re.match(r"^[0-9]{1,5}$", t) else None


def request(port, method, path, headers=None, body=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def jbody(data):
    try:
        return json.loads(data.decode("utf-8")) if data else None
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# The provider double
# --------------------------------------------------------------------------------------------


def install_double():
    # make test runs this test on SQLite and on PostgreSQL at the same time: one npm install
    # into the double's folder, under a lock on the folder; the other run waits, then finds it.
    fd = os.open(DOUBLE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.path.isdir(os.path.join(DOUBLE, "node_modules", "oauth2-mock-server")) and \
                os.path.isdir(os.path.join(DOUBLE, "node_modules", "express")):
            return
        print("-- installing the oauth2-mock double (npm)")
        p = subprocess.run([NPM, "install", "--prefix", DOUBLE, "--no-audit", "--no-fund",
                            "--loglevel=error"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        if p.returncode != 0:
            sys.stdout.write(p.stdout.decode(errors="replace"))
            raise SystemExit("test-oauth: npm install of the oauth2-mock double failed")
    finally:
        os.close(fd)


class Mock:
    def __init__(self, tmp, name, alg):
        self.port_file = os.path.join(tmp, "mock-%s.port" % name)
        self.log = open(os.path.join(tmp, "mock-%s.log" % name), "wb")
        env = dict(os.environ, MOCK_PORT="0", MOCK_PORT_FILE=self.port_file, MOCK_ALG=alg)
        self.proc = subprocess.Popen([NODE, os.path.join(DOUBLE, "launch.js")], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.port = wait_for(self._ready, "the %s double to listen" % name)
        self.url = "http://127.0.0.1:%d" % self.port

    def _ready(self):
        if self.proc.poll() is not None:
            raise Failure("the provider double exited with %d" % self.proc.returncode)
        return read_port(self.port_file)

    def scenario(self, claims=None, faults=None, github=None):
        body = json.dumps({"claims": claims or {}, "faults": faults or {},
                           "github": github or {}})
        st, _, _ = request(self.port, "POST", "/_control", {"Content-Type": "application/json"},
                           body)
        check(st == 204, "double /_control answered %d" % st)

    def token_requests(self):
        st, _, data = request(self.port, "GET", "/_control/requests")
        check(st == 200, "double /_control/requests answered %d" % st)
        return jbody(data)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------------------------
# The service and its database
# --------------------------------------------------------------------------------------------


class Db:
    def __init__(self, engine, location):
        self.engine = engine
        self.location = location

    def query(self, sql, params=()):
        if self.engine == "sqlite":
            c = sqlite3.connect(self.location, timeout=10)
            try:
                rows = c.execute(sql, params).fetchall()
                c.commit()
                return rows
            finally:
                c.close()
        # psql: parameters are only ever hex digests and integers made here
        for p in params:
            check(re.match(r"^[0-9a-f]*$", str(p)), "unsafe psql parameter")
        text = sql
        for p in params:
            text = text.replace("?", "'%s'" % p, 1)
        p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
                            self.location, "-c", text], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        check(p.returncode == 0, "psql failed: %s" % p.stderr.decode(errors="replace"))
        return [tuple(l.split("|")) for l in p.stdout.decode().splitlines() if l]

    def counts(self):
        row = self.query("SELECT " + ", ".join("(SELECT count(*) FROM %s)" % t for t in TABLES))
        return {t: int(v) for t, v in zip(TABLES, row[0])}


class Service:
    def __init__(self, binary, tmp, env_extra, db_url):
        self.tmp = tmp
        data = os.path.join(tmp, "data")
        os.makedirs(data, exist_ok=True)
        self.port_file = os.path.join(tmp, "port")
        self.log_path = os.path.join(tmp, "server.log")
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("AUTH_") or k in ("DATABASE_URL", "SERVICE_TOKEN", "JWKS_URL"):
                del env[k]
        env.update({
            "PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": self.port_file, "DATA_DIR": data,
            "DATABASE_URL": db_url, "EVENT_BUS": "http", "EVENT_BUS_URL": "http://127.0.0.1:1",
            "LOG_LEVEL": "debug", "LOG_FORMAT": "json", "CURSOR_SECRET": "test",
            "AUTH_KEY_SECRET": "test-key-secret-of-at-least-32-bytes!!",
        })
        env.update(env_extra)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.port = None

    def wait_ready(self):
        """The port once /ready answers 200; None when the process exited first."""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return None
            port = read_port(self.port_file)
            if port:
                try:
                    st, _, _ = request(port, "GET", "/ready", timeout=2)
                    if st == 200:
                        self.port = port
                        return port
                except OSError:
                    pass
            time.sleep(POLL)
        raise Failure("service not ready within %.0f s" % DEADLINE)

    def stop(self):
        """SIGTERM and wait: None when it exited 0, else a message."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "did not drain within 15 s of SIGTERM"
        self.log.close()
        rc = self.proc.returncode
        return None if rc == 0 else "exited with status %d" % rc

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# The flows
# --------------------------------------------------------------------------------------------


class Suite:
    def __init__(self, svc, db, google, acme):
        self.svc = svc
        self.db = db
        self.google = google  # plays google and github
        self.acme = acme
        self.secrets = set()  # everything that must never reach the log
        self.passed = 0
        self.failed = 0

    # -- helpers --------------------------------------------------------------------------

    def call(self, method, path, headers=None, body=None):
        return request(self.svc.port, method, path, headers, body)

    def problem(self, st, h, data, status, slug=None, what=""):
        b = jbody(data)
        check(st == status, "%s: expected %d, got %d %s" % (what, status, st, data[:300]))
        check(h.get("content-type", "").startswith("application/problem+json"),
              "%s: not a problem+json answer (%s)" % (what, h.get("content-type")))
        check(isinstance(b, dict) and b.get("status") == status,
              "%s: problem body %r" % (what, b))
        if slug:
            check(b.get("type") == "urn:gravity:problem:" + slug,
                  "%s: expected type %s, got %r" % (what, slug, b.get("type")))
        return b

    def authorize(self, provider, query=""):
        st, h, data = self.call("GET", "/api/v1/auth/oauth/%s/authorize%s" % (provider, query))
        check(st == 302, "authorize %s: expected 302, got %d %s" % (provider, st, data[:300]))
        loc = h.get("location", "")
        u = urllib.parse.urlsplit(loc)
        q = dict(urllib.parse.parse_qsl(u.query, strict_parsing=True))
        self.secrets.add(q.get("state", ""))
        return loc, q

    def provider_redirect(self, mock, loc):
        """Follows our 302 to the double's /authorize; returns the redirect back (code, state)."""
        u = urllib.parse.urlsplit(loc)
        check(u.netloc == "127.0.0.1:%d" % mock.port, "authorize went to %r" % u.netloc)
        st, h, data = request(mock.port, "GET", u.path + "?" + u.query)
        check(st == 302, "the provider's /authorize answered %d %s" % (st, data[:200]))
        back = urllib.parse.urlsplit(h["location"])
        q = dict(urllib.parse.parse_qsl(back.query))
        self.secrets.add(q.get("code", ""))
        return back, q

    def callback(self, provider, params):
        return self.call("GET", "/api/v1/auth/oauth/%s/callback?%s" %
                         (provider, urllib.parse.urlencode(params)))

    def start(self, provider, mock):
        loc, aq = self.authorize(provider)
        back, bq = self.provider_redirect(mock, loc)
        return aq, bq

    def login(self, provider, mock, claims=None, github=None):
        mock.scenario(claims=claims, github=github)
        aq, bq = self.start(provider, mock)
        st, h, data = self.callback(provider, {"code": bq["code"], "state": bq["state"]})
        check(st == 200, "callback %s: expected 200, got %d %s" % (provider, st, data[:400]))
        b = jbody(data)
        for k in ("access_token", "refresh_token"):
            check(isinstance(b.get(k), str) and b[k], "callback: no %s in %r" % (k, b))
            self.secrets.add(b[k])
        check(b.get("token_type") == "Bearer" and b.get("expires_in") == 3600,
              "callback: token response %r" % b)
        check("no-store" in h.get("cache-control", ""), "callback: tokens without no-store")
        return b, aq, bq

    def me(self, access):
        st, _, data = self.call("GET", "/api/v1/auth/me", {"Authorization": "Bearer " + access})
        check(st == 200, "/me answered %d %s" % (st, data[:300]))
        return jbody(data)

    def refused(self, provider, mock, status, slug, claims=None, faults=None, github=None,
                what=""):
        """A complete flow whose callback must be refused with nothing changed."""
        mock.scenario(claims=claims, faults=faults, github=github)
        aq, bq = self.start(provider, mock)
        before = self.db.counts()
        st, h, data = self.callback(provider, {"code": bq["code"], "state": bq["state"]})
        b = self.problem(st, h, data, status, slug, what)
        after = self.db.counts()
        before["oauth_states"] -= 1  # the state presented with a code is spent
        check(before == after, "%s: the refusal changed the database: %r -> %r" %
              (what, before, after))
        mock.scenario()
        return b

    def run(self, name, fn):
        t0 = time.monotonic()
        try:
            fn()
            self.passed += 1
            print("PASS %s (%.2f s)" % (name, time.monotonic() - t0))
        except (Failure, OSError, KeyError, ValueError, TypeError, http.client.HTTPException) as e:
            self.failed += 1
            print("FAIL %s\n  %s: %s" % (name, type(e).__name__, e))
        finally:
            for m in (self.google, self.acme):
                try:
                    m.scenario()
                except (Failure, OSError):
                    pass

    # -- cases ----------------------------------------------------------------------------

    def t_unknown_provider(self):
        before = self.db.counts()
        for p in ("facebook", "GOOGLE", "a" * 40, "goo.gle", "%00"):
            for route in ("authorize", "callback"):
                st, h, data = self.call("GET", "/api/v1/auth/oauth/%s/%s" % (p, route))
                self.problem(st, h, data, 400 if p == "%00" else 404, None,
                             "%s %s" % (p, route))
        check(self.db.counts() == before, "a 404 changed the database")

    def t_authorize_request(self):
        before = self.db.counts()
        loc, q = self.authorize("google")
        u = urllib.parse.urlsplit(loc)
        check("%s://%s%s" % (u.scheme, u.netloc, u.path) == self.google.url + "/authorize",
              "Location %r is not the provider's authorize endpoint" % loc)
        check(q.get("response_type") == "code", "response_type %r" % q.get("response_type"))
        check(q.get("client_id") == "gravity-google-client", "client_id %r" % q.get("client_id"))
        check(q.get("redirect_uri") == APP_RETURN, "redirect_uri %r" % q.get("redirect_uri"))
        check("openid" in q.get("scope", "").split() and "email" in q.get("scope", "").split(),
              "scope %r" % q.get("scope"))
        check(q.get("code_challenge_method") == "S256", "code_challenge_method must be S256")
        check(re.match(r"^[A-Za-z0-9_-]{43}$", q.get("code_challenge", "")), "code_challenge")
        check(re.match(r"^[A-Za-z0-9_-]{43}$", q.get("state", "")), "state %r" % q.get("state"))
        check(re.match(r"^[A-Za-z0-9_-]{43}$", q.get("nonce", "")), "nonce %r" % q.get("nonce"))
        _, q2 = self.authorize("google")
        check(q2["state"] != q["state"] and q2["nonce"] != q["nonce"] and
              q2["code_challenge"] != q["code_challenge"], "two authorizations share values")
        after = self.db.counts()
        check(after["oauth_states"] == before["oauth_states"] + 2, "states not stored")
        # The state is stored as its SHA-256, never as itself.
        h = hashlib.sha256(q["state"].encode()).hexdigest()
        check(self.db.query("SELECT count(*) FROM oauth_states WHERE state = ?", (h,))[0][0]
              in (1, "1"), "the state is not stored by its SHA-256")
        # GitHub is not OIDC: no nonce, its own scopes.
        _, gq = self.authorize("github")
        check("nonce" not in gq and gq.get("client_id") == "gravity-github-client",
              "github authorize %r" % gq)

    def t_redirect_uri(self):
        before = self.db.counts()
        st, h, data = self.call("GET", "/api/v1/auth/oauth/google/authorize?redirect_uri=" +
                                urllib.parse.quote("https://evil.example/steal", safe=""))
        b = self.problem(st, h, data, 422, "validation_error", "foreign redirect_uri")
        check(any(e.get("field") == "query.redirect_uri" for e in b.get("errors", [])),
              "no query.redirect_uri error in %r" % b)
        st, h, data = self.call("GET", "/api/v1/auth/oauth/google/authorize?redirect_uri=" +
                                urllib.parse.quote(APP_RETURN + "/x", safe=""))
        self.problem(st, h, data, 422, "validation_error", "prefix-extended redirect_uri")
        st, h, data = self.call("GET", "/api/v1/auth/oauth/google/authorize?scope=x")
        self.problem(st, h, data, 422, None, "unknown query parameter")
        check(self.db.counts() == before, "a refused authorize changed the database")
        # A second registered URI can be chosen, and the token request carries it.
        _, q = self.authorize("google", "?redirect_uri=" +
                              urllib.parse.quote(APP_RETURN_ALT, safe=""))
        check(q["redirect_uri"] == APP_RETURN_ALT, "chosen redirect_uri not used")

    def t_login(self):
        claims = {"sub": "google-sub-alice", "email": "Alice@Example.com",
                  "email_verified": True}
        before = self.db.counts()
        b, aq, bq = self.login("google", self.google, claims)
        me = self.me(b["access_token"])
        check(me["email"] == "alice@example.com", "/me email %r" % me.get("email"))
        check(me["email_verified"] is True, "the provider verified the email: %r" % me)
        check("customer" in me["roles"], "a new OAuth account is a customer: %r" % me)
        after = self.db.counts()
        check(after["credentials"] == before["credentials"] + 1, "no account created")
        check(after["oauth_accounts"] == before["oauth_accounts"] + 1, "no link created")
        types = [r[0] for r in self.db.query("SELECT type FROM outbox ORDER BY seq")]
        check("user.created" in types and "auth.login.succeeded" in types,
              "events %r" % types)
        # What the token endpoint received: the code, the same redirect URI, the PKCE
        # verifier matching the challenge, our client credentials (client_secret_post).
        req = self.google.token_requests()[-1]
        f = req["form"]
        self.secrets.add(f.get("code_verifier", ""))
        check(f.get("grant_type") == "authorization_code", "grant_type %r" % f)
        check(f.get("code") == bq["code"], "the code was not sent as received")
        check(f.get("redirect_uri") == aq["redirect_uri"], "redirect_uri differs at the token"
              " endpoint")
        v = f.get("code_verifier", "")
        check(re.match(r"^[A-Za-z0-9_-]{43,128}$", v), "code_verifier %r" % v)
        ch = base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()
        check(ch == aq["code_challenge"], "the verifier does not match the S256 challenge")
        check(f.get("client_id") == "gravity-google-client" and
              f.get("client_secret") == "google-client-secret-1", "client_secret_post")
        self.user_alice = me["id"]
        # The second login reaches the same account through the link.
        b2, _, _ = self.login("google", self.google, claims)
        check(self.me(b2["access_token"])["id"] == me["id"], "second login: another account")
        after2 = self.db.counts()
        check(after2["credentials"] == after["credentials"] and
              after2["oauth_accounts"] == after["oauth_accounts"], "second login added rows")
        # The link follows the subject, not the email: a changed email still logs in.
        b3, _, _ = self.login("google", self.google, dict(claims, email="alice.new@example.com"))
        check(self.me(b3["access_token"])["id"] == me["id"], "the link did not follow sub")
        # The session is a real one: the refresh token rotates.
        st, _, data = self.call("POST", "/api/v1/auth/refresh",
                                {"Content-Type": "application/json"},
                                json.dumps({"refresh_token": b["refresh_token"]}))
        check(st == 200, "refresh of an OAuth session answered %d %s" % (st, data[:200]))
        for k in ("access_token", "refresh_token"):
            self.secrets.add(jbody(data)[k])

    def t_state_replay(self):
        aq, bq = self.start("google", self.google)
        self.google.scenario(claims={"sub": "replay-sub", "email": "replay@example.com",
                                     "email_verified": True})
        st, _, data = self.callback("google", {"code": bq["code"], "state": bq["state"]})
        check(st == 200, "first callback answered %d %s" % (st, data[:300]))
        for k in ("access_token", "refresh_token"):
            self.secrets.add(jbody(data)[k])
        before = self.db.counts()
        n0 = len(self.google.token_requests())
        st, h, data = self.callback("google", {"code": bq["code"], "state": bq["state"]})
        self.problem(st, h, data, 400, "invalid_oauth_state", "replayed state")
        check(self.db.counts() == before, "a replayed state changed the database")
        check(len(self.google.token_requests()) == n0, "a replay reached the provider")

    def t_state_race(self):
        # Twenty clients present the same code and state at once: exactly one session.
        import threading
        aq, bq = self.start("google", self.google)
        self.google.scenario(claims={"sub": "race-sub", "email": "race@example.com",
                                     "email_verified": True})
        n0 = len(self.google.token_requests())
        results = []
        barrier = threading.Barrier(20)

        def one():
            barrier.wait()
            st, _, data = self.callback("google", {"code": bq["code"], "state": bq["state"]})
            results.append((st, data))

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [d for st, d in results if st == 200]
        for d in ok:
            for k in ("access_token", "refresh_token"):
                self.secrets.add(jbody(d)[k])
        others = sorted(set(st for st, _ in results if st != 200))
        check(len(ok) == 1, "%d sessions from one state (statuses %r)" % (len(ok), others))
        check(others == [400], "the losers answered %r" % others)
        check(len(self.google.token_requests()) == n0 + 1, "the code was traded more than once")

    def t_state_tampered(self):
        aq, bq = self.start("google", self.google)
        s = bq["state"]
        n0 = len(self.google.token_requests())
        before = self.db.counts()
        for bad in (s[:-1] + ("A" if s[-1] != "A" else "B"), s[:-1], s + "A", "", "x" * 43,
                    "../" + s[3:]):
            st, h, data = self.callback("google", {"code": bq["code"], "state": bad})
            if bad == "":
                self.problem(st, h, data, 400, "invalid_oauth_state", "empty state")
            else:
                self.problem(st, h, data, 400, "invalid_oauth_state", "tampered state %r" % bad)
        # Another provider's callback does not accept google's state either.
        st, h, data = self.callback("github", {"code": bq["code"], "state": s})
        self.problem(st, h, data, 400, "invalid_oauth_state", "state of another provider")
        check(self.db.counts() == before, "tampered states changed the database")
        check(len(self.google.token_requests()) == n0, "a tampered state reached the provider")
        # None of that spent the real state.
        self.google.scenario(claims={"sub": "tamper-sub", "email": "tamper@example.com",
                                     "email_verified": True})
        st, _, data = self.callback("google", {"code": bq["code"], "state": s})
        check(st == 200, "the untouched state no longer works: %d %s" % (st, data[:300]))
        for k in ("access_token", "refresh_token"):
            self.secrets.add(jbody(data)[k])

    def t_state_expired(self):
        aq, bq = self.start("google", self.google)
        h = hashlib.sha256(bq["state"].encode()).hexdigest()
        self.db.query("UPDATE oauth_states SET expires_at = 1 WHERE state = ?", (h,))
        before = self.db.counts()
        st, hd, data = self.callback("google", {"code": bq["code"], "state": bq["state"]})
        self.problem(st, hd, data, 400, "invalid_oauth_state", "expired state")
        check(self.db.counts() == before, "an expired state changed the database")
        # The next authorize sweeps it.
        self.authorize("google")
        check(self.db.query("SELECT count(*) FROM oauth_states WHERE state = ?", (h,))[0][0]
              in (0, "0"), "expired state not swept")

    def t_missing_params(self):
        before = self.db.counts()
        st, h, data = self.call("GET", "/api/v1/auth/oauth/google/callback")
        b = self.problem(st, h, data, 422, "validation_error", "no code, no state")
        fields = sorted(e.get("field") for e in b.get("errors", []))
        check(fields == ["query.code", "query.state"], "field errors %r" % fields)
        st, h, data = self.call("GET", "/api/v1/auth/oauth/google/callback?code=%20x&state=y")
        self.problem(st, h, data, 422, "validation_error", "code with a space")
        st, h, data = self.call("GET", "/api/v1/auth/oauth/google/callback?code=a&state=b&foo=1")
        self.problem(st, h, data, 422, None, "unknown query parameter")
        check(self.db.counts() == before, "a 422 changed the database")

    def t_provider_error(self):
        aq, bq = self.start("google", self.google)
        before = self.db.counts()
        st, h, data = self.callback("google", {"error": "access_denied",
                                               "error_description": "The user said no",
                                               "state": bq["state"]})
        b = self.problem(st, h, data, 401, "oauth_denied", "error=access_denied")
        check("access_denied" in b.get("detail", ""), "detail %r" % b.get("detail"))
        st, h, data = self.callback("google", {"error": "<script>x</script>"})
        b = self.problem(st, h, data, 401, "oauth_denied", "odd error")
        check("<script>" not in b.get("detail", ""), "the provider's text is echoed raw")
        check(self.db.counts() == before, "error= changed the database")

    def t_pkce(self):
        # The code of one authorization with the state (so the verifier) of another: the
        # provider finds the verifier does not match the code's challenge.
        aq1, bq1 = self.start("google", self.google)
        aq2, bq2 = self.start("google", self.google)
        before = self.db.counts()
        st, h, data = self.callback("google", {"code": bq1["code"], "state": bq2["state"]})
        self.problem(st, h, data, 401, "oauth_exchange_failed", "code with another verifier")
        after = self.db.counts()
        before["oauth_states"] -= 1
        check(after == before, "a refused exchange changed the database: %r" % after)
        f = self.google.token_requests()[-1]["form"]
        self.secrets.add(f.get("code_verifier", ""))
        ch = base64.urlsafe_b64encode(
            hashlib.sha256(f["code_verifier"].encode()).digest()).rstrip(b"=").decode()
        check(ch == aq2["code_challenge"] and ch != aq1["code_challenge"],
              "the verifier sent was not the second authorization's")

    def t_id_token(self):
        now = int(time.time())
        good = {"sub": "idt-sub", "email": "idt@example.com", "email_verified": True}
        cases = [
            ("bad signature", dict(faults={"id_token": "bad_signature"})),
            ("alg none", dict(faults={"id_token": "alg_none"})),
            ("alg HS256", dict(faults={"id_token": "alg_hs256"})),
            ("unknown kid", dict(faults={"id_token": "unknown_kid"})),
            ("other audience", dict(claims=dict(good, aud="someone-else"))),
            ("several audiences, no azp",
             dict(claims=dict(good, aud=["gravity-google-client", "other"]))),
            ("azp of another client", dict(claims=dict(good, azp="other"))),
            ("other issuer", dict(claims=dict(good, iss="https://evil.example"))),
            ("expired", dict(claims=dict(good, exp=now - 3600, iat=now - 7200))),
            ("issued in the future", dict(claims=dict(good, iat=now + 3600))),
            ("not yet valid", dict(claims=dict(good, nbf=now + 3600))),
            ("exp as a string", dict(claims=dict(good, exp=str(now + 3600)))),
            ("other nonce", dict(claims=dict(good, nonce="x" * 43))),
            ("no nonce", dict(claims=dict(good, nonce=None))),
            ("no sub", dict(claims=dict(good, sub=None))),
        ]
        for what, kw in cases:
            self.refused("google", self.google, 401, "invalid_id_token", what=what, **kw)
        for what, claims in (("email_verified false", dict(good, email_verified=False)),
                             ("no email_verified", dict(good, email_verified=None)),
                             ("no email", dict(good, email=None)),
                             ("not an email", dict(good, email="not-an-email"))):
            self.refused("google", self.google, 401, "oauth_email_unverified", claims=claims,
                         what=what)
        # Azp equal to our client with several audiences is fine.
        self.login("google", self.google,
                   dict(good, aud=["gravity-google-client", "other"], azp="gravity-google-client"))

    def t_provider_failures(self):
        good = {"sub": "fail-sub", "email": "fail@example.com", "email_verified": True}
        for what, faults in (("token endpoint 500", {"token_status": 500}),
                             ("token endpoint garbage", {"token_body": "<html>oops</html>"}),
                             ("token response too large",
                              {"token_body": json.dumps({"access_token": "a" * 200000})}),
                             ("no id_token", {"token_body": json.dumps(
                                 {"access_token": "abc", "token_type": "Bearer"})}),
                             ("JWKS 500", {"jwks_status": 500})):
            self.refused("google", self.google, 503, "oauth_provider_unavailable", claims=good,
                         faults=faults, what=what)
        # A provider that hangs costs AUTH_OAUTH_TIMEOUT_MS, not the client's patience.
        t0 = time.monotonic()
        self.refused("google", self.google, 503, "oauth_provider_unavailable", claims=good,
                     faults={"token_delay_ms": TIMEOUT_MS + 2000}, what="slow token endpoint")
        took = time.monotonic() - t0
        check(took < TIMEOUT_MS / 1000 + 1.5, "the slow provider held the request %.1f s" % took)
        # invalid_client is our misconfiguration, not the user's fault.
        self.refused("google", self.google, 503, "oauth_provider_unavailable", claims=good,
                     faults={"token_status": 401, "token_body": json.dumps(
                         {"error": "invalid_client"})}, what="invalid_client")

    def t_link_by_email(self):
        # GitHub account with alice's verified email joins alice's account.
        gh = {"user": {"id": 4242, "login": "alice-gh"},
              "emails": [{"email": "other@example.com", "primary": False, "verified": True},
                         {"email": "ALICE@example.com", "primary": True, "verified": True}]}
        before = self.db.counts()
        b, aq, bq = self.login("github", self.google, github=gh)
        me = self.me(b["access_token"])
        check(me["id"] == self.user_alice, "github login did not join alice's account")
        after = self.db.counts()
        check(after["credentials"] == before["credentials"] and
              after["oauth_accounts"] == before["oauth_accounts"] + 1, "link rows %r" % after)
        req = self.google.token_requests()[-1]
        check((req.get("authorization") or "").startswith("Basic ") and
              "client_secret" not in req["form"] and "client_id" not in req["form"],
              "github uses client_secret_basic: %r" % {k: v for k, v in req["form"].items()
                                                        if k != "code_verifier"})
        cred = base64.b64decode(req["authorization"][6:]).decode()
        check(cred == "gravity-github-client:github%2Fclient%3Asecret",
              "basic credentials are not form-encoded id:secret")
        self.secrets.add(req["form"].get("code_verifier", ""))
        # GitHub without a verified primary email is refused.
        gh2 = {"user": {"id": 5555, "login": "nope"},
               "emails": [{"email": "nope@example.com", "primary": True, "verified": False}]}
        self.refused("github", self.google, 401, "oauth_email_unverified", github=gh2,
                     what="github unverified primary")
        self.refused("github", self.google, 503, "oauth_provider_unavailable",
                     github={"user": {"login": "no-id"}, "emails": []}, what="github no user id")

    def t_no_takeover(self):
        # Someone registered bob@ with a password and never verified it: Bob's Google login
        # must not hand him (or the registrant) that account.
        st, _, data = self.call("POST", "/api/v1/auth/register",
                                {"Content-Type": "application/json"},
                                json.dumps({"email": "bob@example.com",
                                            "password": "squatter-password-1"}))
        check(st == 201, "register answered %d %s" % (st, data[:200]))
        self.refused("google", self.google, 409, "account_exists",
                     claims={"sub": "bob-sub", "email": "bob@example.com",
                             "email_verified": True}, what="unverified password account")

    def t_totp_account(self):
        # An OAuth account that turned TOTP on is not logged in by the provider alone.
        claims = {"sub": "totp-sub", "email": "erin@example.com", "email_verified": True}
        b, _, _ = self.login("google", self.google, claims)
        auth = {"Authorization": "Bearer " + b["access_token"], "Content-Type": "application/json"}
        st, _, data = self.call("POST", "/api/v1/auth/mfa/totp", auth, "")
        check(st == 201, "TOTP enrolment answered %d %s" % (st, data[:200]))
        secret = jbody(data)["secret"]
        self.secrets.add(secret)
        st, _, data = self.call("POST", "/api/v1/auth/mfa/totp/verify", auth,
                                json.dumps({"code": totp_code(secret)}))
        check(st == 200, "TOTP verify answered %d %s" % (st, data[:200]))
        self.refused("google", self.google, 401, "mfa_required", claims=claims,
                     what="account with TOTP")

    def t_es256_public_client(self):
        b, aq, bq = self.login("acme", self.acme, {"sub": "acme-1", "email": "carol@example.com",
                                                   "email_verified": True})
        check(self.me(b["access_token"])["email"] == "carol@example.com", "acme login")
        f = self.acme.token_requests()[-1]["form"]
        self.secrets.add(f.get("code_verifier", ""))
        check(f.get("client_id") == "acme-public" and "client_secret" not in f,
              "a public client sends no secret: %r" % sorted(f))
        # The same subject at another provider is another identity.
        b2, _, _ = self.login("google", self.google, {"sub": "acme-1",
                                                      "email": "dave@example.com",
                                                      "email_verified": True})
        check(self.me(b2["access_token"])["email"] == "dave@example.com",
              "subjects are per provider")


def totp_code(b32, at=None):
    """RFC 6238 (SHA-1, 6 digits, 30 s) as an authenticator app computes it."""
    import hmac
    import struct
    key = base64.b32decode(b32 + "=" * (-len(b32) % 8), casefold=True)
    msg = struct.pack(">Q", int((time.time() if at is None else at) // 30))
    d = hmac.new(key, msg, hashlib.sha1).digest()
    o = d[-1] & 15
    return "%06d" % ((struct.unpack(">I", d[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


def run_misconfigured(binary, tmp, db_url):
    """A listed provider without its client id: start-up fails naming the variable, or (until
    the init hook checks it) the provider answers 503 and the log names it (gr shows no detail
    in a 5xx problem)."""
    svc = Service(binary, tmp, {"AUTH_OAUTH_PROVIDERS": "google",
                                "AUTH_OAUTH_GOOGLE_CLIENT_SECRET": "x",
                                "AUTH_OAUTH_GOOGLE_REDIRECT_URI": APP_RETURN}, db_url)
    try:
        port = svc.wait_ready()
        if port is None:
            log = svc.log_text()
            check("AUTH_OAUTH_GOOGLE_CLIENT_ID" in log,
                  "start-up failed without naming the variable: %s" % log[-500:])
            return
        st, h, data = request(port, "GET", "/api/v1/auth/oauth/google/authorize")
        check(st == 503, "misconfigured provider answered %d" % st)
        check("AUTH_OAUTH_GOOGLE_CLIENT_ID" in svc.log_text(),
              "the log does not name the variable")
        st, h, data = request(port, "GET", "/api/v1/auth/oauth/github/authorize")
        check(st == 404, "an unlisted provider answered %d" % st)
    finally:
        svc.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin")
    ap.add_argument("--pg-url")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    install_double()
    tmp = tempfile.mkdtemp(prefix="gr-oauth-")
    os.chmod(tmp, 0o755)
    pg_names = []

    def db_url(tag):
        if not args.pg_url:
            return "sqlite://" + os.path.join(tmp, tag + ".db"), Db("sqlite",
                                                                   os.path.join(tmp, tag + ".db"))
        name = "gr_oauth_" + secrets.token_hex(6)
        p = subprocess.run(["psql", "-X", "-q", "-d", args.pg_url, "-c",
                            'CREATE DATABASE "%s"' % name], capture_output=True, timeout=60)
        if p.returncode != 0:
            raise SystemExit("test-oauth: CREATE DATABASE failed: %s" % p.stderr.decode())
        pg_names.append(name)
        u = urllib.parse.urlsplit(args.pg_url)
        url = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))
        return url, Db("pg", url)

    google = acme = svc = None
    suite = None
    problems = []
    try:
        google = Mock(tmp, "rs256", "RS256")
        acme = Mock(tmp, "es256", "ES256")
        env = {
            "AUTH_OAUTH_PROVIDERS": "google, github ,acme",
            "AUTH_OAUTH_TIMEOUT_MS": str(TIMEOUT_MS),
            "AUTH_OAUTH_GOOGLE_CLIENT_ID": "gravity-google-client",
            "AUTH_OAUTH_GOOGLE_CLIENT_SECRET": "google-client-secret-1",
            "AUTH_OAUTH_GOOGLE_REDIRECT_URI": APP_RETURN + "," + APP_RETURN_ALT,
            "AUTH_OAUTH_GOOGLE_AUTHORIZE_URL": google.url + "/authorize",
            "AUTH_OAUTH_GOOGLE_TOKEN_URL": google.url + "/token",
            "AUTH_OAUTH_GOOGLE_USERINFO_URL": google.url + "/userinfo",
            "AUTH_OAUTH_GOOGLE_JWKS_URL": google.url + "/jwks",
            "AUTH_OAUTH_GOOGLE_ISSUER": google.url,
            "AUTH_OAUTH_GITHUB_CLIENT_ID": "gravity-github-client",
            "AUTH_OAUTH_GITHUB_CLIENT_SECRET": "github/client:secret",
            "AUTH_OAUTH_GITHUB_REDIRECT_URI": APP_RETURN,
            "AUTH_OAUTH_GITHUB_AUTHORIZE_URL": google.url + "/authorize",
            "AUTH_OAUTH_GITHUB_TOKEN_URL": google.url + "/token",
            "AUTH_OAUTH_GITHUB_USERINFO_URL": google.url + "/user",
            "AUTH_OAUTH_GITHUB_TOKEN_AUTH": "client_secret_basic",
            "AUTH_OAUTH_ACME_CLIENT_ID": "acme-public",
            "AUTH_OAUTH_ACME_REDIRECT_URI": APP_RETURN,
            "AUTH_OAUTH_ACME_AUTHORIZE_URL": acme.url + "/authorize",
            "AUTH_OAUTH_ACME_TOKEN_URL": acme.url + "/token",
            "AUTH_OAUTH_ACME_JWKS_URL": acme.url + "/jwks",
            "AUTH_OAUTH_ACME_ISSUER": acme.url,
        }
        url, db = db_url("main")
        svc = Service(binary, os.path.join(tmp, "main"), env, url)
        if svc.wait_ready() is None:
            print(svc.log_text()[-3000:])
            raise SystemExit("test-oauth: the service exited during start-up")
        suite = Suite(svc, db, google, acme)
        suite.secrets.update({"google-client-secret-1", "github/client:secret",
                              "github%2Fclient%3Asecret"})
        suite.run("unknown provider -> 404", suite.t_unknown_provider)
        suite.run("authorize: PKCE S256, state, nonce", suite.t_authorize_request)
        suite.run("authorize: redirect_uri allow-list", suite.t_redirect_uri)
        suite.run("login, /me, second login, refresh", suite.t_login)
        suite.run("replayed state -> 400", suite.t_state_replay)
        suite.run("one state, 20 parallel callbacks -> one session", suite.t_state_race)
        suite.run("tampered or foreign state -> 400", suite.t_state_tampered)
        suite.run("expired state -> 400, swept", suite.t_state_expired)
        suite.run("callback without code/state -> 422", suite.t_missing_params)
        suite.run("provider error= -> 401", suite.t_provider_error)
        suite.run("PKCE: another verifier -> 401", suite.t_pkce)
        suite.run("id_token checks -> 401", suite.t_id_token)
        suite.run("provider failures -> 503", suite.t_provider_failures)
        if hasattr(suite, "user_alice"):
            suite.run("github flow, link by verified email", suite.t_link_by_email)
        suite.run("no pre-hijacked account takeover", suite.t_no_takeover)
        suite.run("TOTP account -> 401 mfa_required", suite.t_totp_account)
        suite.run("ES256 provider, public client", suite.t_es256_public_client)

        stop = svc.stop()
        svc = None
        log = suite.svc.log_text()
        if stop:
            problems.append("service did not drain cleanly: %s" % stop)
        for line in log.splitlines():
            if any(m in line for m in SANITIZER_MARKS):
                problems.append("sanitizer report in the log: %s" % line[:300])
                break
        leaked = sorted(s for s in suite.secrets if len(s) >= 8 and s in log)
        if leaked:
            problems.append("%d secret(s) reached the log, e.g. %s..." % (len(leaked),
                                                                          leaked[0][:6]))
        for p in problems:
            suite.failed += 1
            print("FAIL %s" % p)
        if not problems:
            suite.passed += 1
            print("PASS clean drain, no sanitizer report, no secret in the log (%d checked)" %
                  len(suite.secrets))

        murl, _ = db_url("misconfigured")
        try:
            run_misconfigured(binary, os.path.join(tmp, "misconfigured"), murl)
            suite.passed += 1
            print("PASS misconfigured provider is named (start-up or 503)")
        except Failure as e:
            suite.failed += 1
            print("FAIL misconfigured provider\n  %s" % e)
    finally:
        if svc is not None:
            svc.stop()
        for m in (google, acme):
            if m is not None:
                m.stop()
        for name in pg_names:
            subprocess.run(["psql", "-X", "-q", "-d", args.pg_url, "-c",
                            'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name],
                           capture_output=True, timeout=60)
        if args.keep:
            print("kept: %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    passed = suite.passed if suite else 0
    failed = suite.failed if suite else 1
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
