// Zip checkpoints (torch.save since 1.6): zlib's minizip walks the central
// directory, records are read (stored) or inflated with zlib (deflated)
// straight from memory. Enforces what torch's reader enforces and what it forgot:
// one top-level prefix, no "..", no absolute names, no duplicates, no
// encryption, central directory sizes over local ones, bounded inflation.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "loader/limits.hpp"

namespace picklejail::loader {

struct ZipEntry {
    std::string name;  // full name inside the archive
    std::uint64_t compressed_size = 0;
    std::uint64_t uncompressed_size = 0;
    std::uint16_t method = 0;  // 0 stored, 8 deflated
    std::uint32_t crc = 0;
    std::uint64_t local_header = 0;  // file offset of the entry's local header
};

class ZipArchive {
  public:
    // Opens the archive and reads its whole directory.
    ZipArchive(std::span<const std::byte> bytes, const Limits& limits);
    // Opens the archive and reads only the directory's first entry
    // (first_entry()); read_directory() reads the rest, on any one thread,
    // before prefix(), entries() or find() are used. Meanwhile another thread
    // may read the first entry's bytes (stored_bytes, inflate): they touch
    // nothing read_directory() writes.
    struct FirstEntryOnly {};
    ZipArchive(std::span<const std::byte> bytes, const Limits& limits, FirstEntryOnly);
    ~ZipArchive();
    ZipArchive(const ZipArchive&) = delete;
    ZipArchive& operator=(const ZipArchive&) = delete;

    // The first directory entry, checked as read_directory() checks each.
    [[nodiscard]] const ZipEntry& first_entry() const noexcept { return first_entry_; }
    void read_directory();

    // "archive/" — the directory of the first entry, shared by every entry.
    [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }
    [[nodiscard]] const std::vector<ZipEntry>& entries() const noexcept { return entries_; }
    // Looks up prefix + relative name.
    [[nodiscard]] const ZipEntry* find(std::string_view relative_name) const;

    // A stored entry's bytes, straight from the input (zero copy).
    [[nodiscard]] std::span<const std::byte> stored_bytes(const ZipEntry& entry);
    // Inflates a deflated entry into `out` (exactly uncompressed_size bytes).
    void inflate(const ZipEntry& entry, std::span<std::byte> out);

  private:
    struct MemoryStream;
    void open();
    // Reads and checks the entry minizip's cursor is on.
    [[nodiscard]] ZipEntry current_entry(std::vector<char>& name_buffer) const;
    [[nodiscard]] std::uint64_t local_header_offset(const ZipEntry& entry,
                                                    std::uint64_t directory_record) const;
    // Checks the local header against the directory; returns where the data starts.
    [[nodiscard]] std::uint64_t data_start(const ZipEntry& entry) const;

    std::span<const std::byte> bytes_;
    const Limits& limits_;
    std::unique_ptr<MemoryStream> stream_;
    void* handle_ = nullptr;         // unzFile, closed in the destructor
    ZipEntry first_entry_;
    std::vector<ZipEntry> entries_;  // not resized after read_directory: by_relative_name_ views it
    std::unordered_map<std::string_view, std::size_t> by_relative_name_;  // name minus prefix_
    std::string prefix_;
};

[[nodiscard]] bool looks_like_zip(std::span<const std::byte> bytes) noexcept;

}  // namespace picklejail::loader
