// The restricted pickle machine, opcode by opcode: hand-assembled pickles run
// through PickleVm directly (values checked through a small Python-like
// repr) or through Conversion::plan for whole-pipeline cases, plus every
// refusal and limit the VM enforces (pytorch-formats.md sections 6 and 11).
#include <catch2/catch.hpp>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/checkpoint_loader.hpp"
#include "loader/global_calls.hpp"
#include "loader/limits.hpp"
#include "loader/object_arena.hpp"
#include "loader/pickle_vm.hpp"
#include "loader/policy.hpp"
#include "loader/storage_table.hpp"
#include "sandbox/policy_files.hpp"
#include "test_support.hpp"

namespace {

using picklejail::Error;
using picklejail::ErrorCode;
using namespace picklejail::loader;
using picklejail::test::le;
using picklejail::test::op;
using picklejail::test::policy_named;

const Policy& weights() {
    return policy_named("weights");
}

// ---- pickle assembly ------------------------------------------------------

std::string proto(unsigned version) {
    return op(0x80) + op(version);
}
std::string k(unsigned value) {
    return "K" + op(value);
}  // BININT1
std::string short_binunicode(std::string_view s) {
    return op(0x8c) + op(static_cast<unsigned>(s.size())) + std::string(s);
}
std::string binunicode(std::string_view s) {
    return "X" + le(s.size(), 4) + std::string(s);
}
std::string global(std::string_view module, std::string_view name) {
    return "c" + std::string(module) + "\n" + std::string(name) + "\n";
}
std::string binput(unsigned index) {
    return "q" + op(index);
}
std::string binget(unsigned index) {
    return "h" + op(index);
}

std::span<const std::byte> bytes_of(const std::string& text) {
    return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

// ---- running --------------------------------------------------------------

// Everything a PickleVm needs; values stay valid while this lives (the arena
// empties every container when it dies).
struct Machine {
    explicit Machine(Limits l = {}, const Policy& policy = weights())
        : limits(l), storages(limits), arena(limits), ctx{policy, limits, storages, arena} {}
    ValuePtr run(const std::string& pickle, PersistentLoader persistent = nullptr) {
        PickleVm vm(bytes_of(pickle), ctx, std::move(persistent));
        ValuePtr value = vm.run();
        info = vm.info();
        return value;
    }
    Limits limits;
    StorageTable storages;
    ObjectArena arena;
    CallContext ctx;
    PickleInfo info;
};

struct Outcome {
    std::string code = "ok";  // the ErrorCode's name, so Catch prints it
    std::string message;
};

template <typename F>
Outcome outcome_of(F&& body) {
    try {
        body();
    } catch (const Error& e) {
        return {std::string(picklejail::to_string(e.code())), e.what()};
    }
    return {};
}

Outcome vm_outcome(const std::string& pickle, Limits limits = {},
                   const Policy& policy = weights()) {
    return outcome_of([&] {
        Machine machine(limits, policy);
        (void)machine.run(pickle);
    });
}

Outcome plan_outcome(const std::string& pickle, Limits limits = {}) {
    return outcome_of([&] { (void)Conversion::plan(bytes_of(pickle), weights(), limits); });
}

// A Python-like rendering of a value, so expectations read as Python would print them.
std::string repr(const ValuePtr& value, int depth = 0);

std::string join(const std::vector<ValuePtr>& items, int depth) {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i != 0) out += ", ";
        out += repr(items[i], depth + 1);
    }
    return out;
}

std::string repr(const ValuePtr& value, int depth) {
    if (!value) return "<null>";
    if (depth > 40) return "...";
    const Value& v = *value;
    if (v.is<NoneValue>()) return "None";
    if (const auto* b = v.as<BoolValue>()) return b->value ? "True" : "False";
    if (const auto* i = v.as<IntValue>()) return std::to_string(i->value);
    if (const auto* big = v.as<BigIntValue>()) {
        std::string out = "bigint(le:";
        static constexpr char kHex[] = "0123456789abcdef";
        for (const auto byte : big->le_bytes) {
            out += kHex[byte >> 4];
            out += kHex[byte & 15];
        }
        return out + ")";
    }
    if (const auto* f = v.as<FloatValue>()) {
        char buffer[64];
        const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, f->value);
        REQUIRE(ec == std::errc{});
        return std::string(buffer, end);
    }
    if (const auto* s = v.as<StringValue>()) return "'" + s->utf8 + "'";
    if (const auto* b = v.as<BytesValue>()) {
        std::string out = b->bytearray ? "bytearray(b'" : "b'";
        static constexpr char kHex[] = "0123456789abcdef";
        for (const char c : b->bytes) {
            const auto u = static_cast<unsigned char>(c);
            if (u >= 0x20 && u < 0x7f && u != '\'' && u != '\\') {
                out += c;
            } else {
                out += "\\x";
                out += kHex[u >> 4];
                out += kHex[u & 15];
            }
        }
        return out + (b->bytearray ? "')" : "'");
    }
    if (const auto* l = v.as<ListValue>()) return "[" + join(l->items, depth) + "]";
    if (const auto* t = v.as<TupleValue>())
        return "(" + join(t->items, depth) + (t->items.size() == 1 ? ",)" : ")");
    if (const auto* s = v.as<SetValue>())
        return std::string(s->frozen ? "frozenset{" : "set{") + join(s->items, depth) + "}";
    if (const auto* d = v.as<DictValue>()) {
        std::string out = d->kind == DictValue::Kind::ordered_dict ? "odict{" : "{";
        for (std::size_t i = 0; i < d->items.size(); ++i) {
            if (i != 0) out += ", ";
            out += repr(d->items[i].first, depth + 1) + ": " + repr(d->items[i].second, depth + 1);
        }
        out += "}";
        if (d->attributes) out += "+attrs" + repr(d->attributes, depth + 1);
        return out;
    }
    if (const auto* g = v.as<GlobalValue>()) return "global:" + g->name;
    if (const auto* d = v.as<DTypeValue>())
        return "dtype:" + std::string(info(d->dtype).torch_name);
    if (const auto* r = v.as<RecordValue>()) return "record:" + r->class_name;
    return describe(v);
}

std::string run_repr(const std::string& pickle, Limits limits = {}) {
    Machine machine(limits);
    return repr(machine.run(pickle));
}

bool contains(const std::string& haystack, std::string_view needle) {
    return haystack.find(needle) != std::string::npos;
}

}  // namespace

