// Tensor views in torch.save zip archives, end to end through
// Conversion::plan: archives are written here with minizip, their data.pkl
// assembled by hand as torch.save writes it, and the output image checked by
// the independent safetensors validator (pytorch-formats.md section 11).
#include <minizip/zip.h>
#include <unistd.h>

#include <bit>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/checkpoint_loader.hpp"
#include "loader/zip_archive.hpp"
#include "sandbox/policy_files.hpp"
#include "test_support.hpp"

// Views and archives are written with designated initializers that leave the
// defaulted members out on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using picklejail::Error;
using namespace picklejail::loader;
using picklejail::test::le;
using picklejail::test::op;
using Bytes = std::vector<std::byte>;

const Policy& weights() {
    return picklejail::test::policy_named("weights");
}

// ---- zip writing ----------------------------------------------------------

struct Record {
    std::string name;
    std::string data;
    bool deflate = false;
};

// Writes `records` with minizip into a temporary file and reads it back.
Bytes make_zip(const std::vector<Record>& records) {
    char path[] = "/tmp/picklejail-test-zip-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    struct Remove {
        const char* path;
        ~Remove() { std::remove(path); }
    } remove_file{path};

    zipFile zip = zipOpen64(path, APPEND_STATUS_CREATE);
    REQUIRE(zip != nullptr);
    for (const auto& record : records) {
        zip_fileinfo file_info{};
        REQUIRE(zipOpenNewFileInZip64(zip, record.name.c_str(), &file_info, nullptr, 0, nullptr, 0,
                                      nullptr, record.deflate ? Z_DEFLATED : 0,
                                      record.deflate ? Z_BEST_COMPRESSION : 0, 0) == ZIP_OK);
        if (!record.data.empty()) {
            REQUIRE(zipWriteInFileInZip(zip, record.data.data(),
                                        static_cast<unsigned>(record.data.size())) == ZIP_OK);
        }
        REQUIRE(zipCloseFileInZip(zip) == ZIP_OK);
    }
    REQUIRE(zipClose(zip, nullptr) == ZIP_OK);

    std::ifstream in(path, std::ios::binary);
    const std::string raw{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    Bytes out(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) out[i] = static_cast<std::byte>(raw[i]);
    return out;
}

// Sets general-purpose flag bits (offset 6 in local headers, 8 in central
// directory entries) or the method field (8 / 10) in every header.
void patch_headers(Bytes& zip, std::uint16_t flag_bits, std::optional<std::uint16_t> method) {
    const auto at = [&](std::size_t i) { return std::to_integer<unsigned>(zip[i]); };
    for (std::size_t i = 0; i + 12 <= zip.size(); ++i) {
        if (at(i) != 'P' || at(i + 1) != 'K') continue;
        std::size_t flag = 0, method_at = 0;
        if (at(i + 2) == 3 && at(i + 3) == 4) {
            flag = i + 6;
            method_at = i + 8;
        } else if (at(i + 2) == 1 && at(i + 3) == 2) {
            flag = i + 8;
            method_at = i + 10;
        } else {
            continue;
        }
        zip[flag] |= static_cast<std::byte>(flag_bits & 0xFF);
        if (method) {
            zip[method_at] = static_cast<std::byte>(*method & 0xFF);
            zip[method_at + 1] = static_cast<std::byte>(*method >> 8);
        }
    }
}

// Overwrites the uncompressed size of the `index`-th entry (in file order) in
// its local header (offset 22) and its central directory entry (offset 24).
void patch_uncompressed_size(Bytes& zip, std::size_t index, std::uint32_t size) {
    const auto at = [&](std::size_t i) { return std::to_integer<unsigned>(zip[i]); };
    std::size_t locals = 0, centrals = 0;
    for (std::size_t i = 0; i + 28 <= zip.size(); ++i) {
        if (at(i) != 'P' || at(i + 1) != 'K') continue;
        std::size_t field = 0;
        if (at(i + 2) == 3 && at(i + 3) == 4 && locals++ == index) field = i + 22;
        if (at(i + 2) == 1 && at(i + 3) == 2 && centrals++ == index) field = i + 24;
        for (int b = 0; field != 0 && b < 4; ++b)
            zip[field + static_cast<std::size_t>(b)] =
                static_cast<std::byte>((size >> (8 * b)) & 0xFF);
    }
    REQUIRE(locals > index);
    REQUIRE(centrals > index);
}

// ---- data.pkl assembly ----------------------------------------------------

