// The layout-only reply of a mapped load (torch.load(mmap=True)'s way): tensors
// whose bytes lie verbatim in the checkpoint are not copied; the image names
// their byte range in the file instead (metadata key picklejail.file_ranges)
// and the client maps its own fd. Only tensors of at least kMinMappedBytes in
// stored (uncompressed) zip records qualify, 64-byte aligned, C-contiguous and
// little-endian; every other tensor stays in the image's data section.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loader/limits.hpp"
#include "loader/safetensors_writer.hpp"

namespace picklejail::loader {

inline constexpr std::string_view kMetaFileRanges = "picklejail.file_ranges";
// torch.save aligns every record to 64 bytes; a record elsewhere is copied.
inline constexpr std::uint64_t kMappedRecordAlignment = 64;
// A tensor of fewer bytes is copied: mapping it saves no memory (its page
// holds its neighbours too) and costs the client a range entry and a view of
// its own; for 20,000 tensors of ~170 bytes, mmap=True took ~19% longer than
// copying. One 4 KiB page, whatever the kernel's page size.
inline constexpr std::uint64_t kMinMappedBytes = 4096;

// What the worker saw of the file before reading it (fstat of the fd the
// client sent); the client compares its own fstat with it before mapping.
struct SourceFileIdentity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
    std::int64_t ctime_ns = 0;
};

struct FileRangePlan {
    std::vector<TensorSource> copied;  // still written into the image
    std::string metadata_value;        // the picklejail.file_ranges JSON text
    std::size_t mapped = 0;            // tensors left in the file
};

// Splits `tensors` (views into `input`, the whole file) into mapped and
// copied ones. `stored_zip` must be true only when every storage span that
// lies inside `input` is a stored zip record whose local header was checked.
[[nodiscard]] FileRangePlan plan_file_ranges(std::vector<TensorSource> tensors,
                                             std::span<const std::byte> input, bool stored_zip,
                                             const SourceFileIdentity& identity,
                                             const Limits& limits);

// The view's bytes when they are one contiguous, same-endian run of its
// storage (C order); empty otherwise (also for zero-size views).
[[nodiscard]] std::span<const std::byte> contiguous_bytes(const TensorSource& source);

}  // namespace picklejail::loader
