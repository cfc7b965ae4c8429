#!/usr/bin/env bash
# run-checkout-chaos.sh - the checkout kill -9 chaos on SQLite, then on PostgreSQL (make chaos).
#
#   tests/chaos/run-checkout-chaos.sh BUILD_DIR KILLS ORDERS [PG_URL]
#
# Without PG_URL a throwaway PostgreSQL is started with scripts/pg.sh and stopped at the end.
# Exit status: the first failing run's.
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: run-checkout-chaos.sh BUILD_DIR KILLS ORDERS [PG_URL]" >&2; exit 2; }
build=$1
kills=$2
orders=$3
pg_url=${4:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
py=/usr/bin/python3
tmp=
cleanup() {
    if [ -n "$tmp" ]; then
        "$root/scripts/pg.sh" stop "$tmp/pg" >/dev/null 2>&1 || true
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

"$py" "$root/tests/chaos/checkout-chaos.py" "$build" --kills "$kills" --orders "$orders"
if [ -z "$pg_url" ]; then
    tmp=$(mktemp -d /tmp/checkout-chaos-pg.XXXXXX)
    chmod 755 "$tmp" # the server runs as postgres when we are root
    pg_url=$("$root/scripts/pg.sh" start "$tmp/pg")
fi
"$py" "$root/tests/chaos/checkout-chaos.py" "$build" --kills "$kills" --orders "$orders" \
    --pg-url "$pg_url"
