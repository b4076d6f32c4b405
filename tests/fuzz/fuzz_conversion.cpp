// The whole file -> safetensors path (loader/checkpoint_loader.hpp):
// Conversion::plan routes the bytes (zip / legacy / pickle), reads, flattens
// and lays out; write() fills a buffer of output_size() bytes, and the image
// must pass the same checker every receiver runs (ipc/safetensors_check.hpp).
// One input in three also exercises tensor selection.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_support.hpp"
#include "loader/checkpoint_loader.hpp"

using namespace picklejail;
using namespace picklejail::loader;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = std::as_bytes(std::span(data, size));
    const Limits limits = fuzz::fuzz_limits();
    Selection select;
    if (size % 3 == 0) select.entries = {"fc.", "t", "0"};
    try {
        const Conversion conversion =
            Conversion::plan(input, fuzz::checkpoint_policy(), limits, select);
        if (conversion.output_size() > limits.max_output_bytes) std::abort();
        std::vector<std::byte> image(conversion.output_size());
        conversion.write(image);
        fuzz::require_valid_image(image, "Conversion::plan + write");
    } catch (const Error&) {
    }
    return 0;
}
