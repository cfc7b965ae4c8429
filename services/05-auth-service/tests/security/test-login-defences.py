#!/usr/bin/python3
"""test-login-defences.py BIN - login defences of auth-service that a .case file cannot reach.

  test-login-defences.py build/bin/05-auth-service

The login limits are per client IP (decision 19), and the runner's cases all come from
127.0.0.1; this script sends from other loopback addresses (127.0.x.y, all local on Linux) to
check, with the default limits:
  1. unknown user, wrong password and locked account answer byte-identical 401 bodies (but
     request_id) and headers (but Date, X-Request-Id), after similar work: the median times of
     the three differ by less than half (SERVICES §05 "same 401, same timing");
  2. 10 straight failures lock the account: the right password then receives that same 401; 9
     failures and a success do not (the count starts again);
  3. the lock holds when the failures come in parallel (10 at once from 2 addresses, each
     within its 5-a-minute limit; 5 trials);
  4. the reset link (captured from a notification-service double) clears the lock, sets the
     new password, revokes every session, and is single-use;
  5. password-reset answers a known and an unknown email alike, in body and in time, even
     when the notification service is slow (the double waits 300 ms);
  6. a 10 MB password is refused with 413 at once (never hashed) and a 1 MB one (under the
     body limit) with 422 at once, on register and login.
Prints one line per check and "N checks, N failed"; exits 1 if any failed.
"""

import http.server
import json
import os
import socket
import sqlite3
import statistics
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authsvc  # noqa: E402

NOTIFY_DELAY_S = 0.3

results = []


def check(ok, what):
    results.append((ok, what))
    print(("ok   " if ok else "FAIL ") + what)
    return ok


class Notifier:
    """A notification-service double: records POST /api/v1/notifications, answers 202 after
    NOTIFY_DELAY_S (a slow but healthy service)."""

    def __init__(self):
        got = self.got = []
        cond = self.cond = threading.Condition()

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                time.sleep(NOTIFY_DELAY_S)
                with cond:
                    try:
                        got.append(json.loads(body))
                    except ValueError:
                        got.append(None)
                    cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def wait(self, n, timeout=10.0):
        """Waits until at least @n messages arrived (the service delivers links in the
        background, after its 202); True if they did within @timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.got) >= n, timeout)

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def strip(r):
    """A 401's body and headers without what differs per request."""
    body = dict(r.json or {})
    body.pop("request_id", None)
    hdrs = sorted((k.lower(), v) for k, v in r.headers
                  if k.lower() not in ("date", "x-request-id"))
    return body, hdrs


def login(svc, ident, pw, field="email", source=None, totp=None):
    body = {field: ident, "password": pw}
    t = time.monotonic()
    r = svc.api("POST", "/login", body, source=source or svc.fresh_source())
    return r, time.monotonic() - t


def raw_post(svc, path, head_json, total_len, fill=b"x", tail=b'"}'):
    """Sends a body of @total_len bytes (a JSON prefix, @fill bytes, a suffix) on a raw socket,
    tolerating the server's early answer and close; returns (status, seconds)."""
    prefix = head_json.encode()
    n_fill = total_len - len(prefix) - len(tail)
    s = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
    t = time.monotonic()
    status = 0
    try:
        s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % (path, total_len))
                  .encode() + prefix)
        chunk = fill * 65536
        sent = 0
        try:
            while sent < n_fill:
                k = min(len(chunk), n_fill - sent)
                s.sendall(chunk[:k])
                sent += k
            s.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n" not in data:
                more = s.recv(4096)
                if not more:
                    break
                data += more
        except ConnectionResetError:
            pass
        if data.startswith(b"HTTP/1."):
            status = int(data.split(b" ", 2)[1])
    finally:
        s.close()
    return status, time.monotonic() - t


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    notifier = Notifier()
    svc = authsvc.Service(os.path.abspath(sys.argv[1]), {
        "NOTIFICATION_URL": notifier.url,
        "AUTH_RESET_LINK_BASE": "http://app.example/reset?token="})
    try:
        svc.start()
        run(svc, notifier)
        svc.stop()
    except authsvc.Failure as e:
        check(False, str(e))
    finally:
        notifier.close()
        failed = sum(1 for ok, _ in results if not ok)
        if failed:
            print("server log (last 20 lines):\n" + svc.log_tail(20))
        svc.cleanup()
    print("%d checks, %d failed" % (len(results), failed))
    return 1 if failed else 0


