#!/usr/bin/env bash
# bench/run.sh - `make bench`: 17-product-service against nginx on this machine, same run.
# Seeds 10,000 products (SQLite in a temp dir), then GET by random id, list (limit 20) and POST
# create through ../shared/bench/vs-nginx, and prints the ratios, RSS and CPU per request.
# As in `make run`, the product service publishes its events through 14-event-bus-service
# (started here too, on its own SQLite), so a create includes its outbox row and the relay.
# Environment: ROUNDS, DURATION, CONNS (passed to vs-nginx), SEED (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
VS=${VS_NGINX:-../shared/bench/vs-nginx}
SEED=${SEED:-10000}
tmp=$(mktemp -d /tmp/gravity-bench.XXXXXX)
pid=
bus_pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "$bus_pid" ] && kill "$bus_pid" 2>/dev/null && wait "$bus_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

"$B/bin/gr-jwt" keygen --alg ES256 --kid bench --key "$tmp/k.pem" --jwks "$tmp/jwks.json" >/dev/null
TOKEN=$("$B/bin/gr-jwt" sign --key "$tmp/k.pem" --alg ES256 --kid bench --perms '*' --roles super_admin --ttl 7200)
export BENCH_TOKEN=$TOKEN

PORT=0 GR_PORT_FILE="$tmp/bus_port" DATA_DIR="$tmp/bus" JWKS_URL="file://$tmp/jwks.json" \
    LOG_LEVEL=warn "$B/bin/14-event-bus-service" >"$tmp/bus.log" 2>&1 &
bus_pid=$!
for _ in $(seq 100); do [ -s "$tmp/bus_port" ] && break; sleep 0.1; done
bus="http://127.0.0.1:$(cat "$tmp/bus_port")"
until curl -sf "$bus/ready" >/dev/null; do sleep 0.1; done

EVENT_BUS=http EVENT_BUS_URL=$bus SERVICE_TOKEN=$TOKEN \
PORT=0 GR_PORT_FILE="$tmp/port" DATA_DIR="$tmp/data" JWKS_URL="file://$tmp/jwks.json" \
    LOG_LEVEL=${BENCH_LOG_LEVEL:-warn} CURSOR_SECRET=bench "$B/bin/17-product-service" >"$tmp/svc.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
port=$(cat "$tmp/port")
base="http://127.0.0.1:$port"
until curl -sf "$base/ready" >/dev/null; do sleep 0.1; done
echo "product-service pid $pid on $base (SQLite, LOG_LEVEL=${BENCH_LOG_LEVEL:-warn})"

/usr/bin/python3 bench/seed_products.py "$base" "$TOKEN" "$SEED" "$tmp/get_by_id.lua"

cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
reqs() { curl -s "$base/metrics" | awk -v r="$1" '$1 ~ "^http_requests_total" && index($1, "route=\"" r "\"") && index($1, "status=\"" s) {n+=$2} END{print n+0}' s="$2"; }
hz=$(getconf CLK_TCK)
bench() { # name url lua route status
    local c0 r0 c1 r1 out
    c0=$(cpu); r0=$(reqs "$4" "$5")
    out=$("$VS" static "$2" ${3:+"$3"} | tee /dev/stderr | tail -1)
    c1=$(cpu); r1=$(reqs "$4" "$5")
    awk -v n="$1" -v o="$out" -v c=$((c1 - c0)) -v r=$((r1 - r0)) -v hz="$hz" \
        'BEGIN{printf "%-10s %s cpu_us_per_req=%.1f\n", n, o, (r>0 ? c/hz*1e6/r : 0)}' | tee -a "$tmp/summary"
}
bench get-by-id "$base/api/v1/products/x" "$tmp/get_by_id.lua" "/api/v1/products/{id}" 200
bench list "$base/api/v1/products?limit=20" "" "/api/v1/products" 200
bench post "$base/api/v1/products" "bench/lua/post_product.lua" "/api/v1/products" 201
rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
echo
echo "== summary (targets: get-by-id >= 0.5, list >= 0.3, post >= 0.15 x nginx static)"
cat "$tmp/summary"
echo "rss_kb=$rss peak_rss_kb=$hwm"
pend=$(curl -s "$base/metrics" | awk '$1 == "outbox_pending" {print $2}')
pubd=$(curl -s "$base/metrics" | awk '$1 == "outbox_published_total" {print $2}')
echo "events: published=${pubd:-0} still_in_outbox=${pend:-?} (relay to 14-event-bus-service)"
