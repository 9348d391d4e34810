#!/usr/bin/env bash
# Tests the packages `packaging/build.sh` built, on this host, as root:
#
#   sudo bash packaging/test.sh --user USER
#
# .deb: installs it with apt (dpkg underneath), checks its files, modes, conffile and
# dependencies, that it enabled nothing, that the installed units pass
# `systemd-analyze verify` and `parley --version` answers; starts the installed agent as
# USER (an unprivileged user with rootless Podman and localhost/parley-test:latest, as
# scripts/setup-host.sh prepares) with the installed config file, runs a workload through
# it and removes it; then purges the package and checks that nothing it installed is left.
# .rpm: checks its file list, config files, scriptlets and requirements with rpm -qp.
#
# It refuses to run where a `parley` package is already installed (it would remove it).
set -euo pipefail
cd "$(dirname "$0")/.."

user=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --user) user="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "packaging/test: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n "$user" ]] || { echo "packaging/test: --user USER is required" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "packaging/test: run as root (it installs and purges the .deb)" >&2; exit 1; }

failures=0
say() { echo "packaging/test: $*"; }
pass() { echo "  ok: $*"; }
fail() { echo "  FAILED: $*" >&2; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND… : runs COMMAND, records pass or fail (with its output)
    local description=$1 output; shift
    if output=$("$@" 2>&1); then
        pass "$description"
    else
        fail "$description"
        [[ -z "$output" ]] || sed 's/^/    | /' <<<"$output" >&2
    fi
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
deb=$(ls target/debian/parley_"$version"-1_*.deb 2>/dev/null | head -n 1 || true)
rpm=$(ls target/generate-rpm/parley-"$version"-1.*.rpm 2>/dev/null | head -n 1 || true)
[[ -f "$deb" && -f "$rpm" ]] || {
    echo "packaging/test: no packages for version $version in target/; run bash packaging/build.sh first" >&2
    exit 1
}
if dpkg-query -W -f='${Status}' parley 2>/dev/null | grep -q installed; then
    echo "packaging/test: a parley package is installed here; remove it first (this test purges it)" >&2
    exit 1
fi

# Everything the packages must carry (path and mode), shared by the .deb and .rpm checks.
expected_files=(
    "/usr/bin/parley 755"
    "/usr/lib/systemd/user/parley.service 644"
    "/usr/lib/systemd/user/parley.socket 644"
    "/usr/lib/systemd/system/parley@.service 644"
    "/etc/parley/agent.toml 644"
    "/usr/share/bash-completion/completions/parley 644"
    "/usr/share/fish/vendor_completions.d/parley.fish 644"
    "/usr/share/man/man1/parley.1.gz 644"
    "/usr/share/man/man1/parley-run.1.gz 644"
    "/usr/share/man/man1/parley-agent.1.gz 644"
    "/usr/share/doc/parley/README.md 644"
)

# ---------------------------------------------------------------------------------------
say "== .deb: $deb"
check "dpkg-deb declares the runtime dependencies" \
    bash -c "dpkg-deb -f '$deb' Depends | grep -q 'podman' && dpkg-deb -f '$deb' Depends | grep -q 'uidmap' && dpkg-deb -f '$deb' Depends | grep -q 'slirp4netns | passt'"

enabled_before=$(find /etc/systemd -name 'parley*' 2>/dev/null | sort)
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "./$deb" >/dev/null
check "the package is installed" bash -c "dpkg-query -W -f='\${Status}' parley | grep -q 'install ok installed'"

for entry in "${expected_files[@]}"; do
    read -r path mode <<<"$entry"
    if [[ -f "$path" && "$(stat -c %a "$path")" == "$mode" ]]; then
        pass "$path is installed, mode $mode"
    else
        fail "$path is missing or not mode $mode"
    fi
done
check "zsh completions are installed" test -f /usr/share/zsh/vendor-completions/_parley
check "/etc/parley/agent.toml is a conffile" \
    bash -c "dpkg-query -W -f='\${Conffiles}' parley | grep -q /etc/parley/agent.toml"
check "the binary is stripped (no symbol table)" bash -c "! readelf -S /usr/bin/parley | grep -q '\\.symtab'"
if [[ "$(/usr/bin/parley --version)" == "parley $version" ]]; then
    pass "parley --version says $version"
else
    fail "parley --version says '$(/usr/bin/parley --version)', expected 'parley $version'"
fi
check "man finds the installed page" bash -c "zcat /usr/share/man/man1/parley-run.1.gz | grep -q 'parley\\\\-run'"
check "the installed units pass systemd-analyze verify" \
    systemd-analyze verify /usr/lib/systemd/user/parley.service /usr/lib/systemd/user/parley.socket \
    /usr/lib/systemd/system/parley@.service
enabled_after=$(find /etc/systemd -name 'parley*' 2>/dev/null | sort)
if [[ "$enabled_before" == "$enabled_after" ]]; then
    pass "installing enabled nothing (no new parley links under /etc/systemd)"
else
    fail "installing enabled something: $enabled_after"
fi

# The installed agent, as an unprivileged user, with the installed config file.
say "== the installed agent runs a workload as $user"
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
work=$(runuser -u "$user" -- mktemp -d /tmp/parley-package-test.XXXXXX)
# setpriv and env exec, so a command started in the background with this prefix is the
# process $! names (runuser forks, and would not pass SIGTERM on to the agent).
as_user=(setpriv --reuid "$user" --regid "$(id -g "$user")" --init-groups
    env -i HOME="$home" USER="$user" XDG_RUNTIME_DIR="/run/user/$uid" PATH=/usr/bin:/bin)
as_user() { "${as_user[@]}" "$@"; }
socket="$work/parley.sock"
# Names of this run's own, so that nothing left by another run (or test) is mistaken for
# what this agent starts.
node="pkg-test-$$"
workload="pkg-smoke-$$"
agent_pid=""
cleanup() {
    if [[ -n "$agent_pid" ]] && kill -0 "$agent_pid" 2>/dev/null; then
        kill -TERM "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    as_user podman rm -f -t 0 "parley-$workload-0" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"${as_user[@]}" /usr/bin/parley --api-socket "$socket" agent --node-name "$node" --data-dir "$work/data" \
    >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 120); do
    as_user /usr/bin/parley --api-socket "$socket" status >/dev/null 2>&1 && break
    kill -0 "$agent_pid" 2>/dev/null || break
    sleep 0.5
done
if as_user /usr/bin/parley --api-socket "$socket" status >/dev/null 2>&1; then
    pass "the installed agent answers on its socket"
else
    fail "the installed agent did not come up"
fi
check "the agent read the installed config file" grep -q 'config_file="/etc/parley/agent.toml"' "$work/agent.log"
check "parley run starts a workload" \
    as_user /usr/bin/parley --api-socket "$socket" run "$workload" --image localhost/parley-test:latest --stop-timeout 2 -- sleep 300
state=$(as_user podman inspect -f '{{.State.Status}}' "parley-$workload-0" 2>&1 || true)
if [[ "$state" == running ]]; then pass "its container runs in $user's rootless Podman"; else fail "its container is not running: $state"; fi
check "parley ps -o json lists it" \
    grep -q "\"$workload\"" <<<"$(as_user /usr/bin/parley --api-socket "$socket" -o json ps 2>&1)"
check "parley rm removes it" as_user /usr/bin/parley --api-socket "$socket" rm "$workload"
if as_user podman container exists "parley-$workload-0"; then fail "its container is still there"; else pass "its container is gone"; fi
kill -TERM "$agent_pid"
status=0
wait "$agent_pid" || status=$?
if [[ $status -eq 0 ]]; then pass "the agent stops cleanly on SIGTERM"; else fail "the agent exited with $status on SIGTERM"; fi
agent_pid=""
if [[ $failures -gt 0 ]]; then
    echo "  the agent's log:" >&2
    sed 's/^/    | /' "$work/agent.log" >&2
fi

# Removal: purge leaves nothing behind that the package put there.
say "== purge"
installed_paths=$(dpkg -L parley)
apt-get purge -y -qq parley >/dev/null
check "the package is gone" bash -c "! dpkg-query -W -f='\${Status}' parley 2>/dev/null | grep -q installed"
left=()
while read -r path; do
    # Shared directories (/usr, /usr/share/man/man1, …) stay; anything of Parley's must go.
    [[ "$path" == *parley* && -e "$path" ]] && left+=("$path")
done <<<"$installed_paths"
if [[ ${#left[@]} -eq 0 ]]; then
    pass "nothing of the package is left ($(wc -l <<<"$installed_paths") paths checked)"
else
    fail "left behind after purge: ${left[*]}"
fi
check "/etc/parley is gone" test ! -e /etc/parley

# ---------------------------------------------------------------------------------------
say "== .rpm: $rpm"
if ! command -v rpm >/dev/null; then
    say "installing rpm (to inspect the .rpm)"
    apt-get install -y -qq --no-install-recommends rpm >/dev/null
fi
rpm_files=$(rpm -qlp "$rpm" 2>/dev/null)
for entry in "${expected_files[@]}"; do
    read -r path _ <<<"$entry"
    if grep -qx "$path" <<<"$rpm_files"; then pass "rpm carries $path"; else fail "rpm lacks $path"; fi
done
check "rpm carries zsh completions" grep -qx /usr/share/zsh/site-functions/_parley <<<"$rpm_files"
modes=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" 2>/dev/null)
check "rpm's binary is executable (-rwxr-xr-x)" grep -qx -- '-rwxr-xr-x /usr/bin/parley' <<<"$modes"
check "rpm marks /etc/parley/agent.toml as a config file" \
    bash -c "rpm -qpc '$rpm' 2>/dev/null | grep -qx /etc/parley/agent.toml"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
check "rpm has %post, %preun and %postun scriptlets" \
    bash -c "grep -q '^postinstall scriptlet' <<<\"\$0\" && grep -q '^preuninstall scriptlet' <<<\"\$0\" && grep -q '^postuninstall scriptlet' <<<\"\$0\"" "$scripts"
if grep -Eq 'systemctl[^|;]*(enable|start)' <<<"$scripts"; then
    fail "an rpm scriptlet enables or starts something"
else
    pass "no rpm scriptlet enables or starts anything"
fi
requires=$(rpm -qpR "$rpm" 2>/dev/null)
for requirement in podman shadow-utils '(slirp4netns or passt)'; do
    if grep -qxF "$requirement" <<<"$requires"; then pass "rpm requires $requirement"; else fail "rpm does not require $requirement"; fi
done
check "rpm's name and version" bash -c "[[ \$(rpm -qp --qf '%{NAME} %{VERSION}' '$rpm' 2>/dev/null) == 'parley $version' ]]"

if [[ $failures -gt 0 ]]; then
    say "$failures check(s) FAILED"
    exit 1
fi
say "all package checks passed"
