#!/usr/bin/python3
"""config-service long-polls park without an HTTP thread (gr_req_wait, SERVICES §04).

  test-watch.py BUILD_DIR [PG_URL]    (with PG_URL the service runs on PostgreSQL)

With HTTP_THREADS=8 (25 times fewer threads than long-polls):
1. load: 200 long-polls (?index=N&wait=30s) park; 200 GET /health meanwhile have p99 < 100 ms;
   one PUT wakes all 200 within 100 ms, each answering the new index.
2. cap: with HTTP_MAX_WAITERS=3 the 4th long-poll is 429 problem+json too_many_watches with
   Retry-After: 1; after a write wakes the 3, long-polls are accepted again.
3. drain: SIGTERM with 50 parked long-polls answers them all (200) at once and exits 0 promptly.
4. /health/detailed with REDIS_URL unreachable: 200, "degraded", checks.redis.status "down".
5. with PG_URL, replicas: a write through one instance wakes 20 long-polls parked on another
   instance of the same database within 2 s (one long-poll a second re-reads the index).
Only the standard library is used (psql for PostgreSQL).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "lib", "gr", "tests"))
import longpoll as lp  # noqa: E402

P = "/api/v1/configs"


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__)
        return 2
    build = os.path.abspath(sys.argv[1])
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    label = "pg" if pg else "sqlite"
    binary = os.path.join(build, "bin", "04-config-service")
    tmp = tempfile.mkdtemp(prefix="gr-watch-")
    tool = os.path.join(build, "bin", "gr-jwt")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)

    def mint(perms):
        return subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--sub",
                               str(uuid.uuid4()), "--perms", ",".join(perms), "--ttl", "3600"],
                              check=True, stdout=subprocess.PIPE).stdout.decode().strip()

    writer, reader = mint(["configs:read", "configs:write"]), mint(["configs:read"])
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CONFIG_MASTER_KEY", "HTTP_MAX_WAITERS")}
    env.update({"DATA_DIR": os.path.join(tmp, "data"), "JWKS_URL": "file://" + jwks,
                "LOG_LEVEL": "warn", "CURSOR_SECRET": "t", "HTTP_THREADS": "8",
                "CONFIG_MASTER_KEY": "ab" * 32, "EVENT_BUS_URL": "http://127.0.0.1:9"})
    dbname = None
    if pg:
        dbname = "gr_watch_" + uuid.uuid4().hex[:8]
        subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", 'CREATE DATABASE "%s"' % dbname],
                       check=True, stdout=subprocess.DEVNULL)
        u = urllib.parse.urlsplit(pg)
        env["DATABASE_URL"] = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query,
                                                       u.fragment))
    else:
        env["DATABASE_URL"] = "sqlite://" + os.path.join(tmp, "data", "config-service.db")
    procs = []
    counter = [0]

    def put(proc):
        def change():
            counter[0] += 1
            st, doc, _ = lp.request(proc.port, "PUT", P + "/orders/prod/k%d" % counter[0], writer,
                                    {"value": counter[0]})
            if st != 201:
                lp.fail("PUT: %d %r" % (st, doc))
        return change

    def watch_path(proc):
        st, doc, _ = lp.request(proc.port, "GET", P + "/orders/prod", reader)
        if st != 200:
            lp.fail("GET merged view: %d %r" % (st, doc))
        return P + "/orders/prod?index=%d&wait=30s" % doc["index"]

    try:
        a = lp.Proc(binary, tmp, "watch", env)
        procs.append(a)
        path = watch_path(a)
        done = lp.check_load(a, path, reader, put(a), 200, "04 load (%s)" % label)
        idx = [d[3]["index"] for d in done.values()]
        if len(set(idx)) != 1 or idx[0] <= int(path.split("index=")[1].split("&")[0]):
            lp.fail("woken long-polls show indexes %r" % sorted(set(idx)))
        lp.check_drain(a, watch_path(a), reader, 50, "04 drain (%s)" % label)
        procs.remove(a)

        # REDIS_URL where nothing listens: gr's built-in redis check (gr/health.h).
        b = lp.Proc(binary, tmp, "cap", dict(env, HTTP_MAX_WAITERS="3",
                                             REDIS_URL="redis://127.0.0.1:1/0"))
        procs.append(b)
        st, doc, _ = lp.request(b.port, "GET", "/health/detailed")
        if (st != 200 or doc.get("status") != "degraded"
                or doc["checks"].get("redis", {}).get("status") != "down"
                or doc["checks"]["database"]["status"] != "up"):
            lp.fail("/health/detailed with Redis down: %d %r" % (st, doc))
        print("ok: /health/detailed is 200 degraded with checks.redis down (REDIS_URL unreachable)")
        lp.check_cap(b, lambda: watch_path(b), reader, put(b), 3, "too_many_watches",
                     "04 cap (%s)" % label)
        if pg:  # a second instance on the same database
            c = lp.Proc(binary, tmp, "replica", env)
            procs.append(c)
            lp.check_replica(c, watch_path(c), reader, put(b), 20, "04 replicas (pg)")
            c.stop()
            procs.remove(c)
        b.stop()
        procs.remove(b)
        print("all config-service watch checks passed (%s)" % label)
    finally:
        for p in procs:
            p.kill()
        if dbname:
            subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", 'DROP DATABASE IF EXISTS "%s"' % dbname],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
