#!/usr/bin/python3
"""config-service checks the .case runner cannot express (SERVICES §04).

  test-config.py BUILD_DIR [PG_URL]    (with PG_URL the service runs on PostgreSQL)

1. Compare-and-set: 20 writers PUT the same key at once with the same expected_revision,
   ROUNDS times (and 20 creators with expected_revision 0): exactly one wins each revision, the
   other 19 get 409, and the history holds each revision once.
2. Long-poll: waiters on ?index=N&wait=30s stay pending while nothing changes and all answer
   within 100 ms of a write, with the new index.
3. Secrets: after secret writes, a rollback and reads with configs:secrets:read, the plaintext
   is nowhere in the database (SQLite file, WAL and shm; PostgreSQL table dumps), the outbox or
   the service log (LOG_LEVEL=debug); a restart with the same CONFIG_MASTER_KEY still opens
   them.
4. Start-up: a malformed CONFIG_MASTER_KEY stops the service with exit 2 and one line naming
   the variable; without it a 0600 key file is made in DATA_DIR.
Only the standard library is used.
"""

import http.client
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

N = 20
ROUNDS = 5
DEADLINE = 20.0
LATENCY_MAX = 0.100
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")
P = "/api/v1/configs"


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


def request(port, method, path, token, body=None, conn=None, timeout=60):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": "Bearer " + token} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None, dict(r.getheaders())
    except (ConnectionError, OSError):
        return 0, None, {}
    finally:
        if conn is None:
            c.close()


