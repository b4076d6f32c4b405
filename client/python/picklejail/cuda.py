"""Tensors straight into CUDA memory: one allocation per device, large async copies.

`map_location` naming a CUDA device used to build CPU tensors over the image's
pageable mapping and move them one by one (~8 GB/s on an H100 host, a copy
per tensor). Here, for each target device (cuda_plan.py plans it):

  * the tensors mapped there share one device allocation and are views of it
    (ties stay ties: the rebuilder hands out the same stored tensor);
  * the bytes come from pinned host memory, in large `cudaMemcpyAsync`s on a
    stream of our own, by one of two ways:
      - "register": the image mapping itself is registered with CUDA
        (`cudaHostRegister`, read-only: the memfd is sealed, and a writable
        registration of a private mapping would copy every page). Pinning
        costs about 1-2 GB/s, so this pays when the registration is kept and
        reused: a long-lived process loading a cached image (the daemon hands
        out the same memfd) keeps it within `keep_registered_bytes`;
      - "ring": a few pinned chunks, pinned once per process, which threads
        fill from the mapping (memmove releases the GIL) while the previous
        chunk's copy runs;
    "pageable" copies straight from the mapping (the driver stages it), kept
    for small images, where pinning anything costs more than it saves;
  * every device is synchronized before the tensors are returned.

The choice ("auto") goes by size and by whether a kept registration exists;
the thresholds are options because they are a property of the host
(`scripts/bench --gpu` measures both ways).

The pipeline is written against an `Engine` (allocate, stage, copy, wait) so
that the planning, staging, threading and view building also run, unchanged,
with host memory as the destination (`HostEngine`), which is how a CPU-only
machine tests all of it except the DMA itself.
"""

import ctypes
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from .cuda_plan import chunk_plan, group_by_device, memfd_identity, plan_device, split_evenly
from .errors import PicklejailError

MiB = 1 << 20
STRATEGIES = ("auto", "ring", "register", "pageable")

# cudaHostRegister flags (cuda_runtime_api.h).
_HOST_REGISTER_PORTABLE = 0x01
_HOST_REGISTER_READ_ONLY = 0x08
# CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED (cuda.h).
_ATTRIBUTE_READ_ONLY_HOST_REGISTER = 113


class CudaLoadError(PicklejailError):
    """A CUDA call failed while placing tensors (the message names the call)."""
    code = "cuda_error"


