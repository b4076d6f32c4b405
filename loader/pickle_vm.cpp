#include "loader/pickle_vm.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "common/utf8.hpp"
#include "loader/byte_reader.hpp"
#include "loader/checked_math.hpp"
#include "loader/inert_objects.hpp"
#include "loader/pickle_opcodes.hpp"

namespace picklejail::loader {
namespace {

using namespace pickle_op;  // NOLINT(google-build-using-namespace): the opcode names

std::string hex_byte(std::uint8_t byte) {
    constexpr char kDigits[] = "0123456789abcdef";
    return std::string("0x") + kDigits[byte >> 4] + kDigits[byte & 0xF];
}

// A global's name as a message may show it: the bytes come straight from the
// file, so anything but printable ASCII is written as \xNN (no raw control
// characters, NULs or invalid UTF-8 reach a log or a JSON reply) and at most
// kMaxShownName bytes are shown, so the policy and offset stay in the message.
constexpr std::size_t kMaxShownName = 256;
std::string printable_name(std::string_view name) {
    constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (const char ch : name) {
        if (out.size() >= kMaxShownName) {
            out += "...";
            break;
        }
        const auto c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out.push_back(ch);
        } else {
            out += "\\x";
            out.push_back(kDigits[c >> 4]);
            out.push_back(kDigits[c & 0xF]);
        }
    }
    return out;
}

}  // namespace

bool is_valid_utf8(std::string_view text) noexcept {
    std::uint32_t codepoint = 0;
    for (std::size_t i = 0; i < text.size();) {
        const std::size_t len = utf8_sequence(text, i, codepoint);
        if (len == 0) return false;
        i += len;
    }
    return true;
}

PickleVm::PickleVm(std::span<const std::byte> pickle, CallContext& ctx, PersistentLoader persistent)
    : pickle_(pickle), ctx_(ctx), persistent_(std::move(persistent)), memo_(pickle) {}

void PickleVm::fail(ErrorCode code, const std::string& message) const {
    throw Error(code, message + " (pickle offset " + std::to_string(opcode_offset_) + ")");
}

void PickleVm::push(ValuePtr value) {
    if (stack_.size() >= ctx_.limits.max_stack_depth) {
        fail(ErrorCode::too_large, "pickle stack deeper than " +
                                       std::to_string(ctx_.limits.max_stack_depth) +
                                       " (limit max_stack_depth)");
    }
    stack_.push_back(std::move(value));
}

ValuePtr PickleVm::pop() {
    const std::size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) fail(ErrorCode::malformed, "stack underflow");
    ValuePtr value = std::move(stack_.back());
    stack_.pop_back();
    return value;
}

ValuePtr& PickleVm::top() {
    const std::size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) fail(ErrorCode::malformed, "stack underflow");
    return stack_.back();
}

void PickleVm::push_mark() {
    if (marks_.size() >= ctx_.limits.max_mark_depth) {
        fail(ErrorCode::too_large, "more than " + std::to_string(ctx_.limits.max_mark_depth) +
                                       " nested MARKs (limit max_mark_depth)");
    }
    marks_.push_back(stack_.size());
}

std::vector<ValuePtr> PickleVm::pop_mark() {
    if (marks_.empty()) fail(ErrorCode::malformed, "opcode needs a MARK but none is open");
    const std::size_t start = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + static_cast<long>(start)),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(start);
    return items;
}

std::uint64_t PickleVm::checked_length(std::uint64_t length, std::string_view what) const {
    if (length > ctx_.limits.max_string_bytes) {
        fail(ErrorCode::too_large, std::string(what) + " of " + std::to_string(length) +
                                       " bytes exceeds max_string_bytes (" +
                                       std::to_string(ctx_.limits.max_string_bytes) + ")");
    }
    return length;
}

void PickleVm::push_string(std::string_view utf8, std::string_view what) {
    if (!is_valid_utf8(utf8)) {
        fail(ErrorCode::malformed, std::string(what) +
                                       " is not valid UTF-8 (or holds a lone "
                                       "surrogate, which safetensors cannot carry)");
    }
    push(ctx_.arena.make(StringValue{std::string(utf8)}));
}

void PickleVm::push_bytes(std::span<const std::byte> bytes) {
    push(ctx_.arena.make(
        BytesValue{std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), false}));
}

