#!/usr/bin/env bash
# End-to-end alerting: keyrotd -> Prometheus (the shipped alert rules) -> Alertmanager
# -> a webhook, all on loopback, nothing left running afterwards. Every server binds port 0
# and says which port it got (a file or its log), so no port is ever picked, released and
# then taken by someone else before the server binds it.
#
#   tests/alerting_e2e.sh [path/to/keyrotd]      (default: target/debug/keyrotd)
#
# Builds nothing. Needs python3, curl, prometheus, promtool and prometheus-alertmanager
# (Debian: apt-get install prometheus prometheus-alertmanager).
#
# What runs (all children of this script, killed by the EXIT trap):
#   * a fake OpenAI-compatible provider: GET /v1/models answers 200 for GOOD_KEY, 401
#     `invalid_api_key` for any other key;
#   * keyrotd with two credentials on that provider: `expiring` (good key, expires in 3
#     days -> KeyExpiringSoon) and `rejected` (a key the fake refuses -> KeyInvalid);
#   * Prometheus scraping keyrotd every 1s as job="keyrotd", evaluating a copy of
#     alerts/keyrotd.rules.yml every 1s;
#   * Alertmanager (clustering off) sending every group to a webhook;
#   * a webhook receiver appending each JSON notification to a file.
#
# Asserts:
#   1. `promtool check metrics` on keyrotd's live /metrics reports nothing;
#   2. Alertmanager delivers KeyExpiringSoon{credential="expiring"} and
#      KeyInvalid{credential="rejected"}, each with severity, provider="fake", job="keyrotd"
#      and no `instance` (per-key rules aggregate over replicas: one alert per credential);
#   3. no KeyInvalid for `expiring`, no expiry alert for `rejected` (it has no expiry);
#   4. every query of dashboards/keyrotd.json is accepted by Prometheus.
#
# The whole run is bounded (E2E_TIMEOUT seconds, default 300) only against a hang; it
# usually takes ~15s. Every wait inside ends at the event it waits for.
set -euo pipefail

E2E_TIMEOUT=${E2E_TIMEOUT:-300}
# How long one wait may take before it is called a hang.
WAIT_LIMIT=${WAIT_LIMIT:-120}
if [[ -z ${KEYROTD_E2E_BOUNDED:-} ]]; then
    # Hard bound on the whole run. On expiry `timeout` sends TERM: the trap below still
    # cleans up; KILL 10s later if even that hangs.
    KEYROTD_E2E_BOUNDED=1 exec timeout --kill-after=10 "$E2E_TIMEOUT" bash "$0" "$@"
fi

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEYROTD=${1:-$ROOT_DIR/target/debug/keyrotd}
RULES="$ROOT_DIR/alerts/keyrotd.rules.yml"
START=$SECONDS

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
step() { echo "[$((SECONDS - START))s] $*"; }

[[ -x $KEYROTD ]] || fail "keyrotd binary not found or not executable: $KEYROTD"
for tool in python3 curl prometheus promtool prometheus-alertmanager; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keyrotd-e2e.XXXXXX")
PIDS=()