std::string str(std::string_view s) {
    return "X" + le(s.size(), 4) + std::string(s);
}
std::string integer(std::int64_t v) {
    return op(0x8a) + op(8) + le(static_cast<std::uint64_t>(v), 8);
}
std::string int_tuple(const std::vector<std::int64_t>& values) {
    std::string out = "(";
    for (const auto v : values) out += integer(v);
    return out + "t";
}

struct View {
    std::string storage_class = "FloatStorage";
    std::string key = "0";
    std::int64_t numel = 0;
    std::int64_t offset = 0;
    std::vector<std::int64_t> size;
    std::vector<std::int64_t> stride;
    std::string dtype;  // set: _rebuild_tensor_v3 with torch.<dtype>
    bool requires_grad = false;
};

// _rebuild_tensor_v2(pid, offset, size, stride, False, OrderedDict()) as torch.save writes it.
std::string tensor(const View& v) {
    const std::string storage_module =
        v.storage_class == "UntypedStorage" ? "torch.storage" : "torch";
    std::string out = "ctorch._utils\n" +
                      std::string(v.dtype.empty() ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3") +
                      "\n(";
    out += "(" + str("storage") + "c" + storage_module + "\n" + v.storage_class + "\n" +
           str(v.key) + str("cpu") + integer(v.numel) + "tQ";
    out += integer(v.offset) + int_tuple(v.size) + int_tuple(v.stride) +
           op(v.requires_grad ? 0x88 : 0x89) + "ccollections\nOrderedDict\n)R";
    if (!v.dtype.empty()) out += "ctorch\n" + v.dtype + "\n";
    return out + "tR";
}

// The items of an OrderedDict of named tensors, without protocol or STOP.
std::string odict_of(const std::vector<std::pair<std::string, View>>& entries) {
    std::string out = "ccollections\nOrderedDict\n)R(";
    for (const auto& [name, view] : entries) out += str(name) + tensor(view);
    return out + "u";
}

// An OrderedDict state_dict of named tensors.
std::string state_dict(const std::vector<std::pair<std::string, View>>& entries) {
    return op(0x80) + op(2) + odict_of(entries) + ".";
}

std::string f32s(const std::vector<float>& values) {
    std::string out;
    for (const float v : values) out += le(std::bit_cast<std::uint32_t>(v), 4);
    return out;
}

struct Archive {
    std::string data_pkl;
    std::map<std::string, std::string> storages;  // key → bytes
    std::string prefix = "archive";
    bool deflate = false;
    std::optional<std::string> byteorder;
};

Bytes make_checkpoint(const Archive& a) {
    std::vector<Record> records{{a.prefix + "/data.pkl", a.data_pkl, a.deflate}};
    if (a.byteorder) records.push_back({a.prefix + "/byteorder", *a.byteorder, a.deflate});
    for (const auto& [key, bytes] : a.storages)
        records.push_back({a.prefix + "/data/" + key, bytes, a.deflate});
    records.push_back({a.prefix + "/version", "3\n", a.deflate});
    return make_zip(records);
}

// ---- converting -----------------------------------------------------------

struct Output {
    Bytes image;
    picklejail::ipc::SafetensorsIndex index;

    const picklejail::ipc::TensorEntry& entry(const std::string& name) const {
        for (const auto& e : index.tensors)
            if (e.name == name) return e;
        FAIL("no tensor named " << name);
        throw;  // unreachable
    }
    std::string bytes(const std::string& name) const {
        const auto& e = entry(name);
        const auto* begin =
            reinterpret_cast<const char*>(image.data() + index.data_offset + e.begin);
        return {begin, static_cast<std::size_t>(e.end - e.begin)};
    }
};

Output convert(const Bytes& input, const Limits& limits = {}) {
    const auto conversion = Conversion::plan(input, weights(), limits);
    CHECK(conversion.format() == InputFormat::zip);
    Output out;
    out.image.resize(conversion.output_size());
    conversion.write(out.image);
    out.index = picklejail::ipc::check_safetensors(out.image);
    return out;
}

struct Outcome {
    std::string code = "ok";
    std::string message;
};

Outcome outcome(const Bytes& input, const Limits& limits = {}) {
    try {
        (void)Conversion::plan(input, weights(), limits);
    } catch (const Error& e) {
        return {std::string(picklejail::to_string(e.code())), e.what()};
    }
    return {};
}

Outcome outcome(const Archive& archive, const Limits& limits = {}) {
    return outcome(make_checkpoint(archive), limits);
}

bool contains(const std::string& haystack, std::string_view needle) {
    return haystack.find(needle) != std::string::npos;
}

// One float tensor "w" over storage "0" holding `values`.
Archive one_tensor(const View& view, const std::string& storage_bytes) {
    return Archive{state_dict({{"w", view}}), {{"0", storage_bytes}}};
}

}  // namespace

