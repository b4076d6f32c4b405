// SafetensorsLayout: the reference writer's test vectors (huggingface/
// safetensors tensor.rs `mod tests` and bindings/python test_simple.py,
// safetensors-rules.md section 7) reproduced byte for byte with alignment 8
// and no metadata; the reference ordering; picklejail's 64-byte alignment;
// header limits; and the strided gather / byte swap that fill the data.
#include <bit>
#include <catch2/catch.hpp>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/tensor_names.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/safetensors_writer.hpp"

namespace {

using picklejail::Error;
using namespace picklejail::loader;
using Bytes = std::vector<std::byte>;

Bytes bytes(std::initializer_list<unsigned> values) {
    Bytes out;
    for (const unsigned v : values) out.push_back(static_cast<std::byte>(v));
    return out;
}

Bytes bytes(std::string_view text) {
    Bytes out;
    for (const char c : text) out.push_back(static_cast<std::byte>(c));
    return out;
}

Bytes f32s(std::initializer_list<float> values) {
    Bytes out;
    for (const float v : values) {
        const auto bits = std::bit_cast<std::uint32_t>(v);
        for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((bits >> (8 * i)) & 0xFF));
    }
    return out;
}

Bytes u16s(std::initializer_list<unsigned> values) {
    Bytes out;
    for (const unsigned v : values) {
        out.push_back(static_cast<std::byte>(v & 0xFF));
        out.push_back(static_cast<std::byte>((v >> 8) & 0xFF));
    }
    return out;
}

// C-contiguous strides for a shape.
std::vector<std::uint64_t> contiguous(const std::vector<std::uint64_t>& shape) {
    std::vector<std::uint64_t> stride(shape.size(), 1);
    for (std::size_t i = shape.size(); i-- > 1;) stride[i - 1] = stride[i] * shape[i];
    return stride;
}

TensorSource source(std::string name, DType dtype, std::vector<std::uint64_t> shape,
                    std::span<const std::byte> storage) {
    auto stride = contiguous(shape);
    return TensorSource{std::move(name), dtype, std::move(shape), std::move(stride), 0,
                        storage,         false};
}

Bytes image_of(const SafetensorsLayout& layout) {
    Bytes out(layout.total_size());
    layout.write(out);
    return out;
}

Bytes write_reference(std::vector<TensorSource> tensors,
                      const std::map<std::string, std::string>& metadata = {}) {
    return image_of(SafetensorsLayout::plan(std::move(tensors), metadata, Limits{}, 8));
}

std::string code_of_plan(std::vector<TensorSource> tensors, const Limits& limits,
                         const std::map<std::string, std::string>& metadata = {},
                         std::size_t alignment = 64) {
    try {
        (void)SafetensorsLayout::plan(std::move(tensors), metadata, limits, alignment);
    } catch (const Error& e) {
        return std::string(picklejail::to_string(e.code()));
    }
    return "ok";
}

Bytes gather(const Bytes& storage, std::uint64_t offset, const std::vector<std::uint64_t>& shape,
             const std::vector<std::uint64_t>& stride, std::size_t element_size) {
    std::size_t numel = 1;
    for (const auto d : shape) numel *= d;
    Bytes out(numel * element_size, std::byte{0xEE});
    gather_strided(storage, offset, shape, stride, element_size, out);
    return out;
}

}  // namespace

TEST_CASE("safetensors_writer: test_serialization vector, F32 [1,2,3] named attn.0") {
    const Bytes data = f32s({0, 1, 2, 3, 4, 5});
    const Bytes expected = bytes({
        64, 0,  0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,
        34, 58, 123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,
        44, 34, 115, 104, 97,  112, 101, 34,  58,  91,  49,  44,  50,  44,  51,  93,
        44, 34, 100, 97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115, 34,  58,
        91, 48, 44,  50,  52,  93,  125, 125, 0,   0,   0,   0,   0,   0,   128, 63,
        0,  0,  0,   64,  0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64,
    });
    const Bytes out = write_reference({source("attn.0", DType::float32, {1, 2, 3}, data)});
    CHECK(out == expected);
    CHECK(picklejail::ipc::check_safetensors(out).data_offset == 72);
}

