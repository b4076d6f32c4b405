"""A file system that runs out of room under the output fails the conversion
with io_error and a message, never with SIGBUS: the worker allocates the
output's pages before it writes through its mapping (one checked
MADV_POPULATE_WRITE per window or chunk, or fallocate up front where the kernel
lacks that call; sandbox/output_pages.hpp), and sendfile reports ENOSPC itself.

Each case mounts a small tmpfs in a private mount namespace (root only) and
converts onto it with the local sandbox. These are the cases that need torch to
write their checkpoint; the header and small tensors onto a full tmpfs, on both
allocation paths, are ctest's convert_onto_full_tmpfs*.
"""

import os
import shutil
import subprocess

import pytest
import torch

from conftest import CONVERT_TIMEOUT_S

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="mounting a tmpfs needs root and unshare (util-linux)")

@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """48 MiB in 1 MiB tensors: verbatim runs the worker's two threads share."""
    path = tmp_path_factory.mktemp("large") / "large.pt"
    torch.save({f"w{i}": torch.full((262144,), float(i)) for i in range(48)}, path)
    return path


def convert_onto_tmpfs(picklejail_bin, checkpoint, mount, size):
    """`picklejail convert --local` onto a fresh tmpfs of `size` at `mount`; the
    CompletedProcess and the output's bytes (None when absent)."""
    mount.mkdir()
    script = ('mount -t tmpfs -o size="$1" picklejail-test "$2" && "$3" convert --local "$4" "$2/out.st"'
              ' ; status=$?; cat "$2/out.st" 2>/dev/null >"$5"; exit $status')
    copy = mount.parent / f"{mount.name}.copy"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", size,
         str(mount), str(picklejail_bin), str(checkpoint), str(copy)],
        capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    output = copy.read_bytes() if copy.exists() and copy.stat().st_size else None
    return result, output


def assert_clean_failure(result, output, pattern):
    assert result.returncode == 1, (result.returncode, result.stderr)  # an error, not a signal
    assert result.stderr.startswith("picklejail: io_error: local sandbox: "), result.stderr
    assert any(p in result.stderr for p in pattern), result.stderr
    assert output is None  # nothing half-written left at the destination


def test_shared_verbatim_copy_onto_a_full_tmpfs(picklejail_bin, tmp_path, large):
    result, output = convert_onto_tmpfs(picklejail_bin, large, tmp_path / "mnt", "16m")
    assert_clean_failure(result, output, ("No space left on device",  # sendfile
                                          "cannot allocate"))  # the copy thread's populate


def test_shared_verbatim_copy_onto_a_tmpfs_with_room(picklejail_bin, tmp_path, large):
    reference = tmp_path / "reference.st"
    subprocess.run([str(picklejail_bin), "convert", "--local", str(large), str(reference)],
                   check=True, capture_output=True, timeout=CONVERT_TIMEOUT_S)
    result, output = convert_onto_tmpfs(picklejail_bin, large, tmp_path / "mnt", "64m")
    assert result.returncode == 0, result.stderr
    assert output == reference.read_bytes()