TEST_CASE("tensor_views: a contiguous tensor converts exactly") {
    const auto out = convert(make_checkpoint(
        one_tensor({.numel = 6, .size = {2, 3}, .stride = {3, 1}}, f32s({0, 1, 2, 3, 4, 5}))));
    REQUIRE(out.index.tensors.size() == 1);
    CHECK(out.entry("w").dtype == "F32");
    CHECK(out.entry("w").shape == std::vector<std::uint64_t>{2, 3});
    CHECK(out.bytes("w") == f32s({0, 1, 2, 3, 4, 5}));
    CHECK(out.index.metadata.at("picklejail.source_format") == "zip");
}

TEST_CASE("tensor_views: storage record shorter or longer than numel x elsize (CVE-2026-24747)") {
    const View view{.numel = 4, .size = {4}, .stride = {1}};
    CHECK(outcome(one_tensor(view, f32s({1, 2, 3, 4}))).code == "ok");
    const auto shorter = outcome(one_tensor(view, f32s({1, 2, 3})));
    CHECK(shorter.code == "malformed");
    CHECK(contains(shorter.message, "holds 12 bytes"));
    CHECK(contains(shorter.message, "declares 16"));
    const auto longer = outcome(one_tensor(view, f32s({1, 2, 3, 4, 5})));
    CHECK(longer.code == "malformed");
    CHECK(contains(longer.message, "holds 20 bytes"));
    CHECK(outcome(one_tensor(view, f32s({1, 2, 3, 4}) + "x")).code == "malformed");
    // The CVE's shape: a tiny declared numel over an 80-byte record.
    CHECK(
        outcome(one_tensor({.numel = 2, .size = {2}, .stride = {1}}, std::string(80, 'A'))).code ==
        "malformed");
    // A missing record.
    Archive missing = one_tensor(view, f32s({1, 2, 3, 4}));
    missing.storages.clear();
    const auto none = outcome(missing);
    CHECK(none.code == "malformed");
    CHECK(contains(none.message, "data/0"));
}

TEST_CASE("tensor_views: a view past the storage end is malformed") {
    const std::string data = f32s({0, 1, 2, 3});
    CHECK(outcome(one_tensor({.numel = 4, .offset = 2, .size = {2}, .stride = {1}}, data)).code ==
          "ok");
    const auto past = outcome(one_tensor({.numel = 4, .size = {5}, .stride = {1}}, data));
    CHECK(past.code == "malformed");
    CHECK(contains(past.message, "reaches byte 20"));
    CHECK(outcome(one_tensor({.numel = 4, .offset = 3, .size = {2}, .stride = {1}}, data)).code ==
          "malformed");
    CHECK(outcome(one_tensor({.numel = 4, .offset = 4, .size = {}, .stride = {}}, data)).code ==
          "malformed");  // a scalar one element past the end
    CHECK(outcome(one_tensor({.numel = 4, .size = {2, 2}, .stride = {3, 1}}, data)).code ==
          "malformed");  // last element at index 4
    CHECK(outcome(one_tensor({.numel = 4, .size = {2, 2}, .stride = {2, 1}}, data)).code == "ok");
}