TEST_CASE("safetensors_writer: test_serialization_forced_alignement vector, attn0 with 7 spaces") {
    const Bytes data = f32s({0, 1, 2, 3, 4, 5});
    const Bytes expected = bytes({
        72,  0,   0,   0,   0,   0,   0,   0,   123, 34, 97, 116, 116, 110, 48,  34,  58,  123,
        34,  100, 116, 121, 112, 101, 34,  58,  34,  70, 51, 50,  34,  44,  34,  115, 104, 97,
        112, 101, 34,  58,  91,  49,  44,  49,  44,  50, 44, 51,  93,  44,  34,  100, 97,  116,
        97,  95,  111, 102, 102, 115, 101, 116, 115, 34, 58, 91,  48,  44,  50,  52,  93,  125,
        125, 32,  32,  32,  32,  32,  32,  32,  0,   0,  0,  0,   0,   0,   128, 63,  0,   0,
        0,   64,  0,   0,   64,  64,  0,   0,   128, 64, 0,  0,   160, 64,
    });
    const auto layout = SafetensorsLayout::plan(
        {source("attn0", DType::float32, {1, 1, 2, 3}, data)}, {}, Limits{}, 8);
    CHECK(layout.data_offset() == 80);
    CHECK(image_of(layout) == expected);
}

TEST_CASE("safetensors_writer: test_simple.py I32 [2,2] vector named test, 88 bytes") {
    const Bytes zeros(16, std::byte{0});
    const std::string header = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";
    REQUIRE(header.size() == 60);
    Bytes expected = bytes({64, 0, 0, 0, 0, 0, 0, 0});
    const Bytes json = bytes(header + "    ");
    expected.insert(expected.end(), json.begin(), json.end());
    expected.insert(expected.end(), zeros.begin(), zeros.end());
    REQUIRE(expected.size() == 88);
    CHECK(write_reference({source("test", DType::int32, {2, 2}, zeros)}) == expected);
}

TEST_CASE("safetensors_writer: test_empty vectors") {
    CHECK(write_reference({}) == bytes({8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}));
    CHECK(write_reference({}, {{"framework", "pt"}}) ==
          bytes({40,  0,   0,   0,  0,  0,  0,   0,   123, 34,  95,  95,  109, 101, 116, 97,
                 100, 97,  116, 97, 95, 95, 34,  58,  123, 34,  102, 114, 97,  109, 101, 119,
                 111, 114, 107, 34, 58, 34, 112, 116, 34,  125, 125, 32,  32,  32,  32,  32}));
}

TEST_CASE("safetensors_writer: tensors are ordered by descending dtype rank, then name") {
    const Bytes storage(64, std::byte{1});
    const auto layout = SafetensorsLayout::plan(
        {
            source("b", DType::float32, {1}, storage),
            source("z", DType::uint8, {3}, storage),
            source("a", DType::float32, {1}, storage),
            source("m", DType::float64, {1}, storage),
            source("c", DType::int64, {1}, storage),
            source("x", DType::bfloat16, {1}, storage),
            source("B", DType::float32, {1}, storage),
            source("flag", DType::boolean, {1}, storage),
            source("e4", DType::float8_e4m3fn, {1}, storage),
            source("i8", DType::int8, {1}, storage),
            source("h", DType::float16, {1}, storage),
            source("u64", DType::uint64, {1}, storage),
            source("i32", DType::int32, {1}, storage),
        },
        {}, Limits{}, 8);
    std::vector<std::string> names;
    for (const auto& t : layout.tensors()) names.push_back(t.source.name);
    // U64 > I64 > F64 > F32 > I32 > BF16 > F16 > F8_E4M3 > I8 > U8 > BOOL; names byte-wise.
    CHECK(names == std::vector<std::string>{"u64", "c", "m", "B", "a", "b", "i32", "x", "h", "e4",
                                            "i8", "z", "flag"});
    // Back to back, no holes.
    std::uint64_t cursor = 0;
    for (const auto& t : layout.tensors()) {
        CHECK(t.begin == cursor);
        cursor = t.end;
    }
    CHECK(cursor == 8 + 8 + 8 + 4 * 4 + 2 + 2 + 1 + 1 + 3 + 1);
    // Header entries appear in the same order.
    const auto& header = layout.header();
    CHECK(header.find("\"u64\"") < header.find("\"c\""));
    CHECK(header.find("\"i8\"") < header.find("\"z\""));
    // Input order does not matter.
    const auto reversed = SafetensorsLayout::plan(
        {source("a", DType::float32, {1}, storage), source("b", DType::float32, {1}, storage)}, {},
        Limits{}, 8);
    const auto forward = SafetensorsLayout::plan(
        {source("b", DType::float32, {1}, storage), source("a", DType::float32, {1}, storage)}, {},
        Limits{}, 8);
    CHECK(image_of(reversed) == image_of(forward));
}

