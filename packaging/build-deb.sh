#!/usr/bin/env bash
# Builds the Debian package, target/debian/keyrotd_<version>-1_<arch>.deb, with cargo-deb
# (`cargo install --locked cargo-deb`; its settings are [package.metadata.deb] in
# Cargo.toml). The man page and the shell completions are generated from the release
# binary itself (`keyrotd man`, `keyrotd completions SHELL`), and the unit is the shipped
# one with the binary at /usr/bin, where the package puts it.
#
#   packaging/build-deb.sh        # prints the path of the .deb
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p keyrotd
bin=target/release/keyrotd
assets=target/assets
rm -rf "$assets"
mkdir -p "$assets"
"$bin" man | gzip -9n > "$assets/keyrotd.1.gz"
"$bin" completions bash > "$assets/keyrotd.bash"
"$bin" completions zsh > "$assets/_keyrotd"
"$bin" completions fish > "$assets/keyrotd.fish"
sed 's#/usr/local/bin/keyrotd#/usr/bin/keyrotd#g' systemd/keyrotd.service > "$assets/keyrotd.service"
grep -q '^ExecStart=/usr/bin/keyrotd ' "$assets/keyrotd.service"
cargo deb --no-build --locked -p keyrotd | tail -n 1
