#!/usr/bin/python3
"""Black-box HTTP test runner for Gravity services (STYLE R25/R26).

Replays declarative `.case` files (format: lib/gr/tests/http/README.md) against
a service binary.  Every case file gets its own fresh server process, its own
temporary directory and an empty database (a SQLite file, or a new PostgreSQL
database), so files never depend on each other or on the order they run in.
Steps inside a file run in order; the first failing step ends the file.

The runner mints JWTs with gr-jwt against a JWKS file it creates once per run,
snapshots the service database for @nochange / @count-rows, checks that the
server drains cleanly on SIGTERM, that its log holds no sanitizer report and
that no bearer token it used ever reached the log.

Only the Python 3 standard library is used.  The last line printed is always
exactly `N passed, N failed` (counting case files); the exit status is 0 iff
every file passed.
"""

import argparse
import base64
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

START_DEADLINE = 15.0  # seconds for the port file and GET /ready == 200
STOP_DEADLINE = 10.0  # seconds for the server to exit after SIGTERM
REQUEST_TIMEOUT = 60.0  # socket timeout of one request
POLL = 0.02  # poll interval while waiting for start-up / exit
TRUNC = 2048  # expected/actual bodies are truncated to this in reports
LOG_TAIL = 30  # server log lines shown for a failure
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
DEFAULT_ISS = "gravity"
DEFAULT_AUD = "gravity"

REQUEST_DIRECTIVES = ("body-hex", "body-repeat", "header-repeat", "parallel")
CHECK_DIRECTIVES = ("error", "type", "nochange", "len", "count-rows", "save")

HEADER_RE = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*)$")
VAR_RE = re.compile(r"\{\{([^{}]+)\}\}")
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SAVE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUIDV7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|\+00:00)$")
STATUS_RE = re.compile(r"^(\d{3})(?:\s*x\s*(\d+|\*))?$")
ANY = "*"  # `201 x*`: any number of these, 0 included (with @parallel)


class CaseError(Exception):
    """A malformed case file or a step that cannot even be prepared."""


class StepFailure(Exception):
    """A check of a step did not hold; the message says which."""


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


class Step:
    """One `### name` block: a request and its expectations."""

    def __init__(self, name, lineno):
        self.name = name
        self.lineno = lineno
        self.method = None
        self.path = None
        self.headers = []  # [(name, value)]
        self.body_lines = None  # None: no textual body
        self.body_hex = None
        self.body_repeat = None  # (n, text)
        self.header_repeats = []  # [(name, n, text)]
        self.parallel = 0
        self.expect = []  # [(status, count or None)]
        self.problem = False
        self.expect_headers = []  # [(name, value)]
        self.expect_body_lines = []
        self.checks = []  # [(directive, args, lineno)]

    def request_line(self):
        return "%s %s" % (self.method, self.path)


def _directive(line):
    """Split '@name rest' into (name, rest)."""
    word, _, rest = line[1:].partition(" ")
    return word.strip(), rest.strip()


def _parse_int(text, what, lineno):
    try:
        value = int(text)
    except ValueError:
        raise CaseError("line %d: %s must be an integer, got %r" % (lineno, what, text))
    if value < 0:
        raise CaseError("line %d: %s must not be negative" % (lineno, what))
    return value


def _request_directive(step, line, lineno):
    name, rest = _directive(line)
    if name == "body-hex":
        step.body_hex = (rest, lineno)
    elif name == "body-repeat":
        parts = rest.split(None, 1)
        if len(parts) != 2:
            raise CaseError("line %d: usage: @body-repeat N TEXT" % lineno)
        step.body_repeat = (_parse_int(parts[0], "N", lineno), parts[1])
    elif name == "header-repeat":
        parts = rest.split(None, 2)
        if len(parts) != 3 or not HEADER_RE.match(parts[0] + ": x"):
            raise CaseError("line %d: usage: @header-repeat NAME N TEXT" % lineno)
        step.header_repeats.append((parts[0], _parse_int(parts[1], "N", lineno), parts[2]))
    elif name == "parallel":
        step.parallel = _parse_int(rest, "@parallel N", lineno)
        if step.parallel < 1:
            raise CaseError("line %d: @parallel needs N >= 1" % lineno)
    elif name in CHECK_DIRECTIVES:
        raise CaseError("line %d: @%s belongs after the '>>>' line" % (lineno, name))
    else:
        raise CaseError("line %d: unknown request directive @%s" % (lineno, name))


def _check_directive(step, line, lineno):
    name, rest = _directive(line)
    if name not in CHECK_DIRECTIVES:
        raise CaseError("line %d: unknown check directive @%s" % (lineno, name))
    if name == "error" or name == "type":
        if not rest:
            raise CaseError("line %d: @%s needs an argument" % (lineno, name))
        args = (rest,)
    elif name == "nochange":
        if rest:
            raise CaseError("line %d: @nochange takes no argument" % lineno)
        args = ()
    elif name == "len":
        parts = rest.rsplit(None, 1)
        if len(parts) != 2:
            raise CaseError("line %d: usage: @len POINTER N" % lineno)
        args = (parts[0], parts[1])
    elif name == "count-rows":
        parts = rest.split()
        if len(parts) != 2 or not IDENT_RE.match(parts[0]):
            raise CaseError("line %d: usage: @count-rows TABLE N" % lineno)
        args = (parts[0], parts[1])
    else:  # save
        var, eq, src = rest.partition("=")
        var, src = var.strip(), src.strip()
        if not eq or not SAVE_NAME_RE.match(var) or not src:
            raise CaseError("line %d: usage: @save NAME = /pointer | header:NAME" % lineno)
        if var in ("uniq", "seq") or ":" in var:
            raise CaseError("line %d: @save cannot define %r" % (lineno, var))
        if not (src.startswith("/") or src.startswith("header:") or src.startswith("{{")):
            raise CaseError("line %d: @save source must be a JSON Pointer or header:NAME" % lineno)
        args = (var, src)
    step.checks.append((name, args, lineno))


