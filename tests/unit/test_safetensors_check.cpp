// Tests for ipc/safetensors_check: the reference parser's test vectors
// (huggingface/safetensors tensor.rs `mod tests` and bindings/python
// test_simple.py, reproduced byte for byte where the source gives bytes) plus
// the stricter picklejail rules from safetensors-rules.md section 12.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"

namespace {

using picklejail::Error;
using picklejail::ErrorCode;
using picklejail::ipc::check_safetensors;
using picklejail::ipc::CheckLimits;
using picklejail::ipc::dtype_bits;
using picklejail::ipc::SafetensorsIndex;
using namespace std::string_literals;
using namespace std::string_view_literals;

using Bytes = std::vector<std::byte>;

Bytes to_bytes(std::string_view raw) {
    Bytes out;
    out.reserve(raw.size());
    for (const char c : raw) out.push_back(static_cast<std::byte>(c));
    return out;
}

Bytes to_bytes(std::initializer_list<unsigned char> raw) {
    Bytes out;
    out.reserve(raw.size());
    for (const unsigned char c : raw) out.push_back(static_cast<std::byte>(c));
    return out;
}

// Little-endian u64 header length, as the format writes it.
std::string le64(std::uint64_t value) {
    std::string out;
    for (int i = 0; i < 8; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
    return out;
}

// prefix + header + padding + `data_bytes` zero bytes.
Bytes make_image(std::string_view header, std::size_t data_bytes, std::string_view padding = "") {
    const std::string raw = le64(header.size() + padding.size()) + std::string(header) +
                            std::string(padding) + std::string(data_bytes, '\0');
    return to_bytes(raw);
}

// What check_safetensors did: "ok" or the thrown Error's code name and message.
// Any exception other than picklejail::Error escapes and fails the test.
struct Outcome {
    std::string code;
    std::string message;
};

Outcome run(const Bytes& image, const CheckLimits& limits = {}) {
    try {
        (void)check_safetensors(image, limits);
        return {"ok", ""};
    } catch (const Error& e) {
        return {std::string(picklejail::to_string(e.code())), e.what()};
    }
}

void require_error(const Bytes& image, ErrorCode code, std::string_view needle,
                   const CheckLimits& limits = {}) {
    const Outcome outcome = run(image, limits);
    INFO("message: " << outcome.message);
    REQUIRE(outcome.code == picklejail::to_string(code));
    REQUIRE_THAT(outcome.message, Catch::Contains(std::string(needle)));
}

void require_malformed(const Bytes& image, std::string_view needle) {
    require_error(image, ErrorCode::malformed, needle);
}

std::string entry(std::string_view name, std::string_view dtype, std::string_view shape,
                  std::string_view offsets) {
    return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) +
           "\",\"shape\":" + std::string(shape) + ",\"data_offsets\":" + std::string(offsets) + "}";
}

const std::string kTestI32 = "{" + entry("test", "I32", "[2,2]", "[0,16]") + "}";

}  // namespace

// ---- reference test vectors (safetensors-rules.md section 7) ----

TEST_CASE("safetensors_check: python test_serialization vector passes", "[safetensors_check]") {
    // np.zeros((2, 2), int32), then the same with data[1, 1] = 1 (test_simple.py).
    const auto prefix =
        "\x40\x00\x00\x00\x00\x00\x00\x00"
        "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}    "sv;
    const Bytes ones = to_bytes(std::string(prefix) + std::string(12, '\0') + "\x01\x00\x00\x00"s);
    REQUIRE(ones.size() == 88);
    CHECK(run(ones).code == "ok");
    const Bytes image = to_bytes(std::string(prefix) + std::string(16, '\0'));
    REQUIRE(image.size() == 88);
    const SafetensorsIndex index = check_safetensors(image);
    CHECK(index.header_size == 64);
    CHECK(index.data_offset == 72);
    CHECK(index.metadata.empty());
    REQUIRE(index.tensors.size() == 1);
    CHECK(index.tensors[0].name == "test");
    CHECK(index.tensors[0].dtype == "I32");
    CHECK(index.tensors[0].shape == std::vector<std::uint64_t>{2, 2});
    CHECK(index.tensors[0].begin == 0);
    CHECK(index.tensors[0].end == 16);
}

