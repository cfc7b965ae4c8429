#!/usr/bin/python3
"""One backend of bench/bus.sh: gr-bus-probe producer -> broker -> gr-bus-probe consumer, SQLite.

  bus_bench.py BUILD --backend http|nats [--duration S] [--rate R] [--lat-duration S]

1. Saturation: 2 threads POST /emit {"n": 1000, "per_tx": 100} in a loop, held back only when
   more than 20,000 events wait between producer and consumer (else the backlog just grows);
   after a 2 s ramp, a --duration window measures the end-to-end rate (events applied per
   second at the consumer) and the steady rate of each
   stage during the window (emit = producer counter, publish = outbox_published_total, apply =
   inbox_applied_total), the backlog left in the outbox and between broker and consumer at the
   end of the window, CPU per process, the broker's time per route (http: 14's
   http_request_duration_seconds), and emit->apply latency p50/p99 (queueing).
2. Latency: a fresh stack, --rate events/s as one-event transactions (POST /emit {"n": 10,
   "per_tx": 1} every 10 ms at 1000/s) for --lat-duration seconds; p50/p99/max of
   t_apply - t_emit over those events.
Prints one summary line `bus backend=… e2e_eps=… lat_p50_ms=… lat_p99_ms=…` last.
"""

import argparse
import os
import sys
import tempfile
import shutil
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests", "bus"))
import chaos  # noqa: E402  (Stack, http, wait_for)

HZ = os.sysconf("SC_CLK_TCK")


def metric(url, name):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def pids(stack):
    out = {"producer": stack.producer.proc.pid, "consumer": stack.consumer.proc.pid}
    if stack.backend == "http":
        out["broker"] = stack.broker.proc.pid
    else:
        out["broker"] = stack.broker.pid()
    return out


def sample(stack):
    p, c = stack.producer.url(""), stack.consumer.url("")
    ps = stack.producer_stats() or {"emitted": 0, "outbox": 0}
    return {"t": time.monotonic(), "emitted": ps["emitted"], "outbox": ps["outbox"],
            "published": metric(p, "outbox_published_total"),
            "applied": metric(c, "inbox_applied_total"),
            "cpu": {k: cpu_s(v) for k, v in pids(stack).items() if v}}


