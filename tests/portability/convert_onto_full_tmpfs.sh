#!/bin/sh
# convert_onto_full_tmpfs.sh EXPECTED CHECKPOINT COMMAND...: runs
# `COMMAND... convert --local CHECKPOINT` onto a 16 KiB tmpfs and checks the
# conversion fails with io_error and a message matching EXPECTED (an extended
# regular expression): an error, never a signal, and nothing left at the
# destination. COMMAND is picklejail, or a harness followed by picklejail.
# Exit 77 (skipped) only where no tmpfs can be mounted.
set -eu
if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: mounting a tmpfs needs root"
    exit 77
fi
# The mount lives and dies with a private mount namespace.
if [ -z "${PICKLEJAIL_IN_MOUNT_NS:-}" ]; then
    PICKLEJAIL_IN_MOUNT_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi
expected=$1
checkpoint=$2
shift 2

work=$(mktemp -d)
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/mnt"
if ! mount -t tmpfs -o size=16k picklejail-test "$work/mnt" 2>"$work/mount.err"; then
    echo "SKIP: cannot mount a tmpfs here: $(cat "$work/mount.err")"
    exit 77
fi
status=0
"$@" convert --local "$checkpoint" "$work/mnt/out.safetensors" 2>"$work/stderr" || status=$?
cat "$work/stderr"
if [ "$status" -ne 1 ]; then
    echo "FAIL: exit status $status, not 1"
    exit 1
fi
if ! grep -Eq "^picklejail: io_error: local sandbox: .*$expected" "$work/stderr"; then
    echo "FAIL: no io_error naming \"$expected\""
    exit 1
fi
if [ -n "$(ls -A "$work/mnt")" ]; then
    echo "FAIL: left behind: $(ls -A "$work/mnt")"
    exit 1
fi
echo "a full tmpfs gave io_error: $expected"