dump_logs() {
    local f
    for f in "$TMP"/*.log; do
        [[ -s $f ]] || continue
        echo "--- $(basename "$f") (last 30 lines)" >&2
        tail -n 30 "$f" >&2
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        dump_logs || true
    fi
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # give each process up to ~5s to exit, then KILL
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted or timed out after $((SECONDS - START))s" >&2; exit 124' INT TERM

# bound_port WHAT PID FILE SED_SCRIPT: waits until FILE (a port file or a log) names the
# port the process PID bound (SED_SCRIPT prints it), and prints it. Fails if the process
# exits first.
bound_port() {
    local what=$1 pid=$2 file=$3 script=$4 deadline=$((SECONDS + WAIT_LIMIT)) port
    while :; do
        port=$(sed -n "$script" "$file" 2>/dev/null | head -n 1)
        if [[ $port =~ ^[0-9]+$ && $port -gt 0 ]]; then
            echo "$port"
            return
        fi
        kill -0 "$pid" 2>/dev/null || fail "$what exited before it listened"
        [[ $SECONDS -lt $deadline ]] || fail "$what did not say its port within ${WAIT_LIMIT}s"
        sleep 0.1
    done
}
# The port in the "Listening on" line of Prometheus' and Alertmanager's logs.
LISTENING_ON='s/.*msg="Listening on" address=127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p'

# Each Python server binds port 0 and then writes the port it got to a file, whole.
cat >"$TMP/serve.py" <<'PY'
import os

def serve(server_class, handler, port_file):
    server = server_class(("127.0.0.1", 0), handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()
PY

# wait_http URL WHAT SECONDS: poll until URL answers with any HTTP status.
wait_http() {
    local url=$1 what=$2 limit=$3 deadline=$((SECONDS + $3))
    until [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null) != 000 ]]; do
        [[ $SECONDS -lt $deadline ]] || fail "$what did not answer on $url within ${limit}s"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- fake provider
GOOD_KEY="sk-e2e-good-$RANDOM$RANDOM"
BAD_KEY="sk-e2e-revoked-$RANDOM$RANDOM"
cat >"$TMP/fake_provider.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from serve import serve

port_file, good_key = sys.argv[1], sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.split("?")[0] != "/v1/models":
            return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        if self.headers.get("Authorization") == "Bearer " + good_key:
            return self._send(200, {"object": "list", "data": [{"id": "m"}]})
        self._send(401, {"error": {"message": "Incorrect API key provided",
                                   "type": "invalid_request_error",
                                   "code": "invalid_api_key"}})

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-provider: " + (fmt % args) + "\n")

serve(ThreadingHTTPServer, Handler, port_file)
PY
python3 "$TMP/fake_provider.py" "$TMP/provider.port" "$GOOD_KEY" >"$TMP/fake_provider.log" 2>&1 &
PIDS+=($!)
PROVIDER_PORT=$(bound_port "fake provider" "$!" "$TMP/provider.port" p)

# ------------------------------------------------------------- webhook receiver
cat >"$TMP/webhook.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from serve import serve

port_file, out = sys.argv[1], sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(out, "a") as f:  # one JSON document per line
            f.write(json.dumps(json.loads(body)) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # readiness probe
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook: " + (fmt % args) + "\n")

serve(ThreadingHTTPServer, Handler, port_file)
PY
NOTIFICATIONS="$TMP/notifications.jsonl"
: >"$NOTIFICATIONS"
python3 "$TMP/webhook.py" "$TMP/webhook.port" "$NOTIFICATIONS" >"$TMP/webhook.log" 2>&1 &
PIDS+=($!)
WEBHOOK_PORT=$(bound_port "webhook receiver" "$!" "$TMP/webhook.port" p)

# ------------------------------------------------------------------ Alertmanager
# Short group_wait/group_interval: configuration of this test, not a recommendation
# (see alerts/alertmanager.example.yml for the shipped routing).
cat >"$TMP/alertmanager.yml" <<EOF
route:
  receiver: webhook
  group_by: [alertname, credential]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: "http://127.0.0.1:$WEBHOOK_PORT/"
        send_resolved: false
EOF
mkdir -p "$TMP/alertmanager-data"
prometheus-alertmanager \
    --config.file="$TMP/alertmanager.yml" \
    --storage.path="$TMP/alertmanager-data" \
    --web.listen-address="127.0.0.1:0" \
    --cluster.listen-address= \
    >"$TMP/alertmanager.log" 2>&1 &
PIDS+=($!)
AM_PORT=$(bound_port alertmanager "$!" "$TMP/alertmanager.log" "$LISTENING_ON")

# ----------------------------------------------------------------------- keyrotd
cat >"$TMP/keyrotd.toml" <<EOF
[daemon]
listen_address = "127.0.0.1:0"
database = "$TMP/keyrotd.db"

[checks]
interval = "2s"
jitter = 0.0

[[provider]]
name = "fake"
kind = "openai_compatible"
base_url = "http://127.0.0.1:$PROVIDER_PORT/v1"

[[credential]]
name = "expiring"
provider = "fake"

[[credential]]
name = "rejected"
provider = "fake"
EOF
krd() {
    "$KEYROTD" --config "$TMP/keyrotd.toml" --database "$TMP/keyrotd.db" \
        --master-key "$TMP/master.key" "$@"
}
"$KEYROTD" master-key generate "$TMP/master.key" >/dev/null
krd check-config >/dev/null
EXPIRES_AT=$(($(date +%s) + 3 * 86400))
printf '%s\n' "$GOOD_KEY" | krd key import expiring --expires-at "$EXPIRES_AT" >/dev/null
printf '%s\n' "$BAD_KEY" | krd key import rejected >/dev/null
# Started directly (not through the krd function, which would run in a subshell whose
# PID is not keyrotd's), so the trap kills keyrotd itself.
"$KEYROTD" --config "$TMP/keyrotd.toml" --database "$TMP/keyrotd.db" \
    --master-key "$TMP/master.key" run >"$TMP/keyrotd.log" 2>&1 &
PIDS+=($!)
KEYROTD_PORT=$(bound_port keyrotd "$!" "$TMP/keyrotd.log" \
    's/.*keyrotd ready.*listen_address=127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p')

# -------------------------------------------------------------------- Prometheus
# The shipped rules with only the `for:` durations (and the group's evaluation
# `interval:`) shortened to 1s. Short intervals are configuration of this test, not
# of the shipped defaults: alerts/keyrotd.rules.yml itself is not modified.
TEST_RULES="$TMP/keyrotd.rules.yml"
sed -E 's/^( *for:) .*/\1 1s/; s/^( *interval:) .*/\1 1s/' "$RULES" >"$TEST_RULES"
diff <(grep -Ev '^ *(for|interval):' "$RULES") <(grep -Ev '^ *(for|interval):' "$TEST_RULES") >/dev/null \
    || fail "the test copy of the rules differs from the shipped file beyond for:/interval:"
promtool check rules "$TEST_RULES" >/dev/null
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - "$TEST_RULES"
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:$AM_PORT"]
scrape_configs:
  - job_name: keyrotd
    scrape_interval: 1s
    static_configs:
      - targets: ["127.0.0.1:$KEYROTD_PORT"]
EOF
promtool check config "$TMP/prometheus.yml" >/dev/null
prometheus \
    --config.file="$TMP/prometheus.yml" \
    --storage.tsdb.path="$TMP/prometheus-data" \
    --web.listen-address="127.0.0.1:0" \
    >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
PROM_PORT=$(bound_port prometheus "$!" "$TMP/prometheus.log" "$LISTENING_ON")

wait_http "http://127.0.0.1:$PROVIDER_PORT/v1/models" "fake provider" "$WAIT_LIMIT" # a 401 is an answer
wait_http "http://127.0.0.1:$WEBHOOK_PORT/" "webhook receiver" "$WAIT_LIMIT"
wait_http "http://127.0.0.1:$KEYROTD_PORT/healthz" "keyrotd" "$WAIT_LIMIT"
wait_http "http://127.0.0.1:$AM_PORT/-/ready" "alertmanager" "$WAIT_LIMIT"
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" "prometheus" "$WAIT_LIMIT"
step "all processes up (keyrotd :$KEYROTD_PORT, prometheus :$PROM_PORT, alertmanager :$AM_PORT)"

# ------------------------------------------------------- promtool check metrics
# Once both credentials have been checked (so every family, including the provider
# request histogram, is in the exposition).
METRICS="$TMP/metrics.txt"
deadline=$((SECONDS + WAIT_LIMIT))
while :; do
    curl -fsS --max-time 10 "http://127.0.0.1:$KEYROTD_PORT/metrics" >"$METRICS" || true
    if grep -q '^keyrotd_key_valid{credential="expiring",provider="fake"} 1$' "$METRICS" &&
        grep -q '^keyrotd_key_valid{credential="rejected",provider="fake"} 0$' "$METRICS" &&
        grep -q '^keyrotd_provider_request_duration_seconds_bucket' "$METRICS"; then
        break
    fi
    [[ $SECONDS -lt $deadline ]] || fail "keyrotd did not report expiring=valid, rejected=invalid within ${WAIT_LIMIT}s; /metrics:
$(grep '^keyrotd_key_\(valid\|check_status\)' "$METRICS" || true)"
    sleep 0.5
done
step "keyrotd: expiring valid, rejected invalid"
set +e
lint=$(promtool check metrics <"$METRICS" 2>&1)
lint_rc=$?
set -e
[[ $lint_rc -eq 0 && -z $lint ]] || fail "promtool check metrics complains (exit $lint_rc):
$lint"
step "promtool check metrics: clean ($(grep -c '^keyrotd_' "$METRICS") keyrotd samples)"

# ------------------------------------------- dashboard queries are valid PromQL
# Every `expr` of dashboards/keyrotd.json, with the Grafana variables filled in, must be
# accepted by this Prometheus (syntax and functions; tests/dashboard.rs checks the names).
python3 - "$ROOT_DIR/dashboards/keyrotd.json" "$PROM_PORT" <<'PY' || fail "dashboard query rejected by Prometheus"
import json, sys, urllib.error, urllib.parse, urllib.request

dashboard, port = json.load(open(sys.argv[1])), sys.argv[2]
def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))
count = 0
for panel in panels(dashboard["panels"]):
    for target in panel.get("targets", []):
        expr = (target["expr"].replace("$__rate_interval", "1m")
                .replace("$credential", ".*").replace("$provider", ".*"))
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            urllib.request.urlopen(url, timeout=60).read()
        except urllib.error.HTTPError as e:
            sys.exit(f"panel {panel['title']!r}: {e.read().decode()[:300]}\n  {expr}")
        count += 1
