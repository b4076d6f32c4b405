// Policies: the JSON schema Policy::from_json accepts, exact-name resolution
// with the Python 2 / old-torch module renames, "extends" as
// load_policy_text merges it, and what the shipped weights and checkpoint
// policies decide.
#include <catch2/catch.hpp>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"
#include "loader/handler.hpp"
#include "loader/policy.hpp"
#include "sandbox/policy_files.hpp"

namespace {

using picklejail::Error;
using picklejail::ErrorCode;
using picklejail::loader::canonical_global_name;
using picklejail::loader::Handler;
using picklejail::loader::handler_from_name;
using picklejail::loader::handler_name;
using picklejail::loader::Policy;

const std::string kPolicyDir = std::string(PICKLEJAIL_SOURCE_DIR) + "/policies";

Policy load(const std::string& name) {
    return Policy::from_json(picklejail::sandbox::load_policy_text(name, kPolicyDir));
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The error code's name when `body` throws picklejail::Error, else "ok".
template <typename F>
std::string code_of(F&& body) {
    try {
        body();
    } catch (const Error& e) {
        return std::string(picklejail::to_string(e.code()));
    }
    return "ok";
}

std::string from_json_code(std::string_view text) {
    return code_of([&] { (void)Policy::from_json(text); });
}

// The handler a dotted name resolves to, by its policy-file name ("" when forbidden).
std::string decision(const Policy& policy, std::string_view module, std::string_view name) {
    const auto handler = policy.resolve(module, name);
    return handler ? std::string(handler_name(*handler)) : "";
}

}  // namespace

TEST_CASE("policy: from_json accepts the minimal schema") {
    const auto policy = Policy::from_json(
        R"({"name":"tiny","description":"d","globals":{"collections.OrderedDict":"ordered_dict"}})");
    CHECK(policy.name() == "tiny");
    CHECK(policy.globals().size() == 1);
    CHECK(decision(policy, "collections", "OrderedDict") == "ordered_dict");
    CHECK_FALSE(policy.numpy_arrays_as_tensors());
    CHECK(Policy::from_json(R"({"name":"n","globals":{},"numpy_arrays_as_tensors":true})")
              .numpy_arrays_as_tensors());
}

TEST_CASE("policy: from_json schema errors are invalid_request") {
    CHECK(from_json_code("") == "invalid_request");
    CHECK(from_json_code("not json") == "invalid_request");
    CHECK(from_json_code("[]") == "invalid_request");
    CHECK(from_json_code(R"("weights")") == "invalid_request");
    CHECK(from_json_code(R"({"globals":{}})") == "invalid_request");             // no name
    CHECK(from_json_code(R"({"name":7,"globals":{}})") == "invalid_request");    // name not str
    CHECK(from_json_code(R"({"name":"n"})") == "invalid_request");               // no globals
    CHECK(from_json_code(R"({"name":"n","globals":[]})") == "invalid_request");  // not an object
    CHECK(from_json_code(R"({"name":"n","globals":"x"})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"a.b":"exec"}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"a.b":""}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"a.b":1}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"a.b":null}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"a.b":"Ordered_Dict"}})") == "invalid_request");
    // No wildcard over a module, no bare names.
    CHECK(from_json_code(R"({"name":"n","globals":{"torch.*":"record"}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"*":"record"}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"collections.*Dict":"ordered_dict"}})") ==
          "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"OrderedDict":"ordered_dict"}})") ==
          "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{"eval":"record"}})") == "invalid_request");
    CHECK(from_json_code(R"({"name":"n","globals":{},"numpy_arrays_as_tensors":"yes"})") ==
          "invalid_request");
    // "extends" must be resolved by the caller.
    CHECK(from_json_code(R"({"name":"n","extends":"weights","globals":{}})") == "invalid_request");
    CHECK(code_of([] { (void)Policy::extends_of(R"({"name":"n","extends":3,"globals":{}})"); }) ==
          "invalid_request");
    CHECK(code_of([] { (void)Policy::extends_of("nope"); }) == "invalid_request");
}

TEST_CASE("policy: every known handler name round-trips") {
    for (int i = 0; i <= static_cast<int>(Handler::unsupported_tensor); ++i) {
        const auto handler = static_cast<Handler>(i);
        const auto name = handler_name(handler);
        INFO("handler " << i << " = " << name);
        CHECK(name != "unknown");
        REQUIRE(handler_from_name(name).has_value());
        CHECK(*handler_from_name(name) == handler);
    }
    CHECK_FALSE(handler_from_name("unknown").has_value());
    CHECK_FALSE(handler_from_name("").has_value());
}

