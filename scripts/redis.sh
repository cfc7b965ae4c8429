#!/usr/bin/env bash
# redis.sh - a throwaway redis-server for tests (no persistence).
#
#   scripts/redis.sh start DIR    start redis-server on a free 127.0.0.1 port (daemonized, pid in
#                                 DIR/redis.pid, log in DIR/redis.log); waits until it answers
#                                 PING and prints redis://127.0.0.1:PORT (also in DIR/url)
#   scripts/redis.sh restart DIR  stop it (if running) and start it again on the same port, empty
#                                 (outage tests: stop, then restart)
#   scripts/redis.sh stop DIR     stop exactly the server started in DIR (DIR/port stays, for
#                                 restart)
set -euo pipefail

REDIS_SERVER=${REDIS_SERVER:-redis-server}

die() {
    echo "redis.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: redis.sh start DIR | restart DIR | stop DIR"
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

answers() { # port
    /usr/bin/python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5)
s.settimeout(0.5)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
PY
}

wait_gone() { # pid
    for _ in $(seq 1 200); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
}

# Starts the server on @port; returns 1 if it does not come up.
launch() { # dir port
    local dir=$1 port=$2
    rm -f "$dir/redis.pid"
    "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' --appendonly no \
        </dev/null >>"$dir/redis.out" 2>&1 || return 1
    for _ in $(seq 1 200); do
        if [ -s "$dir/redis.pid" ] && answers "$port"; then
            return 0
        fi
        sleep 0.05
    done
    kill_server "$dir"
    return 1
}

kill_server() { # dir
    local dir=$1 pid
    [ -f "$dir/redis.pid" ] || return 0
    pid=$(cat "$dir/redis.pid")
    # Only the pid this script started, and only while it still is a redis-server.
    if [[ "$pid" =~ ^[0-9]+$ ]] && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid"
    fi
    rm -f "$dir/redis.pid"
}

start() {
    local dir=$1 port tries
    command -v "$REDIS_SERVER" >/dev/null || die "redis-server not found (apt-get install redis-server)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ -f "$dir/redis.pid" ] && die "'$dir/redis.pid' exists (stop the old server first)"
    : >"$dir/redis.log"
    for tries in 1 2 3 4 5; do
        port=$(free_port)
        if launch "$dir" "$port"; then
            echo "$port" >"$dir/port"
            echo "redis://127.0.0.1:$port" >"$dir/url"
            cat "$dir/url"
            return 0
        fi
        echo "redis.sh: start on port $port failed (attempt $tries), see $dir/redis.log" >&2
    done
    die "could not start redis-server"
}

restart() {
    local dir=$1 port
    [ -d "$dir" ] || die "no directory '$dir'"
    dir=$(cd "$dir" && pwd)
    [ -f "$dir/port" ] || die "no server in '$dir' (run redis.sh start first)"
    port=$(cat "$dir/port")
    kill_server "$dir"
    launch "$dir" "$port" || die "restart on port $port failed, see $dir/redis.log"
    cat "$dir/url"
}

stop() {
    local dir=$1
    [ -d "$dir" ] || die "no directory '$dir'"
    dir=$(cd "$dir" && pwd)
    kill_server "$dir"
}

[ $# -eq 2 ] || usage
case "$1" in
start) start "$2" ;;
restart) restart "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