TEST_CASE("safetensors_check: rust test_serialization vectors pass", "[safetensors_check]") {
    // test_serialization: F32 [1,2,3] "attn.0", N=64, no padding.
    const Bytes unpadded = to_bytes({
        64, 0,  0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,
        34, 58, 123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,
        44, 34, 115, 104, 97,  112, 101, 34,  58,  91,  49,  44,  50,  44,  51,  93,
        44, 34, 100, 97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115, 34,  58,
        91, 48, 44,  50,  52,  93,  125, 125, 0,   0,   0,   0,   0,   0,   128, 63,
        0,  0,  0,   64,  0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64,
    });
    const SafetensorsIndex a = check_safetensors(unpadded);
    REQUIRE(a.tensors.size() == 1);
    CHECK(a.tensors[0].name == "attn.0");
    CHECK(a.tensors[0].shape == std::vector<std::uint64_t>{1, 2, 3});
    CHECK(a.tensors[0].end == 24);

    // test_serialization_forced_alignement: "attn0" [1,1,2,3], 7 spaces, N=72.
    const Bytes aligned = to_bytes({
        72,  0,   0,   0,   0,   0,   0,   0,   123, 34, 97, 116, 116, 110, 48,  34,  58,  123,
        34,  100, 116, 121, 112, 101, 34,  58,  34,  70, 51, 50,  34,  44,  34,  115, 104, 97,
        112, 101, 34,  58,  91,  49,  44,  49,  44,  50, 44, 51,  93,  44,  34,  100, 97,  116,
        97,  95,  111, 102, 102, 115, 101, 116, 115, 34, 58, 91,  48,  44,  50,  52,  93,  125,
        125, 32,  32,  32,  32,  32,  32,  32,  0,   0,  0,  0,   0,   0,   128, 63,  0,   0,
        0,   64,  0,   0,   64,  64,  0,   0,   128, 64, 0,  0,   160, 64,
    });
    const SafetensorsIndex b = check_safetensors(aligned);
    CHECK(b.header_size == 72);
    CHECK(b.data_offset == 80);
    REQUIRE(b.tensors.size() == 1);
    CHECK(b.tensors[0].shape == std::vector<std::uint64_t>{1, 1, 2, 3});
}

TEST_CASE("safetensors_check: test_empty vectors pass", "[safetensors_check]") {
    const SafetensorsIndex empty =
        check_safetensors(to_bytes({8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}));
    CHECK(empty.tensors.empty());
    CHECK(empty.metadata.empty());
    CHECK(empty.data_offset == 16);

    const SafetensorsIndex with_metadata = check_safetensors(to_bytes({
        40,  0,   0,   0,  0,  0,  0,   0,   123, 34,  95,  95,  109, 101, 116, 97,
        100, 97,  116, 97, 95, 95, 34,  58,  123, 34,  102, 114, 97,  109, 101, 119,
        111, 114, 107, 34, 58, 34, 112, 116, 34,  125, 125, 32,  32,  32,  32,  32,
    }));
    CHECK(with_metadata.tensors.empty());
    CHECK(with_metadata.metadata == std::map<std::string, std::string>{{"framework", "pt"}});
}

TEST_CASE("safetensors_check: scalar and zero-size tensors pass", "[safetensors_check]") {
    // test_empty_shapes_allowed: shape [], 4 data bytes, N=56.
    const SafetensorsIndex scalar = check_safetensors(to_bytes(
        "8\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":"
        "[0,4]}}\x00\x00\x00\x00"sv));
    REQUIRE(scalar.tensors.size() == 1);
    CHECK(scalar.tensors[0].shape.empty());
    CHECK(scalar.tensors[0].end == 4);

    // test_zero_sized_tensor: shape [2,0] on [0, 0], no data.
    const SafetensorsIndex zero = check_safetensors(
        to_bytes("<\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,0],"
                 "\"data_offsets\":[0, 0]}}"sv));
    REQUIRE(zero.tensors.size() == 1);
    CHECK(zero.tensors[0].shape == std::vector<std::uint64_t>{2, 0});
    CHECK(zero.data_offset == 68);
}

TEST_CASE("safetensors_check: test_deserialization vector passes", "[safetensors_check]") {
    const SafetensorsIndex index = check_safetensors(
        to_bytes("<\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],"
                 "\"data_offsets\":[0,16]}}"
                 "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"sv));
    CHECK(index.header_size == 60);
    REQUIRE(index.tensors.size() == 1);
    CHECK(index.tensors[0].name == "test");
}

TEST_CASE("safetensors_check: test_json_attack (10 tensors on [0,16]) fails",
          "[safetensors_check]") {
    std::string header = "{";
    for (int i = 0; i < 10; ++i) {
        if (i != 0) header += ',';
        header += entry("weight_" + std::to_string(i), "F32", "[2,2]", "[0,16]");
    }
    header += "}";
    require_malformed(make_image(header, 16), "overlap");
}

TEST_CASE("safetensors_check: test_metadata_incomplete_buffer fails both ways",
          "[safetensors_check]") {
    const auto prefix =
        "<\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],"
        "\"data_offsets\":[0,16]}}"sv;
    const std::string polyglot =
        std::string(prefix) + std::string(16, '\0') + "extra_bogus_data_for_polyglot_file";
    require_malformed(to_bytes(polyglot), "trailing bytes");
    const std::string truncated = std::string(prefix) + std::string(14, '\0');
    require_malformed(to_bytes(truncated), "truncated");
}

