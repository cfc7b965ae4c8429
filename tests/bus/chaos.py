#!/usr/bin/python3
"""Bus chaos test: kill -9 the producer (its relay), the consumer or the broker while events flow,
and check that every emitted event is applied exactly once (gr/bus.h guarantees).

  chaos.py BUILD --backend http|nats [--events N] [--kills K] [--pg-url URL] [--seed S]
           [--batch B] [--per-tx T] [--timeout SECONDS] [--keep]

Starts the broker (14-event-bus-service on a free port with its own data dir, or nats-server via
scripts/nats.sh), gr-bus-probe as producer and as consumer (SQLite data dirs; with --pg-url each
of the three gets a fresh PostgreSQL database, dropped at the end). POST /emit drives the
producer in batches until N events are emitted, while K kill -9, spread over the emission,
hit the producer, the consumer or the broker in turn (random order, random moment); each victim
restarts after a short random pause with the same data dir and port. The number emitted is the
producer's counter row (advanced in the emitting transaction), never the responses, so an /emit
interrupted by a kill counts exactly what it committed. Then it waits (condition + deadline)
until the consumer applied everything and prints
  chaos backend=B engine=E events=N kills=K emitted=.. applied=.. lost=.. applied_twice=.. secs=..
Exit status 0 iff lost == 0 and applied_twice == 0 (and nothing was applied that was never
emitted). Every process it starts is killed by PID, and the temp dir removed, on every exit path.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NATS_SH = os.path.join(ROOT, "scripts", "nats.sh")
START_DEADLINE = 30.0


class Fail(Exception):
    pass


def wait_for(what, cond, deadline=START_DEADLINE, every=0.05):
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= end:
            raise Fail("timed out after %.0f s waiting for %s" % (deadline, what))
        time.sleep(every)


def http(method, url, body=None, token=None, timeout=30.0):
    """(status, parsed JSON or None); status 0 when the server cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        r.add_header("Content-Type", "application/json")
    if token:
        r.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, None
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return 0, None


def log_tail(path, lines=15):
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""


