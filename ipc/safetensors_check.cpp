// Safetensors checker: reads the header with simdjson's On-Demand iterator and
// a schema-aware walk (so duplicate keys are seen and hostile nesting is cut
// off at the first level the schema does not allow), then walks the tensors in
// offset order the way the reference `Metadata::validate` does.
#include "ipc/safetensors_check.hpp"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <new>
#include <optional>
#include <system_error>
#include <tuple>
#include <utility>

#include "common/error.hpp"
#include "common/utf8.hpp"

namespace picklejail::ipc {
namespace {

namespace ondemand = simdjson::ondemand;

constexpr std::uint64_t kPrefixBytes = 8;
constexpr std::uint64_t kFormatMaxHeader = 100'000'000;  // reference MAX_HEADER_SIZE
// Larger integers lose precision in JavaScript and other double-based readers.
constexpr std::uint64_t kMaxExactInteger = (std::uint64_t{1} << 53) - 1;
constexpr std::size_t kQuoteMaxBytes = 256;  // keeps messages about huge names bounded
constexpr std::size_t kNumberTextMaxBytes = 32;
constexpr std::string_view kMetadataKey = "__metadata__";
// The shortest valid entry and its comma: "":{"dtype":"U8","shape":[],"data_offsets":[0,0]},
constexpr std::size_t kMinEntryBytes = 50;

struct DtypeInfo {
    std::string_view name;
    std::uint64_t bits;
};

// Reference `Dtype::bitsize` (tensor.rs); the allowlist picklejail accepts.
constexpr std::array<DtypeInfo, 22> kDtypes{{
    {"BOOL", 8},    {"U8", 8},          {"I8", 8},          {"I16", 16},    {"U16", 16},
    {"F16", 16},    {"BF16", 16},       {"I32", 32},        {"U32", 32},    {"F32", 32},
    {"F64", 64},    {"I64", 64},        {"U64", 64},        {"F8_E4M3", 8}, {"F8_E5M2", 8},
    {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"F4", 4},      {"F6_E2M3", 6},
    {"F6_E3M2", 6}, {"C64", 64},
}};

[[noreturn]] void fail(const std::string& message) {
    throw Error(ErrorCode::malformed, message);
}

[[noreturn]] void too_large(const std::string& message) {
    throw Error(ErrorCode::too_large, message);
}

[[noreturn]] void out_of_memory() {
    too_large("header needs more memory than is available to check it");
}

std::string hex_byte(unsigned char byte) {
    constexpr std::string_view kDigits = "0123456789abcdef";
    return std::string("0x") + kDigits[byte >> 4] + kDigits[byte & 0xF];
}

// Renders untrusted text for a message: quoted, quotes/backslashes/control bytes
// escaped (so a name cannot forge message structure), long text cut at a UTF-8
// boundary. Input is already valid UTF-8 (the header was checked first).
std::string quote(std::string_view text) {
    std::size_t cut = text.size();
    if (cut > kQuoteMaxBytes) {
        cut = kQuoteMaxBytes;
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    }
    std::string out = "\"";
    for (const char c : text.substr(0, cut)) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (byte < 0x20 || byte == 0x7F) {
            out += "\\x" + hex_byte(byte).substr(2);
        } else {
            out += c;
        }
    }
    out += '"';
    if (cut < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
    return out;
}

std::string tensor_label(std::string_view name) {
    return "tensor " + quote(name) + ": ";
}

std::string format_shape(const std::vector<std::uint64_t>& shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i != 0) out += ',';
        out += std::to_string(shape[i]);
    }
    return out + "]";
}

std::string format_offsets(const TensorEntry& tensor) {
    return "data_offsets [" + std::to_string(tensor.begin) + "," + std::to_string(tensor.end) + "]";
}

// a * b, or false on 64-bit overflow (the reference uses checked_mul).
bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
    if (a != 0 && b > UINT64_MAX / a) return false;
    out = a * b;
    return true;
}