def _parse_expect(step, text, lineno):
    text = text.strip()
    if text.endswith(" problem") or text == "problem":
        step.problem = True
        text = text[: -len("problem")].strip()
    if not text:
        raise CaseError("line %d: '>>>' needs a status" % lineno)
    for part in text.split(","):
        m = STATUS_RE.match(part.strip())
        if not m:
            raise CaseError("line %d: bad status expectation %r" % (lineno, part.strip()))
        c = m.group(2)
        step.expect.append((int(m.group(1)), ANY if c == ANY else int(c) if c else None))
    seen = [s for s, _ in step.expect]
    if len(set(seen)) != len(seen):
        raise CaseError("line %d: a status is listed twice" % lineno)


def _validate(step):
    where = "step %r (line %d)" % (step.name, step.lineno)
    if step.method is None:
        raise CaseError("%s: no request line" % where)
    if not step.expect:
        raise CaseError("%s: no '>>>' status line" % where)
    sources = sum(x is not None for x in (step.body_lines, step.body_hex, step.body_repeat))
    if sources > 1:
        raise CaseError("%s: more than one body (text, @body-hex, @body-repeat)" % where)
    if step.parallel:
        if any(c is None for _, c in step.expect) and len(step.expect) > 1:
            raise CaseError("%s: with @parallel every status needs a count (201 x1, 409 x49)" % where)
        fixed = [c for _, c in step.expect if c not in (None, ANY)]
        if any(c == ANY for _, c in step.expect):
            if sum(fixed) > step.parallel:
                raise CaseError("%s: status counts add up to more than @parallel %d"
                                % (where, step.parallel))
        elif all(c is not None for _, c in step.expect):
            total = sum(c for _, c in step.expect)
            if total != step.parallel:
                raise CaseError("%s: status counts add up to %d, @parallel is %d"
                                % (where, total, step.parallel))
    else:
        if len(step.expect) != 1 or step.expect[0][1] not in (None, 1):
            raise CaseError("%s: several statuses/counts need @parallel" % where)


def parse_case(path):
    """Parse a .case file into a list of Steps (raises CaseError)."""
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    steps = []
    step = None
    state = "none"  # none, reqline, headers, body, exp_headers, exp_body
    for idx, raw in enumerate(lines):
        lineno = idx + 1
        line = raw.rstrip("\r")
        if line.startswith("###"):
            if step is not None:
                _validate(step)
            step = Step(line[3:].strip() or ("line %d" % lineno), lineno)
            steps.append(step)
            state = "reqline"
            continue
        if line.startswith("#"):
            continue  # comment, anywhere
        if step is None:
            if line.strip():
                raise CaseError("line %d: text before the first '###' step" % lineno)
            continue
        if line.startswith(">>>"):
            if state not in ("headers", "body"):
                raise CaseError("line %d: '>>>' without a request" % lineno)
            _parse_expect(step, line[3:], lineno)
            state = "exp_headers"
            continue
        if state == "reqline":
            if not line.strip():
                continue
            if line.startswith("@"):
                _request_directive(step, line, lineno)
                continue
            parts = line.split()
            if len(parts) != 2:
                raise CaseError("line %d: request line must be 'METHOD PATH'" % lineno)
            step.method, step.path = parts
            state = "headers"
        elif state == "headers":
            if not line.strip():
                state = "body"
            elif line.startswith("@"):
                _request_directive(step, line, lineno)
            else:
                m = HEADER_RE.match(line)
                if not m:
                    raise CaseError("line %d: bad request header %r" % (lineno, line))
                step.headers.append((m.group(1), m.group(2)))
        elif state == "body":
            name = _directive(line)[0] if line.startswith("@") else None
            if name in CHECK_DIRECTIVES:
                raise CaseError("line %d: @%s belongs after the '>>>' line" % (lineno, name))
            if name in REQUEST_DIRECTIVES:
                _request_directive(step, line, lineno)
            elif step.body_lines is None and not line.strip():
                continue
            else:
                if step.body_lines is None:
                    step.body_lines = []
                step.body_lines.append(line)
        elif state == "exp_headers":
            if not line.strip():
                if step.expect_headers:
                    state = "exp_body"
                continue
            if line.startswith("@"):
                _check_directive(step, line, lineno)
                state = "exp_directives"
                continue
            m = HEADER_RE.match(line)
            if m and not step.expect_body_lines:
                step.expect_headers.append((m.group(1), m.group(2).strip()))
                continue
            step.expect_body_lines.append(line)
            state = "exp_body"
        elif state == "exp_body":
            if line.startswith("@"):
                _check_directive(step, line, lineno)
                state = "exp_directives"
            elif line.strip() or step.expect_body_lines:
                step.expect_body_lines.append(line)
        elif state == "exp_directives":
            if not line.strip():
                continue
            if not line.startswith("@"):
                raise CaseError("line %d: text after the check directives: %r" % (lineno, line))
            _check_directive(step, line, lineno)
    if step is not None:
        _validate(step)
    for st in steps:
        while st.expect_body_lines and not st.expect_body_lines[-1].strip():
            st.expect_body_lines.pop()
    if not steps:
        raise CaseError("no steps ('### name') in file")
    return steps


# --------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _default_sub(name):
    """A deterministic UUIDv7-shaped sub for a token name."""
    h = bytearray(hashlib.sha256(("gr-test-sub:" + name).encode()).digest()[:16])
    h[6] = 0x70 | (h[6] & 0x0F)
    h[8] = 0x80 | (h[8] & 0x3F)
    x = h.hex()
    return "%s-%s-%s-%s-%s" % (x[:8], x[8:12], x[12:16], x[16:20], x[20:])


BUILTIN_TOKENS = ("expired", "wrong-iss", "wrong-aud", "bad-sig", "none")


