"""gravity_test - shared helpers for Gravity's Python end-to-end tests (stdlib only).

Tests run real service binaries from a build directory (BUILD/bin/<service>) on free
127.0.0.1 ports, on SQLite (DATA_DIR) or on a PostgreSQL database made for the run. Import:

    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(<repo root from HERE>, "tests", "lib"))
    import gravity_test as gt

What is here:
  fail(msg)                     print "FAIL: msg" and exit 1 (SystemExit, also inside threads)
  wait_for(what, cond, secs)    poll cond() every 50 ms until truthy, return its value; fail on
                                the deadline (no bare sleeps in tests: await a condition)
  free_port()                   a 127.0.0.1 port that was free a moment ago (closed: nothing
                                listens on it, which also makes a "dead" peer URL)
  request(url, ...)             one HTTP request -> (status, headers, json body); status 0 when
                                the server cannot be reached
  Service                       a service binary: PORT=0 + GR_PORT_FILE, DATA_DIR, waits for the
                                port file and /ready; stop() = SIGTERM, exit status 0, no
                                sanitizer report and no secret in its log
  Minter, mint()                ES256 key + JWKS through BUILD/bin/gr-jwt, signed tokens
  Db                            read-only SQL on a service's database (sqlite3 or psql)
  pg_database(), pg_drop()      create / drop a database on a PostgreSQL server URL
  parallel(n, fn)               fn(0..n-1) on n threads released together
  BusClient                     publish to / list / subscribe and pull from 14-event-bus-service
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

#: default seconds a wait_for() may take
DEADLINE = 20.0
#: text a sanitizer (ASan, UBSan, LSan, TSan) writes to a service's log when it finds a bug
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
#: the repository root (tests/lib/..)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(msg):
    """Print "FAIL: msg" and end the test with status 1 (raises SystemExit)."""
    print("FAIL: " + msg)
    raise SystemExit(1)


def wait_for(what, cond, deadline=None, interval=0.05):
    """Call cond() every `interval` seconds until it returns a truthy value, and return it.

    `what` names the condition in the failure message. `deadline` is in seconds (DEADLINE when
    None; read at call time so a test may set gravity_test.DEADLINE)."""
    end = time.monotonic() + (DEADLINE if deadline is None else deadline)
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    fail("timed out waiting for " + what)


def free_port():
    """A 127.0.0.1 TCP port the kernel just handed out and that is closed again."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _decode(raw, as_text):
    if as_text:
        return raw.decode(errors="replace")
    return json.loads(raw) if raw else None


def request(url, method="GET", body=None, token=None, headers=None, ctype="application/json",
            timeout=30, raw=False):
    """One HTTP request; returns (status, headers, body).

    body (when not None) is sent as JSON with Content-Type `ctype`; token adds
    "Authorization: Bearer <token>"; headers are added as given. The answer body is parsed as
    JSON (None when empty), or returned as text with raw=True. An error status (4xx/5xx) is
    returned, not raised; its body is None when it is not JSON. When the server cannot be
    reached the result is (0, {}, None)."""
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = ctype
    if token:
        h["Authorization"] = "Bearer " + token
    r = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), _decode(resp.read(), raw)
    except urllib.error.HTTPError as e:
        b = e.read()
        try:
            return e.code, dict(e.headers), _decode(b, raw)
        except ValueError:
            return e.code, dict(e.headers), None
    except OSError:  # URLError, refused, reset, timeout
        return 0, {}, None


