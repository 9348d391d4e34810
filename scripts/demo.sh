#!/usr/bin/env bash
# Parley's main job with embedded defaults, on one machine: prepares the host, builds
# parley, starts an agent as an unprivileged user with that user's rootless Podman, runs a
# sample workload and shows `parley ps`. The agent keeps running afterwards; the script
# prints how to use and stop it.
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
bin_dir=/usr/local/bin
if [[ $EUID -ne 0 ]]; then
    sudo install -m 0755 target/release/parley "$bin_dir/parley"
else
    install -m 0755 target/release/parley "$bin_dir/parley"
fi

as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
            PATH=/usr/local/bin:/usr/bin:/bin "$@"
    else
        "$@"
    fi
}

socket=/run/user/$uid/parley/parley.sock
log=$home/parley-agent.log
if as_user parley status >/dev/null 2>&1; then
    echo "== an agent is already running for $user"
else
    echo "== starting the agent as $user (log: $log)"
    as_user sh -c "nohup parley agent >>'$log' 2>&1 &"
    for _ in $(seq 1 100); do
        [[ -S $socket ]] && as_user parley status >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
as_user parley status

echo "== parley run hello"
if ! as_user parley ps -o json | grep -q '"name": "hello"'; then
    as_user parley run hello --image localhost/parley-test:latest --env GREETING=hello \
        --stop-timeout 2 -- sh -c 'while true; do echo "$GREETING from parley"; sleep 5; done'
fi
echo "== parley ps"
as_user parley ps

cat <<EOT

The agent runs as $user. Try, as that user (e.g. \`runuser -u $user -- env XDG_RUNTIME_DIR=/run/user/$uid bash\`):
  parley ps -o json        parley rm hello        parley status
Stop the agent with: pkill -u $user -TERM -f 'parley agent'
EOT
