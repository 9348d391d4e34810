#!/usr/bin/env bash
# Builds Parley's .deb and .rpm from this checkout:
#
#   bash packaging/build.sh
#
# Installs the packaging tools it needs (cargo-deb, cargo-generate-rpm; pinned versions,
# from crates.io) when missing, builds the release binary, generates the shell
# completions and man pages from the CLI, then writes
#   target/debian/parley_VERSION-1_ARCH.deb
#   target/generate-rpm/parley-VERSION-1.ARCH.rpm
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "packaging: $*"; }

# The tools run once per build on a few megabytes, so a debug build of them (half the
# compile time of a release build) is plenty.
ensure_tool() {
    local crate=$1 version=$2
    if ! "$crate" --version 2>/dev/null | grep -q " $version\$" &&
        ! cargo "${crate#cargo-}" --version 2>/dev/null | grep -q " $version\$"; then
        say "installing $crate $version (cargo install, a few minutes once)"
        cargo install --quiet --locked --debug --version "$version" "$crate"
    fi
}
ensure_tool cargo-deb 3.8.0
ensure_tool cargo-generate-rpm 0.21.1

say "building the release binary"
cargo build --release --locked -p parley-agent

generated=target/release/packaging
rm -rf "$generated"
mkdir -p "$generated/completions" "$generated/man"
parley=target/release/parley
"$parley" completions bash >"$generated/completions/parley.bash"
"$parley" completions zsh >"$generated/completions/_parley"
"$parley" completions fish >"$generated/completions/parley.fish"
"$parley" man --dir "$generated/man"
# -n: no name or time stamp inside, so the same sources give the same package bytes.
gzip -9n "$generated"/man/*.1

say "building the .deb"
deb=$(cargo deb -p parley-agent --no-build --locked | tail -n 1)
say "building the .rpm"
rm -rf target/generate-rpm
cargo generate-rpm -p agent
rpm=$(ls target/generate-rpm/*.rpm)

say "built $deb"
say "built $rpm"
