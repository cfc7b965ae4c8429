#!/usr/bin/python3
"""test-env.py BUILD_DIR - the generated production environment works with the real binaries.

For every service of deploy/k8s/ whose binary is in BUILD_DIR/bin, takes the env of its ConfigMap
(the same values compose.yaml sets) and starts the binary with it against a real PostgreSQL
(its own database, created under the generated name), a real redis-server and a real nats-server
-js, started here by scripts/pg.sh, redis.sh and nats.sh. Only the addresses are rewritten to the
local servers (host names postgres/redis/nats/service-discovery/auth-service -> 127.0.0.1 and
free ports; HOST=127.0.0.1 and PORT=0 as tests must); every other variable is taken as generated.
02 (when built) starts first and 05 next, so DISCOVERY_URL, JWKS_URL and AUTH_URL point at real
servers. Each service must answer GET /ready 200 and GET /health 200, then exit 0 on SIGTERM.
Prints `N passed, N failed`; exit status 0 iff nothing failed.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
KDIR = os.path.join(ROOT, "deploy", "k8s")
START_DEADLINE = 60.0
STOP_DEADLINE = 20.0

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {name}")
    else:
        failed += 1
        print(f"FAIL: {name}{': ' + detail if detail else ''}")
    return ok


def script(*args):
    r = subprocess.run([os.path.join(ROOT, "scripts", args[0])] + list(args[1:]),
                       capture_output=True, text=True, check=True)
    return r.stdout.strip().splitlines()[-1]


def get(port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except OSError as e:
        return None, str(e).encode()


class Svc:
    def __init__(self, sid, env, tmp, bindir):
        self.sid = sid
        self.dir = os.path.join(tmp, sid)
        os.makedirs(os.path.join(self.dir, "data"))
        self.port_file = os.path.join(self.dir, "port")
        env = dict(env, GR_PORT_FILE=self.port_file, DATA_DIR=os.path.join(self.dir, "data"))
        self.log_path = os.path.join(self.dir, "log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([os.path.join(bindir, sid)], env=env, cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.port = None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "\n    ".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self):
        """Polls for the port file, then for GET /ready == 200, until a deadline."""
        deadline = time.monotonic() + START_DEADLINE
        last = "no port file"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}"
            if self.port is None:
                try:
                    with open(self.port_file, encoding="ascii") as f:
                        t = f.read().strip()
                    if re.fullmatch(r"\d{1,5}", t) and 0 < int(t) < 65536:
                        self.port = int(t)
                except OSError:
                    pass
            if self.port is not None:
                status, body = get(self.port, "/ready")
                if status == 200:
                    return True, ""
                last = f"/ready -> {status} {body[:200]!r}"
            time.sleep(0.05)
        return False, f"not ready in {START_DEADLINE:.0f} s ({last})"

    def stop(self):
        """SIGTERM, then the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode


