"""Exceptions raised by the client.

Every failure that picklejail itself reports (the daemon's error reply, or the
`picklejail` command's "picklejail: CODE: message" line) becomes an instance of
the subclass for its protocol code, so callers can catch exactly the failures
they care about (`except picklejail.ForbiddenGlobal`) and still read the code
and message of any other. `mode` says which path produced the error ("daemon
/run/picklejail/picklejail.sock", "local sandbox (picklejail convert)", or the
client's own check of an image), because the same code can mean different
things to an operator depending on where it came from.
"""

import re
from contextlib import contextmanager

__all__ = [
    "PicklejailError", "ForbiddenGlobal", "Malformed", "Unsupported", "TooLarge", "Timeout",
    "SandboxViolation", "WorkerCrashed", "ResourceExceeded", "Busy", "Denied", "IoError",
    "InvalidRequest", "Internal", "ProtocolError", "Unavailable", "error_for", "parse_cli_error",
    "failing_as",
]


class PicklejailError(Exception):
    """A failure with a protocol `code` (e.g. "forbidden_global") and a `message`.

    `global_name` is the offending global for forbidden_global errors, `mode`
    the path that failed. Subclasses only fix `code`; construct them with the
    same (code, message) arguments, or use `error_for` to pick the class.
    """

    code = None

    def __init__(self, code, message, *, global_name=None, mode=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.global_name = global_name
        self.mode = mode

    def __str__(self):
        text = f"{self.code}: {self.message}"
        if self.global_name and self.global_name not in self.message:
            text += f" (global {self.global_name})"
        return f"{self.mode}: {text}" if self.mode else text

    def __reduce__(self):
        # Keep global_name and mode across pickling (multiprocessing, pytest-xdist).
        return (type(self), (self.code, self.message), dict(self.__dict__))


class ForbiddenGlobal(PicklejailError):
    """The pickle names or calls a global the policy does not allow."""
    code = "forbidden_global"


class Malformed(PicklejailError):
    """The bytes break their format's rules (checkpoint, or the image the client received)."""
    code = "malformed"


class Unsupported(PicklejailError):
    """A valid format picklejail (or this torch) does not load."""
    code = "unsupported"


class TooLarge(PicklejailError):
    """A configured limit was exceeded."""
    code = "too_large"


class Timeout(PicklejailError):
    """The worker ran past its deadline and was killed."""
    code = "timeout"


class SandboxViolation(PicklejailError):
    """The worker attempted a forbidden system call."""
    code = "sandbox_violation"


class WorkerCrashed(PicklejailError):
    """The worker died or produced an invalid image."""
    code = "worker_crashed"


class ResourceExceeded(PicklejailError):
    """The worker hit its memory or CPU limit."""
    code = "resource_exceeded"


class Busy(PicklejailError):
    """The daemon is at one of its limits; retry later."""
    code = "busy"


class Denied(PicklejailError):
    """The caller may not read the file or make the request."""
    code = "denied"


class IoError(PicklejailError):
    """The checkpoint could not be opened or read."""
    code = "io_error"


class InvalidRequest(PicklejailError):
    """The request (or the command line) was wrong: bad field, unknown policy, too long."""
    code = "invalid_request"


class Internal(PicklejailError):
    """A bug in picklejail."""
    code = "internal"


class ProtocolError(PicklejailError):
    """Client-side only: the daemon's reply broke protocol v1 (bad line, missing fd, ...)."""
    code = "protocol_error"


class Unavailable(PicklejailError):
    """Client-side only: no daemon was reachable and no `picklejail` executable was found."""
    code = "unavailable"


_BY_CODE = {cls.code: cls for cls in (
    ForbiddenGlobal, Malformed, Unsupported, TooLarge, Timeout, SandboxViolation, WorkerCrashed,
    ResourceExceeded, Busy, Denied, IoError, InvalidRequest, Internal, ProtocolError, Unavailable)}

# Messages name globals as "global os.system is not allowed ...", "global X may
# not be called (REDUCE) ...", or "defaultdict factory global X is not allowed".
_GLOBAL_IN_MESSAGE = re.compile(r"\bglobal ([A-Za-z_][\w.]*[\w])")
_CLI_ERROR_LINE = re.compile(r"^picklejail: ([a-z_]+): (.*)$")


def global_from_message(message):
    """The global a forbidden_global message names, or None."""
    match = _GLOBAL_IN_MESSAGE.search(message)
    return match.group(1) if match else None


def error_for(code, message, *, global_name=None, mode=None):
    """An instance of the subclass for `code` (PicklejailError for codes this client does not know)."""
    cls = _BY_CODE.get(code, PicklejailError)
    if cls is ForbiddenGlobal and not global_name:
        global_name = global_from_message(message)
    return cls(code, message, global_name=global_name, mode=mode)


def parse_cli_error(stderr):
    """(code, message) from a failed `picklejail` command's stderr, or None if it printed none."""
    for line in reversed(stderr.splitlines()):
        match = _CLI_ERROR_LINE.match(line.strip())
        if match:
            return match.group(1), match.group(2)
    return None


@contextmanager
def failing_as(mode):
    """Label PicklejailErrors raised inside the block that do not yet say which path failed."""
    try:
        yield
    except PicklejailError as error:
        if error.mode is None:
            error.mode = mode
        raise
