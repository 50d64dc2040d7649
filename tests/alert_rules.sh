#!/usr/bin/env bash
# Check keyrotd's Prometheus alert rules and the example Alertmanager config.
#
#   tests/alert_rules.sh
#
# Needs promtool (Debian: apt-get install prometheus); amtool (apt-get install
# prometheus-alertmanager) is used when present: without it, step 4 prints a
# `SKIPPED:` line, or fails when KEYROTD_REQUIRE_TOOLS is set to anything but
# empty or 0 (.ci/run sets it).
# Fails on any error:
#   1. promtool check rules  (syntax, templates, lint: duplicate rules)
#   2. promtool test rules   (alerts/keyrotd.rules.test.yml)
#   3. every alert has a unit test, and every runbook_url anchor has a heading
#      in docs/runbook.md
#   4. amtool check-config + routing of every alert to the expected receiver
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RULES="$ROOT_DIR/alerts/keyrotd.rules.yml"
TESTS="$ROOT_DIR/alerts/keyrotd.rules.test.yml"
AM_CONFIG="$ROOT_DIR/alerts/alertmanager.example.yml"
RUNBOOK="$ROOT_DIR/docs/runbook.md"

fail() { echo "FAIL: $*" >&2; exit 1; }
# The same rule as require_tools() in tests/common/mod.rs.
require_tools() { [[ -n ${KEYROTD_REQUIRE_TOOLS:-} && $KEYROTD_REQUIRE_TOOLS != 0 ]]; }
skip() {
    if require_tools; then
        fail "$* (KEYROTD_REQUIRE_TOOLS is set, so this is a failure, not a skip)"
    fi
    echo "SKIPPED: $*" >&2
}

command -v promtool >/dev/null || fail "promtool not found (apt-get install prometheus)"

# --- 1, 2: promtool -----------------------------------------------------------
promtool check rules "$RULES"
(cd "$ROOT_DIR/alerts" && promtool test rules "$(basename "$TESTS")")

# --- 3: coverage and runbook anchors --------------------------------------------
mapfile -t alerts < <(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$RULES" | sort -u)
[[ ${#alerts[@]} -gt 0 ]] || fail "no alerts found in $RULES"
for a in "${alerts[@]}"; do
    grep -Eq "^ *alertname: *$a *$" "$TESTS" || fail "alert $a has no promtool unit test"
    # a test with a non-empty exp_alerts for this alert (the firing case)
    awk -v a="$a" '
        $1 == "alertname:" { cur = $2; next }
        $1 == "exp_alerts:" && $2 != "[]" && cur == a { found = 1 }
        END { exit !found }' "$TESTS" || fail "alert $a has no firing test case"
    awk -v a="$a" '
        $1 == "alertname:" { cur = $2; next }
        $1 == "exp_alerts:" && $2 == "[]" && cur == a { found = 1 }
        END { exit !found }' "$TESTS" || fail "alert $a has no not-firing test case"
done
echo "ok: all ${#alerts[@]} alerts have firing and not-firing tests"

[[ -f $RUNBOOK ]] || fail "missing $RUNBOOK"
# GitHub anchor of "## KeyExpiringSoon" is "keyexpiringsoon"
mapfile -t anchors < <(sed -n 's/^#\{1,6\} *\(.*\)$/\1/p' "$RUNBOOK" \
    | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9 _-]//g; s/ /-/g')
mapfile -t urls < <(sed -n 's/.*runbook_url: *"\{0,1\}\([^"]*\)"\{0,1\}.*/\1/p' "$RULES")
[[ ${#urls[@]} -eq $(grep -c -- '- alert:' "$RULES") ]] || fail "every rule needs a runbook_url"
for u in "${urls[@]}"; do
    [[ $u == https://github.com/keyrotd/keyrotd/blob/main/docs/runbook.md#* ]] || fail "unexpected runbook_url $u"
    anchor=${u#*#}
    # A here-string, not `printf | grep -q`: grep -q exits at the first match, printf
    # then dies of SIGPIPE, and pipefail turned a found anchor into a failure.
    grep -qx -- "$anchor" <<<"$(printf '%s\n' "${anchors[@]}")" \
        || fail "runbook_url anchor #$anchor has no heading in docs/runbook.md"
done
echo "ok: runbook anchors exist"

# --- 4: Alertmanager example -------------------------------------------------------
if command -v amtool >/dev/null; then
    amtool check-config "$AM_CONFIG"
    route() { amtool config routes test --config.file="$AM_CONFIG" "$@" 2>/dev/null; }
    for a in "${alerts[@]}"; do
        sev=$(awk -v a="$a" '
            $0 ~ "- alert: *" a "$" { inrule = 1; next }
            inrule && $1 == "severity:" { print $2; exit }' "$RULES")
        case $sev in
            critical) want=keyrotd-pager ;;
            warning)  want=keyrotd-chat ;;
            *) fail "alert $a has no severity label (got '$sev')" ;;
        esac
        got=$(route alertname="$a" severity="$sev" credential=openrouter-prod provider=openrouter)
        [[ $got == "$want" ]] || fail "Alertmanager routes $a ($sev) to '$got', want '$want'"
    done
    got=$(route alertname=KeycloakDown severity=critical)
    [[ $got == default ]] || fail "a foreign alert KeycloakDown was routed to '$got', want 'default'"
    echo "ok: Alertmanager routes every keyrotd alert by severity"
else
    skip "amtool not found (apt-get install prometheus-alertmanager); $AM_CONFIG not checked"
fi
echo "ok: alert rules"
