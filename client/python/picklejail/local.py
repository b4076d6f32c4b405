"""Running the local sandboxed worker through the `picklejail` command.

Used when no daemon is reachable (or socket=False). The command confines a
fresh worker for every job exactly as the daemon does; `--local` keeps it from
going to a daemon itself, so the result really comes from where we say. The
image comes back in a memfd that we create, the command fills and seals
(`--output-fd`), and that we check and map like the daemon's. On failure the
command exits non-zero and its last stderr line is "picklejail: CODE: message".
"""

import json
import os
import shutil
import subprocess

from .errors import Internal, Unavailable, error_for, failing_as, parse_cli_error
from .memory import map_sealed_memfd

ENV_BIN = "PICKLEJAIL_BIN"
# The command prefixes messages with the path it took ("local sandbox: global ...").
_CLI_MODE_PREFIX = "local sandbox: "


def find_executable():
    """$PICKLEJAIL_BIN if set, else `picklejail` on PATH; None when there is neither."""
    explicit = os.environ.get(ENV_BIN)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise Unavailable("unavailable", f"${ENV_BIN} is {explicit!r}, which is not an executable")
        return explicit
    return shutil.which("picklejail")


class LocalSandbox:
    """The `picklejail` executable, run once per request."""

    def __init__(self, executable):
        self.executable = executable

    @staticmethod
    def mode(command):
        return f"local sandbox (picklejail {command})"

    def _run(self, command, source, positional, options, pass_fds=()):
        """Run `picklejail COMMAND`; returns stdout, raises the reported error on failure."""
        args = [self.executable, command, "--local", *options]
        fds = list(pass_fds)
        if source.fd is not None:
            args.append(f"--input-fd={source.fd}")
            fds.append(source.fd)
        args += [source.path or source.name, *positional]
        try:
            done = subprocess.run(args, pass_fds=fds, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
        except OSError as error:
            raise Unavailable("unavailable", f"cannot run {self.executable}: {error}",
                              mode=self.mode(command)) from None
        if done.returncode != 0:
            reported = parse_cli_error(done.stderr)
            if reported is None:
                status = (f"killed by signal {-done.returncode}" if done.returncode < 0
                          else f"exit status {done.returncode}")
                raise Internal("internal", f"{status} without an error line: "
                               f"{done.stderr.strip()[-500:]!r}", mode=self.mode(command))
            code, message = reported
            if message.startswith(_CLI_MODE_PREFIX):  # our mode names the path already
                message = message[len(_CLI_MODE_PREFIX):]
            raise error_for(code, message, mode=self.mode(command))
        return done.stdout

    @staticmethod
    def _options(policy, select):
        options = []
        if policy is not None:
            options.append(f"--policy={policy}")
        options += [f"--select={entry}" for entry in select or ()]
        return options

    def _summary(self, stdout):
        lines = stdout.strip().splitlines()
        try:
            summary = json.loads(lines[-1])
            if not isinstance(summary, dict):
                raise ValueError("not an object")
        except (IndexError, ValueError):
            raise Internal("internal", f"unexpected convert output {stdout[-300:]!r}",
                           mode=self.mode("convert")) from None
        return summary

    def load(self, source, *, policy=None, select=None, mmap=False):
        """Convert into a memfd; returns (the checked mapping, the command's JSON summary).

        mmap: the layout-only image of a mapped load (`convert --mmap`, mapped.py).
        """
        image = os.memfd_create("picklejail-image", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            options = ["--json", f"--output-fd={image}", *self._options(policy, select)]
            if mmap:
                options.append("--mmap")
            summary = self._summary(self._run("convert", source, [], options, pass_fds=[image]))
            with failing_as(self.mode("convert")):
                return map_sealed_memfd(image, summary.get("size")), summary
        finally:
            os.close(image)

    def convert(self, source, destination, *, policy=None, select=None):
        """Write the image to `destination` (the command writes it atomically)."""
        options = ["--json", *self._options(policy, select)]
        # Absolute, so it can never be taken for an option.
        destination = os.path.abspath(os.fspath(destination))
        return self._summary(self._run("convert", source, [destination], options))

    def inspect(self, source, *, policy=None, select=None):
        """The command's `inspect --json` report."""
        stdout = self._run("inspect", source, [], ["--json", *self._options(policy, select)])
        try:
            report = json.loads(stdout)
        except ValueError:
            raise Internal("internal", f"unexpected inspect output {stdout[-300:]!r}",
                           mode=self.mode("inspect")) from None
        return report

