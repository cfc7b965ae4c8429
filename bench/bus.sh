#!/usr/bin/env bash
# bench/bus.sh - gr bus throughput and latency, per backend (http = 14-event-bus-service, nats =
# NATS JetStream): gr-bus-probe producer -> broker -> gr-bus-probe consumer on SQLite, all on
# this machine (bench/bus_bench.py does one backend: a saturation run, then a latency run at a
# fixed rate). Goals: p99 < 20 ms on http (at the fixed rate), >= 50,000 events/s end to end
# through NATS. Prints one summary line per backend at the end.
# Environment: BUILD (build), BACKENDS ("http nats"), DURATION (10 s of saturation),
# RATE (1000 events/s for the latency run), LAT_DURATION (10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
for bin in gr-bus-probe gr-jwt 14-event-bus-service; do
    [ -x "$B/bin/$bin" ] || { echo "bus.sh: $B/bin/$bin missing (make all)" >&2; exit 1; }
done
summary=$(mktemp /tmp/gravity-busbench.XXXXXX)
out=$(mktemp /tmp/gravity-busbench.XXXXXX)
trap 'rm -f "$summary" "$out"' EXIT
for be in ${BACKENDS:-http nats}; do
    echo "== bus bench: $be"
    /usr/bin/python3 bench/bus_bench.py "$B" --backend "$be" --duration "${DURATION:-10}" \
        --rate "${RATE:-1000}" --lat-duration "${LAT_DURATION:-10}" | tee "$out"
    tail -1 "$out" >>"$summary"
done
echo
echo "== summary (goals: http lat_p99_ms < 20 at ${RATE:-1000} ev/s; nats e2e_eps >= 50000)"
cat "$summary"