TEST_CASE("safetensors_check: test_header_too_large fails", "[safetensors_check]") {
    const Bytes image = to_bytes(
        "<\x00\x00\x00\x00\xff\xff\xff{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],"
        "\"data_offsets\":[0,16]}}"
        "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"sv);
    require_error(image, ErrorCode::too_large, "100000000");
}

TEST_CASE("safetensors_check: test_header_too_small and test_invalid_header_length fail",
          "[safetensors_check]") {
    require_malformed(Bytes{}, "shorter than the 8-byte header length");
    require_malformed(to_bytes("\x01\x00\x00\x00\x00\x00\x00"sv), "shorter");
    require_malformed(to_bytes("<\x00\x00\x00\x00\x00\x00\x00"sv), "runs past the end");
    // 8 + N would wrap around 2^64 if added naively; with the configured cap
    // lifted, the format's own 100 MB limit still stops it.
    CheckLimits unlimited;
    unlimited.max_header_bytes = UINT64_MAX;
    require_error(to_bytes("\xf8\xff\xff\xff\xff\xff\xff\xff{}"sv), ErrorCode::too_large,
                  "exceeds the safetensors limit", unlimited);
}

TEST_CASE("safetensors_check: test_invalid_header_non_utf8 and _not_json fail",
          "[safetensors_check]") {
    require_malformed(to_bytes("\x01\x00\x00\x00\x00\x00\x00\x00\xff"sv), "UTF-8");
    require_malformed(to_bytes("\x01\x00\x00\x00\x00\x00\x00\x00{"sv), "not valid JSON");
}

TEST_CASE("safetensors_check: whitespace padding (trailing ok, leading rejected)",
          "[safetensors_check]") {
    // test_whitespace_padded_header
    const SafetensorsIndex index =
        check_safetensors(to_bytes("\x06\x00\x00\x00\x00\x00\x00\x00{}\x0D\x20\x09\x0A"sv));
    CHECK(index.tensors.empty());
    // test_whitespace_leading_padded_header: accepted by reference 0.8, not by us.
    require_malformed(to_bytes("\x06\x00\x00\x00\x00\x00\x00\x00\x09\x0A{}\x0D\x20"sv),
                      "must start with '{'");
}

TEST_CASE("safetensors_check: test_invalid_info fails", "[safetensors_check]") {
    require_malformed(to_bytes("<\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\","
                               "\"shape\":[2,2],\"data_offsets\":[0, 4]}}"sv),
                      "tensor \"test\": data_offsets [0,4] hold 4 bytes but dtype I32 shape "
                      "[2,2] needs 16");
}

TEST_CASE("safetensors_check: test_validation_overflow fails", "[safetensors_check]") {
    // Both dimensions exceed 2^53-1, which picklejail rejects before multiplying.
    require_malformed(
        to_bytes("O\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,"
                 "18446744073709551614],\"data_offsets\":[0,16]}}"
                 "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"sv),
        "tensor \"test\": shape[1] is 18446744073709551614, above the limit 2^53-1");
    require_malformed(
        to_bytes("N\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,"
                 "9223372036854775807],\"data_offsets\":[0,16]}}"
                 "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"sv),
        "above the limit 2^53-1");
    // In-range dimensions whose product still overflows hit the checked multiply.
    require_malformed(
        make_image("{" + entry("big", "I32", "[4294967296,4294967296]", "[0,16]") + "}", 16),
        "tensor \"big\": dtype I32 shape [4294967296,4294967296]: element count overflows");
    require_malformed(
        make_image("{" + entry("big", "F64", "[2147483648,2147483648]", "[0,16]") + "}", 16),
        "tensor \"big\": dtype F64 shape [2147483648,2147483648]: size in bits overflows");
}

// ---- picklejail's stricter rules ----

TEST_CASE("safetensors_check: duplicate tensor names are rejected", "[safetensors_check]") {
    // Identical entries would pass the reference; different ones become a hole there.
    const std::string same = entry("w", "I32", "[2,2]", "[0,16]");
    require_malformed(make_image("{" + same + "," + same + "}", 16), "duplicate tensor name \"w\"");
    const std::string other = entry("w", "U8", "[16]", "[16,32]");
    require_malformed(make_image("{" + same + "," + other + "}", 32),
                      "duplicate tensor name \"w\"");
}

TEST_CASE("safetensors_check: duplicate metadata keys are rejected", "[safetensors_check]") {
    require_malformed(
        make_image(R"({"__metadata__":{"format":"pt","format":"tf"},)" + kTestI32.substr(1), 16),
        "duplicate key \"format\" in \"__metadata__\"");
    require_malformed(make_image(R"({"__metadata__":{},"__metadata__":{"format":"pt"}})", 0),
                      "duplicate \"__metadata__\" key");
}

