"""load, convert and inspect: the daemon when one is reachable, else the local sandbox.

Both paths run the same confined worker and give the same results; which one
served a request shows only in error messages ("daemon /run/...: ..." or
"local sandbox (picklejail convert): ..."), so an operator can tell where a
failure happened.
"""

import contextlib
import gc
import os
import tempfile

from .backends import make_builder
from .errors import Unavailable, failing_as
from .image import parse_image
from .local import LocalSandbox, find_executable
from .mapped import MappedFileBuilder, map_checked_file, source_for_mapping
from .rebuild import rebuild
from .source import open_source
from .transport import TRANSPORTS, DaemonConnection, Unreachable, socket_path


def _select_list(select):
    if select is None:
        return None
    if isinstance(select, str):
        return [select]
    entries = list(select)
    if not all(isinstance(entry, str) for entry in entries):
        raise TypeError("select must be a string or an iterable of strings")
    return entries


def _dispatch(f, socket, on_daemon, on_local, timeout=None):
    """Run on_daemon(connection, source) if a daemon answers, else on_local(sandbox, source).

    socket=None: $PICKLEJAIL_SOCKET or the default path; socket=False: never the daemon.
    timeout: seconds any one exchange with the daemon may wait (Timeout past it).
    Only a missing socket or a refused connection falls back to the local sandbox;
    any answer from a daemon, errors included, is final.
    """
    with open_source(f) as source:
        why_not_daemon = "socket=False"
        if socket is not False:
            try:
                connection = DaemonConnection(socket_path(socket), timeout)
            except Unreachable as error:
                why_not_daemon = str(error)
            else:
                with connection:
                    return on_daemon(connection, source)
        executable = find_executable()
        if executable is None:
            raise Unavailable("unavailable", f"no picklejail daemon ({why_not_daemon}) and no "
                              "`picklejail` executable (set $PICKLEJAIL_BIN or put it on PATH)")
        return on_local(LocalSandbox(executable), source)


def _fetch_image(f, *, policy, socket, select, transport, timeout=None):
    """(mapping of the image, which path produced it)."""
    def daemon(connection, source):
        buffer, _ = connection.load(source, policy=policy, select=select, transport=transport)
        return buffer, connection.mode

    def local(sandbox, source):
        buffer, _ = sandbox.load(source, policy=policy, select=select)
        return buffer, sandbox.mode("convert")

    return _dispatch(f, socket, daemon, local, timeout)


def _fetch_mapped(f, *, policy, socket, select, transport, timeout=None):
    """(image, its mode, mapping of the checkpoint or None) for mmap=True.

    The fd the worker reads is the fd mapped here, after the image is checked.
    """
    def daemon(connection, source):
        with source_for_mapping(source) as held:
            buffer, _ = connection.load(held, policy=policy, select=select,
                                        transport=transport, mmap=True)
            return _checked_with_file(buffer, held, select, connection.mode)

    def local(sandbox, source):
        with source_for_mapping(source) as held:
            buffer, _ = sandbox.load(held, policy=policy, select=select, mmap=True)
            return _checked_with_file(buffer, held, select, sandbox.mode("convert"))

    return _dispatch(f, socket, daemon, local, timeout)


def _checked_with_file(buffer, source, select, mode):
    with failing_as(f"client, image from {mode}"), _collector_paused():
        image = parse_image(buffer, len(buffer), select=select)
        file_map = None
        if image.file_identity is not None and image.file_tensors:
            file_map = map_checked_file(source.fd, image.file_identity)
    return image, mode, file_map


