#!/usr/bin/env bash
# Parley's main job with embedded defaults, on one machine: prepares the host, builds
# parley, and starts a small mesh of three agents as an unprivileged user — each with its
# own identity in one trust domain, its own QUIC port on loopback, its own state and its
# own rootless Podman storage, as if on three hosts. Then it runs a 3-replica workload,
# which the agents place by negotiation on three distinct nodes, and shows `parley nodes`
# and `parley ps`. The agents keep running afterwards; the script prints how to use and
# stop them. Running it again reuses what is there.
#
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -eq 0 ]]; then
    user=${PARLEY_DEMO_USER:-parley-demo}
    bash scripts/setup-host.sh --user "$user"
else
    user=$(id -un)
    sudo bash scripts/setup-host.sh --user "$user"
fi
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)

echo "== building parley (release)"
cargo build --release --locked -p parley-agent
# The user may not be able to read this checkout (e.g. under /root): install the binary
# where everyone can.
if [[ $EUID -ne 0 ]]; then
    sudo install -m 0755 target/release/parley /usr/local/bin/parley
else
    install -m 0755 target/release/parley /usr/local/bin/parley
fi

as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
            PATH=/usr/local/bin:/usr/bin:/bin "$@"
    else
        "$@"
    fi
}

demo=$home/parley-demo
nodes=(1 2 3)
first_port=7946
socket_of() { echo "/run/user/$uid/parley/node-$1.sock"; }
parley_on() { local n=$1; shift; as_user env PARLEY_API_SOCKET="$(socket_of "$n")" parley "$@"; }
as_user mkdir -p "$demo" "/run/user/$uid/parley"

echo "== identities: trust domain demo.local, one node identity each (ECQV, keys stay put)"
if [[ ! -f $demo/root/root.key ]]; then
    as_user parley identity --dir "$demo/root" init --trust-domain demo.local
fi
for n in "${nodes[@]}"; do
    dir=$demo/node-$n
    if [[ ! -f $dir/identity/node.cert ]]; then
        as_user parley identity --dir "$dir/identity" request --id "spiffe://demo.local/node/node-$n" \
            >"$demo/node-$n.request.json"
        as_user parley identity --dir "$demo/root" issue "$demo/node-$n.request.json" --ttl 30d \
            >"$demo/node-$n.response.json"
        as_user parley identity --dir "$dir/identity" accept "$demo/node-$n.response.json"
    fi
done

echo "== container storage: one per node, as on separate hosts"
image_archive=$demo/parley-test.tar
[[ -f $image_archive ]] || as_user podman save -q -o "$image_archive" localhost/parley-test:latest
driver=$(as_user podman info --format '{{.Store.GraphDriverName}}')
for n in "${nodes[@]}"; do
    dir=$demo/node-$n
    # Rootless Podman reads its storage settings from $XDG_CONFIG_HOME/containers.
    if [[ ! -f $dir/config/containers/storage.conf ]]; then
        as_user mkdir -p "$dir/config/containers"
        as_user sh -c "printf '[storage]\ndriver = \"%s\"\ngraphroot = \"%s\"\nrunroot = \"%s\"\n' \
            '$driver' '$dir/storage' '/run/user/$uid/parley-demo-node-$n' >'$dir/config/containers/storage.conf'"
    fi
    if ! as_user env XDG_CONFIG_HOME="$dir/config" podman image exists localhost/parley-test:latest; then
        as_user env XDG_CONFIG_HOME="$dir/config" podman load -q -i "$image_archive" >/dev/null
    fi
done

echo "== starting three agents (logs: $demo/node-N/agent.log)"
zones=(zone-a zone-b zone-c)
for n in "${nodes[@]}"; do
    dir=$demo/node-$n
    if parley_on "$n" status >/dev/null 2>&1; then
        echo "node-$n is already running"
        continue
    fi
    port=$((first_port + n - 1))
    join=()
    [[ $n -eq 1 ]] || join=(--join "127.0.0.1:$first_port")
    as_user env XDG_CONFIG_HOME="$dir/config" sh -c "nohup parley --api-socket '$(socket_of "$n")' agent \
        --node-name node-$n --data-dir '$dir/data' --identity-dir '$dir/identity' \
        --podman-socket '$dir/podman.sock' --listen 127.0.0.1:$port --label zone=${zones[$((n - 1))]} \
        ${join[*]} >>'$dir/agent.log' 2>&1 &"
    for _ in $(seq 1 150); do
        parley_on "$n" status >/dev/null 2>&1 && break
        sleep 0.2
    done
    parley_on "$n" status >/dev/null || { echo "node-$n did not start; its log:" >&2; tail -20 "$dir/agent.log" >&2; exit 1; }
done

echo "== waiting for the three to find each other"
for _ in $(seq 1 150); do
    alive=$(parley_on 1 nodes -o json | grep -c '"state": "alive"' || true)
    [[ $alive -ge 3 ]] && break
    sleep 0.2
done
parley_on 1 nodes

echo "== parley run hello --replicas 3 (on node-1; the agents negotiate where each replica runs,"
echo "   and run waits until all three do)"
if ! parley_on 1 ps -o json | grep -q '"name": "hello"'; then
    parley_on 1 run hello --image localhost/parley-test:latest --replicas 3 --env GREETING=hello \
        --stop-timeout 2 -- sh -c 'while true; do echo "$GREETING from parley"; sleep 5; done'
fi
echo "== parley ps (on node-1, which owns the workload)"
parley_on 1 ps
echo "== parley ps (on node-3: every replica, as the node running it reports it)"
parley_on 3 ps

cat <<EOT

Three agents run as $user, one per "host" (node-1..3), each with its own socket:
  PARLEY_API_SOCKET=$(socket_of 1) parley ps        (as $user; node-2, node-3 likewise)
  parley nodes · parley rm hello · parley events · parley status
As root: runuser -u $user -- env XDG_RUNTIME_DIR=/run/user/$uid PARLEY_API_SOCKET=$(socket_of 1) parley ps
Stop them with: pkill -u $user -TERM -f 'parley --api-socket'
EOT