TEST_CASE("safetensors_writer: the data section is 64-byte aligned by default") {
    const Bytes data = f32s({1, 2, 3});
    for (const std::string& name :
         std::vector<std::string>{"a", "ab", "abcdefghijklmnopqrstuvwxyz", std::string(200, 'n')}) {
        INFO(name.size());
        const auto layout = SafetensorsLayout::plan({source(name, DType::float32, {3}, data)},
                                                    {{"format", "pt"}}, Limits{});
        CHECK(layout.data_offset() % 64 == 0);
        const auto& header = layout.header();
        const auto close = header.find_last_of('}');
        REQUIRE(close != std::string::npos);
        CHECK(close + 64 > header.size());  // less than one alignment of padding
        CHECK(header.find_first_not_of(' ', close + 1) == std::string::npos);
        const Bytes image = image_of(layout);
        const auto index = picklejail::ipc::check_safetensors(image);
        CHECK(index.data_offset == layout.data_offset());
        CHECK(index.metadata.at("format") == "pt");
        CHECK(Bytes(image.begin() + static_cast<long>(layout.data_offset()), image.end()) == data);
    }
}

TEST_CASE("safetensors_writer: header and output limits are too_large") {
    Limits limits;
    limits.max_header_bytes = 8;
    CHECK(code_of_plan({}, limits, {}, 8) == "ok");  // "{}" + 6 spaces
    limits.max_header_bytes = 7;
    CHECK(code_of_plan({}, limits, {}, 8) == "too_large");
    const Bytes data = f32s({1, 2});
    limits.max_header_bytes = 100;
    CHECK(code_of_plan({source("t", DType::float32, {2}, data)}, limits, {}, 8) == "ok");
    CHECK(code_of_plan({source(std::string(100, 'n'), DType::float32, {2}, data)}, limits, {}, 8) ==
          "too_large");
    CHECK(code_of_plan({}, limits, {{"k", std::string(100, 'v')}}, 8) == "too_large");
    // Padding counts: the 54-byte JSON fits 55, its padded 56 bytes do not.
    limits.max_header_bytes = 55;
    CHECK(code_of_plan({source("t", DType::float32, {2}, data)}, limits, {}, 64) == "too_large");
    limits.max_header_bytes = 56;
    CHECK(code_of_plan({source("t", DType::float32, {2}, data)}, limits, {}, 64) == "ok");
    // The whole image: 8 + 56 header bytes + 8 data bytes = 72.
    Limits output;
    output.max_output_bytes = 71;
    CHECK(code_of_plan({source("t", DType::float32, {2}, data)}, output) == "too_large");
    output.max_output_bytes = 72;
    CHECK(code_of_plan({source("t", DType::float32, {2}, data)}, output) == "ok");
}

TEST_CASE("safetensors_writer: names are JSON-escaped and complex128 is written as F64 pairs") {
    const Bytes data(32, std::byte{7});
    const std::string odd = "a\"b\\c\nd\xc3\xa9";
    const auto layout = SafetensorsLayout::plan(
        {source(odd, DType::float32, {1}, data), source("z", DType::complex128, {2}, data)},
        {{"picklejail.complex128", "[\"z\"]"}}, Limits{});
    CHECK(layout.header().find(R"("a\"b\\c\nd)") != std::string::npos);
    const Bytes image = image_of(layout);
    const auto index = picklejail::ipc::check_safetensors(image);
    REQUIRE(index.tensors.size() == 2);
    for (const auto& entry : index.tensors) {
        if (entry.name == "z") {
            CHECK(entry.dtype == "F64");
            CHECK(entry.shape == std::vector<std::uint64_t>{2, 2});
            CHECK(entry.end - entry.begin == 32);
        } else {
            CHECK(entry.name == odd);
            CHECK(entry.dtype == "F32");
        }
    }
}

TEST_CASE("safetensors_writer: write, write_header and write_tensor agree") {
    const Bytes a = f32s({1, 2, 3, 4});
    const Bytes b = u16s({0x1234, 0x5678});
    const auto layout = SafetensorsLayout::plan(
        {source("a", DType::float32, {2, 2}, a), source("b", DType::int16, {2}, b)}, {}, Limits{});
    const Bytes image = image_of(layout);
    Bytes header(layout.data_offset());
    layout.write_header(header);
    CHECK(Bytes(image.begin(), image.begin() + static_cast<long>(layout.data_offset())) == header);
    for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
        const auto& t = layout.tensors()[i];
        Bytes one(t.end - t.begin);
        layout.write_tensor(i, one);
        const auto begin = image.begin() + static_cast<long>(layout.data_offset() + t.begin);
        CHECK(Bytes(begin, begin + static_cast<long>(one.size())) == one);
    }
    Bytes wrong(layout.total_size() + 1);
    CHECK_THROWS_AS(layout.write(wrong), Error);
}

