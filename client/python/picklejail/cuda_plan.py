"""Where each tensor goes on its device, and how its bytes get there: pure planning.

Nothing here touches CUDA (or needs torch), so all of it is unit-tested on a
CPU-only machine; cuda.py carries the plans out.

For every target device the tensors mapped there share ONE device allocation
and are views of it. A `DevicePlan` says where each tensor lives in that
allocation and which byte ranges ("spans") of the image's data section are
copied where. Consecutive tensors that are consecutive in the image stay
consecutive on the device, so a state dict that goes to one device whole is
a single span: one copy of the whole data section. A span starts at a
multiple of SPAN_ALIGNMENT in the allocation (of MIN_ALIGNMENT when its first
tensor is small: 20,000 tiny tensors split between devices would otherwise
spend more on padding than on bytes), and within a span every tensor keeps
the offset it had in the image; a tensor whose dtype would then sit
misaligned (complex128 after an odd number of float64 values) starts a span
of its own. So every tensor begins at a multiple of its element size, as
`view(dtype)` requires.

`chunk_plan` cuts the spans into pieces no larger than a pinned ring slot.
"""

from dataclasses import dataclass

# Where spans start in a device allocation: CUDA's own allocations start at
# multiples of 256 (the caching allocator's at 512), and vectorised kernels
# read 16-byte words; 256 keeps any view's alignment as good as a fresh
# tensor's for every dtype picklejail writes.
SPAN_ALIGNMENT = 256
# The largest element (complex128) and a 16-byte vector load; for spans whose
# first tensor is under SMALL_TENSOR_BYTES.
MIN_ALIGNMENT = 16
SMALL_TENSOR_BYTES = 4096


def align_up(value, alignment):
    """The smallest multiple of `alignment` (a power of two) that is >= value."""
    return (value + alignment - 1) & ~(alignment - 1)


@dataclass(frozen=True)
class Span:
    """`length` bytes from data-section offset `src` to allocation offset `dst`."""
    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class Placed:
    """One tensor in a device allocation: `entry` (an image.TensorEntry) at byte `dst`."""
    entry: object
    dst: int


@dataclass(frozen=True)
class DevicePlan:
    device: str           # "cuda:0", ... (as torch.device prints it)
    allocation_bytes: int  # size of the one allocation on that device
    placed: tuple         # Placed, in data order (empty tensors too, with dst 0)
    spans: tuple          # Span, in data order, disjoint in both source and destination

    @property
    def copy_bytes(self):
        return sum(span.length for span in self.spans)


def plan_device(device, entries, alignment=SPAN_ALIGNMENT):
    """The DevicePlan for `entries` (image.TensorEntry, in data-section order) on `device`."""
    placed, spans = [], []
    span_src = span_dst = span_end = None  # the open span: source start, destination start, source end
    cursor = 0  # allocation bytes used so far
    for entry in entries:
        length = entry.end - entry.begin
        if length == 0:
            placed.append(Placed(entry, 0))  # no bytes: made with torch.empty
            continue
        joins = span_end == entry.begin and (entry.begin - span_src) % entry.dtype.size == 0
        if not joins:
            if span_src is not None:
                spans.append(Span(span_src, span_dst, span_end - span_src))
            start_alignment = alignment if length >= SMALL_TENSOR_BYTES else MIN_ALIGNMENT
            span_src, span_dst = entry.begin, align_up(cursor, start_alignment)
        dst = span_dst + (entry.begin - span_src)
        placed.append(Placed(entry, dst))
        span_end = entry.end
        cursor = dst + length
    if span_src is not None:
        spans.append(Span(span_src, span_dst, span_end - span_src))
    return DevicePlan(device, cursor, tuple(placed), tuple(spans))


def group_by_device(entries, target_of):
    """{device: [entries in data order]} for the entries whose target is not the CPU.

    `target_of(entry)` names the entry's target device as a string ("cpu",
    "cuda:0", ...); the order of devices is the order they first appear.
    """
    groups = {}
    for entry in entries:
        device = target_of(entry)
        if device != "cpu":
            groups.setdefault(device, []).append(entry)
    return groups


@dataclass(frozen=True)
class Piece:
    """Part of a span, staged through a ring slot: slot bytes [slot_offset, +length)."""
    src: int
    dst: int
    length: int
    slot_offset: int


def chunk_plan(spans, chunk_bytes, alignment=SPAN_ALIGNMENT):
    """The spans cut into ring chunks: a list of chunks, each a tuple of Pieces.

    A chunk fills one ring slot of `chunk_bytes`; small spans share a slot
    (each piece starting at a multiple of `alignment` in it), a large span
    takes as many whole slots as it needs. Pieces appear in span order and
    cover every span exactly once.
    """
    if chunk_bytes <= 0 or chunk_bytes % alignment:
        raise ValueError(f"chunk_bytes {chunk_bytes} must be a positive multiple of {alignment}")
    chunks, current, used = [], [], 0
    for span in spans:
        done = 0
        while done < span.length:
            offset = align_up(used, alignment)
            if offset >= chunk_bytes:
                chunks.append(tuple(current))
                current, offset = [], 0
            length = min(span.length - done, chunk_bytes - offset)
            current.append(Piece(span.src + done, span.dst + done, length, offset))
            used = offset + length
            done += length
    if current:
        chunks.append(tuple(current))
    return chunks


def split_evenly(length, parts, granule=4096):
    """[(offset, length)] cutting `length` bytes into at most `parts` runs of whole granules.

    How one ring slot's fill is shared between threads: page-sized granules
    keep two threads off the same page.
    """
    if length == 0:
        return []
    granules = -(-length // granule)
    parts = max(1, min(parts, granules))
    per = -(-granules // parts) * granule
    return [(offset, min(per, length - offset)) for offset in range(0, length, per)]


def memfd_identity(maps_text, address):
    """(device, inode) of the file mapped at `address` in a /proc/<pid>/maps text, or None.

    A long-lived process keeps an image's registration between loads of a
    cached image. The daemon hands out the same sealed memfd for it, mapped
    anew each time: the file's identity (not the new address) says it is the
    same image, and a sealed memfd's bytes cannot change while a mapping keeps
    it alive. Only memfds count ("/memfd:" names); anything else is None.
    """
    for line in maps_text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/memfd:"):
            continue
        low, _, high = fields[0].partition("-")
        if int(low, 16) <= address < int(high, 16):
            major, _, minor = fields[3].partition(":")
            return (int(major, 16), int(minor, 16)), int(fields[4])
    return None