// Offset of the first byte breaking strict UTF-8, or npos.
std::size_t find_invalid_utf8(std::string_view text) {
    for (std::size_t i = 0; i < text.size();) {
        std::uint32_t codepoint = 0;
        const std::size_t length = utf8_sequence(text, i, codepoint);
        if (length == 0) return i;
        i += length;
    }
    return std::string_view::npos;
}

// The header as a picklejail::Error: `malformed` naming simdjson's complaint,
// or `too_large` when simdjson ran out of memory.
[[noreturn]] void fail_json(simdjson::error_code code) {
    if (code == simdjson::MEMALLOC) out_of_memory();
    fail(std::string("header is not valid JSON: ") + simdjson::error_message(code));
}

// The value of a simdjson result; its error code becomes a picklejail::Error.
template <typename T>
T take(simdjson::simdjson_result<T> result) {
    T value{};
    if (const simdjson::error_code code = std::move(result).get(value); code != simdjson::SUCCESS) {
        fail_json(code);
    }
    return value;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// RFC 8259 section 6: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
bool is_json_number(std::string_view token) {
    std::size_t at = 0;
    const auto skip = [&](std::string_view chars) {
        if (at < token.size() && chars.find(token[at]) != std::string_view::npos) ++at;
    };
    const auto digits = [&] {
        const std::size_t start = at;
        while (at < token.size() && is_digit(token[at])) ++at;
        return at > start;
    };
    skip("-");
    if (at < token.size() && token[at] == '0') {
        ++at;
    } else if (!digits()) {
        return false;
    }
    if (at < token.size() && token[at] == '.') {
        ++at;
        if (!digits()) return false;
    }
    if (at < token.size() && (token[at] == 'e' || token[at] == 'E')) {
        ++at;
        skip("+-");
        if (!digits()) return false;
    }
    return at == token.size();
}

// The text of the number `value` holds. simdjson's raw token runs up to the
// next token, so JSON whitespace is cut off; bad number syntax is refused here
// because simdjson checks it only when it converts.
std::string_view number_token(ondemand::value& value) {
    std::string_view token = value.raw_json_token();
    token = token.substr(0, token.find_last_not_of(" \t\n\r") + 1);
    if (!is_json_number(token)) fail_json(simdjson::NUMBER_ERROR);
    return token;
}

// How a type error names a number, as the SAX parser's events did: "a number"
// for an integer that fits 64 unsigned bits, else the text itself, since the
// minus sign, fraction or exponent is what is wrong (bounded; number
// characters only, so echoing it is safe).
std::string describe_number(std::string_view token) {
    std::uint64_t ignored = 0;
    const char* const end = token.data() + token.size();
    if (const auto parsed = std::from_chars(token.data(), end, ignored);
        parsed.ec == std::errc{} && parsed.ptr == end) {
        return "a number";
    }
    std::string shown(token.substr(0, kNumberTextMaxBytes));
    if (shown.size() < token.size()) shown += "...";
    return shown;
}

// What a type error says was found instead.
std::string describe(ondemand::value& value, ondemand::json_type type) {
    switch (type) {
        case ondemand::json_type::object:
            return "an object";
        case ondemand::json_type::array:
            return "an array";
        case ondemand::json_type::string:
            return "a string";
        case ondemand::json_type::boolean:
            return "a boolean";
        case ondemand::json_type::null:
            return "null";
        case ondemand::json_type::number:
            break;
    }
    return describe_number(number_token(value));
}

std::string element_label(std::string_view tensor, std::string_view field, std::size_t index) {
    return tensor_label(tensor) + std::string(field) + "[" + std::to_string(index) + "]";
}

// Nesting levels of the schema: the header object, a tensor entry or
// __metadata__, a shape / data_offsets array or a metadata value, an element.
constexpr std::size_t kTopLevel = 1;
constexpr std::size_t kEntryLevel = 2;
constexpr std::size_t kValueLevel = 3;
constexpr std::size_t kElementLevel = 4;

// A tensor entry's fields; field i is bit i, named kFieldNames[i].
enum Field : unsigned { dtype_field = 1, shape_field = 2, offsets_field = 4 };
constexpr unsigned kAllFields = dtype_field | shape_field | offsets_field;
constexpr std::array<std::string_view, 3> kFieldNames{"dtype", "shape", "data_offsets"};

// The key of a tensor entry's member. The usual spellings are matched in the
// raw text, as unescaping every key costs a measurable share of the check;
// others, "dt\u0079pe" included, are unescaped.
std::string_view entry_key(ondemand::field& member) {
    const ondemand::raw_json_string raw = member.key();
    for (const std::string_view name : kFieldNames) {
        if (raw.unsafe_is_equal(name)) return name;  // needs no quote or backslash in `name`
    }
    return take(member.unescaped_key());
}

// Which field of a tensor entry `key` is; unknown and repeated ones are refused.
Field entry_field(std::string_view key, unsigned seen, std::string_view tensor) {
    Field field{};
    for (std::size_t i = 0; i < kFieldNames.size(); ++i) {
        if (key == kFieldNames[i]) field = static_cast<Field>(1U << i);
    }
    if (field == Field{}) {
        fail(tensor_label(tensor) + "unexpected field " + quote(key) +
             " (only dtype, shape and data_offsets are allowed)");
    }
    if ((seen & field) != 0) fail(tensor_label(tensor) + "duplicate field " + quote(key));
    return field;
}

void check_all_fields(unsigned seen, std::string_view tensor) {
    if (seen == kAllFields) return;
    std::string missing;
    for (std::size_t i = 0; i < kFieldNames.size(); ++i) {
        if ((seen & (1U << i)) == 0) missing += " " + std::string(kFieldNames[i]);
    }
    fail(tensor_label(tensor) + "missing field(s):" + missing);
}

// Reads the header into the index with simdjson's On-Demand iterator, which
// walks the text in order and keeps no tree: each value's type is checked
// before anything inside it is read, so the first value the schema does not
// allow is the one reported (as with the SAX parser this replaces), hostile
// nesting is cut off at the first level the schema or max_json_depth refuses,
// and duplicate keys are seen because every member is visited. Raw tokens keep
// "-0", "1.0" and integers beyond 2^64 apart from plain integers.
class HeaderReader {
  public:
    explicit HeaderReader(const CheckLimits& limits) : limits_(limits) {}
    void read(ondemand::document& document, SafetensorsIndex& index) const;

  private:
    void read_metadata(ondemand::value& value, std::map<std::string, std::string>& metadata) const;
    void read_tensor(std::string_view name, ondemand::value& value,
                     std::vector<TensorEntry>& tensors) const;
    void read_entry(ondemand::value& value, TensorEntry& tensor) const;
    void read_field(Field field, ondemand::value& value, TensorEntry& tensor) const;
    void read_dtype(ondemand::value& value, TensorEntry& tensor) const;
    void read_shape(ondemand::value& value, TensorEntry& tensor) const;
    void read_offsets(ondemand::value& value, TensorEntry& tensor) const;
    template <typename Label>
    std::uint64_t read_integer(ondemand::value& element, const Label& label) const;
    template <typename Expectation>
    void require_type(ondemand::value& value, ondemand::json_type wanted, std::size_t level,
                      const Expectation& expectation) const;
    void check_depth(std::size_t level) const;

    const CheckLimits& limits_;
};

void HeaderReader::read(ondemand::document& document, SafetensorsIndex& index) const {
    check_depth(kTopLevel);
    ondemand::object members = take(document.get_object());
    bool metadata_seen = false;
    for (auto result : members) {
        ondemand::field member = take(result);
        const std::string_view key = take(member.unescaped_key());
        if (key != kMetadataKey) {
            read_tensor(key, member.value(), index.tensors);
        } else if (std::exchange(metadata_seen, true)) {
            fail("duplicate \"__metadata__\" key");
        } else {
            read_metadata(member.value(), index.metadata);
        }
    }
    // simdjson 3.0 has no document::at_end(); current_location() reports
    // OUT_OF_BOUNDS exactly when no token follows the header object.
    if (document.current_location().error() != simdjson::OUT_OF_BOUNDS) {
        fail_json(simdjson::TRAILING_CONTENT);
    }
}

void HeaderReader::read_metadata(ondemand::value& value,
                                 std::map<std::string, std::string>& metadata) const {
    require_type(value, ondemand::json_type::object, kEntryLevel,
                 [] { return std::string("\"__metadata__\" must be an object"); });
    ondemand::object members = take(value.get_object());
    for (auto result : members) {
        ondemand::field member = take(result);
        std::string key(take(member.unescaped_key()));
        if (metadata.contains(key)) fail("duplicate key " + quote(key) + " in \"__metadata__\"");
        ondemand::value& text = member.value();
        require_type(text, ondemand::json_type::string, kValueLevel, [&key] {
            return "\"__metadata__\" must map strings to strings, but key " + quote(key) +
                   " does not hold a string";
        });
        metadata.emplace(std::move(key), take(text.get_string()));
    }
}

// A top-level key other than __metadata__ names a tensor. Repeated names are
// found by check_unique_names once all are read.
void HeaderReader::read_tensor(std::string_view name, ondemand::value& value,
                               std::vector<TensorEntry>& tensors) const {
    if (name.size() > limits_.max_name_bytes) {
        too_large("tensor name " + quote(name) + " exceeds the limit of " +
                  std::to_string(limits_.max_name_bytes) + " bytes");
    }
    if (tensors.size() >= limits_.max_tensors) {
        too_large("header holds more than the limit of " + std::to_string(limits_.max_tensors) +
                  " tensors");
    }
    TensorEntry& tensor = tensors.emplace_back();
    tensor.name = name;
    read_entry(value, tensor);
}

// Entries hold exactly dtype, shape and data_offsets, each once.
void HeaderReader::read_entry(ondemand::value& value, TensorEntry& tensor) const {
    require_type(value, ondemand::json_type::object, kEntryLevel,
                 [&tensor] { return tensor_label(tensor.name) + "entry must be an object"; });
    ondemand::object members = take(value.get_object());
    unsigned seen = 0;
    for (auto result : members) {
        ondemand::field member = take(result);
        const Field field = entry_field(entry_key(member), seen, tensor.name);
        seen |= field;
        read_field(field, member.value(), tensor);
    }
    check_all_fields(seen, tensor.name);
}

void HeaderReader::read_field(Field field, ondemand::value& value, TensorEntry& tensor) const {
    switch (field) {
        case dtype_field:
            read_dtype(value, tensor);
            break;
        case shape_field:
            read_shape(value, tensor);
            break;
        case offsets_field:
            read_offsets(value, tensor);
            break;
    }
}

void HeaderReader::read_dtype(ondemand::value& value, TensorEntry& tensor) const {
    require_type(value, ondemand::json_type::string, kValueLevel,
                 [&tensor] { return tensor_label(tensor.name) + "\"dtype\" must be a string"; });
    const std::string_view dtype = take(value.get_string());
    if (dtype_bits(dtype) == 0) fail(tensor_label(tensor.name) + "unknown dtype " + quote(dtype));
    tensor.dtype = dtype;
}

void HeaderReader::read_shape(ondemand::value& value, TensorEntry& tensor) const {
    require_type(value, ondemand::json_type::array, kValueLevel, [&tensor] {
        return tensor_label(tensor.name) + "\"shape\" must be an array of integers";
    });
    ondemand::array elements = take(value.get_array());
    for (auto result : elements) {
        ondemand::value element = take(result);
        const std::uint64_t dim = read_integer(element, [&tensor] {
            return element_label(tensor.name, "shape", tensor.shape.size());
        });
        if (tensor.shape.size() >= limits_.max_rank) {
            too_large(tensor_label(tensor.name) + "rank exceeds the limit of " +
                      std::to_string(limits_.max_rank) + " dimensions");
        }
        tensor.shape.push_back(dim);
    }
}

void HeaderReader::read_offsets(ondemand::value& value, TensorEntry& tensor) const {
    const auto must_hold_two = [&tensor] {
        return tensor_label(tensor.name) + "\"data_offsets\" must hold exactly 2 integers";
    };
    require_type(value, ondemand::json_type::array, kValueLevel, [&tensor] {
        return tensor_label(tensor.name) + "\"data_offsets\" must be an array of 2 integers";
    });
    ondemand::array elements = take(value.get_array());
    std::size_t count = 0;
    for (auto result : elements) {
        ondemand::value element = take(result);
        const std::uint64_t offset = read_integer(element, [&tensor, count] {
            return element_label(tensor.name, "data_offsets", count);
        });
        if (count >= 2) fail(must_hold_two());
        (count == 0 ? tensor.begin : tensor.end) = offset;
        ++count;
    }
    if (count != 2) fail(must_hold_two() + ", found " + std::to_string(count));
}

// A non-negative integer below 2^53; `label` names the element for messages.
template <typename Label>
std::uint64_t HeaderReader::read_integer(ondemand::value& element, const Label& label) const {
    std::uint64_t number = 0;
    if (element.get_uint64().get(number) != simdjson::SUCCESS) {
        const auto expectation = [&label] { return label() + " must be a non-negative integer"; };
        require_type(element, ondemand::json_type::number, kElementLevel, expectation);
        // A number, but negative, fractional, with an exponent or beyond 2^64.
        fail(expectation() + ", found " + describe_number(number_token(element)));
    }
    if (number > kMaxExactInteger) {
        fail(label() + " is " + std::to_string(number) + ", above the limit 2^53-1");
    }
    return number;
}

// Refuses `value` unless it has the type the schema wants at this point. A
// container's depth is checked before its type, as the SAX parser did.
template <typename Expectation>
void HeaderReader::require_type(ondemand::value& value, ondemand::json_type wanted,
                                std::size_t level, const Expectation& expectation) const {
    const ondemand::json_type type = take(value.type());
    if (type == ondemand::json_type::object || type == ondemand::json_type::array) {
        check_depth(level);
    }
    if (type != wanted) fail(expectation() + ", found " + describe(value, type));
}

void HeaderReader::check_depth(std::size_t level) const {
    if (level > limits_.max_json_depth) {
        too_large("header JSON nests deeper than the limit of " +
                  std::to_string(limits_.max_json_depth) + " levels");
    }
}

// Checks the prefix and returns the header bytes; fills header_size/data_offset.
std::string_view locate_header(std::span<const std::byte> image, const CheckLimits& limits,
                               SafetensorsIndex& index) {
    const auto size = static_cast<std::uint64_t>(image.size());
    if (size < kPrefixBytes) {
        fail("image is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
    }
    std::uint64_t n = 0;
    for (std::size_t i = kPrefixBytes; i-- > 0;)
        n = (n << 8) | std::to_integer<std::uint64_t>(image[i]);
    if (n > kFormatMaxHeader) {
        too_large("header length " + std::to_string(n) +
                  " exceeds the safetensors limit of 100000000 bytes");
    }
    if (n > limits.max_header_bytes) {
        too_large("header length " + std::to_string(n) + " exceeds the configured limit of " +
                  std::to_string(limits.max_header_bytes) + " bytes");
    }
    if (n > size - kPrefixBytes) {  // subtracting keeps 8 + N from overflowing
        fail("header length " + std::to_string(n) + " runs past the end of the " +
             std::to_string(size) + "-byte image");
    }
    index.header_size = n;
    index.data_offset = kPrefixBytes + n;
    return {reinterpret_cast<const char*>(image.data()) + kPrefixBytes,
            static_cast<std::size_t>(n)};
}

// Byte-level rules checked before JSON parsing. simdjson refuses NUL too, but
// this check names the byte and says why: padding must be JSON whitespace.
void check_header_bytes(std::string_view header) {
    if (header.empty()) fail("header is empty; it must hold a JSON object");
    // simdjson's SIMD check is as strict as utf8_sequence (no overlong forms,
    // surrogates or code points above U+10FFFF) and much faster; the byte-wise
    // scan runs only to name the first bad byte.
    if (!simdjson::validate_utf8(header.data(), header.size())) {
        fail("header is not valid UTF-8 (header byte " + std::to_string(find_invalid_utf8(header)) +
             ")");
    }
    if (const auto nul = header.find('\0'); nul != std::string_view::npos) {
        fail("header contains a NUL byte (header byte " + std::to_string(nul) +
             "); padding must be JSON whitespace");
    }
    if (header.front() != '{') {
        fail("header must start with '{' at byte 8, found byte " +
             hex_byte(static_cast<unsigned char>(header.front())));
    }
}

// simdjson reads up to SIMDJSON_PADDING bytes past the end of its input
// (their content does not affect the result). The data section usually
// provides them; otherwise the header is copied into `copy`.
simdjson::padded_string_view padded_header(std::string_view header, std::size_t bytes_after,
                                           simdjson::padded_string& copy) {
    if (bytes_after >= simdjson::SIMDJSON_PADDING) {
        return simdjson::padded_string_view(header.data(), header.size(),
                                            header.size() + simdjson::SIMDJSON_PADDING);
    }
    copy = simdjson::padded_string(header);
    if (copy.data() == nullptr) out_of_memory();
    return copy;
}

// The members of the header object, counted in a pass that skips their values
// (the walk checks them later), with `document` rewound for that walk; nullopt
// when the top level itself is broken, which leaves `document` unusable.
std::optional<std::size_t> count_members(ondemand::document& document) {
    ondemand::object members;
    std::size_t count = 0;
    if (document.get_object().get(members) != simdjson::SUCCESS ||
        members.count_fields().get(count) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    document.rewind();
    return count;
}

// Room for the tensors, made before the walk: growing the list entry by entry
// costs more than counting. Capped by how many valid entries the header could
// hold, so a hostile member count allocates no more than real entries would.
std::size_t tensor_capacity(std::optional<std::size_t> members, std::size_t header_bytes,
                            const CheckLimits& limits) {
    const std::uint64_t valid_entries = header_bytes / kMinEntryBytes;
    return static_cast<std::size_t>(
        std::min({std::uint64_t{members.value_or(0)}, valid_entries, limits.max_tensors}));
}

// `bytes_after`: how many bytes of the image follow the header.
void parse_header(std::string_view header, std::size_t bytes_after, const CheckLimits& limits,
                  SafetensorsIndex& index) {
    try {
        simdjson::padded_string copy;
        const simdjson::padded_string_view input = padded_header(header, bytes_after, copy);
        ondemand::parser parser;
        ondemand::document document = take(parser.iterate(input));
        const std::optional<std::size_t> members = count_members(document);
        // Broken at the top level: a fresh iteration lets the walk report the
        // first problem in document order.
        if (!members) document = take(parser.iterate(input));
        index.tensors.reserve(tensor_capacity(members, header.size(), limits));
        HeaderReader(limits).read(document, index);
    } catch (const std::bad_alloc&) {
        out_of_memory();
    }
}

// Reference InvalidOffset: offsets are ordered, and each tensor begins exactly
// where the previous one ended (the first at 0), so bytes are never shared.
void check_placement(const TensorEntry& tensor, const TensorEntry* previous,
                     std::uint64_t expected_begin) {
    if (tensor.end >= tensor.begin && tensor.begin == expected_begin) return;
    const std::string label = tensor_label(tensor.name) + format_offsets(tensor);
    if (tensor.end < tensor.begin) fail(label + " end before they begin");
    if (previous == nullptr) fail(label + " leave a hole: the first tensor must begin at 0");
    const std::string other =
        " tensor " + quote(previous->name) + ", which ends at " + std::to_string(expected_begin);
    fail(label + (tensor.begin > expected_begin ? " leave a hole after" : " overlap") + other);
}

// Reference ValidationOverflow / MisalignedSlice / TensorInvalidInfo.
void check_byte_size(const TensorEntry& tensor) {
    // Built only for a message: this runs once per tensor of every image.
    const auto label = [&tensor] {
        return tensor_label(tensor.name) + "dtype " + tensor.dtype + " shape " +
               format_shape(tensor.shape);
    };
    std::uint64_t elements = 1;
    for (const std::uint64_t dim : tensor.shape) {
        if (!checked_mul(elements, dim, elements))
            fail(label() + ": element count overflows 64 bits");
    }
    std::uint64_t bits = 0;
    if (!checked_mul(elements, dtype_bits(tensor.dtype), bits)) {
        fail(label() + ": size in bits overflows 64 bits");
    }
    if (bits % 8 != 0) {
        fail(label() + " holds " + std::to_string(bits) + " bits, not a whole number of bytes");
    }
    const std::uint64_t held = tensor.end - tensor.begin;
    if (held != bits / 8) {
        fail(tensor_label(tensor.name) + format_offsets(tensor) + " hold " + std::to_string(held) +
             " bytes but dtype " + tensor.dtype + " shape " + format_shape(tensor.shape) +
             " needs " + std::to_string(bits / 8));
    }
}

// Any tensor name twice is refused (the reference parser keeps the last one).
void check_unique_names(const std::vector<TensorEntry>& tensors) {
    std::vector<std::string_view> names;
    names.reserve(tensors.size());
    for (const auto& tensor : tensors) names.emplace_back(tensor.name);
    std::sort(names.begin(), names.end());
    if (const auto twice = std::adjacent_find(names.begin(), names.end()); twice != names.end())
        fail("duplicate tensor name " + quote(*twice));
}

// Sorts by offsets and checks that the tensors tile the data section exactly.
void check_layout(std::vector<TensorEntry>& tensors, std::uint64_t data_bytes) {
    std::sort(tensors.begin(), tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
        return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    std::uint64_t covered = 0;
    const TensorEntry* previous = nullptr;
    for (const TensorEntry& tensor : tensors) {
        check_placement(tensor, previous, covered);
        check_byte_size(tensor);
        covered = tensor.end;
        previous = &tensor;
    }
    if (covered < data_bytes) {
        fail("data section is " + std::to_string(data_bytes) + " bytes but the tensors end at " +
             std::to_string(covered) + ": trailing bytes after the last tensor");
    }
    if (covered > data_bytes) {
        fail("tensors end at " + std::to_string(covered) + " but the data section holds only " +
             std::to_string(data_bytes) + " bytes: the image is truncated");
    }
}

}  // namespace

std::uint64_t dtype_bits(std::string_view dtype) {
    for (const DtypeInfo& info : kDtypes) {
        // Size and first byte rule out most entries without a memcmp call;
        // this runs twice per tensor.
        if (info.name.size() == dtype.size() && info.name[0] == dtype[0] && info.name == dtype) {
            return info.bits;
        }
    }
    return 0;
}

SafetensorsIndex check_safetensors(std::span<const std::byte> image, const CheckLimits& limits) {
    SafetensorsIndex index;
    const std::string_view header = locate_header(image, limits, index);
    check_header_bytes(header);
    parse_header(header, image.size() - static_cast<std::size_t>(index.data_offset), limits, index);
    check_unique_names(index.tensors);
    check_layout(index.tensors, static_cast<std::uint64_t>(image.size()) - index.data_offset);
    return index;
}

}  // namespace picklejail::ipc
