#!/usr/bin/python3
"""test-metrics.py BUILD_DIR - every service's /metrics is valid Prometheus text (parsed by the
official client parser from Debian's python3-prometheus-client) and carries the series of
SERVICES §0: http_requests_total{method,route,status} for the requests just made (including an
unmatched 404 and a 422), http_request_duration_seconds, and the process metrics."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

build = sys.argv[1] if len(sys.argv) > 1 else "build"
passed = failed = 0


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def check(name, ok, msg):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL %s: %s" % (name, msg))


for binary in sorted(glob.glob(build + "/bin/[0-9][0-9]-*")):
    name = os.path.basename(binary)
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, PORT="0", GR_PORT_FILE=tmp + "/port", DATA_DIR=tmp + "/data",
               JWKS_URL="file://" + tmp + "/none.json", LOG_LEVEL="warn")
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 15
        while not os.path.exists(tmp + "/port") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        base = "http://127.0.0.1:%s" % open(tmp + "/port").read().strip()
        check(name, get(base + "/health")[0] == 200, "/health is not 200")
        check(name, get(base + "/no/such/path")[0] == 404, "an unknown path is not 404")
        routes = subprocess.run([binary, "--routes"], capture_output=True, text=True).stdout.split()
        status, text = get(base + "/metrics")
        check(name, status == 200, "/metrics answered %d" % status)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        req = fams.get("http_requests")
        check(name, req is not None and req.type == "counter", "no http_requests_total counter")
        samples = [s for s in (req.samples if req else []) if s.name == "http_requests_total"]
        check(name, any(s.labels.get("route") == "/health" and s.labels.get("status") == "200"
                        and s.labels.get("method") == "GET" for s in samples),
              "no http_requests_total{method=GET,route=/health,status=200}")
        check(name, any(s.labels.get("route") == "unmatched" and s.labels.get("status") == "404"
                        for s in samples), "the 404 is not counted")
        dur = fams.get("http_request_duration_seconds")
        check(name, dur is not None and dur.type == "histogram", "no duration histogram")
        for proc_metric in ("process_resident_memory_bytes", "process_cpu_seconds",
                            "process_open_fds"):
            check(name, proc_metric in fams, "no %s" % proc_metric)
        if shutil.which("promtool"):
            r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                               text=True)
            check(name, r.returncode == 0, "promtool: " + (r.stdout + r.stderr).strip()[:300])
        check(name, len(routes) > 0, "--routes printed nothing")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            check(name, proc.wait(timeout=15) == 0, "did not drain with exit 0")
        except subprocess.TimeoutExpired:
            proc.kill()
            check(name, False, "did not stop within 15 s of SIGTERM")
        shutil.rmtree(tmp, ignore_errors=True)

print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed or not passed else 0)