ValuePtr PickleVm::run() {
    for (;;) {
        if (position_ >= pickle_.size()) fail(ErrorCode::malformed, "pickle ends without STOP");
        opcode_offset_ = position_;
        ctx_.offset = opcode_offset_;
        const auto opcode = std::to_integer<std::uint8_t>(pickle_[position_++]);
        const bool more = step(opcode);
        check_frame(opcode);
        if (!more) break;
        // Between opcodes nothing holds a container but the stack, the memo
        // and the objects they reach, so what the arena alone holds is garbage.
        if (ctx_.arena.sweep_due()) ctx_.arena.sweep();
    }
    info_.end_offset = position_;
    if (!marks_.empty()) fail(ErrorCode::malformed, "STOP with an unclosed MARK");
    if (stack_.size() != 1) {
        fail(ErrorCode::malformed, "STOP with " + std::to_string(stack_.size()) +
                                       " values on the stack (expected exactly 1)");
    }
    return stack_.back();
}

bool PickleVm::step(std::uint8_t opcode) {
    // Inside a FRAME an opcode's operands may not reach past the frame's end
    // (CPython refuses it too); reading them bounded by the frame refuses a
    // straddling opcode before it does anything, e.g. names a global.
    auto operands = pickle_.subspan(position_);
    const bool framed = frame_end_ != 0 && opcode_offset_ < frame_end_;
    if (framed) operands = operands.first(frame_end_ - position_);
    ByteReader in(operands, position_,
                  framed ? "its FRAME, which the opcode straddles" : "the pickle");
    const auto advance = [&] { position_ += in.position(); };
    const auto text_line = [&](std::string_view what) { return in.line(kMaxTextOperand, what); };
    ctx_.arena.count_object();

    switch (opcode) {
        case PROTO: {
            const auto version = in.u8("PROTO version");
            if (version > 5)
                fail(ErrorCode::unsupported, "pickle protocol " + std::to_string(version));
            info_.protocol = std::max<int>(info_.protocol, version);
            break;
        }
        case FRAME: {
            // Frames only group opcodes, but CPython refuses a new frame inside
            // one and any opcode straddling a frame's end; so do we, so no
            // scanner and loader ever disagree about where opcodes are.
            const auto length = in.le<8>("FRAME length");
            if (length > in.remaining()) fail(ErrorCode::malformed, "FRAME longer than the pickle");
            if (frame_end_ != 0 && opcode_offset_ < frame_end_) {
                fail(ErrorCode::malformed, "FRAME starts before the previous frame ends");
            }
            frame_end_ = position_ + in.position() + static_cast<std::size_t>(length);
            break;
        }
        case STOP:
            advance();
            return false;
        case MARK:
            push_mark();
            break;
        case POP:
            if (!marks_.empty() && stack_.size() == marks_.back()) {
                marks_.pop_back();  // CPython: POP on an empty mark frame drops the mark
            } else {
                (void)pop();
            }
            break;
        case POP_MARK:
            (void)pop_mark();
            break;
        case DUP:
            push(top());
            break;
        case NONE:
            push(shared_scalar(none_, NoneValue{}));
            break;
        case NEWTRUE:
            push(shared_scalar(true_, BoolValue{true}));
            break;
        case NEWFALSE:
            push(shared_scalar(false_, BoolValue{false}));
            break;
        case BININT: {
            const auto raw = static_cast<std::uint32_t>(in.le<4>("BININT"));
            push(make_int(static_cast<std::int32_t>(raw)));
            break;
        }
        case BININT1:
            push(make_int(static_cast<std::int64_t>(in.u8("BININT1"))));
            break;
        case BININT2:
            push(make_int(static_cast<std::int64_t>(in.le<2>("BININT2"))));
            break;
        case LONG1: {
            const auto length = in.u8("LONG1 length");
            op_long(in.take(length, "LONG1"));
            break;
        }
        case LONG4: {
            const auto length =
                static_cast<std::int32_t>(static_cast<std::uint32_t>(in.le<4>("LONG4 length")));
            if (length < 0) fail(ErrorCode::malformed, "negative LONG4 length");
            op_long(in.take(static_cast<std::uint64_t>(length), "LONG4"));
            break;
        }
        case BINFLOAT: {
            const auto raw = in.take(8, "BINFLOAT");
            std::uint64_t bits = 0;
            for (const auto b : raw) bits = (bits << 8) | std::to_integer<std::uint8_t>(b);  // BE
            double value = 0;
            std::memcpy(&value, &bits, sizeof value);
            push(ctx_.arena.make(FloatValue{value}));
            break;
        }
        case INT:
            op_text_int(text_line("INT"));
            break;
        case LONG:
            op_text_long(text_line("LONG"));
            break;
        case FLOAT:
            op_text_float(text_line("FLOAT"));
            break;
        case STRING:
            op_text_string(text_line("STRING"));
            break;
        case UNICODE:
            op_text_unicode(text_line("UNICODE"));
            break;
        case BINUNICODE: {
            const auto length = checked_length(in.le<4>("BINUNICODE length"), "string");
            push_string(in.chars(length, "BINUNICODE"), "BINUNICODE string");
            break;
        }
        case SHORT_BINUNICODE: {
            const auto length = in.u8("SHORT_BINUNICODE length");
            push_string(in.chars(length, "SHORT_BINUNICODE"), "SHORT_BINUNICODE string");
            break;
        }
        case BINUNICODE8: {
            const auto length = checked_length(in.le<8>("BINUNICODE8 length"), "string");
            push_string(in.chars(length, "BINUNICODE8"), "BINUNICODE8 string");
            break;
        }
        case SHORT_BINSTRING: {
            // Python 2 str: torch.load decodes it with encoding="utf-8".
            const auto length = in.u8("SHORT_BINSTRING length");
            push_string(in.chars(length, "SHORT_BINSTRING"), "Python 2 string");
            break;
        }
        case BINSTRING: {
            const auto length =
                static_cast<std::int32_t>(static_cast<std::uint32_t>(in.le<4>("BINSTRING length")));
            if (length < 0) fail(ErrorCode::malformed, "negative BINSTRING length");
            push_string(
                in.chars(checked_length(static_cast<std::uint64_t>(length), "string"), "BINSTRING"),
                "Python 2 string");
            break;
        }
        case SHORT_BINBYTES:
            push_bytes(in.take(in.u8("SHORT_BINBYTES length"), "SHORT_BINBYTES"));
            break;
        case BINBYTES:
            push_bytes(in.take(checked_length(in.le<4>("BINBYTES length"), "bytes"), "BINBYTES"));
            break;
        case BINBYTES8:
            push_bytes(in.take(checked_length(in.le<8>("BINBYTES8 length"), "bytes"), "BINBYTES8"));
            break;
        case BYTEARRAY8: {
            const auto raw =
                in.take(checked_length(in.le<8>("BYTEARRAY8 length"), "bytearray"), "BYTEARRAY8");
            push(ctx_.arena.make(BytesValue{
                std::string(reinterpret_cast<const char*>(raw.data()), raw.size()), true}));
            break;
        }
        case EMPTY_TUPLE:  // immutable, so shared as in Python (one per tensor's hooks)
            push(shared_scalar(empty_tuple_, TupleValue{}));
            break;
        case TUPLE:
            push(ctx_.arena.make(TupleValue{pop_mark()}));
            break;
        case TUPLE1: {
            auto a = pop();
            push(ctx_.arena.make(TupleValue{{std::move(a)}}));
            break;
        }
        case TUPLE2: {
            auto b = pop();
            auto a = pop();
            push(ctx_.arena.make(TupleValue{{std::move(a), std::move(b)}}));
            break;
        }
        case TUPLE3: {
            auto c = pop();
            auto b = pop();
            auto a = pop();
            push(ctx_.arena.make(TupleValue{{std::move(a), std::move(b), std::move(c)}}));
            break;
        }
        case EMPTY_LIST:
            push(ctx_.arena.make(ListValue{}));
            break;
        case LIST:
            push(ctx_.arena.make(ListValue{pop_mark()}));
            break;
        case APPEND: {
            auto item = pop();
            op_appends({std::move(item)});
            break;
        }
        case APPENDS:
            op_appends(pop_mark());
            break;
        case EMPTY_DICT:
            push(ctx_.arena.make(DictValue{}));
            break;
        case DICT: {
            auto items = pop_mark();
            push(ctx_.arena.make(DictValue{}));
            op_setitems(std::move(items));
            break;
        }
        case SETITEM: {
            auto value = pop();
            auto key = pop();
            op_setitems({std::move(key), std::move(value)});
            break;
        }
        case SETITEMS:
            op_setitems(pop_mark());
            break;
        case EMPTY_SET:
            push(ctx_.arena.make(SetValue{}));
            break;
        case ADDITEMS:
            op_additems(pop_mark());
            break;
        case FROZENSET:
            push(ctx_.arena.make(SetValue{pop_mark(), true}));
            break;
        case GLOBAL: {
            const auto module = text_line("GLOBAL module");
            const auto name = text_line("GLOBAL name");
            op_global(module, name);
            break;
        }
        case STACK_GLOBAL:
            op_stack_global();
            break;
        case INST: {
            const auto module = text_line("INST module");
            const auto name = text_line("INST name");
            op_inst(module, name);
            break;
        }
        case OBJ:
            op_obj();
            break;
        case REDUCE:
            op_reduce();
            break;
        case NEWOBJ:
            op_newobj(false);
            break;
        case NEWOBJ_EX:
            op_newobj(true);
            break;
        case BUILD:
            op_build();
            break;
        case BINPERSID:
            op_persistent(pop());
            break;
        case PERSID: {
            const auto pid = text_line("PERSID");
            push_string(pid, "PERSID id");
            op_persistent(pop());
            break;
        }
        case BINPUT:
            memo_put(in.u8("BINPUT index"));
            break;
        case LONG_BINPUT:
            memo_put(in.le<4>("LONG_BINPUT index"));
            break;
        case MEMOIZE:
            memo_put(memo_.size());  // Python: len(memo)
            break;
        case PUT: {
            const auto index = text_memo_index(text_line("PUT index"));
            if (!index) fail(ErrorCode::malformed, "bad PUT index");
            memo_put(*index);
            break;
        }
        case BINGET:
            memo_get(in.u8("BINGET index"));
            break;
        case LONG_BINGET:
            memo_get(in.le<4>("LONG_BINGET index"));
            break;
        case GET: {
            const auto index = text_memo_index(text_line("GET index"));
            if (!index) fail(ErrorCode::malformed, "bad GET index");
            memo_get(*index);
            break;
        }
        case EXT1:
        case EXT2:
        case EXT4:
            fail(ErrorCode::forbidden_global,
                 "extension-registry opcode " + hex_byte(opcode) +
                     " names a global indirectly through copyreg; refused");
        case NEXT_BUFFER:
        case READONLY_BUFFER:
            fail(ErrorCode::unsupported,
                 "out-of-band pickle buffers (opcode " + hex_byte(opcode) + ")");
        default:
            fail(ErrorCode::malformed, "unknown opcode " + hex_byte(opcode));
    }
    advance();
    return true;
}

