#!/usr/bin/python3
"""service-discovery blocking queries park without an HTTP thread (gr_req_wait, SERVICES §02).

  test-blocking.py BUILD_DIR [PG_URL]    (with PG_URL the registry runs on PostgreSQL)

With HTTP_THREADS=8 (25 times fewer threads than long-polls):
1. load: 200 blocking queries (GET …/services/{name}/instances?index=N&wait=30s) park; 200
   GET /health meanwhile have p99 < 100 ms; one registration wakes all 200 within 100 ms, each
   listing the new instance with a larger X-Registry-Index.
2. cap: with HTTP_MAX_WAITERS=3 the 4th blocking query is 429 problem+json too_many_waiters
   with Retry-After: 1; after a registration wakes the 3, blocking queries are accepted again.
3. drain: SIGTERM with 50 parked blocking queries answers them all (200) at once and exits 0.
4. with PG_URL, replicas: a registration through one replica wakes 20 blocking queries parked
   on another replica of the same database within 2 s (one re-reads the index a second).
Only the standard library is used (psql for PostgreSQL).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "lib", "gr", "tests"))
import longpoll as lp  # noqa: E402

R = "/api/v1/registry"


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__)
        return 2
    build = os.path.abspath(sys.argv[1])
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    label = "pg" if pg else "sqlite"
    binary = os.path.join(build, "bin", "02-service-discovery")
    tmp = tempfile.mkdtemp(prefix="gr-blocking-")
    tool = os.path.join(build, "bin", "gr-jwt")
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)
    tok = subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--sub",
                          str(uuid.uuid4()), "--roles", "service", "--ttl", "3600", "--iss",
                          "gravity", "--aud", "gravity", "--perms", "registry:write"],
                         check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HTTP_MAX_WAITERS")}
    env.update({"DATA_DIR": os.path.join(tmp, "data"), "JWKS_URL": "file://" + jwks,
                "JWT_ISSUER": "gravity", "JWT_AUDIENCE": "gravity", "CURSOR_SECRET": "t",
                "LOG_LEVEL": "warn", "HTTP_THREADS": "8", "EVENT_BUS": "http",
                "EVENT_BUS_URL": "http://127.0.0.1:9"})
    dbnames = []

    def database(name):
        """A database of its own per process, so no instance of one expires under the other."""
        if not pg:
            return "sqlite://" + os.path.join(tmp, "data", name + ".db")
        dbnames.append("gr_blk_%s" % uuid.uuid4().hex[:12])
        subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", "CREATE DATABASE %s" % dbnames[-1]],
                       check=True, stdout=subprocess.DEVNULL)
        return pg.rsplit("/", 1)[0] + "/" + dbnames[-1]

    procs = []
    port = [7000]

    def register(proc, name):
        def change():
            port[0] += 1
            st, doc, _ = lp.request(proc.port, "POST", R + "/instances", tok,
                                    {"service": name, "address": "127.0.0.1", "port": port[0]})
            if st not in (200, 201):
                lp.fail("register: %d %r" % (st, doc))
        return change

    def block_path(proc, name):
        st, doc, hdr = lp.request(proc.port, "GET", R + "/services/%s/instances" % name)
        if st != 200:
            lp.fail("GET instances: %d %r" % (st, doc))
        return R + "/services/%s/instances?index=%s&wait=30s" % (name, hdr["x-registry-index"])

    try:
        a = lp.Proc(binary, tmp, "registry", dict(env, DATABASE_URL=database("a")))
        procs.append(a)
        path = block_path(a, "web")
        idx0 = int(path.split("index=")[1].split("&")[0])
        done = lp.check_load(a, path, None, register(a, "web"), 200, "02 load (%s)" % label)
        for d in done.values():
            if int(d[2].get("x-registry-index", "0")) <= idx0 or len(d[3]["data"]) != 1:
                lp.fail("a woken blocking query shows %r %r" % (d[2].get("x-registry-index"), d[3]))
        lp.check_drain(a, block_path(a, "web"), None, 50, "02 drain (%s)" % label)
        procs.remove(a)

        b_db = database("b")
        b = lp.Proc(binary, tmp, "registry-cap", dict(env, HTTP_MAX_WAITERS="3", DATABASE_URL=b_db))
        procs.append(b)
        lp.check_cap(b, lambda: block_path(b, "api"), None, register(b, "api"), 3,
                     "too_many_waiters", "02 cap (%s)" % label)
        if pg:  # a replica on b's database
            c = lp.Proc(binary, tmp, "registry-replica", dict(env, DATABASE_URL=b_db))
            procs.append(c)
            lp.check_replica(c, block_path(c, "api"), None, register(b, "api"), 20,
                             "02 replicas (pg)")
            c.stop()
            procs.remove(c)
        b.stop()
        procs.remove(b)
        print("PASS: test-blocking (%s)" % label)
    finally:
        for p in procs:
            p.kill()
        for d in dbnames:
            subprocess.run(["psql", "-X", "-q", "-d", pg, "-c", "DROP DATABASE IF EXISTS %s" % d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
