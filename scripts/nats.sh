#!/usr/bin/env bash
# nats.sh - a throwaway NATS server with JetStream for tests (Debian nats-server 2.9).
#
#   scripts/nats.sh start DIR    start `nats-server -js` on a free 127.0.0.1 port, storing in
#                                DIR/js, pid in DIR/nats.pid, log in DIR/nats.log; waits until
#                                it accepts connections and prints nats://127.0.0.1:PORT (also
#                                in DIR/url)
#   scripts/nats.sh restart DIR  stop the server and start it again on the same port and store
#                                (for reconnect tests)
#   scripts/nats.sh stop DIR     stop exactly the server started in DIR and remove DIR/js
set -euo pipefail

NATS_SERVER=${NATS_SERVER:-nats-server}

die() {
    echo "nats.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: nats.sh start DIR | restart DIR | stop DIR"
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

accepts() { # port
    /usr/bin/python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' \
        "$1" 2>/dev/null
}

wait_gone() { # pid
    local i
    for i in $(seq 1 200); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
}

# Starts the server on @port; returns 1 if it exits before accepting connections.
launch() { # dir port
    local dir=$1 port=$2 pid i
    "$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -sd "$dir/js" </dev/null >>"$dir/nats.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/nats.pid"
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/nats.pid"; return 1; }
        # Ready when this process logged that it is up (after JetStream) and the port accepts.
        if grep -q "^\[$pid\].*Server is ready" "$dir/nats.log" && accepts "$port"; then
            return 0
        fi
        sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
    wait_gone "$pid"
    rm -f "$dir/nats.pid"
    return 1
}

kill_server() { # dir
    local dir=$1 pid
    [ -f "$dir/nats.pid" ] || return 0
    pid=$(cat "$dir/nats.pid")
    # Only the pid this script started, and only while it still is a nats-server.
    if [[ "$pid" =~ ^[0-9]+$ ]] && grep -q nats-server "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid"
    fi
    rm -f "$dir/nats.pid"
}

start() {
    local dir=$1 port tries
    command -v "$NATS_SERVER" >/dev/null || die "nats-server not found (apt-get install nats-server)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ -f "$dir/nats.pid" ] && die "'$dir/nats.pid' exists (stop the old server first)"
    : >"$dir/nats.log"
    for tries in 1 2 3 4 5; do
        port=$(free_port)
        if launch "$dir" "$port"; then
            echo "$port" >"$dir/port"
            echo "nats://127.0.0.1:$port" >"$dir/url"
            cat "$dir/url"
            return 0
        fi
        echo "nats.sh: start on port $port failed (attempt $tries), see $dir/nats.log" >&2
    done
    die "could not start nats-server"
}

restart() {
    local dir=$1 port
    [ -d "$dir" ] || die "no directory '$dir'"
    dir=$(cd "$dir" && pwd)
    [ -f "$dir/port" ] || die "no server in '$dir' (run nats.sh start first)"
    port=$(cat "$dir/port")
    kill_server "$dir"
    launch "$dir" "$port" || die "restart on port $port failed, see $dir/nats.log"
    cat "$dir/url"
}

stop() {
    local dir=$1
    [ -d "$dir" ] || die "no directory '$dir'"
    dir=$(cd "$dir" && pwd)
    kill_server "$dir"
    rm -rf "$dir/js" "$dir/url" "$dir/port"
}

[ $# -eq 2 ] || usage
case "$1" in
start) start "$2" ;;
restart) restart "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
