#!/usr/bin/python3
"""test-redis-limits.py BINARY REDIS_URL - auth's login limits on Redis (ARCHITECTURE §3):
two instances on one Redis share one (IP, identifier) budget; an instance without REDIS_URL
keeps its own; with REDIS_URL pointing at nothing, logins still work under local limits (no
500) and the outage is logged. Proposed for services/05-auth-service/tests/security/."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authsvc  # noqa: E402

WRONG = {"email": "nobody@example.com", "password": "wrong-password"}


def main():
    binary, url = sys.argv[1], sys.argv[2]
    env = {"REDIS_URL": url, "AUTH_LOGIN_LIMIT_PER_USER": "5", "AUTH_LOGIN_LIMIT_PER_IP": "1000"}
    ident = {"email": "nobody-%d@example.com" % os.getpid(), "password": "wrong-password"}
    svcs = []
    try:
        a = authsvc.Service(binary, env).start()
        b = authsvc.Service(binary, env).start()
        svcs += [a, b]
        codes = [(a if i % 2 == 0 else b).api("POST", "/login", ident).status for i in range(6)]
        print("two instances, one budget of 5:", codes)
        assert codes == [401] * 5 + [429], codes
        c = authsvc.Service(binary, {"AUTH_LOGIN_LIMIT_PER_USER": "5"}).start()
        svcs.append(c)
        assert c.api("POST", "/login", ident).status == 401
        down = dict(env, REDIS_URL="redis://127.0.0.1:%d" % authsvc.dead_port(),
                    AUTH_LOGIN_LIMIT_PER_USER="3")
        d = authsvc.Service(binary, down).start()
        svcs.append(d)
        codes = [d.api("POST", "/login", WRONG).status for _ in range(4)]
        print("Redis down, local limits:", codes)
        assert codes == [401, 401, 401, 429], codes
        d.root_token()
        assert "redis unavailable" in d.log_text()
    finally:
        for s in svcs:
            s.stop()
            s.cleanup()
    print("ok")


if __name__ == "__main__":
    main()
