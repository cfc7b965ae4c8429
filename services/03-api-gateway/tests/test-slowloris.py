#!/usr/bin/python3
"""test-slowloris.py BUILD_DIR - the gateway under a slow-client flood (SERVICES §03 bad input).

slowhttptest (Debian) opens 1,000 connections to the gateway and trickles request headers
(slowloris, one header line every 2 s) for 15 s, while four ordinary clients send GETs through
the gateway to an upstream double. Passes when at least 99 % of the ordinary requests succeed,
slowhttptest reached its 1,000 connections, and the gateway still answers afterwards. Prints
`N passed, N failed`."""
import http.client
import http.server
import os
import re
import resource
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

FLOOD_CONNS = 1000
FLOOD_SECONDS = 15
passed = failed = 0


def check(cond, msg):
    global passed, failed
    if cond:
        passed += 1
        print("ok: " + msg)
    else:
        failed += 1
        print("FAIL: " + msg)


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        out = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    build = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="gw-slow-")
    up = S(("127.0.0.1", 0), H)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    env = dict(os.environ)
    for k in ("DISCOVERY_URL", "REDIS_URL", "SERVICE_TOKEN", "EVENT_BUS_URL", "GATEWAY_RATE_IP"):
        env.pop(k, None)
    pf = os.path.join(tmp, "port")
    env.update({"PORT": "0", "HOST": "127.0.0.1", "GR_PORT_FILE": pf, "DATA_DIR": tmp,
                "DATABASE_URL": "sqlite://" + os.path.join(tmp, "gw.db"), "LOG_LEVEL": "warn",
                "JWKS_URL": "file:///nonexistent/jwks.json",
                "GATEWAY_UPSTREAMS": "product-service=127.0.0.1:%d" % up.server_address[1]})
    log = open(os.path.join(tmp, "gw.log"), "wb")
    gw = subprocess.Popen([os.path.join(build, "bin", "03-api-gateway")], env=env, stdout=log,
                          stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
    flood = None
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(pf) and gw.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(open(pf).read())

        def get():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                c.request("GET", "/api/v1/products?x=1")
                r = c.getresponse()
                r.read()
                return r.status
            finally:
                c.close()

        check(get() == 200, "a GET goes through before the flood")
        flood = subprocess.Popen(
            ["slowhttptest", "-H", "-c", str(FLOOD_CONNS), "-r", "500", "-i", "2",
             "-l", str(FLOOD_SECONDS), "-p", "3", "-u",
             "http://127.0.0.1:%d/api/v1/products" % port],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        out_chunks = []
        reader = threading.Thread(target=lambda: out_chunks.append(flood.stdout.read()),
                                  daemon=True)
        reader.start()
        ok = bad = 0
        lock = threading.Lock()
        stop = time.monotonic() + FLOOD_SECONDS - 2

        def client():
            nonlocal ok, bad
            while time.monotonic() < stop:
                try:
                    st = get()
                except OSError:
                    st = 0
                with lock:
                    if st == 200:
                        ok += 1
                    else:
                        bad += 1

        time.sleep(2)  # let the flood build up (slowhttptest opens 500 connections a second)
        ts = [threading.Thread(target=client) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        flood.wait(timeout=FLOOD_SECONDS + 30)
        reader.join(timeout=5)
        out = (out_chunks[0] if out_chunks else b"").decode(errors="replace")
        out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # slowhttptest colours its report
        conns = [int(x) for x in re.findall(r"connected:\s+(\d+)", out)]
        most = max(conns) if conns else 0
        total = ok + bad
        print("ordinary requests: %d ok, %d failed; slowhttptest connected at most %d"
              % (ok, bad, most))
        check(most >= FLOOD_CONNS * 0.95, "slowhttptest held about %d connections" % FLOOD_CONNS)
        check(total >= 200, "the ordinary clients made at least 200 requests (%d)" % total)
        check(total > 0 and ok / total >= 0.99, "at least 99 %% of them succeeded (%d/%d)"
              % (ok, total))
        check(get() == 200, "a GET goes through after the flood")
        check(gw.poll() is None, "the gateway is still running")
    finally:
        if flood and flood.poll() is None:
            flood.kill()
        gw.terminate()
        try:
            gw.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.kill()
        log.close()
        logtext = open(os.path.join(tmp, "gw.log"), errors="replace").read()
        check(not any(m in logtext for m in ("AddressSanitizer", "runtime error:",
                                              "ThreadSanitizer")),
              "no sanitizer report in the gateway log")
        up.shutdown()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
