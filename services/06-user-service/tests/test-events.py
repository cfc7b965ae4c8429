#!/usr/bin/python3
"""user-service events end to end with real processes (SERVICES §06, §0 Events).

  test-events.py BUILD_DIR [PG_URL]    (with PG_URL both services run on PostgreSQL)

Starts 14-event-bus-service and 06-user-service (EVENT_BUS=http) on free ports and checks:
  1. user.created published twice (two event ids, one user) makes one profile with 05's email
     and username; a replay of the subscription changes nothing (inbox);
  2. the other order: the user's first GET /users/me creates the profile from the token, and
     user.created arriving afterwards completes that same profile (still one);
  3. user.created arriving after the user erased themself does not bring the profile back, and
     the erasure published user.deleted exactly once;
  4. file.deleted clears the avatar that pointed at the file and publishes user.updated;
  5. PATCH /users/me publishes user.updated with the profile (and its version) as data.
Every wait is for a condition with a deadline. Only the standard library is used.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

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


class Svc:
    def __init__(self, build, name, tmp, env):
        self.bin = os.path.join(build, "bin", name)
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.env = env
        self.port = None
        self.proc = None
        self.log = open(os.path.join(self.dir, "log"), "ab")

    def start(self):
        env = dict(self.env)
        pf = os.path.join(self.dir, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        env.update({"PORT": str(self.port or 0), "GR_PORT_FILE": pf,
                    "DATA_DIR": os.path.join(self.dir, "data")})
        self.proc = subprocess.Popen([self.bin], env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_for(self.name + " port file",
                                 lambda: os.path.exists(pf) and open(pf).read().strip()))
        wait_for(self.name + " /ready", lambda: self.req("GET", "/ready")[0] == 200)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def req(self, method, path, body=None, token=None, ctype="application/json"):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request(self.url(path), data=data, method=method)
        if data is not None:
            r.add_header("Content-Type", ctype)
        if token:
            r.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("%s did not drain on SIGTERM" % self.name)
            if rc != 0:
                fail("%s exited with status %d" % (self.name, rc))
        self.proc = None


class Minter:
    """One ES256 key and JWKS; tokens for any sub through build/bin/gr-jwt."""

    def __init__(self, build, tmp):
        self.tool = os.path.join(build, "bin", "gr-jwt")
        self.key = os.path.join(tmp, "k.pem")
        self.jwks = os.path.join(tmp, "jwks.json")
        subprocess.run([self.tool, "keygen", "--alg", "ES256", "--kid", "t", "--key", self.key,
                        "--jwks", self.jwks], check=True, stdout=subprocess.DEVNULL)

    def token(self, sub, perms="", roles="customer"):
        args = [self.tool, "sign", "--key", self.key, "--alg", "ES256", "--kid", "t", "--sub",
                sub, "--roles", roles, "--ttl", "86400"]
        if perms:
            args += ["--perms", perms]
        return subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.decode().strip()


def pg_database(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, stdout=subprocess.DEVNULL)
    u = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pg_drop(admin_url, name):
    subprocess.run(["psql", "-X", "-q", "-d", admin_url, "-c",
                    'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    pg = sys.argv[2] if len(sys.argv) > 2 else None
    tmp = tempfile.mkdtemp(prefix="gr-user-events-")
    mint = Minter(build, tmp)
    admin = mint.token(str(uuid.uuid4()), perms="*", roles="super_admin")
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    base.update({"HOST": "127.0.0.1", "JWKS_URL": "file://" + mint.jwks, "LOG_LEVEL": "info",
                 "CURSOR_SECRET": "t"})
    benv, uenv, dbs = dict(base), dict(base), []
    if pg:
        tag = uuid.uuid4().hex[:8]
        dbs = ["gr_bus_" + tag, "gr_user_" + tag]
        benv["DATABASE_URL"] = pg_database(pg, dbs[0])
        uenv["DATABASE_URL"] = pg_database(pg, dbs[1])
    bus = Svc(build, "14-event-bus-service", tmp, benv)
    bus.start()
    uenv.update({"EVENT_BUS": "http", "EVENT_BUS_URL": bus.url(""), "SERVICE_TOKEN": admin})
    users = Svc(build, "06-user-service", tmp, uenv)
    users.start()

    def publish(type_, subject, data, event_id=None):
        ev = {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "/gravity/test",
              "type": type_, "subject": subject, "data": data}
        st, body = bus.req("POST", "/api/v1/events", ev, admin, "application/cloudevents+json")
        if st not in (200, 201):
            fail("publish %s: %s %s" % (type_, st, body))
        return ev["id"]

    def bus_events(type_, subject):
        st, body = bus.req("GET", "/api/v1/events?type=%s&limit=100" % type_, token=admin)
        if st != 200:
            fail("list %s: %s" % (type_, st))
        return [d["event"] for d in body["data"] if d["event"].get("subject") == subject]

    def profile(uid):
        return users.req("GET", "/api/v1/users/" + uid, token=admin)

    def by_email(email):
        st, body = users.req("GET", "/api/v1/users?email=" + urllib.parse.quote(email),
                             token=admin)
        if st != 200:
            fail("list by email: %s %s" % (st, body))
        return body["data"]

    try:
        # 1. user.created twice (two event ids): one profile, and a replay is a no-op.
        u1 = str(uuid.uuid4())
        data = {"id": u1, "email": "Alice@Example.com", "username": "alice",
                "roles": ["customer"], "version": 1}
        publish("user.created", u1, data)
        publish("user.created", u1, data)
        p = wait_for("the profile of user.created",
                     lambda: (lambda r: r[1] if r[0] == 200 else None)(profile(u1)))
        if p["email"] != "Alice@Example.com" or p["username"] != "alice" or p["version"] != 1:
            fail("profile from user.created: %s" % p)
        if len(by_email("alice@example.com")) != 1:
            fail("user.created twice did not make exactly one profile")
        st, subs = bus.req("GET", "/api/v1/event-subscriptions", token=admin)
        sid = [s["id"] for s in subs["data"] if s["name"] == "user-service"]
        if st != 200 or len(sid) != 1:
            fail("user-service has no subscription on the bus")
        st, rep = bus.req("POST", "/api/v1/event-subscriptions/%s/replay" % sid[0],
                          {"after_seq": 0}, admin)
        if st != 200 or rep.get("replayed", 0) < 2:
            fail("replay: %s %s" % (st, rep))
        # A marker published after the replay: once it is applied, so is everything before it
        # (delivery is ordered), and the replayed events must have changed nothing.
        marker = str(uuid.uuid4())
        publish("user.created", marker, {"id": marker, "email": "m@example.com", "version": 1})
        wait_for("the marker profile", lambda: profile(marker)[0] == 200)
        st, p2 = profile(u1)
        if st != 200 or p2 != p:
            fail("a replayed user.created changed the profile: %s -> %s" % (p, p2))
        print("ok: user.created twice makes one profile; a replay is a no-op")

        # 2. GET /users/me first, then user.created: the same single profile, completed.
        u2 = str(uuid.uuid4())
        t2 = mint.token(u2)
        st, me = users.req("GET", "/api/v1/users/me", token=t2)
        if st != 200 or me["id"] != u2 or me["email"] is not None:
            fail("lazy profile: %s %s" % (st, me))
        st, me = users.req("PATCH", "/api/v1/users/me", {"first_name": "Bea"}, t2)
        if st != 200 or me["version"] != 2:
            fail("patch of the lazy profile: %s %s" % (st, me))
        publish("user.created", u2, {"id": u2, "email": "bea@example.com", "username": "bea",
                                     "version": 1})
        me = wait_for("user.created to complete the lazy profile",
                      lambda: (lambda r: r[1] if r[0] == 200 and r[1]["email"] else None)(
                          users.req("GET", "/api/v1/users/me", token=t2)))
        if me["first_name"] != "Bea" or me["username"] != "bea" or me["version"] != 3:
            fail("completed profile: %s" % me)
        if len(by_email("bea@example.com")) != 1:
            fail("the lazy profile and user.created made two profiles")
        print("ok: GET /me before user.created, then the event: one profile")

        # 3. erased before user.created arrives: the profile stays erased; user.deleted once.
        u3 = str(uuid.uuid4())
        t3 = mint.token(u3)
        st, _ = users.req("DELETE", "/api/v1/users/" + u3, token=t3)
        if st != 204:
            fail("self-erasure: %s" % st)
        st, _ = users.req("DELETE", "/api/v1/users/" + u3, token=t3)
        if st != 404:
            fail("second erasure: %s" % st)
        publish("user.created", u3, {"id": u3, "email": "gone@example.com", "version": 1})
        marker = str(uuid.uuid4())
        publish("user.created", marker, {"id": marker, "email": "m2@example.com", "version": 1})
        wait_for("the second marker profile", lambda: profile(marker)[0] == 200)
        if profile(u3)[0] != 404 or by_email("gone@example.com"):
            fail("a late user.created brought an erased profile back")
        ev = wait_for("user.deleted on the bus", lambda: bus_events("user.deleted", u3))
        if len(ev) != 1 or ev[0]["source"] != "/gravity/user-service" or ev[0]["data"]["id"] != u3:
            fail("user.deleted: %s" % ev)
        print("ok: erasure publishes user.deleted once; a late user.created does not undo it")

        # 4. file.deleted clears the avatar and publishes user.updated.
        fid = str(uuid.uuid4())
        st, me = users.req("PATCH", "/api/v1/users/me", {"avatar_file_id": fid}, t2)
        if st != 200 or me["avatar_file_id"] != fid:
            fail("set avatar: %s %s" % (st, me))
        wait_for("user.updated of the avatar",
                 lambda: [e for e in bus_events("user.updated", u2)
                          if e["data"]["avatar_file_id"] == fid])
        publish("file.deleted", fid, {"id": fid})
        me = wait_for("file.deleted to clear the avatar",
                      lambda: (lambda r: r[1] if r[0] == 200 and r[1]["avatar_file_id"] is None
                               else None)(users.req("GET", "/api/v1/users/me", token=t2)))
        ev = wait_for("user.updated after file.deleted",
                      lambda: [e for e in bus_events("user.updated", u2)
                               if e["data"]["version"] == me["version"]])
        if ev[0]["data"]["avatar_file_id"] is not None:
            fail("user.updated after file.deleted still names the file: %s" % ev[0])
        print("ok: file.deleted clears the avatar and publishes user.updated")

        # 5. user.updated of a PATCH carries the profile and its version.
        n = len(bus_events("user.updated", u2))
        st, me = users.req("PATCH", "/api/v1/users/me", {"last_name": "Smith",
                                                         "version": me["version"]}, t2)
        if st != 200:
            fail("patch: %s %s" % (st, me))
        ev = wait_for("user.updated of the patch",
                      lambda: (lambda l: l if len(l) == n + 1 else None)(
                          bus_events("user.updated", u2)))
        last = [e for e in ev if e["data"]["version"] == me["version"]]
        if len(last) != 1 or last[0]["data"] != me:
            fail("user.updated data is not the patched profile: %s" % ev)
        print("ok: PATCH publishes user.updated with the profile")
    finally:
        users.stop()
        bus.stop()
        for d in dbs:
            pg_drop(pg, d)
    for svc in (users, bus):
        svc.log.close()
        text = open(os.path.join(svc.dir, "log"), errors="replace").read()
        if any(m in text for m in SANITIZER_MARKS):
            fail("%s: sanitizer report in its log (%s)" % (svc.name, svc.dir))
    shutil.rmtree(tmp, ignore_errors=True)
    print("all user-service event checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