// ===========================================================================
// Protocol 0: text opcodes
// ===========================================================================

TEST_CASE("pickle_vm: protocol 0 INT, including the 01/00 booleans") {
    CHECK(run_repr("I42\n.") == "42");
    CHECK(run_repr("I-7\n.") == "-7");
    CHECK(run_repr("I0\n.") == "0");
    CHECK(run_repr("I1\n.") == "1");       // plain 1 stays an int
    CHECK(run_repr("I01\n.") == "True");   // Python 2 True
    CHECK(run_repr("I00\n.") == "False");  // Python 2 False
    CHECK(run_repr("I9223372036854775807\n.") == "9223372036854775807");
    CHECK(run_repr("I-9223372036854775808\n.") == "-9223372036854775808");
    CHECK(vm_outcome("I9223372036854775808\n.").code == "unsupported");  // beyond 64 bits
    CHECK(vm_outcome("Iabc\n.").code == "unsupported");
    CHECK(vm_outcome("I12").code == "malformed");  // no newline
}

TEST_CASE("pickle_vm: protocol 0 LONG with and without the L suffix") {
    CHECK(run_repr("L12345678901234L\n.") == "12345678901234");
    CHECK(run_repr("L-5\n.") == "-5");
    CHECK(run_repr("L0L\n.") == "0");
}

TEST_CASE("pickle_vm: protocol 0 FLOAT") {
    CHECK(run_repr("F1.5\n.") == "1.5");
    CHECK(run_repr("F-2.25e3\n.") == "-2250");
    CHECK(run_repr("F0.1\n.") == "0.1");
    CHECK(vm_outcome("Fone\n.").code == "malformed");
    CHECK(vm_outcome("F1.5x\n.").code == "malformed");
}

TEST_CASE("pickle_vm: protocol 0 STRING with escapes") {
    Machine machine;
    const auto value = machine.run("S'a\\nb\\tc\\rd\\\\e\\'f\\\"g\\x41'\n.");
    REQUIRE(value->is<StringValue>());
    CHECK(value->as<StringValue>()->utf8 == "a\nb\tc\rd\\e'f\"gA");
    CHECK(run_repr("S\"double\"\n.") == "'double'");
    CHECK(run_repr("S''\n.") == "''");
    CHECK(run_repr("S'\\xc3\\xa9'\n.") == "'\xc3\xa9'");   // UTF-8 bytes of "é"
    CHECK(vm_outcome("S'\\xe9'\n.").code == "malformed");  // a lone Latin-1 byte is not UTF-8
    CHECK(vm_outcome("Sunquoted\n.").code == "malformed");
    CHECK(vm_outcome("S'mismatched\"\n.").code == "malformed");
    CHECK(vm_outcome("S'\n.").code == "malformed");         // one quote only
    CHECK(vm_outcome("S'ends\\'\n.").code == "malformed");  // \' eats the closing quote
    CHECK(vm_outcome("S'bad\\xZZ'\n.").code == "malformed");
    CHECK(vm_outcome("S'bad\\x4'\n.").code == "malformed");
    CHECK(vm_outcome("S'oct\\101'\n.").code == "unsupported");
}

