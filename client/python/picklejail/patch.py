"""Routing torch.load through picklejail, for code you do not own.

    with picklejail.patch_torch_load():
        model = SomeLibrary.from_pretrained("model.bin")   # calls torch.load inside

    undo = picklejail.patch_torch_load(policy="checkpoint")
    ...
    undo()          # or undo.undo()

`torch.load` and `torch.serialization.load` are replaced for as long as the
patch is active. Code that imported the function itself earlier (`from torch
import load`) keeps the original; patch before importing such code.
"""

import functools
import pickle
import warnings

from .api import load

_IGNORED_WITHOUT_WARNING = {"weights_only", "encoding"}


def _picklejail_torch_load(options, original):
    @functools.wraps(original)
    def torch_load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None,
                   **pickle_load_args):
        # weights_only: picklejail never runs pickle code, whatever the value.
        # mmap: honoured, as picklejail.load(mmap=True) (tensors are views of the file).
        # encoding and other unpickler arguments: the restricted VM decodes
        # Python 2 strings itself; a custom pickle_module cannot be honoured
        # because nothing is unpickled in this process.
        if pickle_module is not None and pickle_module is not pickle:
            warnings.warn("picklejail: torch.load(pickle_module=...) is ignored; the checkpoint is "
                          "read by picklejail's restricted unpickler", RuntimeWarning, stacklevel=2)
        unknown = set(pickle_load_args) - _IGNORED_WITHOUT_WARNING
        if unknown:
            warnings.warn(f"picklejail: torch.load arguments {sorted(unknown)} are ignored",
                          RuntimeWarning, stacklevel=2)
        return load(f, map_location, mmap=bool(mmap), **options)

    torch_load.picklejail_patch = True
    return torch_load


# Active patches, oldest first, and what torch.load was before the first of them.
_active = []
_originals = {}


def _modules():
    import torch
    import torch.serialization
    return (torch, torch.serialization)


class TorchLoadPatch:
    """An active patch: a context manager, and callable (or .undo()) to restore torch.load."""

    def __init__(self, options):
        modules = _modules()
        if not _active:
            _originals.update({module: module.load for module in modules})
        self._replacement = _picklejail_torch_load(options, _originals[modules[0]])
        _active.append(self)
        for module in modules:
            module.load = self._replacement

    @property
    def active(self):
        return self in _active

    def undo(self):
        """Stop this patch; idempotent.

        torch.load becomes the newest patch still active, or the original once
        none is, so nested patches may be undone in any order. A torch.load that
        someone else replaced after us is left alone.
        """
        if self not in _active:
            return
        _active.remove(self)
        for module in _modules():
            if getattr(module.load, "picklejail_patch", False):
                module.load = _active[-1]._replacement if _active else _originals[module]
        if not _active:
            _originals.clear()

    __call__ = undo

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()


def patch_torch_load(*, policy=None, socket=None, select=None, timeout=None):
    """Make torch.load use picklejail.load (with these options) until undone.

    Returns a handle: use it as a context manager, or call it to undo.
    torch.load's own arguments are mapped: map_location and mmap are honoured;
    weights_only and pickle_module do not apply and are ignored.
    """
    options = {"policy": policy, "socket": socket, "select": select, "timeout": timeout}
    return TorchLoadPatch(options)
