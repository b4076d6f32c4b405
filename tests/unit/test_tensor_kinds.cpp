// Sparse, quantized and meta tensors (loader/tensor_kinds.cpp), end to end
// through Conversion::plan on zip archives whose data.pkl is assembled here as
// torch.save writes it: the forms that load, and each hostile variant with
// the exact error code it must give.
#include <minizip/zip.h>
#include <unistd.h>

#include <bit>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/checkpoint_loader.hpp"
#include "test_support.hpp"

namespace {

using picklejail::Error;
using namespace picklejail::loader;
using picklejail::test::le;
using picklejail::test::op;
using Bytes = std::vector<std::byte>;

// Writes `records` (name → bytes, stored) with minizip and reads the archive back.
Bytes make_zip(const std::map<std::string, std::string>& records) {
    char path[] = "/tmp/picklejail-test-kinds-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    struct Remove {
        const char* path;
        ~Remove() { std::remove(path); }
    } remove_file{path};
    zipFile zip = zipOpen64(path, APPEND_STATUS_CREATE);
    REQUIRE(zip != nullptr);
    for (const auto& [name, data] : records) {
        zip_fileinfo file_info{};
        REQUIRE(zipOpenNewFileInZip64(zip, name.c_str(), &file_info, nullptr, 0, nullptr, 0,
                                      nullptr, 0, 0, 0) == ZIP_OK);
        if (!data.empty()) {
            REQUIRE(zipWriteInFileInZip(zip, data.data(), static_cast<unsigned>(data.size())) ==
                    ZIP_OK);
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

// ---- data.pkl pieces ------------------------------------------------------

std::string str(std::string_view s) {
    return "X" + le(s.size(), 4) + std::string(s);
}
std::string integer(std::int64_t v) {
    return op(0x8a) + op(8) + le(static_cast<std::uint64_t>(v), 8);
}
std::string real(double v) {
    std::string out = "G";
    const auto bits = std::bit_cast<std::uint64_t>(v);
    for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(bits >> shift));
    return out;
}
std::string int_tuple(const std::vector<std::int64_t>& values) {
    std::string out = "(";
    for (const auto v : values) out += integer(v);
    return out + "t";
}
std::string global(std::string_view module, std::string_view name) {
    return "c" + std::string(module) + "\n" + std::string(name) + "\n";
}
std::string storage_pid(std::string_view storage_class, std::string_view key, std::int64_t numel) {
    return "(" + str("storage") + global("torch", storage_class) + str(key) + str("cpu") +
           integer(numel) + "tQ";
}

// _rebuild_tensor_v2 over storage `key` of `storage_class`, contiguous.
std::string dense(std::string_view storage_class, std::string_view key,
                  const std::vector<std::int64_t>& size, std::int64_t numel) {
    std::vector<std::int64_t> stride(size.size(), 1);
    for (std::size_t i = size.size(); i-- > 1;) stride[i - 1] = stride[i] * size[i];
    return global("torch._utils", "_rebuild_tensor_v2") + "(" +
           storage_pid(storage_class, key, numel) + integer(0) + int_tuple(size) +
           int_tuple(stride) + op(0x89) + global("collections", "OrderedDict") + ")Rt" + "R";
}

std::string layout(std::string_view name) {
    return global("torch.serialization", "_get_layout") + "(" + str(name) + "tR";
}

// {"s": value} as a whole pickle.
std::string one_entry(const std::string& value) {
    return op(0x80) + op(2) + "}" + str("s") + value + "s.";
}

std::string i64s(const std::vector<std::int64_t>& values) {
    std::string out;
    for (const auto v : values) out += le(static_cast<std::uint64_t>(v), 8);
    return out;
}
std::string i32s(const std::vector<std::int32_t>& values) {
    std::string out;
    for (const auto v : values) out += le(static_cast<std::uint32_t>(v), 4);
    return out;
}
std::string f32s(const std::vector<float>& values) {
    std::string out;
    for (const float v : values) out += le(std::bit_cast<std::uint32_t>(v), 4);
    return out;
}

struct Archive {
    std::string data_pkl;
    std::map<std::string, std::string> storages;
};

Bytes checkpoint(const Archive& a) {
    std::map<std::string, std::string> records{{"archive/data.pkl", a.data_pkl},
                                               {"archive/version", "3\n"}};
    for (const auto& [key, bytes] : a.storages) records["archive/data/" + key] = bytes;
    return make_zip(records);
}

// A COO tensor of size `size` from int64 `indices` ([rows, nnz]) and float values.
Archive coo(const std::vector<std::int64_t>& indices, std::int64_t rows,
            const std::vector<float>& values, const std::vector<std::int64_t>& size,
            std::string coalesced = "") {
    const auto nnz = static_cast<std::int64_t>(values.size());
    const std::string data =
        "(" + dense("LongStorage", "0", {rows, nnz}, static_cast<std::int64_t>(indices.size())) +
        dense("FloatStorage", "1", {nnz}, nnz) + global("torch", "Size") + "(" + int_tuple(size) +
        "tR" + coalesced + "t";
    return {one_entry(global("torch._utils", "_rebuild_sparse_tensor") + "(" +
                      layout("torch.sparse_coo") + data + "tR"),
            {{"0", i64s(indices)}, {"1", f32s(values)}}};
}

// A compressed tensor (CSR via _rebuild_sparse_csr_tensor, others via _rebuild_sparse_tensor).
Archive compressed(std::string_view layout_name, const std::vector<std::int32_t>& starts,
                   const std::vector<std::int32_t>& positions, const std::vector<float>& values,
                   const std::vector<std::int64_t>& value_shape,
                   const std::vector<std::int64_t>& size) {
    const std::string data =
        "(" +
        dense("IntStorage", "0", {static_cast<std::int64_t>(starts.size())},
              static_cast<std::int64_t>(starts.size())) +
        dense("IntStorage", "1", {static_cast<std::int64_t>(positions.size())},
              static_cast<std::int64_t>(positions.size())) +
        dense("FloatStorage", "2", value_shape, static_cast<std::int64_t>(values.size())) +
        global("torch", "Size") + "(" + int_tuple(size) + "tRt";
    const std::string function =
        layout_name == "torch.sparse_csr" ? "_rebuild_sparse_csr_tensor" : "_rebuild_sparse_tensor";
    return {one_entry(global("torch._utils", function) + "(" + layout(layout_name) + data + "tR"),
            {{"0", i32s(starts)}, {"1", i32s(positions)}, {"2", f32s(values)}}};
}

// A 2x3 qint8 tensor quantized by `quantizer` (a pickled tuple).
Archive qtensor(const std::string& quantizer, std::string_view storage_class = "QInt8Storage",
                std::map<std::string, std::string> extra = {}) {
    std::string pkl = global("torch._utils", "_rebuild_qtensor") + "(" +
                      storage_pid(storage_class, "0", 6) + integer(0) + int_tuple({2, 3}) +
                      int_tuple({3, 1}) + quantizer + op(0x89) +
                      global("collections", "OrderedDict") + ")RtR";
    extra["0"] = std::string("\x01\x02\x03\xfd\xfe\xff", 6);
    if (storage_class == "FloatStorage") extra["0"] = f32s({1, 2, 3, 4, 5, 6});
    return {one_entry(pkl), std::move(extra)};
}

std::string per_channel(std::int64_t channels, std::int64_t axis) {
    return "(" + global("torch", "per_channel_affine") +
           dense("DoubleStorage", "1", {channels}, channels) +
           dense("LongStorage", "2", {channels}, channels) + integer(axis) + "t";
}
std::map<std::string, std::string> channel_storages(std::size_t channels) {
    std::string scales, zeros;
    for (std::size_t i = 0; i < channels; ++i) {
        scales += le(std::bit_cast<std::uint64_t>(0.5 * static_cast<double>(i + 1)), 8);
        zeros += le(i, 8);
    }
    return {{"1", scales}, {"2", zeros}};
}

struct Outcome {
    std::string code = "ok";
    std::string message;
    std::string description;
    std::vector<std::string> names;
};

Outcome convert(const Archive& archive) {
    const auto input = checkpoint(archive);
    try {
        const auto conversion =
            Conversion::plan(input, picklejail::test::policy_named("weights"), {});
        Bytes image(conversion.output_size());
        conversion.write(image);
        const auto index = picklejail::ipc::check_safetensors(image);
        Outcome out;
        out.description = conversion.metadata().at(std::string(kMetaObject));
        for (const auto& t : index.tensors) out.names.push_back(t.name);
        return out;
    } catch (const Error& e) {
        return {std::string(picklejail::to_string(e.code())), e.what(), {}, {}};
    }
}

bool contains(const std::string& haystack, std::string_view needle) {
    return haystack.find(needle) != std::string::npos;
}

void expect_refused(const Archive& archive, std::string_view code, std::string_view phrase) {
    const auto out = convert(archive);
    INFO(out.message);
    CHECK(out.code == code);
    CHECK(contains(out.message, phrase));
}

}  // namespace

TEST_CASE("tensor_kinds: a COO tensor stores its indices and values") {
    const auto out = convert(coo({0, 2, 1, 0}, 2, {1.5F, 2.5F}, {3, 3}));
    REQUIRE(out.code == "ok");
    CHECK(out.names == std::vector<std::string>{"s.indices", "s.values"});
    CHECK(contains(out.description, R"({"sparse":"sparse_coo","id":2,"shape":[3,3],)"));
    CHECK(contains(out.description, R"("indices":{"tensor":"s.indices","id":0,"dtype":"int64"})"));
    CHECK_FALSE(contains(out.description, "coalesced"));  // torch 1.13's 3-item form
    const auto marked = convert(coo({0, 2, 1, 0}, 2, {1.5F, 2.5F}, {3, 3}, op(0x88)));
    REQUIRE(marked.code == "ok");
    CHECK(contains(marked.description, R"("coalesced":true)"));
}

TEST_CASE("tensor_kinds: hostile COO tensors are refused with their code") {
    expect_refused(coo({0, 3, 1, 0}, 2, {1, 2}, {3, 3}), "malformed",
                   "sparse COO index 3 at [0][1] is out of bounds for size 3");
    expect_refused(coo({0, -1, 1, 0}, 2, {1, 2}, {3, 3}), "malformed", "index -1");
    // Marked coalesced, but the columns repeat (and so are not strictly increasing).
    expect_refused(coo({1, 1, 0, 0}, 2, {1, 2}, {3, 3}, op(0x88)), "malformed", "marked coalesced");
    // Three sparse dimensions of indices for a 2-d size.
    expect_refused(coo({0, 0, 0}, 3, {1}, {3, 3}), "malformed", "size has 2 dimensions");
    // Two indices, one value.
    Archive fewer = coo({0, 1, 0, 1}, 2, {1, 2}, {3, 3});
    fewer.data_pkl = one_entry(
        global("torch._utils", "_rebuild_sparse_tensor") + "(" + layout("torch.sparse_coo") + "(" +
        dense("LongStorage", "0", {2, 2}, 4) + dense("FloatStorage", "1", {1}, 2) +
        global("torch", "Size") + "(" + int_tuple({3, 3}) + "tRttR");
    expect_refused(fewer, "malformed", "has 2 indices but 1 values");
    // int32 indices.
    Archive narrow = coo({0, 1, 0, 1}, 2, {1, 2}, {3, 3});
    narrow.data_pkl = one_entry(
        global("torch._utils", "_rebuild_sparse_tensor") + "(" + layout("torch.sparse_coo") + "(" +
        dense("IntStorage", "0", {2, 2}, 4) + dense("FloatStorage", "1", {2}, 2) +
        global("torch", "Size") + "(" + int_tuple({3, 3}) + "tRttR");
    narrow.storages["0"] = i32s({0, 1, 0, 1});
    expect_refused(narrow, "malformed", "indices are int32, not int64");
    // A size whose element count overflows: refused before any client multiplies it out.
    expect_refused(coo({0, 0}, 2, {1}, {1LL << 40, 1LL << 40}), "malformed",
                   "more than 2^63 elements");
    // nnz so large the index view's byte count overflows.
    Archive huge = coo({0, 0}, 2, {1}, {3, 3});
    huge.data_pkl = one_entry(
        global("torch._utils", "_rebuild_sparse_tensor") + "(" + layout("torch.sparse_coo") + "(" +
        global("torch._utils", "_rebuild_tensor_v2") + "(" + storage_pid("LongStorage", "0", 2) +
        integer(0) + int_tuple({2, 1LL << 61}) + int_tuple({0, 0}) + op(0x89) +
        global("collections", "OrderedDict") + ")RtR" + dense("FloatStorage", "1", {1}, 1) +
        global("torch", "Size") + "(" + int_tuple({3, 3}) + "tRttR");
    expect_refused(huge, "malformed", "integer overflow");
    // A layout that is not sparse.
    Archive strided = coo({0, 0}, 2, {1}, {3, 3});
    strided.data_pkl = one_entry(global("torch._utils", "_rebuild_sparse_tensor") + "(" +
                                 layout("torch.strided") + "(tR");
    expect_refused(strided, "unsupported", "_get_layout is only allowed for the sparse layouts");
}

TEST_CASE("tensor_kinds: CSR, CSC and BSR tensors load and are checked") {
    const auto csr =
        convert(compressed("torch.sparse_csr", {0, 1, 3}, {2, 0, 1}, {1, 2, 3}, {3}, {2, 3}));
    REQUIRE(csr.code == "ok");
    CHECK(csr.names ==
          std::vector<std::string>{"s.values", "s.compressed_indices", "s.plain_indices"});
    CHECK(contains(csr.description, R"({"sparse":"sparse_csr","id":3,"shape":[2,3],)"));
    const auto csc =
        convert(compressed("torch.sparse_csc", {0, 1, 1, 2}, {1, 0}, {1, 2}, {2}, {2, 3}));
    CHECK(csc.code == "ok");
    // 2x2 blocks of a 4x4 matrix: block row 0 has block column 1, block row 1 has 0.
    const auto bsr = convert(compressed("torch.sparse_bsr", {0, 1, 2}, {1, 0},
                                        {1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2}, {4, 4}));
    CHECK(bsr.code == "ok");
    CHECK(contains(bsr.description, R"("sparse":"sparse_bsr")"));

    expect_refused(compressed("torch.sparse_csr", {0, 2, 1}, {0, 1}, {1, 2}, {2}, {2, 3}),
                   "malformed", "not non-decreasing");
    expect_refused(compressed("torch.sparse_csr", {1, 1, 2}, {0, 1}, {1, 2}, {2}, {2, 3}),
                   "malformed", "start at 1, not 0");
    expect_refused(compressed("torch.sparse_csr", {0, 1, 1}, {0, 1}, {1, 2}, {2}, {2, 3}),
                   "malformed", "end at 1, not at nnz 2");
    expect_refused(compressed("torch.sparse_csr", {0, 1, 2}, {0, 3}, {1, 2}, {2}, {2, 3}),
                   "malformed", "plain index 3 is out of bounds for 3");
    expect_refused(compressed("torch.sparse_csr", {0, 2, 2}, {1, 1}, {1, 2}, {2}, {2, 3}),
                   "malformed", "not sorted and unique");
    expect_refused(compressed("torch.sparse_csr", {0, 1}, {0}, {1}, {1}, {2, 3}), "malformed",
                   "hold 2 entries, expected 2 + 1");
    expect_refused(
        compressed("torch.sparse_bsr", {0, 1}, {0}, {1, 2, 3, 4, 5, 6}, {1, 2, 3}, {2, 4}),
        "malformed", "block shape does not divide the size");
}

TEST_CASE("tensor_kinds: quantized tensors, per tensor and per channel") {
    const auto per_tensor = convert(
        qtensor("(" + global("torch", "per_tensor_affine") + real(0.25) + integer(-3) + "t"));
    REQUIRE(per_tensor.code == "ok");
    CHECK(per_tensor.names == std::vector<std::string>{"s.int_repr"});
    CHECK(contains(
        per_tensor.description,
        R"({"quantized":"qint8","id":1,"shape":[2,3],"qscheme":"per_tensor_affine","scale":0.25,"zero_point":-3,"int_repr":{"tensor":"s.int_repr","id":0,"dtype":"int8"}})"));

    const auto per_channel_ok =
        convert(qtensor(per_channel(3, 1), "QInt8Storage", channel_storages(3)));
    REQUIRE(per_channel_ok.code == "ok");
    CHECK(contains(per_channel_ok.description, R"("qscheme":"per_channel_affine","axis":1,)"));
    CHECK(contains(per_channel_ok.description, R"("scales":{"tensor":"s.scales")"));

    expect_refused(qtensor(per_channel(3, 2), "QInt8Storage", channel_storages(3)), "malformed",
                   "quantizer axis 2 is out of range for a tensor of 2 dimensions");
    expect_refused(qtensor(per_channel(3, -1), "QInt8Storage", channel_storages(3)), "malformed",
                   "axis -1 is out of range");
    expect_refused(qtensor(per_channel(2, 1), "QInt8Storage", channel_storages(2)), "malformed",
                   "scales hold 2 values but axis 1 has 3 channels");
    expect_refused(
        qtensor("(" + global("torch", "per_tensor_symmetric") + real(0.25) + integer(0) + "t"),
        "unsupported", "qscheme torch.per_tensor_symmetric");
    expect_refused(
        qtensor("(" + global("torch", "per_tensor_affine") + str("x") + integer(0) + "t"),
        "malformed", "scale/zero_point are not numbers");
    // A float storage handed to _rebuild_qtensor, and a quantized one to _rebuild_tensor_v2.
    expect_refused(
        qtensor("(" + global("torch", "per_tensor_affine") + real(0.25) + integer(0) + "t",
                "FloatStorage"),
        "malformed", "not quantized but viewed by _rebuild_qtensor");
    expect_refused({one_entry(dense("QInt8Storage", "0", {6}, 6)), {{"0", std::string(6, '\1')}}},
                   "malformed", "quantized but viewed by a plain tensor rebuild");
}

TEST_CASE("tensor_kinds: meta tensors carry shape, stride and dtype only") {
    const std::string meta = global("torch._utils", "_rebuild_meta_tensor_no_storage") + "(" +
                             global("torch", "float16") + int_tuple({3, 4}) + int_tuple({1, 3}) +
                             op(0x88) + "tR";
    const auto out = convert({one_entry(meta), {}});
    REQUIRE(out.code == "ok");
    CHECK(out.names.empty());
    CHECK(contains(
        out.description,
        R"({"meta_tensor":"float16","id":0,"shape":[3,4],"stride":[1,3],"requires_grad":true})"));
    // As a Parameter (an nn.Module built on the meta device).
    const auto param =
        convert({one_entry(global("torch._utils", "_rebuild_parameter") + "(" + meta + op(0x89) +
                           global("collections", "OrderedDict") + ")RtR"),
                 {}});
    REQUIRE(param.code == "ok");
    CHECK(contains(param.description, R"("stride":[1,3],"parameter":true})"));

    expect_refused({one_entry(global("torch._utils", "_rebuild_meta_tensor_no_storage") + "(" +
                              global("torch", "float32") + int_tuple({3, 4}) + int_tuple({1}) +
                              op(0x89) + "tR"),
                    {}},
                   "malformed", "size and stride have different lengths");
    expect_refused({one_entry(global("torch._utils", "_rebuild_meta_tensor_no_storage") + "(" +
                              str("float32") + int_tuple({3}) + int_tuple({1}) + op(0x89) + "tR"),
                    {}},
                   "malformed", "meta tensor dtype is a str");
}