TEST_CASE("tensor_views: overflowing offsets, sizes and strides fail cleanly") {
    const std::string data = f32s({0, 1, 2, 3});
    const auto is_refusal = [](const std::string& code) {
        return code == "malformed" || code == "too_large";
    };
    constexpr std::int64_t kMax = INT64_MAX;
    const std::vector<View> views{
        {.numel = 4, .offset = kMax, .size = {2}, .stride = {1}},
        {.numel = 4, .offset = kMax, .size = {}, .stride = {}},
        {.numel = 4,
         .offset = std::int64_t{1} << 62,
         .size = {1},
         .stride = {1}},  // × elsize overflows
        {.numel = 4, .size = {2}, .stride = {kMax}},
        {.numel = 4, .size = {3}, .stride = {std::int64_t{1} << 62}},
        {.numel = 4, .size = {kMax, 2}, .stride = {0, 0}},
        {.numel = 4,
         .size = {std::int64_t{1} << 32, std::int64_t{1} << 32, 4},
         .stride = {0, 0, 0}},
        {.numel = 4, .size = {2, 2}, .stride = {kMax, kMax}},
    };
    for (const auto& view : views) {
        INFO("offset " << view.offset << " size[0] " << (view.size.empty() ? 0 : view.size[0]));
        const auto result = outcome(one_tensor(view, data));
        CHECK(is_refusal(result.code));
    }
    // Stride 0 expanding 4 bytes to 4 TiB passes the bounds check but not the output limit.
    CHECK(outcome(one_tensor({.numel = 4, .size = {std::int64_t{1} << 40}, .stride = {0}}, data))
              .code == "too_large");
    // A declared storage of 2^62 floats: the byte count overflows.
    CHECK(outcome(one_tensor({.numel = std::int64_t{1} << 62, .size = {1}, .stride = {1}}, data))
              .code == "malformed");
    // An integer that does not fit in 64 bits.
    std::string big = state_dict({{"w", {.numel = 4, .size = {1}, .stride = {1}}}});
    const std::string one = integer(1);
    const auto at = big.find(one + "t" + "(" + one + "t");  // size tuple (1,), then stride (1,)
    REQUIRE(at != std::string::npos);
    big.replace(at, one.size(), op(0x8a) + op(9) + std::string(8, '\xff') + op(0));
    CHECK(outcome(Archive{big, {{"0", data}}}).code == "malformed");
}

TEST_CASE("tensor_views: negative strides, sizes and offsets are malformed") {
    const std::string data = f32s({0, 1, 2, 3});
    const auto negative_stride =
        outcome(one_tensor({.numel = 4, .offset = 3, .size = {4}, .stride = {-1}}, data));
    CHECK(negative_stride.code == "malformed");
    CHECK(contains(negative_stride.message, "negative"));
    CHECK(outcome(one_tensor({.numel = 4, .size = {-1}, .stride = {1}}, data)).code == "malformed");
    CHECK(outcome(one_tensor({.numel = 4, .offset = -1, .size = {1}, .stride = {1}}, data)).code ==
          "malformed");
    CHECK(outcome(one_tensor({.numel = -4, .size = {1}, .stride = {1}}, data)).code == "malformed");
    CHECK(outcome(one_tensor({.numel = 4, .size = {2, 2}, .stride = {2}}, data)).code ==
          "malformed");
}

TEST_CASE("tensor_views: one storage key declared with two dtypes is malformed") {
    const auto two_dtypes = outcome(Archive{
        state_dict(
            {{"a", {.storage_class = "FloatStorage", .numel = 2, .size = {2}, .stride = {1}}},
             {"b", {.storage_class = "IntStorage", .numel = 2, .size = {2}, .stride = {1}}}}),
        {{"0", f32s({1, 2})}}});
    CHECK(two_dtypes.code == "malformed");
    CHECK(contains(two_dtypes.message, "declared twice"));
    // Same dtype, different numel.
    CHECK(outcome(Archive{state_dict({{"a", {.numel = 2, .size = {2}, .stride = {1}}},
                                      {"b", {.numel = 1, .size = {1}, .stride = {1}}}}),
                          {{"0", f32s({1, 2})}}})
              .code == "malformed");
    // Same declaration twice is fine: two views of one storage.
    const auto out = convert(make_checkpoint(
        Archive{state_dict({{"a", {.numel = 2, .size = {1}, .stride = {1}}},
                            {"b", {.numel = 2, .offset = 1, .size = {1}, .stride = {1}}}}),
                {{"0", f32s({1, 2})}}}));
    CHECK(out.bytes("a") == f32s({1}));
    CHECK(out.bytes("b") == f32s({2}));
}

TEST_CASE("tensor_views: ndim above max_ndim is too_large") {
    const std::vector<std::int64_t> ones64(64, 1);
    const auto out = convert(
        make_checkpoint(one_tensor({.numel = 1, .size = ones64, .stride = ones64}, f32s({7}))));
    CHECK(out.entry("w").shape == std::vector<std::uint64_t>(64, 1));
    CHECK(out.bytes("w") == f32s({7}));
    const std::vector<std::int64_t> ones65(65, 1);
    const auto result =
        outcome(one_tensor({.numel = 1, .size = ones65, .stride = ones65}, f32s({7})));
    CHECK(result.code == "too_large");
    CHECK(contains(result.message, "max_ndim"));
    Limits limits;
    limits.max_ndim = 2;
    CHECK(
        outcome(one_tensor({.numel = 1, .size = {1, 1, 1}, .stride = {1, 1, 1}}, f32s({7})), limits)
            .code == "too_large");
}