class Service:
    """One service process started from BUILD/bin/<binary>.

    Service(build, tmp, name, env, binary=None, data_dir="own")
      name      its folder tmp/<name> (log, port file, data) and its name in messages
      binary    BUILD/bin/<binary>; the name when None
      env       the environment (copied at start); HOST=127.0.0.1, PORT and GR_PORT_FILE
                are always set by start()
      data_dir  "own": DATA_DIR=tmp/<name>/data; None: DATA_DIR as env has it (replicas
                sharing one SQLite file set it themselves)
    start(extra=None, port=None) merges `extra` into the env, listens on `port` (0: free) and
    waits for the port file and GET /ready 200; it fails at once when the process exits.
    The log (stdout+stderr) is tmp/<name>/log, appended to across restarts."""

    def __init__(self, build, tmp, name, env, binary=None, data_dir="own"):
        self.name = name
        self.bin = os.path.join(build, "bin", binary or name)
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.data_dir = data_dir
        self.port = None
        self.base = None
        self.proc = None
        self.logpath = os.path.join(self.dir, "log")
        self.log = open(self.logpath, "ab")

    def start(self, extra=None, port=None):
        env = dict(self.env)
        env.update(extra or {})
        env["HOST"] = "127.0.0.1"  # tests bind loopback only
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": str(port or 0), "GR_PORT_FILE": pf})
        if self.data_dir == "own":
            env["DATA_DIR"] = os.path.join(self.dir, "data")
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)

        def port_file():
            if self.proc.poll() is not None:
                fail("%s exited with status %s:\n%s" % (self.name, self.proc.returncode,
                                                        self.log_text()[-3000:]))
            if os.path.exists(pf):
                return open(pf).read().strip()
            return None

        self.port = int(wait_for(self.name + " port file", port_file))
        self.base = "http://127.0.0.1:%d" % self.port
        wait_for(self.name + " /ready", lambda: self.req("GET", "/ready")[0] == 200)
        return self

    def url(self):
        """http://127.0.0.1:<port>"""
        return self.base

    def call(self, method, path, body=None, token=None, headers=None, ctype="application/json",
             key=None, timeout=30, raw=False):
        """request() to this service; key sets Idempotency-Key. -> (status, headers, body)"""
        h = dict(headers or {})
        if key:
            h["Idempotency-Key"] = key
        return request(self.base + path, method, body, token, h, ctype, timeout, raw)

    def req(self, method, path, body=None, token=None, headers=None, ctype="application/json",
            key=None, timeout=30):
        """Like call() without the headers: -> (status, json body)."""
        st, _, b = self.call(method, path, body, token, headers, ctype, key, timeout)
        return st, b

    def log_text(self):
        """The log so far."""
        self.log.flush()
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def check_log(self, secrets=()):
        """Fail when the log has a sanitizer report or any of `secrets` (e.g. bearer tokens)."""
        text = self.log_text()
        for m in SANITIZER_MARKS:
            if m in text:
                fail("%s log has %s:\n%s" % (self.name, m, text[-4000:]))
        for s in secrets:
            if s and s in text:
                fail("%s logged a secret (a bearer token)" % self.name)

    def stop(self, check_log=True, secrets=()):
        """SIGTERM; fail unless it drains within 15 s with status 0. Then check_log(secrets)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("%s did not drain on SIGTERM" % self.name)
            if rc != 0:
                fail("%s exited with status %d:\n%s" % (self.name, rc, self.log_text()[-3000:]))
        self.proc = None
        if check_log:
            self.check_log(secrets)

    def kill9(self):
        """SIGKILL (a crash): no drain, no status check."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def _csv(v):
    return v if isinstance(v, str) else ",".join(v)


class Minter:
    """One ES256 key pair made by BUILD/bin/gr-jwt keygen (tmp/k.pem, tmp/jwks.json).

    Services verify the tokens with JWKS_URL=minter.jwks_url()."""

    def __init__(self, build, tmp, kid="t"):
        self.tool = os.path.join(build, "bin", "gr-jwt")
        self.kid = kid
        self.key = os.path.join(tmp, "k.pem")
        self.jwks = os.path.join(tmp, "jwks.json")
        subprocess.run([self.tool, "keygen", "--alg", "ES256", "--kid", kid, "--key", self.key,
                        "--jwks", self.jwks], check=True, stdout=subprocess.DEVNULL)

    def jwks_url(self):
        return "file://" + self.jwks

    def token(self, sub, perms, roles, ttl=86400):
        """A signed token; perms and roles are a comma list or a list of strings."""
        args = [self.tool, "sign", "--key", self.key, "--alg", "ES256", "--kid", self.kid,
                "--sub", sub, "--roles", _csv(roles), "--ttl", str(ttl), "--perms", _csv(perms)]
        return subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.decode().strip()


