#!/usr/bin/env bash
# test.sh - the whole suite, as `make test` and CI run it: a normal build, then the same
# suite built with ASan+UBSan (clang, -fno-sanitize-recover) and with TSan (the services are
# threaded, STYLE R29). Stops at the first red stage.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc 2>/dev/null || echo 2)
start=$(date +%s)
# Each pass runs its steps SUITE_JOBS at a time (scripts/run-suite.sh; default 3, 1 = serially).
export SUITE_JOBS=${SUITE_JOBS:-3}

echo "== build (gcc)"
make --no-print-directory -j"$jobs" all
CHECKOUT_CHAOS_ENGINES=sqlite scripts/run-suite.sh build

echo "== build (clang, ASan+UBSan)"
make --no-print-directory -j"$jobs" SAN=asan all
CHECKOUT_CHAOS_ENGINES=pg scripts/run-suite.sh build/asan

echo "== build (clang, TSan)"
make --no-print-directory -j"$jobs" SAN=tsan all
HTTP_ENGINES=sqlite CHECKOUT_CHAOS_ENGINES= scripts/run-suite.sh build/tsan

echo "== make test: all green in $(( $(date +%s) - start ))s"
