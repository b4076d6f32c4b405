// Conversion::plan with a helper thread reads a zip checkpoint's directory
// beside the pickle VM (loader/zip_checkpoint.cpp). The helper may only make
// it faster: on real checkpoints and on mutations of them that break the
// archive, the pickle or a storage record (each failure the one-thread path
// reports, in its order), both paths give the same image or the same error.
#include <zlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <exception>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../thread_helper.hpp"
#include "common/error.hpp"
#include "loader/checkpoint_loader.hpp"
#include "loader/zip_archive.hpp"
#include "test_support.hpp"

namespace {

using namespace picklejail;
using loader::Conversion;

const std::string kFixtures = std::string(PICKLEJAIL_SOURCE_DIR) + "/tests/fixtures/";

using test::read_bytes;
using test::ThreadHelper;

// The image, or the error's code and message.
struct Outcome {
    std::vector<std::byte> image;
    std::optional<ErrorCode> code;
    std::string message;
    bool operator==(const Outcome&) const = default;
};

Outcome convert(std::span<const std::byte> input, loader::HelperThread* helper) {
    Outcome outcome;
    try {
        const auto conversion =
            Conversion::plan(input, test::policy_named("checkpoint"), {}, {}, helper);
        outcome.image.resize(conversion.output_size());
        conversion.write(outcome.image);
    } catch (const Error& e) {
        outcome.code = e.code();
        outcome.message = e.what();
    }
    return outcome;
}

// Both paths, compared; returns the outcome for further checks. `used`:
// whether the helper read the directory (the first entry is data.pkl).
Outcome same_with_and_without_helper(std::span<const std::byte> input, bool* used = nullptr) {
    Outcome alone = convert(input, nullptr);
    ThreadHelper helper;
    const Outcome helped = convert(input, &helper);
    INFO("one thread: " << (alone.code ? alone.message : "ok"));
    INFO("with helper: " << (helped.code ? helped.message : "ok"));
    REQUIRE(helped == alone);
    if (used != nullptr) *used = helper.started() > 0;
    return alone;
}

std::uint32_t le32(const std::vector<std::byte>& b, std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint32_t>(b[at + i]);
    return v;
}

void put_le32(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
}

// An archive whose records can be edited in place: renamed (same length, in
// the local header and the directory) or rewritten (same size, CRC fixed up),
// so only the intended rule breaks.
class EditableZip {
  public:
    explicit EditableZip(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {
        const loader::ZipArchive zip(bytes_, limits_);
        entries_ = zip.entries();
        // Central records, in directory order (as entries()); no ZIP64 here.
        std::size_t at = le32(bytes_, bytes_.size() - 22 + 16);
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            central_.push_back(at);
            at += 46 + (le32(bytes_, at + 28) & 0xFFFF) + (le32(bytes_, at + 30) & 0xFFFF) +
                  (le32(bytes_, at + 32) & 0xFFFF);
        }
    }
    [[nodiscard]] const std::vector<std::byte>& bytes() const { return bytes_; }
    [[nodiscard]] std::size_t count() const { return entries_.size(); }
    [[nodiscard]] const std::string& name(std::size_t i) const { return entries_[i].name; }
    [[nodiscard]] std::uint64_t size(std::size_t i) const { return entries_[i].uncompressed_size; }
    [[nodiscard]] std::optional<std::size_t> index_of(const std::string& suffix) const {
        for (std::size_t i = 0; i < entries_.size(); ++i)
            if (entries_[i].name.ends_with(suffix)) return i;
        return std::nullopt;
    }
    void rename(std::size_t i, const std::string& new_name) {
        REQUIRE(new_name.size() == entries_[i].name.size());
        std::memcpy(bytes_.data() + entries_[i].local_header + 30, new_name.data(),
                    new_name.size());
        std::memcpy(bytes_.data() + central_[i] + 46, new_name.data(), new_name.size());
        entries_[i].name = new_name;
    }
    // The stored data of entry i (torch stores records uncompressed).
    [[nodiscard]] std::span<std::byte> data(std::size_t i) {
        REQUIRE(entries_[i].method == 0);
        const std::size_t local = entries_[i].local_header;
        const std::size_t start =
            local + 30 + (le32(bytes_, local + 26) & 0xFFFF) + (le32(bytes_, local + 28) & 0xFFFF);
        return {bytes_.data() + start, entries_[i].uncompressed_size};
    }
    void fix_crc(std::size_t i) {
        const auto d = data(i);
        const auto crc = static_cast<std::uint32_t>(
            crc32(0, reinterpret_cast<const Bytef*>(d.data()), static_cast<uInt>(d.size())));
        put_le32(bytes_, entries_[i].local_header + 14, crc);
        put_le32(bytes_, central_[i] + 16, crc);
    }

