// The receiving side of a mapped load (loader/file_ranges.hpp): checks the
// picklejail.file_ranges metadata of an image against the file the receiver
// is about to map, before any byte of that file is exposed.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace picklejail::ipc {

inline constexpr const char* kFileRangesKey = "picklejail.file_ranges";

struct FileRange {
    std::string name;
    std::string dtype;  // safetensors dtype
    std::vector<std::uint64_t> shape;
    std::uint64_t begin = 0, end = 0;  // byte offsets in the file
};

struct FileRanges {
    std::uint64_t device = 0, inode = 0, size = 0;
    std::int64_t mtime_ns = 0, ctime_ns = 0;
    std::vector<FileRange> tensors;  // sorted by name
};

// Parses and checks the metadata value: known dtypes, sizes that match
// shapes, ranges inside the recorded file size, element-aligned offsets.
// Throws Error(malformed) naming the tensor at fault.
[[nodiscard]] FileRanges parse_file_ranges(const std::string& json_text);

// Throws Error(io_error) when `st` (the receiver's fstat of the fd it maps)
// is not the file the worker saw: device, inode, size, mtime or ctime differ.
void check_same_file(const FileRanges& ranges, const struct stat& st);

}  // namespace picklejail::ipc
