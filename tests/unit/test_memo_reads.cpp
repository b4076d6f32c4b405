// The memo scan (which slots a pickle reads back) and what the VM frees
// because of it: objects memoized but never read go once consumed.
#include <catch2/catch.hpp>
#include <span>
#include <string>

#include "loader/limits.hpp"
#include "loader/memo_reads.hpp"
#include "loader/object_arena.hpp"
#include "loader/pickle_vm.hpp"
#include "loader/storage_table.hpp"
#include "test_support.hpp"

namespace {

using namespace picklejail::loader;
using picklejail::test::le;
using picklejail::test::op;
using picklejail::test::policy_named;

std::span<const std::byte> bytes_of(const std::string& text) {
    return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

MemoReads scan(const std::string& pickle) {
    return MemoReads::scan(bytes_of(pickle));
}

std::string proto(unsigned version) {
    return op(0x80) + op(version);
}
std::string k(unsigned value) {
    return "K" + op(value);
}

struct Machine {
    Limits limits;
    StorageTable storages{limits};
    ObjectArena arena{limits};
    CallContext ctx{policy_named("weights"), limits, storages, arena};
    ValuePtr run(const std::string& pickle) {
        return PickleVm(bytes_of(pickle), ctx, nullptr).run();
    }
};

}  // namespace

TEST_CASE("memo_reads: every kind of GET is found, and only those") {
    // BINGET 1, LONG_BINGET 70000, GET 5 (protocol 0 text), GET of a high slot.
    const auto reads = scan(proto(2) + k(7) + "q" + op(1) + "h" + op(1) + "r" + le(3, 4) + "j" +
                            le(70'000, 4) + "g5\n" + "g2000000\n" + "0000.");
    CHECK(reads.may_read(1));
    CHECK(reads.may_read(70'000));
    CHECK(reads.may_read(5));
    CHECK(reads.may_read(2'000'000));
    CHECK_FALSE(reads.may_read(3));  // put (LONG_BINPUT), never read
    CHECK_FALSE(reads.may_read(0));
    CHECK_FALSE(reads.may_read(2'000'001));
}

TEST_CASE("memo_reads: operands are skipped, not mistaken for opcodes") {
    // 'h' bytes inside a string, a BININT and a FRAME length are not BINGETs.
    const std::string text = "X" + le(3, 4) + "h" + op(9) + "h";
    const auto reads = scan(proto(4) + op(0x95) + le(20, 8) + text + "J" + le(0x0968, 4) + "0" +
                            "c" + "mod\nh\x09\n" + "0.");
    CHECK_FALSE(reads.may_read(9));
    CHECK_FALSE(reads.may_read(0x68));
    // What follows STOP is not part of this pickle.
    CHECK_FALSE(scan(proto(2) + "N." + "h" + op(4)).may_read(4));
}

TEST_CASE("memo_reads: a walk it cannot finish counts every slot as read") {
    CHECK(scan(proto(2) + "N" + "h").may_read(123));                    // truncated operand
    CHECK(scan(proto(2) + "N" + op(0xff) + ".").may_read(123));         // unknown opcode
    CHECK(scan(proto(2) + "N" + op(0x82) + op(1) + ".").may_read(9));   // EXT1: refused later
    CHECK(scan(proto(2) + "N").may_read(0));                            // no STOP
    CHECK(scan(proto(2) + "T" + le(0xffffffff, 4) + ".").may_read(1));  // negative length
    CHECK(scan(proto(2) + "gx\n.").may_read(1));                        // GET of no number
}

TEST_CASE("pickle_vm: objects memoized but never read are freed once consumed") {
    // torch.save's shape: every tuple memoized, none read back, each consumed
    // (here popped) right away. 20,000 of them leave the arena nearly empty.
    std::string pickle = proto(2) + "]" + "q" + op(0);
    for (int i = 0; i < 20'000; ++i) pickle += k(1) + op(0x85) + "r" + le(1 + i, 4) + "0";
    pickle += ".";
    Machine machine;
    const auto list = machine.run(pickle);
    CHECK(list->is<ListValue>());
    CHECK(machine.arena.containers_held() < 4096);

    // A slot that is read back keeps its object across every sweep.
    std::string kept = proto(2) + "]" + "q" + op(0) + "0";
    for (int i = 0; i < 20'000; ++i) kept += k(1) + op(0x85) + "r" + le(1 + i, 4) + "0";
    kept += "h" + op(0) + "h" + op(0) + op(0x86) + ".";
    Machine again;
    const auto pair = again.run(kept);
    REQUIRE(pair->is<TupleValue>());
    const auto& items = pair->as<TupleValue>()->items;
    CHECK(items[0]->is<ListValue>());
    CHECK(items[0].get() == items[1].get());
}

TEST_CASE("pickle_vm: a deep chain dropped mid-pickle is swept without recursion") {
    // [[[...]]] 200,000 deep, popped, then enough garbage to trigger sweeps:
    // the arena frees the chain a level at a time, never by recursion.
    std::string pickle = proto(2) + std::string(200'000, ']') + std::string(199'999, 'a') + "0";
    for (int i = 0; i < 50'000; ++i) pickle += k(1) + op(0x85) + "0";
    pickle += "N.";
    Machine machine;
    CHECK(machine.run(pickle)->is<NoneValue>());
}