TEST_CASE("safetensors_check: metadata must map strings to strings", "[safetensors_check]") {
    const SafetensorsIndex ok =
        check_safetensors(make_image(R"({"__metadata__":{"format":"pt","a":"b"}})", 0));
    CHECK(ok.metadata.size() == 2);
    require_malformed(make_image(R"({"__metadata__":{"n":1}})", 0),
                      "key \"n\" does not hold a string, found a number");
    require_malformed(make_image(R"({"__metadata__":{"n":null}})", 0), "found null");
    require_malformed(make_image(R"({"__metadata__":{"n":{}}})", 0), "found an object");
    require_malformed(make_image(R"({"__metadata__":["x"]})", 0),
                      "\"__metadata__\" must be an object, found an array");
    require_malformed(make_image(R"({"__metadata__":"pt"})", 0), "found a string");
}

TEST_CASE("safetensors_check: a tensor named __metadata__ is rejected", "[safetensors_check]") {
    // ST#849: the reference writer accepts the name and produces an unreadable file.
    require_malformed(make_image("{" + entry("__metadata__", "I32", "[2,2]", "[0,16]") + "}", 16),
                      "\"__metadata__\" must map strings to strings");
}

TEST_CASE("safetensors_check: entries need exactly dtype, shape and data_offsets",
          "[safetensors_check]") {
    require_malformed(
        make_image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":0}})", 1),
        "tensor \"w\": unexpected field \"extra\"");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[1]}})", 1),
                      "tensor \"w\": missing field(s): data_offsets");
    require_malformed(
        make_image(R"({"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
        "tensor \"w\": duplicate field \"dtype\"");
    require_malformed(make_image(R"({"w":[1]})", 1),
                      "tensor \"w\": entry must be an object, found an array");
    require_malformed(make_image(R"({"w":{"dtype":8,"shape":[1],"data_offsets":[0,1]}})", 1),
                      "tensor \"w\": \"dtype\" must be a string, found a number");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})", 1),
                      "\"shape\" must be an array of integers");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 1),
                      "\"data_offsets\" must hold exactly 2 integers, found 1");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,1]}})", 1),
                      "\"data_offsets\" must hold exactly 2 integers");
}

TEST_CASE("safetensors_check: NUL padding after the JSON is rejected", "[safetensors_check]") {
    // A byte rule of its own: the message names the byte, and NUL inside or after
    // the object must never end the text early.
    require_malformed(make_image("{}", 0, "\0\0\0\0\0\0"sv), "NUL byte (header byte 2)");
    require_malformed(make_image(kTestI32, 16, "\0junk"sv), "NUL byte");
}

TEST_CASE("safetensors_check: anything but whitespace after the object is rejected",
          "[safetensors_check]") {
    require_malformed(make_image("{}x", 0), "not valid JSON");
    require_malformed(make_image("{}{}", 0), "not valid JSON: Unexpected trailing content");
    require_malformed(make_image("{}}", 0), "not valid JSON");
    require_malformed(make_image("{} /* c */", 0), "not valid JSON");
    require_malformed(make_image(kTestI32 + "x", 16), "not valid JSON");
    require_malformed(make_image(kTestI32 + kTestI32, 16), "not valid JSON");
}

TEST_CASE("safetensors_check: leading whitespace and BOM are rejected", "[safetensors_check]") {
    require_malformed(make_image(" {}", 0), "found byte 0x20");
    require_malformed(make_image("\xEF\xBB\xBF{}"sv, 0), "found byte 0xef");
    require_malformed(make_image("[]", 0), "must start with '{'");
}

