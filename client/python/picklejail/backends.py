"""Turning a checked image into torch tensors or numpy arrays, without copying.

Each backend makes one array over the whole data section (torch.frombuffer /
numpy.frombuffer of the mapping) and gives every stored tensor a slice of it,
viewed as its dtype and reshaped. The mapping is private and writable, so the
results are ordinary writable tensors; they keep the mapping alive.

The rebuilder then asks for one object per tensor *id* in the description:
the first id that uses a stored tensor gets it, later ids get a new object over
the same memory, and nodes sharing an id share the object. `tensor(array,
node, shared)` takes the tensor node for its flags (None: no flags); with no
flags and not shared it returns `array` itself, which the rebuilder relies on
to hand out a whole state dict without a call per tensor.
"""

import itertools
import operator
import sys

from .errors import Malformed, Unsupported


def make_builder(backend, map_location):
    """The builder for `backend` ("torch" or "numpy"); checks map_location up front."""
    if backend == "torch":
        return TorchBuilder(map_location)
    if backend == "numpy":
        return NumpyBuilder(map_location)
    raise ValueError(f"backend must be 'torch' or 'numpy', not {backend!r}")


class NumpyBuilder:
    """numpy arrays; bfloat16 and float8 come back as raw uint16 / uint8 arrays of their bits.

    torch.dtype and torch.device values in the object become their names (str),
    torch.Size becomes a tuple, and Parameter / requires_grad are not represented.
    """

    name = "numpy"

    def __init__(self, map_location):
        try:
            import numpy
        except ImportError:
            raise ImportError("backend='numpy' needs numpy") from None
        self._np = numpy
        if not _only_cpu(map_location):
            raise ValueError(f"backend='numpy' keeps arrays in host memory; map_location "
                             f"{map_location!r} asks for another device")

    def stored_arrays(self, image):
        np = self._np
        if image.data_size:
            base = np.frombuffer(image.buffer, dtype=np.uint8, count=image.data_size,
                                 offset=image.data_offset)
        else:
            base = np.empty(0, dtype=np.uint8)
        return {name: base[e.begin:e.end].view(np.dtype(e.dtype.numpy)).reshape(e.shape)
                for name, e in image.tensors.items()}

    def tensor(self, array, node, shared):
        return array.view() if shared else array

    def dtype(self, name):
        return name

    def device(self, spec):
        return spec

    def size(self, items):
        return tuple(items)


def _only_cpu(map_location):
    if map_location is None:
        return True
    if isinstance(map_location, dict):
        return all(str(v) == "cpu" for v in map_location.values())
    return not callable(map_location) and str(map_location) == "cpu"