TEST_CASE("tensor_views: expanded, transposed and sliced views are written C-contiguous") {
    const auto out = convert(make_checkpoint(Archive{
        state_dict({
            {"expand", {.key = "0", .numel = 3, .size = {2, 3}, .stride = {0, 1}}},
            {"expand_rows", {.key = "0", .numel = 3, .size = {3, 2}, .stride = {1, 0}}},
            {"transpose", {.key = "1", .numel = 6, .size = {3, 2}, .stride = {1, 3}}},
            {"slice", {.key = "1", .numel = 6, .offset = 1, .size = {2}, .stride = {2}}},
            {"column", {.key = "1", .numel = 6, .offset = 2, .size = {2, 1}, .stride = {3, 1}}},
            {"block", {.key = "1", .numel = 6, .offset = 1, .size = {2, 2}, .stride = {3, 1}}},
        }),
        {{"0", f32s({1, 2, 3})}, {"1", f32s({0, 1, 2, 3, 4, 5})}}}));
    CHECK(out.bytes("expand") == f32s({1, 2, 3, 1, 2, 3}));
    CHECK(out.bytes("expand_rows") == f32s({1, 1, 2, 2, 3, 3}));
    CHECK(out.bytes("transpose") == f32s({0, 3, 1, 4, 2, 5}));
    CHECK(out.bytes("slice") == f32s({1, 3}));
    CHECK(out.bytes("column") == f32s({2, 5}));
    CHECK(out.bytes("block") == f32s({1, 2, 4, 5}));
    CHECK(out.entry("transpose").shape == std::vector<std::uint64_t>{3, 2});
    CHECK(out.entry("column").shape == std::vector<std::uint64_t>{2, 1});
}

TEST_CASE("tensor_views: zero-size tensors") {
    const auto out = convert(make_checkpoint(
        Archive{state_dict({
                    {"empty", {.key = "0", .numel = 0, .size = {0, 3}, .stride = {3, 1}}},
                    {"empty_of_full",
                     {.key = "1", .numel = 2, .offset = 100, .size = {3, 0}, .stride = {0, 1}}},
                }),
                {{"0", ""}, {"1", f32s({1, 2})}}}));
    CHECK(out.entry("empty").shape == std::vector<std::uint64_t>{0, 3});
    CHECK(out.entry("empty").begin == out.entry("empty").end);
    CHECK(out.entry("empty_of_full").shape == std::vector<std::uint64_t>{3, 0});
    CHECK(out.bytes("empty_of_full").empty());
}

TEST_CASE("tensor_views: scalars") {
    const auto out = convert(make_checkpoint(
        one_tensor({.numel = 3, .offset = 2, .size = {}, .stride = {}}, f32s({10, 20, 30}))));
    CHECK(out.entry("w").shape.empty());
    CHECK(out.bytes("w") == f32s({30}));
    // torch.save(tensor): the whole object is one tensor, named "tensor".
    const auto lone = convert(make_checkpoint(
        Archive{op(0x80) + op(2) + tensor({.numel = 1, .size = {}, .stride = {}}) + ".",
                {{"0", f32s({5})}}}));
    CHECK(lone.bytes("tensor") == f32s({5}));
}

TEST_CASE("tensor_views: _rebuild_tensor_v3 over an UntypedStorage counts the offset in elements") {
    // float16 values 1..4 in a byte storage of 8; offset 1 element = byte 2.
    const std::string halves = le(0x3C00, 2) + le(0x4000, 2) + le(0x4200, 2) + le(0x4400, 2);
    const auto out =
        convert(make_checkpoint(Archive{state_dict({{"h",
                                                     {.storage_class = "UntypedStorage",
                                                      .numel = 8,
                                                      .offset = 1,
                                                      .size = {2},
                                                      .stride = {1},
                                                      .dtype = "float16"}}}),
                                        {{"0", halves}}}));
    CHECK(out.entry("h").dtype == "F16");
    CHECK(out.bytes("h") == le(0x4000, 2) + le(0x4200, 2));
    CHECK(outcome(Archive{state_dict({{"h",
                                       {.storage_class = "UntypedStorage",
                                        .numel = 8,
                                        .offset = 3,
                                        .size = {2},
                                        .stride = {1},
                                        .dtype = "float16"}}}),
                          {{"0", halves}}})
              .code == "malformed");
    // A typed storage keeps its dtype.
    CHECK(outcome(
              Archive{
                  state_dict({{"h", {.numel = 2, .size = {2}, .stride = {1}, .dtype = "float16"}}}),
                  {{"0", f32s({1, 2})}}})
              .code == "malformed");
}

