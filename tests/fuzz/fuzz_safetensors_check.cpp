// The client-side safetensors validator (ipc/safetensors_check.hpp) on
// arbitrary bytes. When it accepts an image, what it returns must hold up:
// every tensor inside the data section, sorted, sized by dtype and shape.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "fuzz_support.hpp"

using namespace picklejail;

namespace {

[[noreturn]] void broken(const char* what) {
    std::fprintf(stderr, "fuzz: check_safetensors accepted an image but %s\n", what);
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto image = std::as_bytes(std::span(data, size));
    ipc::CheckLimits limits;
    limits.max_header_bytes = 1 << 20;
    try {
        const auto index = ipc::check_safetensors(image, limits);
        if (index.data_offset != 8 + index.header_size || index.data_offset > size)
            broken("the data offset is outside the image");
        const std::uint64_t data_size = size - index.data_offset;
        std::uint64_t previous_end = 0;
        for (const auto& t : index.tensors) {
            if (t.begin > t.end || t.end > data_size) broken("a tensor lies outside the data");
            if (t.begin < previous_end) broken("tensors overlap or are unsorted");
            previous_end = t.end;
            const std::uint64_t bits = ipc::dtype_bits(t.dtype);
            if (bits == 0) broken("a tensor has an unknown dtype");
            unsigned __int128 total = bits;
            for (const auto dim : t.shape) total *= dim;
            if (total != static_cast<unsigned __int128>(t.end - t.begin) * 8)
                broken("a tensor's byte range does not match dtype x shape");
        }
        if (previous_end != data_size) broken("the data section has trailing bytes");
    } catch (const Error&) {
    }
    return 0;
}
