// Safetensors checker: parses the header with a schema-aware SAX handler (so
// duplicate keys are seen and hostile nesting is cut off at the first level the
// schema does not allow), then walks the tensors in offset order the way the
// reference `Metadata::validate` does.
#include "ipc/safetensors_check.hpp"

#include <algorithm>
#include <array>
#include <new>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "common/error.hpp"
#include "common/utf8.hpp"

namespace picklejail::ipc {
namespace {

using Json = nlohmann::json;

constexpr std::uint64_t kPrefixBytes = 8;
constexpr std::uint64_t kFormatMaxHeader = 100'000'000;  // reference MAX_HEADER_SIZE
// Larger integers lose precision in JavaScript and other double-based readers.
constexpr std::uint64_t kMaxExactInteger = (std::uint64_t{1} << 53) - 1;
constexpr std::size_t kQuoteMaxBytes = 256;  // keeps messages about huge names bounded
constexpr std::size_t kNumberTextMaxBytes = 32;
constexpr std::string_view kMetadataKey = "__metadata__";

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

// nlohmann's message minus its "[json.exception...] " tag and the "; last read:
// '...'" part, which would echo attacker bytes; the rest is nlohmann's own text.
std::string describe_parse_error(const Json::exception& ex) {
    std::string_view text = ex.what();
    if (const auto tag_end = text.find("] "); tag_end != std::string_view::npos) {
        text.remove_prefix(tag_end + 2);
    }
    text = text.substr(0, text.find("; last read: '"));
    return std::string(text);
}

// Builds the index straight from SAX events and enforces the header schema as
// it goes. nlohmann's SAX parser keeps its nesting state on the heap, and this
// handler rejects the first container the schema (or the depth cap) does not
// allow, so deep nesting costs neither stack nor memory. Duplicate keys are
// caught here because nlohmann's DOM parser silently keeps the last one.
// Errors are thrown as picklejail::Error straight out of the callbacks.
class HeaderHandler final : public nlohmann::json_sax<Json> {
  public:
    explicit HeaderHandler(const CheckLimits& limits) : limits_(limits) {}

    bool null() override { type_error("null"); }
    bool boolean(bool /*value*/) override { type_error("a boolean"); }
    bool binary(binary_t& /*value*/) override { type_error("binary data"); }
    bool number_integer(number_integer_t value) override;
    bool number_unsigned(number_unsigned_t value) override;
    bool number_float(number_float_t value, const string_t& text) override;
    bool string(string_t& value) override;
    bool start_object(std::size_t elements) override;
    bool key(string_t& name) override;
    bool end_object() override;
    bool start_array(std::size_t elements) override;
    bool end_array() override;
    bool parse_error(std::size_t position, const std::string& last_token,
                     const Json::exception& ex) override;

    [[nodiscard]] bool complete() const { return where_ == Where::done; }
    std::vector<TensorEntry>& tensors() { return tensors_; }
    std::map<std::string, std::string>& metadata() { return metadata_; }

  private:
    // Where the parser is in the schema; value events apply to the last key.
    enum class Where { root, top, metadata, entry, shape, offsets, done };
    enum Field : unsigned { no_field = 0, dtype_field = 1, shape_field = 2, offsets_field = 4 };
    static constexpr unsigned kAllFields = dtype_field | shape_field | offsets_field;

    [[noreturn]] void type_error(std::string_view found) const;
    [[nodiscard]] std::string expectation() const;
    [[nodiscard]] std::string field_expectation() const;
    [[nodiscard]] std::string element_label() const;
    void enter_container();
    void top_level_key(const std::string& name);
    void entry_field_key(const std::string& name);
    void finish_entry();

