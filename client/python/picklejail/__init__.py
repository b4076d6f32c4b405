"""picklejail: load untrusted PyTorch checkpoints without running any pickle code.

    import picklejail
    state = picklejail.load("model.pt")                  # like torch.load(..., weights_only=True)
    arrays = picklejail.load("model.pt", backend="numpy") # no torch needed
    picklejail.convert("model.pt", "model.safetensors")
    picklejail.inspect("model.pt")                        # format, globals, tensors
    with picklejail.patch_torch_load():                   # torch.load inside other code
        ...

The checkpoint is read by picklejail's restricted unpickler in a confined
worker, through the picklejaild daemon when one is listening, else through the
local `picklejail` command. See client/python/README.md in the picklejail repository.
"""

from .api import convert, inspect, load
from .errors import (Busy, Denied, ForbiddenGlobal, Internal, InvalidRequest, IoError, Malformed,
                     PicklejailError, ProtocolError, ResourceExceeded, SandboxViolation, Timeout,
                     TooLarge, Unavailable, Unsupported, WorkerCrashed)
from .patch import patch_torch_load
from .objects import ArrayKey, Global, Method, Record, state_dict
from .rebuild import GlobalRef

__version__ = "0.1.0"

__all__ = [
    "load", "convert", "inspect", "patch_torch_load", "Record", "Global", "Method", "ArrayKey",
    "state_dict", "GlobalRef",
    "PicklejailError", "ForbiddenGlobal", "Malformed", "Unsupported", "TooLarge", "Timeout",
    "SandboxViolation", "WorkerCrashed", "ResourceExceeded", "Busy", "Denied", "IoError",
    "InvalidRequest", "Internal", "ProtocolError", "Unavailable",
]
