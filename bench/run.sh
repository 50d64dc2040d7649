#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds keyrotd and the harness (the workspace crate
# keyrotd-bench, bench/src/) in release mode and runs the harness at 1,000 / 10,000 / 100,000
# credentials, side by side with a Python prometheus_client exporter serving the same series.
#
#   bench/run.sh --install            # once: apt-get install linux-perf valgrind; pip install prometheus_client
#   bench/run.sh                      # all scales (100k takes several minutes)
#   SCALES="1000 10000" bench/run.sh  # some scales
#   SCALES=1000 IDLE_SECS=5 bench/run.sh          # the smallest run
#   KEYROTD=/path/to/other/keyrotd bench/run.sh   # benchmark another build (e.g. before a change)
#   STORE_URL=postgres://postgres@127.0.0.1:5432/postgres SCALES=10000 bench/run.sh
#                                     # on PostgreSQL (a scratch database per run), with a standby
#   bench/run.sh --relay              # the relay alone: latency, throughput, SSE, memory
#
# Results: bench/results/<UTC date>/<n>.json plus machine.txt; the summary goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--install" ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends linux-perf valgrind python3 python3-pip || true
    pip install prometheus_client || pip install --break-system-packages prometheus_client
    exit 0
fi

: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
cargo build --release -p keyrotd -p keyrotd-bench
BENCH="$CARGO_TARGET_DIR/release/keyrotd-bench"
KEYROTD="${KEYROTD:-$CARGO_TARGET_DIR/release/keyrotd}"
SCALES="${SCALES:-1000 10000 100000}"
IDLE_SECS="${IDLE_SECS:-60}"
OUT="bench/results/$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"

# The daemon runs with the shipped unit's Environment= lines (glibc malloc tunables), as
# systemd runs it; one more 10,000-credential run without them shows what they change.
UNIT_ENV=()
while IFS= read -r pair; do
    UNIT_ENV+=(--daemon-env "$pair")
done < <(sed -n 's/^Environment=//p' systemd/keyrotd.service)

PERF=()
if perf stat -e sched:sched_switch true >/dev/null 2>&1; then PERF=(--perf); fi
STORE=()
if [[ -n "${STORE_URL:-}" ]]; then STORE=(--store-url "$STORE_URL"); fi
PYTHON=()
if python3 -c 'import prometheus_client' 2>/dev/null; then PYTHON=(--python bench/prom_exporter.py); fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    free -h
    echo "uptime: $(uptime)"
    echo "keyrotd: $KEYROTD ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
} | tee "$OUT/machine.txt"

if [[ "${1:-}" == "--relay" ]]; then
    # A route over 4 credentials to the harness's own upstream, the daemon as systemd runs it.
    echo "== relay (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    "$BENCH" --relay --n 4 --fresh-checks --keyrotd "$KEYROTD" "${UNIT_ENV[@]}" \
        --json "$OUT/relay.json" >/dev/null
    echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "results in $OUT"
    exit 0
fi

for n in $SCALES; do
    case "$n" in
        1000)   scrapes=200; py=50; rotations=100 ;;
        10000)  scrapes=100; py=20; rotations=100 ;;
        *)      scrapes=20;  py=3;  rotations=50 ;;
    esac
    echo "== $n credentials (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    "$BENCH" --n "$n" --keyrotd "$KEYROTD" --scrapes "$scrapes" \
        "${PYTHON[@]}" --python-scrapes "$py" \
        --latency-ms 50 --concurrency 256 --rotations "$rotations" --rotation-parallel 8 \
        --idle-secs "$IDLE_SECS" "${PERF[@]}" "${UNIT_ENV[@]}" "${STORE[@]}" --json "$OUT/$n${STORE_URL:+-postgres}.json" >/dev/null
    echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ "$n" == 10000 && -z "${STORE_URL:-}" ]]; then
        echo "== $n credentials, footprint without the unit's environment"
        "$BENCH" --n "$n" --keyrotd "$KEYROTD" --scrapes "$scrapes" --rotations 0 --skip-sweep \
            --latency-ms 50 --concurrency 256 --idle-secs "$IDLE_SECS" "${PERF[@]}" \
            --json "$OUT/$n-bare-environment.json" >/dev/null
    fi
done
echo "results in $OUT"
