// ZipArchive on archives assembled byte by byte here, for the layouts a zip
// writer library will not produce on demand: a local header found through a
// ZIP64 extra field (archives past 4 GiB), and a directory that lies about it.
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "loader/limits.hpp"
#include "loader/zip_archive.hpp"
#include "test_support.hpp"

namespace {

using picklejail::Error;
using picklejail::ErrorCode;
using picklejail::loader::Limits;
using picklejail::loader::ZipArchive;
using picklejail::test::le;

constexpr std::uint32_t kZip64 = 0xFFFFFFFF;

struct StoredFile {
    StoredFile(std::string file_name, std::string file_data, bool deflate = false,
               std::string after = {})
        : name(std::move(file_name)),
          data(std::move(file_data)),
          deflated(deflate),
          after_stream(std::move(after)) {}
    std::string name;
    std::string data;
    bool deflated;
    std::string after_stream;  // bytes appended to a deflated record's stream
};

// Raw deflate (no zlib header), as zip records hold it.
std::string deflate_raw(const std::string& data) {
    z_stream z{};
    REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    std::string out(deflateBound(&z, static_cast<uLong>(data.size())), '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    z.avail_in = static_cast<uInt>(data.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

enum class OffsetField { plain, zip64_extra, zip64_without_extra };

// One stored entry per file; the central directory gives each local header's
// offset either directly or (as writers do past 4 GiB) through a ZIP64 extra
// field: tag 1, then the 8-byte offset (the sizes fit, so they are absent).
std::string assemble(const std::vector<StoredFile>& files, OffsetField offsets) {
    std::string out, directory;
    for (const auto& file : files) {
        const auto crc = crc32(0, reinterpret_cast<const Bytef*>(file.data.data()),
                               static_cast<uInt>(file.data.size()));
        const std::string stored =
            file.deflated ? deflate_raw(file.data) + file.after_stream : file.data;
        const std::string method = le(file.deflated ? 8 : 0, 2);
        const std::string sizes = le(crc, 4) + le(stored.size(), 4) + le(file.data.size(), 4);
        const std::uint64_t local_offset = out.size();
        out += "PK\x03\x04" + le(20, 2) + le(0, 2) + method + le(0, 4) + sizes +
               le(file.name.size(), 2) + le(0, 2) + file.name + stored;
        std::string extra;
        if (offsets == OffsetField::zip64_extra) extra = le(1, 2) + le(8, 2) + le(local_offset, 8);
        const std::uint64_t offset_field = offsets == OffsetField::plain ? local_offset : kZip64;
        directory += "PK\x01\x02" + le(45, 2) + le(45, 2) + le(0, 2) + method + le(0, 4) + sizes +
                     le(file.name.size(), 2) + le(extra.size(), 2) + le(0, 2) + le(0, 2) +
                     le(0, 2) + le(0, 4) + le(offset_field, 4) + file.name + extra;
    }
    const std::uint64_t directory_offset = out.size();
    out += directory;
    out += "PK\x05\x06" + le(0, 2) + le(0, 2) + le(files.size(), 2) + le(files.size(), 2) +
           le(directory.size(), 4) + le(directory_offset, 4) + le(0, 2);
    return out;
}

std::span<const std::byte> bytes_of(const std::string& text) {
    return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

std::string stored_text(ZipArchive& zip, const std::string& relative) {
    const auto* entry = zip.find(relative);
    REQUIRE(entry != nullptr);
    const auto bytes = zip.stored_bytes(*entry);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

const std::vector<StoredFile> kFiles{{"archive/data.pkl", "pickle bytes"},
                                     {"archive/data/0", std::string(64, 'x')}};

}  // namespace

TEST_CASE("zip_archive: stored entries are found through the directory's offsets") {
    const std::string archive = assemble(kFiles, OffsetField::plain);
    const Limits limits;
    ZipArchive zip(bytes_of(archive), limits);
    CHECK(zip.prefix() == "archive/");
    CHECK(stored_text(zip, "data.pkl") == "pickle bytes");
    CHECK(stored_text(zip, "data/0") == std::string(64, 'x'));
    CHECK(zip.find("data/1") == nullptr);
}

TEST_CASE("zip_archive: a ZIP64 extra field gives the local header offset") {
    const std::string archive = assemble(kFiles, OffsetField::zip64_extra);
    const Limits limits;
    ZipArchive zip(bytes_of(archive), limits);
    CHECK(stored_text(zip, "data.pkl") == "pickle bytes");
    CHECK(stored_text(zip, "data/0") == std::string(64, 'x'));
}

TEST_CASE("zip_archive: a ZIP64 offset marker without its extra field is refused") {
    const std::string archive = assemble(kFiles, OffsetField::zip64_without_extra);
    const Limits limits;
    try {
        ZipArchive zip(bytes_of(archive), limits);
        FAIL("accepted an archive whose local header cannot be located");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::malformed);
    }
}

TEST_CASE("zip_archive: a local header that disagrees with the directory is refused") {
    std::string archive = assemble(kFiles, OffsetField::plain);
    const auto second_local = archive.find("PK\x03\x04", 4);
    REQUIRE(second_local != std::string::npos);
    archive[second_local + 18] = 63;  // compressed size 64 -> 63, no data descriptor
    const Limits limits;
    ZipArchive zip(bytes_of(archive), limits);
    CHECK(stored_text(zip, "data.pkl") == "pickle bytes");
    try {
        (void)zip.stored_bytes(*zip.find("data/0"));
        FAIL("accepted a local header with another size");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::malformed);
        CHECK(std::string(e.what()).find("compressed size") != std::string::npos);
    }
}

namespace {

std::string inflated_text(const std::vector<StoredFile>& files) {
    const std::string archive = assemble(files, OffsetField::plain);
    const Limits limits;
    ZipArchive zip(bytes_of(archive), limits);
    const auto* entry = zip.find("data/0");
    REQUIRE(entry != nullptr);
    std::string out(entry->uncompressed_size, '\0');
    zip.inflate(*entry, std::as_writable_bytes(std::span(out)));
    return out;
}

}  // namespace

TEST_CASE("zip_archive: deflated records inflate with zlib to exactly their declared size") {
    const std::string text(100'000, 'a');
    CHECK(inflated_text({{"archive/data.pkl", "p"}, {"archive/data/0", text, true}}) == text);
}

TEST_CASE("zip_archive: bytes after a record's deflate stream are refused") {
    try {
        (void)inflated_text(
            {{"archive/data.pkl", "p"}, {"archive/data/0", std::string(64, 'b'), true, "hidden"}});
        FAIL("accepted bytes hidden after a deflate stream");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::malformed);
        CHECK(std::string(e.what()).find("after its deflate stream") != std::string::npos);
    }
}
