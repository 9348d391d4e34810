#!/usr/bin/env bash
# Builds Parley's registry-free test image, localhost/parley-test:latest, for the user who
# runs this script: a root filesystem holding Debian's static busybox and its applet links,
# imported with `podman import`. The tests and the demo both use it.
#
#   scripts/make-test-image.sh [--force]
set -euo pipefail

IMAGE=localhost/parley-test:latest
BUSYBOX=${BUSYBOX:-/bin/busybox}

if [[ "${1:-}" != "--force" ]] && podman image exists "$IMAGE" 2>/dev/null; then
    echo "make-test-image: $IMAGE already present"
    exit 0
fi
if ! "$BUSYBOX" --list >/dev/null 2>&1; then
    echo "make-test-image: $BUSYBOX is missing or not a static busybox; install Debian's busybox-static" >&2
    exit 1
fi
# ldd exits non-zero for a static binary, which is what we want; read its words instead.
ldd_says=$(ldd "$BUSYBOX" 2>&1 || true)
if ! grep -q "not a dynamic executable" <<<"$ldd_says"; then
    echo "make-test-image: $BUSYBOX is dynamically linked; install busybox-static" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/etc"
cp "$BUSYBOX" "$work/rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ -e "$work/rootfs/bin/$applet" ]] || ln -s busybox "$work/rootfs/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$work/rootfs/etc/passwd"
echo "root:x:0:" > "$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
podman import --quiet --change 'CMD=["/bin/sh"]' --change 'ENV=PATH=/bin' \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
echo "make-test-image: built $IMAGE"
