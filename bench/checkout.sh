#!/usr/bin/env bash
# bench/checkout.sh - `make bench` part for the checkout saga (issue 6 point 6): orders/s through
# the whole saga of 16-order-service (price at 17, tax at 21 (cached), stock reservation at 18,
# payment at 15 (PAYMENT_PROVIDER=test), stock confirm at 18, two commits of its own), on SQLite
# with synchronous=FULL and then on PostgreSQL (scripts/pg.sh). 22-discount-service runs too but
# the orders carry no coupon. Goal: >= 1,000 orders/s on both. scripts/pg.sh runs PostgreSQL
# with fsync off (a test server), so its numbers have no disk flush in them; its CPU (server
# and backends) is counted as "pg".
#
# wrk (bench/lua/checkout.lua) POSTs /api/v1/orders with an Idempotency-Key of its own per
# request; each order has 1-2 of SEED variants seeded with 1,000,000 units each. Per engine and
# round it prints orders/s (wrk's 201s; the CONFIRMED ones counted in 16's database), p50/p99,
# the CPU microseconds per order of every service (utime+stime from /proc/PID/stat), and at the
# end their RSS.
#
# Baseline (same run, A B A B): the rate of single-row commits one thread makes on a
# synchronous=FULL WAL SQLite database in the same directory (bench/sqlite_commits.py), i.e.
# what this disk allows one writer that waits for its own fsync. ratio = orders/s / that rate:
# ratio >= 1 means an order costs less than one durable commit of a lone writer, which is only
# possible with group commit (16, 18 and 15 each commit more than once per order). The machine's
# noise moves both the same way.
# Also printed: cpu_bound_orders/s = cores x 1e6 / (CPU us per order summed over the services),
# the rate the box would give if the services had every core to themselves (wrk not counted):
# on a shared machine this moves much less than orders/s.
# Environment: BUILD (build), ENGINES ("sqlite pg"), ROUNDS (2), DURATION (10s), CONNS (64),
# SEED (100 variants), ORDER_HTTP_THREADS (HTTP_THREADS of 16, default 32: its handler holds a
# thread for the whole saga, so gr's default of 4 per core caps the orders in flight at 8),
# PEER_HTTP_THREADS (HTTP_THREADS of the others; default gr's), PG_VIA (socket: the services
# reach PostgreSQL on its Unix socket, as on one machine; tcp: over loopback TCP).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
SEED=${SEED:-100}
for bin in gr-jwt 15-payment-service 16-order-service 17-product-service 18-inventory-service \
    21-invoice-service 22-discount-service; do
    [ -x "$B/bin/$bin" ] || { echo "checkout.sh: $B/bin/$bin missing (make all)" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/gravity-bench-checkout.XXXXXX)