def detailed(svc, jwks_remote):
    """/health/detailed: PostgreSQL, the nats bus and (when JWKS_URL was kept) the JWKS are up."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        status, body = get(svc.port, "/health/detailed")
        try:
            checks = json.loads(body).get("checks", {}) if status == 200 else {}
        except ValueError:
            checks = {}
        db, bus, jwks = (checks.get(k, {}) for k in ("database", "bus", "jwks"))
        ok = (db.get("engine") == "postgres" and db.get("status") == "up"
              and bus.get("backend") == "nats" and bus.get("status") == "up"
              and (jwks.get("status") == "up" or not jwks_remote))
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    what = "PostgreSQL, NATS bus" + (" and the JWKS from auth-service" if jwks_remote else "")
    check(f"{svc.sid}: /health/detailed: {what} up", ok, f"{status} {body[:400]!r}")


def main():
    if len(sys.argv) != 2:
        print("usage: test-env.py BUILD_DIR", file=sys.stderr)
        return 2
    bindir = os.path.join(os.path.abspath(sys.argv[1]), "bin")
    manifests = {}
    for f in sorted(os.listdir(KDIR)):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            with open(os.path.join(KDIR, f), encoding="utf-8") as fh:
                docs = [d for d in yaml.safe_load_all(fh) if d]
            cm = next(d for d in docs if d.get("kind") == "ConfigMap")
            manifests[f[:-5]] = {k: str(v) for k, v in cm["data"].items()}
    built = [s for s in manifests if os.access(os.path.join(bindir, s), os.X_OK)]
    print(f"-- built services with manifests: {' '.join(built)}")
    print(f"-- not built (skipped): {' '.join(s for s in manifests if s not in built) or '-'}")
    # 02 first, then 05 (JWKS), then the rest in number order.
    order = sorted(built, key=lambda s: (s[:2] != "02", s[:2] != "05", s))

    tmp = tempfile.mkdtemp(prefix="gravity-deploy-env-")
    os.chmod(tmp, 0o755)
    started = {"pg": False, "redis": False, "nats": False}
    running = []
    try:
        script("pg.sh", "start", os.path.join(tmp, "pg"))
        started["pg"] = True
        redis_url = script("redis.sh", "start", os.path.join(tmp, "redis"))
        started["redis"] = True
        nats_url = script("nats.sh", "start", os.path.join(tmp, "nats"))
        started["nats"] = True
        urls = {}  # "service-discovery:8761" -> "127.0.0.1:PORT"
        for sid in order:
            env = dict(manifests[sid])
            check(f"{sid}: ConfigMap sets HOST=0.0.0.0 (rewritten to 127.0.0.1 here)",
                  env.get("HOST") == "0.0.0.0", env.get("HOST", "unset"))
            m = re.fullmatch(r"postgres://gravity@postgres:5432/(\w+)", env.get("DATABASE_URL", ""))
            if not check(f"{sid}: DATABASE_URL names its own database", m is not None,
                         env.get("DATABASE_URL", "unset")):
                continue
            env["DATABASE_URL"] = script("pg.sh", "createdb", os.path.join(tmp, "pg"), m.group(1))
            env["REDIS_URL"] = re.sub(r"^redis://redis:6379", redis_url.rstrip("/"),
                                      env["REDIS_URL"])
            env["NATS_URL"] = nats_url
            for k in ("DISCOVERY_URL", "JWKS_URL", "AUTH_URL"):
                if k not in env:
                    continue
                hm = re.match(r"^http://([a-z0-9-]+:\d+)(/.*)?$", env[k])
                if hm and hm.group(1) in urls:
                    env[k] = f"http://{urls[hm.group(1)]}{hm.group(2) or ''}"
                else:  # that service is not built: leave the variable out
                    print(f"   {sid}: {k}={env[k]} not running here, unset")
                    del env[k]
            env.update(HOST="127.0.0.1", PORT="0", PATH=os.environ.get("PATH", "/usr/bin:/bin"))
            svc = Svc(sid, env, tmp, bindir)
            running.append(svc)
            ok, why = svc.wait_ready()
            if not check(f"{sid}: ready (GET /ready 200) with the generated env on PostgreSQL, "
                         "Redis and NATS", ok, f"{why}\n    {svc.log_tail()}"):
                continue
            status, _ = get(svc.port, "/health")
            check(f"{sid}: GET /health 200 (liveness probe)", status == 200, str(status))
            detailed(svc, "JWKS_URL" in env)
            urls[f"{sid[3:]}:{manifests[sid]['PORT']}"] = f"127.0.0.1:{svc.port}"
        for svc in reversed(running):
            rc = svc.stop()
            check(f"{svc.sid}: exits 0 on SIGTERM", rc == 0,
                  f"status {rc}\n    {svc.log_tail()}")
        running = []
    finally:
        for svc in running:
            svc.stop()
        for name, sh in (("nats", "nats.sh"), ("redis", "redis.sh"), ("pg", "pg.sh")):
            if started[name]:
                subprocess.run([os.path.join(ROOT, "scripts", sh), "stop",
                                os.path.join(tmp, name)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