void PickleVm::check_frame(std::uint8_t opcode) {
    if (frame_end_ == 0 || opcode == FRAME) return;
    if (opcode_offset_ < frame_end_ && position_ > frame_end_) {
        fail(ErrorCode::malformed,
             "opcode " + hex_byte(opcode) + " straddles the end of its FRAME");
    }
    if (position_ >= frame_end_) frame_end_ = 0;
}

void PickleVm::op_long(std::span<const std::byte> le_bytes) {
    if (le_bytes.size() > ctx_.limits.max_int_bytes) {
        fail(ErrorCode::too_large,
             "integer of " + std::to_string(le_bytes.size()) + " bytes exceeds max_int_bytes");
    }
    if (le_bytes.empty()) {
        push(ctx_.arena.make(IntValue{0}));
        return;
    }
    if (le_bytes.size() <= 8) {
        std::uint64_t raw = 0;
        for (std::size_t i = 0; i < le_bytes.size(); ++i) {
            raw |= std::uint64_t{std::to_integer<std::uint8_t>(le_bytes[i])} << (8 * i);
        }
        const unsigned bits = static_cast<unsigned>(le_bytes.size() * 8);
        if (bits < 64 && (raw >> (bits - 1)) & 1U) raw |= ~std::uint64_t{0} << bits;  // sign-extend
        push(ctx_.arena.make(IntValue{static_cast<std::int64_t>(raw)}));
        return;
    }
    BigIntValue big;
    big.le_bytes.reserve(le_bytes.size());
    for (const auto b : le_bytes) big.le_bytes.push_back(std::to_integer<std::uint8_t>(b));
    push(ctx_.arena.make(std::move(big)));
}