chmod 755 "$tmp"
declare -A pids=()
pg_dir=
stop_all() {
    local s
    for s in "${!pids[@]}"; do kill "${pids[$s]}" 2>/dev/null || true; done
    for s in "${!pids[@]}"; do wait "${pids[$s]}" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    stop_all
    [ -n "$pg_dir" ] && scripts/pg.sh stop "$pg_dir" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT

"$B/bin/gr-jwt" keygen --alg ES256 --kid bench --key "$tmp/k.pem" --jwks "$tmp/jwks.json" >/dev/null
sign() { "$B/bin/gr-jwt" sign --key "$tmp/k.pem" --alg ES256 --kid bench --ttl 7200 "$@"; }
ADMIN=$(sign --perms '*' --roles super_admin)
SVC=$(sign --sub order-service --roles service --perms \
    products:read,inventory:write,coupon-redemptions:write,coupons:read,payments:write,payments:read)
CUSTOMER=$(sign --sub "$(cat /proc/sys/kernel/random/uuid)" --roles customer --perms '')
hz=$(getconf CLK_TCK)
SVCS_ALL="17-product-service 18-inventory-service 21-invoice-service 22-discount-service 15-payment-service 16-order-service"

start() { # name engine extra-env...
    local name=$1 engine=$2 db
    shift 2
    mkdir -p "$tmp/$engine/$name"
    if [ "$engine" = pg ]; then
        db=$(scripts/pg.sh createdb "$pg_dir" "bench_${name:0:2}_$RANDOM$RANDOM")
        if [ "${PG_VIA:-socket}" = socket ]; then # the server's Unix socket, not loopback TCP
            db="postgres://postgres@/${db##*/}?host=$pg_dir/sock&port=$(cat "$pg_dir/port")"
        fi
    else
        db="sqlite://$tmp/$engine/$name/db.sqlite"
    fi
    last_db=$db
    env HOST=127.0.0.1 PORT=0 GR_PORT_FILE="$tmp/$engine/$name/port" DATA_DIR="$tmp/$engine/$name" \
        DATABASE_URL="$db" JWKS_URL="file://$tmp/jwks.json" LOG_LEVEL=warn CURSOR_SECRET=bench \
        EVENT_BUS=http EVENT_BUS_URL=http://127.0.0.1:9 "$@" \
        "$B/bin/$name" >"$tmp/$engine/$name/log" 2>&1 &
    pids[$name]=$!
    for _ in $(seq 150); do [ -s "$tmp/$engine/$name/port" ] && break; sleep 0.1; done
    [ -s "$tmp/$engine/$name/port" ] || { echo "$name did not start:" >&2; cat "$tmp/$engine/$name/log" >&2; exit 1; }
    until curl -sf "http://127.0.0.1:$(cat "$tmp/$engine/$name/port")/ready" >/dev/null; do sleep 0.1; done
}
url() { echo "http://127.0.0.1:$(cat "$tmp/$1/$2/port")"; }
cpu() { # pid, or "pg": the PostgreSQL server and its backends
    if [ "$1" = pg ]; then
        local pm
        pm=$(head -1 "$pg_dir/pgdata/postmaster.pid")
        # shellcheck disable=SC2046
        cat /proc/"$pm"/stat $(pgrep -P "$pm" | sed 's|.*|/proc/&/stat|') 2>/dev/null |
            awk '{n+=$14+$15} END{print n+0}'
    else
        awk '{print $14+$15}' "/proc/$1/stat"
    fi
}
ms() { # wrk latency (123.45us / 1.23ms / 1.02s) -> ms
    awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)}
        else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; printf "%.2f", v}'
}
confirmed() { # engine -> CONFIRMED orders in 16's database
    if [ "$1" = pg ]; then
        psql -X -q -A -t -d "$order_db" -c "SELECT count(*) FROM orders WHERE status = 'CONFIRMED'"
    else
        /usr/bin/python3 -c 'import sqlite3,sys; c=sqlite3.connect("file:"+sys.argv[1]+"?mode=ro", uri=True, timeout=30); print(c.execute("SELECT count(*) FROM orders WHERE status = ?", ("CONFIRMED",)).fetchone()[0])' \
            "${order_db#sqlite://}"
    fi
}

baseline() { # -> commits/s of one thread on a synchronous=FULL WAL database in $tmp
    /usr/bin/python3 bench/sqlite_commits.py "$tmp/baseline.sqlite" 3
}

