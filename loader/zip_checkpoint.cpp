#include <array>

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

}  // namespace

ReadResult read_zip_checkpoint(std::span<const std::byte> input, CallContext& ctx) {
    ZipArchive zip(input, ctx.limits);
    refuse_torchscript(zip);
    const ZipEntry* data_pkl = zip.find("data.pkl");
    if (data_pkl == nullptr) {
        throw Error(ErrorCode::unsupported, "zip archive without " + zip.prefix() +
                                                "data.pkl is not a torch.save checkpoint");
    }
    if (data_pkl->uncompressed_size > ctx.limits.max_pickle_bytes) {
        throw Error(ErrorCode::too_large, "data.pkl exceeds max_pickle_bytes");
    }
    const bool big_endian = read_byteorder(zip, ctx.storages);
    const auto pickle = record_bytes(zip, *data_pkl, ctx.storages);

    PersistentLoader load_storage = [&zip, big_endian](const ValuePtr& pid, CallContext& c) {
        const StoragePid storage = parse_storage_pid(pid, 5, c);
        const std::uint32_t index =
            c.storages.declare(storage.key, storage.dtype, storage.numel, storage.location);
        if (!c.storages.at(index).bound) {
            const ZipEntry* record = zip.find("data/" + storage.key);
            if (record == nullptr)
                fail_at(c, ErrorCode::malformed,
                        "storage record data/" + storage.key + " is missing");
            // Check the size before inflating anything (CVE-2026-24747).
            if (record->uncompressed_size != c.storages.at(index).nbytes) {
                fail_at(c, ErrorCode::malformed,
                        "storage record data/" + storage.key + " holds " +
                            std::to_string(record->uncompressed_size) +
                            " bytes but its persistent id declares " +
                            std::to_string(c.storages.at(index).nbytes));
            }
            c.storages.bind(index, record_bytes(zip, *record, c.storages), big_endian);
        }
        return c.arena.make(StorageValue{index});
    };
    PickleVm vm(pickle, ctx, load_storage);
    ReadResult result{vm.run(), vm.info()};
    if (result.pickle.end_offset != pickle.size()) {
        throw Error(ErrorCode::malformed, "data.pkl has bytes after STOP");
    }
    return result;
}

}  // namespace picklejail::loader
