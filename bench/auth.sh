#!/usr/bin/env bash
# bench/auth.sh - `make bench` part for 05-auth-service (issue 4):
#   1. logins/s with 200 concurrent clients (Argon2id m=19 MiB, t=2, at most AUTH_MAX_HASHING
#      at once) and the service's peak RSS: the cap keeps memory flat however many clients;
#   2. GET /api/v1/auth/me and POST /api/v1/auth/validate-token against nginx static
#      (../shared/bench/vs-nginx), with the ratio, p99 and CPU per request.
# The login limits (decision 19) are raised for the run: every request comes from 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
VS=${VS_NGINX:-../shared/bench/vs-nginx}
USERS=${BENCH_USERS:-50}
tmp=$(mktemp -d /tmp/gravity-bench-auth.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

PORT=0 GR_PORT_FILE="$tmp/port" DATA_DIR="$tmp/data" LOG_LEVEL=warn \
    EVENT_BUS_URL=http://127.0.0.1:1 AUTH_LOGIN_LIMIT_PER_USER=1000000 \
    AUTH_LOGIN_LIMIT_PER_IP=1000000 "$B/bin/05-auth-service" >"$tmp/svc.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
base="http://127.0.0.1:$(cat "$tmp/port")"
until curl -sf "$base/ready" >/dev/null; do sleep 0.1; done
echo "auth-service pid $pid on $base (SQLite)"
for i in $(seq 0 $((USERS - 1))); do
    curl -sf -o /dev/null -H 'Content-Type: application/json' -X POST "$base/api/v1/auth/register" \
        -d "{\"email\":\"bench-$i@example.com\",\"password\":\"bench-password\"}"
done
echo "registered $USERS users"
rss0=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

c0=$(cpu)
out=$(BENCH_USERS=$USERS wrk -t2 -c200 -d"${DURATION:-10s}" --latency -s bench/lua/auth_login.lua \
    "$base/api/v1/auth/login")
c1=$(cpu)
rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
non2xx=$(awk '/Non-2xx/{print $5}' <<<"$out")
p99=$(awk '$1=="99%"{print $2}' <<<"$out")
hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
printf 'login      200 clients: %s logins/s p99=%s non2xx=%s cpu_ms_per_login=%.1f rss_before_kb=%s peak_rss_kb=%s\n' \
    "$rps" "$p99" "${non2xx:-0}" "$(awk -v c=$((c1 - c0)) -v hz="$hz" -v r="$rps" -v d="${DURATION:-10s}" \
        'BEGIN{sub(/s$/,"",d); print (r>0 ? c/hz*1000/(r*d) : 0)}')" "$rss0" "$hwm" | tee "$tmp/summary"

TOKEN=$(curl -sf -H 'Content-Type: application/json' -X POST "$base/api/v1/auth/login" \
    -d '{"email":"bench-0@example.com","password":"bench-password"}' |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
export BENCH_TOKEN=$TOKEN
reqs() { curl -s "$base/metrics" | awk -v r="$1" '$1 ~ "^http_requests_total" && index($1, "route=\"" r "\"") {n+=$2} END{print n+0}'; }
bench() { # name url lua route
    local c0 r0 c1 r1 out
    c0=$(cpu); r0=$(reqs "$4")
    out=$("$VS" static "$2" "$3" | tee /dev/stderr | tail -1)
    c1=$(cpu); r1=$(reqs "$4")
    awk -v n="$1" -v o="$out" -v c=$((c1 - c0)) -v r=$((r1 - r0)) -v hz="$hz" \
        'BEGIN{printf "%-10s %s cpu_us_per_req=%.1f\n", n, o, (r>0 ? c/hz*1e6/r : 0)}' | tee -a "$tmp/summary"
}
bench me "$base/api/v1/auth/me" bench/lua/auth_me.lua "/api/v1/auth/me"
bench validate "$base/api/v1/auth/validate-token" bench/lua/auth_validate.lua "/api/v1/auth/validate-token"
echo
echo "== auth summary (targets: me and validate-token >= 0.4 x nginx static; no OOM at 200 logins)"
cat "$tmp/summary"
echo "rss_kb=$(awk '/VmRSS/{print $2}' "/proc/$pid/status") peak_rss_kb=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")"