class Service:
    def __init__(self, build, tmp, env, name):
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "ab")
        pf = os.path.join(tmp, name + ".port")
        if os.path.exists(pf):
            os.unlink(pf)
        env = dict(env, GR_PORT_FILE=pf)
        self.proc = subprocess.Popen([os.path.join(build, "bin", "04-config-service")], env=env,
                                     stdout=self.log, stderr=self.log)
        self.port = int(wait_for("port file", lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for("/ready", lambda: request(self.port, "GET", "/ready", None)[0] == 200)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -1
        self.log.close()
        if rc != 0:
            fail("the service did not drain cleanly (status %d), log %s" % (rc, self.log_path))
        text = open(self.log_path, errors="replace").read()
        if any(m in text for m in SANITIZER_MARKS):
            fail("sanitizer report in the service log (%s)" % self.log_path)


def race(port, token, path, bodies):
    """Sends one PUT per body at once (connections opened first, released by a barrier)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in bodies]
    for c in conns:
        c.connect()
    barrier = threading.Barrier(len(bodies))
    results = [None] * len(bodies)

    def worker(k):
        barrier.wait()
        results[k] = request(port, "PUT", path, token, bodies[k], conn=conns[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return results


def check_cas(port, tok, label):
    # 20 creators with expected_revision 0: one 201, 19 409.
    path = P + "/orders/prod/cas_key"
    res = race(port, tok["writer"], path,
               [{"value": "c%d" % k, "expected_revision": 0} for k in range(N)])
    st = sorted(r[0] for r in res)
    if st.count(201) != 1 or st.count(409) != N - 1:
        fail("create race: statuses %s" % st)
    for rnd in range(1, ROUNDS + 1):
        res = race(port, tok["writer"], path,
                   [{"value": "r%d-w%d" % (rnd, k), "expected_revision": rnd} for k in range(N)])
        st = [r[0] for r in res]
        if st.count(200) != 1 or st.count(409) != N - 1:
            fail("round %d: statuses %s" % (rnd, sorted(st)))
        winner = st.index(200)
        if res[winner][1]["revision"] != rnd + 1:
            fail("round %d: the winner wrote revision %s" % (rnd, res[winner][1]["revision"]))
        for r in res:
            if r[0] == 409 and r[1].get("type") != "urn:gravity:problem:revision_conflict":
                fail("round %d: a loser got %s" % (rnd, r[1]))
        s, e, _ = request(port, "GET", path, tok["reader"])
        if s != 200 or e["revision"] != rnd + 1 or e["value"] != "r%d-w%d" % (rnd, winner):
            fail("round %d: the key reads %s %s" % (rnd, s, e))
    s, h, _ = request(port, "GET", path + "/history?limit=100", tok["reader"])
    revs = [x["revision"] for x in h["data"]]
    if revs != list(range(ROUNDS + 1, 0, -1)):
        fail("history revisions %s" % revs)
    print("ok: %d concurrent CAS writers x %d rounds (+1 create race): one winner per revision (%s)"
          % (N, ROUNDS, label))


def check_longpoll(port, tok, label):
    worst = 0.0
    for i in range(5):
        s, view, hdr = request(port, "GET", P + "/orders/prod", tok["reader"])
        idx = view["index"]
        if s != 200 or int(hdr.get("X-Config-Index", -1)) != idx:
            fail("merged view %s %s" % (s, hdr))
        nw = 3
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(nw)]
        for c in conns:
            c.connect()
        done = [None] * nw

        def poll(k):
            r = request(port, "GET", P + "/orders/prod?index=%d&wait=30s" % idx, tok["reader"],
                        conn=conns[k])
            done[k] = (time.monotonic(), r)

        threads = [threading.Thread(target=poll, args=(k,)) for k in range(nw)]
        for t in threads:
            t.start()
        # Nothing changed: every waiter must still be pending a while later.
        t_end = time.monotonic() + 0.3
        while time.monotonic() < t_end:
            if any(done):
                fail("a long-poll answered without a change: %s" % [d for d in done if d])
            time.sleep(0.01)
        t0 = time.monotonic()
        s, w, _ = request(port, "PUT", P + "/global/default/poll_%d" % i, tok["writer"],
                          {"value": i})
        if s != 201:
            fail("write %s %s" % (s, w))
        for t in threads:
            t.join(5)
        for c in conns:
            c.close()
        for k in range(nw):
            if not done[k]:
                fail("long-poll %d did not answer after a write" % k)
            t1, (st, body, hdr) = done[k]
            if st != 200 or body["index"] <= idx or body["entries"].get("poll_%d" % i, {}).get("value") != i:
                fail("long-poll %d answered %s %s" % (k, st, body))
            if int(hdr.get("X-Config-Index", -1)) != body["index"]:
                fail("X-Config-Index %s vs body index %s" % (hdr.get("X-Config-Index"), body["index"]))
            worst = max(worst, t1 - t0)
    # The cap on parked long-polls (HTTP_MAX_WAITERS → 429 too_many_watches), 200 long-polls on
    # 8 threads and the drain are checked by test-watch.py.
    if worst > LATENCY_MAX:
        fail("long-poll wake-up took %.1f ms (max %.0f ms)" % (worst * 1000, LATENCY_MAX * 1000))
    print("ok: long-polls wake within %.1f ms of a write (3 waiters x 5, %s)" % (worst * 1000, label))


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    label = "pg" if pg else "sqlite"
    tmp = tempfile.mkdtemp(prefix="gr-config-")
    tool = os.path.join(build, "bin", "gr-jwt")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)

    def mint(perms):
        return subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--sub",
                               str(uuid.uuid4()), "--perms", ",".join(perms), "--ttl", "3600"],
                              check=True, stdout=subprocess.PIPE).stdout.decode().strip()

    tok = {"writer": mint(["configs:read", "configs:write"]),
           "reader": mint(["configs:read"]),
           "secrets": mint(["configs:read", "configs:secrets:read"])}
    master = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CONFIG_MASTER_KEY")}
    data_dir = os.path.join(tmp, "data")
    env.update({"HOST": "127.0.0.1", "PORT": "0", "DATA_DIR": data_dir,
                "JWKS_URL": "file://" + jwks, "LOG_LEVEL": "debug", "CURSOR_SECRET": "t",
                "HTTP_THREADS": "16", "CONFIG_MASTER_KEY": master,
                "EVENT_BUS_URL": "http://127.0.0.1:9"})  # no bus: events wait in the outbox
    db = os.path.join(data_dir, "config-service.db")
    dbname = None
    if pg:
        dbname = "gr_cfg_" + uuid.uuid4().hex[:8]
        subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", 'CREATE DATABASE "%s"' % dbname],
                       check=True, stdout=subprocess.DEVNULL)
        u = urllib.parse.urlsplit(pg)
        db = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, u.fragment))
        env["DATABASE_URL"] = db
    else:
        env["DATABASE_URL"] = "sqlite://" + db

    plain = "pl41ntext-" + uuid.uuid4().hex
    plain2 = "sec0nd-" + uuid.uuid4().hex
    svc = None
    try:
        # 4. start-up: a malformed key stops it with exit 2 and one line naming the variable.
        bad = subprocess.run([os.path.join(build, "bin", "04-config-service")],
                             env=dict(env, CONFIG_MASTER_KEY="zz" * 32, GR_PORT_FILE=os.path.join(tmp, "bad")),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        if bad.returncode != 2 or b"CONFIG_MASTER_KEY" not in bad.stderr:
            fail("bad CONFIG_MASTER_KEY: exit %d, stderr %r" % (bad.returncode, bad.stderr[-300:]))
        bad = subprocess.run([os.path.join(build, "bin", "04-config-service")],
                             env=dict(env, CONFIG_MASTER_KEY="ab" * 31, GR_PORT_FILE=os.path.join(tmp, "bad")),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        if bad.returncode != 2 or b"CONFIG_MASTER_KEY" not in bad.stderr:
            fail("short CONFIG_MASTER_KEY: exit %d" % bad.returncode)
        print("ok: a malformed CONFIG_MASTER_KEY stops start-up with exit 2 naming the variable")

        svc = Service(build, tmp, env, "run1")
        port = svc.port
        check_cas(port, tok, label)
        check_longpoll(port, tok, label)

        # 3. secrets (and a plain value, the grep's positive control)
        visible = "v1sible-" + uuid.uuid4().hex
        s, b, _ = request(port, "PUT", P + "/orders/prod/plain_one", tok["writer"], {"value": visible})
        if s != 201:
            fail("plain write %s %s" % (s, b))
        path = P + "/orders/prod/db_password"
        s, b, _ = request(port, "PUT", path, tok["writer"], {"value": plain, "is_secret": True})
        if s != 201 or b["value"] != "******":
            fail("secret write %s %s" % (s, b))
        s, b, _ = request(port, "PUT", path, tok["writer"],
                          {"value": {"password": plain2}, "is_secret": True, "expected_revision": 1})
        if s != 200:
            fail("second secret write %s %s" % (s, b))
        s, b, _ = request(port, "POST", path + "/rollback", tok["writer"], {"revision": 1})
        if s != 200 or b["revision"] != 3:
            fail("secret rollback %s %s" % (s, b))
        s, b, _ = request(port, "GET", path, tok["secrets"])
        if s != 200 or b["value"] != plain:
            fail("secret read with configs:secrets:read %s %s" % (s, b))
        s, b, _ = request(port, "GET", P + "/orders/prod", tok["secrets"])
        if s != 200 or b["entries"]["db_password"]["value"] != plain:
            fail("merged view with configs:secrets:read %s" % s)
        s, b, _ = request(port, "GET", path, tok["reader"])
        if s != 200 or b["value"] != "******":
            fail("secret read without permission %s %s" % (s, b))
        s, b, _ = request(port, "GET", path + "/history", tok["secrets"])
        if s != 200 or any(x["value"] != "******" for x in b["data"]):
            fail("history shows a secret: %s" % b)
        if json.dumps(b).find(plain) >= 0:
            fail("history holds the plaintext")
        svc.stop()
        svc = None

        # The plaintext is nowhere at rest, nor in the log.
        blobs = []
        if pg:
            for t in ("entries", "revisions", "outbox"):
                blobs.append(subprocess.run(["psql", "-X", "-q", "-d", db, "-c",
                                             "COPY (SELECT * FROM %s) TO STDOUT" % t],
                                            check=True, stdout=subprocess.PIPE).stdout)
        else:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    blobs.append(open(db + suffix, "rb").read())
            if not blobs or len(blobs[0]) == 0:
                fail("no database file at %s" % db)
        if not any(visible.encode() in b for b in blobs):
            fail("control: the plain value is not found in the database dump, the grep is blind")
        for f in os.listdir(tmp):
            if f.endswith(".log"):
                blobs.append(open(os.path.join(tmp, f), "rb").read())
        for b in blobs:
            for p in (plain, plain2):
                if p.encode() in b:
                    fail("the plaintext %s is in the database or the log (%s)" % (p, tmp))
        if os.path.exists(os.path.join(data_dir, "config-master-key")):
            fail("a key file was made although CONFIG_MASTER_KEY was set")
        print("ok: secret plaintext is in neither the database, the outbox nor the log (%s)" % label)

        # A restart with the same master key opens the stored secrets.
        svc = Service(build, tmp, env, "run2")
        s, b, _ = request(svc.port, "GET", path, tok["secrets"])
        if s != 200 or b["value"] != plain:
            fail("after a restart the secret reads %s %s" % (s, b))
        svc.stop()
        svc = None
        text = open(os.path.join(tmp, "run2.log"), "rb").read()
        if plain.encode() in text:
            fail("the plaintext is in the log after the restart")
        print("ok: a restart with the same CONFIG_MASTER_KEY opens the secrets")

        # Without CONFIG_MASTER_KEY (fresh data dir): a 0600 key file is made.
        if not pg:
            env3 = {k: v for k, v in env.items() if k != "CONFIG_MASTER_KEY"}
            d3 = os.path.join(tmp, "data3")
            env3.update({"DATA_DIR": d3, "DATABASE_URL": "sqlite://" + os.path.join(d3, "c.db")})
            svc = Service(build, tmp, env3, "run3")
            svc.stop()
            svc = None
            kf = os.path.join(d3, "config-master-key")
            if not os.path.exists(kf) or stat.S_IMODE(os.stat(kf).st_mode) != 0o600 \
                    or os.path.getsize(kf) != 32:
                fail("no 0600 32-byte key file in DATA_DIR")
            print("ok: without CONFIG_MASTER_KEY a 0600 key file is made in DATA_DIR")
    finally:
        if svc:
            svc.proc.kill()
            svc.proc.wait()
        if dbname:
            subprocess.run(["psql", "-X", "-q", "-d", pg, "-c",
                            'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dbname],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(tmp, ignore_errors=True)
    print("all config-service checks passed (%s)" % label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
