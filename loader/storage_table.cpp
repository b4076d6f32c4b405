#include "loader/storage_table.hpp"

#include "common/error.hpp"
#include "loader/checked_math.hpp"

namespace picklejail::loader {

std::uint32_t StorageTable::declare(const std::string& key, DType dtype, std::uint64_t numel,
                                    const std::string& location, bool quantized) {
    const std::uint64_t nbytes = checked_mul(numel, info(dtype).element_size, "storage size");
    if (nbytes > limits_.max_output_bytes) {
        throw Error(ErrorCode::too_large, "storage \"" + key + "\" declares " +
                                              std::to_string(nbytes) +
                                              " bytes, above the output limit");
    }
    // One hash lookup whether the key is new or seen (once per tensor).
    const auto [it, inserted] =
        by_key_.try_emplace(key, static_cast<std::uint32_t>(storages_.size()));
    if (!inserted) {
        const Storage& seen = storages_[it->second];
        if (seen.dtype != dtype || seen.nbytes != nbytes || seen.quantized != quantized) {
            throw Error(ErrorCode::malformed, "storage \"" + key +
                                                  "\" is declared twice with different types (" +
                                                  std::string(info(seen.dtype).torch_name) + " × " +
                                                  std::to_string(seen.nbytes) + " bytes, then " +
                                                  std::string(info(dtype).torch_name) + " × " +
                                                  std::to_string(nbytes) + " bytes)");
        }
        return it->second;
    }
    if (storages_.size() >= limits_.max_tensors) {
        by_key_.erase(it);
        throw Error(ErrorCode::too_large, "more storages than the tensor limit (" +
                                              std::to_string(limits_.max_tensors) + ")");
    }
    storages_.push_back(Storage{key, dtype, nbytes, location, {}, false, false, quantized});
    return it->second;
}

void StorageTable::bind(std::uint32_t index, std::span<const std::byte> bytes, bool big_endian) {
    Storage& storage = storages_.at(index);
    if (bytes.size() != storage.nbytes) {
        throw Error(ErrorCode::malformed,
                    "storage \"" + storage.key + "\" record holds " + std::to_string(bytes.size()) +
                        " bytes but its persistent id declares " + std::to_string(storage.nbytes));
    }
    storage.bytes = bytes;
    storage.bound = true;
    storage.big_endian = big_endian;
}

std::span<std::byte> StorageTable::own_buffer(std::size_t size) {
    owned_.emplace_back(size);
    return owned_.back();
}

}  // namespace picklejail::loader
