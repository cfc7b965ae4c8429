#!/usr/bin/env bash
# run-suite.sh BUILD_DIR - runs every test against one build: gr unit tests (SQLite, and
# PostgreSQL through GR_TEST_PG_URL), the gravity supervisor test, and every service's
# black-box HTTP cases on SQLite and on a real PostgreSQL, and the bus tests against 14 and a
# real nats-server; PostgreSQL and nats-server are started and stopped by this script.
#
# Steps run SUITE_JOBS at a time (default 3; SUITE_JOBS=1: one after another, output streamed,
# as before). Each concurrent step's stdout+stderr goes to its own file, printed whole when the
# step ends, followed by its `ok: NAME (N s)` or `FAILED: NAME` line. Adding a step:
#   run NAME CMD...          may share the machine with other steps (the usual case)
#   run_in GROUP NAME CMD... may run with other steps, but never with another step of GROUP
#                            (e.g. `nats`: steps that use the shared nats-server's JetStream)
#   run_alone NAME CMD...    runs with nothing else (asserts latencies or throughput, kills and
#                            restarts shared servers, or loads the machine on purpose)
# Arguments are expanded when the line runs (as with any command); the step itself starts later.
# A concurrent step must not share state with other steps: its own PostgreSQL database (a unique
# name), free ports (PORT=0), its own Redis keys and NATS event types, its own temporary files.
# Concurrent steps run in declaration order; run_alone steps run after them, in declaration order.
# SUITE_TRACE=FILE appends "start end status name" per step (bash $SECONDS) for timing studies.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:?usage: run-suite.sh BUILD_DIR}
B=$(cd "$B" && pwd)
PY=/usr/bin/python3

tmp=$(mktemp -d /tmp/gravity-test.XXXXXX)
declare -A r_idx=() r_t0=() # the running concurrent steps: pid -> index, start (run_all)
chmod 755 "$tmp"
cleanup() {
    local pid
    # a concurrent step is a session of its own (setsid): stop it with what it started
    for pid in "${!r_idx[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${!r_idx[@]}"; do wait "$pid" 2>/dev/null || true; done
    scripts/pg.sh stop "$tmp/pg" >/dev/null 2>&1 || true
    scripts/nats.sh stop "$tmp/nats" >/dev/null 2>&1 || true
    scripts/nats.sh stop "$tmp/nats-conf" >/dev/null 2>&1 || true
    scripts/redis.sh stop "$tmp/redis" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
# Concurrent steps run in sessions of their own (no terminal ^C reaches them): on INT or TERM,
# exit, and cleanup stops them.
trap 'exit 130' INT
trap 'exit 143' TERM

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp:print_suppressions=0}

echo "-- starting PostgreSQL"
pg_url=$(scripts/pg.sh start "$tmp/pg")
export GR_TEST_PG_URL=$pg_url
echo "-- starting nats-server"
nats_url=$(scripts/nats.sh start "$tmp/nats")
export GR_TEST_NATS_URL=$nats_url
# test_bus_conformance gets a nats-server of its own: it stops and restarts it (outage test) and
# leaves ~50,000 events in its GRAVITY stream, which a service's new durable consumer on the shared
# server would first wade through (03's revocation test then missed its 10 s).
conf_nats_url=$(scripts/nats.sh start "$tmp/nats-conf")
export GR_TEST_BUS_BIN="$B/bin/14-event-bus-service" # test_bus_conformance starts 14 itself
export GR_TEST_JWT_TOOL="$B/bin/gr-jwt"
echo "-- starting redis-server"
redis_url=$(scripts/redis.sh start "$tmp/redis")
# Not REDIS_URL: every service the runners start would share one Redis and its counters.
export GR_TEST_REDIS_URL=$redis_url

