#!/usr/bin/env bash
# run-unit.sh BUILD_DIR - only the gr unit tests (SQLite; PostgreSQL too when GR_TEST_PG_URL is set).
set -euo pipefail
B=${1:-build}
rc=0
for t in "$B"/tests/test_* "$B"/tests/*/test_*; do
    [ -x "$t" ] || continue
    echo "-- $(basename "$t")"
    "$t" || rc=1
done
exit $rc