class TorchBuilder:
    """torch tensors, placed as `map_location` says (the same forms torch.load takes)."""

    name = "torch"

    def __init__(self, map_location):
        try:
            import torch
        except ImportError:
            raise ImportError("backend='torch' needs torch; use backend='numpy' without it") from None
        if sys.byteorder != "little":
            raise Unsupported("unsupported", "torch.frombuffer reads native byte order and the "
                              "image is little-endian; use backend='numpy' on this host")
        self._torch = torch
        self._placement = Placement(torch, map_location)
        self.cuda_loader = None  # a cuda.CudaLoader; None: the process's shared one

    @property
    def torch(self):
        """The torch module (tensor_kinds.py builds sparse/quantized/meta tensors with it)."""
        return self._torch

    def _torch_dtype(self, entry):
        dtype = getattr(self._torch, entry.dtype.torch_name, None)
        if not isinstance(dtype, self._torch.dtype):
            raise Unsupported("unsupported", f"tensor {entry.name!r} is {entry.dtype.torch_name}, "
                              f"which torch {self._torch.__version__} does not have; "
                              "backend='numpy' gives its raw bytes")
        return dtype

    def stored_arrays(self, image):
        torch = self._torch
        dtypes = {}  # safetensors name -> torch dtype, checked once per dtype
        for entry in image.tensors.values():
            if entry.dtype.torch_name not in dtypes:
                dtypes[entry.dtype.torch_name] = self._torch_dtype(entry)
        base = None
        if image.data_size:
            base = torch.frombuffer(image.buffer, dtype=torch.uint8, count=image.data_size,
                                    offset=image.data_offset)
        out = {}
        for run in _dtype_runs(image.in_data_order):
            dtype = dtypes[run[0].dtype.torch_name]
            self._build_run(image, base, dtype, run, out)
        # Tensors are built on the CPU; only those whose saved location maps
        # elsewhere move (checked per distinct location, not per tensor).
        devices = image.devices
        moving = {saved for saved in set(devices.values()) | {"cpu"}
                  if self._placement.target(saved).type != "cpu"}
        if moving:
            out.update(self._to_cuda(image, devices, moving))
            for name in out:
                saved = devices.get(name, "cpu")
                if saved in moving and self._placement.target(saved).type != "cuda":
                    out[name] = self._placement.move(out[name], saved)
        return out

    def _to_cuda(self, image, devices, moving):
        """Tensors whose target is a CUDA device: one allocation per device (cuda.py)."""
        targets = {saved: str(self._placement.target(saved)) for saved in moving
                   if self._placement.target(saved).type == "cuda"}
        if not targets:
            return {}
        from . import cuda  # only loads that ask for a CUDA device pay for importing it
        loader = self.cuda_loader or cuda.shared_loader(self._torch)
        return loader.place(image, lambda entry: targets.get(devices.get(entry.name, "cpu"), "cpu"))

    def _build_run(self, image, base, dtype, run, out):
        """Tensors for consecutive entries of one dtype: one typed view of their bytes, split."""
        size = run[0].dtype.size
        begin, end = run[0].begin, run[-1].end
        if begin == end:  # nothing but empty tensors: no bytes to share
            for entry in run:
                out[entry.name] = self._torch.empty(entry.shape, dtype=dtype)
            return
        if begin % size != 0:
            # view(dtype) needs the offset to be a multiple of the element size;
            # picklejail aligns every dtype except complex128 (sorted as F64).
            for entry in run:
                out[entry.name] = self._torch.frombuffer(
                    image.buffer, dtype=dtype, count=entry.numel,
                    offset=image.data_offset + entry.begin).reshape(entry.shape)
            return
        pieces = base[begin:end].view(dtype).split(list(map(_NUMEL, run)))
        out.update(zip(map(_NAME, run), pieces))  # right for 1-D tensors, the usual case
        for entry in run:
            if len(entry.shape) != 1:
                out[entry.name] = out[entry.name].view(entry.shape)

    def tensor(self, tensor, node, shared):
        if not shared and (node is None or len(node) == 3):  # {"tensor", "id", "dtype"}
            return tensor  # no flags to apply
        torch = self._torch
        if shared:  # another pickled tensor object over the same bytes
            tensor = tensor.detach()
        if node is None:
            return tensor
        requires_grad = node.get("requires_grad", False)
        try:
            if node.get("parameter", False):
                return torch.nn.Parameter(tensor, requires_grad=requires_grad)
            if requires_grad:
                tensor.requires_grad_(True)
        except RuntimeError as error:  # e.g. requires_grad on an integer tensor
            raise Malformed("malformed", f"tensor {node['tensor']!r}: {error}") from None
        return tensor

    def dtype(self, name):
        dtype = getattr(self._torch, name, None)
        if not isinstance(dtype, self._torch.dtype):
            raise Unsupported("unsupported", f"torch {self._torch.__version__} has no dtype {name}")
        return dtype

    def device(self, spec):
        try:
            return self._torch.device(spec)
        except (RuntimeError, ValueError) as error:
            raise Malformed("malformed", f"bad device {spec!r}: {error}") from None

    def size(self, items):
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in items):
            raise Malformed("malformed", f"torch.Size of non-integers {items!r}")
        return self._torch.Size(items)


_NAME, _NUMEL, _DTYPE = (operator.attrgetter(a) for a in ("name", "numel", "dtype"))


def _dtype_runs(entries):
    """Split entries (in data order) into runs of consecutive entries of one dtype."""
    return [list(run) for _, run in itertools.groupby(entries, _DTYPE)]


class Placement:
    """torch.load's map_location, applied to tensors after they are built.

    Forms: None (where it was saved), a device string or torch.device, a dict
    {saved location: location}, or a callable(storage, location). The callable
    is called once per saved location with an *empty* CPU storage, and only the
    device of what it returns is used (None keeps the saved location), so the
    usual `lambda storage, loc: storage` and `storage.cuda(i)` work without
    copying the whole checkpoint through it.

    The saved location is the tensor node's "device" when the description has
    one, else "cpu".
    """

    def __init__(self, torch, map_location):
        self._torch = torch
        self._map = map_location
        self._targets = {}
        if map_location is None or callable(map_location):
            return
        if isinstance(map_location, dict):
            self._map = {str(k): str(v) for k, v in map_location.items()}
            for location in self._map.values():
                self._device(location)
        elif isinstance(map_location, (str, torch.device)):
            self._map = str(self._device(map_location))
        else:
            raise TypeError(f"map_location must be None, a str, a torch.device, a dict or a "
                            f"callable, not {type(map_location).__name__}")

    def _device(self, location):
        try:
            return self._torch.device(location)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"map_location {location!r} is not a device: {error}") from None

    def target(self, saved):
        if saved not in self._targets:
            self._targets[saved] = self._device(self._resolve(saved))
        return self._targets[saved]

    def _resolve(self, saved):
        if self._map is None:
            return saved
        if isinstance(self._map, str):
            return self._map
        if isinstance(self._map, dict):
            return self._map.get(saved, saved)
        empty = self._torch.empty(0, dtype=self._torch.uint8)
        storage = empty.untyped_storage() if hasattr(empty, "untyped_storage") else empty.storage()
        result = self._map(storage, saved)
        if result is None:
            return saved
        device = getattr(result, "device", None)
        if device is None:
            raise TypeError(f"map_location callable returned {type(result).__name__}, "
                            "not a storage or None")
        return str(device)

    def move(self, tensor, saved):
        """`tensor` (built on the CPU) where the saved location `saved` maps to."""
        target = self.target(saved)
        return tensor if target.type == "cpu" else tensor.to(target)
