#!/usr/bin/env bash
# Checks the Debian package that packaging/build-deb.sh built: what it installs and where,
# the conffile, the unit pointing at the packaged binary, the man page and completions
# generated from it, and maintainer scripts that follow Debian practice (master key made
# once and 0600, service neither enabled nor started, state kept on remove and deleted on
# purge). The maintainer scripts are run against a scratch root by substituting its paths.
#
#   tests/deb_package.sh target/debian/keyrotd_*.deb
set -euo pipefail

DEB=${1:?usage: tests/deb_package.sh PATH_TO_DEB}
fail() { echo "FAIL: $*" >&2; exit 1; }
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

contents=$(dpkg-deb -c "$DEB" | awk '{print $1, $NF}')
for entry in \
    "-rwxr-xr-x ./usr/bin/keyrotd" \
    "-rw-r--r-- ./usr/lib/systemd/system/keyrotd.service" \
    "-rw-r--r-- ./usr/lib/sysusers.d/keyrotd.conf" \
    "-rw-r--r-- ./etc/keyrotd/keyrotd.toml" \
    "-rw-r--r-- ./usr/share/keyrotd/alerts/keyrotd.rules.yml" \
    "-rw-r--r-- ./usr/share/keyrotd/dashboards/keyrotd.json" \
    "-rw-r--r-- ./usr/share/man/man1/keyrotd.1.gz" \
    "-rw-r--r-- ./usr/share/bash-completion/completions/keyrotd" \
    "-rw-r--r-- ./usr/share/zsh/vendor-completions/_keyrotd" \
    "-rw-r--r-- ./usr/share/fish/vendor_completions.d/keyrotd.fish" \
    "-rw-r--r-- ./usr/share/doc/keyrotd/copyright"; do
    grep -qxF -- "$entry" <<<"$contents" || fail "the package lacks $entry"
done
echo "ok: files and modes"

dpkg-deb -x "$DEB" "$SCRATCH/root"
dpkg-deb -e "$DEB" "$SCRATCH/control"
grep -qx /etc/keyrotd/keyrotd.toml "$SCRATCH/control/conffiles" || fail "keyrotd.toml is not a conffile"
cmp -s "$SCRATCH/root/etc/keyrotd/keyrotd.toml" config.example.toml || fail "the conffile is not config.example.toml"
unit="$SCRATCH/root/usr/lib/systemd/system/keyrotd.service"
grep -q '^ExecStart=/usr/bin/keyrotd run ' "$unit" || fail "the unit does not start /usr/bin/keyrotd"
grep -q '^ExecReload=/usr/bin/keyrotd reload ' "$unit" || fail "the unit does not reload through /usr/bin/keyrotd"
! grep -q /usr/local "$unit" || fail "the packaged unit still names /usr/local"
echo "ok: conffile and unit"

# The man page and the completions are the binary's own.
bin="$SCRATCH/root/usr/bin/keyrotd"
zcat "$SCRATCH/root/usr/share/man/man1/keyrotd.1.gz" | grep -q '^\.TH keyrotd 1' || fail "no keyrotd(1) page"
zcat "$SCRATCH/root/usr/share/man/man1/keyrotd.1.gz" | grep -q 'KEYROTD STORE COPY' || fail "the man page lacks the subcommands"
grep -q 'keyrotd' "$SCRATCH/root/usr/share/bash-completion/completions/keyrotd" || fail "empty bash completion"
for command in run check-config reload key store completions man; do
    grep -q -- "$command" "$SCRATCH/root/usr/share/bash-completion/completions/keyrotd" ||
        fail "bash completion lacks $command"
done
"$bin" --version | grep -q '^keyrotd ' || fail "the packaged binary does not run"
echo "ok: man page and completions"

# Maintainer scripts: the service is installed disabled and never started or enabled by
# the package; state survives remove and goes on purge.
postinst="$SCRATCH/control/postinst"
postrm="$SCRATCH/control/postrm"
! grep -Eq 'deb-systemd-invoke (start|restart) keyrotd|systemctl (start|enable)' "$postinst" ||
    fail "postinst starts or enables the service"
grep -q 'systemd-sysusers' "$postinst" || fail "postinst does not create the user"
sh -n "$postinst" && sh -n "$postrm" || fail "a maintainer script does not parse"

# Run the master-key part of postinst and the purge part of postrm against the scratch
# root: /etc and /var/lib and the binary's path rewritten into it; the systemd helpers
# stubbed out (not under test here, and not to touch this host).
fake="$SCRATCH/fake"
mkdir -p "$fake/bin" "$fake/etc" "$fake/var/lib/keyrotd"
for helper in systemd-sysusers deb-systemd-helper deb-systemd-invoke systemctl; do
    printf '#!/bin/sh\nexit 0\n' > "$fake/bin/$helper"
    chmod +x "$fake/bin/$helper"
done
rewrite() { sed -e "s#/etc/keyrotd#$fake/etc/keyrotd#g" -e "s#/var/lib/#$fake/var/lib/#g" -e "s#/usr/bin/keyrotd#$bin#g" "$1"; }
rewrite "$postinst" > "$SCRATCH/postinst"
rewrite "$postrm" > "$SCRATCH/postrm"
PATH="$fake/bin:$PATH" sh "$SCRATCH/postinst" configure
key="$fake/etc/keyrotd/master.key"
[[ -f $key ]] || fail "postinst made no master key"
[[ $(stat -c %a "$key") == 600 ]] || fail "the master key is $(stat -c %a "$key"), not 0600"
before=$(sha256sum "$key")
PATH="$fake/bin:$PATH" sh "$SCRATCH/postinst" configure 0.1.0-1
[[ $(sha256sum "$key") == "$before" ]] || fail "an upgrade replaced the master key"
echo state > "$fake/var/lib/keyrotd/keyrotd.db"
PATH="$fake/bin:$PATH" sh "$SCRATCH/postrm" remove
[[ -f $key && -f $fake/var/lib/keyrotd/keyrotd.db ]] || fail "remove deleted the state or the master key"
PATH="$fake/bin:$PATH" sh "$SCRATCH/postrm" purge
[[ ! -e $key && ! -e $fake/var/lib/keyrotd ]] || fail "purge kept the state or the master key"
echo "ok: maintainer scripts (master key once, 0600; state kept on remove, gone on purge)"
