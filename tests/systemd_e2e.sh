#!/usr/bin/env bash
# The Debian package under a real, booted systemd: a minimal Debian 12 tree (debootstrap)
# booted with systemd-nspawn, the .deb installed with dpkg, and the service driven with
# systemctl as an operator would. Every step is an assertion:
#
#   1. the package installs;            2. postinst made the master key (root, 0600);
#   3. a config with a simulated provider (and a drop-in with a delivery directory in
#      ReadWritePaths=); the operator imports a first key as root before starting it;
#   4. the service starts (it was neither enabled nor started by the package);
#   5. READY, the status text, /metrics, the journal's fields (PRIORITY= from the level);
#   6. a good reload takes effect; a bad one fails `systemctl reload` with the file's
#      line:column and the running daemon keeps its config (same PID, still serving);
#   7. delivery into a ReadWritePaths= directory works; one elsewhere is refused naming
#      ReadWritePaths=;
#   8. an exec hook runs inside the sandbox (as keyrotd, no new privileges, key on stdin);
#   9. a SIGSTOPped daemon is killed by the watchdog and restarted; the live
#      `systemd-analyze security` exposure is at most the figure README.md quotes;
#  10. `systemctl stop` ends it with SIGTERM within TimeoutStopSec;
#  11. `dpkg -r` keeps /var/lib/keyrotd and the master key; `dpkg -P` deletes them.
#
#   KEYROTD_E2E_SIM_URL=http://127.0.0.1:PORT KEYROTD_E2E_SIM_KEY_FILE=FILE \
#   KEYROTD_E2E_FIRST_KEY_FILE=FILE KEYROTD_E2E_PORT=PORT tests/systemd_e2e.sh
#
# The simulated provider is served by the caller on the host's loopback (the container
# shares the host's network): tests/systemd_e2e.rs runs it in-process and passes its URL,
# its management key, a key it knows (the operator imports it as the first key), and a free
# port for keyrotd's /metrics.
#
# Needs: root, debootstrap, systemd-nspawn (systemd-container), nsenter (util-linux),
# curl, cargo-deb (packaging/build-deb.sh builds the package first), and network access to
# a Debian mirror on the first run. The debootstrapped tree is cached outside the
# repository (in $KEYROTD_E2E_CACHE, default /var/cache/keyrotd-tests: bookworm/, and
# bookworm.stamp written only once debootstrap succeeded, so a half-made tree is made
# again) and every run boots a throw-away copy of it, deleted at the end.
# KEYROTD_E2E_MIRROR picks the mirror (default http://deb.debian.org/debian).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR"
SIM_URL=${KEYROTD_E2E_SIM_URL:?the simulated provider URL (tests/systemd_e2e.rs sets it)}
SIM_KEY_FILE=${KEYROTD_E2E_SIM_KEY_FILE:?the simulated provider management key file}
FIRST_KEY_FILE=${KEYROTD_E2E_FIRST_KEY_FILE:?a key the simulated provider knows, imported first}
PORT=${KEYROTD_E2E_PORT:?a free port on 127.0.0.1 for keyrotd /metrics}
CACHE=${KEYROTD_E2E_CACHE:-/var/cache/keyrotd-tests}
MIRROR=${KEYROTD_E2E_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
START=$SECONDS

WORK=""
NSPAWN=""
PID1=""
MOUNTED_NSPAWN_DIR=""
log() { echo "[$((SECONDS - START))s] $*"; }
ok() { log "ok: $*"; }
fail() {
    echo "FAIL: $*" >&2
    if [[ -n $PID1 ]]; then
        echo "--- the container's journal of keyrotd (last 60 lines)" >&2
        C journalctl -u keyrotd --no-pager -n 60 >&2 || true
        C systemctl status keyrotd --no-pager >&2 || true
    fi
    exit 1
}
[[ $(id -u) == 0 ]] || fail "needs root (debootstrap, systemd-nspawn, nsenter)"
for tool in debootstrap systemd-nspawn nsenter curl flock; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done

# A command inside the container, in all its namespaces, with a clean environment.
C() {
    nsenter -t "$PID1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= \
        SYSTEMD_COLORS=0 "$@"
}
# One property of the keyrotd unit.
prop() { C systemctl show -P "$1" keyrotd; }
# Polls `$@` every 0.2 s until it succeeds or LIMIT seconds have passed.
wait_until() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}
metrics() { curl -fsS --max-time 10 "http://127.0.0.1:$PORT/metrics"; }
# Whether /metrics has the line $1 (read whole first: `| grep -q` would cut the writer off,
# and pipefail would call that a failure).
has_metric() {
    local text
    text=$(metrics) || return 1
    grep -qx -- "$1" <<<"$text"
}
# The journal of the keyrotd unit, one message a line; extra journalctl arguments.
journal() { C journalctl -u keyrotd --no-pager -o cat "$@"; }
# The entries of the unit's journal in FORMAT (journalctl -o) that contain NEEDLE, extra
# journalctl arguments after it; waited for up to 10 s, since journald takes a stream's
# lines asynchronously (`systemctl reload` can return before its command's output is in).
# Empty if none came.
journal_grep() {
    local format=$1 needle=$2
    shift 2
    local deadline=$((SECONDS + 10)) lines
    while :; do
        lines=$(C journalctl -u keyrotd --no-pager -o "$format" "$@") || lines=""
        lines=$(grep -F -- "$needle" <<<"$lines" || true)
        if [[ -n $lines ]] || ((SECONDS >= deadline)); then
            printf '%s' "$lines"
            return
        fi
        sleep 0.2
    done
}

