// The container readers (loader/checkpoint_readers.hpp) as the router calls
// them: a zip goes to read_zip_checkpoint (TorchScript refusal, data.pkl,
// byteorder, storage records bound through persistent ids), anything else is
// run as a first pickle and, when it is the legacy magic number, handed to
// read_legacy_checkpoint (the 1001 pickle, sys_info, the main pickle, the key
// list and the raw storages).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_support.hpp"
#include "loader/checkpoint_readers.hpp"
#include "loader/object_arena.hpp"
#include "loader/storage_table.hpp"
#include "loader/zip_archive.hpp"

using namespace picklejail;
using namespace picklejail::loader;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = std::as_bytes(std::span(data, size));
    const Limits limits = fuzz::fuzz_limits();
    StorageTable storages(limits);
    ObjectArena arena(limits);
    CallContext ctx{fuzz::checkpoint_policy(), limits, storages, arena};
    try {
        ReadResult result;
        if (looks_like_zip(input)) {
            result = read_zip_checkpoint(input, ctx);
        } else {
            PickleVm first(
                input.first(std::min<std::size_t>(input.size(), limits.max_pickle_bytes)), ctx,
                nullptr);
            const ValuePtr value = first.run();
            if (!is_legacy_magic(*value)) return 0;
            result = read_legacy_checkpoint(input, first.info().end_offset, ctx);
        }
        // Every bound storage must lie inside the input or an owned buffer of its size.
        for (const auto& storage : storages.all()) {
            if (storage.bound && storage.bytes.size() != storage.nbytes) std::abort();
        }
    } catch (const Error& e) {
        fuzz::require_not_internal(e, "the checkpoint readers");
    }
    return 0;
}