TEST_CASE("safetensors_check: deep nesting fails cleanly", "[safetensors_check]") {
    const std::string deep(100000, '[');
    const std::string closed = deep + std::string(100000, ']');
    // Balanced: the first value the schema refuses is reported, nothing below it is read.
    require_malformed(make_image("{\"a\":" + closed + "}", 0),
                      "tensor \"a\": entry must be an object, found an array");
    require_malformed(make_image(R"({"__metadata__":{"k":)" + closed + "}}", 0),
                      "does not hold a string, found an array");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[)" + closed + "]}}", 0),
                      "tensor \"w\": shape[0] must be a non-negative integer, found an array");
    std::string objects;
    for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
    require_malformed(make_image(objects + "{}" + std::string(100000, '}'), 0),
                      "unexpected field \"a\"");
    // Unterminated: simdjson refuses the text before any value is read.
    require_malformed(make_image("{\"a\":" + deep, 0), "not valid JSON");
    require_malformed(make_image(objects, 0), "not valid JSON");
    require_malformed(make_image(deep, 0), "must start with '{'");

    CheckLimits shallow;
    shallow.max_json_depth = 0;
    require_error(make_image("{}", 0), ErrorCode::too_large, "deeper than the limit of 0", shallow);
    shallow.max_json_depth = 1;
    require_error(make_image("{\"a\":" + closed + "}", 0), ErrorCode::too_large,
                  "deeper than the limit of 1", shallow);
    require_error(make_image(R"({"a":{}})", 0), ErrorCode::too_large, "deeper than the limit of 1",
                  shallow);
    shallow.max_json_depth = 2;  // a valid header nests 3 levels (object, entry, shape)
    require_error(make_image(kTestI32, 16), ErrorCode::too_large, "deeper than the limit of 2",
                  shallow);
    // Empty containers count too.
    require_error(make_image("{" + entry("s", "U8", "[]", "[0,1]") + "}", 1), ErrorCode::too_large,
                  "deeper than the limit of 2", shallow);
    shallow.max_json_depth = 3;
    CHECK(run(make_image(kTestI32, 16), shallow).code == "ok");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[[1]],"data_offsets":[0,1]}})", 1),
                      "found an array");
    require_error(make_image(R"({"w":{"dtype":"U8","shape":[[1]],"data_offsets":[0,1]}})", 1),
                  ErrorCode::too_large, "deeper than the limit of 3", shallow);
}

TEST_CASE("safetensors_check: unknown dtypes are rejected", "[safetensors_check]") {
    require_malformed(make_image("{" + entry("w", "F128", "[1]", "[0,16]") + "}", 16),
                      "tensor \"w\": unknown dtype \"F128\"");
    require_malformed(make_image("{" + entry("w", "f32", "[1]", "[0,4]") + "}", 4),
                      "unknown dtype \"f32\"");
    require_malformed(make_image("{" + entry("w", "F8_E4M3FN", "[1]", "[0,1]") + "}", 1),
                      "unknown dtype");
}

TEST_CASE("safetensors_check: sub-byte dtypes need whole bytes", "[safetensors_check]") {
    // test_serialization_fp4: F4 [1,2] is one byte.
    CHECK(run(make_image("{" + entry("w", "F4", "[1,2]", "[0,1]") + "}", 1)).code == "ok");
    // test_serialization_fp4_misaligned: 3 elements = 12 bits (MisalignedSlice).
    require_malformed(make_image("{" + entry("w", "F4", "[3]", "[0,2]") + "}", 2),
                      "tensor \"w\": dtype F4 shape [3] holds 12 bits, not a whole number");
    // test_serialization_fp4_invalid: wrong byte count (TensorInvalidInfo).
    require_malformed(make_image("{" + entry("w", "F4", "[1,2]", "[0,2]") + "}", 2),
                      "hold 2 bytes but dtype F4 shape [1,2] needs 1");
    CHECK(run(make_image("{" + entry("w", "F6_E2M3", "[4]", "[0,3]") + "}", 3)).code == "ok");
    require_malformed(make_image("{" + entry("w", "F6_E3M2", "[2]", "[0,2]") + "}", 2),
                      "holds 12 bits");
}

TEST_CASE("safetensors_check: numbers must be non-negative integers below 2^53",
          "[safetensors_check]") {
    const auto image = [](std::string_view shape, std::string_view offsets) {
        return make_image("{" + entry("w", "U8", shape, offsets) + "}", 4);
    };
    require_malformed(image("[-1]", "[0,4]"),
                      "tensor \"w\": shape[0] must be a non-negative "
                      "integer, found -1");
    require_malformed(image("[-0]", "[0,4]"), "found -0");
    require_malformed(image("[4]", "[-0,4]"), "data_offsets[0] must be a non-negative integer");
    require_malformed(image("[4.0]", "[0,4]"),
                      "shape[0] must be a non-negative integer, found 4.0");
    require_malformed(image("[1.0]", "[0,4]"), "found 1.0");
    require_malformed(image("[1e3]", "[0,4]"),
                      "shape[0] must be a non-negative integer, found 1e3");
    require_malformed(image("[4]", "[0,4E+0]"), "found 4E+0");
    require_malformed(image("[-9223372036854775809]", "[0,4]"), "found -9223372036854775809");
    require_malformed(image("[4]", "[0,4e0]"), "data_offsets[1] must be a non-negative integer");
    require_malformed(image("[4]", "[0,18446744073709551616]"), "found 18446744073709551616");
    require_malformed(image("[4]", "[0,18446744073709551615]"),
                      "data_offsets[1] is 18446744073709551615, above the limit 2^53-1");
    require_malformed(image("[4]", "[0," + std::string(40, '9') + "]"),
                      "found " + std::string(32, '9') + "...");
    require_malformed(image("[4]", "[0,9007199254740992]"), "above the limit 2^53-1");
    require_malformed(image("[true]", "[0,4]"), "found a boolean");
    require_malformed(image("[null]", "[0,4]"), "found null");
    require_malformed(image("[{}]", "[0,4]"), "found an object");
    require_malformed(image("[[4]]", "[0,4]"), "found an array");
    require_malformed(image("[\"4\"]", "[0,4]"), "found a string");
    // 2^53-1 itself is in range; this one then fails on size, not on range.
    require_malformed(image("[9007199254740991]", "[0,4]"), "needs 9007199254740991");
}