void PickleVm::op_text_int(std::string_view text) {
    // Protocol 0 writes True/False as "01"/"00".
    if (text == "01" || text == "00") {
        push(ctx_.arena.make(BoolValue{text == "01"}));
        return;
    }
    std::int64_t value = 0;
    const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || p != text.data() + text.size()) {
        fail(ErrorCode::unsupported, "INT operand is not a 64-bit integer");
    }
    push(ctx_.arena.make(IntValue{value}));
}

void PickleVm::op_text_long(std::string_view text) {
    if (!text.empty() && text.back() == 'L') text.remove_suffix(1);
    op_text_int(text);
}

void PickleVm::op_text_float(std::string_view text) {
    double value = 0;
    const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || p != text.data() + text.size()) {
        fail(ErrorCode::malformed, "FLOAT operand is not a number");
    }
    push(ctx_.arena.make(FloatValue{value}));
}

void PickleVm::op_text_string(std::string_view text) {
    // repr() of a Python 2 str: quoted, with backslash escapes.
    if (text.size() < 2 || text.front() != text.back() ||
        (text.front() != '\'' && text.front() != '"')) {
        fail(ErrorCode::malformed, "STRING operand is not quoted");
    }
    text = text.substr(1, text.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\\') {
            out.push_back(text[i]);
            continue;
        }
        if (++i >= text.size()) fail(ErrorCode::malformed, "STRING ends in a backslash");
        const char c = text[i];
        switch (c) {
            case 'n':
                out.push_back('\n');
                break;
            case 't':
                out.push_back('\t');
                break;
            case 'r':
                out.push_back('\r');
                break;
            case '\\':
                out.push_back('\\');
                break;
            case '\'':
                out.push_back('\'');
                break;
            case '"':
                out.push_back('"');
                break;
            case 'x': {
                if (i + 2 >= text.size()) fail(ErrorCode::malformed, "bad \\x escape");
                unsigned value = 0;
                const auto [p, ec] = std::from_chars(
                    text.data() + i + 1, text.data() + std::min(i + 3, text.size()), value, 16);
                if (ec != std::errc{} || p != text.data() + i + 3)
                    fail(ErrorCode::malformed, "bad \\x escape");
                out.push_back(static_cast<char>(value));
                i += 2;
                break;
            }
            default:
                fail(ErrorCode::unsupported, "unsupported escape in STRING operand");
        }
    }
    push_string(out, "Python 2 string");
}

