// The inert policy, case by case: hand-assembled pickles through
// Conversion::plan, checking the description a client rebuilds from
// (docs/output-format.md) and every refusal by its code and the name it gives.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>

#include "common/error.hpp"
#include "loader/checkpoint_loader.hpp"
#include "loader/policy.hpp"
#include "test_support.hpp"

namespace {

using picklejail::Error;
using namespace picklejail::loader;
using picklejail::test::le;
using picklejail::test::op;
using picklejail::test::policy_named;

// ---- pickle assembly (protocol 2 unless said) ------------------------------

std::string proto(unsigned version) {
    return op(0x80) + op(version);
}
std::string k(unsigned value) {
    return "K" + op(value);
}
std::string str(std::string_view s) {
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
const std::string kMark = "(";
const std::string kTuple = "t";
const std::string kEmptyTuple = ")";
const std::string kEmptyDict = "}";
const std::string kEmptyList = "]";
const std::string kReduce = "R";
const std::string kNewobj = op(0x81);
const std::string kBuild = "b";
const std::string kSetitem = "s";
const std::string kSetitems = "u";
const std::string kAppend = "a";
const std::string kStop = ".";

// {key: value, ...} of already-assembled parts.
std::string dict_of(std::initializer_list<std::pair<std::string, std::string>> items) {
    std::string out = kEmptyDict + kMark;
    for (const auto& [key, value] : items) out += key + value;
    return out + kSetitems;
}

struct Outcome {
    std::string code = "ok";
    std::string message;
    nlohmann::json object;  // the description, when ok
    std::map<std::string, std::string> metadata;
};

Outcome plan(const std::string& pickle, const std::string& policy = "inert") {
    Outcome out;
    try {
        const auto conversion =
            Conversion::plan({reinterpret_cast<const std::byte*>(pickle.data()), pickle.size()},
                             policy_named(policy), Limits{});
        out.metadata = conversion.metadata();
        out.object = nlohmann::json::parse(conversion.metadata().at("picklejail.object"));
    } catch (const Error& e) {
        out.code = std::string(picklejail::to_string(e.code()));
        out.message = e.what();
    }
    return out;
}

bool contains(const std::string& text, std::string_view part) {
    return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("inert: an unbound class called, instantiated and built is a record") {
    // models.yolo.Detect.__new__ + BUILD({"nc": 80}), as torch.save(model) writes it.
    const auto built = plan(proto(2) + global("models.yolo", "Detect") + kEmptyTuple + kNewobj +
                            dict_of({{str("nc"), k(80)}}) + kBuild + kStop);
    REQUIRE(built.code == "ok");
    CHECK(built.object == nlohmann::json::parse(
                              R"({"object":"models.yolo.Detect","args":{"tuple":[]},
                                  "state":{"dict":[["nc",80]]}})"));
    // REDUCE(cls, ("steps",)): an enum by value.
    const auto reduced = plan(proto(2) + global("transformers.trainer_utils", "IntervalStrategy") +
                              str("steps") + op(0x85) + kReduce + kStop);
    REQUIRE(reduced.code == "ok");
    CHECK(
        reduced.object ==
        nlohmann::json::parse(
            R"({"object":"transformers.trainer_utils.IntervalStrategy","args":{"tuple":["steps"]}})"));
    // The same pickles are refused by name under the strict policies.
    const auto weights =
        plan(proto(2) + global("models.yolo", "Detect") + kEmptyTuple + kNewobj + kStop, "weights");
    CHECK(weights.code == "forbidden_global");
    CHECK(contains(weights.message, "models.yolo.Detect"));
}

TEST_CASE("inert: a global held as a value or a key is a reference") {
    const auto keyed = plan(proto(2) +
                            dict_of({{global("pytorch_lightning.callbacks", "ModelCheckpoint"),
                                      dict_of({{str("dirpath"), str("/ckpt")}})}}) +
                            kStop);
    REQUIRE(keyed.code == "ok");
    CHECK(keyed.object["dict"][0][0] ==
          nlohmann::json::parse(R"({"global":"pytorch_lightning.callbacks.ModelCheckpoint"})"));
    CHECK(contains(keyed.metadata.at("picklejail.globals"), "pytorch_lightning.callbacks"));
}

TEST_CASE("inert: getattr of a reference is a checked reference; of a record a method") {
    // getattr(TrainerFn, "FITTING"): an enum by name (Python 3.11).
    const auto by_name = plan(proto(2) + global("builtins", "getattr") +
                              global("pytorch_lightning.trainer.states", "TrainerFn") +
                              str("FITTING") + op(0x86) + kReduce + kStop);
    REQUIRE(by_name.code == "ok");
    CHECK(by_name.object ==
          nlohmann::json::parse(
              R"({"global":"pytorch_lightning.trainer.states.TrainerFn.FITTING"})"));
    // getattr(torch.serialization, "load") is refused as the name it resolves to.
    const auto refused =
        plan(proto(2) + global("builtins", "getattr") + global("torch", "serialization") +
             str("load") + op(0x86) + kReduce + kStop);
    CHECK(refused.code == "forbidden_global");
    CHECK(contains(refused.message, "torch.serialization.load"));
    // A dunder attribute reaches interpreter internals: refused, whatever the owner.
    const auto dunder = plan(proto(2) + global("builtins", "getattr") + global("mymodel", "Net") +
                             str("__globals__") + op(0x86) + kReduce + kStop);
    CHECK(dunder.code == "forbidden_global");
    CHECK(contains(dunder.message, "mymodel.Net.__globals__"));
    // getattr(scheduler_record, "_annealing_cos"): a bound method kept as data.
    const std::string scheduler =
        global("torch.optim.lr_scheduler", "OneCycleLR") + kEmptyTuple + kNewobj + binput(0);
    const auto method = plan(proto(2) + global("builtins", "getattr") + scheduler +
                             str("_annealing_cos") + op(0x86) + kReduce + kStop);
    REQUIRE(method.code == "ok");
    CHECK(method.object["method"] == "_annealing_cos");
    CHECK(method.object["self"]["object"] == "torch.optim.lr_scheduler.OneCycleLR");
    // Calling it is what only an attack does.
    const auto called = plan(proto(2) + global("builtins", "getattr") + scheduler + str("step") +
                             op(0x86) + kReduce + kEmptyTuple + kReduce + kStop);
    CHECK(called.code == "forbidden_global");
    CHECK(contains(called.message, "calling the bound method step"));
    // getattr of anything else (a str's methods) is refused.
    const auto on_str = plan(proto(2) + global("builtins", "getattr") + str("x") + str("join") +
                             op(0x86) + kReduce + kStop);
    CHECK(on_str.code == "forbidden_global");
}

TEST_CASE("inert: code-running globals stay refused, with the entry they fall under") {
    for (const auto& [module, name] :
         std::vector<std::pair<std::string, std::string>>{{"os", "system"},
                                                          {"posix", "system"},
                                                          {"subprocess", "Popen"},
                                                          {"builtins", "eval"},
                                                          {"__builtin__", "exec"},
                                                          {"builtins", "__import__"},
                                                          {"importlib", "import_module"},
                                                          {"runpy", "run_path"},
                                                          {"pickle", "loads"},
                                                          {"cPickle", "loads"},
                                                          {"operator", "attrgetter"},
                                                          {"torch.hub", "load"},
                                                          {"torch", "load"},
                                                          {"__builtin__", "raw_input"}}) {
        CAPTURE(module, name);
        const auto out = plan(proto(2) + global(module, name) + kStop);
        CHECK(out.code == "forbidden_global");
        CHECK(contains(out.message, "refused by policy \"inert\""));
        CHECK(contains(out.message, "pickle offset"));
    }
    // A refused module's submodules are refused; a module that merely shares a prefix is not.
    CHECK(plan(proto(2) + global("os.path", "join") + kStop).code == "forbidden_global");
    CHECK(plan(proto(2) + global("ossify", "Thing") + kStop).code == "ok");
}

TEST_CASE("inert: Python 2 names are refused or kept as Python 3 resolves them") {
    // protocol 2 writes Python 3's int as __builtin__.long.
    const auto long_type = plan(proto(2) + global("__builtin__", "long") + kStop);
    REQUIRE(long_type.code == "ok");
    CHECK(long_type.object == nlohmann::json::parse(R"({"global":"builtins.int"})"));
    CHECK(canonical_global_name("__builtin__", "intern") == "sys.intern");
    CHECK(canonical_global_name("itertools", "izip") == "builtins.zip");
    CHECK(canonical_global_name("commands", "getoutput") == "subprocess.getoutput");
}

TEST_CASE("inert: shared objects are written once, mutable cycles are kept") {
    // d = {}; d["parent"] = d  (an omegaconf node's _parent)
    const auto cycle =
        plan(proto(2) + kEmptyDict + binput(0) + str("parent") + binget(0) + kSetitem + kStop);
    REQUIRE(cycle.code == "ok");
    CHECK(cycle.object ==
          nlohmann::json::parse(R"({"shared":0,"value":{"dict":[["parent",{"ref":0}]]}})"));
    // The strict policies keep refusing cycles.
    CHECK(plan(proto(2) + kEmptyDict + binput(0) + str("parent") + binget(0) + kSetitem + kStop,
               "weights")
              .code == "malformed");
    // L0 = []; L(i) = [L(i-1)] * 10 for 30 levels: 10**30 paths, 31 objects.
    std::string laughs = proto(2) + kEmptyList + binput(0) + "0";
    for (unsigned level = 1; level <= 30; ++level) {
        laughs += kEmptyList + kMark;
        for (int i = 0; i < 10; ++i) laughs += binget(level - 1);
        laughs += "e" + binput(level);
        if (level != 30) laughs += "0";
    }
    const auto shared = plan(laughs + kStop);
    REQUIRE(shared.code == "ok");
    CHECK(shared.metadata.at("picklejail.object").size() < 4000);
    // A tuple that contains itself (through a list) cannot be rebuilt in order.
    // t = ([t],): the list is created, then the tuple, then the list appended.
    const auto tuple_cycle = plan(proto(2) + kEmptyList + binput(0) + op(0x85) + binput(1) +
                                  binget(0) + binget(1) + kAppend + "0" + kStop);
    CHECK(tuple_cycle.code == "unsupported");
    CHECK(contains(tuple_cycle.message, "contains itself"));
}

TEST_CASE("inert: unhashable keys and set items are malformed") {
    // d = {}; d[d] = 1
    const auto own_key =
        plan(proto(2) + kEmptyDict + binput(0) + binget(0) + k(1) + kSetitem + kStop);
    CHECK(own_key.code == "malformed");
    CHECK(contains(own_key.message, "unhashable dict key"));
    // {([],): 1}: a tuple holding a list
    const auto tuple_key =
        plan(proto(2) + kEmptyDict + kEmptyList + op(0x85) + k(1) + kSetitem + kStop);
    CHECK(tuple_key.code == "malformed");
}

TEST_CASE("inert: dict and list subclasses keep the items pickled after them") {
    // AttributeDict() then SETITEMS {"lr": 1}, as Lightning's hparams pickle.
    const auto dict_items =
        plan(proto(2) + global("pytorch_lightning.utilities", "AttributeDict") + kEmptyTuple +
             kNewobj + kMark + str("lr") + k(1) + kSetitems + kStop);
    REQUIRE(dict_items.code == "ok");
    CHECK(dict_items.object["dictitems"] == nlohmann::json::parse(R"([["lr",1]])"));
    const auto list_items = plan(proto(2) + global("omegaconf", "ListOfThings") + kEmptyTuple +
                                 kNewobj + k(7) + kAppend + kStop);
    REQUIRE(list_items.code == "ok");
    CHECK(list_items.object["listitems"] == nlohmann::json::parse("[7]"));
}

TEST_CASE("inert: NEWOBJ_EX keeps keyword arguments; the strict policies refuse them") {
    const std::string pickle = proto(4) + global("pathlib", "PosixPath") + kEmptyTuple +
                               dict_of({{str("strict"), "\x88"}}) + op(0x92) + kStop;
    const auto inert = plan(pickle);
    REQUIRE(inert.code == "ok");
    CHECK(inert.object["kwargs"] == nlohmann::json::parse(R"({"dict":[["strict",true]]})"));
}

TEST_CASE("inert: copyreg._reconstructor is the record of its class") {
    const auto out = plan(proto(2) + global("copy_reg", "_reconstructor") +
                          global("myproject.config", "Config") + global("__builtin__", "object") +
                          "N" + op(0x87) + kReduce + dict_of({{str("x"), k(1)}}) + kBuild + kStop);
    REQUIRE(out.code == "ok");
    CHECK(out.object["object"] == "myproject.config.Config");
    CHECK(out.object["state"] == nlohmann::json::parse(R"({"dict":[["x",1]]})"));
}

TEST_CASE("inert: nesting up to the limit through records and dicts fits the stack") {
    // Each level is a record whose state is a dict holding the next record
    // under a tuple key (positional names, the writers' largest frames):
    // 499 levels are 998 containers deep, inside max_nesting_depth (1,000);
    // a sanitizer build's frames are the largest this recursion sees.
    const auto nested = [](int levels) {
        std::string pickle = proto(2);
        for (int level = 0; level < levels; ++level) {
            pickle += global("m", "C") + kEmptyTuple + kNewobj + kEmptyDict + kMark + k(1) +
                      op(0x85);
        }
        pickle += kEmptyList;
        for (int level = 0; level < levels; ++level) pickle += kSetitems + kBuild;
        return pickle + kStop;
    };
    const auto deepest = plan(nested(499));
    REQUIRE(deepest.code == "ok");
    const nlohmann::json* node = &deepest.object;
    for (int level = 0; level < 499; ++level) node = &(*node)["state"]["dict"][0][1];
    CHECK(*node == nlohmann::json::array());
    const auto deeper = plan(nested(501));
    CHECK(deeper.code == "too_large");
    CHECK(contains(deeper.message, "max_nesting_depth"));
}

TEST_CASE("policy: 'refused' entries are dotted prefixes and can only be widened") {
    const Policy base = Policy::from_json(
        R"({"name":"b","inert":true,"refused":{"modules":["os"],"globals":["builtins.eval"]},"globals":{}})");
    CHECK(base.inert());
    CHECK(base.refusal("os.system") == std::optional<std::string>("os"));
    CHECK(base.refusal("os") == std::optional<std::string>("os"));
    CHECK(!base.refusal("ossify.x"));
    CHECK(base.refusal("builtins.eval") == std::optional<std::string>("builtins.eval"));
    CHECK(!base.refusal("builtins.evaluate"));
    CHECK_THROWS_AS(
        Policy::from_json(R"({"name":"c","extends":"b","inert":false,"globals":{}})", &base),
        Error);
    CHECK_THROWS_AS(Policy::from_json(R"({"name":"c","refused":{"modules":[".os"]},"globals":{}})"),
                    Error);
    CHECK_THROWS_AS(Policy::from_json(R"({"name":"c","refused":{"files":["x"]},"globals":{}})"),
                    Error);
    const Policy child = Policy::from_json(
        R"({"name":"c","extends":"b","refused":{"modules":["numpy"]},"globals":{}})", &base);
    CHECK(child.inert());
    CHECK(child.refusal("os.system"));
    CHECK(child.refusal("numpy.load"));
}