print(f"{count} dashboard queries accepted")
PY
step "dashboard PromQL accepted by Prometheus"

# ------------------------------------------------------------ wait for the alerts
# check_notifications prints what is missing; exit 0 when everything has arrived.
cat >"$TMP/check_notifications.py" <<'PY'
import json, sys

path = sys.argv[1]
received = {}
with open(path) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        for alert in json.loads(line).get("alerts", []):
            if alert.get("status") != "firing":
                continue
            labels = alert["labels"]
            received[(labels.get("alertname"), labels.get("credential"))] = labels

expected = {
    ("KeyExpiringSoon", "expiring"): "warning",
    ("KeyInvalid", "rejected"): "critical",
}
problems, missing = [], []
for (name, credential), severity in expected.items():
    labels = received.get((name, credential))
    if labels is None:
        missing.append(f"{name}{{credential={credential}}}")
        continue
    want = {"alertname": name, "severity": severity, "credential": credential,
            "provider": "fake", "job": "keyrotd"}
    for key, value in want.items():
        if labels.get(key) != value:
            problems.append(f"{name}/{credential}: label {key}={labels.get(key)!r}, want {value!r}")
    # aggregated over replicas: one alert per credential, whichever replica reported it
    if "instance" in labels:
        problems.append(f"{name}/{credential}: label instance={labels['instance']!r}, want none")