TEST_CASE("tensor_views: deflated records load the same bytes as stored ones") {
    Archive archive{state_dict({{"a", {.numel = 64, .size = {8, 8}, .stride = {1, 8}}},
                                {"b", {.numel = 64, .offset = 3, .size = {5}, .stride = {7}}}}),
                    {}};
    std::vector<float> values;
    for (int i = 0; i < 64; ++i) values.push_back(static_cast<float>(i % 5));
    archive.storages["0"] = f32s(values);
    const auto stored = convert(make_checkpoint(archive));
    archive.deflate = true;
    const Bytes deflated_zip = make_checkpoint(archive);
    {
        Limits limits;
        ZipArchive zip(deflated_zip, limits);
        REQUIRE(zip.find("data/0") != nullptr);
        REQUIRE(zip.find("data/0")->method == 8);
        REQUIRE(zip.find("data.pkl")->method == 8);
        CHECK(zip.find("data/0")->compressed_size < zip.find("data/0")->uncompressed_size);
    }
    const auto deflated = convert(deflated_zip);
    CHECK(deflated.image == stored.image);
    CHECK(stored.bytes("b") == f32s({3, 0, 2, 4, 1}));
}

TEST_CASE(
    "tensor_views: a deflated record claiming more than max_inflate_ratio is refused before "
    "allocation") {
    constexpr std::uint32_t kClaimed = 64U << 20;  // 64 MiB from a few compressed bytes
    const auto zip_outcome = [](const Bytes& zip, const Limits& limits) {
        try {
            ZipArchive archive(zip, limits);
        } catch (const Error& e) {
            return std::string(picklejail::to_string(e.code()));
        }
        return std::string("ok");
    };
    // data.pkl (entry 0) claims 64 MiB: refused when the directory is read.
    Archive archive = one_tensor({.numel = 1, .size = {1}, .stride = {1}}, f32s({1}));
    archive.deflate = true;
    Bytes pickle_bomb = make_checkpoint(archive);
    patch_uncompressed_size(pickle_bomb, 0, kClaimed);
    CHECK(zip_outcome(pickle_bomb, Limits{}) == "too_large");
    const auto result = outcome(pickle_bomb);
    CHECK(result.code == "too_large");
    CHECK(contains(result.message, "max_inflate_ratio"));
    // A storage record (entry 1) whose size matches its 64 MiB persistent id.
    Archive storage = one_tensor({.numel = kClaimed / 4, .size = {1}, .stride = {1}}, f32s({1}));
    storage.deflate = true;
    Bytes storage_bomb = make_checkpoint(storage);
    patch_uncompressed_size(storage_bomb, 1, kClaimed);
    CHECK(outcome(storage_bomb).code == "too_large");
    // The ratio is the configured one: allowed past it, the short stream is malformed.
    Limits generous;
    generous.max_inflate_ratio = 1'000'000;
    CHECK(zip_outcome(storage_bomb, generous) == "ok");
    CHECK(outcome(storage_bomb, generous).code == "malformed");
}