def route_stats(url):
    """{route: (count, seconds)} from http_request_duration_seconds of a gr service."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if not line.startswith("http_request_duration_seconds") or 'route="' not in line:
            continue
        route = line.split('route="', 1)[1].split('"', 1)[0]
        v = out.setdefault(route, [0.0, 0.0, 0.0, 0.0])  # count, sum, <=10ms, <=25ms
        val = float(line.rsplit(" ", 1)[1])
        if line.startswith("http_request_duration_seconds_count{"):
            v[0] += val
        elif line.startswith("http_request_duration_seconds_sum{"):
            v[1] += val
        elif 'le="0.01"' in line:
            v[2] += val
        elif 'le="0.025"' in line:
            v[3] += val
    return out


def route_delta(r0, r1):
    """{route: (calls, mean_ms, busy_s, calls_over_10ms, calls_over_25ms)} between samples."""
    out = {}
    for route, v1 in r1.items():
        v0 = r0.get(route, [0.0, 0.0, 0.0, 0.0])
        d = [a - b for a, b in zip(v1, v0)]
        if d[0] > 0 and "/api/v1/" in route:
            out[route] = (int(d[0]), d[1] * 1000.0 / d[0], d[1], int(d[0] - d[2]),
                          int(d[0] - d[3]))
    return out


def saturate(stack, duration, threads=2, n=1000, per_tx=100, max_backlog=20000, ramp=2.0):
    """Emits as fast as the producer takes it, but never more than max_backlog events ahead of
    the consumer (else the backlog only grows and the drain dominates): the window then
    measures the rate the whole pipeline sustains."""
    stop = threading.Event()
    errors = []
    state = {"emitted": 0, "applied": 0}
    cv = threading.Condition()
    curl = stack.consumer.url("")

    def monitor():
        while not stop.is_set():
            a = metric(curl, "inbox_applied_total")
            with cv:
                state["applied"] = a
                cv.notify_all()
            time.sleep(0.05)

    def loop():
        while not stop.is_set():
            with cv:
                while (state["emitted"] - state["applied"] > max_backlog and
                       not stop.is_set()):
                    cv.wait(0.1)
            st, body = stack.emit(n, per_tx)
            if st != 200:
                errors.append(st)
                time.sleep(0.1)
                continue
            with cv:
                state["emitted"] = max(state["emitted"], body["last_k"])
    base = sample(stack)
    state["emitted"] = base["emitted"]
    state["applied"] = base["applied"]
    ths = [threading.Thread(target=f, daemon=True) for f in [monitor] + [loop] * threads]
    for t in ths:
        t.start()
    time.sleep(ramp)  # ramp-up, then the measurement window itself
    s0 = sample(stack)
    r0 = route_stats(stack.broker.url("")) if stack.backend == "http" else {}
    time.sleep(duration)
    s1 = sample(stack)
    r1 = route_stats(stack.broker.url("")) if stack.backend == "http" else {}
    stop.set()
    for t in ths:
        t.join(120)
    ps = stack.producer_stats()
    total = ps["emitted"]
    cs = chaos.wait_for("consumer to apply all %d" % total,
                        lambda: (lambda s: s if s and s["applied"] >= total else None)(
                            stack.consumer_stats(timeout=60)),
                        deadline=300, every=0.05)
    t_done = time.monotonic()
    s2 = sample(stack)
    win = s1["t"] - s0["t"]
    broker = route_delta(r0, r1)
    return {
        "emitted": total - base["emitted"],
        "e2e_eps": (s1["applied"] - s0["applied"]) / win,
        "emit_eps": (s1["emitted"] - s0["emitted"]) / win,
        "publish_eps": (s1["published"] - s0["published"]) / win,
        "apply_eps": (s1["applied"] - s0["applied"]) / win,
        "outbox_backlog": s1["outbox"],
        "broker_backlog": int(s1["published"] - s1["applied"]),
        "drain_s": t_done - s1["t"],
        "sat_p50": cs["lat_p50_ms"], "sat_p99": cs["lat_p99_ms"],
        "cpu": {k: (s1["cpu"].get(k, 0) - s0["cpu"].get(k, 0)) / win for k in s1["cpu"]},
        "broker_routes": broker, "win": win, "errors": len(errors),
    }


def latency(stack, rate, duration):
    per_call = 10
    period = per_call / float(rate)
    k0 = (stack.producer_stats() or {"emitted": 0})["emitted"]
    r0 = route_stats(stack.broker.url("")) if stack.backend == "http" else {}
    t_next = time.monotonic()
    end = t_next + duration
    late = 0
    while t_next < end:
        st, _ = stack.emit(per_call, 1)
        if st != 200:
            raise chaos.Fail("emit failed: %s" % st)
        t_next += period
        d = t_next - time.monotonic()
        if d > 0:
            time.sleep(d)
        else:
            late += 1
    total = stack.producer_stats()["emitted"]
    cs = chaos.wait_for("consumer to apply all",
                        lambda: (lambda s: s if s and s["applied"] >= total else None)(
                            stack.consumer_stats(from_k=k0 + 1)),
                        deadline=120, every=0.05)
    r1 = route_stats(stack.broker.url("")) if stack.backend == "http" else {}
    return {"events": total - k0, "p50": cs["lat_p50_ms"], "p99": cs["lat_p99_ms"],
            "max": cs["lat_max_ms"], "late_calls": late, "broker_routes": route_delta(r0, r1)}


def fresh_stack(build, backend):
    tmp = tempfile.mkdtemp(prefix="gr-busbench-")
    st = chaos.Stack(build, backend, tmp, ack_wait_s=30, log_level="warn")
    return st, tmp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--backend", choices=["http", "nats"], required=True)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--lat-duration", type=float, default=10.0)
    a = ap.parse_args()
    build = os.path.abspath(a.build)

    stack, tmp = fresh_stack(build, a.backend)
    try:
        stack.start()
        stack.emit(1000, 100)  # warm-up: subscription bound, connections open
        chaos.wait_for("warm-up applied",
                       lambda: (stack.consumer_stats() or {"applied": 0})["applied"] >= 1000, 60)
        s = saturate(stack, a.duration)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    stack, tmp = fresh_stack(build, a.backend)
    try:
        stack.start()
        stack.emit(100, 10)
        chaos.wait_for("warm-up applied",
                       lambda: (stack.consumer_stats() or {"applied": 0})["applied"] >= 100, 60)
        lat = latency(stack, a.rate, a.lat_duration)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    cpu = " ".join("cpu_%s=%.0f%%" % (k, v * 100) for k, v in sorted(s["cpu"].items()))
    print("  [%s] saturation window %.1f s: emitted=%d in all (drain %.1f s after the window)"
          % (a.backend, s["win"], s["emitted"], s["drain_s"]))
    for route, (cnt, ms, sec, o10, o25) in sorted(s["broker_routes"].items()):
        print("  [%s] broker %-42s calls=%-7d mean=%.2fms busy=%.0f%% of the window"
              % (a.backend, route, cnt, ms, sec * 100 / s["win"]))
    print("  [%s] stage rates in the window (ev/s): emit=%.0f publish=%.0f apply=%.0f; "
          "backlog at window end: outbox=%d broker->consumer=%d; %s; emit errors=%d"
          % (a.backend, s["emit_eps"], s["publish_eps"], s["apply_eps"], s["outbox_backlog"],
             s["broker_backlog"], cpu, s["errors"]))
    print("  [%s] latency at saturation (queueing): p50=%dms p99=%dms"
          % (a.backend, s["sat_p50"], s["sat_p99"]))
    print("  [%s] latency at %d ev/s (one event per tx, %d events): p50=%dms p99=%dms max=%dms "
          "late_calls=%d" % (a.backend, a.rate, lat["events"], lat["p50"], lat["p99"],
                             lat["max"], lat["late_calls"]))
    for route, (cnt, ms, sec, o10, o25) in sorted(lat["broker_routes"].items()):
        print("  [%s]   broker %-42s calls=%-6d mean=%.2fms >10ms=%d >25ms=%d%s"
              % (a.backend, route, cnt, ms, o10, o25,
                 " (long poll: includes waiting)" if route.endswith("/pull") else ""))
    print("bus backend=%s e2e_eps=%.0f apply_eps=%.0f lat_p50_ms=%d lat_p99_ms=%d "
          "(at %d ev/s) sat_p99_ms=%d"
          % (a.backend, s["e2e_eps"], s["apply_eps"], lat["p50"], lat["p99"], a.rate,
             s["sat_p99"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
