"""What the caller handed us as the checkpoint: a path, or something we can pass as an fd.

A path is passed as a path (the daemon opens it with the caller's own
credentials, and can cache by it). An open regular file positioned at its
start is passed as its fd, so nothing is copied. Anything else that torch.load
accepts (io.BytesIO, a pipe, a file positioned past its start) is read once
into an anonymous memfd, which is a regular file both the daemon and the
local worker accept.
"""

import io
import os
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Source:
    path: Optional[str]  # absolute path, or None when the checkpoint is `fd`
    fd: Optional[int]
    name: str            # for messages and the CLI's positional argument


def _passable_fd(f):
    """f's fd if it is a regular file at offset 0 (the worker reads the whole file), else None."""
    try:
        fd = f.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode) or f.tell() != 0:
            return None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd


@contextmanager
def open_source(f):
    """A Source for `f`: a str / os.PathLike path, or a binary file object."""
    if isinstance(f, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(f))
        yield Source(path=os.path.abspath(path), fd=None, name=os.path.abspath(path))
        return
    if not hasattr(f, "read"):
        raise TypeError(f"expected a path or a binary file object, not {type(f).__name__}")
    if isinstance(f, io.TextIOBase):
        raise TypeError("the file object must be opened in binary mode")
    fd = _passable_fd(f)
    if fd is not None:
        yield Source(path=None, fd=fd, name=f"<fd {fd}>")
        return
    copy = os.memfd_create("picklejail-input", os.MFD_CLOEXEC)
    try:
        with open(copy, "wb", closefd=False) as out:
            try:
                shutil.copyfileobj(f, out)
            except TypeError:
                raise TypeError("the file object must be opened in binary mode") from None
        yield Source(path=None, fd=copy, name="<memory>")
    finally:
        os.close(copy)
