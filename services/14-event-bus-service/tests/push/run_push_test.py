#!/usr/bin/env python3
"""Push-mode test for 14-event-bus-service: starts a loopback HTTP receiver (accepts events of
type push.ok with 204, refuses everything else with 500), runs push.case through the shared
runner with the receiver's port filled in, then checks what the receiver got: push.ok exactly
once, push.fail exactly twice (max_deliver 2), each as application/cloudevents+json.

  run_push_test.py RUNNER_ARGS...   e.g. --bin build/bin/14-event-bus-service
      --jwt-tool build/bin/gr-jwt --engine sqlite
"""
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading

got = []
lock = threading.Lock()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n))
        with lock:
            got.append((self.headers.get("Content-Type"), body))
        self.send_response(204 if body.get("type") == "push.ok" else 500)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "../../../.."))
    with open(os.path.join(here, "push.case.in")) as f:
        case = f.read().replace("@PORT@", str(srv.server_address[1]))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "push.case")
        with open(path, "w") as f:
            f.write(case)
        rc = subprocess.call([sys.executable, os.path.join(root, "lib/gr/tests/http/runner.py")]
                             + sys.argv[1:] + [path], cwd=root)
    srv.shutdown()
    types = sorted(b.get("type") for _, b in got)
    ok = rc == 0 and types == ["push.fail", "push.fail", "push.ok"] and all(
        ct == "application/cloudevents+json" for ct, _ in got)
    print("push receiver got:", types)
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
