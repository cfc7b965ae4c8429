#!/usr/bin/python3
"""Exactly one default address under racing set-default calls (SERVICES §06).

  test-default-race.py BUILD_DIR [PG_URL]    (with PG_URL the service runs on PostgreSQL)

Starts 06-user-service alone, gives one user 50 addresses, then, ROUNDS times, sends 50
POST /api/v1/users/me/addresses/{id}/default at once, one per address (threads released by
a barrier on connections opened beforehand). Every call must succeed, and afterwards the user
has exactly one default address, both through the API (?default=true) and in the table.
The .case runner cannot name a different address per parallel request, hence this script.
Only the standard library is used.
"""

import http.client
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
import urllib.parse
import uuid

N = 50
ROUNDS = 3
DEADLINE = 20.0
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")


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


def request(port, method, path, token, body=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": "Bearer " + token}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None
    except (ConnectionError, OSError):
        return 0, None
    finally:
        if conn is None:
            c.close()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-user-race-")
    tool = os.path.join(build, "bin", "gr-jwt")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)
    token = subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--sub",
                            str(uuid.uuid4()), "--roles", "customer", "--ttl", "3600"],
                           check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    pf = os.path.join(tmp, "port")
    env.update({"HOST": "127.0.0.1", "PORT": "0", "GR_PORT_FILE": pf,
                "DATA_DIR": os.path.join(tmp, "data"), "JWKS_URL": "file://" + jwks,
                "LOG_LEVEL": "warn", "CURSOR_SECRET": "t",
                "EVENT_BUS_URL": "http://127.0.0.1:9"})  # no bus: events wait in the outbox
    db = os.path.join(tmp, "data", "user-service.db")
    dbname = None
    if pg:
        dbname = "gr_urace_" + uuid.uuid4().hex[:8]
        subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", 'CREATE DATABASE "%s"' % dbname],
                       check=True, stdout=subprocess.DEVNULL)
        u = urllib.parse.urlsplit(pg)
        db = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, u.fragment))
        env["DATABASE_URL"] = db
    else:
        env["DATABASE_URL"] = "sqlite://" + db
    log = open(os.path.join(tmp, "log"), "ab")
    proc = subprocess.Popen([os.path.join(build, "bin", "06-user-service")], env=env,
                            stdout=log, stderr=log)

    def defaults_in_table():
        sql = "SELECT COUNT(*) FROM addresses WHERE is_default = 1"
        if pg:
            out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-d", db, "-c", sql],
                                 check=True, stdout=subprocess.PIPE).stdout.decode().strip()
            return int(out)
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        try:
            return c.execute(sql).fetchone()[0]
        finally:
            c.close()

    try:
        port = int(wait_for("port file", lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for("/ready", lambda: request(port, "GET", "/ready", token)[0] == 200)
        ids = []
        for i in range(N):
            st, a = request(port, "POST", "/api/v1/users/me/addresses", token,
                            {"line1": "%d Main St" % i, "city": "Springfield", "country": "US"})
            if st != 201:
                fail("create address %d: %s %s" % (i, st, a))
            ids.append(a["id"])
        for rnd in range(ROUNDS):
            conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in ids]
            for c in conns:
                c.connect()
            barrier = threading.Barrier(N)
            results = [None] * N

            def worker(k):
                barrier.wait()
                results[k] = request(port, "POST",
                                     "/api/v1/users/me/addresses/%s/default" % ids[k], token,
                                     conn=conns[k])

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(N)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for c in conns:
                c.close()
            bad = [(ids[k], r[0], r[1]) for k, r in enumerate(results) if r[0] != 200]
            if bad:
                fail("round %d: %d of %d set-default calls failed, e.g. %s"
                     % (rnd, len(bad), N, bad[0]))
            st, page = request(port, "GET", "/api/v1/users/me/addresses?default=true", token)
            if st != 200 or len(page["data"]) != 1 or page["data"][0]["id"] not in ids:
                fail("round %d: the API shows %s defaults" % (rnd, page and len(page["data"])))
            st, page = request(port, "GET", "/api/v1/users/me/addresses?limit=100", token)
            if st != 200 or len(page["data"]) != N:
                fail("round %d: %s addresses instead of %d" % (rnd, len(page["data"]), N))
            n = defaults_in_table()
            if n != 1:
                fail("round %d: %d default rows in the table" % (rnd, n))
            print("ok: round %d: %d parallel set-default calls on %d addresses, one default (%s)"
                  % (rnd, N, N, "pg" if pg else "sqlite"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -1
        if dbname:
            subprocess.run(["psql", "-X", "-q", "-d", pg, "-c",
                            'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dbname],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0:
        fail("the service did not drain cleanly (status %d)" % rc)
    log.close()
    text = open(os.path.join(tmp, "log"), errors="replace").read()
    if any(m in text for m in SANITIZER_MARKS):
        fail("sanitizer report in the service log (%s)" % tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    print("all default-address race checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