TEST_CASE("safetensors_writer: gather_strided for transposed, expanded and sliced views") {
    // A 3x4 uint16 matrix holding 0..11.
    const Bytes m = u16s({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
    CHECK(gather(m, 0, {3, 4}, {4, 1}, 2) == m);
    CHECK(gather(m, 0, {4, 3}, {1, 4}, 2) == u16s({0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
    CHECK(gather(m, 0, {2, 3}, {0, 1}, 2) == u16s({0, 1, 2, 0, 1, 2}));  // expand rows
    CHECK(gather(m, 1, {3, 2}, {1, 0}, 2) == u16s({1, 1, 2, 2, 3, 3}));  // expand columns
    CHECK(gather(m, 5, {2, 2}, {4, 1}, 2) == u16s({5, 6, 9, 10}));       // block
    CHECK(gather(m, 2, {3}, {4}, 2) == u16s({2, 6, 10}));                // column
    CHECK(gather(m, 0, {2, 2}, {8, 2}, 2) == u16s({0, 2, 8, 10}));       // step 2
    CHECK(gather(m, 11, {}, {}, 2) == u16s({11}));                       // scalar
    CHECK(gather(m, 7, {1, 1, 1}, {999, 3, 12345}, 2) == u16s({7}));     // all ones
    CHECK(gather(m, 1, {1, 3, 1}, {100, 4, 7}, 2) == u16s({1, 5, 9}));   // ones dropped
    CHECK(gather(m, 0, {2, 3, 2}, {0, 4, 1}, 2) ==
          u16s({0, 1, 4, 5, 8, 9, 0, 1, 4, 5, 8, 9}));  // 3-D expand
    CHECK(gather(m, 0, {3, 2, 2}, {4, 2, 1}, 2) == m);  // merges to one run
    CHECK(gather(m, 0, {0, 4}, {4, 1}, 2).empty());     // zero-size
    // The destination is written exactly: nothing past the gathered bytes.
    Bytes wide(6 * 2 + 4, std::byte{0xEE});
    gather_strided(m, 0, {2, 3}, {1, 2}, 2, std::span<std::byte>(wide).first(12));
    CHECK(wide == [&] {
        Bytes expected = u16s({0, 2, 4, 1, 3, 5});
        expected.insert(expected.end(), 4, std::byte{0xEE});
        return expected;
    }());
}

TEST_CASE("safetensors_writer: swap_bytes per element and big-endian sources") {
    Bytes data = bytes({1, 2, 3, 4, 5, 6, 7, 8});
    swap_bytes(data, 1);
    CHECK(data == bytes({1, 2, 3, 4, 5, 6, 7, 8}));
    swap_bytes(data, 2);
    CHECK(data == bytes({2, 1, 4, 3, 6, 5, 8, 7}));
    data = bytes({1, 2, 3, 4, 5, 6, 7, 8});
    swap_bytes(data, 4);
    CHECK(data == bytes({4, 3, 2, 1, 8, 7, 6, 5}));
    data = bytes({1, 2, 3, 4, 5, 6, 7, 8});
    swap_bytes(data, 8);
    CHECK(data == bytes({8, 7, 6, 5, 4, 3, 2, 1}));
    Bytes empty;
    swap_bytes(empty, 4);
    CHECK(empty.empty());

    // A big-endian float32 storage, viewed transposed: gathered then swapped.
    const Bytes big = bytes({0x3f, 0x80, 0, 0, 0x40, 0, 0, 0, 0x40, 0x40, 0, 0, 0x40, 0x80, 0, 0});
    TensorSource t{"t", DType::float32, {2, 2}, {1, 2}, 0, big, true};
    const auto layout = SafetensorsLayout::plan({t}, {}, Limits{}, 8);
    const Bytes image = image_of(layout);
    CHECK(Bytes(image.begin() + static_cast<long>(layout.data_offset()), image.end()) ==
          f32s({1, 3, 2, 4}));
    // complex64 swaps each 4-byte half.
    const Bytes c = bytes({0x3f, 0x80, 0, 0, 0x40, 0, 0, 0});
    TensorSource z{"z", DType::complex64, {1}, {1}, 0, c, true};
    const auto zl = SafetensorsLayout::plan({z}, {}, Limits{}, 8);
    const Bytes zi = image_of(zl);
    CHECK(Bytes(zi.begin() + static_cast<long>(zl.data_offset()), zi.end()) == f32s({1, 2}));
}

// A name the checker would refuse is the loader's too_large, not a broken
// image the spawner reports as worker_crashed.
TEST_CASE("safetensors_writer: a tensor name longer than any reader accepts is too_large") {
    const Bytes data = f32s({1});
    const std::string longest(picklejail::kMaxTensorNameBytes, 'n');
    CHECK(code_of_plan({source(longest, DType::float32, {1}, data)}, Limits{}) == "ok");
    CHECK(code_of_plan({source(longest + "n", DType::float32, {1}, data)}, Limits{}) ==
          "too_large");
}