class TokenMinter:
    """Mints and caches JWTs for one run; thread-safe."""

    def __init__(self, tool, workdir, iss, aud):
        self.tool = shlex.split(tool)
        self.dir = workdir
        self.iss = iss
        self.aud = aud
        self.lock = threading.Lock()
        self.cache = {}  # (spec json) -> token
        self.tables = {}  # tokens.json path -> dict
        self.es_key = os.path.join(workdir, "es.pem")
        self.rs_key = os.path.join(workdir, "rs.pem")
        self.jwks = os.path.join(workdir, "jwks.json")
        self._keygen()

    def _run(self, args):
        p = subprocess.run(self.tool + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        if p.returncode != 0:
            raise CaseError("jwt tool %s failed (%d): %s" % (
                " ".join(args[:1]), p.returncode, p.stderr.decode(errors="replace").strip()))
        return p.stdout.decode().strip()

    def _keygen(self):
        es_jwks = os.path.join(self.dir, "jwks-es.json")
        rs_jwks = os.path.join(self.dir, "jwks-rs.json")
        self._run(["keygen", "--alg", "ES256", "--kid", "test-es", "--key", self.es_key,
                   "--jwks", es_jwks])
        self._run(["keygen", "--alg", "RS256", "--kid", "test-rs", "--key", self.rs_key,
                   "--jwks", rs_jwks])
        keys = []
        for p in (es_jwks, rs_jwks):
            with open(p) as f:
                keys.extend(json.load(f)["keys"])
        with open(self.jwks, "w") as f:
            json.dump({"keys": keys}, f)

    def table(self, case_dir):
        """The token table for a case directory: tokens.json there (optional) + admin."""
        path = os.path.join(case_dir, "tokens.json")
        with self.lock:
            if path in self.tables:
                return self.tables[path]
        table = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    table = json.load(f)
            except (OSError, ValueError) as e:
                raise CaseError("%s: %s" % (path, e))
            if not isinstance(table, dict):
                raise CaseError("%s: must be a JSON object of token specs" % path)
        if "admin" not in table:
            table["admin"] = {"perms": ["*"], "roles": ["super_admin"]}
        for name, spec in table.items():
            if not isinstance(spec, dict):
                raise CaseError("%s: token %r must be an object" % (path, name))
            spec.setdefault("sub", _default_sub(name))
        with self.lock:
            self.tables[path] = table
        return table

    def sub(self, case_dir, name):
        table = self.table(case_dir)
        if name in table:
            return table[name]["sub"]
        if name in BUILTIN_TOKENS:
            return table["admin"]["sub"]
        raise CaseError("unknown token %r (not built-in, not in tokens.json)" % name)

    def _mint(self, spec):
        key = json.dumps(spec, sort_keys=True)
        with self.lock:
            tok = self.cache.get(key)
            if tok is not None:
                return tok
            alg = spec.get("alg", "ES256")
            if alg not in ("ES256", "RS256"):
                raise CaseError("token alg must be ES256 or RS256, got %r" % alg)
            pem, kid = (self.es_key, "test-es") if alg == "ES256" else (self.rs_key, "test-rs")
            args = ["sign", "--key", pem, "--alg", alg, "--kid", spec.get("kid", kid),
                    "--sub", str(spec["sub"]),
                    "--ttl", str(int(spec.get("ttl", 3600))),
                    "--iss", str(spec.get("iss", self.iss)),
                    "--aud", str(spec.get("aud", self.aud))]
            roles = spec.get("roles", [])
            perms = spec.get("perms", [])
            if roles:
                args += ["--roles", ",".join(roles)]
            if perms:
                args += ["--perms", ",".join(perms)]
            if "typ" in spec:
                args += ["--typ", str(spec["typ"])]
            if "nbf_offset" in spec:  # gr-jwt extensions
                args += ["--nbf-offset", str(int(spec["nbf_offset"]))]
            if "claims" in spec:
                args += ["--claims", json.dumps(spec["claims"], separators=(",", ":"))]
            tok = self._run(args)
            if tok.count(".") != 2:
                raise CaseError("jwt tool printed no token: %r" % tok[:200])
            self.cache[key] = tok
            return tok

    def token(self, case_dir, name):
        table = self.table(case_dir)
        if name in table:
            return self._mint(table[name])
        admin = dict(table["admin"])
        if name == "expired":
            admin["ttl"] = -120
            return self._mint(admin)
        if name == "wrong-iss":
            admin["iss"] = "wrong-issuer.invalid"
            return self._mint(admin)
        if name == "wrong-aud":
            admin["aud"] = "wrong-audience.invalid"
            return self._mint(admin)
        valid = self._mint(admin)
        head, payload, sig = valid.split(".")
        if name == "bad-sig":
            mid = len(sig) // 2
            repl = "A" if sig[mid] != "A" else "B"
            return "%s.%s.%s%s%s" % (head, payload, sig[:mid], repl, sig[mid + 1:])
        if name == "none":
            none_head = _b64url(json.dumps({"alg": "none", "typ": "at+jwt"},
                                           separators=(",", ":")).encode())
            return "%s.%s." % (none_head, payload)
        raise CaseError("unknown token %r (not built-in, not in tokens.json)" % name)


# --------------------------------------------------------------------------
# Database snapshots
# --------------------------------------------------------------------------


class Database:
    """The service database of one case file: SQLite file or PostgreSQL database."""

    def __init__(self, engine, location):
        self.engine = engine
        self.location = location  # sqlite: file path; pg: URL

    def _psql(self, sql, stdin=None):
        p = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.location,
                            "-c" if stdin is None else "-f", sql if stdin is None else "-"],
                           input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        if p.returncode != 0:
            raise StepFailure("psql failed: %s" % p.stderr.decode(errors="replace").strip())
        return p.stdout.decode("utf-8", errors="replace")

    def _sqlite(self):
        if not os.path.exists(self.location):
            return None
        uri = "file:%s?mode=ro" % urllib.parse.quote(self.location)
        con = sqlite3.connect(uri, uri=True, timeout=10)
        con.text_factory = lambda b: b.decode("utf-8", errors="replace")
        return con

    def tables(self):
        if self.engine == "sqlite":
            con = self._sqlite()
            if con is None:
                return []
            try:
                rows = con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                   "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
            finally:
                con.close()
            return [r[0] for r in rows]
        out = self._psql("SELECT tablename FROM pg_tables WHERE schemaname='public' ORDER BY 1")
        return [t for t in out.split("\n") if t]

    def snapshot(self):
        """{table: sorted list of row lines} for every table."""
        snap = {}
        if self.engine == "sqlite":
            con = self._sqlite()
            if con is None:
                return snap
            try:
                names = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
                for t in names:
                    rows = con.execute('SELECT * FROM "%s"' % t.replace('"', '""')).fetchall()
                    snap[t] = sorted(repr(r) for r in rows)
            finally:
                con.close()
            return snap
        names = self.tables()
        if not names:
            return snap
        marker = "\x01gr-table\x01"
        script = []
        for t in names:
            q = '"%s"' % t.replace('"', '""')
            script.append("\\echo '%s%s'" % (marker, t.replace("'", "")))
            script.append("COPY (SELECT * FROM %s) TO STDOUT;" % q)
        out = self._psql(None, stdin="\n".join(script).encode())
        current = None
        for line in out.split("\n"):
            if line.startswith(marker):
                current = line[len(marker):]
                snap[current] = []
            elif current is not None and line:
                snap[current].append(line)
        for t in snap:
            snap[t].sort()
        return snap

    def count(self, table):
        if table not in self.tables():
            raise StepFailure("@count-rows %s: no such table" % table)
        if self.engine == "sqlite":
            con = self._sqlite()
            if con is None:
                raise StepFailure("@count-rows %s: the database file does not exist" % table)
            try:
                return con.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]
            except sqlite3.Error as e:
                raise StepFailure("@count-rows %s: %s" % (table, e))
            finally:
                con.close()
        return int(self._psql('SELECT count(*) FROM "%s"' % table).strip())