def load(f, map_location=None, *, policy=None, socket=None, backend="torch", select=None,
         transport="memfd", timeout=None, mmap=False):
    """Load a checkpoint the way `torch.load(f, weights_only=True)` does, without unpickling it.

    f: a path (str / os.PathLike) or a binary file object.
    map_location: as for torch.load (device string, torch.device, {saved: target} dict,
        or callable); tensors are built on the CPU and then moved.
    policy: the policy name ("weights" by default, "checkpoint" for training
        checkpoints holding argparse.Namespace, numpy values, ...).
    socket: the daemon's socket path (default $PICKLEJAIL_SOCKET, then
        /run/picklejail/picklejail.sock); False never uses a daemon. With no
        daemon listening, the local `picklejail` command runs the sandbox.
    backend: "torch" (tensors) or "numpy" (arrays; no torch needed).
    select: a name or list of names / prefixes: only those tensors are
        converted; others are left out of dicts and are None in lists and tuples.
    transport: how the daemon returns the image ("memfd", "shm", "inline").
    timeout: seconds to wait for the daemon at each step (connecting, sending,
        each read of the reply); None waits, bounded by the daemon's own
        per-request deadline. Past it, Timeout is raised. The local sandbox
        path is bounded by the worker's deadline instead.
    mmap: as torch.load(mmap=True): tensors stored uncompressed in a zip checkpoint
        are copy-on-write views of the file's own pages (MAP_PRIVATE), nothing
        copied; the rest is copied as usual. A file changed in place afterwards
        changes the values; one truncated raises SIGBUS on access (mapped.py).

    Raises a PicklejailError subclass (ForbiddenGlobal, Malformed, ...) on failure.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    builder = make_builder(backend, map_location)  # fail on a bad argument before any work
    select = _select_list(select)
    if mmap:
        image, mode, file_map = _fetch_mapped(f, policy=policy, socket=socket, select=select,
                                              transport=transport, timeout=timeout)
        with failing_as(f"client, image from {mode}"), _collector_paused():
            return rebuild(image, MappedFileBuilder(builder, file_map))
    buffer, mode = _fetch_image(f, policy=policy, socket=socket, select=select, transport=transport,
                                timeout=timeout)
    with failing_as(f"client, image from {mode}"):
        with _collector_paused():
            image = parse_image(buffer, len(buffer), select=select)
            loaded = rebuild(image, builder)
            del image  # freed now, by refcount: the collector resumes with less to scan
        return loaded


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector while the object is built.

    Parsing the header and the description creates a container per tensor; each
    batch of them triggers a collection that scans everything made so far, which
    doubled the client's time for 20,000 tensors. Nothing built here is cyclic
    garbage, so pausing frees nothing late.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _write_atomically(buffer, destination):
    directory = os.path.dirname(destination) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".picklejail-", suffix=".tmp")
    try:
        with open(fd, "wb") as out:
            out.write(buffer)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise


def convert(src, dst, *, policy=None, socket=None, select=None, timeout=None):
    """Write `src` as a safetensors file `dst`; returns {"output", "size", "tensors", "policy"}.

    The file is complete or absent: it is written beside `dst` and renamed into place.
    """
    select = _select_list(select)
    destination = os.path.abspath(os.fspath(dst))

    def daemon(connection, source):
        buffer, reply = connection.load(source, policy=policy, select=select)
        with failing_as(f"client, image from {connection.mode}"), _collector_paused():
            image = parse_image(buffer, len(buffer), select=select)  # never write what we would refuse
        _write_atomically(buffer, destination)
        return {"output": destination, "size": len(buffer), "tensors": len(image.tensors),
                "policy": reply.get("policy", policy or "weights")}

    def local(sandbox, source):
        return sandbox.convert(source, destination, policy=policy, select=select)

    return _dispatch(src, socket, daemon, local, timeout)


def inspect(src, *, policy=None, socket=None, select=None, timeout=None):
    """What the checkpoint holds, as `picklejail inspect --json` reports it.

    {"format", "pickle_protocol", "policy", "globals", "tensors": [{"name", "dtype",
    "shape", "bytes"}], "aliases", "output_bytes"}; the file is still converted in
    the sandbox, so a file the policy refuses raises here too.
    """
    select = _select_list(select)
    return _dispatch(
        src, socket,
        lambda connection, source: connection.inspect(source, policy=policy, select=select),
        lambda sandbox, source: sandbox.inspect(source, policy=policy, select=select), timeout)
