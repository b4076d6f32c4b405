// The whole file -> safetensors path (loader/checkpoint_loader.hpp):
// Conversion::plan routes the bytes (zip / legacy / pickle), reads, flattens
// and lays out; write() fills a buffer of output_size() bytes, and the image
// must pass the same checker every receiver runs (ipc/safetensors_check.hpp).
// One input in three also exercises tensor selection. A zip archive is also
// converted with a helper thread reading its directory beside the pickle,
// which must give the same image or the same error.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../thread_helper.hpp"
#include "fuzz_support.hpp"
#include "loader/checkpoint_loader.hpp"
#include "loader/zip_archive.hpp"

using namespace picklejail;
using namespace picklejail::loader;

namespace {

// The image, or the error's code and message.
std::pair<std::vector<std::byte>, std::string> convert(std::span<const std::byte> input,
                                                       const Selection& select,
                                                       HelperThread* helper) {
    const Limits limits = fuzz::fuzz_limits();
    try {
        const Conversion conversion =
            Conversion::plan(input, fuzz::checkpoint_policy(), limits, select, helper);
        if (conversion.output_size() > limits.max_output_bytes) std::abort();
        std::vector<std::byte> image(conversion.output_size());
        conversion.write(image);
        fuzz::require_valid_image(image, "Conversion::plan + write");
        return {std::move(image), {}};
    } catch (const Error& e) {
        fuzz::require_not_internal(e, "Conversion::plan + write");
        return {{}, std::string(to_string(e.code())) + ": " + e.what()};
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = std::as_bytes(std::span(data, size));
    Selection select;
    if (size % 3 == 0) select.entries = {"fc.", "t", "0"};
    const auto alone = convert(input, select, nullptr);
    if (looks_like_zip(input)) {
        test::ThreadHelper helper;
        if (convert(input, select, &helper) != alone) {
            std::fprintf(stderr, "a helper thread changed the outcome (alone: %s)\n",
                         alone.second.c_str());
            std::abort();
        }
    }
    return 0;
}