def diff_snapshots(before, after):
    msgs = []
    for t in sorted(set(before) | set(after)):
        if t not in before:
            msgs.append("table %s appeared with %d rows" % (t, len(after[t])))
            continue
        if t not in after:
            msgs.append("table %s disappeared" % t)
            continue
        if before[t] == after[t]:
            continue
        b, a = list(before[t]), list(after[t])
        added = list(a)
        removed = []
        for row in b:
            if row in added:
                added.remove(row)
            else:
                removed.append(row)
        msgs.append("table %s changed (%d -> %d rows)" % (t, len(b), len(a)))
        for row in removed[:5]:
            msgs.append("  - " + row[:300])
        for row in added[:5]:
            msgs.append("  + " + row[:300])
    return msgs


# --------------------------------------------------------------------------
# JSON matching
# --------------------------------------------------------------------------


def _valid_time(s):
    m = TIME_RE.match(s)
    if not m:
        return False
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    try:
        datetime.datetime(y, mo, d, h, mi, min(sec, 59))
    except ValueError:
        return False
    return sec <= 60


def match_placeholder(exp, act):
    """For a placeholder string exp, return (True/False) or None if not a placeholder."""
    if exp == "<any>":
        return True
    if exp == "<string>":
        return isinstance(act, str)
    if exp == "<int>":
        return isinstance(act, int) and not isinstance(act, bool)
    if exp == "<null>":
        return act is None
    if exp == "<nonnull>":
        return act is not None
    if exp == "<uuid>":
        return isinstance(act, str) and bool(UUID_RE.match(act))
    if exp == "<uuidv7>":
        return isinstance(act, str) and bool(UUIDV7_RE.match(act))
    if exp == "<time>":
        return isinstance(act, str) and _valid_time(act)
    return None


def _show(v):
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 200 else s[:200] + "..."


def json_match(exp, act, path=""):
    """Return None if act matches the expected subset exp, else a message."""
    where = path or "/"
    if isinstance(exp, str):
        ph = match_placeholder(exp, act)
        if ph is True:
            return None
        if ph is False:
            return "%s: expected %s, got %s" % (where, exp, _show(act))
        if exp == "<absent>":
            return "%s: <absent> is only valid as an object member" % where
    if isinstance(exp, dict):
        if not isinstance(act, dict):
            return "%s: expected an object, got %s" % (where, _show(act))
        for k, v in exp.items():
            sub = "%s/%s" % (path, k.replace("~", "~0").replace("/", "~1"))
            if v == "<absent>":
                if k in act:
                    return "%s: expected absent, got %s" % (sub, _show(act[k]))
                continue
            if k not in act:
                return "%s: missing (expected %s)" % (sub, _show(v))
            msg = json_match(v, act[k], sub)
            if msg:
                return msg
        return None
    if isinstance(exp, list):
        if not isinstance(act, list):
            return "%s: expected an array, got %s" % (where, _show(act))
        if len(exp) != len(act):
            return "%s: expected %d elements, got %d" % (where, len(exp), len(act))
        for i, (e, a) in enumerate(zip(exp, act)):
            msg = json_match(e, a, "%s/%d" % (path, i))
            if msg:
                return msg
        return None
    if type(exp) is not type(act) or exp != act:
        return "%s: expected %s, got %s" % (where, _show(exp), _show(act))
    return None


