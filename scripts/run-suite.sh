#!/usr/bin/env bash
# run-suite.sh BUILD_DIR - runs every test against one build: gr unit tests (SQLite, and
# PostgreSQL through GR_TEST_PG_URL), the gravity supervisor test, and every service's
# black-box HTTP cases on SQLite and on a real PostgreSQL, and the bus tests against 14 and a
# real nats-server; PostgreSQL and nats-server are started and stopped by this script.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:?usage: run-suite.sh BUILD_DIR}
B=$(cd "$B" && pwd)
PY=/usr/bin/python3

tmp=$(mktemp -d /tmp/gravity-test.XXXXXX)
chmod 755 "$tmp"
cleanup() {
    scripts/pg.sh stop "$tmp/pg" >/dev/null 2>&1 || true
    scripts/nats.sh stop "$tmp/nats" >/dev/null 2>&1 || true
    scripts/redis.sh stop "$tmp/redis" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

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
export GR_TEST_NATS_DIR=$tmp/nats # lets test_bus_conformance restart it (outage test)
export GR_TEST_BUS_BIN="$B/bin/14-event-bus-service" # test_bus_conformance starts 14 itself
export GR_TEST_JWT_TOOL="$B/bin/gr-jwt"
echo "-- starting redis-server"
redis_url=$(scripts/redis.sh start "$tmp/redis")
# Not REDIS_URL: every service the runners start would share one Redis and its counters.
export GR_TEST_REDIS_URL=$redis_url

failed=()
run() { # name, command...
    local name=$1; shift
    local t0=$SECONDS
    echo "-- $name"
    if "$@"; then echo "ok: $name ($((SECONDS - t0)) s)"; else echo "FAILED: $name"; failed+=("$name"); fi
}

for t in "$B"/tests/test_* "$B"/tests/*/test_*; do
    [ -x "$t" ] || continue
    run "unit $(basename "$t")" "$t"
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
    run "02-service-discovery parked blocking queries: load, cap, drain (sqlite)" "$PY" services/02-service-discovery/tests/test-blocking.py "$B"
    run "02-service-discovery parked blocking queries: load, cap, drain, replicas (pg)" "$PY" services/02-service-discovery/tests/test-blocking.py "$B" "$pg_url"
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
    run "06-user-service default-address race (sqlite)" "$PY" services/06-user-service/tests/test-default-race.py "$B"
    run "06-user-service default-address race (pg)" "$PY" services/06-user-service/tests/test-default-race.py "$B" "$pg_url"
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
        run "18-inventory-service reservation race, ledger, expiry ($engine)" "$PY" \
            services/18-inventory-service/tests/test-race.py "$B" ${url:+"$url"}
    fi
    if [ -x "$B/bin/22-discount-service" ]; then
        run "22-discount-service reservation race ($engine)" "$PY" \
            services/22-discount-service/tests/test-race.py "$B" ${url:+"$url"}
    fi
    if [ -x "$B/bin/15-payment-service" ]; then
        run "15-payment-service against the Stripe double ($engine)" "$PY" \
            services/15-payment-service/tests/test-stripe.py "$B" ${url:+"$url"}
    fi
    if [ -x "$B/bin/16-order-service" ]; then
        run "16-order-service checkout saga against 15, 17, 18, 21, 22 ($engine)" "$PY" \
            services/16-order-service/tests/test-saga.py "$B" ${url:+"$url"}
        run "16-order-service events through 14 ($engine)" "$PY" \
            services/16-order-service/tests/test-events.py "$B" ${url:+"$url"}
        # The short chaos variant (make chaos runs 200 kills). CHECKOUT_CHAOS_ENGINES (default
        # both): scripts/test.sh runs it on SQLite in the gcc pass, on PostgreSQL in the ASan pass.
        if [[ " ${CHECKOUT_CHAOS_ENGINES-sqlite pg} " == *" $engine "* ]]; then
            run "checkout saga kill -9 chaos: 10 kills during 40 checkouts ($engine)" "$PY" \
                tests/chaos/checkout-chaos.py "$B" --kills 10 --orders 40 ${url:+--pg-url "$url"}
        fi
    fi
    if [ -x "$B/bin/16-order-service" ] && [ -x "$B/bin/19-cart-service" ]; then
        run "checkout end to end through the gateway: register, cart, coupon, CONFIRMED, cancel, refund, events ($engine)" \
            "$PY" tests/e2e/test-checkout.py "$B" ${url:+--pg-url "$url"}
    fi
    if [ -x "$B/bin/19-cart-service" ]; then
        run "19-cart-service end to end with 17, 22 and a 16 double ($engine)" "$PY" \
            services/19-cart-service/tests/test-cart.py "$B" ${url:+"$url"}
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
    for t in jwt-attacks interop login-defences; do
        run "05-auth-service security: $t" "$PY" \
            services/05-auth-service/tests/security/test-$t.py "$B/bin/05-auth-service"
    done
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
        run "bus chaos $be (sqlite)" "$PY" tests/bus/chaos.py "$B" --backend "$be" --events 5000 --kills 4
        run "bus chaos $be (pg)" "$PY" tests/bus/chaos.py "$B" --backend "$be" --events 5000 --kills 4 --pg-url "$pg_url"
        run "bus poison event $be (sqlite)" "$PY" tests/bus/test-poison.py "$B" --backend "$be"
        run "bus poison event $be (pg)" "$PY" tests/bus/test-poison.py "$B" --backend "$be" --pg-url "$pg_url"
    done
fi

if [ -x "$B/bin/04-config-service" ]; then
    run "04-config-service CAS race, long-poll, secrets (sqlite)" "$PY" services/04-config-service/tests/test-config.py "$B"
    run "04-config-service CAS race, long-poll, secrets (pg)" "$PY" services/04-config-service/tests/test-config.py "$B" "$pg_url"
    run "04-config-service hot reload into 17 (LOG_LEVEL)" "$PY" services/04-config-service/tests/test-hot-reload.py "$B"
    run "04-config-service parked long-polls: load, cap, drain, health (sqlite)" "$PY" services/04-config-service/tests/test-watch.py "$B"
    run "04-config-service parked long-polls: load, cap, drain, health, replicas (pg)" "$PY" services/04-config-service/tests/test-watch.py "$B" "$pg_url"
fi

if [ -x "$B/bin/03-api-gateway" ]; then
    run "03-api-gateway registry watch (sqlite)" "$PY" services/03-api-gateway/tests/test-registry-watch.py "$B"
    run "03-api-gateway registry watch (pg)" "$PY" services/03-api-gateway/tests/test-registry-watch.py "$B" --pg-url "$pg_url"
    run "03-api-gateway registry watch (python double)" "$PY" services/03-api-gateway/tests/test-registry-watch.py "$B" --fake
    run "03-api-gateway data plane" "$PY" services/03-api-gateway/tests/test-front.py "$B"
    run "03-api-gateway under 1,000 slow clients (slowhttptest)" "$PY" services/03-api-gateway/tests/test-slowloris.py "$B"
    run "03-api-gateway rate limits: per IP, user, route, login; shared on Redis" "$PY" \
        services/03-api-gateway/tests/test-rate.py "$B" --redis-url "$redis_url"
    if [ -x "$B/bin/02-service-discovery" ] && [ -x "$B/bin/17-product-service" ]; then
        run "03-api-gateway production mode: 02 + 03 + 2x17 on PostgreSQL, Redis, NATS; kill -9 under load" \
            "$PY" services/03-api-gateway/tests/test-prod-mode.py "$B" --pg-url "$pg_url"
    fi
    run "03-api-gateway /docs: Swagger UI and the merged OpenAPI document" "$PY" services/03-api-gateway/tests/test-docs.py "$B"
    run "03-api-gateway events, API keys (sqlite)" "$PY" services/03-api-gateway/tests/test-events.py "$B"
    run "03-api-gateway events, replicas, API keys (pg)" "$PY" services/03-api-gateway/tests/test-events.py "$B" --pg-url "$pg_url"
    run "03-api-gateway events on NATS (pg)" "$PY" services/03-api-gateway/tests/test-events.py "$B" --pg-url "$pg_url" --nats-url "$nats_url"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED in $B: ${failed[*]}"
    exit 1
fi
echo "all suites passed in $B"