void PickleVm::op_text_unicode(std::string_view text) {
    // raw-unicode-escape: bytes are Latin-1 code points, \uXXXX and \UXXXXXXXX escapes.
    std::string out;
    const auto append_cp = [&](std::uint32_t cp) {
        if (cp >= 0xD800 && cp <= 0xDFFF) fail(ErrorCode::malformed, "UNICODE lone surrogate");
        if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp <= 0x10FFFF) {
            out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
            fail(ErrorCode::malformed, "UNICODE code point out of range");
        }
    };
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c == '\\' && i + 1 < text.size() && (text[i + 1] == 'u' || text[i + 1] == 'U')) {
            const std::size_t digits = text[i + 1] == 'u' ? 4 : 8;
            if (i + 2 + digits > text.size())
                fail(ErrorCode::malformed, "truncated UNICODE escape");
            std::uint32_t cp = 0;
            const char* first = text.data() + i + 2;
            const auto [p, ec] = std::from_chars(first, first + digits, cp, 16);
            if (ec != std::errc{} || p != first + digits)
                fail(ErrorCode::malformed, "bad UNICODE escape");
            append_cp(cp);
            i += 1 + digits;
        } else {
            append_cp(c);
        }
    }
    push(ctx_.arena.make(StringValue{std::move(out)}));
}

