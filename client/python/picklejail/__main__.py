"""python3 -m picklejail convert|inspect|load: the client's operations from a shell.

Mostly for checking a setup (is the daemon used? does this file load?); the
`picklejail` executable is the full command line tool.
"""

import argparse
import importlib.util
import json
import os
import sys

from . import api
from .errors import PicklejailError


def _common(parser):
    parser.add_argument("--policy", help="policy name (default: weights)")
    parser.add_argument("--select", action="append", metavar="NAME",
                        help="only tensors with this name or name prefix (repeatable)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", help="daemon socket (default: $PICKLEJAIL_SOCKET or "
                       "/run/picklejail/picklejail.sock)")
    where.add_argument("--local", action="store_true",
                       help="never use a daemon: run the local picklejail command")


def _socket(args):
    return False if args.local else args.socket


def _flatten(value, prefix=""):
    """(name, value) for every array-like leaf, named as picklejail names tensors."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        yield prefix or "tensor", value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{index}" if prefix else str(index))
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from _flatten(vars(value), prefix)


def _dtype_name(value):
    return str(value.dtype).replace("torch.", "")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m picklejail", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="write a checkpoint as safetensors")
    convert.add_argument("input")
    convert.add_argument("output", nargs="?", help="default: input with .safetensors")
    _common(convert)
    inspect = commands.add_parser("inspect", help="print format, globals and tensors as JSON")
    inspect.add_argument("input")
    _common(inspect)
    load = commands.add_parser("load", help="load and list every tensor's name, dtype and shape")
    load.add_argument("input")
    load.add_argument("--backend", choices=("torch", "numpy"), default=None,
                      help="default: torch if importable, else numpy")
    _common(load)
    args = parser.parse_args(argv)

    try:
        if args.command == "convert":
            output = args.output or os.path.splitext(args.input)[0] + ".safetensors"
            summary = api.convert(args.input, output, policy=args.policy, socket=_socket(args),
                                  select=args.select)
            print(json.dumps(summary))
        elif args.command == "inspect":
            report = api.inspect(args.input, policy=args.policy, socket=_socket(args),
                                 select=args.select)
            print(json.dumps(report, indent=2))
        else:
            backend = args.backend or _default_backend()
            value = api.load(args.input, policy=args.policy, socket=_socket(args),
                             select=args.select, backend=backend)
            for name, tensor in _flatten(value):
                extra = "  parameter" if type(tensor).__name__ == "Parameter" else ""
                print(f"{name}\t{_dtype_name(tensor)}\t{list(tensor.shape)}{extra}")
    except PicklejailError as error:
        print(f"picklejail: {error}", file=sys.stderr)
        return 1
    return 0


def _default_backend():
    return "torch" if importlib.util.find_spec("torch") is not None else "numpy"


if __name__ == "__main__":
    sys.exit(main())
