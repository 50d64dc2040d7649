#!/usr/bin/env python3
"""Markdown tables from keyrotd-bench JSON results: summarize.py RESULT.json [...]

Each file is one run (one scale, one keyrotd build); columns follow the order given.
"""
import json
import sys


def get(d, path, default=None):
    for key in path.split("/"):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}" if abs(v) >= 1 else f"{v:.{max(digits, 2)}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS = [
    ("credentials", "n", 0),
    ("daemon environment", "daemon/environment", "env"),
    ("start → READY (ms)", "daemon/ready_ms", 0),
    ("RSS at READY (MiB)", "daemon/rss_at_ready_kib", "mib"),
    ("/metrics first scrape after a change (ms)", "daemon/scrape/first_ms", 1),
    ("/metrics p50 (ms)", "daemon/scrape/p50_ms", 2),
    ("/metrics p99 (ms)", "daemon/scrape/p99_ms", 2),
    ("/metrics CPU per scrape (ms)", "daemon/scrape/cpu_s_per_scrape", "ms"),
    ("/metrics Content-Encoding", "daemon/scrape/content_encoding", 0),
    ("/metrics bytes on the wire", "daemon/scrape/wire_bytes", 0),
    ("/metrics bytes", "daemon/scrape/bytes", 0),
    ("/metrics series", "daemon/scrape/series", 0),
    ("/metrics identity p50 (ms)", "daemon/scrape/identity/p50_ms", 2),
    ("/metrics identity p99 (ms)", "daemon/scrape/identity/p99_ms", 2),
    ("/metrics identity CPU per scrape (ms)", "daemon/scrape/identity/cpu_s_per_scrape", "ms"),
    ("RSS after the identity scrapes (MiB)", "daemon/scrape/identity/rss_after_kib", "mib"),
    ("python prometheus_client p50 (ms)", "python/scrape/p50_ms", 1),
    ("python prometheus_client p99 (ms)", "python/scrape/p99_ms", 1),
    ("python bytes on the wire", "python/scrape/wire_bytes", 0),
    ("python identity p50 (ms)", "python/scrape/identity/p50_ms", 1),
    ("python series", "python/scrape/series", 0),
    ("python RSS (MiB)", "python/rss_kib", "mib"),
    ("start-up sweep: provider answered all (s after READY)", "daemon/startup_sweep/seconds_after_ready", 1),
    ("start-up sweep: all results committed (s after READY)", "daemon/startup_sweep/settled_seconds_after_ready", 1),
    ("start-up sweep CPU (s)", "daemon/startup_sweep/cpu_s", 2),
    ("peak RSS up to READY (VmHWM, MiB)", "daemon/peak_rss_to_ready_kib", "mib"),
    ("peak RSS from READY through the start-up sweep (VmHWM, MiB)", "daemon/startup_sweep/peak_rss_kib", "mib"),
    ("idle RSS (MiB)", "daemon/idle/rss_kib", "mib"),
    ("idle RSS anonymous / file-backed (MiB)", ("daemon/idle/rss_anon_kib", "daemon/idle/rss_file_kib"), "mib2"),
    ("RSS after the scrapes (MiB)", "daemon/scrape/rss_after_kib", "mib"),
    ("idle CPU (%)", "daemon/idle/cpu_percent", 2),
    ("idle context switches / min (/proc)", "daemon/idle/context_switches_per_minute", 0),
    ("idle sched_switch / min (perf)", "daemon/idle/perf_sched_switch_per_minute", 0),
    ("`keyrotd check` sweep wall (s)", "sweep/wall_s", 2),
    ("bound n × 50 ms / 256 (s)", "sweep/bound_s", 2),
    ("sweep / bound", "sweep/ratio_to_bound", 2),
    ("… of which the CLI's fixed start (s)", "sweep/cli_fixed_start_s", 2),
    ("… checks only (s)", "sweep/checks_wall_s", 2),
    ("checks only / bound", "sweep/checks_ratio_to_bound", 2),
    ("sweep CPU user+sys (s)", ("sweep/cpu_user_s", "sweep/cpu_sys_s"), "sum"),
    ("sweep cores used", "sweep/cores_used", 2),
    ("simulator cores used during the sweep", "sweep/simulator_cores", 2),
    ("latency the simulator added: mean (ms)", "sweep/provider_latency_ms/mean", 2),
    ("latency the simulator added: max (ms)", "sweep/provider_latency_ms/max", 1),
    ("sweep peak RSS of `keyrotd check` (MiB) †", "sweep/max_rss_kib", "mib"),
    ("rotations/s sequential", "rotation/sequential/per_second", 1),
    ("rotations/s, 8 in flight", "rotation/parallel/per_second", 1),
    ("ms per rotation (sequential)", "rotation/sequential/ms_per_rotation", 1),
    ("… of which store + engine (ms)", "rotation/sequential/store_and_engine_ms_per_rotation", 1),
    ("… write transactions per rotation", "rotation/sequential/write_transactions_per_rotation", 0),
    ("… deliver to file (ms)", "rotation/sequential/steps_ms_per_rotation/deliver_file", 2),
    ("… list orphans (ms)", "rotation/sequential/steps_ms_per_rotation/list_orphans", 2),
    ("… issue (ms)", "rotation/sequential/steps_ms_per_rotation/issue", 2),
    ("… verify (ms)", "rotation/sequential/steps_ms_per_rotation/verify", 2),
]


def cell(run, path, how):
    if how == "env":
        v = get(run, path)
        if v is None:
            return "–"
        return "<br>".join(f"`{pair}`" for pair in v) if v else "none"
    if how == "mib":
        v = get(run, path)
        return fmt(v / 1024 if v is not None else None, 1)
    if how == "mib2":
        a, b = (get(run, p) for p in path)
        return "–" if a is None else f"{a / 1024:.1f} / {b / 1024:.1f}"
    if how == "ms":
        v = get(run, path)
        return fmt(v * 1e3 if v is not None else None, 1)
    if how == "sum":
        a, b = (get(run, p) for p in path)
        return "–" if a is None else fmt(a + b, 2)
    return fmt(get(run, path), how)


def main():
    runs, names = [], []
    for path in sys.argv[1:]:
        with open(path) as f:
            runs.append(json.load(f))
        names.append(path.rsplit("/", 1)[-1].removesuffix(".json"))
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(runs))
    for label, path, how in ROWS:
        cells = [cell(r, path, how) for r in runs]
        if all(c == "–" for c in cells):
            continue
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