void PickleVm::op_global(std::string_view module, std::string_view name) {
    const CanonicalGlobal canonical = canonical_global(module, name);
    const std::string full = canonical.full();
    // Messages name a renamed global as the file spells it, then as Python 3 resolves it.
    std::string shown = printable_name(full);
    if (module != canonical.module || name != canonical.name) {
        shown = printable_name(std::string(module) + "." + std::string(name)) + " (" + shown + ")";
    }
    if (std::find(info_.globals.begin(), info_.globals.end(), full) == info_.globals.end()) {
        info_.globals.push_back(full);
    }
    if (ctx_.policy.inert()) {
        // Any name may become data here, so it must be one a client can print.
        check_name_text(module, /*dots=*/true, "a global's module", ctx_);
        check_name_text(name, /*dots=*/true, "a global's name", ctx_);
        check_reference_name(full, canonical.module.size() + 1, ctx_, shown);
    }
    auto handler = ctx_.policy.resolve(module, name);
    if (!handler && ctx_.policy.inert()) handler = Handler::reference;
    if (!handler) {
        fail(ErrorCode::forbidden_global,
             "global " + shown + " is not allowed by policy \"" + ctx_.policy.name() + "\"");
    }
    if (*handler == Handler::dtype) {
        // torch.float32 and friends are values (the v3 dtype argument), not callables.
        const auto dtype = dtype_from_torch_name(canonical.name);
        if (!dtype)
            fail(ErrorCode::unsupported, "dtype " + full + " has no safetensors equivalent");
        push(ctx_.arena.make(DTypeValue{*dtype}));
        return;
    }
    push(ctx_.arena.make(GlobalValue{*handler, full}));
}

void PickleVm::op_stack_global() {
    const auto name = pop();
    const auto module = pop();
    const auto* name_str = name->as<StringValue>();
    const auto* module_str = module->as<StringValue>();
    if (name_str == nullptr || module_str == nullptr) {
        fail(ErrorCode::malformed, "STACK_GLOBAL operands must both be str");
    }
    op_global(module_str->utf8, name_str->utf8);
}

void PickleVm::op_inst(std::string_view module, std::string_view name) {
    auto args = pop_mark();
    op_global(module, name);
    auto cls = pop();
    // op_global pushes a value, not a GlobalValue, for dtype globals (torch.float32).
    const auto* global = cls->as<GlobalValue>();
    if (global == nullptr)
        fail(ErrorCode::malformed, "INST on a " + describe(*cls) + ", not a class");
    auto args_tuple = ctx_.arena.make(TupleValue{std::move(args)});
    push(call_global(*global, args_tuple, ctx_));
}

void PickleVm::op_obj() {
    auto items = pop_mark();
    if (items.empty()) fail(ErrorCode::malformed, "OBJ without a class");
    auto cls = items.front();
    const auto* global = cls->as<GlobalValue>();
    if (global == nullptr)
        fail(ErrorCode::malformed, "OBJ on a " + describe(*cls) + ", not a class");
    items.erase(items.begin());
    auto args_tuple = ctx_.arena.make(TupleValue{std::move(items)});
    push(call_global(*global, args_tuple, ctx_));
}

void PickleVm::op_reduce() {
    auto args = pop();
    auto callee = pop();
    const auto* global = callee->as<GlobalValue>();
    if (const auto* method = callee->as<MethodValue>()) {
        // Real files store bound methods (schedulers' anneal_func); only attacks call them.
        fail(ErrorCode::forbidden_global, "calling the bound method " + method->name + " of a " +
                                              describe(*method->self) + " is refused");
    }
    if (const auto* record = callee->as<RecordValue>()) {
        // An object kept as data (inert) is never callable: calling one is
        // __call__, code (functools.partial(os.system, ...)(), a modelscan bypass).
        fail(ErrorCode::forbidden_global,
             "calling a " + record->class_name + " object is refused (records are data)");
    }
    if (global == nullptr)
        fail(ErrorCode::malformed, "REDUCE on a " + describe(*callee) + ", not a global");
    if (!args->is<TupleValue>()) fail(ErrorCode::malformed, "REDUCE arguments are not a tuple");
    push(call_global(*global, args, ctx_));
}

