#!/usr/bin/env bash
# Measures how long the mesh takes to place and start a 3-replica workload on the three
# agents of `scripts/demo.sh`, against the baseline of starting the same three containers
# with `podman run -d` directly (one per agent's storage, in parallel), in the same run.
# Also measures removal against `podman rm -f`. Prints a Markdown table.
#
#   bash scripts/demo.sh                      # once: the three agents keep running
#   ROUNDS=10 bash scripts/placement-bench.sh
#
# Parley's times run from the command to the latest of the three agents' own timestamps
# (`parley events`: replica-started once Podman started the container, replica-revoked
# once it removed it); Podman's, from the command to the return of all three CLI calls.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-10}
user=${PARLEY_DEMO_USER:-parley-demo}
[[ $EUID -eq 0 ]] || user=$(id -un)
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
demo=$home/parley-demo
image=localhost/parley-test:latest

as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
            PATH=/usr/local/bin:/usr/bin:/bin "$@"
    else
        "$@"
    fi
}
parley_on() { local n=$1; shift; as_user env PARLEY_API_SOCKET="/run/user/$uid/parley/node-$n.sock" parley "$@"; }
podman_on() { local n=$1; shift; as_user env XDG_CONFIG_HOME="$demo/node-$n/config" podman "$@"; }
now_ms() { date +%s%3N; }

for n in 1 2 3; do
    parley_on "$n" status >/dev/null 2>&1 || { echo "node-$n is not running: run scripts/demo.sh first" >&2; exit 1; }
done

# When each of the three agents recorded event KIND for workload NAME (ms since the epoch),
# the latest of the three; empty until all three have.
latest_event() { # latest_event KIND NAME
    local n at latest=0
    for n in 1 2 3; do
        at=$(parley_on "$n" events -o json --limit 100 | python3 -c '
import json, sys
kind, workload = sys.argv[1], "default/" + sys.argv[2]
times = [e["at_ms"] for e in json.load(sys.stdin) if e["kind"] == kind and e.get("workload") == workload]
print(max(times) if times else "")' "$1" "$2")
        [[ -n $at ]] || return 0
        ((at > latest)) && latest=$at
    done
    echo "$latest"
}
wait_for_event() { # wait_for_event KIND NAME: prints the latest of the three times
    local at
    for _ in $(seq 1 600); do
        at=$(latest_event "$1" "$2")
        [[ -n $at ]] && { echo "$at"; return 0; }
        sleep 0.05
    done
    echo "timed out waiting for $1 of $2 on all three agents" >&2
    exit 1
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

place=() remove=() base_run=() base_rm=()
for i in $(seq 1 "$rounds"); do
    name=bench-$$-$i
    # The agents timestamp what they do: a replica is started when Podman has started its
    # container, revoked when Podman has removed it.
    start=$(now_ms)
    parley_on 1 run "$name" --image "$image" --replicas 3 --stop-timeout 1 -- sleep 3600 >/dev/null
    place+=($(($(wait_for_event replica-started "$name") - start)))
    start=$(now_ms)
    parley_on 1 rm "$name" >/dev/null
    remove+=($(($(wait_for_event replica-revoked "$name") - start)))

    # The baseline: the same three containers started and removed with Podman's CLI,
    # which returns once the container runs (or is gone).
    start=$(now_ms)
    for n in 1 2 3; do
        podman_on "$n" run -d --name "bench-base-$i" --stop-timeout 1 "$image" sleep 3600 >/dev/null &
    done
    wait
    base_run+=($(($(now_ms) - start)))
    start=$(now_ms)
    for n in 1 2 3; do
        podman_on "$n" rm -f -t 1 "bench-base-$i" >/dev/null &
    done
    wait
    base_rm+=($(($(now_ms) - start)))
    echo "round $i: place ${place[-1]} ms (podman ${base_run[-1]} ms), remove ${remove[-1]} ms (podman ${base_rm[-1]} ms)" >&2
done

p=$(printf '%s\n' "${place[@]}" | median)
r=$(printf '%s\n' "${remove[@]}" | median)
bp=$(printf '%s\n' "${base_run[@]}" | median)
br=$(printf '%s\n' "${base_rm[@]}" | median)
echo
echo "| operation (3 replicas on 3 agents, median of $rounds) | parley | podman (baseline) | ratio |"
echo "|---|---|---|---|"
printf '| run → all three running | %d ms | %d ms | %.2f |\n' "$p" "$bp" "$(echo "$p / $bp" | bc -l)"
printf '| rm → none left | %d ms | %d ms | %.2f |\n' "$r" "$br" "$(echo "$r / $br" | bc -l)"
