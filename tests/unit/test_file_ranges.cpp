// Mapped loads (loader/file_ranges.hpp, ipc/file_ranges_check.hpp) on real
// torch.save files: every tensor left in the file must name exactly the
// bytes the copying conversion writes for it, only stored zip records are
// left there, and the receiver's checks refuse ranges that lie.
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "common/error.hpp"
#include "ipc/file_ranges_check.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/checkpoint_loader.hpp"
#include "test_support.hpp"

namespace {

using namespace picklejail;

const std::string kFixtures = std::string(PICKLEJAIL_SOURCE_DIR) + "/tests/fixtures/";

loader::SourceFileIdentity identity_for(std::uint64_t size) {
    return {7, 11, size, 1'000'000'000'123, 2'000'000'000'456};
}

std::string file_ranges_of(const loader::Conversion& conversion) {
    const auto it = conversion.metadata().find(std::string(loader::kMetaFileRanges));
    REQUIRE(it != conversion.metadata().end());
    return it->second;
}

}  // namespace

TEST_CASE("mapped load: each file range holds the bytes the copy would write") {
    for (const char* name : {"mapped/mixed_large.pt", "torch-2.11/cnn_state_dict.pt",
                             "torch-2.11/torchvision_squeezenet1_1.pt"}) {
        INFO(name);
        const auto input = test::read_bytes(kFixtures + name);
        const auto& policy = test::policy_named("weights");
        const auto full = loader::Conversion::plan(input, policy, {});
        const auto id = identity_for(input.size());
        const auto mapped = loader::Conversion::plan(input, policy, {}, {}, nullptr, &id);
        REQUIRE(mapped.mapped_tensors() > 0);
        REQUIRE(mapped.mapped_tensors() + mapped.layout().tensors().size() ==
                full.layout().tensors().size());
        std::vector<std::byte> image(full.output_size());
        full.write(image);
        const auto index = ipc::check_safetensors(image);
        const auto ranges = ipc::parse_file_ranges(file_ranges_of(mapped));
        CHECK(ranges.size == input.size());
        CHECK(ranges.mtime_ns == id.mtime_ns);
        CHECK(ranges.tensors.size() == mapped.mapped_tensors());
        for (const auto& range : ranges.tensors) {
            INFO(range.name);
            CHECK(range.end - range.begin >= loader::kMinMappedBytes);
            CHECK(range.begin % (ipc::dtype_bits(range.dtype) / 8) == 0);
            const auto entry = std::find_if(index.tensors.begin(), index.tensors.end(),
                                            [&](const auto& t) { return t.name == range.name; });
            REQUIRE(entry != index.tensors.end());
            CHECK(entry->dtype == range.dtype);
            CHECK(entry->shape == range.shape);
            REQUIRE(entry->end - entry->begin == range.end - range.begin);
            CHECK(std::memcmp(image.data() + index.data_offset + entry->begin,
                              input.data() + range.begin, range.end - range.begin) == 0);
        }
        // The layout-only image is a valid safetensors file of the rest.
        std::vector<std::byte> layout(mapped.output_size());
        mapped.write(layout);
        const auto rest = ipc::check_safetensors(layout);
        for (const auto& t : rest.tensors) {
            for (const auto& r : ranges.tensors) CHECK(t.name != r.name);
        }
    }
}

TEST_CASE("mapped load: large contiguous tensors of every dtype are mapped, small ones copied") {
    const auto input = test::read_bytes(kFixtures + "mapped/mixed_large.pt");
    const auto id = identity_for(input.size());
    const auto mapped =
        loader::Conversion::plan(input, test::policy_named("weights"), {}, {}, nullptr, &id);
    std::set<std::string> in_file;
    for (const auto& range : ipc::parse_file_ranges(file_ranges_of(mapped)).tensors)
        in_file.insert(range.name);
    std::set<std::string> in_image;
    for (const auto& t : mapped.layout().tensors()) in_image.insert(t.source.name);
    // "tied" is an alias of "base"; "transposed" is not contiguous; the tiny ones are below a page.
    CHECK(in_file == std::set<std::string>{"base", "bf16", "bool", "c128", "c64", "f16", "f32",
                                           "f64", "i16", "i32", "i64", "i8", "rows", "u8"});
    CHECK(in_image == std::set<std::string>{"tiny", "tiny_f16", "transposed"});
}

TEST_CASE("mapped load: legacy files map nothing and say so") {
    const auto input = test::read_bytes(kFixtures + "torch-2.11/legacy_format.pt");
    const auto id = identity_for(input.size());
    const auto mapped =
        loader::Conversion::plan(input, test::policy_named("weights"), {}, {}, nullptr, &id);
    CHECK(mapped.mapped_tensors() == 0);
    CHECK(ipc::parse_file_ranges(file_ranges_of(mapped)).tensors.empty());
    CHECK(!mapped.layout().tensors().empty());
}

TEST_CASE("file ranges: the receiver refuses ranges that lie") {
    const auto text = [](const nlohmann::json& entry) {
        return nlohmann::json{
            {"file", {{"dev", 1}, {"ino", 2}, {"size", 256}, {"mtime_ns", 3}, {"ctime_ns", 4}}},
            {"tensors", {{"w", entry}}}}
            .dump();
    };
    const nlohmann::json good{{"dtype", "F32"}, {"shape", {4}}, {"file_offsets", {64, 80}}};
    CHECK(ipc::parse_file_ranges(text(good)).tensors.at(0).end == 80);
    for (const auto& [bad, why] : std::vector<std::pair<nlohmann::json, std::string>>{
             {{{"dtype", "F32"}, {"shape", {4}}, {"file_offsets", {64, 84}}}, "match its shape"},
             {{{"dtype", "F32"}, {"shape", {4}}, {"file_offsets", {248, 264}}}, "outside"},
             {{{"dtype", "F32"}, {"shape", {4}}, {"file_offsets", {66, 82}}}, "aligned"},
             {{{"dtype", "X"}, {"shape", {4}}, {"file_offsets", {64, 80}}}, "dtype"},
             {{{"dtype", "F32"}, {"shape", {-4}}, {"file_offsets", {64, 80}}}, "non-negative"},
             {{{"dtype", "F32"}, {"shape", {1ULL << 62, 8}}, {"file_offsets", {64, 80}}},
              "more bytes"},
             {{{"dtype", "F32"}, {"shape", {4}}}, "exactly"}}) {
        INFO(bad.dump());
        try {
            (void)ipc::parse_file_ranges(text(bad));
            FAIL("accepted");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::malformed);
            CHECK_THAT(e.message(), Catch::Contains(why));
        }
    }
    const auto ranges = ipc::parse_file_ranges(text(good));
    struct stat st {};
    st.st_dev = 1;
    st.st_ino = 2;
    st.st_size = 256;
    st.st_mtim = {0, 3};
    st.st_ctim = {0, 4};
    CHECK_NOTHROW(ipc::check_same_file(ranges, st));
    st.st_ctim = {0, 5};  // rewritten in place: the change time moved
    CHECK_THROWS_AS(ipc::check_same_file(ranges, st), Error);
}