def mint(build, tmp, roles, perms):
    """A new key and one token for a random subject: -> (jwks path, token)."""
    m = Minter(build, tmp)
    return m.jwks, m.token(str(uuid.uuid4()), perms, roles)


class Db:
    """Read-only SQL on a service's database: Db(sqlite_path=...) or Db(pg_url=...), or
    Db.from_url("sqlite:///path" | "postgres://..."). rows(sql) -> [tuple of str]."""

    def __init__(self, sqlite_path=None, pg_url=None):
        self.sqlite_path, self.pg_url = sqlite_path, pg_url

    @classmethod
    def from_url(cls, url):
        if url.startswith("sqlite://"):
            return cls(sqlite_path=url[len("sqlite://"):])
        return cls(pg_url=url)

    def rows(self, sql):
        if self.sqlite_path:
            con = sqlite3.connect("file:%s?mode=ro" % self.sqlite_path, uri=True, timeout=30)
            try:
                return [tuple(str(c) for c in r) for r in con.execute(sql).fetchall()]
            finally:
                con.close()
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-d", self.pg_url,
                              "-c", sql], check=True, stdout=subprocess.PIPE).stdout.decode()
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def events(self, type_, subject=None):
        """The CloudEvents of `type_` (and `subject`) in the service's outbox table."""
        q = "SELECT envelope FROM outbox WHERE type = '%s'" % type_.replace("'", "''")
        if subject:
            q += " AND subject = '%s'" % subject.replace("'", "''")
        return [json.loads(r[0]) for r in self.rows(q)]


def pg_database(admin_url, name):
    """CREATE DATABASE "name" on the server of admin_url; returns the new database's URL."""
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, stdout=subprocess.DEVNULL)
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pg_drop(admin_url, name):
    """DROP DATABASE IF EXISTS "name" WITH (FORCE); errors are ignored (cleanup)."""
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c",
                    'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parallel(n, fn):
    """Run fn(i) for i in 0..n-1 on n threads released together by a barrier; return the
    results in order. Fails when any call raised (fail() inside raises SystemExit there)."""
    barrier = threading.Barrier(n)
    res = [None] * n
    errors = []

    def run(i):
        barrier.wait()
        try:
            res[i] = fn(i)
        except BaseException as e:  # noqa: B036 - SystemExit from fail() too
            errors.append(repr(e))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        fail("%d of %d clients failed: %s" % (len(errors), n, errors[:3]))
    return res


class BusClient:
    """14-event-bus-service as a test sees it: BusClient(bus_service, token)."""

    def __init__(self, bus, token):
        self.bus, self.token = bus, token

    def publish(self, type_, subject, data, source="/gravity/test", event_id=None):
        """POST one CloudEvent (id event_id, a new one when None); fails unless 200/201.
        Returns the event's id."""
        ev = {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": source,
              "type": type_, "subject": subject, "data": data}
        st, body = self.bus.req("POST", "/api/v1/events", ev, self.token,
                                ctype="application/cloudevents+json")
        if st not in (200, 201):
            fail("publish %s: %s %s" % (type_, st, body))
        return ev["id"]

    def events(self, type_, subject=None, limit=100):
        """The stored events of `type_` (and `subject`), oldest first (GET /api/v1/events)."""
        st, body = self.bus.req("GET", "/api/v1/events?type=%s&limit=%d" % (type_, limit),
                                token=self.token)
        if st != 200:
            fail("list %s: %s" % (type_, st))
        return [d["event"] for d in body["data"]
                if subject is None or d["event"].get("subject") == subject]