  private:
    std::vector<std::byte> bytes_;
    loader::Limits limits_;
    std::vector<loader::ZipEntry> entries_;
    std::vector<std::size_t> central_;
};

std::vector<std::filesystem::path> zip_fixtures() {
    std::vector<std::filesystem::path> out;
    for (const char* dir : {"torch-1.13", "torch-2.11"}) {
        for (const auto& file : std::filesystem::directory_iterator(kFixtures + dir)) {
            if (file.path().extension() != ".pt") continue;
            const auto bytes = read_bytes(file.path());
            if (loader::looks_like_zip(bytes)) out.push_back(file.path());
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

TEST_CASE("zip_helper: every zip fixture converts to the same image with a helper") {
    const auto fixtures = zip_fixtures();
    REQUIRE(fixtures.size() >= 20);
    std::size_t converted = 0, helped = 0;
    for (const auto& path : fixtures) {
        INFO(path.string());
        bool used = false;
        if (!same_with_and_without_helper(read_bytes(path), &used).code) ++converted;
        if (used) ++helped;
    }
    REQUIRE(converted >= 15);  // most fixtures load; torchscript.pt and kin are refused alike
    REQUIRE(helped >= 15);     // and torch put data.pkl first in them
}

// "archive/data/0" -> "archive/<to>", the same length.
std::vector<std::byte> renamed(const std::vector<std::byte>& original, const std::string& suffix,
                               const std::string& to) {
    EditableZip zip(original);
    const auto index = zip.index_of(suffix);
    REQUIRE(index);
    const std::string& name = zip.name(*index);
    zip.rename(*index, name.substr(0, name.size() - to.size()) + to);
    return zip.bytes();
}

TEST_CASE("zip_helper: archive and storage failures are reported as without a helper") {
    const auto original = read_bytes(kFixtures + "torch-2.11/cnn_state_dict.pt");
    REQUIRE(EditableZip(original).index_of("/data.pkl") == std::size_t{0});  // written first
    SECTION("a storage record the pickle names is missing") {
        const auto outcome = same_with_and_without_helper(renamed(original, "/data/0", "/Data/0"));
        REQUIRE(outcome.code == ErrorCode::malformed);
        REQUIRE_THAT(outcome.message, Catch::Contains("storage record data/0 is missing"));
    }
    SECTION("a TorchScript record is refused before any storage") {
        const auto outcome = same_with_and_without_helper(renamed(original, "/data/0", "/code/0"));
        REQUIRE(outcome.code == ErrorCode::unsupported);
        REQUIRE_THAT(outcome.message, Catch::Contains("TorchScript"));
    }
    SECTION("a duplicate entry is refused before anything else") {
        const auto outcome = same_with_and_without_helper(renamed(original, "/data/1", "/data/0"));
        REQUIRE(outcome.code == ErrorCode::malformed);
        REQUIRE_THAT(outcome.message, Catch::Contains("duplicate entry"));
    }
    SECTION("a record whose size differs from its persistent id") {
        // Two storages of different sizes trade names.
        EditableZip zip(original);
        const auto first = zip.index_of("/data/0");
        REQUIRE(first);
        std::optional<std::size_t> other;
        for (std::size_t i = 1; i < zip.count() && !other; ++i) {
            if (zip.name(i).find("/data/") != std::string::npos &&
                zip.name(i).size() == zip.name(*first).size() && zip.size(i) != zip.size(*first)) {
                other = i;
            }
        }
        REQUIRE(other);
        const std::string first_name = zip.name(*first);
        const std::string other_name = zip.name(*other);
        zip.rename(*first, other_name);
        zip.rename(*other, first_name);
        const auto outcome = same_with_and_without_helper(zip.bytes());
        REQUIRE(outcome.code == ErrorCode::malformed);
        REQUIRE_THAT(outcome.message, Catch::Contains("bytes but its persistent id declares"));
    }
}

TEST_CASE("zip_helper: byte flips in data.pkl fail (or not) exactly as without a helper") {
    // Each flip is a different pickle: a refused global, a bad opcode, a
    // storage key that names no record, a shape that does not fit, ... In
    // every other round the first storage record is missing too, so a
    // binding failure and the pickle's own compete for first place.
    const auto original = read_bytes(kFixtures + "torch-2.11/cnn_state_dict.pt");
    const auto without_first = renamed(original, "/data/0", "/Data/0");
    std::mt19937 random(20261126);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible on purpose
    std::size_t failures = 0;
    std::size_t flips_that_failed_alone = 0;
    for (int round = 0; round < 400; ++round) {
        EditableZip zip(round % 2 == 0 ? original : without_first);
        auto pickle = zip.data(0);
        std::uniform_int_distribution<std::size_t> where(0, pickle.size() - 1);
        std::uniform_int_distribution<int> byte(0, 255);
        const std::size_t at = where(random);
        pickle[at] = static_cast<std::byte>(byte(random));
        zip.fix_crc(0);
        INFO("round " << round << ": byte " << at);
        bool used = false;
        const auto outcome = same_with_and_without_helper(zip.bytes(), &used);
        REQUIRE(used);
        if (outcome.code) ++failures;
        if (round % 2 == 0 && outcome.code) ++flips_that_failed_alone;
    }
    REQUIRE(flips_that_failed_alone > 30);  // the flips do reach the pickle's failure paths
    REQUIRE(failures > 200);
}
