#!/usr/bin/env bash
# Prepares a Debian 12 host for Parley: installs what is missing, creates an unprivileged
# user for rootless Podman, builds the test image for that user, and works around the
# host quirks it detects (never assumes). Run as root; scripts/demo.sh and scripts/test.sh
# call it for you.
#
#   scripts/setup-host.sh --user NAME
set -euo pipefail

user=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --user) user="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "setup-host: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n "$user" ]] || { echo "setup-host: --user NAME is required" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "setup-host: run as root (or with sudo)" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
say() { echo "setup-host: $*"; }

# 1. Packages. Only what is missing is installed, so a prepared host costs nothing.
# iproute2, nftables and iptables: the end-to-end tests' network test bed (namespaces,
# veth pairs, links cut by nftables rules, and, since these kernels have no netem, delays
# made by holding packets in an NFQUEUE, which only iptables' rule reaches here).
packages=(podman runc uidmap slirp4netns fuse-overlayfs busybox-static iproute2 nftables iptables systemd gcc pkg-config)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    say "cargo is missing: install a Rust toolchain (1.95 or newer) with rustup, https://rustup.rs" >&2
    exit 1
fi

# 2. The rootless user, with subordinate id ranges (useradd -m allots them on Debian 12).
if ! id "$user" >/dev/null 2>&1; then
    say "creating user $user for rootless Podman"
    useradd -m -s /bin/bash "$user"
fi
if ! grep -q "^$user:" /etc/subuid || ! grep -q "^$user:" /etc/subgid; then
    say "giving $user subordinate uid/gid ranges"
    usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$user"
fi
uid=$(id -u "$user")
# Without a login session manager nobody creates the user's runtime directory.
runtime_dir=/run/user/$uid
if [[ ! -d "$runtime_dir" ]]; then
    say "creating $runtime_dir"
    install -d -m 0700 -o "$user" -g "$(id -gn "$user")" "$runtime_dir"
fi

as_user() {
    runuser -u "$user" -- env -i HOME="$(getent passwd "$user" | cut -d: -f6)" \
        XDG_RUNTIME_DIR="$runtime_dir" PATH=/usr/local/bin:/usr/bin:/bin "$@"
}

# 3. /dev/net/tun must be usable by unprivileged users for slirp4netns (rootless
#    networking); some hosts ship it as 0600.
if [[ -c /dev/net/tun ]] && [[ "$(stat -c %a /dev/net/tun)" != "666" ]]; then
    say "/dev/net/tun is mode $(stat -c %a /dev/net/tun); setting 0666 so rootless networking works"
    chmod 0666 /dev/net/tun
fi

# 4. The registry-free test image, in the user's own storage.
tmp_script=$(mktemp /tmp/parley-make-test-image.XXXXXX.sh)
trap 'rm -f "$tmp_script"' EXIT
install -m 0755 "$here/make-test-image.sh" "$tmp_script"
as_user bash "$tmp_script"

# 5. Probe a real rootless container and fix what the errors point at, each fix in its own
#    containers.conf drop-in so that an administrator sees (and can undo) exactly it.
dropin_dir=/etc/containers/containers.conf.d
probe() { as_user podman run --rm --network none localhost/parley-test:latest true 2>&1; }
for attempt in 1 2 3 4; do
    if out=$(probe); then
        say "rootless Podman works for $user"
        break
    fi
    if [[ $attempt -eq 4 ]]; then
        say "rootless Podman still fails after the fixes above:" >&2
        echo "$out" >&2
        exit 1
    fi
    mkdir -p "$dropin_dir"
    if grep -q "hybrid mode" <<<"$out" && [[ ! -f $dropin_dir/50-parley-runc.conf ]]; then
        say "crun cannot run on this cgroup layout; using runc ($dropin_dir/50-parley-runc.conf)"
        printf '# Written by parley scripts/setup-host.sh: crun failed ("cgroups in hybrid mode").\n[engine]\nruntime = "runc"\n' \
            > "$dropin_dir/50-parley-runc.conf"
    elif grep -qi "setrlimit" <<<"$out" && [[ ! -f $dropin_dir/51-parley-ulimits.conf ]]; then
        hard=$(ulimit -Hn)
        say "default ulimits exceed the host's hard limit ($hard); lowering them ($dropin_dir/51-parley-ulimits.conf)"
        printf '# Written by parley scripts/setup-host.sh: setrlimit failed.\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=1024:1024"]\n' \
            "$hard" "$hard" > "$dropin_dir/51-parley-ulimits.conf"
    else
        say "rootless Podman does not work for $user and no known fix applies:" >&2
        echo "$out" >&2
        exit 1
    fi
done
if ! out=$(as_user podman run --rm localhost/parley-test:latest true 2>&1); then
    say "warning: containers with default (slirp4netns) networking fail: $out" >&2
fi