TEST_CASE("policy: resolve() matches exact names only") {
    const auto policy = Policy::from_json(R"({"name":"n","globals":{
        "collections.OrderedDict":"ordered_dict",
        "torch._utils._rebuild_tensor_v2":"rebuild_tensor_v2"}})");
    CHECK(decision(policy, "collections", "OrderedDict") == "ordered_dict");
    CHECK(decision(policy, "torch._utils", "_rebuild_tensor_v2") == "rebuild_tensor_v2");
    CHECK(decision(policy, "collections", "OrderedDic") == "");
    CHECK(decision(policy, "collections", "OrderedDict2") == "");
    CHECK(decision(policy, "collections", "orderedDict") == "");
    CHECK(decision(policy, "Collections", "OrderedDict") == "");
    CHECK(decision(policy, "collections", "OrderedDict ") == "");
    CHECK(decision(policy, "collections ", "OrderedDict") == "");
    CHECK(decision(policy, "collections.abc", "OrderedDict") == "");
    CHECK(decision(policy, "collections", "") == "");
    CHECK(decision(policy, "", "OrderedDict") == "");
    CHECK(decision(policy, "torch._utils", "_rebuild_tensor") == "");
    CHECK(decision(policy, "torch", "_rebuild_tensor_v2") == "");
    CHECK(decision(policy, "torch._utils._rebuild_tensor_v2", "") == "");
}

TEST_CASE("policy: Python 2 and old-torch module names are renamed first") {
    CHECK(canonical_global_name("__builtin__", "set") == "builtins.set");
    CHECK(canonical_global_name("copy_reg", "_reconstructor") == "copyreg._reconstructor");
    CHECK(canonical_global_name("torch.tensor", "_rebuild_from_type_v2") ==
          "torch._tensor._rebuild_from_type_v2");
    CHECK(canonical_global_name("builtins", "set") == "builtins.set");
    // Only whole module names are renamed.
    CHECK(canonical_global_name("__builtin__x", "set") == "__builtin__x.set");
    CHECK(canonical_global_name("torch.tensors", "x") == "torch.tensors.x");
    CHECK(canonical_global_name("torch.tensor.sub", "x") == "torch.tensor.sub.x");
    CHECK(canonical_global_name("torch", "tensor") == "torch.tensor");

    const auto weights = load("weights");
    CHECK(decision(weights, "__builtin__", "set") == "set");
    CHECK(decision(weights, "__builtin__", "frozenset") == "frozenset");
    CHECK(decision(weights, "torch.tensor", "_rebuild_from_type_v2") == "rebuild_from_type_v2");
    CHECK(decision(weights, "torch._tensor", "_rebuild_from_type_v2") == "rebuild_from_type_v2");
    CHECK(decision(weights, "__builtin__", "eval") == "");
    const auto copyreg =
        Policy::from_json(R"({"name":"n","globals":{"copyreg._reconstructor":"record"}})");
    CHECK(decision(copyreg, "copy_reg", "_reconstructor") == "record");
    CHECK(decision(copyreg, "copyreg", "_reconstructor") == "record");
}

TEST_CASE("policy: load_policy_text resolves extends (checkpoint extends weights)") {
    const std::string weights_raw = read_text(kPolicyDir + "/weights.json");
    const std::string checkpoint_raw = read_text(kPolicyDir + "/checkpoint.json");
    CHECK_FALSE(Policy::extends_of(weights_raw).has_value());
    REQUIRE(Policy::extends_of(checkpoint_raw) == std::optional<std::string>("weights"));

    const std::string merged = picklejail::sandbox::load_policy_text("checkpoint", kPolicyDir);
    CHECK_FALSE(Policy::extends_of(merged).has_value());  // self-contained for the worker
    const auto checkpoint = Policy::from_json(merged);
    const auto weights = load("weights");
    CHECK(checkpoint.name() == "checkpoint");
    CHECK(weights.name() == "weights");
    CHECK(checkpoint.numpy_arrays_as_tensors());
    CHECK_FALSE(weights.numpy_arrays_as_tensors());
    // Every weights global is inherited unchanged, and checkpoint adds its own.
    for (const auto& [name, handler] : weights.globals()) {
        INFO(name);
        REQUIRE(checkpoint.globals().count(name) == 1);
        CHECK(checkpoint.globals().at(name) == handler);
    }
    const auto own = nlohmann::json::parse(checkpoint_raw)["globals"];
    CHECK(checkpoint.globals().size() == weights.globals().size() + own.size());
    // The same result when the caller supplies the base itself.
    const auto direct = Policy::from_json(checkpoint_raw, &weights);
    CHECK(direct.globals() == checkpoint.globals());
    CHECK(direct.numpy_arrays_as_tensors());

    // A .json path works like a name; bad names and missing files are refused.
    CHECK(Policy::from_json(picklejail::sandbox::load_policy_text(kPolicyDir + "/checkpoint.json",
                                                                  "/nonexistent"))
              .globals() == checkpoint.globals());
    CHECK(code_of([] {
              (void)picklejail::sandbox::load_policy_text("no_such_policy", kPolicyDir);
          }) == "invalid_request");
    CHECK(code_of([] { (void)picklejail::sandbox::load_policy_text("we ights", kPolicyDir); }) ==
          "invalid_request");
    CHECK(code_of([] { (void)picklejail::sandbox::load_policy_text("", kPolicyDir); }) ==
          "invalid_request");
}