# Must never be notified: the good key is valid, the rejected key has no expiry.
for name, credential in [("KeyInvalid", "expiring"), ("KeyExpiringSoon", "rejected"),
                         ("KeyExpiryCritical", "expiring"), ("KeyExpiryCritical", "rejected")]:
    if (name, credential) in received:
        problems.append(f"unexpected alert {name} for {credential}: {received[(name, credential)]}")
if problems:
    print("\n".join(problems))
    sys.exit(2)
if missing:
    print("still missing: " + ", ".join(missing))
    sys.exit(1)
print("received: " + ", ".join(sorted(f"{n}{{credential={c}}}" for n, c in received)))
PY
deadline=$((SECONDS + WAIT_LIMIT))
while :; do
    set +e
    result=$(python3 "$TMP/check_notifications.py" "$NOTIFICATIONS")
    rc=$?
    set -e
    case $rc in
        0) break ;;
        1) ;;
        *) fail "wrong alert notification: $result" ;;
    esac
    [[ $SECONDS -lt $deadline ]] || fail "alerts not delivered within ${WAIT_LIMIT}s: $result
prometheus alerts: $(curl -fsS --max-time 2 "http://127.0.0.1:$PROM_PORT/api/v1/alerts" || true)"
    sleep 0.5
done
step "webhook got $result"
echo "ok: alerting end to end in $((SECONDS - START))s (KeyExpiringSoon + KeyInvalid with alertname/severity/credential/provider/job; promtool check metrics clean)"