    const CheckLimits& limits_;
    Where where_ = Where::root;
    std::size_t depth_ = 0;
    bool value_is_metadata_ = false;  // the pending top-level key is __metadata__
    std::string metadata_key_;        // the pending __metadata__ key
    Field field_ = no_field;          // the pending entry field
    unsigned fields_seen_ = 0;
    std::size_t offsets_seen_ = 0;
    TensorEntry current_;
    bool metadata_seen_ = false;
    std::vector<TensorEntry> tensors_;
    std::map<std::string, std::string> metadata_;
};

void HeaderHandler::type_error(std::string_view found) const {
    fail(expectation() + ", found " + std::string(found));
}

// What the schema wants at the current position, for type errors.
std::string HeaderHandler::expectation() const {
    switch (where_) {
        case Where::root:
            return "the header must be a JSON object";
        case Where::top:
            return value_is_metadata_ ? "\"__metadata__\" must be an object"
                                      : tensor_label(current_.name) + "entry must be an object";
        case Where::metadata:
            return "\"__metadata__\" must map strings to strings, but key " + quote(metadata_key_) +
                   " does not hold a string";
        case Where::entry:
            return tensor_label(current_.name) + field_expectation();
        case Where::shape:
        case Where::offsets:
            return element_label() + " must be a non-negative integer";
        case Where::done:
            break;
    }
    return "nothing may follow the header object";
}

std::string HeaderHandler::field_expectation() const {
    switch (field_) {
        case dtype_field:
            return "\"dtype\" must be a string";
        case shape_field:
            return "\"shape\" must be an array of integers";
        case offsets_field:
            return "\"data_offsets\" must be an array of 2 integers";
        case no_field:
            break;
    }
    return "unexpected value";
}

// e.g. `tensor "w": shape[1]`, naming the element about to be stored.
std::string HeaderHandler::element_label() const {
    const bool in_shape = where_ == Where::shape;
    const std::size_t index = in_shape ? current_.shape.size() : offsets_seen_;
    return tensor_label(current_.name) + (in_shape ? "shape[" : "data_offsets[") +
           std::to_string(index) + "]";
}

bool HeaderHandler::number_integer(number_integer_t value) {
    // nlohmann reports only numbers written with a minus sign here ("-0" too).
    type_error(value == 0 ? std::string("-0") : std::to_string(value));
}

bool HeaderHandler::number_unsigned(number_unsigned_t value) {
    if (where_ != Where::shape && where_ != Where::offsets) type_error("a number");
    if (value > kMaxExactInteger) {
        fail(element_label() + " is " + std::to_string(value) + ", above the limit 2^53-1");
    }
    if (where_ == Where::shape) {
        if (current_.shape.size() >= limits_.max_rank) {
            too_large(tensor_label(current_.name) + "rank exceeds the limit of " +
                      std::to_string(limits_.max_rank) + " dimensions");
        }
        current_.shape.push_back(value);
        return true;
    }
    if (offsets_seen_ >= 2) {
        fail(tensor_label(current_.name) + "\"data_offsets\" must hold exactly 2 integers");
    }
    (offsets_seen_ == 0 ? current_.begin : current_.end) = value;
    ++offsets_seen_;
    return true;
}

bool HeaderHandler::number_float(number_float_t /*value*/, const string_t& text) {
    // Fractions, exponents and integers beyond 2^64 all arrive here; the token
    // is number characters only, so echoing a bounded prefix is safe.
    std::string shown = text.substr(0, kNumberTextMaxBytes);
    if (shown.size() < text.size()) shown += "...";
    type_error(shown);
}

bool HeaderHandler::string(string_t& value) {
    if (where_ == Where::metadata) {
        metadata_.emplace(metadata_key_, value);
        return true;
    }
    if (where_ != Where::entry || field_ != dtype_field) type_error("a string");
    if (dtype_bits(value) == 0) fail(tensor_label(current_.name) + "unknown dtype " + quote(value));
    current_.dtype = value;
    return true;
}

void HeaderHandler::enter_container() {
    if (++depth_ > limits_.max_json_depth) {
        too_large("header JSON nests deeper than the limit of " +
                  std::to_string(limits_.max_json_depth) + " levels");
    }
}

bool HeaderHandler::start_object(std::size_t /*elements*/) {
    enter_container();
    if (where_ == Where::root) {
        where_ = Where::top;
    } else if (where_ == Where::top) {
        where_ = value_is_metadata_ ? Where::metadata : Where::entry;
    } else {
        type_error("an object");
    }
    return true;
}

bool HeaderHandler::key(string_t& name) {
    if (where_ == Where::top) {
        top_level_key(name);
    } else if (where_ == Where::entry) {
        entry_field_key(name);
    } else {  // Where::metadata: the only other object the schema allows
        if (metadata_.contains(name)) fail("duplicate key " + quote(name) + " in \"__metadata__\"");
        metadata_key_ = name;
    }
    return true;
}

// A top-level key names a tensor or is __metadata__; both must be unique.
// (Repeated tensor names are found by check_unique_names once all are read.)
void HeaderHandler::top_level_key(const std::string& name) {
    value_is_metadata_ = name == kMetadataKey;
    if (value_is_metadata_) {
        if (metadata_seen_) fail("duplicate \"__metadata__\" key");
        metadata_seen_ = true;
        return;
    }
    if (name.size() > limits_.max_name_bytes) {
        too_large("tensor name " + quote(name) + " exceeds the limit of " +
                  std::to_string(limits_.max_name_bytes) + " bytes");
    }
    if (tensors_.size() >= limits_.max_tensors) {
        too_large("header holds more than the limit of " + std::to_string(limits_.max_tensors) +
                  " tensors");
    }
    current_ = TensorEntry{};
    current_.name = name;
    fields_seen_ = 0;
    offsets_seen_ = 0;
}

// Entries hold exactly dtype, shape and data_offsets, each once.
void HeaderHandler::entry_field_key(const std::string& name) {
    field_ = name == "dtype"          ? dtype_field
             : name == "shape"        ? shape_field
             : name == "data_offsets" ? offsets_field
                                      : no_field;
    if (field_ == no_field) {
        fail(tensor_label(current_.name) + "unexpected field " + quote(name) +
             " (only dtype, shape and data_offsets are allowed)");
    }
    if ((fields_seen_ & field_) != 0) {
        fail(tensor_label(current_.name) + "duplicate field " + quote(name));
    }
    fields_seen_ |= field_;
}

bool HeaderHandler::end_object() {
    --depth_;
    if (where_ == Where::entry) {
        finish_entry();
        where_ = Where::top;
    } else if (where_ == Where::metadata) {
        where_ = Where::top;
    } else {  // Where::top: the header object is complete
        where_ = Where::done;
    }
    return true;
}

void HeaderHandler::finish_entry() {
    if (fields_seen_ != kAllFields) {
        std::string missing;
        if ((fields_seen_ & dtype_field) == 0) missing += " dtype";
        if ((fields_seen_ & shape_field) == 0) missing += " shape";
        if ((fields_seen_ & offsets_field) == 0) missing += " data_offsets";
        fail(tensor_label(current_.name) + "missing field(s):" + missing);
    }
    tensors_.push_back(std::move(current_));
}

bool HeaderHandler::start_array(std::size_t /*elements*/) {
    enter_container();
    if (where_ == Where::entry && field_ == shape_field) {
        where_ = Where::shape;
    } else if (where_ == Where::entry && field_ == offsets_field) {
        where_ = Where::offsets;
    } else {
        type_error("an array");
    }
    return true;
}

bool HeaderHandler::end_array() {
    --depth_;
    if (where_ == Where::offsets && offsets_seen_ != 2) {
        fail(tensor_label(current_.name) + "\"data_offsets\" must hold exactly 2 integers, found " +
             std::to_string(offsets_seen_));
    }
    where_ = Where::entry;  // arrays exist only as shape and data_offsets values
    return true;
}

bool HeaderHandler::parse_error(std::size_t position, const std::string& /*last_token*/,
                                const Json::exception& ex) {
    fail("header is not valid JSON (header byte " + std::to_string(position) +
         "): " + describe_parse_error(ex));
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

// Byte-level rules checked before JSON parsing. NUL gets its own check because
// nlohmann's lexer reads a NUL byte as end of input and would accept `{}\0junk`.
void check_header_bytes(std::string_view header) {
    if (header.empty()) fail("header is empty; it must hold a JSON object");
    if (const auto bad = find_invalid_utf8(header); bad != std::string_view::npos) {
        fail("header is not valid UTF-8 (header byte " + std::to_string(bad) + ")");
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

void parse_header(std::string_view header, const CheckLimits& limits, SafetensorsIndex& index) {
    HeaderHandler handler(limits);
    try {
        // strict: only JSON whitespace may follow the object.
        if (!Json::sax_parse(header.begin(), header.end(), &handler, Json::input_format_t::json,
                             /*strict=*/true, /*ignore_comments=*/false) ||
            !handler.complete()) {
            fail("header is not valid JSON");
        }
    } catch (const Json::exception& ex) {  // defensive: the handler reports errors itself
        fail("header is not valid JSON: " + describe_parse_error(ex));
    } catch (const std::bad_alloc&) {
        too_large("header needs more memory than is available to check it");
    }
    index.tensors = std::move(handler.tensors());
    index.metadata = std::move(handler.metadata());
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
        if (info.name == dtype) return info.bits;
    }
    return 0;
}

SafetensorsIndex check_safetensors(std::span<const std::byte> image, const CheckLimits& limits) {
    SafetensorsIndex index;
    const std::string_view header = locate_header(image, limits, index);
    check_header_bytes(header);
    parse_header(header, limits, index);
    check_unique_names(index.tensors);
    check_layout(index.tensors, static_cast<std::uint64_t>(image.size()) - index.data_offset);
    return index;
}

}  // namespace picklejail::ipc
