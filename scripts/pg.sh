#!/usr/bin/env bash
# pg.sh - a throwaway PostgreSQL for tests (Debian postgresql 15, no systemd).
#
#   scripts/pg.sh start DIR          initdb in DIR/pgdata, start on a free 127.0.0.1 port, print
#                                    postgres://postgres@127.0.0.1:PORT/postgres (also in DIR/url)
#   scripts/pg.sh createdb DIR NAME  create database NAME, print its URL
#   scripts/pg.sh stop DIR           stop (fast) and remove DIR/pgdata
#
# Trust authentication, on 127.0.0.1 and a socket directory inside DIR only; fsync off. The
# server refuses to run as root, so as root the server commands run as the postgres user.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

die() {
    echo "pg.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: pg.sh start DIR | createdb DIR NAME | stop DIR"
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_of() {
    [ -f "$1/port" ] || die "no server in '$1' (run pg.sh start first)"
    cat "$1/port"
}

start() {
    local dir=$1 port tries
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    case "$dir" in *"'"* | *" "*) die "DIR must not contain quotes or spaces: '$dir'" ;; esac
    [ -e "$dir/pgdata" ] && die "'$dir/pgdata' exists (stop the old server first)"
    [ -x "$PGBIN/initdb" ] || die "PostgreSQL binaries not found in $PGBIN (apt-get install postgresql)"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        as_pg test -w "$dir" || die "user postgres cannot reach '$dir' (a parent directory is not searchable)"
    fi
    mkdir -p "$dir/sock"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/sock"
    as_pg "$PGBIN/initdb" -D "$dir/pgdata" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    cat >"$dir/pgdata/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pgdata/pg_hba.conf"
    for tries in 1 2 3 4 5; do
        port=$(free_port)
        cat >"$dir/pgdata/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        [ "$(id -u)" = 0 ] && chown postgres: "$dir/pgdata/postgresql.auto.conf"
        if as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -l "$dir/pg.log" -w -t 60 start >/dev/null; then
            echo "$port" >"$dir/port"
            echo "postgres://postgres@127.0.0.1:$port/postgres" >"$dir/url"
            cat "$dir/url"
            return 0
        fi
        echo "pg.sh: start on port $port failed (attempt $tries), see $dir/pg.log" >&2
    done
    die "could not start PostgreSQL"
}

createdb() {
    local dir=$1 name=$2 port
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad database name '$name'"
    port=$(port_of "$dir")
    "$PGBIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name" || die "createdb '$name' failed"
    echo "postgres://postgres@127.0.0.1:$port/$name"
}

stop() {
    local dir=$1
    [ -d "$dir" ] || die "no directory '$dir'"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/pgdata/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -m fast -w -t 60 stop >/dev/null ||
            echo "pg.sh: pg_ctl stop failed" >&2
    fi
    rm -rf "$dir/pgdata" "$dir/sock" "$dir/url" "$dir/port" "$dir/initdb.log"
}

[ $# -ge 2 ] || usage
case "$1" in
start) [ $# -eq 2 ] || usage; start "$2" ;;
createdb) [ $# -eq 3 ] || usage; createdb "$2" "$3" ;;
stop) [ $# -eq 2 ] || usage; stop "$2" ;;
*) usage ;;
esac