def run(svc, notifier):
    # ---- 1/2. identical answers; lock after 10 straight failures ----------------------------
    email, pw, acct = svc.register(username="lk-" + os.urandom(4).hex())
    uname = acct["username"]

    # 9 failures and a success: not locked, and the count starts again.
    for i in range(9):
        r, _ = login(svc, email, "wrong-" + str(i))
        if r.status != 401:
            check(False, "failure %d: %r" % (i + 1, r))
            return
    r, _ = login(svc, email, pw)
    check(r.status == 200, "9 failures then the right password: 200 (%d)" % r.status)
    for i in range(9):
        login(svc, uname, "wrong-" + str(i), field="username")
    r, _ = login(svc, email, pw)
    check(r.status == 200, "the success reset the count: 9 more failures do not lock (%d)"
          % r.status)

    # 10 straight failures lock.
    wrong = None
    for i in range(10):
        wrong, _ = login(svc, email, "wrong-" + str(i))
    locked, _ = login(svc, email, pw)
    check(locked.status == 401 and (locked.json or {}).get("type") ==
          "urn:gravity:problem:invalid_credentials",
          "after 10 straight failures the right password is refused: %r" % locked)
    unknown, _ = login(svc, "nobody-%s@example.com" % os.urandom(4).hex(), pw)
    check(strip(wrong) == strip(unknown) == strip(locked),
          "wrong password, unknown user and locked account: identical 401 body and headers")
    if strip(wrong) != strip(unknown) or strip(wrong) != strip(locked):
        print("  wrong:   %r\n  unknown: %r\n  locked:  %r" % (strip(wrong), strip(unknown),
                                                              strip(locked)))

    # Timing: medians of interleaved samples (Argon2 dominates every path).
    others = [svc.register()[:2] for _ in range(4)]
    t_unknown, t_wrong, t_locked = [], [], []
    for i in range(12):
        _, t = login(svc, "ghost-%d-%s@example.com" % (i, os.urandom(3).hex()), "whatever-pw")
        t_unknown.append(t)
        e, _ = others[i % 4]
        _, t = login(svc, e, "wrong-password-%d" % i)
        t_wrong.append(t)
        _, t = login(svc, email, "wrong-password-%d" % i)
        t_locked.append(t)
    m = {"unknown user": statistics.median(t_unknown), "wrong password":
         statistics.median(t_wrong), "locked account": statistics.median(t_locked)}
    lo, hi = min(m.values()), max(m.values())
    check(hi < 2 * lo and hi - lo < 0.05,
          "login timing: medians %s" % ", ".join("%s %.1f ms" % (k, v * 1000)
                                                 for k, v in m.items()))

    # ---- 3. the lock under parallel failures -------------------------------------------------
    # Exactly 10 failures at once (2 addresses × 5, within every limit), on 5 accounts: each
    # must end locked. (A lock decided from a failed_logins read before the hash is missed
    # when the failures overlap; one trial may not show it, five mostly do.)
    unlocked = []
    for trial in range(5):
        pemail, ppw, _ = svc.register()
        sources = [svc.fresh_source() for _ in range(2)]
        out = []

        def attempt(src, k):
            out.append(svc.api("POST", "/login", {"email": pemail, "password": "guess-%d" % k},
                               source=src).status)

        threads = [threading.Thread(target=attempt, args=(src, k))
                   for src in sources for k in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if out.count(401) != 10:
            check(False, "10 parallel wrong passwords: 10 × 401 (%s)" % sorted(out))
        r, _ = login(svc, pemail, ppw)
        if r.status != 401:
            unlocked.append(trial)
    check(not unlocked,
          "10 parallel failures lock the account (5 trials; the right password got through "
          "after trials %s%s)" % (unlocked, ": the lock is decided from failed_logins read "
                                  "before the hash, and every failure that did not see 9 "
                                  "writes locked_until = 0, so overlapping failures do not "
                                  "lock (and can unlock)" if unlocked else ""))

    # ---- 4. the reset link clears the lock ---------------------------------------------------
    # The locked account of part 1 had a session; take one on a fresh account too.
    remail, rpw, _ = svc.register()
    session = svc.login(remail, rpw, source=svc.fresh_source())
    for i in range(10):
        login(svc, remail, "bad-%d" % i)
    r, _ = login(svc, remail, rpw)
    check(r.status == 401, "the reset account is locked (%d)" % r.status)
    with notifier.cond:
        del notifier.got[:]
    r = svc.api("POST", "/password-reset", {"email": remail})
    check(r.status == 202, "password-reset: 202 (%d)" % r.status)
    link = None
    if notifier.wait(1):
        msg = notifier.got[-1] or {}
        link = ((msg.get("data") or {}).get("link") or "")
        check(msg.get("to") == remail and link.startswith("http://app.example/reset?token="),
              "the notification service got the link for %s" % remail)
        check(msg.get("template") == "password_reset", "template password_reset")
    else:
        check(False, "the notification service got no reset link")
    if link:
        tok = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
        check(tok not in svc.log_text(), "the reset token is not in the log")
        r = svc.api("POST", "/password-reset/confirm", {"token": tok,
                                                        "new_password": "a-brand-new-pw"})
        check(r.status == 204, "confirm: 204 (%r)" % r)
        r, _ = login(svc, remail, "a-brand-new-pw")
        check(r.status == 200, "after the reset the new password logs in: the lock is gone (%d)"
              % r.status)
        r, _ = login(svc, remail, rpw)
        check(r.status == 401, "the old password no longer works (%d)" % r.status)
        r = svc.api("POST", "/refresh", {"refresh_token": session["refresh_token"]})
        check(r.status == 401, "the reset revoked the session opened before it (%d)" % r.status)
        r = svc.api("POST", "/password-reset/confirm", {"token": tok,
                                                        "new_password": "another-new-pw"})
        check(r.status == 401 and (r.json or {}).get("type") ==
              "urn:gravity:problem:invalid_reset_token", "the link is single-use (%r)" % r)

    # ---- 5. password-reset: known and unknown emails alike -----------------------------------
    kemail, _, _ = svc.register()
    t_known, t_unknown = [], []
    bodies = set()
    for i in range(5):
        t = time.monotonic()
        a = svc.api("POST", "/password-reset", {"email": kemail})
        t_known.append(time.monotonic() - t)
        t = time.monotonic()
        b = svc.api("POST", "/password-reset", {"email": "none-%d-%s@example.com"
                                                % (i, os.urandom(3).hex())})
        t_unknown.append(time.monotonic() - t)
        bodies.add((a.status, a.raw))
        bodies.add((b.status, b.raw))
        check(strip(a)[1] == strip(b)[1], "reset %d: the same headers" % i)
    check(len(bodies) == 1, "password-reset: one status and body for known and unknown "
                            "emails: %r" % bodies)
    dk, du = statistics.median(t_known), statistics.median(t_unknown)
    check(abs(dk - du) < 0.1,
          "password-reset takes as long for a known email (%.0f ms) as for an unknown one "
          "(%.0f ms) with a notification service that answers in %d ms%s"
          % (dk * 1000, du * 1000, NOTIFY_DELAY_S * 1000,
             "" if abs(dk - du) < 0.1 else ": the link is sent inside the request, so the "
             "delay tells which emails have accounts"))

    # ---- 6. huge passwords are never hashed --------------------------------------------------
    n0 = count_credentials(svc)
    st, dt = raw_post(svc, authsvc.PREFIX + "/register",
                      '{"email":"huge@example.com","password":"', 10 * 1024 * 1024)
    check(st == 413 and dt < 3, "register with a 10 MB password: 413 in %.2f s (%d)" % (dt, st))
    st, dt = raw_post(svc, authsvc.PREFIX + "/login",
                      '{"email":"%s","password":"' % email, 10 * 1024 * 1024)
    check(st == 413 and dt < 3, "login with a 10 MB password: 413 in %.2f s (%d)" % (dt, st))
    t = time.monotonic()
    r = svc.api("POST", "/register", {"email": "big@example.com", "password": "p" * 1000000})
    dt = time.monotonic() - t
    check(r.status == 422 and dt < 1, "register with a 1 MB password: 422 in %.2f s (%d)"
          % (dt, r.status))
    t = time.monotonic()
    r = svc.api("POST", "/login", {"email": email, "password": "p" * 1000000},
                source=svc.fresh_source())
    dt = time.monotonic() - t
    check(r.status == 422 and dt < 1, "login with a 1 MB password: 422 in %.2f s (%d)"
          % (dt, r.status))
    check(count_credentials(svc) == n0, "no account was made by the huge passwords")


def count_credentials(svc):
    db = sqlite3.connect("file:%s?mode=ro" % svc.db_path, uri=True)
    try:
        return db.execute("SELECT count(*) FROM credentials").fetchone()[0]
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
