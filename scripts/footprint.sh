#!/usr/bin/env bash
# Measures the agent's edge footprint: the stripped binary's size, and the resident memory
# of an idle agent running one workload, beside the same figures for the Podman REST
# service it drives (the baseline, measured in the same run).
#
#   bash scripts/footprint.sh [BINARY]        # default: target/release/parley
#
# Run as root it measures as $PARLEY_E2E_USER (default parley-e2e, prepared by
# scripts/setup-host.sh); otherwise as the current user. Needs the test image.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/release/parley}")
[[ -x "$binary" ]] || { echo "footprint: no $binary; cargo build --release -p parley-agent" >&2; exit 1; }
idle_secs=${IDLE_SECS:-30}

if [[ $EUID -eq 0 ]]; then
    user=${PARLEY_E2E_USER:-parley-e2e}
    uid=$(id -u "$user")
    home=$(getent passwd "$user" | cut -d: -f6)
    as_user=(setpriv --reuid "$user" --regid "$(id -g "$user")" --init-groups
        env -i HOME="$home" USER="$user" XDG_RUNTIME_DIR="/run/user/$uid" PATH=/usr/bin:/bin)
    copy=$(mktemp /tmp/parley-footprint-bin.XXXXXX)
    install -m 0755 "$binary" "$copy"
    binary_run=$copy
else
    as_user=(env)
    binary_run=$binary
fi
work=$("${as_user[@]}" mktemp -d /tmp/parley-footprint.XXXXXX)
agent_pid=""
cleanup() {
    [[ -z "$agent_pid" ]] || { kill -TERM "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null || true; }
    rm -rf "$work" "${copy:-}"
}
trap cleanup EXIT

parley() { "${as_user[@]}" "$binary_run" --api-socket "$work/api.sock" "$@"; }
"${as_user[@]}" "$binary_run" --api-socket "$work/api.sock" agent --node-name footprint \
    --data-dir "$work/data" --podman-socket "$work/podman.sock" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 60); do parley status >/dev/null 2>&1 && break; sleep 0.5; done
parley status >/dev/null || { cat "$work/agent.log" >&2; exit 1; }
parley run idle --image localhost/parley-test:latest --stop-timeout 1 -- sleep 3600 >/dev/null
echo "footprint: agent up with one workload; idle for ${idle_secs} s" >&2
sleep "$idle_secs"

kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$2/status"; }
podman_pid=$(pgrep -P "$agent_pid" -f 'podman system service' | head -n 1)
agent_rss=$(kib VmRSS "$agent_pid")
agent_hwm=$(kib VmHWM "$agent_pid")
podman_rss=$(kib VmRSS "$podman_pid")
podman_binary=$(command -v podman)
size=$(stat -c %s "$binary")
podman_size=$(stat -c %s "$podman_binary")
parley rm idle >/dev/null

awk -v s="$size" -v ps="$podman_size" -v r="$agent_rss" -v h="$agent_hwm" -v pr="$podman_rss" 'BEGIN {
    printf "| what | parley | podman (baseline) | ratio |\n|---|---|---|---|\n"
    printf "| binary size | %.1f MB | %.1f MB | %.2f |\n", s / 1e6, ps / 1e6, s / ps
    printf "| idle RSS, one workload | %.1f MiB (peak %.1f) | %.1f MiB (`podman system service`) | %.2f |\n", r / 1024, h / 1024, pr / 1024, r / pr
}'
