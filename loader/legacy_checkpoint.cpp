#include <algorithm>
#include <array>
#include <cstring>

#include "loader/byte_reader.hpp"
#include "loader/checkpoint_readers.hpp"
#include "loader/persistent_id.hpp"

namespace picklejail::loader {
namespace {

// torch/serialization.py MAGIC_NUMBER = 0x1950a86a20f9469cfc6c, little-endian.
constexpr std::array<std::uint8_t, 10> kMagic{0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                              0x20, 0x6a, 0xa8, 0x50, 0x19};
constexpr std::int64_t kProtocolVersion = 1001;

struct Pickled {
    ValuePtr value;
    PickleInfo info;
};

Pickled run_pickle(std::span<const std::byte> input, std::size_t& offset, CallContext& ctx,
                   PersistentLoader persistent) {
    PickleVm vm(input.subspan(offset), ctx, std::move(persistent));
    Pickled out{vm.run(), vm.info()};
    offset += out.info.end_offset;
    return out;
}

}  // namespace

bool is_legacy_magic(const Value& value) noexcept {
    const auto* big = value.as<BigIntValue>();
    return big != nullptr && big->le_bytes.size() == kMagic.size() &&
           std::equal(kMagic.begin(), kMagic.end(), big->le_bytes.begin());
}

bool looks_like_tar(std::span<const std::byte> input) noexcept {
    return input.size() >= 262 && std::memcmp(input.data() + 257, "ustar", 5) == 0;
}

ReadResult read_legacy_checkpoint(std::span<const std::byte> input, std::size_t offset,
                                  CallContext& ctx) {
    const auto version = run_pickle(input, offset, ctx, nullptr);
    if (as_int(*version.value) != kProtocolVersion) {
        throw Error(ErrorCode::unsupported, "legacy checkpoint protocol version is not 1001");
    }
    (void)run_pickle(input, offset, ctx, nullptr);  // sys_info: describes the writer only

    std::vector<std::uint32_t> declared;
    PersistentLoader declare_storage = [&declared](const ValuePtr& pid, CallContext& c) {
        if (auto cls = legacy_module_class(pid)) return cls;
        const StoragePid storage = parse_storage_pid(pid, 6, c);
        const auto index = c.storages.declare(storage.key, storage.dtype, storage.numel,
                                              storage.location, storage.quantized);
        declared.push_back(index);
        return c.arena.make(StorageValue{index});
    };
    auto main = run_pickle(input, offset, ctx, declare_storage);

    const auto keys = run_pickle(input, offset, ctx, nullptr);
    const auto* key_list = keys.value->as<ListValue>();
    if (key_list == nullptr)
        throw Error(ErrorCode::malformed, "legacy storage key list is not a list");

    // Then, per key in list order: int64 LE element count + raw little-endian bytes.
    ByteReader reader(input.subspan(offset));
    for (const auto& key_value : key_list->items) {
        const auto* key = key_value->as<StringValue>();
        if (key == nullptr) throw Error(ErrorCode::malformed, "legacy storage key is not a str");
        // Only storages the main pickle declared exist in the table at this point.
        const auto index = ctx.storages.find(key->utf8);
        if (!index) {
            throw Error(ErrorCode::malformed,
                        "legacy storage \"" + key->utf8 + "\" is not used by the pickle");
        }
        Storage& storage = ctx.storages.at(*index);
        if (storage.bound)
            throw Error(ErrorCode::malformed, "legacy storage \"" + key->utf8 + "\" appears twice");
        const std::uint64_t count = reader.le<8>("legacy storage size");
        const auto elsize = info(storage.dtype).element_size;
        if (count > storage.nbytes / elsize || count * elsize != storage.nbytes) {
            throw Error(ErrorCode::malformed, "legacy storage \"" + key->utf8 + "\" holds " +
                                                  std::to_string(count) +
                                                  " elements but its persistent id declares " +
                                                  std::to_string(storage.nbytes / elsize));
        }
        ctx.storages.bind(*index, reader.take(storage.nbytes, "legacy storage data"), false);
    }
    if (!reader.at_end())
        throw Error(ErrorCode::malformed, "legacy checkpoint has bytes after its last storage");
    for (const auto index : declared) {
        if (!ctx.storages.at(index).bound) {
            throw Error(ErrorCode::malformed,
                        "legacy storage \"" + ctx.storages.at(index).key + "\" has no data");
        }
    }
    return {main.value, main.info};
}

}  // namespace picklejail::loader