def json_pointer(doc, ptr):
    """Resolve an RFC 6901 pointer; raises KeyError with a message."""
    if ptr == "":
        return doc
    if not ptr.startswith("/"):
        raise KeyError("bad JSON Pointer %r" % ptr)
    cur = doc
    for tok in ptr[1:].split("/"):
        tok = tok.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, dict):
            if tok not in cur:
                raise KeyError("%s: %r not found" % (ptr, tok))
            cur = cur[tok]
        elif isinstance(cur, list):
            if not re.match(r"^(0|[1-9][0-9]*)$", tok) or int(tok) >= len(cur):
                raise KeyError("%s: index %r out of range" % (ptr, tok))
            cur = cur[int(tok)]
        else:
            raise KeyError("%s: cannot descend into %s" % (ptr, _show(cur)))
    return cur


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # [(name, value)]
        self.body = body
        self._json = None
        self._json_err = None
        self._parsed = False

    def header_values(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        if not self._parsed:
            self._parsed = True
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                self._json_err = "response body is not JSON (%s)" % e
        if self._json_err:
            raise StepFailure(self._json_err)
        return self._json


def send_request(port, method, path, headers, body, barrier=None):
    """Send one request on a fresh connection; return a Response or raise StepFailure.

    The request bytes (request line, headers exactly as given, body) are written
    by a helper thread while this thread reads the response with http.client, so
    a server that answers early (413, 431) and resets the connection is still read.
    """
    head = [("%s %s HTTP/1.1\r\n" % (method, path)).encode("utf-8")]
    for k, v in headers:
        head.append(k.encode("utf-8") + b": " + (v if isinstance(v, bytes) else v.encode("utf-8"))
                    + b"\r\n")
    head.append(b"\r\n")
    payload = b"".join(head) + body
    send_err = []
    sender = None
    sock = None
    try:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        except OSError as e:
            raise StepFailure("cannot connect to 127.0.0.1:%d: %s" % (port, e))
        if barrier is not None:
            try:
                barrier.wait(timeout=REQUEST_TIMEOUT)
            except threading.BrokenBarrierError:
                raise StepFailure("@parallel barrier broken")

        def push():
            try:
                view = memoryview(payload)
                for off in range(0, len(view), 65536):
                    sock.sendall(view[off:off + 65536])
            except OSError as e:  # BrokenPipe, ConnectionReset, shut down below
                send_err.append(e)

        sender = threading.Thread(target=push, daemon=True)
        sender.start()
        resp = http.client.HTTPResponse(sock, method=method)
        try:
            resp.begin()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            extra = " (while sending: %s)" % send_err[0] if send_err else ""
            raise StepFailure("no HTTP response: %s: %s%s" % (type(e).__name__, e, extra))
        finally:
            resp.close()
        return Response(resp.status, resp.getheaders(), data)
    finally:
        if sock is not None:
            if sender is not None and sender.is_alive():
                try:  # wakes a sender blocked on a peer that stopped reading
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            sock.close()
        if sender is not None:
            sender.join(timeout=REQUEST_TIMEOUT)


# --------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------


LIVE_LOCK = threading.Lock()
LIVE_PIDS = set()  # servers still running; killed if the runner itself is interrupted


class Server:
    def __init__(self, cmd, tmp, env):
        self.tmp = tmp
        self.log_path = os.path.join(tmp, "server.log")
        self.port_file = env["GR_PORT_FILE"]
        self.port = None
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        with LIVE_LOCK:
            LIVE_PIDS.add(self.proc.pid)

    def _read_port(self):
        try:
            with open(self.port_file) as f:
                text = f.read().strip()
        except OSError:
            return None
        if not re.match(r"^[0-9]{1,5}$", text) or not 0 < int(text) < 65536:
            return None
        return int(text)

    def wait_ready(self):
        """Wait for the port file, then GET /ready == 200; raise StepFailure on timeout."""
        deadline = time.monotonic() + START_DEADLINE
        last = "no port file %s" % self.port_file
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise StepFailure("server exited during start-up with status %d" % rc)
            port = self._read_port()
            if port is not None:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/ready")
                    r = c.getresponse()
                    r.read()
                    c.close()
                    if r.status == 200:
                        self.port = port
                        return
                    last = "GET /ready returned %d" % r.status
                except (OSError, http.client.HTTPException) as e:
                    last = "GET /ready: %s" % e
            time.sleep(POLL)
        raise StepFailure("server not ready within %.0f s (%s)" % (START_DEADLINE, last))

    def stop(self):
        """SIGTERM, wait; return None if it exited 0, else a message."""
        msg = None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                msg = "server did not drain cleanly: still running %.0f s after SIGTERM" % STOP_DEADLINE
                self.proc.kill()  # SIGKILL to the PID we started, last resort
                self.proc.wait()
        with LIVE_LOCK:
            LIVE_PIDS.discard(self.proc.pid)
        rc = self.proc.returncode
        if msg is None and rc != 0:
            how = ("killed by signal %d" % -rc) if rc < 0 else ("exit status %d" % rc)
            msg = "server did not drain cleanly (%s)" % how
        if not self.log.closed:
            self.log.close()
        return msg

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self):
        lines = self.log_text().rstrip("\n").split("\n")[-LOG_TAIL:]
        return "\n".join(("    | " + (l if len(l) <= 500 else l[:500] + "...")) for l in lines)


# --------------------------------------------------------------------------
# Running a case file
# --------------------------------------------------------------------------


def _trunc(data):
    if isinstance(data, bytes):
        text = data[:TRUNC].decode("utf-8", errors="replace")
        more = len(data) > TRUNC
    else:
        text = data[:TRUNC]
        more = len(data) > TRUNC
    return text + ("... (%d bytes)" % len(data) if more else "")