failed=()
JOBS=${SUITE_JOBS:-3}
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "run-suite.sh: SUITE_JOBS must be a positive integer" >&2; exit 2; }
q_name=() q_mode=() q_cmd=() # the steps, in declaration order; mode: "" | "alone" | "group:G"
enqueue() { # mode, name, command...
    local mode=$1 name=$2; shift 2
    [ $# -gt 0 ] || { echo "run-suite.sh: step '$name' has no command" >&2; exit 2; }
    q_mode+=("$mode") q_name+=("$name") q_cmd+=("$(printf '%q ' "$@")")
}
run() { enqueue "" "$@"; }                         # name, command...
run_in() { local g=$1; shift; enqueue "group:$g" "$@"; } # group, name, command...
run_alone() { enqueue alone "$@"; }               # name, command...

serial_step() { # index: in the foreground, output streamed (SUITE_JOBS=1, and run_alone steps)
    local i=$1 t0=$SECONDS rc=0
    echo "-- ${q_name[$i]}"
    (eval "exec ${q_cmd[$i]}") </dev/null || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "ok: ${q_name[$i]} ($((SECONDS - t0)) s)"
    else
        echo "FAILED: ${q_name[$i]}"
        failed+=("${q_name[$i]}")
    fi
    [ -z "${SUITE_TRACE:-}" ] || echo "$t0 $SECONDS $rc ${q_name[$i]}" >>"$SUITE_TRACE"
}

run_all() {
    local i pid rc mode busy alone=() pending=() next=()
    if [ "$JOBS" -eq 1 ]; then
        for i in "${!q_name[@]}"; do serial_step "$i"; done
        return 0
    fi
    mkdir -p "$tmp/steps"
    for i in "${!q_name[@]}"; do
        if [ "${q_mode[$i]}" = alone ]; then alone+=("$i"); else pending+=("$i"); fi
    done
    while [ ${#pending[@]} -gt 0 ] || [ ${#r_idx[@]} -gt 0 ]; do
        # start the first pending steps that may start (a group runs one step at a time)
        next=()
        for i in "${pending[@]}"; do
            busy=
            if [ ${#r_idx[@]} -ge "$JOBS" ]; then
                busy=1
            elif [[ "${q_mode[$i]}" == group:* ]]; then
                for pid in "${!r_idx[@]}"; do
                    [ "${q_mode[${r_idx[$pid]}]}" = "${q_mode[$i]}" ] && busy=1
                done
            fi
            if [ -n "$busy" ]; then next+=("$i"); continue; fi
            (eval "exec setsid ${q_cmd[$i]}") >"$tmp/steps/$i.out" 2>&1 </dev/null &
            r_idx[$!]=$i r_t0[$!]=$SECONDS
        done
        pending=("${next[@]}")
        [ ${#r_idx[@]} -gt 0 ] || continue
        rc=0
        wait -n -p pid "${!r_idx[@]}" || rc=$?
        i=${r_idx[$pid]}
        echo "-- ${q_name[$i]}"
        cat "$tmp/steps/$i.out"
        if [ "$rc" -eq 0 ]; then
            echo "ok: ${q_name[$i]} ($((SECONDS - r_t0[$pid])) s)"
        else
            echo "FAILED: ${q_name[$i]}"
            failed+=("${q_name[$i]}")
        fi
        [ -z "${SUITE_TRACE:-}" ] ||
            echo "${r_t0[$pid]} $SECONDS $rc ${q_name[$i]}" >>"$SUITE_TRACE" # start, end, status
        unset "r_idx[$pid]" "r_t0[$pid]"
    done
    for i in "${alone[@]}"; do serial_step "$i"; done
}

for t in "$B"/tests/test_* "$B"/tests/*/test_*; do
    [ -x "$t" ] || continue
    case $(basename "$t") in
    test_bus_conformance)
        run "unit $(basename "$t")" env GR_TEST_NATS_URL="$conf_nats_url" \
            GR_TEST_NATS_DIR="$tmp/nats-conf" "$t" ;;
    # assert durations with little slack (a 2x band around a password hash's time, a timeout
    # answered within 400 ms of its 150 ms, timers firing within 50 ms): alone
    test_password | test_client | test_wait) run_alone "unit $(basename "$t")" "$t" ;;
    *) run "unit $(basename "$t")" "$t" ;;
    esac
done

run "start-up configuration errors" tests/startup/test-config.sh "$B"
run "openapi documents every route" "$PY" tests/startup/test-openapi.py "$B"
run "metrics are valid Prometheus text" "$PY" tests/startup/test-metrics.py "$B"
run "deploy: static checks (Dockerfile, compose, k8s)" "$PY" tests/deploy/test-deploy.py "$B"
run "deploy: generated env on PostgreSQL, Redis, NATS" "$PY" tests/deploy/test-env.py "$B"

if [ -x tests/gravity/test-up.sh ]; then
    run "gravity up" tests/gravity/test-up.sh "$B"
fi

# HTTP_ENGINES (default both): the TSan pass of scripts/test.sh runs the declarative cases on
# SQLite only — they drive the same handlers on both engines, and the threaded PostgreSQL paths
# stay under TSan through the gr unit tests and the multi-process tests below.
for dir in services/*/tests/http; do
    [ -d "$dir" ] || continue
    svc=$(basename "$(dirname "$(dirname "$dir")")")
    for engine in ${HTTP_ENGINES:-sqlite pg}; do
        run "$svc http ($engine)" "$PY" lib/gr/tests/http/runner.py --bin "$B/bin/$svc" \
            --jwt-tool "$B/bin/gr-jwt" --engine "$engine" --pg-url "$pg_url" -j 2 "$dir"
    done
done

if [ -x "$B/bin/02-service-discovery" ]; then
    run "02-service-discovery registry (sqlite)" "$PY" services/02-service-discovery/tests/test-registry.py "$B"
    run "02-service-discovery registry (pg)" "$PY" services/02-service-discovery/tests/test-registry.py "$B" "$pg_url"
    # p99 of /health < 100 ms and wake-ups within 100 ms: alone
    run_alone "02-service-discovery parked blocking queries: load, cap, drain (sqlite)" "$PY" services/02-service-discovery/tests/test-blocking.py "$B"
    run_alone "02-service-discovery parked blocking queries: load, cap, drain, replicas (pg)" "$PY" services/02-service-discovery/tests/test-blocking.py "$B" "$pg_url"
fi

if [ -x "$B/bin/02-service-discovery" ] && [ -x "$B/bin/19-cart-service" ]; then
    run "gr client: discovery end to end (02, 17, 19)" "$PY" lib/gr/tests/client/test-discovery.py "$B"
fi

if [ -x "$B/bin/14-event-bus-service" ]; then
    for engine in sqlite pg; do
        url=; [ "$engine" = pg ] && url=$pg_url
        run "14-event-bus-service push ($engine)" "$PY" \
            services/14-event-bus-service/tests/push/run_push_test.py --bin "$B/bin/14-event-bus-service" \
            --jwt-tool "$B/bin/gr-jwt" --engine "$engine" ${url:+--pg-url "$url"}
    done
    run "bus: outbox -> 14 -> inbox (sqlite)" "$PY" tests/bus/test-outbox.py "$B"
    run "bus: outbox -> 14 -> inbox (pg)" "$PY" tests/bus/test-outbox.py "$B" "$pg_url"
    run "06-user-service events (sqlite)" "$PY" services/06-user-service/tests/test-events.py "$B"
    run "06-user-service events (pg)" "$PY" services/06-user-service/tests/test-events.py "$B" "$pg_url"
    # the race tests: N concurrent writers must all succeed (bounded GR_EBUSY retries): alone
    run_alone "06-user-service default-address race (sqlite)" "$PY" services/06-user-service/tests/test-default-race.py "$B"
    run_alone "06-user-service default-address race (pg)" "$PY" services/06-user-service/tests/test-default-race.py "$B" "$pg_url"
    for engine in sqlite pg; do
        url=; [ "$engine" = pg ] && url=$pg_url
        run "18-inventory-service events ($engine)" "$PY" services/18-inventory-service/tests/test-events.py "$B" ${url:+"$url"}
        run "22-discount-service events ($engine)" "$PY" services/22-discount-service/tests/test-events.py "$B" ${url:+"$url"}
    done
fi

# The commerce services (issue 6): races and invariants on both engines.
for engine in sqlite pg; do
    url=; [ "$engine" = pg ] && url=$pg_url
    if [ -x "$B/bin/18-inventory-service" ]; then
        run_alone "18-inventory-service reservation race, ledger, expiry ($engine)" "$PY" \
            services/18-inventory-service/tests/test-race.py "$B" ${url:+"$url"}
    fi
    if [ -x "$B/bin/22-discount-service" ]; then
        run_alone "22-discount-service reservation race ($engine)" "$PY" \
            services/22-discount-service/tests/test-race.py "$B" ${url:+"$url"}
    fi
    if [ -x "$B/bin/15-payment-service" ]; then
        run "15-payment-service against the Stripe double ($engine)" "$PY" \
            services/15-payment-service/tests/test-stripe.py "$B" ${url:+"$url"}
        run "15-payment-service kill -9 during provider calls, reconciliation ($engine)" "$PY" \
            services/15-payment-service/tests/test-reconcile.py "$B" ${url:+"$url"}
    fi
    if [ -x "$B/bin/16-order-service" ]; then
        run "16-order-service checkout saga against 15, 17, 18, 21, 22 ($engine)" "$PY" \
            services/16-order-service/tests/test-saga.py "$B" ${url:+"$url"}
        run "16-order-service events through 14 ($engine)" "$PY" \
            services/16-order-service/tests/test-events.py "$B" ${url:+"$url"}
        # The short chaos variant (make chaos runs 200 kills). CHECKOUT_CHAOS_ENGINES (default
        # both): scripts/test.sh runs it on SQLite in the gcc pass, on PostgreSQL in the ASan pass.
        if [[ " ${CHECKOUT_CHAOS_ENGINES-sqlite pg} " == *" $engine "* ]]; then
            run_alone "checkout saga kill -9 chaos: 10 kills during 40 checkouts ($engine)" "$PY" \
                tests/chaos/checkout-chaos.py "$B" --kills 10 --orders 40 ${url:+--pg-url "$url"}
        fi
    fi
    if [ -x "$B/bin/16-order-service" ] && [ -x "$B/bin/19-cart-service" ]; then
        run "checkout end to end through the gateway: register, cart, coupon, CONFIRMED, cancel, refund, events ($engine)" \
            "$PY" tests/e2e/test-checkout.py "$B" ${url:+--pg-url "$url"}
    fi
    if [ -x "$B/bin/19-cart-service" ]; then
        # 50 concurrent adds to one cart must all be 201: alone
        run_alone "19-cart-service end to end with 17, 22 and a 16 double ($engine)" "$PY" \
            services/19-cart-service/tests/test-cart.py "$B" ${url:+"$url"}
        run "19-cart-service events through 14 with 17 ($engine)" "$PY" \
            services/19-cart-service/tests/test-events.py "$B" ${url:+"$url"}
    fi
done

if [ -x "$B/bin/05-auth-service" ]; then
    run "05-auth-service reset and verification links (sqlite)" "$PY" \
        services/05-auth-service/tests/test-links.py "$B/bin/05-auth-service"
    run "05-auth-service reset and verification links (pg)" "$PY" \
        services/05-auth-service/tests/test-links.py "$B/bin/05-auth-service" \
        --pg-url "$(scripts/pg.sh createdb "$tmp/pg" auth_links)"
    run "auth's JWKS verified by product-service, across a key rotation" "$PY" \
        tests/e2e/test-auth-jwks.py "$B"
    for t in jwt-attacks interop; do
        run "05-auth-service security: $t" "$PY" \
            services/05-auth-service/tests/security/test-$t.py "$B/bin/05-auth-service"
    done
    # compares the medians of login times (unknown user, wrong password, locked account): alone
    run_alone "05-auth-service security: login-defences" "$PY" \
        services/05-auth-service/tests/security/test-login-defences.py "$B/bin/05-auth-service"
    run "05-auth-service login limits on Redis" "$PY" \
        services/05-auth-service/tests/security/test-redis-limits.py "$B/bin/05-auth-service" "$redis_url"
    for engine in sqlite pg; do
        url=; [ "$engine" = pg ] && url=$pg_url
        run "05-auth-service oauth ($engine)" "$PY" services/05-auth-service/tests/oauth/test-oauth.py \
            "$B/bin/05-auth-service" ${url:+--pg-url "$url"}
    done
fi

if [ -x "$B/bin/gr-bus-probe" ]; then
    for engine in sqlite pg; do
        run "gr [IK!] routes on gr-bus-probe ($engine)" env PROBE_MODE=producer "$PY" \
            lib/gr/tests/http/runner.py --bin "$B/bin/gr-bus-probe" --jwt-tool "$B/bin/gr-jwt" \
            --engine "$engine" --pg-url "$pg_url" lib/gr/tests/http/probe
    done
    # kill -9 chaos, short: 5000 events, 4 kills of the relay, the consumer or the broker.
    for be in http nats; do
        run_alone "bus chaos $be (sqlite)" "$PY" tests/bus/chaos.py "$B" --backend "$be" --events 5000 --kills 4
        run_alone "bus chaos $be (pg)" "$PY" tests/bus/chaos.py "$B" --backend "$be" --events 5000 --kills 4 --pg-url "$pg_url"
        run "bus poison event $be (sqlite)" "$PY" tests/bus/test-poison.py "$B" --backend "$be"
        run "bus poison event $be (pg)" "$PY" tests/bus/test-poison.py "$B" --backend "$be" --pg-url "$pg_url"
    done
fi

if [ -x "$B/bin/04-config-service" ]; then
    # long-poll wake-ups within 100 ms, /health p99 < 100 ms with parked long-polls: alone
    run_alone "04-config-service CAS race, long-poll, secrets (sqlite)" "$PY" services/04-config-service/tests/test-config.py "$B"
    run_alone "04-config-service CAS race, long-poll, secrets (pg)" "$PY" services/04-config-service/tests/test-config.py "$B" "$pg_url"
    run "04-config-service hot reload into 17 (LOG_LEVEL)" "$PY" services/04-config-service/tests/test-hot-reload.py "$B"
    run_alone "04-config-service parked long-polls: load, cap, drain, health (sqlite)" "$PY" services/04-config-service/tests/test-watch.py "$B"
    run_alone "04-config-service parked long-polls: load, cap, drain, health, replicas (pg)" "$PY" services/04-config-service/tests/test-watch.py "$B" "$pg_url"
fi

if [ -x "$B/bin/03-api-gateway" ]; then
    run "03-api-gateway registry watch (sqlite)" "$PY" services/03-api-gateway/tests/test-registry-watch.py "$B"
    run "03-api-gateway registry watch (pg)" "$PY" services/03-api-gateway/tests/test-registry-watch.py "$B" --pg-url "$pg_url"
    run "03-api-gateway registry watch (python double)" "$PY" services/03-api-gateway/tests/test-registry-watch.py "$B" --fake
    # asserts an upstream timeout is answered within 1.8 s: alone
    run_alone "03-api-gateway data plane" "$PY" services/03-api-gateway/tests/test-front.py "$B"
    run_alone "03-api-gateway under 1,000 slow clients (slowhttptest)" "$PY" services/03-api-gateway/tests/test-slowloris.py "$B"
    run "03-api-gateway rate limits: per IP, user, route, login; shared on Redis" "$PY" \
        services/03-api-gateway/tests/test-rate.py "$B" --redis-url "$redis_url"
    if [ -x "$B/bin/02-service-discovery" ] && [ -x "$B/bin/17-product-service" ]; then
        # a request rate under load, kill -9, and the shared nats-server: alone
        run_alone "03-api-gateway production mode: 02 + 03 + 2x17 on PostgreSQL, Redis, NATS; kill -9 under load" \
            "$PY" services/03-api-gateway/tests/test-prod-mode.py "$B" --pg-url "$pg_url"
    fi
    run "03-api-gateway /docs: Swagger UI and the merged OpenAPI document" "$PY" services/03-api-gateway/tests/test-docs.py "$B"
    run "03-api-gateway events, API keys (sqlite)" "$PY" services/03-api-gateway/tests/test-events.py "$B"
    run "03-api-gateway events, replicas, API keys (pg)" "$PY" services/03-api-gateway/tests/test-events.py "$B" --pg-url "$pg_url"
    run_in nats "03-api-gateway events on NATS (pg)" "$PY" services/03-api-gateway/tests/test-events.py "$B" --pg-url "$pg_url" --nats-url "$nats_url"
fi

run_all

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED in $B: ${failed[*]}"
    exit 1
fi
echo "all suites passed in $B"
