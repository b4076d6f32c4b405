"""Getting an image's bytes into this process without trusting whoever sent them.

A sealed memfd is the one container whose bytes can be used in place: with
F_SEAL_WRITE nobody can change them and with F_SEAL_SHRINK nobody can truncate
the file under our mapping (which would turn a read into SIGBUS). It is mapped
MAP_PRIVATE with PROT_READ|PROT_WRITE, so tensors built over it are ordinary
writable tensors whose writes go to private copy-on-write pages.

Anything else (a POSIX shm object, bytes on the socket) could still change or
shrink after we checked it, so it is copied once into private anonymous
memory, which then behaves exactly like the memfd mapping.
"""

import fcntl
import mmap
import os
import stat

from .errors import Malformed, ResourceExceeded

REQUIRED_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_SEAL_NAMES = {fcntl.F_SEAL_SEAL: "F_SEAL_SEAL", fcntl.F_SEAL_SHRINK: "F_SEAL_SHRINK",
               fcntl.F_SEAL_GROW: "F_SEAL_GROW", fcntl.F_SEAL_WRITE: "F_SEAL_WRITE"}

# The smallest safetensors image: an 8-byte length and "{}".
MIN_IMAGE_BYTES = 10


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_IMAGE_BYTES:
        raise Malformed("malformed", f"image size {size!r} is not a valid safetensors size")


def map_sealed_memfd(fd, size):
    """Map `fd` copy-on-write after checking its seals and that it holds exactly `size` bytes.

    The caller keeps ownership of `fd`; the mapping stays valid after it is closed.
    """
    _check_size(size)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Malformed("malformed", "the image fd is not a memfd (not a regular file)")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        raise Malformed("malformed",
                        f"the image fd is not a sealable memfd ({error.strerror})") from None
    missing = [name for bit, name in _SEAL_NAMES.items() if not seals & bit]
    if missing:
        raise Malformed("malformed", f"the image memfd lacks the seals {', '.join(missing)}")
    if info.st_size != size:
        raise Malformed("malformed",
                        f"the image memfd holds {info.st_size} bytes, {size} were reported")
    mapping = _map(fd, size)
    _populate_read(mapping)
    return mapping


# MADV_POPULATE_READ (Linux 5.14; Python's mmap module has no name for it).
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def _populate_read(mapping):
    """Map every page of the image now, read-only and still shared with the daemon's memfd.

    Tensors are read whole, and one call maps the 500 MB image's pages in ~11 ms
    where faulting them in during the first pass costs ~18 ms. A write fault
    would copy each page (the mapping is private), a read populate does not.
    Older kernels refuse the advice; the pages then fault in as they are read.
    """
    try:
        mapping.madvise(_MADV_POPULATE_READ)
    except OSError:
        pass


def private_memory(size):
    """Writable anonymous memory of `size` bytes, page-aligned, for copying an image into."""
    _check_size(size)
    return _map(-1, size)


def _map(fd, size):
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, OverflowError) as error:
        raise ResourceExceeded("resource_exceeded",
                               f"cannot map an image of {size} bytes: {error}") from None


def copy_fd_to_private(fd, size):
    """Copy exactly `size` bytes of the file `fd` (from offset 0) into private memory."""
    memory = private_memory(size)
    view = memoryview(memory)
    try:
        done = 0
        while done < size:
            n = os.preadv(fd, [view[done:]], done)
            if n == 0:
                raise Malformed("malformed", f"the image ended after {done} of {size} bytes")
            done += n
    finally:
        view.release()
    return memory
