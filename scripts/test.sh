#!/usr/bin/env bash
# The whole test suite, as CI runs it: prepares the host (packages, a rootless test user,
# the test image), then format and lint checks, then every test, including end-to-end
# tests that drive real agents against that user's rootless Podman, then the package
# tests (packaging/build.sh, packaging/test.sh).
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export PARLEY_E2E_USER=${PARLEY_E2E_USER:-parley-e2e}
if [[ $EUID -eq 0 ]]; then
    bash scripts/setup-host.sh --user "$PARLEY_E2E_USER"
else
    # Not root: the host is prepared with sudo, and the tests run as the current user.
    sudo bash scripts/setup-host.sh --user "$(id -un)"
    export PARLEY_E2E_USER=$(id -un)
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binary the end-to-end tests run)"
cargo build --workspace --locked
echo "== cargo test"
# Every fuzz target runs this long on mutations of its corpus (agent/tests/fuzz.rs).
export PARLEY_FUZZ_SECS=${PARLEY_FUZZ_SECS:-30}
cargo test --workspace --locked --no-fail-fast
echo "== packages: build the .deb and .rpm, install, run a workload, purge, inspect"
bash packaging/build.sh
if [[ $EUID -eq 0 ]]; then
    bash packaging/test.sh --user "$PARLEY_E2E_USER"
else
    sudo bash packaging/test.sh --user "$PARLEY_E2E_USER"
fi
