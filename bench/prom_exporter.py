#!/usr/bin/env python3
"""Serve the series of one keyrotd scrape with the Python prometheus_client library.

The side-by-side baseline of BENCHMARKS.md: `keyrotd-bench --python bench/prom_exporter.py`
writes the families it scraped from keyrotd (name, help, type, label sets, values) to a
JSON file and starts this script with it; the script creates the same families with the
same label sets, the way an exporter written with prometheus_client would (Gauge / Counter
with labels), serves them with `start_http_server`, prints READY and waits. Like keyrotd,
prometheus_client answers gzip to a request with `Accept-Encoding: gzip` (it compresses
every scrape, at Python's default level 9) and text otherwise; the harness scrapes it both
ways, as it scrapes keyrotd.

Histogram families (a handful of provider-request series) are left out; the harness reports
both series counts.

Usage: prom_exporter.py SERIES.json PORT        (needs: pip install prometheus_client)
"""
import json
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

try:  # prometheus_client >= 0.17: no extra `_created` series per counter
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
except ImportError:
    pass


def main():
    spec_path, port = sys.argv[1], int(sys.argv[2])
    with open(spec_path) as f:
        families = json.load(f)
    registry = CollectorRegistry(auto_describe=False)
    for family in families:
        samples = family["samples"]
        if not samples or family["type"] not in ("gauge", "counter"):
            continue
        name, help_text = family["name"], family["help"] or family["name"]
        label_names = list(samples[0][1].keys())
        if family["type"] == "counter":
            base = name[: -len("_total")] if name.endswith("_total") else name
            metric = Counter(base, help_text, label_names, registry=registry)
            for _, labels, value in samples:
                child = metric.labels(**labels) if label_names else metric
                child.inc(value)
        else:
            metric = Gauge(name, help_text, label_names, registry=registry)
            for _, labels, value in samples:
                child = metric.labels(**labels) if label_names else metric
                child.set(value)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