summary=$tmp/summary
for engine in ${ENGINES:-sqlite pg}; do
    echo "== checkout bench on $engine"
    order_db=
    if [ "$engine" = pg ]; then
        pg_dir=$tmp/pg
        scripts/pg.sh start "$pg_dir" >/dev/null
    fi
    peer_env=()
    [ -n "${PEER_HTTP_THREADS:-}" ] && peer_env+=(HTTP_THREADS="$PEER_HTTP_THREADS")
    for s in 17-product-service 18-inventory-service 21-invoice-service 22-discount-service; do
        start "$s" "$engine" "${peer_env[@]+"${peer_env[@]}"}"
    done
    start 15-payment-service "$engine" PAYMENT_PROVIDER=test PAYMENT_WEBHOOK_SECRET=whsec_bench \
        "${peer_env[@]+"${peer_env[@]}"}"
    order_env=(SERVICE_TOKEN="$SVC" PRODUCT_URL="$(url "$engine" 17-product-service)"
        INVENTORY_URL="$(url "$engine" 18-inventory-service)" TAX_URL="$(url "$engine" 21-invoice-service)"
        DISCOUNT_URL="$(url "$engine" 22-discount-service)" PAYMENT_URL="$(url "$engine" 15-payment-service)")
    order_env+=(HTTP_THREADS="${ORDER_HTTP_THREADS:-32}")
    start 16-order-service "$engine" "${order_env[@]}"
    order_db=$last_db
    export BENCH_VARIANTS
    BENCH_VARIANTS=$(/usr/bin/python3 bench/checkout_seed.py "$(url "$engine" 17-product-service)" \
        "$(url "$engine" 18-inventory-service)" "$(url "$engine" 21-invoice-service)" "$ADMIN" "$SEED")
    export BENCH_TOKEN=$CUSTOMER
    base=$(url "$engine" 16-order-service)
    echo "seeded $SEED variants; 16 on $base (HTTP_THREADS=${ORDER_HTTP_THREADS:-32})"
    # warm-up: connections, the tax cache, SQLite's page cache
    BENCH_RUN="warm-$engine" wrk -t1 -c"$CONNS" -d2s -s bench/lua/checkout.lua "$base/api/v1/orders" >/dev/null
    rps_all=() ratio_all=() p50_all=() p99_all=() base_all=()
    SVCS=$SVCS_ALL
    if [ "$engine" = pg ]; then
        SVCS+=" pg"
        pids[pg]=pg
    fi
    declare -A cpu_sum=()
    n_orders=0
    for r in $(seq "$ROUNDS"); do
        b=$(baseline)
        declare -A c0=()
        for s in $SVCS; do c0[$s]=$(cpu "${pids[$s]}"); done
        k0=$(confirmed "$engine")
        out=$(BENCH_RUN="r$r-$engine-$RANDOM" wrk -t1 -c"$CONNS" -d"$DURATION" --latency \
            -s bench/lua/checkout.lua "$base/api/v1/orders" 2>&1 || true)
        k1=$(confirmed "$engine")
        rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
        reqs=$(awk '/requests in/{print $1}' <<<"$out")
        non2xx=$(awk '/Non-2xx/{print $5}' <<<"$out")
        serr=$(awk '/Socket errors/{print}' <<<"$out")
        p50=$(ms "$(awk '$1=="50%"{print $2}' <<<"$out")")
        p99=$(ms "$(awk '$1=="99%"{print $2}' <<<"$out")")
        ok=$((reqs - ${non2xx:-0}))
        conf=$((k1 - k0))
        cpus=""
        for s in $SVCS; do
            d=$(($(cpu "${pids[$s]}") - c0[$s]))
            cpu_sum[$s]=$((${cpu_sum[$s]:-0} + d))
            cpus+=" ${s:0:2}=$(awk -v d="$d" -v hz="$hz" -v n="$ok" 'BEGIN{printf "%.0f", (n>0 ? d/hz*1e6/n : 0)}')"
        done
        n_orders=$((n_orders + ok))
        ratio=$(awk -v a="$rps" -v b="$b" 'BEGIN{printf "%.2f", (b>0 ? a/b : 0)}')
        printf 'round %d %-6s orders/s=%s confirmed=%d/%d non2xx=%s p50=%sms p99=%sms baseline_commits/s=%s ratio=%s cpu_us_per_order:%s %s\n' \
            "$r" "$engine" "$rps" "$conf" "$ok" "${non2xx:-0}" "$p50" "$p99" "$b" "$ratio" "$cpus" "$serr"
        rps_all+=("$rps") ratio_all+=("$ratio") p50_all+=("$p50") p99_all+=("$p99") base_all+=("$b")
    done
    b=$(baseline)
    base_all+=("$b")
    med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
    cpus="" rss="" tot=0
    for s in $SVCS; do
        u=$(awk -v d="${cpu_sum[$s]}" -v hz="$hz" -v n="$n_orders" 'BEGIN{printf "%.0f", (n>0 ? d/hz*1e6/n : 0)}')
        tot=$((tot + u))
        cpus+=" ${s:0:2}=$u"
        [ "$s" = pg ] || rss+=" ${s:0:2}=$(awk '/VmRSS/{print $2}' "/proc/${pids[$s]}/status")"
    done
    printf 'checkout %-6s orders/s=%s p50=%sms p99=%sms ratio=%s (vs %s sqlite FULL commits/s, one writer) cpu_us_per_order:%s total=%s cpu_bound_orders/s=%s rss_kb:%s\n' \
        "$engine" "$(med "${rps_all[@]}")" "$(med "${p50_all[@]}")" "$(med "${p99_all[@]}")" \
        "$(med "${ratio_all[@]}")" "$(med "${base_all[@]}")" "$cpus" "$tot" \
        "$(awk -v t="$tot" -v n="$(nproc)" 'BEGIN{printf "%.0f", (t>0 ? n*1e6/t : 0)}')" "$rss" | tee -a "$summary"
    unset 'pids[pg]'
    for s in $SVCS_ALL; do
        if grep -q '"level":"error"\|AddressSanitizer\|runtime error' "$tmp/$engine/$s/log"; then
            echo "$s logged errors:" >&2
            grep -m5 '"level":"error"\|AddressSanitizer\|runtime error' "$tmp/$engine/$s/log" >&2
        fi
    done
    stop_all
    if [ "$engine" = pg ]; then
        scripts/pg.sh stop "$pg_dir" >/dev/null 2>&1
        pg_dir=
    fi
done
echo
echo "== checkout summary (goal: >= 1000 orders/s on sqlite (synchronous=FULL) and pg;" \
    "ratio = orders/s per one-writer durable SQLite commit/s, same run)"
cat "$summary"
