#!/usr/bin/python3
"""A poison event is parked as a dead letter after max_deliver; the consumer goes on; a replay
of the whole subscription (gr_bus_replay) applies nothing twice.

  test-poison.py BUILD_DIR --backend http|nats [--pg-url URL]

Starts the broker (14-event-bus-service or nats-server) and gr-bus-probe as producer and
consumer (tests/bus/chaos.py's Stack). The consumer's handler fails on every delivery of one
event (PROBE_POISON_K) and max_deliver is 3. The producer emits 100 events, then 100 more once
the poison one is parked. Checks: all 199 healthy events are applied exactly once; the poison
one is never applied; the consumer asked for exactly 3 redeliveries of it (inbox_failed_total),
so it was given up after max_deliver; on 14 it is listed under the subscription's dead letters
and an eventbus.dead_lettered event was published. Then the consumer replays from seq 0: every
event comes again, the inbox turns the 199 applied ones into no-ops (still applied once) and
the poison one is tried max_deliver times more. Waits are conditions with deadlines.
"""
import argparse
import os
import shutil
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402  (Stack, http, wait_for)

MAX_DELIVER = 3


def metric(url, name):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--backend", choices=("http", "nats"), required=True)
    ap.add_argument("--pg-url")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gr-poison-")
    # The producer's first event has k = 1: poison the 40th.
    poison = 40
    stack = chaos.Stack(args.build, args.backend, tmp, args.pg_url, ack_wait_s=2,
                        consumer_env={"PROBE_POISON_K": str(poison),
                                      "PROBE_MAX_DELIVER": str(MAX_DELIVER)})
    try:
        stack.start()
        st, body = stack.emit(100, 10)
        if st != 200 or body.get("first_k") != 1:
            raise chaos.Fail("emit: %s %s" % (st, body))
        failed_url = stack.consumer.url("/metrics")
        chaos.wait_for("the poison event given up after %d attempts" % MAX_DELIVER,
                       lambda: metric(failed_url, "inbox_failed_total") >= MAX_DELIVER,
                       deadline=60)
        chaos.wait_for("the 99 healthy events applied",
                       lambda: (stack.consumer_stats() or {}).get("applied") == 99, deadline=60)
        st, body = stack.emit(100, 10)
        if st != 200:
            raise chaos.Fail("second emit: %s" % st)
        chaos.wait_for("the next 100 events applied",
                       lambda: (stack.consumer_stats() or {}).get("applied") == 199, deadline=60)
        s = stack.consumer_stats()
        if s.get("twice") or s.get("max_n") != 1:
            raise chaos.Fail("an event was applied twice: %s" % s)
        failed = metric(failed_url, "inbox_failed_total")
        if failed != MAX_DELIVER:
            raise chaos.Fail("poison event attempted %g times, want %d" % (failed, MAX_DELIVER))
        if args.backend == "http":
            bus = stack.broker
            st, subs = chaos.http("GET", bus.url("/api/v1/event-subscriptions"),
                                  token=stack.token)
            sid = [x["id"] for x in subs["data"] if x["name"] == "probe-consumer"][0]
            st, dl = chaos.http("GET", bus.url("/api/v1/event-subscriptions/%s/dead-letters"
                                               % sid), token=stack.token)
            ks = [d["event"]["data"]["k"] for d in dl["data"]]
            if st != 200 or ks != [poison]:
                raise chaos.Fail("dead letters: %s %s" % (st, ks))
            st, ev = chaos.http("GET", bus.url("/api/v1/events?type=eventbus.dead_lettered"),
                                token=stack.token)
            if st != 200 or len(ev["data"]) != 1:
                raise chaos.Fail("eventbus.dead_lettered events: %s %s" % (st, ev))
        consumed = metric(failed_url, "inbox_applied_total")
        st, body = chaos.http("POST", stack.consumer.url("/replay"), {"after_seq": 0})
        if st != 202:
            raise chaos.Fail("replay: %s %s" % (st, body))
        chaos.wait_for("the replay consumed (199 redeliveries acked as no-ops)",
                       lambda: metric(failed_url, "inbox_applied_total") >= consumed + 199,
                       deadline=60)
        chaos.wait_for("the poison event given up again after the replay",
                       lambda: metric(failed_url, "inbox_failed_total") >= 2 * MAX_DELIVER,
                       deadline=60)
        s = stack.consumer_stats()
        if s.get("applied") != 199 or s.get("twice") or s.get("max_n") != 1:
            raise chaos.Fail("after the replay: %s" % s)
        print("ok: poison event dead-lettered after %d attempts on %s; 199 others applied once,"
              " also after a replay" % (MAX_DELIVER, args.backend))
        return 0
    except chaos.Fail as e:
        print("FAIL: %s" % e)
        print(stack.logs())
        return 1
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
