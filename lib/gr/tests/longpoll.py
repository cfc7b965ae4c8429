"""Shared checks for gr's parked long-polls (gr_req_wait in gr/http.h), used by
services/04-config-service/tests/test-watch.py and
services/02-service-discovery/tests/test-blocking.py. Standard library only.

A long-poll holds no HTTP thread while it waits, so with a small HTTP_THREADS a service must
  load:  park N long-polls, keep answering other requests promptly (GET /health p99) and wake
         every long-poll within 100 ms of a change;
  cap:   answer the long-poll beyond HTTP_MAX_WAITERS with 429 problem+json (the service's slug,
         Retry-After) and accept long-polls again once places are free;
  drain: on SIGTERM answer every parked long-poll at once and exit 0 promptly.
"""

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

DEADLINE = 20.0
WAKE_MAX = 0.100  # SERVICES §02: a blocking call returns within 100 ms of a change


def sanitized(binary):
    """True for an ASan or TSan build, whose wake-ups are held to 3x WAKE_MAX: the bound is
    enforced as specified on the normal build."""
    with open(binary, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data
SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def wait_for(what, cond, deadline=DEADLINE, step=0.02):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    fail("timed out waiting for " + what)


def request(port, method, path, token=None, body=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": "Bearer " + token} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")
        return r.status, doc, {k.lower(): v for k, v in r.getheaders()}
    except (ConnectionError, OSError):
        return 0, None, {}
    finally:
        c.close()


class Proc:
    """One service process on a free port (PORT=0, GR_PORT_FILE)."""

    def __init__(self, binary, tmp, name, env):
        self.name = name
        self.wake_max = WAKE_MAX * (3 if sanitized(binary) else 1)
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "ab")
        pf = os.path.join(tmp, name + ".port")
        if os.path.exists(pf):
            os.unlink(pf)
        env = dict(env, HOST="127.0.0.1", PORT="0", GR_PORT_FILE=pf)
        self.proc = subprocess.Popen([binary], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(name + " port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for(name + " /ready", lambda: request(self.port, "GET", "/ready")[0] == 200)

    def waiting(self):
        """Requests parked in gr_req_wait (the http_requests_waiting gauge)."""
        st, doc, _ = request(self.port, "GET", "/metrics")
        if st != 200 or not isinstance(doc, str):
            return -1
        for line in doc.splitlines():
            if line.startswith("http_requests_waiting "):
                return int(float(line.split()[-1]))
        return -1

    def stop(self, timeout=15):
        """SIGTERM; returns the seconds until it exited. Fails on a non-zero status or a
        sanitizer report."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -1
        took = time.monotonic() - t0
        self.log.close()
        if rc != 0:
            fail("%s did not drain cleanly (status %d), log %s" % (self.name, rc, self.log_path))
        self.check_log()
        return took

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def check_log(self):
        text = open(self.log_path, errors="replace").read()
        if any(m in text for m in SANITIZER_MARKS):
            fail("sanitizer report in %s" % self.log_path)


class Waiters:
    """N long-polls on raw sockets, read with one selector: when each response arrived."""

    def __init__(self, port, path, token, n):
        self.sel = selectors.DefaultSelector()
        self.socks = []
        self.bufs = {}
        self.done = {}  # index -> (monotonic arrival, status, headers, body)
        auth = "Authorization: Bearer %s\r\n" % token if token else ""
        raw = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n"
               % (path, auth)).encode()
        for k in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(raw)
            s.setblocking(False)
            self.socks.append(s)
            self.bufs[k] = b""
            self.sel.register(s, selectors.EVENT_READ, k)

    def poll(self, timeout):
        """Reads what is there for up to @timeout s; returns how many responses are complete."""
        end = time.monotonic() + timeout
        while len(self.done) < len(self.socks):
            ready = self.sel.select(max(0.0, end - time.monotonic()))
            if not ready:
                break
            for key, _ in ready:
                k = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                now = time.monotonic()
                self.bufs[k] += chunk
                parsed = self._parse(self.bufs[k], eof=not chunk)
                if parsed is not None or not chunk:
                    self.done[k] = (now,) + (parsed or (0, {}, None))
                    self.sel.unregister(key.fileobj)
        return len(self.done)

    @staticmethod
    def _parse(buf, eof):
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "-1"))
        if n >= 0 and len(body) < n:
            return None
        if n < 0 and not eof:
            return None
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        return status, hdrs, doc

    def close(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.sel.close()


def parked(proc, n):
    """Waits until @n long-polls are parked (http_requests_waiting)."""
    wait_for("%d parked long-polls" % n, lambda: proc.waiting() >= n)


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def check_load(proc, path, token, change, n, label, expect_status=200):
    """@n long-polls parked; /health stays fast; @change() wakes all within 100 ms."""
    w = Waiters(proc.port, path, token, n)
    try:
        parked(proc, n)
        if w.poll(0.05):
            fail("%s: %d long-polls answered before any change: %r"
                 % (label, len(w.done), list(w.done.values())[:1]))
        lat = []
        for _ in range(200):
            t0 = time.monotonic()
            st, _, _ = request(proc.port, "GET", "/health")
            lat.append(time.monotonic() - t0)
            if st != 200:
                fail("%s: GET /health answered %d with %d long-polls parked" % (label, st, n))
        if p99(lat) >= 0.100:
            fail("%s: GET /health p99 %.1f ms with %d long-polls parked (limit 100 ms)"
                 % (label, p99(lat) * 1000, n))
        if w.poll(0):
            fail("%s: long-polls answered before any change" % label)
        change()
        t_change = time.monotonic()
        w.poll(10)
        if len(w.done) != n:
            fail("%s: only %d of %d long-polls answered after the change" % (label, len(w.done), n))
        bad = [d for d in w.done.values() if d[1] != expect_status]
        if bad:
            fail("%s: long-poll answered %d (%r)" % (label, bad[0][1], bad[0][3]))
        wake = [max(0.0, d[0] - t_change) for d in w.done.values()]
        if max(wake) >= proc.wake_max:
            fail("%s: the slowest of %d long-polls woke %.1f ms after the change (limit %.0f ms)"
                 % (label, n, max(wake) * 1000, proc.wake_max * 1000))
        print("ok: %s: %d parked long-polls; GET /health p99 %.1f ms (max %.1f ms) meanwhile; all"
              " woke within %.1f ms of the change (median %.1f ms, limit %.0f ms)"
              % (label, n, p99(lat) * 1000, max(lat) * 1000, max(wake) * 1000,
                 sorted(wake)[len(wake) // 2] * 1000, proc.wake_max * 1000))
        return w.done
    finally:
        w.close()


def check_cap(proc, path_fn, token, change, cap, slug, label):
    """@cap long-polls parked (HTTP_MAX_WAITERS=@cap); the next is 429 problem+json @slug.
    @path_fn() gives a long-poll path that waits for the next change."""
    path = path_fn()
    w = Waiters(proc.port, path, token, cap)
    try:
        parked(proc, cap)
        t0 = time.monotonic()
        st, doc, hdr = request(proc.port, "GET", path, token)
        took = time.monotonic() - t0
        if st != 429 or not isinstance(doc, dict) or not str(doc.get("type", "")).endswith(slug):
            fail("%s: long-poll %d beyond HTTP_MAX_WAITERS=%d: %d %r after %.3f s (%d answered)"
                 % (label, cap + 1, cap, st, doc, took, w.poll(0)))
        if not hdr.get("content-type", "").startswith("application/problem+json"):
            fail("%s: 429 content type %r" % (label, hdr.get("content-type")))
        if hdr.get("retry-after") != "1":
            fail("%s: 429 without Retry-After: 1 (%r)" % (label, hdr))
        if doc.get("status") != 429:
            fail("%s: problem status %r" % (label, doc.get("status")))
        if w.poll(0):
            fail("%s: a parked long-poll was answered by the refusal" % label)
        change()
        if w.poll(10) != cap or any(d[1] != 200 for d in w.done.values()):
            fail("%s: parked long-polls after the change: %r" % (label, list(w.done.values())))
    finally:
        w.close()
    # The places are free again.
    w = Waiters(proc.port, path_fn(), token, cap)
    try:
        parked(proc, cap)
    finally:
        w.close()
    print("ok: %s: long-poll %d beyond HTTP_MAX_WAITERS=%d is 429 %s problem+json with"
          " Retry-After: 1 (in %.1f ms); places free again after the wake"
          % (label, cap + 1, cap, slug, took * 1000))


def check_drain(proc, path, token, n, label):
    """@n parked long-polls; SIGTERM answers them all at once and the process exits 0."""
    w = Waiters(proc.port, path, token, n)
    try:
        parked(proc, n)
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        w.poll(5)
        if len(w.done) != n:
            fail("%s: only %d of %d parked long-polls answered on SIGTERM" % (label, len(w.done), n))
        bad = [d for d in w.done.values() if d[1] != 200]
        if bad:
            fail("%s: a parked long-poll answered %d on SIGTERM (%r)" % (label, bad[0][1], bad[0][3]))
        slowest = max(d[0] for d in w.done.values()) - t0
        try:
            rc = proc.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            fail("%s: did not exit within 10 s of SIGTERM with parked long-polls" % label)
        exited = time.monotonic() - t0
        proc.log.close()
        if rc != 0:
            fail("%s: exit status %d after SIGTERM" % (label, rc))
        proc.check_log()
        if slowest >= 1.0 or exited >= 3.0:
            fail("%s: drain answered in %.0f ms, exited in %.0f ms (limits 1 s, 3 s)"
                 % (label, slowest * 1000, exited * 1000))
        print("ok: %s: SIGTERM answered %d parked long-polls (200) within %.1f ms and exited 0"
              " in %.0f ms" % (label, n, slowest * 1000, exited * 1000))
    finally:
        w.close()


def check_replica(proc_b, path, token, change_on_a, n, label):
    """@n long-polls parked on replica B; a change made through replica A (same database, no
    local notify on B) wakes all of them within about a second (B re-reads the index)."""
    w = Waiters(proc_b.port, path, token, n)
    try:
        parked(proc_b, n)
        change_on_a()
        t0 = time.monotonic()
        w.poll(5)
        if len(w.done) != n or any(d[1] != 200 for d in w.done.values()):
            fail("%s: %d of %d long-polls on the other replica answered: %r"
                 % (label, len(w.done), n, list(w.done.values())[:1]))
        slowest = max(d[0] for d in w.done.values()) - t0
        if slowest >= 2.0:
            fail("%s: the other replica's long-polls woke %.0f ms after the change (limit 2 s)"
                 % (label, slowest * 1000))
        print("ok: %s: a change through replica A woke %d long-polls parked on replica B within"
              " %.0f ms (B re-reads the index once a second)" % (label, n, slowest * 1000))
    finally:
        w.close()
