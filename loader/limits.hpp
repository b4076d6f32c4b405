// Caps on everything an input can make the loader allocate or repeat. Each
// default is documented in docs/security.md; all are configurable.
#pragma once

#include <cstdint>
#include <string_view>

namespace picklejail::loader {

struct Limits {
    std::uint64_t max_input_bytes = 1ULL << 40;   // 1 TiB: the mapping, not RAM
    std::uint64_t max_pickle_bytes = 1ULL << 30;  // one pickle stream
    std::uint64_t max_memo_entries = 1'000'000;
    std::uint64_t max_memo_index = 1ULL << 32;     // LONG_BINPUT may use any u32
    std::uint64_t max_stack_depth = 1'000'000;     // values on the VM stack
    std::uint64_t max_mark_depth = 10'000;         // nested MARKs
    std::uint64_t max_nesting_depth = 1'000;       // containers within containers
    std::uint64_t max_string_bytes = 64ULL << 20;  // one str/bytes value
    std::uint64_t max_int_bytes = 64;              // LONG1/LONG4 payload
    std::uint64_t max_objects = 2'000'000;         // values created + visited
    std::uint64_t max_tensors = 1'000'000;
    std::uint64_t max_ndim = 64;
    std::uint64_t max_header_bytes = 64ULL << 20;  // safetensors JSON header
    std::uint64_t max_output_bytes = 1ULL << 40;   // whole safetensors image
    std::uint64_t max_zip_entries = 1'000'000;
    std::uint64_t max_inflate_ratio = 1'000;  // deflated records (zip bombs)
    // Output may be at most this many times the input, plus 64 MiB: a few
    // hundred bytes of stride-0 views must not fill memory with a huge image.
    std::uint64_t max_output_ratio = 16;
};

// Applies {"name": number, ...} overrides (the names of the fields above) from
// JSON text; unknown names or non-integers throw Error(invalid_request).
[[nodiscard]] Limits limits_from_json(std::string_view json_text, Limits base = {});

}  // namespace picklejail::loader