TEST_CASE("tensor_views: byteorder big swaps bytes per element") {
    const auto big = [](std::uint64_t value, int width) {
        std::string out = le(value, width);
        return std::string(out.rbegin(), out.rend());
    };
    Archive archive{
        state_dict(
            {{"f",
              {.storage_class = "FloatStorage",
               .key = "f",
               .numel = 2,
               .size = {2},
               .stride = {1}}},
             {"s",
              {.storage_class = "ShortStorage",
               .key = "s",
               .numel = 2,
               .size = {2},
               .stride = {1}}},
             {"d",
              {.storage_class = "DoubleStorage",
               .key = "d",
               .numel = 1,
               .size = {1},
               .stride = {1}}},
             {"c",
              {.storage_class = "ComplexFloatStorage",
               .key = "c",
               .numel = 1,
               .size = {1},
               .stride = {1}}},
             {"u",
              {.storage_class = "ByteStorage", .key = "u", .numel = 2, .size = {2}, .stride = {1}}},
             {"t",
              {.storage_class = "FloatStorage",
               .key = "f",
               .numel = 2,
               .size = {2},
               .stride = {0}}}}),
        {{"f",
          big(std::bit_cast<std::uint32_t>(1.0f), 4) + big(std::bit_cast<std::uint32_t>(-2.0f), 4)},
         {"s", big(0x0102, 2) + big(0xA0B0, 2)},
         {"d", big(std::bit_cast<std::uint64_t>(0.5), 8)},
         {"c",
          big(std::bit_cast<std::uint32_t>(3.0f), 4) + big(std::bit_cast<std::uint32_t>(4.0f), 4)},
         {"u", "\x01\x02"}},
    };
    archive.byteorder = "big";
    const auto out = convert(make_checkpoint(archive));
    CHECK(out.bytes("f") == f32s({1.0f, -2.0f}));
    CHECK(out.bytes("s") == le(0x0102, 2) + le(0xA0B0, 2));
    CHECK(out.bytes("d") == le(std::bit_cast<std::uint64_t>(0.5), 8));
    CHECK(out.bytes("c") == f32s({3.0f, 4.0f}));  // each half swapped on its own
    CHECK(out.bytes("u") == "\x01\x02");
    CHECK(out.bytes("t") == f32s({1.0f, 1.0f}));  // gathered, then swapped

    archive.byteorder = "little";
    CHECK(convert(make_checkpoint(archive)).bytes("s") == big(0x0102, 2) + big(0xA0B0, 2));
    archive.byteorder = "middle";
    CHECK(outcome(archive).code == "malformed");
    archive.byteorder = "big";
    archive.deflate = true;
    CHECK(convert(make_checkpoint(archive)).bytes("f") == f32s({1.0f, -2.0f}));
}

TEST_CASE("tensor_views: archives without data.pkl, and TorchScript archives") {
    const Archive valid = one_tensor({.numel = 1, .size = {1}, .stride = {1}}, f32s({1}));
    const auto no_pickle =
        outcome(make_zip({{"archive/version", "3\n"}, {"archive/data/0", f32s({1})}}));
    CHECK(no_pickle.code == "unsupported");
    CHECK(contains(no_pickle.message, "data.pkl"));
    // data.pkl in the wrong place does not count.
    CHECK(outcome(make_zip({{"archive/x/data.pkl", valid.data_pkl}, {"archive/data/0", f32s({1})}}))
              .code == "unsupported");
    for (const std::string marker : {"constants.pkl", "bytecode.pkl", "code/__torch__/m.py"}) {
        INFO(marker);
        const auto script = outcome(make_zip({{"archive/data.pkl", valid.data_pkl},
                                              {"archive/data/0", f32s({1})},
                                              {"archive/" + marker, "x"}}));
        CHECK(script.code == "unsupported");
        CHECK(contains(script.message, "TorchScript"));
    }
}

