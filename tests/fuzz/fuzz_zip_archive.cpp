// The zip reader (loader/zip_archive.hpp) on arbitrary bytes: open the
// directory, look up the torch records, and read every entry, stored or
// deflated, checking the local header of each against the directory.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_support.hpp"
#include "loader/zip_archive.hpp"

using namespace picklejail;
using namespace picklejail::loader;

namespace {
volatile int g_sink = 0;  // keeps the reads of entry bytes from being optimised away
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = std::as_bytes(std::span(data, size));
    if (!looks_like_zip(input)) return 0;
    const Limits limits = fuzz::fuzz_limits();
    try {
        ZipArchive zip(input, limits);
        (void)zip.find("data.pkl");
        (void)zip.find("byteorder");
        for (const auto& entry : zip.entries()) {
            try {
                if (entry.method == 0) {
                    const auto bytes = zip.stored_bytes(entry);
                    // Touch the span's ends: it must lie inside the input.
                    if (!bytes.empty())
                        g_sink = std::to_integer<int>(bytes.front()) +
                                 std::to_integer<int>(bytes.back());
                } else if (entry.uncompressed_size <= (16U << 20)) {
                    std::vector<std::byte> out(entry.uncompressed_size);
                    zip.inflate(entry, out);
                }
            } catch (const Error&) {
                // A bad entry; keep reading the others.
            }
        }
    } catch (const Error&) {
    }
    return 0;
}
