#!/usr/bin/python3
"""Parses a rendered /metrics sample with the official Prometheus client parser.

Usage: check_metrics.py FILE   (FILE from GR_METRICS_SAMPLE=FILE build/tests/test_metrics)
Exits 0 when the text parses and holds the families the sample in test_metrics.c renders.
Needs the Debian package python3-prometheus-client.
"""
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    if len(sys.argv) != 2:
        print("usage: check_metrics.py FILE", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    want = {
        "http_requests": "counter",
        "http_request_duration_seconds": "histogram",
        "outbox_pending": "gauge",
        "odd": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_cpu_seconds": "counter",
        "process_start_time_seconds": "gauge",
        "process_open_fds": "gauge",
    }
    bad = 0
    for name, typ in want.items():
        if name not in fams or fams[name].type != typ:
            print("missing or mistyped family %s" % name, file=sys.stderr)
            bad += 1
    if not bad:
        reqs = {s.labels["status"]: s.value for s in fams["http_requests"].samples}
        hist = {(s.name, s.labels.get("le")): s.value
                for s in fams["http_request_duration_seconds"].samples}
        odd = fams["odd"].samples[0].labels["v"]
        checks = [
            (reqs == {"200": 5.0, "422": 1.0}, "http_requests_total values"),
            (hist.get(("http_request_duration_seconds_bucket", "0.005")) == 1.0, "bucket 0.005"),
            (hist.get(("http_request_duration_seconds_bucket", "+Inf")) == 2.0, "bucket +Inf"),
            (hist.get(("http_request_duration_seconds_count", None)) == 2.0, "count"),
            (odd == 'a\\b"c\nd', "label unescaping"),
            (fams["odd"].documentation == "Escapes \\ and\nnewline.", "help unescaping"),
        ]
        for ok, what in checks:
            if not ok:
                print("wrong %s" % what, file=sys.stderr)
                bad += 1
    print("%d families parsed, %d problems" % (len(fams), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