TEST_CASE("pickle_vm: protocol 0 UNICODE is raw-unicode-escape") {
    Machine machine;
    // Latin-1 byte 0xE9, \u20ac, \U0001F600 and a literal backslash not followed by u/U.
    const auto value = machine.run("Vcaf\xe9 \\u20ac \\U0001F600 a\\b\n.");
    REQUIRE(value->is<StringValue>());
    CHECK(value->as<StringValue>()->utf8 == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 a\\b");
    CHECK(run_repr("V\n.") == "''");
    CHECK(vm_outcome("V\\ud800\n.").code == "malformed");      // lone surrogate
    CHECK(vm_outcome("V\\U00110000\n.").code == "malformed");  // past U+10FFFF
    CHECK(vm_outcome("V\\u12\n.").code == "malformed");        // truncated escape
    CHECK(vm_outcome("V\\uzzzz\n.").code == "malformed");
}

TEST_CASE("pickle_vm: protocol 0 PUT/GET, DICT, LIST, TUPLE") {
    // pickle.dumps({'a': [1, 2.5, u'x', True]}, 0) as Python 2 writes it.
    CHECK(run_repr("(dp0\nS'a'\np1\n(lp2\nI1\naF2.5\naVx\np3\naI01\nas.") ==
          "{'a': [1, 2.5, 'x', True]}");
    CHECK(run_repr("I7\np0\n0g0\n.") == "7");
    CHECK(run_repr("(I1\nI2\nl.") == "[1, 2]");
    CHECK(run_repr("(l.") == "[]");
    CHECK(run_repr("(I1\nI2\nt.") == "(1, 2)");
    CHECK(run_repr("(t.") == "()");
    CHECK(run_repr("(S'a'\nI1\nS'b'\nI2\nd.") == "{'a': 1, 'b': 2}");
    CHECK(run_repr("(d.") == "{}");
    // A memo entry is a reference, not a copy: both tuple slots are one list.
    Machine machine;
    const auto pair = machine.run("(lp0\ng0\n\x86.");
    REQUIRE(pair->is<TupleValue>());
    CHECK(pair->as<TupleValue>()->items[0].get() == pair->as<TupleValue>()->items[1].get());
    CHECK(vm_outcome("I1\npx\n.").code == "malformed");
    CHECK(vm_outcome("I1\np-1\n.").code == "malformed");
    CHECK(vm_outcome("g5\n.").code == "malformed");
    CHECK(vm_outcome("g\n.").code == "malformed");
    CHECK(vm_outcome("(I1\nI2\nI3\nd.").code == "malformed");  // odd DICT
}

// ===========================================================================
// Protocol 2: binary opcodes
// ===========================================================================

TEST_CASE("pickle_vm: PROTO and STOP") {
    Machine machine;
    CHECK(repr(machine.run(proto(2) + k(1) + ".")) == "1");
    CHECK(machine.info.protocol == 2);
    CHECK(machine.info.end_offset == 5);
    CHECK(run_repr(proto(5) + "N.") == "None");
    CHECK(vm_outcome(proto(6) + "N.").code == "unsupported");
    CHECK(vm_outcome(op(0x80)).code == "malformed");
    Machine none;
    (void)none.run("N.");
    CHECK(none.info.protocol == 0);
}

TEST_CASE("pickle_vm: BININT, BININT1, BININT2") {
    CHECK(run_repr("J" + le(0x12345678, 4) + ".") == "305419896");
    CHECK(run_repr("J" + le(0xFFFFFFFE, 4) + ".") == "-2");  // signed 32-bit
    CHECK(run_repr("J" + le(0x7FFFFFFF, 4) + ".") == "2147483647");
    CHECK(run_repr("J" + le(0x80000000, 4) + ".") == "-2147483648");
    CHECK(run_repr(k(0) + ".") == "0");
    CHECK(run_repr(k(255) + ".") == "255");                 // unsigned
    CHECK(run_repr("M" + le(0xFFFF, 2) + ".") == "65535");  // unsigned
    CHECK(run_repr("M" + le(0x0102, 2) + ".") == "258");
}

TEST_CASE("pickle_vm: LONG1 sign-extends and keeps wide integers exact") {
    const auto long1 = [](const std::string& le_bytes) {
        return op(0x8a) + op(static_cast<unsigned>(le_bytes.size())) + le_bytes + ".";
    };
    CHECK(run_repr(long1("")) == "0");
    CHECK(run_repr(long1("\x7f")) == "127");
    CHECK(run_repr(long1("\xff")) == "-1");
    CHECK(run_repr(long1("\x80")) == "-128");
    CHECK(run_repr(long1(std::string("\x00\x80", 2))) == "-32768");
    CHECK(run_repr(long1(std::string("\xff\x00", 2))) == "255");
    CHECK(run_repr(long1("\xff\xff\xff\xff\xff\xff\xff\x7f")) == "9223372036854775807");
    CHECK(run_repr(long1(std::string("\x00\x00\x00\x00\x00\x00\x00\x80", 8))) ==
          "-9223372036854775808");
    // The legacy magic number 0x1950a86a20f9469cfc6c: 10 bytes, kept verbatim.
    CHECK(run_repr(long1("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")) ==
          "bigint(le:6cfc9c46f9206aa85019)");
    // 2**64 - 1 needs 9 bytes and must not collapse to -1.
    CHECK(run_repr(long1(std::string("\xff\xff\xff\xff\xff\xff\xff\xff\x00", 9))) ==
          "bigint(le:ffffffffffffffff00)");
    // A negative 10-byte value keeps its sign byte.
    CHECK(run_repr(long1(std::string("\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80", 10))) ==
          "bigint(le:00000000000000000080)");
}

TEST_CASE("pickle_vm: LONG4") {
    CHECK(run_repr(op(0x8b) + le(2, 4) + std::string("\x00\x01", 2) + ".") == "256");
    CHECK(run_repr(op(0x8b) + le(0, 4) + ".") == "0");
    CHECK(run_repr(op(0x8b) + le(1, 4) + "\xfe.") == "-2");
    CHECK(vm_outcome(op(0x8b) + le(0xFFFFFFFF, 4) + ".").code == "malformed");  // negative length
    CHECK(vm_outcome(op(0x8b) + le(0x7FFFFFFF, 4) + "\x01.").code == "malformed");  // past the end
}

TEST_CASE("pickle_vm: BINFLOAT is big-endian") {
    CHECK(run_repr("G" + std::string("\x3f\xf8\x00\x00\x00\x00\x00\x00", 8) + ".") == "1.5");
    CHECK(run_repr("G" + std::string("\xc0\x00\x00\x00\x00\x00\x00\x00", 8) + ".") == "-2");
    CHECK(run_repr("G" + std::string("\x3f\xb9\x99\x99\x99\x99\x99\x9a", 8) + ".") == "0.1");
    CHECK(vm_outcome("G" + std::string("\x3f\xf8\x00", 3)).code == "malformed");
}

TEST_CASE("pickle_vm: BINUNICODE, SHORT_BINSTRING, BINSTRING") {
    CHECK(run_repr(binunicode("abc") + ".") == "'abc'");
    CHECK(run_repr(binunicode("") + ".") == "''");
    CHECK(run_repr(binunicode("\xe2\x82\xac") + ".") == "'\xe2\x82\xac'");
    CHECK(run_repr("U" + op(3) + "abc.") == "'abc'");
    CHECK(run_repr("U" + op(0) + ".") == "''");
    CHECK(run_repr("T" + le(3, 4) + "xyz.") == "'xyz'");
    CHECK(vm_outcome("T" + le(0xFFFFFFFF, 4) + "xyz.").code == "malformed");  // negative length
    CHECK(vm_outcome("U" + op(1) + "\xff.").code == "malformed");             // not UTF-8
}

TEST_CASE("pickle_vm: BINPUT, LONG_BINPUT, BINGET, LONG_BINGET share references") {
    Machine machine;
    const auto pair = machine.run(proto(2) + "]" + binput(5) + binget(5) + op(0x86) + ".");
    REQUIRE(pair->is<TupleValue>());
    const auto& items = pair->as<TupleValue>()->items;
    CHECK(items[0]->is<ListValue>());
    CHECK(items[0].get() == items[1].get());
    // Sparse u32 indices; BINPUT overwrites.
    CHECK(run_repr(proto(2) + k(7) + "r" + le(0xFFFFFFFF, 4) + "0" + "j" + le(0xFFFFFFFF, 4) +
                   ".") == "7");
    CHECK(run_repr(proto(2) + k(1) + binput(0) + "0" + k(2) + binput(0) + "0" + binget(0) + ".") ==
          "2");
    // LONG_BINPUT and BINGET meet at the same index.
    CHECK(run_repr(proto(2) + k(9) + "r" + le(3, 4) + "0" + binget(3) + ".") == "9");
}

TEST_CASE("pickle_vm: EMPTY_TUPLE/LIST/DICT and TUPLE1-3") {
    CHECK(run_repr(").") == "()");
    CHECK(run_repr("].") == "[]");
    CHECK(run_repr("}.") == "{}");
    CHECK(run_repr(k(1) + op(0x85) + ".") == "(1,)");
    CHECK(run_repr(k(1) + k(2) + op(0x86) + ".") == "(1, 2)");
    CHECK(run_repr(k(1) + k(2) + k(3) + op(0x87) + ".") == "(1, 2, 3)");
    CHECK(run_repr("(" + k(1) + k(2) + k(3) + k(4) + "t.") == "(1, 2, 3, 4)");
}

TEST_CASE("pickle_vm: APPEND, APPENDS, SETITEM, SETITEMS") {
    CHECK(run_repr("]" + k(1) + "a(" + k(2) + k(3) + "e.") == "[1, 2, 3]");
    CHECK(run_repr("](e.") == "[]");
    CHECK(run_repr("}" + binunicode("a") + k(1) + "s(" + binunicode("b") + k(2) + binunicode("c") +
                   k(3) + "u.") == "{'a': 1, 'b': 2, 'c': 3}");
    CHECK(run_repr("}(u.") == "{}");
    // Insertion order is kept; a repeated key is kept twice for the flattener to judge.
    CHECK(run_repr("}(" + k(2) + k(0) + k(1) + k(0) + "u.") == "{2: 0, 1: 0}");
}

TEST_CASE("pickle_vm: NEWTRUE, NEWFALSE, NONE") {
    CHECK(run_repr(op(0x88) + ".") == "True");
    CHECK(run_repr(op(0x89) + ".") == "False");
    CHECK(run_repr("N.") == "None");
}

TEST_CASE("pickle_vm: POP, POP_MARK, DUP, MARK") {
    CHECK(run_repr(k(1) + k(2) + "0.") == "1");
    CHECK(run_repr(k(1) + "(" + k(2) + k(3) + "1.") == "1");
    CHECK(run_repr(k(1) + "(1.") == "1");
    CHECK(run_repr(k(5) + "2" + op(0x86) + ".") == "(5, 5)");
    // CPython: POP on an empty mark frame drops the mark.
    CHECK(run_repr(k(1) + "(0.") == "1");
    CHECK(run_repr("((" + k(1) + "t" + k(2) + "t.") == "((1,), 2)");
}

// ===========================================================================
// Protocols 3-5
// ===========================================================================

TEST_CASE("pickle_vm: BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8") {
    CHECK(run_repr("B" + le(3, 4) + std::string("\x00\x01\xff", 3) + ".") == "b'\\x00\\x01\\xff'");
    CHECK(run_repr("C" + op(2) + "ab.") == "b'ab'");
    CHECK(run_repr("C" + op(0) + ".") == "b''");
    CHECK(run_repr(op(0x8e) + le(4, 8) + "wxyz.") == "b'wxyz'");
    CHECK(run_repr(op(0x96) + le(2, 8) + "hi.") == "bytearray(b'hi')");
    CHECK(run_repr(op(0x96) + le(0, 8) + ".") == "bytearray(b'')");
    // Bytes are not text: invalid UTF-8 is fine.
    CHECK(run_repr("C" + op(1) + "\xff.") == "b'\\xff'");
}

TEST_CASE("pickle_vm: SHORT_BINUNICODE and BINUNICODE8") {
    CHECK(run_repr(short_binunicode("hello") + ".") == "'hello'");
    CHECK(run_repr(op(0x8d) + le(3, 8) + "abc.") == "'abc'");
    CHECK(vm_outcome(op(0x8c) + op(5) + "abc").code == "malformed");
}

TEST_CASE("pickle_vm: EMPTY_SET, ADDITEMS, FROZENSET") {
    CHECK(run_repr(op(0x8f) + "(" + k(1) + k(2) + op(0x90) + ".") == "set{1, 2}");
    CHECK(run_repr(op(0x8f) + ".") == "set{}");
    CHECK(run_repr("(" + k(1) + k(2) + op(0x91) + ".") == "frozenset{1, 2}");
    CHECK(run_repr("(" + op(0x91) + ".") == "frozenset{}");
    // ADDITEMS only on a (mutable) set.
    CHECK(vm_outcome("((" + op(0x91) + "(" + k(1) + op(0x90) + ".").code == "malformed");
    CHECK(vm_outcome("](" + k(1) + op(0x90) + ".").code == "malformed");
    CHECK(vm_outcome("}(" + k(1) + op(0x90) + ".").code == "malformed");
}

TEST_CASE("pickle_vm: MEMOIZE numbers entries by memo size") {
    Machine machine;
    const auto pair = machine.run(proto(4) + "]" + op(0x94) + binget(0) + op(0x86) + ".");
    REQUIRE(pair->is<TupleValue>());
    CHECK(pair->as<TupleValue>()->items[0].get() == pair->as<TupleValue>()->items[1].get());
    CHECK(run_repr(proto(4) + k(1) + op(0x94) + k(2) + op(0x94) + "00" + binget(1) + ".") == "2");
    CHECK(vm_outcome(proto(4) + op(0x94) + "N.").code == "malformed");  // nothing to memoize
}

TEST_CASE("pickle_vm: FRAME groups opcodes and may not be straddled or nested") {
    // pickle.dumps([1, 2], protocol=4)
    const std::string body = std::string("]") + op(0x94) + "(" + k(1) + k(2) + "e.";
    REQUIRE(body.size() == 9);
    const std::string framed = proto(4) + op(0x95) + le(body.size(), 8) + body;
    CHECK(run_repr(framed) == "[1, 2]");
    // Two frames back to back, and an opcode right after a frame's end.
    CHECK(run_repr(proto(4) + op(0x95) + le(2, 8) + k(1) + op(0x95) + le(2, 8) + op(0x85) + ".") ==
          "(1,)");
    CHECK(run_repr(proto(4) + op(0x95) + le(2, 8) + k(1) + ".") == "1");
    // A frame that ends inside BININT1's operand.
    const auto straddle = vm_outcome(proto(4) + op(0x95) + le(4, 8) + body);
    CHECK(straddle.code == "malformed");
    CHECK(contains(straddle.message, "straddles"));
    // A GLOBAL whose name runs past its frame is refused as framing, not looked up.
    const auto global = vm_outcome(proto(4) + op(0x95) + le(5, 8) + "cos\nsystem\nN.");
    CHECK(global.code == "malformed");
    CHECK(contains(global.message, "straddles"));
    // A frame inside a frame.
    const std::string inner = op(0x95) + le(3, 8) + k(1) + ".";
    const auto nested = vm_outcome(proto(4) + op(0x95) + le(inner.size(), 8) + inner);
    CHECK(nested.code == "malformed");
    CHECK(vm_outcome(proto(4) + op(0x95) + le(100, 8) + body).code == "malformed");  // too long
    CHECK(vm_outcome(proto(4) + op(0x95) + le(~std::uint64_t{0}, 8) + body).code == "malformed");
}

TEST_CASE(
    "pickle_vm: GLOBAL, STACK_GLOBAL, REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ, BUILD on allowed "
    "globals") {
    Machine machine;
    CHECK(repr(machine.run(proto(2) + global("collections", "OrderedDict") + ")R.")) == "odict{}");
    CHECK(machine.info.globals == std::vector<std::string>{"collections.OrderedDict"});
    CHECK(run_repr(proto(4) + short_binunicode("collections") + short_binunicode("OrderedDict") +
                   op(0x93) + ")R.") == "odict{}");
    CHECK(run_repr(proto(2) + global("collections", "OrderedDict") + ")" + op(0x81) + ".") ==
          "odict{}");
    CHECK(run_repr(proto(4) + global("collections", "OrderedDict") + ")}" + op(0x92) + ".") ==
          "odict{}");
    CHECK(run_repr("(icollections\nOrderedDict\n.") == "odict{}");
    CHECK(run_repr("(ccollections\nOrderedDict\no.") == "odict{}");
    // state_dict(): OrderedDict, SETITEMS, then BUILD with its __dict__.
    CHECK(run_repr(proto(2) + global("collections", "OrderedDict") + ")R(" + binunicode("w") +
                   k(1) + "u}" + binunicode("_metadata") + "}sb.") ==
          "odict{'w': 1}+attrs{'_metadata': {}}");
    // A dtype global is a value, not a callable.
    CHECK(run_repr(global("torch", "float32") + ".") == "dtype:float32");
    CHECK(run_repr(global("torch", "Size") + "(" + k(2) + k(3) + "t" + op(0x85) + "R.") ==
          "(2, 3)");
}

TEST_CASE("pickle_vm: misuse of allowed globals is refused") {
    // NEWOBJ_EX with keyword arguments.
    CHECK(vm_outcome(proto(4) + global("collections", "OrderedDict") + ")}" + k(1) + k(2) + "s" +
                     op(0x92) + ".")
              .code == "unsupported");
    // REDUCE on a value that is not a global, or with non-tuple arguments.
    CHECK(vm_outcome(k(1) + ")R.").code == "malformed");
    CHECK(vm_outcome(global("collections", "OrderedDict") + "]R.").code == "malformed");
    CHECK(vm_outcome(global("torch", "float32") + ")R.").code == "malformed");
    // Allowed names whose handlers are not callable.
    const auto tensor_class = vm_outcome(global("torch", "Tensor") + ")R.");
    CHECK(tensor_class.code == "forbidden_global");
    CHECK(contains(tensor_class.message, "torch.Tensor"));
    CHECK(vm_outcome(global("torch", "Size") + ")" + op(0x81) + ".").code == "forbidden_global");
    // BUILD only on dicts, records and tensors.
    CHECK(vm_outcome("]}b.").code == "forbidden_global");
    CHECK(vm_outcome("(" + k(1) + "o.").code == "malformed");  // OBJ on an int
    CHECK(vm_outcome("(o.").code == "malformed");              // OBJ, no class
    // STACK_GLOBAL operands must be str.
    CHECK(vm_outcome(proto(4) + k(1) + k(2) + op(0x93) + ".").code == "malformed");
    CHECK(vm_outcome(proto(4) + "C" + op(2) + "os" + short_binunicode("system") + op(0x93) + ".")
              .code == "malformed");
}

TEST_CASE("pickle_vm: INST and OBJ on an allowed global that is a value, not a class") {
    // torch.float32 resolves to a dtype value; calling it must be refused, not dereferenced.
    const auto inst = vm_outcome("(itorch\nfloat32\n.");
    CHECK(inst.code == "malformed");
    CHECK(contains(inst.message, "pickle offset 1)"));
    CHECK(vm_outcome(proto(2) + "(" + k(1) + "itorch\nbfloat16\n.").code == "malformed");
    CHECK(vm_outcome("(ctorch\nfloat32\no.").code == "malformed");
}

TEST_CASE("pickle_vm: PERSID and BINPERSID go through the persistent loader") {
    Machine machine;
    std::vector<std::string> seen;
    const PersistentLoader loader = [&seen](const ValuePtr& pid, CallContext& ctx) {
        seen.push_back(repr(pid));
        return ctx.arena.make(StringValue{"loaded"});
    };
    CHECK(repr(machine.run("Pabc\n.", loader)) == "'loaded'");
    CHECK(repr(machine.run(proto(2) + "(" + binunicode("storage") + k(3) + "tQ.", loader)) ==
          "'loaded'");
    CHECK(seen == std::vector<std::string>{"'abc'", "('storage', 3)"});
}

// ===========================================================================
// Refusals
// ===========================================================================

TEST_CASE("pickle_vm: forbidden globals name themselves and their offset") {
    struct Case {
        std::string pickle;
        std::string name;
        std::size_t offset;
    };
    const std::string head4 = proto(4) + short_binunicode("builtins") + short_binunicode("eval");
    const std::string os4 = proto(4) + short_binunicode("os") + short_binunicode("system");
    const std::vector<Case> cases{
        {proto(2) + global("os", "system") + "(" + binunicode("id") + "tR.", "os.system", 2},
        {global("posix", "system") + ".", "posix.system", 0},
        {global("nt", "system") + ".", "nt.system", 0},
        {global("__builtin__", "eval") + ".", "builtins.eval", 0},  // Python 2 spelling
        {global("builtins", "exec") + ".", "builtins.exec", 0},
        {global("builtins", "getattr") + ".", "builtins.getattr", 0},
        {global("builtins", "__import__") + ".", "builtins.__import__", 0},
        {global("subprocess", "Popen") + ".", "subprocess.Popen", 0},
        {global("copy_reg", "_reconstructor") + ".", "copyreg._reconstructor", 0},
        {global("torch", "load") + ".", "torch.load", 0},
        {global("torch.serialization", "load") + ".", "torch.serialization.load", 0},
        {global("numpy", "load") + ".", "numpy.load", 0},
        {global("collections", "OrderedDict ") + ".", "collections.OrderedDict ", 0},  // exact only
        {head4 + op(0x93) + "(" + binunicode("1") + "tR.", "builtins.eval", head4.size()},
        {os4 + op(0x93) + ")" + op(0x81) + ".", "os.system", os4.size()},   // NEWOBJ
        {os4 + op(0x93) + ")}" + op(0x92) + ".", "os.system", os4.size()},  // NEWOBJ_EX
        {"(" + binunicode("id") + "ios\nsystem\n.", "os.system", 8},        // INST
        {"(cos\nsystem\n" + binunicode("id") + "o.", "os.system", 1},       // OBJ
    };
    for (const auto& c : cases) {
        INFO("global " << c.name);
        const auto result = vm_outcome(c.pickle);
        CHECK(result.code == "forbidden_global");
        CHECK(contains(result.message, c.name));
        CHECK(contains(result.message, "pickle offset " + std::to_string(c.offset) + ")"));
    }
    // Allowed under no policy: checkpoint widens data classes, not code.
    CHECK(vm_outcome(global("os", "system") + ".", {}, policy_named("checkpoint")).code ==
          "forbidden_global");
}

TEST_CASE("pickle_vm: EXT1/EXT2/EXT4 are refused") {
    for (const auto& pickle :
         {proto(2) + op(0x82) + op(1) + ".", proto(2) + op(0x83) + le(1, 2) + ".",
          proto(2) + op(0x84) + le(1, 4) + "."}) {
        const auto result = vm_outcome(pickle);
        CHECK(result.code == "forbidden_global");
        CHECK(contains(result.message, "pickle offset 2)"));
    }
}

TEST_CASE("pickle_vm: persistent ids in a plain pickle are unsupported") {
    CHECK(vm_outcome("Pfoo\n.").code == "unsupported");
    CHECK(vm_outcome(proto(2) + binunicode("x") + "Q.").code == "unsupported");
    CHECK(plan_outcome(proto(2) + "(" + binunicode("storage") + "tQ.").code == "unsupported");
}

TEST_CASE("pickle_vm: out-of-band buffers are unsupported") {
    CHECK(vm_outcome(proto(5) + op(0x97) + ".").code == "unsupported");
    CHECK(vm_outcome(proto(5) + "C" + op(1) + "x" + op(0x98) + ".").code == "unsupported");
}

TEST_CASE("pickle_vm: unknown opcodes are malformed") {
    for (const unsigned byte :
         {0x00u, 0x99u, 0xffu, unsigned('A'), unsigned('z'), unsigned('\n')}) {
        INFO("opcode " << byte);
        const auto result = vm_outcome(proto(2) + op(byte) + ".");
        CHECK(result.code == "malformed");
        CHECK(contains(result.message, "unknown opcode"));
        CHECK(contains(result.message, "pickle offset 2)"));
    }
}

TEST_CASE("pickle_vm: every truncation of a valid pickle is malformed") {
    const std::string protocol0 = "(dp0\nS'a'\np1\n(lp2\nI1\naF2.5\naVx\np3\naL5L\nag1\nas.";
    const std::string protocol2 =
        proto(2) + global("collections", "OrderedDict") + binput(0) + ")R" + binput(1) + "(" +
        binunicode("weight") + binput(2) + "J" + le(0xFFFFFFFE, 4) + "M" + le(300, 2) + op(0x8a) +
        op(2) + std::string("\x00\x80", 2) + "G" +
        std::string("\x3f\xf8\x00\x00\x00\x00\x00\x00", 8) + op(0x87) + "U" + op(3) + "key" + "T" +
        le(2, 4) + "ab" + op(0x86) + binunicode("l") + "]" + "r" + le(70000, 4) + "(" + op(0x88) +
        op(0x89) + "N" + "e" + "j" + le(70000, 4) + "0" + k(5) + "2" + "0" + "a" + "u" + ".";
    const std::string protocol4_body =
        short_binunicode("collections") + op(0x94) + short_binunicode("OrderedDict") + op(0x94) +
        op(0x93) + op(0x94) + ")R" + op(0x94) + "(" + short_binunicode("a") + op(0x94) + "(" + "B" +
        le(2, 4) + "hi" + "C" + op(1) + "x" + op(0x8e) + le(1, 8) + "y" + op(0x96) + le(1, 8) +
        "z" + op(0x8d) + le(2, 8) + "\xc3\xa9" + op(0x8f) + "(" + k(1) + op(0x90) + "(" + k(2) +
        op(0x91) + op(0x8b) + le(1, 4) + "\x05" + "t" + "u.";
    const std::string protocol4 =
        proto(4) + op(0x95) + le(protocol4_body.size(), 8) + protocol4_body;
    for (const auto* pickle : {&protocol0, &protocol2, &protocol4}) {
        REQUIRE(vm_outcome(*pickle).code == "ok");
        for (std::size_t n = 0; n < pickle->size(); ++n) {
            INFO("prefix of " << n << " of " << pickle->size() << " bytes");
            CHECK(vm_outcome(pickle->substr(0, n)).code == "malformed");
        }
    }
    CHECK(plan_outcome(protocol2.substr(0, protocol2.size() - 1)).code == "malformed");
    CHECK(plan_outcome("").code == "malformed");
}

TEST_CASE("pickle_vm: stack underflow and missing MARKs") {
    CHECK(vm_outcome("0.").code == "malformed");
    CHECK(vm_outcome("2.").code == "malformed");
    CHECK(vm_outcome(op(0x85) + ".").code == "malformed");
    CHECK(vm_outcome(k(1) + op(0x86) + ".").code == "malformed");
    CHECK(vm_outcome(k(1) + k(2) + op(0x87) + ".").code == "malformed");
    CHECK(vm_outcome("s.").code == "malformed");
    CHECK(vm_outcome(k(1) + "a.").code == "malformed");
    CHECK(vm_outcome(")R.").code == "malformed");
    CHECK(vm_outcome("Nb.").code == "malformed");
    CHECK(vm_outcome("q" + op(0) + ".").code == "malformed");  // BINPUT of nothing
    // Pops may not reach below the innermost MARK.
    CHECK(vm_outcome(k(1) + "(" + op(0x85) + ".").code == "malformed");
    CHECK(vm_outcome(k(1) + "(2.").code == "malformed");
    CHECK(vm_outcome("]" + k(1) + "(a.").code == "malformed");
    // Opcodes that need a MARK.
    for (const auto& pickle :
         {k(1) + "t.", "]" + k(1) + "e.", "}" + k(1) + k(2) + "u.", k(1) + "l.", k(1) + "d.",
          k(1) + "1.", op(0x8f) + k(1) + op(0x90) + ".", k(1) + op(0x91) + ".", std::string("o."),
          std::string("icollections\nOrderedDict\n.")}) {
        INFO(pickle);
        const auto result = vm_outcome(pickle);
        CHECK(result.code == "malformed");
        CHECK(contains(result.message, "MARK"));
    }
    CHECK(vm_outcome("(" + k(1) + ".").code == "malformed");  // STOP with an open MARK
}

TEST_CASE("pickle_vm: item assignment only on dicts, appends only on lists (CVE-2026-24747)") {
    const auto setitems_list = vm_outcome("](" + k(1) + k(2) + "u.");
    CHECK(setitems_list.code == "malformed");
    CHECK(contains(setitems_list.message, "not a dict"));
    CHECK(vm_outcome("]" + k(0) + k(1) + "s.").code == "malformed");
    CHECK(vm_outcome(")" + k(0) + k(1) + "s.").code == "malformed");
    CHECK(vm_outcome(global("torch", "float32") + k(0) + k(1) + "s.").code == "malformed");
    CHECK(vm_outcome(global("collections", "OrderedDict") + k(0) + k(1) + "s.").code ==
          "malformed");  // the class, not an instance
    const auto append_dict = vm_outcome("}" + k(1) + "a.");
    CHECK(append_dict.code == "malformed");
    CHECK(contains(append_dict.message, "not a list"));
    CHECK(vm_outcome("}(" + k(1) + "e.").code == "malformed");
    CHECK(vm_outcome(")(" + k(1) + "e.").code == "malformed");
}

TEST_CASE("pickle_vm: SETITEMS with an odd number of items") {
    const auto result = vm_outcome("}(" + k(1) + k(2) + k(3) + "u.");
    CHECK(result.code == "malformed");
    CHECK(contains(result.message, "odd"));
}

TEST_CASE("pickle_vm: GET of a memo index never stored") {
    CHECK(vm_outcome(binget(0) + ".").code == "malformed");
    CHECK(vm_outcome(k(1) + binput(0) + "0" + binget(1) + ".").code == "malformed");
    CHECK(vm_outcome("j" + le(0xFFFFFFFF, 4) + ".").code == "malformed");
    const auto result = vm_outcome(proto(2) + k(1) + binput(3) + binget(4) + op(0x86) + ".");
    CHECK(result.code == "malformed");
    CHECK(contains(result.message, "memo index 4"));
}

TEST_CASE("pickle_vm: STOP must leave exactly one value") {
    const auto two = vm_outcome(k(1) + k(2) + ".");
    CHECK(two.code == "malformed");
    CHECK(contains(two.message, "2 values"));
    CHECK(vm_outcome(".").code == "malformed");
    // Conversion::plan refuses a second pickle hidden after STOP.
    CHECK(plan_outcome(proto(2) + k(1) + "." + proto(2) + global("os", "system") + ".").code ==
          "malformed");
}

TEST_CASE("pickle_vm: strings must be valid UTF-8 without surrogates") {
    CHECK(vm_outcome(binunicode("\xff") + ".").code == "malformed");
    CHECK(vm_outcome(binunicode("\xed\xa0\x80") + ".").code == "malformed");      // U+D800
    CHECK(vm_outcome(binunicode("\xed\xbf\xbf") + ".").code == "malformed");      // U+DFFF
    CHECK(vm_outcome(binunicode("\xc0\xaf") + ".").code == "malformed");          // overlong '/'
    CHECK(vm_outcome(binunicode("\xe0\x80\xaf") + ".").code == "malformed");      // overlong
    CHECK(vm_outcome(binunicode("\xf4\x90\x80\x80") + ".").code == "malformed");  // > U+10FFFF
    CHECK(vm_outcome(binunicode("\xe2\x82") + ".").code == "malformed");          // truncated
    CHECK(vm_outcome(binunicode("\x80") + ".").code == "malformed");  // lone continuation
    CHECK(vm_outcome(short_binunicode("\xed\xa0\x80") + ".").code == "malformed");
    CHECK(vm_outcome(op(0x8d) + le(1, 8) + "\xfe.").code == "malformed");
    CHECK(vm_outcome("T" + le(1, 4) + "\xc3.").code == "malformed");
    CHECK(run_repr(binunicode("\xf0\x9f\x98\x80") + ".") == "'\xf0\x9f\x98\x80'");
    CHECK(run_repr(binunicode("\xed\x9f\xbf") + ".") == "'\xed\x9f\xbf'");          // U+D7FF
    CHECK(run_repr(binunicode("\xf4\x8f\xbf\xbf") + ".") == "'\xf4\x8f\xbf\xbf'");  // U+10FFFF
    CHECK(run_repr(binunicode(std::string("a\0b", 3)) + ".") == std::string("'a\0b'", 5));

    CHECK(is_valid_utf8(""));
    CHECK(is_valid_utf8("plain ascii"));
    CHECK(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
    CHECK_FALSE(is_valid_utf8("\xed\xa0\x80"));
    CHECK_FALSE(is_valid_utf8("\xf8\x88\x80\x80\x80"));  // 5-byte form
    CHECK_FALSE(is_valid_utf8("\xc3"));
}

// ===========================================================================
// Limits
// ===========================================================================

TEST_CASE("pickle_vm: max_string_bytes") {
    Limits limits;
    limits.max_string_bytes = 4;
    CHECK(vm_outcome(binunicode("abcd") + ".", limits).code == "ok");
    CHECK(vm_outcome(binunicode("abcde") + ".", limits).code == "too_large");
    CHECK(vm_outcome(op(0x8d) + le(5, 8) + "abcde.", limits).code == "too_large");
    CHECK(vm_outcome("T" + le(5, 4) + "abcde.", limits).code == "too_large");
    CHECK(vm_outcome("B" + le(5, 4) + "abcde.", limits).code == "too_large");
    CHECK(vm_outcome(op(0x8e) + le(5, 8) + "abcde.", limits).code == "too_large");
    CHECK(vm_outcome(op(0x96) + le(5, 8) + "abcde.", limits).code == "too_large");
    // A huge declared length fails on the limit before anything is read or allocated.
    CHECK(vm_outcome("X" + le(0xFFFFFFFF, 4) + "ab.").code == "too_large");
    CHECK(vm_outcome(op(0x8e) + le(std::uint64_t{1} << 63, 8) + "ab.").code == "too_large");
    CHECK(vm_outcome(op(0x8d) + le(~std::uint64_t{0}, 8) + "ab.").code == "too_large");
}

TEST_CASE("pickle_vm: max_memo_entries and max_memo_index") {
    Limits limits;
    limits.max_memo_entries = 2;
    CHECK(vm_outcome(k(1) + binput(0) + binput(1) + ".", limits).code == "ok");
    CHECK(vm_outcome(k(1) + binput(0) + binput(0) + binput(0) + binput(1) + ".", limits).code ==
          "ok");  // overwriting does not add entries
    CHECK(vm_outcome(k(1) + binput(0) + binput(1) + binput(2) + ".", limits).code == "too_large");
    CHECK(vm_outcome(proto(4) + k(1) + op(0x94) + op(0x94) + op(0x94) + ".", limits).code ==
          "too_large");
    Limits index_limit;
    index_limit.max_memo_index = 100;
    CHECK(vm_outcome(k(1) + "r" + le(99, 4) + ".", index_limit).code == "ok");
    CHECK(vm_outcome(k(1) + "r" + le(100, 4) + ".", index_limit).code == "too_large");
    CHECK(vm_outcome(k(1) + "p100\n.", index_limit).code == "too_large");
}

TEST_CASE("pickle_vm: max_stack_depth and max_mark_depth") {
    Limits limits;
    limits.max_stack_depth = 3;
    CHECK(vm_outcome("(" + k(1) + k(2) + k(3) + "t.", limits).code == "ok");
    CHECK(vm_outcome("(" + k(1) + k(2) + k(3) + k(4) + "t.", limits).code == "too_large");
    Limits marks;
    marks.max_mark_depth = 2;
    CHECK(vm_outcome("((tt.", marks).code == "ok");
    CHECK(vm_outcome("(((ttt.", marks).code == "too_large");
    // The defaults hold a deep but bounded pickle.
    CHECK(vm_outcome(std::string(10'001, '(')).code == "too_large");
}

TEST_CASE("pickle_vm: max_int_bytes") {
    CHECK(vm_outcome(op(0x8a) + op(64) + std::string(64, '\x01') + ".").code == "ok");
    CHECK(vm_outcome(op(0x8a) + op(65) + std::string(65, '\x01') + ".").code == "too_large");
    CHECK(vm_outcome(op(0x8b) + le(65, 4) + std::string(65, '\x01') + ".").code == "too_large");
    Limits limits;
    limits.max_int_bytes = 8;
    CHECK(vm_outcome(op(0x8a) + op(9) + std::string(9, '\x01') + ".", limits).code == "too_large");
}

TEST_CASE("pickle_vm: max_objects") {
    Limits limits;
    limits.max_objects = 50;
    std::string many = "(";
    for (int i = 0; i < 30; ++i) many += k(1);
    many += "t.";
    CHECK(vm_outcome(many, limits).code == "too_large");
    limits.max_objects = 100;
    CHECK(vm_outcome(many, limits).code == "ok");
}

// ===========================================================================
// Whole pipeline: Conversion::plan
// ===========================================================================

TEST_CASE("pickle_vm: a plain pickle converts to an object description without tensors") {
    const std::string pickle =
        proto(2) + "}(" + binunicode("a") + k(1) + binunicode("b") + "]" + op(0x88) + "au.";
    const auto conversion = Conversion::plan(bytes_of(pickle), weights(), {});
    CHECK(conversion.format() == InputFormat::pickle);
    CHECK(conversion.pickle_protocol() == 2);
    CHECK(conversion.layout().tensors().empty());
    CHECK(conversion.metadata().at(std::string(kMetaObject)) ==
          R"({"dict":[["a",1],["b",[true]]]})");
    CHECK(conversion.metadata().at(std::string(kMetaSource)) == "pickle");
    std::vector<std::byte> image(conversion.output_size());
    conversion.write(image);
    const auto index = picklejail::ipc::check_safetensors(image);
    CHECK(index.tensors.empty());
    CHECK(index.data_offset % 64 == 0);
}

TEST_CASE("pickle_vm: a billion-laughs memo expansion fails with too_large quickly") {
    // L0 = []; L(i) = [L(i-1)] * 10 through BINGET, 30 levels: 10**30 nodes.
    std::string pickle = proto(2) + "]" + binput(0) + "0";
    for (unsigned level = 1; level <= 30; ++level) {
        pickle += "](";
        for (int i = 0; i < 10; ++i) pickle += binget(level - 1);
        pickle += "e" + binput(level);
        if (level != 30) pickle += "0";
    }
    pickle += ".";
    REQUIRE(pickle.size() < 1000);
    CHECK(vm_outcome(pickle).code == "ok");  // the VM holds only 31 lists
    const auto start = std::chrono::steady_clock::now();
    const auto result = plan_outcome(pickle);
    const auto seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(result.code == "too_large");
    CHECK(contains(result.message, "max_objects"));
    CHECK(seconds < 30.0);
    // A tighter limit fails proportionally sooner.
    Limits limits;
    limits.max_objects = 10'000;
    CHECK(plan_outcome(pickle, limits).code == "too_large");
}

TEST_CASE("pickle_vm: a reference cycle is malformed") {
    // l = []; l.append(l)
    const auto list = plan_outcome(proto(2) + "]" + binput(0) + binget(0) + "a.");
    CHECK(list.code == "malformed");
    CHECK(contains(list.message, "contains itself"));
    // d = {}; d[1] = d
    CHECK(plan_outcome(proto(2) + "}" + binput(0) + k(1) + binget(0) + "s.").code == "malformed");
    // l = [[l]] through two levels
    CHECK(plan_outcome(proto(2) + "]" + binput(0) + "]" + binget(0) + "aa.").code == "malformed");
    // The VM itself builds the cycle fine, and the arena frees it.
    Machine machine;
    const auto value = machine.run(proto(2) + "]" + binput(0) + binget(0) + "a.");
    REQUIRE(value->is<ListValue>());
    CHECK(value->as<ListValue>()->items.at(0).get() == value.get());
}

TEST_CASE("pickle_vm: deep nesting is too_large, not a stack overflow") {
    // [[[...]]] 10,000 deep: 10,000 EMPTY_LIST then 9,999 APPEND.
    const std::string deep = proto(2) + std::string(10'000, ']') + std::string(9'999, 'a') + ".";
    const auto result = plan_outcome(deep);
    CHECK(result.code == "too_large");
    CHECK(contains(result.message, "max_nesting_depth"));
    // Within the nesting limit the same shape converts.
    CHECK(plan_outcome(proto(2) + std::string(500, ']') + std::string(499, 'a') + ".").code ==
          "ok");
    // 200,000 deep in the VM alone: the arena tears it down without recursion.
    Machine machine;
    const auto value =
        machine.run(proto(2) + std::string(200'000, ']') + std::string(199'999, 'a') + ".");
    CHECK(value->is<ListValue>());
}
