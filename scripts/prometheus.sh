#!/usr/bin/env bash
# prometheus.sh - a throwaway Prometheus for tests (Debian prometheus 2.42).
#
#   scripts/prometheus.sh start DIR SD_URL  start `prometheus` on a free 127.0.0.1 port with a
#                                           config in DIR/prometheus.yml whose one job discovers
#                                           its targets with http_sd_configs at SD_URL (refresh
#                                           1 s), TSDB in DIR/tsdb, pid in DIR/prometheus.pid,
#                                           log in DIR/prometheus.log; waits until /-/ready
#                                           answers and prints http://127.0.0.1:PORT (also in
#                                           DIR/url)
#   scripts/prometheus.sh stop DIR          stop exactly the server started in DIR, remove DIR/tsdb
set -euo pipefail

PROMETHEUS=${PROMETHEUS:-prometheus}

die() {
    echo "prometheus.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: prometheus.sh start DIR SD_URL | stop DIR"
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ready() { # port
    /usr/bin/python3 -c 'import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/-/ready" % sys.argv[1], timeout=0.5).read()' "$1" 2>/dev/null
}

wait_gone() { # pid
    local _
    for _ in $(seq 1 200); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
}

# Starts the server on @port; returns 1 if it exits or is not ready within 30 s.
launch() { # dir port
    local dir=$1 port=$2 pid
    "$PROMETHEUS" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
        --web.listen-address="127.0.0.1:$port" --log.level=warn </dev/null >>"$dir/prometheus.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/prometheus.pid"
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/prometheus.pid"; return 1; }
        ready "$port" && return 0
        sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
    wait_gone "$pid"
    rm -f "$dir/prometheus.pid"
    return 1
}

start() {
    local dir=$1 sd_url=$2 port tries
    command -v "$PROMETHEUS" >/dev/null || die "prometheus not found (apt-get install prometheus)"
    [[ "$sd_url" =~ ^https?://[^[:space:]\"]+$ ]] || die "SD_URL must be an http(s) URL"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ -f "$dir/prometheus.pid" ] && die "'$dir/prometheus.pid' exists (stop the old server first)"
    cat >"$dir/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: registry
    http_sd_configs:
      - url: "$sd_url"
        refresh_interval: 1s
YML
    : >"$dir/prometheus.log"
    for tries in 1 2 3 4 5; do
        port=$(free_port)
        if launch "$dir" "$port"; then
            echo "$port" >"$dir/port"
            echo "http://127.0.0.1:$port" >"$dir/url"
            cat "$dir/url"
            return 0
        fi
        echo "prometheus.sh: start on port $port failed (attempt $tries), see $dir/prometheus.log" >&2
    done
    die "could not start prometheus (see $dir/prometheus.log)"
}

stop() {
    local dir=$1 pid
    [ -d "$dir" ] || return 0
    if [ -f "$dir/prometheus.pid" ]; then
        pid=$(cat "$dir/prometheus.pid")
        # Only the pid this script started, and only while it still is a prometheus.
        if [[ "$pid" =~ ^[0-9]+$ ]] && grep -q prometheus "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait_gone "$pid"
        fi
        rm -f "$dir/prometheus.pid"
    fi
    rm -rf "$dir/tsdb"
}

case "${1:-}" in
start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
stop) [ $# -eq 2 ] || usage; stop "$2" ;;
*) usage ;;
esac