class Proc:
    """One gr_main process (a service binary) with a fixed data dir and, after the first start,
    a fixed port."""

    def __init__(self, name, argv, tmp, env):
        self.name = name
        self.argv = argv
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = 0
        self.proc = None
        self.logpath = os.path.join(self.dir, "log")
        self.log = open(self.logpath, "ab")

    def start(self):
        env = dict(self.env)
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": str(self.port), "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)

        def port_written():
            if self.proc.poll() is not None:
                raise Fail("%s exited with %s at start:\n%s" % (self.name, self.proc.returncode,
                                                               log_tail(self.logpath)))
            try:
                with open(pf) as f:
                    return f.read().strip()
            except OSError:
                return None
        self.port = int(wait_for(self.name + " port file", port_written))
        wait_for(self.name + " /ready", lambda: http("GET", self.url("/ready"), timeout=2)[0] == 200)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        self.log.flush()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Nats:
    """nats-server -js through scripts/nats.sh; kill -9 hits the pid it recorded."""

    def __init__(self, tmp):
        self.name = "nats"
        self.dir = os.path.join(tmp, "nats")
        self.logpath = os.path.join(self.dir, "nats.log")
        self.url = None
        self.started = False

    def start(self):
        cmd = "restart" if self.started else "start"
        r = subprocess.run([NATS_SH, cmd, self.dir], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        if r.returncode != 0:
            raise Fail("nats.sh %s: %s" % (cmd, r.stderr.decode(errors="replace")))
        self.url = r.stdout.decode().strip()
        self.started = True

    def pid(self):
        try:
            with open(os.path.join(self.dir, "nats.pid")) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                return pid if b"nats-server" in f.read() else None
        except (OSError, ValueError):
            return None

    def kill9(self):
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)

            def gone():
                try:
                    with open("/proc/%d/stat" % pid) as f:
                        return f.read().split(") ", 1)[1][0] == "Z"
                except OSError:
                    return True
            wait_for("nats-server %d to die" % pid, gone, 10)

    def stop(self):
        if self.started and os.path.isdir(self.dir):
            subprocess.run([NATS_SH, "stop", self.dir], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        self.started = False


def mint(build, tmp):
    key, jwks = os.path.join(tmp, "k.pem"), os.path.join(tmp, "jwks.json")
    tool = os.path.join(build, "bin", "gr-jwt")
    subprocess.run([tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", key, "--jwks", jwks],
                   check=True, stdout=subprocess.DEVNULL)
    tok = subprocess.run([tool, "sign", "--key", key, "--alg", "ES256", "--kid", "t", "--perms",
                          "*", "--roles", "super_admin", "--sub", str(uuid.uuid4()), "--ttl",
                          "86400"], check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    return jwks, tok


def psql(url, sql):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                   check=True, stdout=subprocess.DEVNULL, timeout=60)


def pg_db_url(admin_url, name):
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


class Stack:
    """Broker + producer + consumer for one backend; everything it starts, it stops."""

    def __init__(self, build, backend, tmp, pg_url=None, ack_wait_s=5, log_level="warn",
                 consumer_env=None):
        self.build, self.backend, self.tmp, self.pg_url = build, backend, tmp, pg_url
        self.pg_dbs = []
        jwks, self.token = mint(build, tmp)
        base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + jwks,
                     "LOG_LEVEL": log_level, "CURSOR_SECRET": "chaos", "HTTP_THREADS": "8"})
        self.base = base
        self.broker = None
        self.producer = None
        self.consumer = None
        self.ack_wait_s = ack_wait_s
        self.consumer_env = consumer_env or {}

    def _env(self, role):
        env = dict(self.base)
        if self.pg_url:
            name = "gr_chaos_%s_%s" % (role, uuid.uuid4().hex[:8])
            psql(self.pg_url, 'CREATE DATABASE "%s"' % name)
            self.pg_dbs.append(name)
            env["DATABASE_URL"] = pg_db_url(self.pg_url, name)
        return env

    def start(self):
        if self.backend == "http":
            self.broker = Proc("event-bus", [os.path.join(self.build, "bin",
                                                          "14-event-bus-service")],
                               self.tmp, self._env("bus"))
            self.broker.start()
            bus_env = {"EVENT_BUS": "http", "EVENT_BUS_URL": self.broker.url(""),
                       "SERVICE_TOKEN": self.token}
        else:
            self.broker = Nats(self.tmp)
            self.broker.start()
            bus_env = {"EVENT_BUS": "nats", "NATS_URL": self.broker.url}
        probe = [os.path.join(self.build, "bin", "gr-bus-probe")]
        penv = self._env("prod")
        penv.update(bus_env)
        penv["PROBE_MODE"] = "producer"
        cenv = self._env("cons")
        cenv.update(bus_env)
        cenv["PROBE_MODE"] = "consumer"
        cenv["PROBE_ACK_WAIT_S"] = str(self.ack_wait_s)
        cenv.update(self.consumer_env)
        self.producer = Proc("producer", probe, self.tmp, penv)
        self.consumer = Proc("consumer", probe, self.tmp, cenv)
        self.producer.start()
        self.consumer.start()

    def stop(self):
        for p in (self.producer, self.consumer, self.broker):
            if p is not None:
                try:
                    p.stop()
                except Exception as e:  # keep stopping the others
                    print("warning: stopping %s: %s" % (p.name, e), file=sys.stderr)
        for name in self.pg_dbs:
            try:
                psql(self.pg_url, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
            except Exception as e:
                print("warning: dropping %s: %s" % (name, e), file=sys.stderr)

    def logs(self):
        out = []
        for p in (self.broker, self.producer, self.consumer):
            if p is not None:
                out.append("--- %s log (tail) ---\n%s" % (p.name, log_tail(p.logpath)))
        return "\n".join(out)

    def producer_stats(self, timeout=10.0):
        st, body = http("GET", self.producer.url("/stats"), timeout=timeout)
        return body if st == 200 else None

    def consumer_stats(self, from_k=0, timeout=30.0):
        q = "/stats" + ("?from_k=%d" % from_k if from_k else "")
        st, body = http("GET", self.consumer.url(q), timeout=timeout)
        return body if st == 200 else None

    def emit(self, n, per_tx, timeout=60.0):
        return http("POST", self.producer.url("/emit"), {"n": n, "per_tx": per_tx},
                    timeout=timeout)


class Chaos:
    """K kills spread over the emission: kill i fires a random moment after the emission
    passed points[i]; the driver never runs more than one point ahead of the kills."""

    def __init__(self, stack, n, kills, rng):
        self.stack, self.n, self.k, self.rng = stack, n, kills, rng
        lo, hi = max(1, n // 20), max(2, n * 9 // 10)
        self.points = sorted(rng.randint(lo, hi) for _ in range(kills))
        targets = ["producer", "consumer", "broker"]
        order = (targets * (kills // 3 + 1))[:kills]
        rng.shuffle(order)
        self.order = order
        self.cv = threading.Condition()
        self.emitted = 0
        self.started = 0  # kills begun
        self.done_emitting = False
        self.error = None
        self.log = []

    def cap(self):
        """How far the driver may emit now (under self.cv)."""
        j = self.started + 1
        return self.points[j] if j < self.k else self.n

    def victim(self, name):
        return {"producer": self.stack.producer, "consumer": self.stack.consumer,
                "broker": self.stack.broker}[name]

    def run(self, deadline):
        try:
            for i in range(self.k):
                with self.cv:
                    while self.emitted < self.points[i] and not self.done_emitting:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise Fail("deadline while waiting for kill point %d" % i)
                        self.cv.wait(min(left, 1.0))
                time.sleep(self.rng.uniform(0.0, 0.3))
                v = self.victim(self.order[i])
                with self.cv:
                    self.started = i + 1
                    at = self.emitted
                    self.cv.notify_all()
                v.kill9()
                pause = self.rng.uniform(0.05, 0.6)
                time.sleep(pause)
                v.start()
                self.log.append("kill %d: %s at emitted~%d, down %.2f s" % (i + 1, self.order[i],
                                                                             at, pause))
        except Exception as e:  # reported by the main thread
            self.error = e
        finally:
            with self.cv:
                self.started = self.k
                self.cv.notify_all()


def drive(stack, chaos, n, batch, per_tx, deadline):
    """Emits until the producer's counter reaches n; returns the counter."""
    emitted = None
    while True:
        if time.monotonic() > deadline:
            raise Fail("deadline while emitting")
        if chaos.error:
            raise chaos.error
        if emitted is None:  # after a failure: the counter tells what was committed
            s = stack.producer_stats(timeout=5)
            if s is None:
                time.sleep(0.05)
                continue
            emitted = s["emitted"]
            with chaos.cv:
                chaos.emitted = emitted
                chaos.cv.notify_all()
        if emitted >= n:
            return emitted
        with chaos.cv:
            while chaos.cap() <= emitted and time.monotonic() < deadline:
                chaos.cv.wait(0.5)
            cap = chaos.cap()
        m = min(batch, n - emitted, max(1, cap - emitted))
        st, body = stack.emit(m, per_tx)
        if st == 200:
            emitted = body["last_k"]
            with chaos.cv:
                chaos.emitted = emitted
                chaos.cv.notify_all()
        else:
            emitted = None


def wait_applied(stack, emitted, deadline, stall_s):
    """Waits until the consumer applied `emitted` events; stops early when nothing moves for
    stall_s seconds. Returns the consumer's last stats."""
    last, last_change = None, time.monotonic()
    while True:
        s = stack.consumer_stats()
        now = time.monotonic()
        if s is not None:
            if s["applied"] >= emitted:
                return s
            if last is None or s["applied"] != last["applied"]:
                last_change = now
            last = s
        if now > deadline or now - last_change > stall_s:
            return last or {"applied": 0, "twice": 0, "max_k": 0, "max_n": 0}
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("--backend", choices=["http", "nats"], required=True)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--pg-url")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--batch", type=int, default=500, help="events per POST /emit")
    ap.add_argument("--per-tx", type=int, default=50, help="events per transaction")
    ap.add_argument("--timeout", type=float, help="overall seconds (default from N)")
    ap.add_argument("--stall", type=float, default=60.0,
                    help="give up when nothing is applied for this long")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    a = ap.parse_args()
    if a.events < 1 or a.kills < 0:
        ap.error("--events >= 1, --kills >= 0")
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    timeout = a.timeout or 120.0 + a.events / 200.0 + a.kills * 10.0
    t0 = time.monotonic()
    deadline = t0 + timeout
    tmp = tempfile.mkdtemp(prefix="gr-chaos-")
    stack = Stack(os.path.abspath(a.build), a.backend, tmp, a.pg_url)
    engine = "pg" if a.pg_url else "sqlite"
    chaos = None
    ok = False
    try:
        stack.start()
        chaos = Chaos(stack, a.events, a.kills, rng)
        th = threading.Thread(target=chaos.run, args=(deadline,), daemon=True)
        th.start()
        try:
            drive(stack, chaos, a.events, a.batch, a.per_tx, deadline)
        finally:
            with chaos.cv:
                chaos.done_emitting = True
                chaos.cv.notify_all()
            th.join(max(1.0, deadline - time.monotonic()))
        if th.is_alive():
            raise Fail("the kill thread did not finish before the deadline")
        if chaos.error:
            raise chaos.error
        # All victims are up again: the producer's counter row is the truth.
        ps = wait_for("producer stats", stack.producer_stats, 30)
        emitted = ps["emitted"]
        cs = wait_applied(stack, emitted, deadline, a.stall)
        ps = stack.producer_stats() or ps
        applied, twice = cs["applied"], cs["twice"]
        lost = emitted - applied
        extra = max(0, cs["max_k"] - emitted)
        secs = time.monotonic() - t0
        for line in chaos.log:
            print("  " + line)
        print("chaos backend=%s engine=%s events=%d kills=%d emitted=%d applied=%d lost=%d "
              "applied_twice=%d max_n=%d outbox_left=%d seed=%d secs=%.1f"
              % (a.backend, engine, a.events, a.kills, emitted, applied, lost, twice,
                 cs["max_n"], ps["outbox"], seed, secs))
        if extra:
            print("FAIL: %d events applied beyond the emitted counter" % extra)
        ok = lost == 0 and twice == 0 and extra == 0 and emitted >= a.events
        if not ok:
            print("FAIL (seed %d)\n%s" % (seed, stack.logs()))
    except Fail as e:
        print("FAIL: %s (seed %d)" % (e, seed))
        if chaos:
            for line in chaos.log:
                print("  " + line)
        print(stack.logs())
    finally:
        stack.stop()
        if a.keep:
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