def _repeat(text, n):
    unit = text.encode("utf-8")
    if not unit:
        raise CaseError("repeat TEXT is empty")
    return (unit * (n // len(unit) + 1))[:n]


class CaseRun:
    """State of one case file while it runs."""

    def __init__(self, runner, path):
        self.runner = runner
        self.path = path
        self.dir = os.path.dirname(os.path.abspath(path))
        self.vars = {"uniq": secrets.token_hex(6)}
        self.used_tokens = set()
        self.out = []
        self.db = None
        self.port = None

    def subst(self, text):
        def one(m):
            name = m.group(1).strip()
            if name.startswith("token:"):
                tok = self.runner.minter.token(self.dir, name[6:])
                self.used_tokens.add(tok)
                return tok
            if name.startswith("sub:"):
                return self.runner.minter.sub(self.dir, name[4:])
            if name in self.vars:
                return self.vars[name]
            raise CaseError("unknown variable {{%s}}" % name)
        return VAR_RE.sub(one, text)

    def build_request(self, step, seq=0):
        # {{seq}} is the index of a request within @parallel (0 otherwise), so N racing
        # requests can differ in one field (e.g. 50 slugs, one SKU).
        self.vars["seq"] = str(seq)
        path = self.subst(step.path)
        headers = [(k, self.subst(v)) for k, v in step.headers]
        for name, n, text in step.header_repeats:
            headers.append((name, _repeat(self.subst(text), n)))
        body = None
        if step.body_lines is not None:
            lines = list(step.body_lines)
            while lines and not lines[-1].strip():
                lines.pop()
            body = self.subst("\n".join(lines)).encode("utf-8")
        elif step.body_hex is not None:
            text, lineno = step.body_hex
            try:
                body = bytes.fromhex("".join(self.subst(text).split()))
            except ValueError:
                raise CaseError("line %d: bad @body-hex" % lineno)
        elif step.body_repeat is not None:
            body = _repeat(self.subst(step.body_repeat[1]), step.body_repeat[0])
        names = {k.lower() for k, _ in headers}
        extra = []
        if "host" not in names:
            extra.append(("Host", "127.0.0.1:%d" % self.port))
        if "content-length" not in names and "transfer-encoding" not in names:
            if body is not None or step.method in ("POST", "PUT", "PATCH"):
                extra.append(("Content-Length", str(len(body or b""))))
        return path, extra + headers, body or b""

    def check_response(self, step, resp):
        """Per-response checks: headers, problem, @type, @error, body subset, @len."""
        for name, exp in step.expect_headers:
            exp = self.subst(exp)
            vals = resp.header_values(name)
            if exp == "<absent>":
                if vals:
                    raise StepFailure("header %s: expected absent, got %r" % (name, vals[0]))
                continue
            if not vals:
                raise StepFailure("header %s: missing (expected %r)" % (name, exp))
            ok = False
            for v in vals:
                ph = match_placeholder(exp, v)
                if ph is True or (ph is None and v == exp):
                    ok = True
            if not ok:
                raise StepFailure("header %s: expected %r, got %r" % (name, exp, vals))
        checks_type = [a for d, a, _ in step.checks if d == "type"]
        checks_error = [a for d, a, _ in step.checks if d == "error"]
        if step.problem or checks_type or checks_error:
            self.check_problem(step, resp, checks_type, checks_error)
        if step.expect_body_lines:
            text = self.subst("\n".join(step.expect_body_lines)).strip()
            try:
                exp = json.loads(text)
            except ValueError as e:
                raise CaseError("expected body (line %d+) is not valid JSON: %s"
                                % (step.lineno, e))
            msg = json_match(exp, resp.json())
            if msg:
                raise StepFailure("body mismatch at %s" % msg)
        for d, args, _ in step.checks:
            if d == "len":
                ptr, n = self.subst(args[0]), self.subst(args[1])
                try:
                    want = int(n)
                    val = json_pointer(resp.json(), ptr)
                except ValueError:
                    raise CaseError("@len N must be an integer, got %r" % n)
                except KeyError as e:
                    raise StepFailure("@len %s: %s" % (ptr, e.args[0]))
                if not isinstance(val, list):
                    raise StepFailure("@len %s: not an array: %s" % (ptr, _show(val)))
                if len(val) != want:
                    raise StepFailure("@len %s: expected %d elements, got %d" % (ptr, want, len(val)))

    def check_problem(self, step, resp, types, errors):
        ctype = ";".join(resp.header_values("Content-Type")).split(";")[0].strip().lower()
        if ctype != "application/problem+json":
            raise StepFailure("problem: Content-Type is %r, expected application/problem+json" % ctype)
        doc = resp.json()
        if not isinstance(doc, dict):
            raise StepFailure("problem: body is not a JSON object")
        t = doc.get("type")
        if not isinstance(t, str) or not t.startswith("urn:gravity:problem:"):
            raise StepFailure("problem: type %s does not start with urn:gravity:problem:" % _show(t))
        if not isinstance(doc.get("title"), str):
            raise StepFailure("problem: title is not a string: %s" % _show(doc.get("title")))
        st = doc.get("status")
        if type(st) is not int or st != resp.status:
            raise StepFailure("problem: status %s != HTTP status %d" % (_show(st), resp.status))
        errs = doc.get("errors")
        if not isinstance(errs, list):
            raise StepFailure("problem: errors is not an array: %s" % _show(errs))
        for (want,) in types:
            want = self.subst(want)
            if t != "urn:gravity:problem:" + want:
                raise StepFailure("@type: expected urn:gravity:problem:%s, got %s" % (want, t))
        for (field,) in errors:
            field = self.subst(field)
            if not any(isinstance(e, dict) and e.get("field") == field for e in errs):
                got = [e.get("field") for e in errs if isinstance(e, dict)]
                raise StepFailure("@error %s: not in errors[] (fields: %s)" % (field, _show(got)))

    def save(self, step, resp):
        for d, args, _ in step.checks:
            if d != "save":
                continue
            var, src = args
            src = self.subst(src)
            if src.startswith("header:"):
                vals = resp.header_values(src[7:].strip())
                if not vals:
                    raise StepFailure("@save %s: no header %s" % (var, src[7:].strip()))
                self.vars[var] = vals[0]
                continue
            try:
                val = json_pointer(resp.json(), src)
            except KeyError as e:
                raise StepFailure("@save %s: %s" % (var, e.args[0]))
            self.vars[var] = val if isinstance(val, str) else json.dumps(val)

    def run_step(self, step):
        """Run one step; raise StepFailure or CaseError; return a short result."""
        path, headers, body = self.build_request(step)
        reqs = [self.build_request(step, i) for i in range(step.parallel)] if step.parallel else []
        need_snap = any(d == "nochange" for d, _, _ in step.checks)
        before = self.db.snapshot() if need_snap else None
        n = step.parallel or 1
        if step.parallel:
            barrier = threading.Barrier(n)
            results = [None] * n

            def worker(i):
                try:
                    results[i] = send_request(self.port, step.method, reqs[i][0], reqs[i][1],
                                              reqs[i][2], barrier)
                except StepFailure as e:
                    results[i] = e

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=REQUEST_TIMEOUT * 2)
            errs = [r for r in results if not isinstance(r, Response)]
            if errs:
                raise StepFailure("%d of %d parallel requests failed: %s"
                                  % (len(errs), n, errs[0] if errs[0] else "timeout"))
            responses = results
        else:
            responses = [send_request(self.port, step.method, path, headers, body)]
        self.last = responses
        counts = {}
        for r in responses:
            counts[r.status] = counts.get(r.status, 0) + 1
        want = {s: (c if c is not None else n) for s, c in step.expect}
        if any(s not in want or (want[s] != ANY and want[s] != c) for s, c in counts.items()) or \
                any(c != ANY and counts.get(s, 0) != c for s, c in want.items()):
            got = ", ".join("%d x%d" % (s, c) for s, c in sorted(counts.items()))
            exp = ", ".join("%d x%s" % (s, c) for s, c in sorted(want.items()))
            if n == 1:
                got, exp = str(responses[0].status), str(step.expect[0][0])
            raise StepFailure("status: expected %s, got %s" % (exp, got))
        first = step.expect[0][0]
        subject = [r for r in responses if r.status == first]
        for r in subject:
            self.check_response(step, r)
        for d, args, _ in step.checks:
            if d == "nochange":
                msgs = diff_snapshots(before, self.db.snapshot())
                if msgs:
                    raise StepFailure("@nochange: the database changed:\n    " + "\n    ".join(msgs))
            elif d == "count-rows":
                table, n_text = args
                try:
                    want_rows = int(self.subst(n_text))
                except ValueError:
                    raise CaseError("@count-rows N must be an integer")
                got_rows = self.db.count(table)
                if got_rows != want_rows:
                    raise StepFailure("@count-rows %s: expected %d, got %d" % (table, want_rows, got_rows))
        if subject:
            self.save(step, subject[0])

    def report_step(self, step, msg, server):
        o = self.out
        o.append("FAIL %s" % self.path)
        o.append("  step:     %s (line %d)" % (step.name, step.lineno))
        try:
            req = "%s %s" % (step.method, self.subst(step.path))
        except CaseError:
            req = step.request_line()
        o.append("  request:  %s%s" % (req, ("  (@parallel %d)" % step.parallel) if step.parallel else ""))
        o.append("  error:    %s" % msg.replace("\n", "\n  "))
        exp_status = ", ".join(("%d x%s" % (s, c)) if c is not None else str(s) for s, c in step.expect)
        o.append("  expected: %s%s" % (exp_status, " problem" if step.problem else ""))
        if step.expect_body_lines:
            o.append("    " + _trunc("\n".join(step.expect_body_lines)).replace("\n", "\n    "))
        last = getattr(self, "last", None)
        if last:
            first = [x for x in last if x.status == step.expect[0][0]]
            r = first[0] if first else last[0]
            o.append("  actual:   %d" % r.status)
            for k, v in r.headers:
                o.append("    %s: %s" % (k, _trunc(v)[:300]))
            o.append("    " + _trunc(r.body).replace("\n", "\n    "))
        if server is not None:
            o.append("  server log (last %d lines):" % LOG_TAIL)
            o.append(server.log_tail())

    def run(self):
        """Run the file; return True if it passed. Output collects in self.out."""
        t0 = time.monotonic()
        try:
            steps = parse_case(self.path)
        except (CaseError, OSError, UnicodeDecodeError) as e:
            self.out.append("FAIL %s\n  parse error: %s" % (self.path, e))
            return False
        tmp = tempfile.mkdtemp(prefix="gr-http-")
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        env = dict(os.environ)
        env.update({
            "PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": os.path.join(tmp, "port"),
            "DATA_DIR": data, "JWKS_URL": "file://" + self.runner.minter.jwks,
            "LOG_LEVEL": "info", "LOG_FORMAT": "json", "CURSOR_SECRET": "test",
            "JWT_ISSUER": self.runner.minter.iss, "JWT_AUDIENCE": self.runner.minter.aud,
            "EVENT_BUS": "http", "EVENT_BUS_URL": self.runner.dead_bus_url,
        })
        env.pop("SERVICE_TOKEN", None)
        # service.env beside the case file: KEY=VALUE lines added to the service's environment
        # (e.g. the auth service's bootstrap administrator).
        senv = os.path.join(os.path.dirname(os.path.abspath(self.path)), "service.env")
        if os.path.isfile(senv):
            with open(senv, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#") and "=" in line:
                        k, v = line.split("=", 1)
                        env[k.strip()] = v.strip()
        pg_name = None
        server = None
        passed = False
        try:
            if self.runner.engine == "sqlite":
                dbfile = os.path.join(data, "test.db")
                env["DATABASE_URL"] = "sqlite://" + dbfile
                self.db = Database("sqlite", dbfile)
            else:
                pg_name = "gr_t_" + secrets.token_hex(6)
                url = self.runner.pg_create(pg_name)
                env["DATABASE_URL"] = url
                self.db = Database("pg", url)
            server = Server(self.runner.cmd, tmp, env)
            try:
                server.wait_ready()
            except StepFailure as e:
                self.out.append("FAIL %s\n  start-up: %s" % (self.path, e))
                self.out.append("  server log (last %d lines):" % LOG_TAIL)
                self.out.append(server.log_tail())
                return False
            self.port = server.port
            failed = False
            for step in steps:
                self.last = None
                try:
                    self.run_step(step)
                except (StepFailure, CaseError) as e:
                    self.report_step(step, str(e), server)
                    failed = True
                    break
            stop_msg = server.stop()
            problems = []
            if stop_msg:
                problems.append(stop_msg)
            log = server.log_text()
            for line in log.split("\n"):
                if any(m in line for m in SANITIZER_MARKS):
                    problems.append("sanitizer report in server log: %s" % line.strip()[:300])
                    break
            for tok in sorted(self.used_tokens):
                sig = tok.rsplit(".", 1)[1]
                if tok in log or (len(sig) >= 16 and sig in log):
                    problems.append("a bearer token used by the runner appears in the server log "
                                    "(secrets must never be logged)")
                    break
            if problems:
                if not failed:
                    self.out.append("FAIL %s" % self.path)
                for p in problems:
                    self.out.append("  " + p)
                if not failed:
                    self.out.append("  server log (last %d lines):" % LOG_TAIL)
                    self.out.append(server.log_tail())
                failed = True
            passed = not failed
            if passed:
                self.out.append("PASS %s (%d steps, %.1f s)" % (self.path, len(steps),
                                                                time.monotonic() - t0))
            return passed
        except (CaseError, StepFailure, OSError, subprocess.SubprocessError) as e:
            self.out.append("FAIL %s\n  error: %s" % (self.path, e))
            if server is not None:
                self.out.append("  server log (last %d lines):" % LOG_TAIL)
                self.out.append(server.log_tail())
            return False
        finally:
            if server is not None and server.proc.poll() is None:
                server.stop()
            if self.runner.keep:
                self.out.append("  kept: %s%s" % (tmp, (" database %s" % pg_name) if pg_name else ""))
            else:
                if pg_name:
                    self.runner.pg_drop(pg_name)
                shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


class Runner:
    def __init__(self, args, workdir):
        self.cmd = shlex.split(args.bin)
        self.engine = args.engine
        self.pg_url = args.pg_url
        self.keep = args.keep
        iss = os.environ.get("JWT_ISSUER", DEFAULT_ISS)
        aud = os.environ.get("JWT_AUDIENCE", DEFAULT_AUD)
        self.minter = TokenMinter(args.jwt_tool, workdir, iss, aud)
        # The services' event bus: a port that is bound but never listens, so a relay's
        # publish is refused at once and outbox rows stay where the case can see them (and
        # no event ever reaches a bus a developer is running on the default port).
        self.dead_bus = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.dead_bus.bind(("127.0.0.1", 0))
        self.dead_bus_url = "http://127.0.0.1:%d" % self.dead_bus.getsockname()[1]

    def _admin_psql(self, sql):
        p = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.pg_url,
                            "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        if p.returncode != 0:
            raise CaseError("psql %r failed: %s" % (sql, p.stderr.decode(errors="replace").strip()))

    def pg_create(self, name):
        self._admin_psql('CREATE DATABASE "%s"' % name)
        u = urllib.parse.urlsplit(self.pg_url)
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))

    def pg_drop(self, name):
        try:
            self._admin_psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        except CaseError as e:
            print("warning: %s" % e, file=sys.stderr)