TEST_CASE("policy: every global in weights.json maps to a known handler") {
    const auto raw = nlohmann::json::parse(read_text(kPolicyDir + "/weights.json"));
    const auto weights = load("weights");
    REQUIRE(raw["globals"].is_object());
    CHECK(weights.globals().size() == raw["globals"].size());
    for (const auto& [name, handler_json] : raw["globals"].items()) {
        INFO(name << " -> " << handler_json.dump());
        REQUIRE(handler_json.is_string());
        const auto handler = handler_from_name(handler_json.get<std::string>());
        REQUIRE(handler.has_value());
        REQUIRE(weights.globals().count(name) == 1);
        CHECK(weights.globals().at(name) == *handler);
        // Exact dotted names: resolvable by splitting at the last dot.
        const auto dot = name.rfind('.');
        REQUIRE(dot != std::string::npos);
        CHECK(weights.resolve(name.substr(0, dot), name.substr(dot + 1)) == handler);
        CHECK(name.find('*') == std::string::npos);
    }
    // Same for checkpoint's own additions.
    const auto checkpoint_raw = nlohmann::json::parse(read_text(kPolicyDir + "/checkpoint.json"));
    for (const auto& [name, handler_json] : checkpoint_raw["globals"].items()) {
        INFO(name);
        CHECK(handler_from_name(handler_json.get<std::string>()).has_value());
    }
}

TEST_CASE("policy: weights and checkpoint decisions") {
    const auto weights = load("weights");
    const auto checkpoint = load("checkpoint");
    struct Row {
        std::string_view module, name, under_weights, under_checkpoint;
    };
    const Row rows[] = {
        // Tensors and their containers: both.
        {"collections", "OrderedDict", "ordered_dict", "ordered_dict"},
        {"torch._utils", "_rebuild_tensor_v2", "rebuild_tensor_v2", "rebuild_tensor_v2"},
        {"torch._utils", "_rebuild_parameter", "rebuild_parameter", "rebuild_parameter"},
        {"torch", "FloatStorage", "storage_class", "storage_class"},
        {"torch.storage", "UntypedStorage", "storage_class", "storage_class"},
        {"torch", "bfloat16", "dtype", "dtype"},
        {"torch", "Size", "torch_size", "torch_size"},
        {"_codecs", "encode", "codecs_encode", "codecs_encode"},
        {"torch._utils", "_rebuild_qtensor", "rebuild_qtensor", "rebuild_qtensor"},
        {"torch._utils", "_rebuild_nested_tensor", "unsupported_tensor", "unsupported_tensor"},
        // Training-checkpoint data: checkpoint only.
        {"argparse", "Namespace", "", "record"},
        {"numpy.core.multiarray", "_reconstruct", "", "numpy_reconstruct"},
        {"numpy._core.multiarray", "_reconstruct", "", "numpy_reconstruct"},
        {"numpy.core.multiarray", "scalar", "", "numpy_scalar"},
        {"numpy", "ndarray", "", "numpy_ndarray"},
        {"numpy", "dtype", "", "numpy_dtype"},
        {"collections", "defaultdict", "", "default_dict"},
        {"builtins", "list", "", "default_factory"},
        {"__builtin__", "dict", "", "default_factory"},
        {"torch.torch_version", "TorchVersion", "", "torch_version"},
        {"omegaconf.dictconfig", "DictConfig", "", "record"},
        // Code: neither.
        {"os", "system", "", ""},
        {"posix", "system", "", ""},
        {"builtins", "eval", "", ""},
        {"builtins", "exec", "", ""},
        {"builtins", "getattr", "", ""},
        {"builtins", "__import__", "", ""},
        {"builtins", "open", "", ""},
        {"subprocess", "Popen", "", ""},
        {"copyreg", "_reconstructor", "", ""},
        {"functools", "partial", "", ""},
        {"numpy", "load", "", ""},
        {"numpy.core.multiarray", "_frombuffer", "", ""},
        {"torch", "load", "", ""},
        {"torch.jit", "load", "", ""},
        {"torch._C", "_set_grad_enabled", "", ""},
        {"torch.nn.modules.linear", "Linear", "", ""},
        {"argparse", "ArgumentParser", "", ""},
    };
    for (const auto& row : rows) {
        INFO(row.module << "." << row.name);
        CHECK(decision(weights, row.module, row.name) == row.under_weights);
        CHECK(decision(checkpoint, row.module, row.name) == row.under_checkpoint);
    }
}