void PickleVm::op_newobj(bool with_kwargs) {
    ValuePtr kwargs;
    if (with_kwargs) kwargs = pop();
    auto args = pop();
    auto cls = pop();
    const auto* global = cls->as<GlobalValue>();
    if (global == nullptr)
        fail(ErrorCode::malformed, "NEWOBJ on a " + describe(*cls) + ", not a class");
    if (!args->is<TupleValue>()) fail(ErrorCode::malformed, "NEWOBJ arguments are not a tuple");
    push(new_object(*global, args, kwargs, ctx_));
}

void PickleVm::op_build() {
    auto state = pop();
    auto& target = top();
    build(target, state, ctx_);
}

void PickleVm::op_persistent(const ValuePtr& pid) {
    if (!persistent_) {
        fail(ErrorCode::unsupported,
             "persistent id in a plain pickle (only torch.save containers supply storages)");
    }
    push(persistent_(pid, ctx_));
}

void PickleVm::op_setitems(std::vector<ValuePtr> items) {
    auto& target = top();
    auto* dict = target->as<DictValue>();
    if (auto* record = target->as<RecordValue>(); record != nullptr && dict == nullptr) {
        // A dict subclass (Lightning's AttributeDict) pickles its items after
        // itself: kept as the record's items, never assigned through a method.
        if (items.size() % 2 != 0)
            fail(ErrorCode::malformed, "SETITEMS with an odd number of items");
        for (std::size_t i = 0; i < items.size(); i += 2)
            record->dict_items.emplace_back(std::move(items[i]), std::move(items[i + 1]));
        return;
    }
    if (dict == nullptr) {
        // CVE-2026-24747: item assignment on anything but a dict is refused.
        fail(ErrorCode::malformed, "SETITEM(S) on a " + describe(*target) + ", not a dict");
    }
    if (items.size() % 2 != 0) fail(ErrorCode::malformed, "SETITEMS with an odd number of items");
    for (std::size_t i = 0; i < items.size(); i += 2) {
        dict->items.emplace_back(std::move(items[i]), std::move(items[i + 1]));
    }
}

void PickleVm::op_appends(std::vector<ValuePtr> items) {
    auto& target = top();
    auto* list = target->as<ListValue>();
    if (auto* record = target->as<RecordValue>(); record != nullptr && list == nullptr) {
        for (auto& item : items) record->list_items.push_back(std::move(item));  // a list subclass
        return;
    }
    if (list == nullptr)
        fail(ErrorCode::malformed, "APPEND(S) on a " + describe(*target) + ", not a list");
    for (auto& item : items) list->items.push_back(std::move(item));
}

void PickleVm::op_additems(std::vector<ValuePtr> items) {
    auto& target = top();
    auto* set = target->as<SetValue>();
    if (set == nullptr || set->frozen)
        fail(ErrorCode::malformed, "ADDITEMS on a " + describe(*target) + ", not a set");
    for (auto& item : items) set->items.push_back(std::move(item));
}

ValuePtr PickleVm::make_int(std::int64_t value) {
    if (value >= 0 && static_cast<std::uint64_t>(value) < small_ints_.size()) {
        return shared_scalar(small_ints_[static_cast<std::size_t>(value)], IntValue{value});
    }
    return ctx_.arena.make(IntValue{value});
}

void PickleVm::memo_put(std::uint64_t index) {
    if (index >= ctx_.limits.max_memo_index) fail(ErrorCode::too_large, "memo index too large");
    const ValuePtr& value = top();  // an empty stack is malformed even if nothing reads the slot
    // Only a new slot can pass the limit; rewriting one in use is fine.
    if (memo_.size() >= ctx_.limits.max_memo_entries && !memo_.contains(index)) {
        fail(ErrorCode::too_large, "more than " + std::to_string(ctx_.limits.max_memo_entries) +
                                       " memo entries (limit max_memo_entries)");
    }
    memo_.put(index, value);
}

void PickleVm::memo_get(std::uint64_t index) {
    ValuePtr value;
    switch (memo_.get(index, value)) {
        case PickleMemo::Lookup::found:
            push(std::move(value));
            return;
        case PickleMemo::Lookup::never_stored:
            fail(ErrorCode::malformed, "memo index " + std::to_string(index) + " was never stored");
        case PickleMemo::Lookup::not_kept:  // the scan and the run disagree: a VM bug
            fail(ErrorCode::internal, "memo index " + std::to_string(index) +
                                          " is read, but the memo scan found no read of it");
    }
}

}  // namespace picklejail::loader
