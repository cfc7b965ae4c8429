#!/bin/bash
# fake-service.sh - a stand-in service binary for the gravity tests. Install it (symlink or
# copy) as NN-some-name in a bin directory; it then behaves like a Gravity service:
#   NN-some-name --describe   prints {"name":"some-name","id":"NN-some-name","version":"0.1.0",
#                             "port":80NN}
#   NN-some-name              serves GET /ready and GET /health on 127.0.0.1:$PORT, prints its
#                             PORT and DATA_DIR at start, logs requests to stderr and exits 0
#                             on SIGTERM.
# A name containing "crashy" makes it exit with status 3 about 0.1 s after it started; one
# containing "stubborn" ignores SIGTERM.
id=$(basename "$0")
num=$((10#${id:0:2}))
name=${id:3}
if [ "${1:-}" = "--describe" ]; then
    printf '{"name":"%s","id":"%s","version":"0.1.0","port":%d}\n' "$name" "$id" $((8000 + num))
    exit 0
fi
exec /usr/bin/python3 -u -c '
import http.server, json, os, signal, sys, threading

name, port = sys.argv[1], int(os.environ["PORT"])

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ready":
            code, body = 200, {"ready": True}
        elif self.path == "/health":
            code, body = 200, {"status": "healthy", "service": name, "version": "0.1.0"}
        else:
            code, body = 404, {"title": "Not found"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

def stop(signum, frame):
    print("fake-service %s: got SIGTERM, draining" % name, flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if "stubborn" in name else stop)
srv = http.server.HTTPServer(("127.0.0.1", port), H)
print("fake-service %s listening on port %d data_dir=%s" % (name, port, os.environ.get("DATA_DIR")), flush=True)
if "crashy" in name:
    threading.Timer(0.1, lambda: os._exit(3)).start()
srv.serve_forever(poll_interval=0.2)
' "$name"
