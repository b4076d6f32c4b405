// The validator every receiver runs on a safetensors image it did not produce
// (docs: shared safetensors-rules.md sections 2 and 12). It enforces the
// reference parser's rules plus picklejail's stricter ones: any duplicate key,
// a leading '{', exactly three fields per entry, integers below 2^53, and
// configurable caps, so an image that passes here also loads everywhere else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/tensor_names.hpp"

namespace picklejail::ipc {

// Caps beyond the format's own rules; exceeding one throws ErrorCode::too_large.
struct CheckLimits {
    std::uint64_t max_header_bytes = 100'000'000;  // reference MAX_HEADER_SIZE
    std::uint64_t max_tensors = 10'000'000;
    std::size_t max_rank = 64;
    std::size_t max_name_bytes = kMaxTensorNameBytes;
    std::size_t max_json_depth = 8;  // header JSON nesting
};

struct TensorEntry {
    std::string name;
    std::string dtype;  // e.g. "F32"
    std::vector<std::uint64_t> shape;
    std::uint64_t begin = 0, end = 0;  // relative to the data section
};

struct SafetensorsIndex {
    std::uint64_t header_size = 0;                // N, the u64 LE prefix
    std::uint64_t data_offset = 0;                // 8 + N
    std::vector<TensorEntry> tensors;             // sorted by (begin, end)
    std::map<std::string, std::string> metadata;  // __metadata__, may be empty
};

// Validates `image` (the complete safetensors bytes) and returns its index.
// Throws picklejail::Error: `malformed` when the bytes break a rule, `too_large`
// when a cap in `limits` (or the format's 100 MB header limit) is exceeded.
// Messages say what is wrong and name the tensor where there is one. Tensors
// with equal (begin, end), which only zero-size tensors can share, are ordered
// by name so the result is deterministic.
[[nodiscard]] SafetensorsIndex check_safetensors(std::span<const std::byte> image,
                                                 const CheckLimits& limits = {});

// Bits per element of a safetensors dtype string (case-sensitive); 0 when unknown.
[[nodiscard]] std::uint64_t dtype_bits(std::string_view dtype);

}  // namespace picklejail::ipc