TEST_CASE("safetensors_check: bad number syntax is invalid JSON", "[safetensors_check]") {
    const auto image = [](std::string_view shape) {
        return make_image("{" + entry("w", "U8", shape, "[0,4]") + "}", 4);
    };
    for (const auto bad : {"[01]"sv, "[1.]"sv, "[.5]"sv, "[-]"sv, "[1e]"sv, "[+1]"sv, "[1x]"sv,
                           "[0x10]"sv, "[4,]"sv, "[4 4]"sv, "[NaN]"sv}) {
        INFO(bad);
        require_malformed(image(bad), "header is not valid JSON");
    }
}

TEST_CASE("safetensors_check: numbers elsewhere are named as before", "[safetensors_check]") {
    require_malformed(make_image(R"({"__metadata__":{"n":-1}})", 0), "found -1");
    require_malformed(make_image(R"({"__metadata__":{"n":-0}})", 0), "found -0");
    require_malformed(make_image(R"({"__metadata__":{"n":1.5}})", 0), "found 1.5");
    require_malformed(make_image(R"({"__metadata__":{"n":18446744073709551615}})", 0),
                      "found a number");
    require_malformed(make_image(R"({"__metadata__":{"n":18446744073709551616}})", 0),
                      "found 18446744073709551616");
    require_malformed(make_image(R"({"__metadata__":{"n":true}})", 0), "found a boolean");
    require_malformed(make_image(R"({"__metadata__":{"n":01}})", 0), "not valid JSON");
    require_malformed(make_image(R"({"w":5})", 0),
                      "tensor \"w\": entry must be an object, found a number");
    require_malformed(make_image(R"({"w":null})", 0), "entry must be an object, found null");
    require_malformed(make_image(R"({"w":{"dtype":-2,"shape":[1],"data_offsets":[0,1]}})", 1),
                      "\"dtype\" must be a string, found -2");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":{},"data_offsets":[0,1]}})", 1),
                      "\"shape\" must be an array of integers, found an object");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":"0"}})", 1),
                      "\"data_offsets\" must be an array of 2 integers, found a string");
}

TEST_CASE("safetensors_check: escaped keys mean what they spell", "[safetensors_check]") {
    // Field names are matched raw on the fast path; escaped spellings still count.
    const SafetensorsIndex index = check_safetensors(
        make_image(R"({"w\u0031":{"dt\u0079pe":"U8","sh\u0061pe":[1],"data_offsets":[0,1]}})", 1));
    REQUIRE(index.tensors.size() == 1);
    CHECK(index.tensors[0].name == "w1");
    CHECK(index.tensors[0].dtype == "U8");
    require_malformed(
        make_image(R"({"w":{"dtype":"U8","dt\u0079pe":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
        "tensor \"w\": duplicate field \"dtype\"");
    require_malformed(make_image(R"({"w":{"dtype\"":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
                      "unexpected field \"dtype\\\"\"");
    require_malformed(make_image(R"({"w":{"dtypes":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
                      "unexpected field \"dtypes\"");
    require_malformed(make_image(R"({"w":{"dtyp":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
                      "unexpected field \"dtyp\"");
    require_malformed(make_image(R"({"__m\u0065tadata__":{"a":"b"},"__metadata__":{}})", 0),
                      "duplicate \"__metadata__\" key");
    require_malformed(make_image(R"({"__metadata__":{"k":"a","\u006b":"b"}})", 0),
                      "duplicate key \"k\" in \"__metadata__\"");
}

TEST_CASE("safetensors_check: strings must be valid JSON strings", "[safetensors_check]") {
    // Lone or reversed surrogate escapes, bad escapes, raw control characters.
    for (const auto bad :
         {R"("\ud800")"sv, R"("\udc00")"sv, R"("\ud800\u0041")"sv, R"("\udc00\ud800")"sv,
          R"("\x41")"sv, R"("\u12")"sv, "\"a\tb\""sv, "\"a\x01\""sv, "\"a\x7f\x1f\""sv}) {
        INFO(bad);
        require_malformed(make_image(R"({"__metadata__":{"k":)" + std::string(bad) + "}}", 0),
                          "not valid JSON");
        require_malformed(
            make_image(
                "{" + std::string(bad) + R"(:{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
            "not valid JSON");
    }
    // A valid surrogate pair and escaped text come back decoded.
    const SafetensorsIndex index =
        check_safetensors(make_image(R"({"__metadata__":{"k":"\ud83d\ude00\n\u00e9\/"}})", 0));
    CHECK(index.metadata.at("k") == "\xF0\x9F\x98\x80\n\xC3\xA9/");
}

TEST_CASE("safetensors_check: unbalanced headers are refused", "[safetensors_check]") {
    for (const auto bad : {R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})"sv,
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]])"sv,
                           R"({"w":{"dtype":"U8","shape":[1}})"sv,
                           R"({"w":{"dtype":"U8","shape":[1]],"data_offsets":[0,1]}})"sv,
                           R"({"w":{"dtype":"U8" "shape":[1],"data_offsets":[0,1]}})"sv,
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],}})"sv,
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},})"sv,
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}})"sv,
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"})"sv,
                           R"({"w" {"dtype":"U8","shape":[1],"data_offsets":[0,1]}})"sv,
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}, 1})"sv,
                           R"({{}})"sv, R"({"a"})"sv, R"({"a":})"sv, R"({:1})"sv}) {
        INFO(bad);
        require_malformed(make_image(bad, 1), "not valid JSON");
    }
}