@dataclass(frozen=True)
class CudaOptions:
    strategy: str = "auto"              # "auto", "ring", "register" or "pageable"
    ring_chunk_bytes: int = 16 * MiB    # one pinned slot; a multiple of 256
    ring_slots: int = 4                 # pinned once per device: slots x chunk bytes
    fill_threads: int = 4               # threads filling one slot
    pageable_below_bytes: int = 4 * MiB  # auto: smaller images copy from pageable memory
    keep_registered_bytes: int = 0      # registrations kept between loads (0: none)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.ring_chunk_bytes <= 0 or self.ring_chunk_bytes % 256:
            raise ValueError("ring_chunk_bytes must be a positive multiple of 256")
        for name in ("ring_slots", "fill_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def choose_strategy(options, copy_bytes, have_kept_registration, can_register):
    """The way bytes reach the device for one load ("ring", "register" or "pageable")."""
    if options.strategy != "auto":
        return options.strategy
    if have_kept_registration:
        return "register"
    if copy_bytes < options.pageable_below_bytes:
        return "pageable"
    if can_register and options.keep_registered_bytes >= copy_bytes:
        return "register"  # pinned once here, then kept for the next load of this image
    return "ring"


# ---------------------------------------------------------------- engines

class CudaEngine:
    """Device memory, pinned staging, async copies on one stream per device."""

    def __init__(self, torch):
        self._torch = torch
        self._streams = {}
        self._rings = {}
        self._read_only_register = {}

    def current_index(self):
        return self._torch.cuda.current_device()

    def allocate(self, device, nbytes):
        torch = self._torch
        with torch.cuda.device(device):
            memory = torch.empty(nbytes, dtype=torch.uint8, device=device)
            # Allocated on the current stream; ours must not copy before it is ready.
            self.stream(device).wait_stream(torch.cuda.current_stream(device))
            return memory

    def stream(self, device):
        if device not in self._streams:
            self._streams[device] = self._torch.cuda.Stream(device=device)
        return self._streams[device]

    def ring(self, device, options):
        """(slots: pinned uint8 tensors, one event per slot), pinned on first use only."""
        key = (device, options.ring_chunk_bytes, options.ring_slots)
        if key not in self._rings:
            torch = self._torch
            with torch.cuda.device(device):
                pinned = torch.empty(options.ring_chunk_bytes * options.ring_slots,
                                     dtype=torch.uint8, pin_memory=True)
            slots = list(pinned.split(options.ring_chunk_bytes))
            self._rings[key] = slots
        return self._rings[key]

    def copy(self, device, destination, source):
        torch = self._torch
        with torch.cuda.device(device), torch.cuda.stream(self.stream(device)):
            destination.copy_(source, non_blocking=True)

    def mark(self, device):
        """An event after everything queued so far on the device's stream."""
        event = self._torch.cuda.Event()
        event.record(self.stream(device))
        return event

    def finish(self, devices):
        for device in devices:
            self.stream(device).synchronize()
            self._torch.cuda.synchronize(device)

    def can_register(self, device):
        index = self._torch.device(device).index or 0
        if index not in self._read_only_register:
            self._read_only_register[index] = _read_only_register_supported(index)
        return self._read_only_register[index]

    def register(self, address, nbytes):
        result = self._torch.cuda.cudart().cudaHostRegister(
            address, nbytes, _HOST_REGISTER_PORTABLE | _HOST_REGISTER_READ_ONLY)
        _check(self._torch, result, f"cudaHostRegister({nbytes} bytes, read-only)")

    def unregister(self, address):
        _check(self._torch, self._torch.cuda.cudart().cudaHostUnregister(address),
               "cudaHostUnregister")


class HostEngine:
    """The same pipeline with host memory as the destination: copies are memcpys, done at once.

    What a CPU-only machine runs the whole pipeline with (tests); the
    "devices" are named as plans name them but the memory is the CPU's.
    """

    def __init__(self, torch):
        self._torch = torch
        self._rings = {}
        self.registered = {}  # address -> bytes, as the CUDA engine would have pinned

    def current_index(self):
        return 0

    def allocate(self, device, nbytes):
        return self._torch.empty(nbytes, dtype=self._torch.uint8)

    def ring(self, device, options):
        key = (device, options.ring_chunk_bytes, options.ring_slots)
        if key not in self._rings:
            self._rings[key] = list(self._torch.empty(
                options.ring_chunk_bytes * options.ring_slots,
                dtype=self._torch.uint8).split(options.ring_chunk_bytes))
        return self._rings[key]

    def copy(self, device, destination, source):
        destination.copy_(source)

    def mark(self, device):
        return _DoneEvent()

    def finish(self, devices):
        pass

    def can_register(self, device):
        return True

    def register(self, address, nbytes):
        if address in self.registered:
            raise CudaLoadError("cuda_error", f"address {address:#x} registered twice")
        self.registered[address] = nbytes

    def unregister(self, address):
        del self.registered[address]


class _DoneEvent:
    """A host copy has finished when it returns."""

    def synchronize(self):
        pass


def _check(torch, result, what):
    code = int(result)
    if code != 0:
        message = torch.cuda.cudart().cudaGetErrorString(result)
        raise CudaLoadError("cuda_error", f"{what} failed: CUDA error {code} ({message})")


def _read_only_register_supported(index):
    """Whether device `index` takes read-only host registrations (driver API; False if unknown)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    device, value = ctypes.c_int(), ctypes.c_int()
    if driver.cuInit(0) != 0 or driver.cuDeviceGet(ctypes.byref(device), index) != 0:
        return False
    status = driver.cuDeviceGetAttribute(ctypes.byref(value), _ATTRIBUTE_READ_ONLY_HOST_REGISTER,
                                         device)
    return status == 0 and value.value == 1


# ---------------------------------------------------------------- kept registrations

class KeptRegistrations:
    """Registered image mappings kept between loads, least recently used out, within a budget.

    Keyed by the memfd's (device, inode): the daemon's cache hands out the
    same sealed memfd for every load of an image, and the mapping kept here
    keeps that memfd (so its identity and bytes) alive.
    """

    def __init__(self, engine, budget_bytes):
        self._engine = engine
        self._budget = budget_bytes
        self._kept = {}  # identity -> (buffer, address, nbytes), oldest first
        self._lock = threading.Lock()

    def find(self, identity):
        with self._lock:
            kept = self._kept.pop(identity, None)
            if kept is not None:
                self._kept[identity] = kept  # now the most recent
            return kept

    def keep(self, identity, buffer, address, nbytes):
        """Keep a registration made by the caller; False if it does not fit (caller unregisters)."""
        if identity is None or nbytes > self._budget:
            return False
        with self._lock:
            while sum(k[2] for k in self._kept.values()) + nbytes > self._budget:
                oldest = next(iter(self._kept))
                _, old_address, _ = self._kept.pop(oldest)
                self._engine.unregister(old_address)
            self._kept[identity] = (buffer, address, nbytes)
        return True

    def release_all(self):
        with self._lock:
            for _, address, _ in self._kept.values():
                self._engine.unregister(address)
            self._kept.clear()


def _image_identity(address):
    try:
        with open("/proc/self/maps") as maps:
            return memfd_identity(maps.read(), address)
    except OSError:
        return None


# ---------------------------------------------------------------- the loader

class CudaLoader:
    """Places an image's tensors on their CUDA devices; holds what is pinned once per process.

    One per process is enough (`shared_loader()`): it keeps the pinned ring,
    the copy streams and the fill threads for the next load.
    """

    def __init__(self, torch, options=None, engine=None):
        self._torch = torch
        self.options = options or CudaOptions()
        self._engine = engine or CudaEngine(torch)
        self._pool = ThreadPoolExecutor(self.options.fill_threads,
                                        thread_name_prefix="picklejail-fill")
        self._kept = KeptRegistrations(self._engine, self.options.keep_registered_bytes)
        self._lock = threading.Lock()  # one load at a time uses the ring
        self.last_strategy = None       # what the last load used (benchmarks report it)

    def close(self):
        self._kept.release_all()
        self._pool.shutdown()

    def place(self, image, target_of):
        """{stored name: tensor on its device} for every tensor whose target is not the CPU.

        target_of(entry) -> the entry's target device as a string ("cuda:0").
        """
        groups = group_by_device(image.in_data_order, target_of)
        if "cuda" in groups:  # torch.load's "cuda" is the current device
            current = f"cuda:{self._engine.current_index()}"
            groups.setdefault(current, [])
            groups[current] = sorted(groups[current] + groups.pop("cuda"),
                                     key=lambda entry: entry.begin)
        if not groups:
            return {}
        # The whole mapping (page-aligned start: what a registration pins).
        host = self._torch.frombuffer(image.buffer, dtype=self._torch.uint8)
        plans = [plan_device(device, entries) for device, entries in groups.items()]
        with self._lock:
            memory = {plan.device: self._engine.allocate(plan.device, plan.allocation_bytes)
                      for plan in plans}
            self._copy(image, host, plans, memory)
            self._engine.finish([plan.device for plan in plans])
        out = {}
        for plan in plans:
            out.update(self._views(memory[plan.device], plan))
        return out

    # ------------------------------------------------------------ copying

    def _copy(self, image, host, plans, memory):
        copy_bytes = sum(plan.copy_bytes for plan in plans)
        if copy_bytes == 0:
            self.last_strategy = "none"
            return
        address = host.data_ptr()
        identity = _image_identity(address) if self.options.keep_registered_bytes else None
        kept = self._kept.find(identity) if identity is not None else None
        # Only a memfd's registration can be found again: anything else is not kept.
        options = self.options if identity is not None else replace(self.options,
                                                                    keep_registered_bytes=0)
        strategy = choose_strategy(options, copy_bytes, kept is not None,
                                   all(self._engine.can_register(p.device) for p in plans))
        self.last_strategy = strategy
        data = host[image.data_offset:]
        if strategy == "pageable":
            for plan in plans:
                for span in plan.spans:
                    self._engine.copy(plan.device, memory[plan.device][span.dst:span.dst + span.length],
                                      data[span.src:span.src + span.length])
        elif strategy == "register":
            self._copy_registered(image, host, plans, memory, identity, kept)
        else:
            for plan in plans:
                self._copy_through_ring(plan, data, memory[plan.device])

    def _copy_registered(self, image, host, plans, memory, identity, kept):
        if kept is not None:
            # The same sealed memfd, kept mapped and registered at its own address.
            source = self._torch.frombuffer(kept[0], dtype=self._torch.uint8)
        else:
            source = host
            self._engine.register(host.data_ptr(), host.numel())
        data = source[image.data_offset:]
        try:
            for plan in plans:
                for span in plan.spans:
                    self._engine.copy(plan.device, memory[plan.device][span.dst:span.dst + span.length],
                                      data[span.src:span.src + span.length])
            self._engine.finish([plan.device for plan in plans])  # before any unregister
        except BaseException:
            if kept is None:
                self._engine.finish([plan.device for plan in plans])  # no copy may still read it
                self._engine.unregister(host.data_ptr())
            raise
        if kept is None and not self._kept.keep(identity, image.buffer, host.data_ptr(),
                                                host.numel()):
            self._engine.unregister(host.data_ptr())

    def _copy_through_ring(self, plan, data, device_memory):
        """Fill slot i+1 (threads) while slot i's copy runs; reuse a slot once its copy is done."""
        slots = self._engine.ring(plan.device, self.options)
        pending = [None] * len(slots)
        source_address = data.data_ptr()
        for index, chunk in enumerate(chunk_plan(plan.spans, self.options.ring_chunk_bytes)):
            slot = index % len(slots)
            if pending[slot] is not None:
                pending[slot].synchronize()
            self._fill(slots[slot].data_ptr(), source_address, chunk)
            for piece in chunk:
                self._engine.copy(plan.device,
                                  device_memory[piece.dst:piece.dst + piece.length],
                                  slots[slot][piece.slot_offset:piece.slot_offset + piece.length])
            pending[slot] = self._engine.mark(plan.device)

    def _fill(self, slot_address, source_address, chunk):
        jobs = [(slot_address + piece.slot_offset + offset, source_address + piece.src + offset,
                 length)
                for piece in chunk
                for offset, length in split_evenly(piece.length, self.options.fill_threads)]
        # ctypes.memmove is a foreign call: the GIL is released while it copies.
        for _ in self._pool.map(lambda job: ctypes.memmove(*job), jobs):
            pass

    # ------------------------------------------------------------ views

    def _views(self, memory, plan):
        torch = self._torch
        out = {}
        for entry, run in _runs(plan.placed):
            if run is None:
                out[entry.name] = torch.empty(entry.shape, dtype=_torch_dtype(torch, entry),
                                              device=memory.device)
                continue
            dtype = _torch_dtype(torch, run[0].entry)
            begin = run[0].dst
            end = run[-1].dst + run[-1].entry.end - run[-1].entry.begin
            pieces = memory[begin:end].view(dtype).split([p.entry.numel for p in run])
            for placed, piece in zip(run, pieces):
                out[placed.entry.name] = piece.view(placed.entry.shape)
        return out


def _torch_dtype(torch, entry):
    return getattr(torch, entry.dtype.torch_name)


def _runs(placed):
    """(entry, None) for empty tensors, (None, run) for runs that one typed view can split.

    A run: consecutive placements of one dtype, back to back in the allocation.
    """
    run = []
    for item in itertools.chain(placed, [None]):
        if run and (item is None or item.entry.end == item.entry.begin or
                    item.entry.dtype is not run[-1].entry.dtype or
                    item.dst != run[-1].dst + run[-1].entry.end - run[-1].entry.begin):
            yield None, run
            run = []
        if item is None:
            break
        if item.entry.end == item.entry.begin:
            yield item.entry, None
        else:
            run.append(item)


_shared = {}
_shared_lock = threading.Lock()


def shared_loader(torch):
    """This process's CudaLoader: pinned memory, streams and threads are made once and reused."""
    with _shared_lock:
        if "loader" not in _shared:
            _shared["loader"] = CudaLoader(torch)
        return _shared["loader"]


def set_shared_options(torch, options):
    """Replace this process's loader by one with `options` (releasing what the old one held)."""
    with _shared_lock:
        old = _shared.pop("loader", None)
        if old is not None:
            old.close()
        _shared["loader"] = CudaLoader(torch, options)
        return _shared["loader"]
