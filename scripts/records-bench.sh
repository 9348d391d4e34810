#!/usr/bin/env bash
# Measures how long a workload record change takes to reach every agent of
# `scripts/demo.sh`: `parley scale hello N --detach` on node-2 (which does not own the
# workload) writes the next generation; the time runs from node-2's own log line for that
# generation to the log line of each other agent that took it. The baseline, in the same
# run, is a three-member etcd cluster on loopback (if `etcd` is installed: apt-get install
# etcd-server etcd-client): from the event of a watch open on member 1, which took the
# `etcdctl put`, to the event of the same watch on each other member (the same "from the
# writer holding it to the others holding it", without a CLI's start-up in either).
# Prints a Markdown table.
#
#   bash scripts/demo.sh                     # once: the three agents keep running
#   ROUNDS=30 bash scripts/records-bench.sh  # as root
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-30}
user=${PARLEY_DEMO_USER:-parley-demo}
[[ $EUID -eq 0 ]] || user=$(id -un)
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
demo=$home/parley-demo

as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
            PATH=/usr/local/bin:/usr/bin:/bin "$@"
    else
        "$@"
    fi
}
parley_on() { local n=$1; shift; as_user env PARLEY_API_SOCKET="/run/user/$uid/parley/node-$n.sock" parley "$@"; }

for n in 1 2 3; do
    parley_on "$n" status >/dev/null 2>&1 || { echo "node-$n is not running: run scripts/demo.sh first" >&2; exit 1; }
done
parley_on 2 ps -o json | grep -q '"name": "hello"' || { echo "the demo's workload hello is gone: run scripts/demo.sh again" >&2; exit 1; }

# When node N logged taking generation G of default/hello (µs since the epoch), or empty.
logged_at() { # logged_at N G
    python3 - "$demo/node-$1/agent.log" "$2" <<'EOF'
import datetime, re, sys
path, generation = sys.argv[1], sys.argv[2]
pattern = re.compile(r"^(\S+Z) .*workload record: new generation workload=default/hello generation=" + generation + r" ")
for line in open(path, errors="replace"):
    match = pattern.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
    if match:
        at = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        print(int(at.timestamp() * 1_000_000))
        break
EOF
}

percentiles() { # stdin: one number per line (µs); prints "p50 / p99 / max ms"
    sort -n | python3 -c '
import math, sys
v = [int(x) for x in sys.stdin if x.strip()]
pick = lambda p: v[min(len(v), max(1, math.ceil(p / 100 * len(v)))) - 1]
print(f"{pick(50)/1000:.1f} / {pick(99)/1000:.1f} / {v[-1]/1000:.1f} ms ({len(v)} samples)")'
}

parley_samples=$(mktemp)
etcd_samples=$(mktemp)
parley_total=$(mktemp)
etcd_total=$(mktemp)
trap 'rm -f "$parley_samples" "$etcd_samples" "$parley_total" "$etcd_total"' EXIT

for round in $(seq 1 "$rounds"); do
    replicas=$((2 + round % 2))
    started=$(date +%s%6N)
    generation=$(parley_on 2 -o json scale hello "$replicas" --detach |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["generation"])')
    for _ in $(seq 1 100); do
        written=$(logged_at 2 "$generation")
        one=$(logged_at 1 "$generation")
        three=$(logged_at 3 "$generation")
        [[ -n $written && -n $one && -n $three ]] && break
        sleep 0.1
    done
    [[ -n $written && -n $one && -n $three ]] || { echo "generation $generation did not reach every node in 10 s" >&2; exit 1; }
    echo $((one - written)) >>"$parley_samples"
    echo $((three - written)) >>"$parley_samples"
    echo $(( (one > three ? one : three) - started )) >>"$parley_total"
    sleep 0.5
done

baseline="etcd not installed (apt-get install etcd-server etcd-client)"
baseline_total=$baseline
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    etcd_dir=$(mktemp -d)
    cluster="m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803"
    for m in 1 2 3; do
        etcd --name "m$m" --data-dir "$etcd_dir/m$m" \
            --listen-peer-urls "http://127.0.0.1:2380$m" --initial-advertise-peer-urls "http://127.0.0.1:2380$m" \
            --listen-client-urls "http://127.0.0.1:2379$m" --advertise-client-urls "http://127.0.0.1:2379$m" \
            --initial-cluster "$cluster" --initial-cluster-state new >"$etcd_dir/m$m.log" 2>&1 &
    done
    for _ in $(seq 1 100); do
        ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23791 endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
    # A watch on every member, each event stamped as it arrives.
    for m in 1 2 3; do
        # Each event prints its type, key and value on lines of their own; the values
        # are the round numbers.
        ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:2379$m" watch bench |
            while read -r line; do
                [[ $line =~ ^[0-9]+$ ]] && echo "$line $(date +%s%6N)"
            done >"$etcd_dir/watch-$m" &
    done
    sleep 1
    for round in $(seq 1 "$rounds"); do
        echo "$round $(date +%s%6N)" >>"$etcd_dir/sent"
        ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23791 put bench "$round" >/dev/null
        sleep 0.5
    done
    sleep 1
    for m in 2 3; do
        while read -r value at; do
            written=$(awk -v v="$value" '$1 == v { print $2; exit }' "$etcd_dir/watch-1")
            [[ -n $written ]] && echo $((at - written))
        done <"$etcd_dir/watch-$m" >>"$etcd_samples"
    done
    while read -r value sent; do
        last=$(awk -v v="$value" '$1 == v { print $2 }' "$etcd_dir/watch-2" "$etcd_dir/watch-3" | sort -n | tail -1)
        [[ -n $last ]] && echo $((last - sent))
    done <"$etcd_dir/sent" >>"$etcd_total"
    pkill -f "etcd --name m[123] --data-dir $etcd_dir" || true
    pkill -f "etcdctl --endpoints=http://127.0.0.1:2379[123] watch bench" || true
    rm -rf "$etcd_dir"
    baseline="$(percentiles <"$etcd_samples")"
    baseline_total="$(percentiles <"$etcd_total")"
fi

echo "| change | from the writer holding it to each other node: p50 / p99 / max | from the command to all three: p50 / p99 / max |"
echo "|---|---|---|"
echo "| Parley: \`parley scale\` on a node that does not own the workload | $(percentiles <"$parley_samples") | $(percentiles <"$parley_total") |"
echo "| etcd 3.4, three members on loopback: \`etcdctl put\`, seen by a watch on each member (baseline) | $baseline | $baseline_total |"