TEST_CASE("tensor_views: unsafe archive layouts are refused") {
    const std::string pkl =
        one_tensor({.numel = 1, .size = {1}, .stride = {1}}, f32s({1})).data_pkl;
    const std::string data = f32s({1});
    CHECK(outcome(make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", data}})).code == "ok");
    // Outside the first entry's directory.
    const auto outside = outcome(make_zip({{"archive/data.pkl", pkl}, {"other/data/0", data}}));
    CHECK(outside.code == "malformed");
    CHECK(contains(outside.message, "outside"));
    CHECK(
        outcome(make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", data}, {"evil.txt", "x"}}))
            .code == "malformed");
    CHECK(outcome(make_zip({{"data.pkl", pkl}, {"data/0", data}})).code ==
          "malformed");  // no directory
    // Dot-dot, absolute names and backslashes.
    CHECK(outcome(make_zip(
                      {{"archive/data.pkl", pkl}, {"archive/data/0", data}, {"archive/../x", "x"}}))
              .code == "malformed");
    CHECK(outcome(make_zip({{"archive/data.pkl", pkl}, {"archive/data/../data/0", data}})).code ==
          "malformed");
    CHECK(outcome(make_zip({{"/archive/data.pkl", pkl}, {"/archive/data/0", data}})).code ==
          "malformed");
    CHECK(outcome(make_zip({{"archive/data.pkl", pkl}, {"archive/data\\0", data}})).code ==
          "malformed");
    // Duplicate names: which record is real would depend on the reader.
    const auto duplicate = outcome(make_zip(
        {{"archive/data.pkl", pkl}, {"archive/data/0", data}, {"archive/data/0", f32s({666})}}));
    CHECK(duplicate.code == "malformed");
    CHECK(contains(duplicate.message, "duplicate"));
    // Encrypted entries and unknown compression methods.
    Bytes encrypted = make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", data}});
    patch_headers(encrypted, 1, std::nullopt);
    CHECK(outcome(encrypted).code == "unsupported");
    Bytes bzip2 = make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", data}});
    patch_headers(bzip2, 0, 12);
    CHECK(outcome(bzip2).code == "unsupported");
    // Not a zip at all past the signature.
    CHECK(outcome(Bytes{std::byte{'P'}, std::byte{'K'}, std::byte{3}, std::byte{4}}).code ==
          "malformed");
}

TEST_CASE("tensor_views: any top-level directory name works") {
    Archive archive = one_tensor({.numel = 3, .size = {3}, .stride = {1}}, f32s({1, 2, 3}));
    const auto reference = convert(make_checkpoint(archive));
    for (const std::string prefix : {"pytorch_model", "tensor", "x", "caf\xc3\xa9"}) {
        INFO(prefix);
        archive.prefix = prefix;
        const auto out = convert(make_checkpoint(archive));
        CHECK(out.bytes("w") == f32s({1, 2, 3}));
        CHECK(out.image == reference.image);
    }
}

TEST_CASE("tensor_views: SETITEM on a tensor is malformed (CVE-2026-24747)") {
    std::string pkl = op(0x80) + op(2) + tensor({.numel = 2, .size = {2}, .stride = {1}}) + "K" +
                      op(0) + "K" + op(1) + "s.";
    const auto result = outcome(Archive{pkl, {{"0", f32s({1, 2})}}});
    CHECK(result.code == "malformed");
    CHECK(contains(result.message, "not a dict"));
}

// ---- the object description (docs/output-format.md) -----------------------

namespace {

std::string description_of(const Archive& archive) {
    return convert(make_checkpoint(archive)).index.metadata.at("picklejail.object");
}

const View kFour{.numel = 4, .size = {4}, .stride = {1}};
const View kTwo{.numel = 4, .size = {2}, .stride = {1}};  // the first two of the same storage

}  // namespace

TEST_CASE("description: a state dict of plain tensors is written as its keys") {
    CHECK(description_of({state_dict({{"b", kFour}, {"a", kTwo}}), {{"0", f32s({1, 2, 3, 4})}}}) ==
          R"({"odict_of_tensors":["b","a"],"first_id":0})");
    // Nested under a key: the names are the prefix plus each key.
    const std::string nested =
        op(0x80) + op(2) + "}" + str("model") + odict_of({{"w", kFour}, {"v", kTwo}}) + "s.";
    CHECK(description_of({nested, {{"0", f32s({1, 2, 3, 4})}}}) ==
          R"({"dict":[["model",{"odict_of_tensors":["w","v"],"first_id":0,"prefix":"model."}]]})");
    const auto out = convert(make_checkpoint({nested, {{"0", f32s({1, 2, 3, 4})}}}));
    CHECK(out.bytes("model.w") == f32s({1, 2, 3, 4}));
    CHECK(out.bytes("model.v") == f32s({1, 2}));
}

TEST_CASE("description: tensors with more to say than their bytes keep full nodes") {
    const auto storage = std::map<std::string, std::string>{{"0", f32s({1, 2, 3, 4})}};
    View grad = kTwo;
    grad.requires_grad = true;
    CHECK(description_of({state_dict({{"a", kFour}, {"g", grad}}), storage}) ==
          R"({"odict":[["a",{"tensor":"a","id":0,"dtype":"float32"}],)"
          R"(["g",{"tensor":"g","id":1,"dtype":"float32","requires_grad":true}]]})");
    // One tensor object under two keys (tied weights): ids 0, 0.
    const std::string tied = op(0x80) + op(2) + "ccollections\nOrderedDict\n)R(" + str("a") +
                             tensor(kFour) + "q" + op(7) + str("b") + "h" + op(7) + "u.";
    CHECK(description_of({tied, storage}) ==
          R"({"odict":[["a",{"tensor":"a","id":0,"dtype":"float32"}],)"
          R"(["b",{"tensor":"b","id":0,"dtype":"float32"}]]})");
    // A value that is not a tensor.
    const std::string mixed = op(0x80) + op(2) + "ccollections\nOrderedDict\n)R(" + str("a") +
                              tensor(kFour) + str("step") + "K" + op(3) + "u.";
    CHECK(description_of({mixed, storage}) ==
          R"({"odict":[["a",{"tensor":"a","id":0,"dtype":"float32"}],["step",3]]})");
}