def collect(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files.extend(sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".case")))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise SystemExit("runner: no such case file or directory: %s" % p)
    return files


def expect_fail_ok(path, out):
    """--expect-fail: the file must fail, and with every '# expect-fail: TEXT' in its output."""
    if out.startswith("PASS "):
        return False, "expected to fail but passed"
    try:
        with open(path, encoding="utf-8") as f:
            wants = [l[len("# expect-fail:"):].strip() for l in f
                     if l.startswith("# expect-fail:")]
    except OSError:
        wants = []
    for w in wants:
        if w not in out:
            return False, "failed, but without %r in the report" % w
    return True, "failed as expected"


def on_interrupt(signo, frame):
    """SIGINT/SIGTERM to the runner: SIGKILL the servers it started, report, exit."""
    with LIVE_LOCK:
        pids = sorted(LIVE_PIDS)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    print("runner interrupted by signal %d; killed %d server(s); temp dirs and databases "
          "may remain" % (signo, len(pids)), flush=True)
    print("0 passed, 1 failed", flush=True)
    os._exit(128 + signo)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Replay .case files against a service binary.")
    ap.add_argument("--bin", required=True, help="service binary or command line")
    ap.add_argument("--engine", choices=("sqlite", "pg"), default="sqlite")
    ap.add_argument("--pg-url", help="postgres://… admin URL (required with --engine pg)")
    ap.add_argument("--jwt-tool", default="build/bin/gr-jwt", help="gr-jwt binary or command")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="case files run in parallel")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs and databases")
    ap.add_argument("--expect-fail", action="store_true",
                    help="self-test: a file passes iff it fails (and its '# expect-fail:' texts appear)")
    ap.add_argument("cases", nargs="+", help=".case files or directories")
    args = ap.parse_args(argv)
    if args.engine == "pg" and not args.pg_url:
        ap.error("--engine pg needs --pg-url")
    files = collect(args.cases)
    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    workdir = tempfile.mkdtemp(prefix="gr-http-run-")
    passed = failed = 0
    lock = threading.Lock()
    try:
        try:
            runner = Runner(args, workdir)
        except (CaseError, OSError, subprocess.SubprocessError) as e:
            print("runner: cannot create JWT keys: %s" % e)
            print("0 passed, %d failed" % len(files))
            return 1

        def one(path):
            run = CaseRun(runner, path)
            try:
                ok = run.run()
            except Exception as e:  # a runner bug must still count as a failure
                run.out.append("FAIL %s\n  runner error: %s: %s" % (path, type(e).__name__, e))
                ok = False
            out = "\n".join(run.out)
            if args.expect_fail:
                ok, why = expect_fail_ok(path, out)
                out = "%s %s (%s)\n%s" % ("PASS" if ok else "FAIL", path, why,
                                         "    " + out.replace("\n", "\n    "))
            with lock:
                print(out, flush=True)
            return ok

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
            for ok in ex.map(one, files):
                if ok:
                    passed += 1
                else:
                    failed += 1
    finally:
        if args.keep:
            print("kept keys in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
