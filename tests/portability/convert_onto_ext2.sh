#!/bin/sh
# convert_onto_ext2.sh PICKLEJAIL CHECKPOINT: converts CHECKPOINT onto a
# loop-mounted ext2 filesystem, which has no fallocate (glibc's
# posix_fallocate emulation there makes syscalls the worker's filter
# refuses), and checks the file is the one a conversion to /tmp gives.
# Exit 77 (skipped) only where no such filesystem can be mounted.
set -eu
picklejail=$1
checkpoint=$2

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: loop-mounting a filesystem needs root"
    exit 77
fi
# The mount lives and dies with a private mount namespace.
if [ -z "${PICKLEJAIL_IN_MOUNT_NS:-}" ]; then
    PICKLEJAIL_IN_MOUNT_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi
for tool in mkfs.ext2 fallocate; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (scripts/lib.sh TEST_PACKAGES)"; exit 1; }
done

work=$(mktemp -d)
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/mnt"
truncate -s 64M "$work/ext2.img"
mkfs.ext2 -q -F "$work/ext2.img"
if ! mount -o loop -t ext2 "$work/ext2.img" "$work/mnt" 2>"$work/mount.err"; then
    echo "SKIP: cannot loop-mount ext2 here: $(cat "$work/mount.err")"
    exit 77
fi
# The test means something only where fallocate is really refused.
if fallocate -l 4096 "$work/mnt/probe" 2>/dev/null; then
    echo "FAIL: this ext2 mount supports fallocate, so it cannot show the fallback"
    exit 1
fi

"$picklejail" convert --local "$checkpoint" "$work/reference.safetensors"
"$picklejail" convert --local "$checkpoint" "$work/mnt/out.safetensors"
cmp "$work/reference.safetensors" "$work/mnt/out.safetensors"
echo "converted onto ext2 (no fallocate): $(stat -c %s "$work/mnt/out.safetensors") bytes"
