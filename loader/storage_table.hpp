// Storages declared by persistent ids, and the bytes the container format
// later binds to them. One key keeps one dtype and size (torch caches by key;
// a file that disagrees with itself is malformed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "loader/dtype.hpp"
#include "loader/limits.hpp"

namespace picklejail::loader {

struct Storage {
    std::string key;
    DType dtype;                       // uint8 for UntypedStorage
    std::uint64_t nbytes;              // numel × element size, checked
    std::string location;              // "cpu", "cuda:0": logged, never interpreted
    std::span<const std::byte> bytes;  // bound by the format reader
    bool bound = false;
    bool big_endian = false;  // bytes must be swapped per element when written
    bool quantized = false;   // QInt8/QUInt8/QInt32Storage: only _rebuild_qtensor may view it
};

// Lets an unordered_map keyed by std::string be searched with a string_view.
struct TransparentStringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view text) const noexcept {
        return std::hash<std::string_view>{}(text);
    }
};

class StorageTable {
  public:
    explicit StorageTable(const Limits& limits) : limits_(limits) {}

    // Returns the index for `key`, declaring it on first sight; a second
    // declaration with another dtype or size throws `malformed`.
    [[nodiscard]] std::uint32_t declare(const std::string& key, DType dtype, std::uint64_t numel,
                                        const std::string& location, bool quantized = false);

    // Binds the record's bytes; its length must equal the declared size exactly
    // (the CVE-2026-24747 lesson).
    void bind(std::uint32_t index, std::span<const std::byte> bytes, bool big_endian);

    // The index of an already declared key.
    [[nodiscard]] std::optional<std::uint32_t> find(std::string_view key) const {
        const auto it = by_key_.find(key);
        if (it == by_key_.end()) return std::nullopt;
        return it->second;
    }
    [[nodiscard]] const Storage& at(std::uint32_t index) const { return storages_.at(index); }
    [[nodiscard]] Storage& at(std::uint32_t index) { return storages_.at(index); }
    [[nodiscard]] std::size_t size() const noexcept { return storages_.size(); }
    [[nodiscard]] std::vector<Storage>& all() noexcept { return storages_; }

    // Keeps decompressed record bytes alive as long as the table.
    [[nodiscard]] std::span<std::byte> own_buffer(std::size_t size);

  private:
    const Limits& limits_;
    std::vector<Storage> storages_;
    std::unordered_map<std::string, std::uint32_t, TransparentStringHash, std::equal_to<>> by_key_;
    std::vector<std::vector<std::byte>> owned_;
};

}  // namespace picklejail::loader