TEST_CASE("safetensors_check: the first problem in document order is reported",
          "[safetensors_check]") {
    // The top level is broken after the first entry; the entry's error comes first.
    require_malformed(make_image(R"({"w":5 "x":{}})", 0),
                      "tensor \"w\": entry must be an object, found a number");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]},,})", 1),
                      "shape[0] must be a non-negative integer, found -1");
    require_malformed(make_image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x"})", 1),
                      "not valid JSON");
    // Entries come back complete after the counting pass over the top level.
    const std::string header = "{" + entry("a", "U8", "[1]", "[0,1]") + "," +
                               R"("__metadata__":{"k":"v"},)" + entry("b", "U8", "[1]", "[1,2]") +
                               "}";
    const SafetensorsIndex index = check_safetensors(make_image(header, 2));
    REQUIRE(index.tensors.size() == 2);
    CHECK(index.tensors[1].name == "b");
    CHECK(index.metadata.at("k") == "v");
}

TEST_CASE("safetensors_check: bytes after the header never change the result",
          "[safetensors_check]") {
    // With 64 or more data bytes the header is parsed in place and simdjson
    // reads into the data section; with fewer it works on a padded copy.
    for (const char fill : {'\0', '}', ']', '"', '\\', ' ', '1', '\xff'}) {
        for (const std::size_t data : {1, 63, 64, 65, 200}) {
            INFO("fill " << static_cast<int>(static_cast<unsigned char>(fill)) << " data " << data);
            const std::string header = "{" +
                                       entry("w", "U8", "[" + std::to_string(data) + "]",
                                             "[0," + std::to_string(data) + "]") +
                                       "}";
            std::string raw = le64(header.size()) + header + std::string(data, fill);
            const SafetensorsIndex index = check_safetensors(to_bytes(raw));
            REQUIRE(index.tensors.size() == 1);
            CHECK(index.tensors[0].end == data);
            // An unterminated header stays refused whatever follows it.
            raw = le64(header.size() - 1) + header + std::string(data, fill);
            require_malformed(to_bytes(raw), "not valid JSON");
        }
    }
}

TEST_CASE("safetensors_check: tensor count cap gives too_large", "[safetensors_check]") {
    const std::string header = "{" + entry("a", "U8", "[1]", "[0,1]") + "," +
                               entry("b", "U8", "[1]", "[1,2]") + "," +
                               entry("c", "U8", "[1]", "[2,3]") + "}";
    CheckLimits limits;
    limits.max_tensors = 3;
    CHECK(run(make_image(header, 3), limits).code == "ok");
    limits.max_tensors = 2;
    require_error(make_image(header, 3), ErrorCode::too_large, "more than the limit of 2 tensors",
                  limits);
}

TEST_CASE("safetensors_check: header, rank and name caps give too_large", "[safetensors_check]") {
    CheckLimits limits;
    limits.max_header_bytes = 59;
    require_error(make_image(kTestI32, 16), ErrorCode::too_large, "configured limit of 59", limits);
    limits = {};
    limits.max_rank = 1;
    require_error(make_image(kTestI32, 16), ErrorCode::too_large,
                  "tensor \"test\": rank exceeds the limit of 1", limits);
    limits = {};
    limits.max_name_bytes = 3;
    require_error(make_image(kTestI32, 16), ErrorCode::too_large,
                  "tensor name \"test\" exceeds the limit of 3 bytes", limits);
    limits.max_name_bytes = 4;
    CHECK(run(make_image(kTestI32, 16), limits).code == "ok");
}