cleanup() {
    local status=$?
    if [[ -n $NSPAWN ]] && kill -0 "$NSPAWN" 2>/dev/null; then
        # SIGTERM makes nspawn power the container off cleanly.
        kill -TERM "$NSPAWN" 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while kill -0 "$NSPAWN" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -KILL "$NSPAWN" 2>/dev/null || true
        wait "$NSPAWN" 2>/dev/null || true
    fi
    if [[ -n $MOUNTED_NSPAWN_DIR ]]; then
        umount /run/systemd/nspawn 2>/dev/null || true
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        # nspawn's mounts live in its own namespace and are gone with it; refuse to delete
        # through one that is still there.
        if grep -qF " $WORK/" /proc/self/mountinfo; then
            echo "not deleting $WORK: something is still mounted under it" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT

# --- the package, built from this checkout -------------------------------------------
# Without the variables `cargo test` sets for the test binary: a build that sees
# CARGO_MANIFEST_DIR differs from a plain `cargo build` (ring's build script tracks it), so
# the release build would flip between the two and rebuild from scratch each time.
deb=$(
    unset CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_PRIMARY_PACKAGE CARGO_CRATE_NAME \
        CARGO_TARGET_TMPDIR ${!CARGO_PKG_@} ${!CARGO_BIN_EXE_@}
    packaging/build-deb.sh
)
[[ -f $deb ]] || fail "packaging/build-deb.sh printed '$deb', which is no file"
log "package: $deb"

# --- the Debian tree: cached, then a throw-away copy ---------------------------------
mkdir -p "$CACHE"
tree="$CACHE/$SUITE"
(
    flock 9
    if [[ ! -f $tree.stamp ]]; then
        log "debootstrap $SUITE into $tree (first run on this machine)"
        rm -rf "$tree" "$tree.partial"
        debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$SUITE" \
            "$tree.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
            { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
        mv "$tree.partial" "$tree"
        date -u +%FT%TZ >"$tree.stamp"
    fi
) 9>"$CACHE/lock" || fail "debootstrap failed (log: $CACHE/debootstrap.log)"
WORK=$(mktemp -d /var/tmp/keyrotd-e2e.XXXXXX)
cp -a "$tree" "$WORK/root"
log "booting a copy of $tree"

# --- boot ------------------------------------------------------------------------------
# nspawn keeps its mount propagation points under /run/systemd/nspawn, which must be a
# file system of its own; hosts whose /run is not systemd's lack it.
mkdir -p /run/systemd/nspawn
if ! mountpoint -q /run/systemd/nspawn; then
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
    MOUNTED_NSPAWN_DIR=1
fi
systemd-nspawn --quiet --keep-unit --register=no --settings=no --console=passive \
    --machine=keyrotd-e2e -D "$WORK/root" -b </dev/null >"$WORK/nspawn.log" 2>&1 &
NSPAWN=$!
container_init() {
    kill -0 "$NSPAWN" 2>/dev/null || fail "systemd-nspawn exited: $(tail -n 20 "$WORK/nspawn.log")"
    local stat
    for stat in /proc/[0-9]*/stat; do
        # pid (comm) state ppid ...: the fields after the last ')'.
        local line
        # Processes come and go between the glob and the read.
        line=$(cat "$stat" 2>/dev/null) || continue
        local rest=${line##*) }
        local ppid
        ppid=$(cut -d' ' -f2 <<<"$rest")
        if [[ $ppid == "$NSPAWN" ]]; then
            PID1=${stat//[^0-9]/}
            [[ $(cat "/proc/$PID1/comm" 2>/dev/null) == systemd ]] && return 0
        fi
    done
    PID1=""
    return 1
}
wait_until 30 container_init || fail "no systemd in the container after 30 s"
state=$(C timeout 90 systemctl is-system-running --wait || true)
case $state in
    running) ;;
    degraded) log "note: the container booted degraded: $(C systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
    *) fail "the container did not finish booting (state '$state')" ;;
esac
ok "booted $(C systemctl --version | head -n 1) as PID 1 of the container (host PID $PID1)"

# --- 1. install ------------------------------------------------------------------------
cp "$deb" "$WORK/root/root/keyrotd.deb"
out=$(C dpkg -i /root/keyrotd.deb 2>&1) || fail "dpkg -i failed: $out"
[[ $(C dpkg-query -W -f='${Status}' keyrotd) == "install ok installed" ]] ||
    fail "keyrotd is not installed after dpkg -i: $out"
ok "1. dpkg -i installed $(C dpkg-query -W -f='${Package} ${Version}' keyrotd)"

# --- 2. master key ---------------------------------------------------------------------
[[ $(C stat -c '%a %U:%G %s' /etc/keyrotd/master.key) == "600 root:root "* ]] ||
    fail "the master key is not root:root 0600: $(C stat -c '%a %U:%G' /etc/keyrotd/master.key 2>&1)"
C getent passwd keyrotd >/dev/null || fail "postinst did not create the keyrotd user"
key_before=$(C sha256sum /etc/keyrotd/master.key)
ok "2. postinst made /etc/keyrotd/master.key (root:root 0600) and the keyrotd user"

# --- 3. config -------------------------------------------------------------------------
mkdir -p "$WORK/root/etc/systemd/system/keyrotd.service.d"
# The management key as a file the daemon (group keyrotd) and root's `keyrotd key …`
# commands both read; a `{ credential = … }` reference would exist for the service only.
cp "$SIM_KEY_FILE" "$WORK/root/etc/keyrotd/sim.mgmt"
C chown root:keyrotd /etc/keyrotd/sim.mgmt
C chmod 0640 /etc/keyrotd/sim.mgmt
cat >"$WORK/root/etc/systemd/system/keyrotd.service.d/site.conf" <<'EOF'
[Service]
ReadWritePaths=/srv/app
EOF
# Both directories belong to keyrotd: only the sandbox can tell them apart.
C install -d -o keyrotd -g keyrotd -m 0750 /srv/app /srv/unlisted
# app rotates every 10 s (the first key comes from the provider) and is delivered to a
# file and to a hook; the hook records who ran it, with which privileges, and the key's
# digest (the key on stdin, never in argv).
write_config() {
    cat >"$WORK/root/etc/keyrotd/keyrotd.toml" <<EOF
[daemon]
listen_address = "127.0.0.1:$PORT"
rotation_lease = "5s"

[checks]
interval = "5s"
jitter = 0.0

[[provider]]
name = "sim"
kind = "simulated"
base_url = "$SIM_URL"
management_key = { file = "/etc/keyrotd/sim.mgmt" }
timeout = "10s"

[[credential]]
name = "app"
provider = "sim"
[credential.rotation]
schedule = "*/10 * * * * *"
retry_backoff = "1s"
[[credential.deliver]]
kind = "file"
path = "/srv/app/key"
[[credential.deliver]]
kind = "exec"
command = ["/bin/sh", "-c", "{ id -un; grep '^NoNewPrivs:' /proc/self/status; tr -d '\\\\n' | sha256sum; } > /srv/app/hook.out.tmp && mv /srv/app/hook.out.tmp /srv/app/hook.out"]
key_via = "stdin"
timeout = "10s"
EOF
    cat >>"$WORK/root/etc/keyrotd/keyrotd.toml"
}
write_config </dev/null
out=$(C keyrotd check-config --config /etc/keyrotd/keyrotd.toml 2>&1) || fail "check-config: $out"
C systemctl daemon-reload
ok "3. config with the simulated provider at $SIM_URL; drop-in with ReadWritePaths=/srv/app"

# The operator imports the first key as root from a shell before starting the service (the
# daemon surveys its credentials' rotations at start-up); the command delivers it itself.
cp "$FIRST_KEY_FILE" "$WORK/root/root/first.key"
out=$(C keyrotd key import app --config /etc/keyrotd/keyrotd.toml --from-file /root/first.key 2>&1) ||
    fail "keyrotd key import: $out"
cmp -s "$FIRST_KEY_FILE" "$WORK/root/srv/app/key" || fail "key import did not deliver the first key: $out"
ok "the operator imported the first key (as root): $(tail -n 1 <<<"$out")"

# --- 4. start --------------------------------------------------------------------------
[[ $(C systemctl is-active keyrotd || true) == inactive ]] || fail "the package started keyrotd"
[[ $(C systemctl is-enabled keyrotd || true) == disabled ]] || fail "the package enabled keyrotd"
out=$(C systemctl start keyrotd 2>&1) || fail "systemctl start keyrotd: $out"
ok "4. systemctl start (the package had left it inactive and disabled)"

# --- 5. READY, status, /metrics, journal -----------------------------------------------
[[ $(prop ActiveState)/$(prop SubState) == active/running ]] ||
    fail "after start: $(prop ActiveState)/$(prop SubState)"
leading() { [[ $(prop StatusText) == "leading (epoch "* ]]; }
wait_until 30 leading || fail "status text '$(prop StatusText)', not 'leading (epoch N)'"
main_pid=$(prop MainPID)
has_metric 'keyrotd_leader 1' || fail "/metrics does not say keyrotd_leader 1: $(metrics)"
has_metric 'keyrotd_config_last_reload_successful 1' || fail "/metrics: no successful config"
uid=$(C id -u keyrotd)
ready=$(journal_grep json 'keyrotd ready' | tail -n 1)
for field in '"_SYSTEMD_UNIT":"keyrotd.service"' "\"_PID\":\"$main_pid\"" "\"_UID\":\"$uid\"" \
    '"SYSLOG_IDENTIFIER":"keyrotd"' '"_TRANSPORT":"stdout"' '"PRIORITY":"6"' \
    "listen_address=127.0.0.1:$PORT" \
    'credentials=1'; do
    grep -qF -- "$field" <<<"$ready" || fail "the journal's 'keyrotd ready' entry lacks $field: $ready"
done
ok "5. READY, status '$(prop StatusText)', /metrics on 127.0.0.1:$PORT, journal fields of PID $main_pid (uid $uid)"

# --- 7 and 8 (the rotation's delivery and hook, while it runs) -------------------------
# The daemon's rotations (every 10 s) replace the imported key, in the sandbox.
delivered() {
    [[ -s $WORK/root/srv/app/key ]] && ! cmp -s "$FIRST_KEY_FILE" "$WORK/root/srv/app/key" &&
        [[ $(sed -n 1p "$WORK/root/srv/app/hook.out" 2>/dev/null) == keyrotd ]]
}
wait_until 60 delivered || fail "the daemon delivered no new key to /srv/app/key and its hook within 60 s"
[[ $(C stat -c '%a %U' /srv/app/key) == "600 keyrotd" ]] ||
    fail "/srv/app/key is $(C stat -c '%a %U' /srv/app/key), not 0600 keyrotd"
hook_saw_the_key() {
    local digest
    digest=$(tr -d '\n' <"$WORK/root/srv/app/key" | sha256sum)
    [[ $(sed -n 3p "$WORK/root/srv/app/hook.out") == "$digest" ]]
}
wait_until 30 hook_saw_the_key || fail "the hook's digest is not the delivered key's"
[[ $(sed -n 1p "$WORK/root/srv/app/hook.out") == keyrotd ]] ||
    fail "the hook ran as $(sed -n 1p "$WORK/root/srv/app/hook.out"), not keyrotd"
[[ $(sed -n 2p "$WORK/root/srv/app/hook.out" | tr -d ' \t') == NoNewPrivs:1 ]] ||
    fail "the hook ran without NoNewPrivs: $(cat "$WORK/root/srv/app/hook.out")"
ok "7. a rotation delivered /srv/app/key (0600 keyrotd) into a ReadWritePaths= directory"
ok "8. the exec hook ran in the sandbox: as keyrotd, NoNewPrivs 1, the key on its stdin"

# --- 6. reloads ------------------------------------------------------------------------
reloaded_at=$(metrics | sed -n 's/^keyrotd_config_last_reload_success_timestamp_seconds //p')
write_config </dev/null
write_config <<'EOF'

[[credential]]
name = "app2"
provider = "sim"
EOF
out=$(C systemctl reload keyrotd 2>&1) || fail "systemctl reload with a good config failed: $out"
app2_listed() {
    local text
    text=$(metrics) || return 1
    grep -q '^keyrotd_rotation_consecutive_failures{.*credential="app2"' <<<"$text"
}
wait_until 30 app2_listed || fail "/metrics does not list the reloaded config's new credential app2"
newer_reload() {
    local at
    at=$(metrics | sed -n 's/^keyrotd_config_last_reload_success_timestamp_seconds //p')
    awk -v a="$at" -v b="$reloaded_at" 'BEGIN { exit !(a > b) }'
}
wait_until 10 newer_reload || fail "keyrotd_config_last_reload_success_timestamp_seconds did not advance"
[[ $(prop MainPID) == "$main_pid" ]] || fail "a reload changed the main PID"
ok "6. good reload: systemctl reload succeeded and /metrics lists the new credential app2"

# A syntax error on line 3 of the file.
sed -i '3s/.*/rotation_lease = = "5s"/' "$WORK/root/etc/keyrotd/keyrotd.toml"
if out=$(C systemctl reload keyrotd 2>&1); then
    fail "systemctl reload succeeded with a syntax error in the config: $out"
fi
reload_log=$(journal_grep cat 'keyrotd.toml:3:' --since "-30s")
[[ -n $reload_log ]] || fail "the failed reload's message names no keyrotd.toml:3:COLUMN"
[[ $(prop MainPID) == "$main_pid" && $(prop ActiveState) == active ]] ||
    fail "the bad reload disturbed the daemon: MainPID $(prop MainPID), $(prop ActiveState)"
has_metric 'keyrotd_config_last_reload_successful 1' ||
    fail "the daemon took the bad config: $(metrics)"
ok "6. bad reload: systemctl reload failed ($(head -c 120 <<<"$reload_log")); PID $main_pid still serves the old config"

# A target outside ReadWritePaths=: refused with the directive named.
write_config <<'EOF'
[[credential.deliver]]
kind = "file"
path = "/srv/unlisted/key"
EOF
if out=$(C systemctl reload keyrotd 2>&1); then
    fail "systemctl reload accepted a delivery into /srv/unlisted, outside ReadWritePaths=: $out"
fi
unlisted=$(journal_grep cat 'ReadWritePaths=/srv/unlisted' --since "-30s")
grep -qF 'ReadWritePaths=/srv/unlisted' <<<"$unlisted" ||
    fail "the refusal does not name ReadWritePaths=/srv/unlisted: $unlisted"
[[ ! -e $WORK/root/srv/unlisted/key ]] || fail "keyrotd wrote outside ReadWritePaths="
# Logged at its level: `journalctl -p err` shows the refusal.
errors=$(journal_grep cat 'delivery preflight' -p err --since "-30s")
[[ -n $errors ]] ||
    fail "journalctl -p err does not show the refusal (PRIORITY= not set from the level): $errors"
[[ $(prop MainPID) == "$main_pid" ]] || fail "the refused reload changed the main PID"
ok "7. a delivery into /srv/unlisted is refused: $(grep -m1 -o 'read-only.*' <<<"$unlisted" | head -c 140)"
write_config </dev/null
out=$(C systemctl reload keyrotd 2>&1) || fail "reload back to the good config: $out"

# --- 9. watchdog and exposure ----------------------------------------------------------
restarts=$(prop NRestarts)
# bash's own kill: a minimal Debian has no procps.
C bash -c "kill -STOP $main_pid"
log "SIGSTOP to $main_pid; waiting for the watchdog ($(prop WatchdogUSec))"
restarted() {
    local pid
    pid=$(prop MainPID)
    [[ $pid != 0 && $pid != "$main_pid" && $(prop ActiveState) == active && $(prop SubState) == running ]]
}
wait_until 120 restarted || fail "no watchdog restart within 120 s: MainPID $(prop MainPID), $(prop ActiveState)/$(prop SubState)"
[[ $(prop NRestarts) == $((restarts + 1)) ]] || fail "NRestarts $(prop NRestarts), not $((restarts + 1))"
[[ -n $(journal_grep cat 'Watchdog timeout') ]] ||
    fail "the journal does not say the watchdog fired"
main_pid=$(prop MainPID)
wait_until 60 leading || fail "the restarted daemon does not lead: '$(prop StatusText)'"
has_metric 'keyrotd_leader 1' || fail "the restarted daemon does not serve /metrics"
ok "9. watchdog: the stopped daemon was killed and restarted (MainPID $main_pid, NRestarts $(prop NRestarts))"

max_exposure=$(sed -n 's/.*`systemd-analyze security` exposure \([0-9][0-9.]*\).*/\1/p' README.md)
[[ $max_exposure =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "README.md quotes no '\`systemd-analyze security\` exposure N.N'"
security=$(C systemd-analyze security --no-pager keyrotd 2>&1 || true)
score=$(sed -n 's/.*Overall exposure level for keyrotd\.service: \([0-9][0-9.]*\).*/\1/p' <<<"$security")
[[ -n $score ]] || fail "no exposure level in: $security"
awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }' ||
    fail "the live exposure is $score, above the $max_exposure README.md quotes"
ok "9. live systemd-analyze security exposure $score (README.md: $max_exposure)"

# --- 10. stop --------------------------------------------------------------------------
# Judged from the journal: once inactive, the unit (disabled, unreferenced) is unloaded and
# its properties (Result=, ExecMainStatus=) read as defaults.
# The watchdog's kill was RestartSec (5 s) and more before this second.
since="@$(date +%s)"
stop_started=$SECONDS
out=$(C systemctl stop keyrotd 2>&1) || fail "systemctl stop: $out"
took=$((SECONDS - stop_started))
journal_grep cat 'Deactivated successfully' --since "$since" >/dev/null
stop_log=$(journal --since "$since")
grep -qE ': stopped$' <<<"$stop_log" || fail "the daemon did not log its graceful stop: $stop_log"
grep -qF 'keyrotd.service: Deactivated successfully.' <<<"$stop_log" ||
    fail "systemd does not report a clean stop: $stop_log"
! grep -qE "Main process exited|Failed with result|timed out|Killing" <<<"$stop_log" ||
    fail "the stop was not a clean exit on SIGTERM: $stop_log"
[[ $(prop TimeoutStopUSec) == 30s ]] || fail "TimeoutStopSec is $(prop TimeoutStopUSec), not 30s"
((took < 30)) || fail "the stop took ${took}s, past TimeoutStopSec"
ok "10. systemctl stop: SIGTERM, a graceful exit 0 ('Deactivated successfully') in ${took}s"

# --- 11. remove and purge --------------------------------------------------------------
[[ -s $WORK/root/var/lib/keyrotd/keyrotd.db ]] || fail "no database in /var/lib/keyrotd"
out=$(C dpkg -r keyrotd 2>&1) || fail "dpkg -r: $out"
[[ $(C dpkg-query -W -f='${Status}' keyrotd) == "deinstall ok config-files" ]] ||
    fail "after dpkg -r: $(C dpkg-query -W -f='${Status}' keyrotd)"
[[ -s $WORK/root/var/lib/keyrotd/keyrotd.db ]] || fail "dpkg -r deleted the database"
[[ $(C sha256sum /etc/keyrotd/master.key) == "$key_before" ]] || fail "dpkg -r deleted or changed the master key"
[[ ! -e $WORK/root/usr/bin/keyrotd ]] || fail "dpkg -r left /usr/bin/keyrotd"
out=$(C dpkg -P keyrotd 2>&1) || fail "dpkg -P: $out"
[[ ! -e $WORK/root/var/lib/keyrotd && ! -e $WORK/root/etc/keyrotd/master.key ]] ||
    fail "dpkg -P kept the state: $(ls -la "$WORK/root/var/lib/keyrotd" "$WORK/root/etc/keyrotd" 2>&1)"
ok "11. dpkg -r kept /var/lib/keyrotd and the master key; dpkg -P deleted them"

log "all steps passed"
