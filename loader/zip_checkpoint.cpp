#include <array>
#include <exception>
#include <optional>
#include <vector>

#include "loader/checkpoint_readers.hpp"
#include "loader/persistent_id.hpp"
#include "loader/zip_archive.hpp"

namespace picklejail::loader {
namespace {

// Records that only TorchScript archives carry (CVE-2025-32434 came from
// dispatching them to a code-running loader).
constexpr std::array<std::string_view, 3> kTorchScriptMarkers{"constants.pkl", "bytecode.pkl",
                                                              "code/"};

void refuse_torchscript(const ZipArchive& zip) {
    for (const auto& entry : zip.entries()) {
        const std::string_view relative = std::string_view(entry.name).substr(zip.prefix().size());
        for (const auto marker : kTorchScriptMarkers) {
            if (relative.starts_with(marker)) {
                throw Error(
                    ErrorCode::unsupported,
                    "TorchScript archive (has " + entry.name +
                        "): it holds a program, not a checkpoint, and is never interpreted");
            }
        }
    }
}

std::span<const std::byte> record_bytes(ZipArchive& zip, const ZipEntry& entry,
                                        StorageTable& storages) {
    if (entry.method == 0) return zip.stored_bytes(entry);
    auto buffer = storages.own_buffer(entry.uncompressed_size);
    zip.inflate(entry, buffer);
    return buffer;
}

bool read_byteorder(ZipArchive& zip, StorageTable& storages) {
    const ZipEntry* entry = zip.find("byteorder");
    if (entry == nullptr) return false;  // torch: missing means little-endian
    if (entry->uncompressed_size > 16)
        throw Error(ErrorCode::malformed, "byteorder record is too long");
    const auto bytes = record_bytes(zip, *entry, storages);
    const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (text == "little") return false;
    if (text == "big") return true;
    throw Error(ErrorCode::malformed, "byteorder record says neither \"little\" nor \"big\"");
}

// The storage a persistent id names, declared in the table; `first`: this
// id is the first to name it (its record is not bound yet).
struct DeclaredStorage {
    std::uint32_t index;
    bool first;
};

DeclaredStorage declare_storage(const ValuePtr& pid, CallContext& c) {
    const StoragePid storage = parse_storage_pid(pid, 5, c);
    const std::size_t known = c.storages.all().size();
    const std::uint32_t index =
        c.storages.declare(storage.key, storage.dtype, storage.numel, storage.location,
                           storage.quantized);
    return {index, index == known};
}

// Binds storage `index` to its record data/<key>. `c.offset` is where the
// pickle asked for it (the messages say so).
void bind_record(ZipArchive& zip, std::uint32_t index, bool big_endian, CallContext& c) {
    const std::string& key = c.storages.at(index).key;
    const ZipEntry* record = zip.find("data/" + key);
    if (record == nullptr)
        fail_at(c, ErrorCode::malformed, "storage record data/" + key + " is missing");
    // Check the size before inflating anything (CVE-2026-24747).
    if (record->uncompressed_size != c.storages.at(index).nbytes) {
        fail_at(c, ErrorCode::malformed,
                "storage record data/" + key + " holds " +
                    std::to_string(record->uncompressed_size) +
                    " bytes but its persistent id declares " +
                    std::to_string(c.storages.at(index).nbytes));
    }
    c.storages.bind(index, record_bytes(zip, *record, c.storages), big_endian);
}

void check_trailing_bytes(const ReadResult& result, std::span<const std::byte> pickle) {
    if (result.pickle.end_offset != pickle.size()) {
        throw Error(ErrorCode::malformed, "data.pkl has bytes after STOP");
    }
}

// The archive's checks in the order they apply, up to the pickle's bytes.
const ZipEntry& checked_data_pkl(const ZipArchive& zip, const CallContext& ctx) {
    refuse_torchscript(zip);
    const ZipEntry* data_pkl = zip.find("data.pkl");
    if (data_pkl == nullptr) {
        throw Error(ErrorCode::unsupported, "zip archive without " + zip.prefix() +
                                                "data.pkl is not a torch.save checkpoint");
    }
    if (data_pkl->uncompressed_size > ctx.limits.max_pickle_bytes) {
        throw Error(ErrorCode::too_large, "data.pkl exceeds max_pickle_bytes");
    }
    return *data_pkl;
}

// One thread: the directory, then the pickle, binding each storage when the
// pickle first names it.
ReadResult read_after_directory(ZipArchive& zip, CallContext& ctx) {
    const ZipEntry& data_pkl = checked_data_pkl(zip, ctx);
    const bool big_endian = read_byteorder(zip, ctx.storages);
    const auto pickle = record_bytes(zip, data_pkl, ctx.storages);
    PersistentLoader load_storage = [&zip, big_endian](const ValuePtr& pid, CallContext& c) {
        const auto [index, first] = declare_storage(pid, c);
        if (first) bind_record(zip, index, big_endian, c);
        return c.arena.make(StorageValue{index});
    };
    PickleVm vm(pickle, ctx, load_storage);
    ReadResult result{vm.run(), vm.info()};
    check_trailing_bytes(result, pickle);
    return result;
}

// torch.save writes data.pkl first, so its bytes are known from the
// directory's first entry: the pickle runs on this thread while the helper
// reads the rest of the directory (for many tensors, a fifth of the job).
// Storages are bound afterwards, in the order the pickle named them, and
// every failure is reported as read_after_directory() would report it: the
// directory's, the archive's, the byte order's, then the first of the
// pickle's storage bindings and its own in the order they happened.
ReadResult read_beside_directory(ZipArchive& zip, CallContext& ctx, HelperThread& helper) {
    struct Pending {
        std::uint32_t index;
        std::size_t offset;  // where the pickle named it
    };
    std::vector<Pending> pending;
    std::optional<ReadResult> result;
    std::exception_ptr pickle_error;
    std::span<const std::byte> pickle;
    helper.start([&zip] { zip.read_directory(); });
    try {
        pickle = record_bytes(zip, zip.first_entry(), ctx.storages);
        PersistentLoader defer_storage = [&pending](const ValuePtr& pid, CallContext& c) {
            const auto [index, first] = declare_storage(pid, c);
            if (first) pending.push_back({index, c.offset});
            return c.arena.make(StorageValue{index});
        };
        PickleVm vm(pickle, ctx, defer_storage);
        result.emplace(ReadResult{vm.run(), vm.info()});
    } catch (...) {
        pickle_error = std::current_exception();
    }
    helper.wait();  // rethrows the directory's error, which comes first
    (void)checked_data_pkl(zip, ctx);
    const bool big_endian = read_byteorder(zip, ctx.storages);
    for (const Pending& storage : pending) {
        ctx.offset = storage.offset;
        bind_record(zip, storage.index, big_endian, ctx);
    }
    if (pickle_error) std::rethrow_exception(pickle_error);
    check_trailing_bytes(*result, pickle);
    return std::move(*result);
}

// The helper may read the directory only when the first entry is data.pkl
// under a directory; otherwise everything happens in the usual order.
bool first_entry_is_data_pkl(const ZipArchive& zip, const Limits& limits) {
    const std::string& name = zip.first_entry().name;
    const auto slash = name.find('/');
    return slash != std::string::npos && std::string_view(name).substr(slash + 1) == "data.pkl" &&
           zip.first_entry().uncompressed_size <= limits.max_pickle_bytes;
}

}  // namespace

ReadResult read_zip_checkpoint(std::span<const std::byte> input, CallContext& ctx) {
    if (ctx.helper == nullptr) {
        ZipArchive zip(input, ctx.limits);
        return read_after_directory(zip, ctx);
    }
    ZipArchive zip(input, ctx.limits, ZipArchive::FirstEntryOnly{});
    if (!first_entry_is_data_pkl(zip, ctx.limits)) {
        zip.read_directory();
        return read_after_directory(zip, ctx);
    }
    return read_beside_directory(zip, ctx, *ctx.helper);
}

}  // namespace picklejail::loader