TEST_CASE("safetensors_check: offsets must tile the data section", "[safetensors_check]") {
    const auto two = [](std::string_view a_offsets, std::string_view b_offsets, std::size_t data) {
        return make_image("{" + entry("a", "U8", "[4]", a_offsets) + "," +
                              entry("b", "U8", "[4]", b_offsets) + "}",
                          data);
    };
    CHECK(run(two("[0,4]", "[4,8]", 8)).code == "ok");
    require_malformed(two("[0,4]", "[6,10]", 10),
                      "tensor \"b\": data_offsets [6,10] leave a hole after tensor \"a\", which "
                      "ends at 4");
    require_malformed(two("[0,4]", "[2,6]", 6),
                      "tensor \"b\": data_offsets [2,6] overlap tensor \"a\", which ends at 4");
    require_malformed(two("[2,6]", "[6,10]", 10), "first tensor must begin at 0");
    require_malformed(make_image("{" + entry("a", "U8", "[0]", "[4,0]") + "}", 0),
                      "data_offsets [4,0] end before they begin");
}

TEST_CASE("safetensors_check: tensors come back sorted by offsets", "[safetensors_check]") {
    const std::string header =
        "{" + entry("z", "F32", "[2]", "[8,16]") + "," + entry("y", "U8", "[0]", "[0,0]") + "," +
        entry("x", "F64", "[1]", "[0,8]") + "," + entry("w", "U8", "[0]", "[0,0]") + "}";
    const SafetensorsIndex index = check_safetensors(make_image(header, 16));
    REQUIRE(index.tensors.size() == 4);
    CHECK(index.tensors[0].name == "w");  // equal (begin, end) are ordered by name
    CHECK(index.tensors[1].name == "y");
    CHECK(index.tensors[2].name == "x");
    CHECK(index.tensors[3].name == "z");
}

TEST_CASE("safetensors_check: invalid UTF-8 anywhere in the header is rejected",
          "[safetensors_check]") {
    // Overlong '/', an encoded surrogate, a code point above U+10FFFF, a cut sequence.
    for (const auto bad : {"\xC0\xAF"sv, "\xED\xA0\x80"sv, "\xF4\x90\x80\x80"sv, "\xE2\x82"sv}) {
        const std::string header = R"({"__metadata__":{"k":")" + std::string(bad) + "\"}}";
        require_malformed(make_image(header, 0), "not valid UTF-8 (header byte 22)");
    }
    // Valid multi-byte names pass and come back unchanged.
    const SafetensorsIndex index = check_safetensors(make_image(
        "{" + entry("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", "U8", "[1]", "[0,1]") + "}", 1));
    CHECK(index.tensors.at(0).name == "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
}

TEST_CASE("safetensors_check: messages escape control characters in names", "[safetensors_check]") {
    require_malformed(
        make_image(R"({"a\u0001\"b":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}})", 1),
        "tensor \"a\\x01\\\"b\": data_offsets [0,1] hold 1 bytes");
}

TEST_CASE("safetensors_check: dtype_bits knows every allowed dtype", "[safetensors_check]") {
    const std::vector<std::pair<std::string, std::uint64_t>> table = {
        {"BOOL", 8},    {"U8", 8},          {"I8", 8},          {"I16", 16},    {"U16", 16},
        {"F16", 16},    {"BF16", 16},       {"I32", 32},        {"U32", 32},    {"F32", 32},
        {"F64", 64},    {"I64", 64},        {"U64", 64},        {"F8_E4M3", 8}, {"F8_E5M2", 8},
        {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"F4", 4},      {"F6_E2M3", 6},
        {"F6_E3M2", 6}, {"C64", 64},
    };
    for (const auto& [name, bits] : table) {
        INFO(name);
        CHECK(dtype_bits(name) == bits);
    }
    CHECK(dtype_bits("") == 0);
    CHECK(dtype_bits("f32") == 0);
    CHECK(dtype_bits("C128") == 0);
    CHECK(dtype_bits("F8_E4M3FN") == 0);

    // One image holding every dtype, 8 elements each, laid out back to back.
    std::string header = "{";
    std::uint64_t offset = 0;
    for (const auto& [name, bits] : table) {
        if (offset != 0) header += ',';
        const std::uint64_t end = offset + bits;  // 8 elements * bits / 8
        header += entry("t_" + name, name, "[8]",
                        "[" + std::to_string(offset) + "," + std::to_string(end) + "]");
        offset = end;
    }
    header += "}";
    const SafetensorsIndex index = check_safetensors(make_image(header, offset));
    CHECK(index.tensors.size() == table.size());
}
