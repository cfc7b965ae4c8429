#!/usr/bin/env bash
# bench/gateway.sh - `make bench`: the gateway hop (03-api-gateway) against nginx proxying to the
# same upstream, same run (../shared/bench/vs-nginx proxy). The upstream is 17-product-service
# (SQLite, 1,000 seeded products, GET by random id); through the gateway every request carries a
# bearer token that the edge verifies (public route: a sent token is verified) and passes the
# per-IP token bucket (GATEWAY_RATE_IP, set high enough never to refuse). nginx proxies with a
# keep-alive pool and no auth. Prints the ratio, and the gateway's CPU microseconds per request.
# Environment: ROUNDS, DURATION, CONNS (vs-nginx), SEED (1000), GATEWAY_THREADS (cores).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
VS=${VS_NGINX:-../shared/bench/vs-nginx}
SEED=${SEED:-1000}
tmp=$(mktemp -d /tmp/gravity-bench-gw.XXXXXX)
up_pid=
gw_pid=
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
    [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_port() { # file
    for _ in $(seq 150); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "gateway bench: no port in $1" >&2
    return 1
}

"$B/bin/gr-jwt" keygen --alg ES256 --kid bench --key "$tmp/k.pem" --jwks "$tmp/jwks.json" >/dev/null
TOKEN=$("$B/bin/gr-jwt" sign --key "$tmp/k.pem" --alg ES256 --kid bench --perms '*' --roles super_admin --ttl 7200)

# Events stay in the outbox (no bus here): the bench reads only.
EVENT_BUS_URL=http://127.0.0.1:9 SERVICE_TOKEN=$TOKEN PORT=0 GR_PORT_FILE="$tmp/up_port" \
    DATA_DIR="$tmp/up" JWKS_URL="file://$tmp/jwks.json" LOG_LEVEL=warn \
    "$B/bin/17-product-service" >"$tmp/up.log" 2>&1 &
up_pid=$!
wait_port "$tmp/up_port"
up_port=$(cat "$tmp/up_port")
until curl -sf "http://127.0.0.1:$up_port/ready" >/dev/null; do sleep 0.1; done
/usr/bin/python3 bench/seed_products.py "http://127.0.0.1:$up_port" "$TOKEN" "$SEED" "$tmp/get_by_id.lua"

GATEWAY_UPSTREAMS="product-service=127.0.0.1:$up_port" GATEWAY_RATE_IP=10000000:10000000 \
    PORT=0 GR_PORT_FILE="$tmp/gw_port" DATA_DIR="$tmp/gw" JWKS_URL="file://$tmp/jwks.json" \
    LOG_LEVEL=warn "$B/bin/03-api-gateway" >"$tmp/gw.log" 2>&1 &
gw_pid=$!
wait_port "$tmp/gw_port"
gw="http://127.0.0.1:$(cat "$tmp/gw_port")"
until curl -sf "$gw/ready" >/dev/null; do sleep 0.1; done
echo "product-service on :$up_port, gateway on $gw (GATEWAY_THREADS=${GATEWAY_THREADS:-cores})"

hz=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
reqs() { curl -s "$gw/metrics" | awk '$1 ~ /^http_requests_total/ && index($1, "route=\"/api/v1/products\"") {n+=$2} END{print n+0}'; }
c0=$(cpu "$gw_pid"); u0=$(cpu "$up_pid"); r0=$(reqs)
out=$("$VS" proxy "127.0.0.1:$up_port" /api/v1/products/x "$gw" "$tmp/get_by_id.lua" \
    -- "Authorization: Bearer $TOKEN" | tee /dev/stderr | tail -1)
c1=$(cpu "$gw_pid"); u1=$(cpu "$up_pid"); r1=$(reqs)
echo
echo "== summary (target: >= 0.75 x nginx proxy req/s)"
awk -v o="$out" -v c=$((c1 - c0)) -v u=$((u1 - u0)) -v r=$((r1 - r0)) -v hz="$hz" 'BEGIN{
    printf "gateway    %s gateway_cpu_us_per_req=%.1f upstream_cpu_us_per_req(both runs)=%.1f requests=%d\n",
        o, (r>0 ? c/hz*1e6/r : 0), (r>0 ? u/hz*1e6/r/2 : 0), r }'
echo "gateway rss_kb=$(awk '/VmRSS/{print $2}' "/proc/$gw_pid/status") peak_rss_kb=$(awk '/VmHWM/{print $2}' "/proc/$gw_pid/status")"

# The hop's added latency at low load (the goal: p50 added <= 0.5 ms): one connection, wrk
# --latency, direct to 17 and through the gateway, A B A B; the median p50 of each.
lat_p50() { # url -> p50 in ms
    wrk -t1 -c1 -d"${LAT_DURATION:-4s}" --latency -s "$tmp/get_by_id.lua" \
        -H "Authorization: Bearer $TOKEN" "$1" 2>/dev/null |
        awk '$1=="50%"{v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}'
}
d=() g=()
for _ in 1 2; do
    d+=("$(lat_p50 "http://127.0.0.1:$up_port/api/v1/products/x")")
    g+=("$(lat_p50 "$gw/api/v1/products/x")")
done
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
awk -v d="$(med "${d[@]}")" -v g="$(med "${g[@]}")" 'BEGIN{
    printf "latency (1 connection): direct_p50=%.3fms gateway_p50=%.3fms p50_added=%.3fms (target <= 0.5 ms)\n", d, g, g - d }'
