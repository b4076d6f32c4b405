#include "loader/memo_reads.hpp"

#include <string_view>

#include "common/error.hpp"
#include "loader/byte_reader.hpp"
#include "loader/pickle_opcodes.hpp"

namespace picklejail::loader {
namespace {

using namespace pickle_op;  // NOLINT(google-build-using-namespace): the opcode names

enum class Step : std::uint8_t { next, stop, lost };

std::uint64_t length_of(std::int64_t signed_length) {
    if (signed_length < 0) throw Error(ErrorCode::malformed, "negative length");
    return static_cast<std::uint64_t>(signed_length);
}

std::int32_t as_signed(std::uint64_t raw) {
    return static_cast<std::int32_t>(static_cast<std::uint32_t>(raw));
}

std::uint64_t text_index(std::string_view text) {
    const auto index = text_memo_index(text);
    if (!index) throw Error(ErrorCode::malformed, "bad GET index");
    return *index;
}

// Skips one opcode's operands as the VM reads them; a memo read is reported.
template <typename OnRead>
Step skip_operands(std::uint8_t opcode, ByteReader& in, const OnRead& on_read) {
    const auto line = [&in] { (void)in.line(kMaxTextOperand, "operand"); };
    switch (opcode) {
        case STOP:
            return Step::stop;
        case BINGET:
            on_read(in.u8("BINGET"));
            return Step::next;
        case LONG_BINGET:
            on_read(in.le<4>("LONG_BINGET"));
            return Step::next;
        case GET:
            on_read(text_index(in.line(kMaxTextOperand, "GET")));
            return Step::next;
        case PROTO:
        case BININT1:
        case BINPUT:
            (void)in.take(1, "operand");
            return Step::next;
        case BININT2:
            (void)in.take(2, "operand");
            return Step::next;
        case BININT:
        case LONG_BINPUT:
            (void)in.take(4, "operand");
            return Step::next;
        case BINFLOAT:
        case FRAME:  // a frame's opcodes follow as usual
            (void)in.take(8, "operand");
            return Step::next;
        case LONG1:
        case SHORT_BINSTRING:
        case SHORT_BINUNICODE:
        case SHORT_BINBYTES:
            (void)in.take(in.u8("length"), "operand");
            return Step::next;
        case LONG4:
        case BINSTRING:
            (void)in.take(length_of(as_signed(in.le<4>("length"))), "operand");
            return Step::next;
        case BINUNICODE:
        case BINBYTES:
            (void)in.take(in.le<4>("length"), "operand");
            return Step::next;
        case BINUNICODE8:
        case BINBYTES8:
        case BYTEARRAY8:
            (void)in.take(in.le<8>("length"), "operand");
            return Step::next;
        case INT:
        case LONG:
        case FLOAT:
        case STRING:
        case UNICODE:
        case PERSID:
        case PUT:
            line();
            return Step::next;
        case GLOBAL:
        case INST:
            line();
            line();
            return Step::next;
        case MARK:
        case POP:
        case POP_MARK:
        case DUP:
        case NONE:
        case NEWTRUE:
        case NEWFALSE:
        case EMPTY_TUPLE:
        case TUPLE:
        case TUPLE1:
        case TUPLE2:
        case TUPLE3:
        case EMPTY_LIST:
        case LIST:
        case APPEND:
        case APPENDS:
        case EMPTY_DICT:
        case DICT:
        case SETITEM:
        case SETITEMS:
        case EMPTY_SET:
        case ADDITEMS:
        case FROZENSET:
        case STACK_GLOBAL:
        case OBJ:
        case REDUCE:
        case NEWOBJ:
        case NEWOBJ_EX:
        case BUILD:
        case BINPERSID:
        case MEMOIZE:
            return Step::next;
        default:  // EXT*, out-of-band buffers, unknown: the VM refuses them
            return Step::lost;
    }
}

}  // namespace

MemoReads MemoReads::scan(std::span<const std::byte> pickle) {
    MemoReads reads;
    ByteReader in(pickle, 0, "the pickle");
    try {
        for (;;) {
            if (in.at_end()) {
                reads.all_ = true;
                break;
            }
            const auto step = skip_operands(
                in.u8("opcode"), in, [&reads](std::uint64_t index) { reads.read_.insert(index); });
            if (step == Step::stop) break;
            if (step == Step::lost) {
                reads.all_ = true;
                break;
            }
        }
    } catch (const Error&) {
        reads.all_ = true;
    }
    return reads;
}

bool MemoReads::may_read(std::uint64_t index) const noexcept {
    return all_ || read_.contains(index);
}

}  // namespace picklejail::loader
