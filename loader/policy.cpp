#include "loader/policy.hpp"

#include <array>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/error.hpp"

namespace picklejail::loader {
namespace {

using nlohmann::json;

[[noreturn]] void bad_policy(const std::string& why) {
    throw Error(ErrorCode::invalid_request, "invalid policy: " + why);
}

json parse_policy_json(std::string_view text) {
    json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_object()) bad_policy("not a JSON object");
    return doc;
}

// pickle's _compat_pickle.IMPORT_MAPPING (the modules a refusal could be
// dodged through, or that real checkpoints name) and torch's own rename.
constexpr std::array<std::pair<std::string_view, std::string_view>, 15> kModuleRenames{{
    {"__builtin__", "builtins"},
    {"copy_reg", "copyreg"},
    {"cPickle", "pickle"},
    {"exceptions", "builtins"},
    {"commands", "subprocess"},
    {"thread", "_thread"},
    {"Queue", "queue"},
    {"repr", "reprlib"},
    {"cStringIO", "io"},
    {"StringIO", "io"},
    {"UserDict", "collections"},
    {"UserList", "collections"},
    {"UserString", "collections"},
    {"urllib2", "urllib.request"},
    {"torch.tensor", "torch._tensor"},
}};

struct NameRename {
    std::string_view module, name, to_module, to_name;
};

// _compat_pickle.NAME_MAPPING: Python 2 names whose Python 3 home differs.
// Python 3's `int` is pickled for protocol 2 as `__builtin__.long`.
constexpr std::array<NameRename, 15> kNameRenames{{
    {"__builtin__", "xrange", "builtins", "range"},
    {"__builtin__", "reduce", "functools", "reduce"},
    {"__builtin__", "intern", "sys", "intern"},
    {"__builtin__", "unichr", "builtins", "chr"},
    {"__builtin__", "unicode", "builtins", "str"},
    {"__builtin__", "long", "builtins", "int"},
    {"__builtin__", "basestring", "builtins", "str"},
    {"__builtin__", "raw_input", "builtins", "input"},
    {"itertools", "izip", "builtins", "zip"},
    {"itertools", "imap", "builtins", "map"},
    {"itertools", "ifilter", "builtins", "filter"},
    {"itertools", "ifilterfalse", "itertools", "filterfalse"},
    {"itertools", "izip_longest", "itertools", "zip_longest"},
    {"UserDict", "IterableUserDict", "collections", "UserDict"},
    {"_socket", "fromfd", "socket", "fromfd"},
}};

std::vector<std::string> refused_names(const json& list, const char* what) {
    if (!list.is_array()) bad_policy(std::string("\"refused\".") + what + " must be an array");
    std::vector<std::string> names;
    for (const auto& entry : list) {
        if (!entry.is_string() || entry.get<std::string>().empty())
            bad_policy(std::string("\"refused\".") + what + " holds a non-name");
        const auto name = entry.get<std::string>();
        if (name.find('*') != std::string::npos || name.front() == '.' || name.back() == '.')
            bad_policy("refused entry \"" + name + "\" is not a dotted name");
        names.push_back(name);
    }
    return names;
}

// "inert" and "refused" are inherited from the base and may only be widened:
// a policy that extends inert cannot take a refusal back.
void read_inert_fields(const json& doc, bool& inert, std::vector<std::string>& refused) {
    if (doc.contains("inert")) {
        if (!doc["inert"].is_boolean()) bad_policy("\"inert\" must be a boolean");
        if (!doc["inert"].get<bool>() && inert) bad_policy("\"inert\" cannot be turned off");
        inert = doc["inert"].get<bool>();
    }
    if (!doc.contains("refused")) return;
    const auto& section = doc["refused"];
    if (!section.is_object()) bad_policy("\"refused\" must be an object");
    for (const auto& [key, list] : section.items()) {
        if (key != "modules" && key != "globals") bad_policy("unknown \"refused\" key " + key);
        for (auto& name : refused_names(list, key.c_str())) refused.push_back(std::move(name));
    }
}

}  // namespace

CanonicalGlobal canonical_global(std::string_view module, std::string_view name) {
    for (const auto& rename : kNameRenames) {
        if (module == rename.module && name == rename.name)
            return {std::string(rename.to_module), std::string(rename.to_name)};
    }
    for (const auto& [from, to] : kModuleRenames) {
        if (module == from) module = to;
    }
    return {std::string(module), std::string(name)};
}

std::string canonical_global_name(std::string_view module, std::string_view name) {
    return canonical_global(module, name).full();
}

std::optional<std::string> Policy::extends_of(std::string_view json_text) {
    const json doc = parse_policy_json(json_text);
    if (!doc.contains("extends")) return std::nullopt;
    if (!doc["extends"].is_string()) bad_policy("\"extends\" must be a string");
    return doc["extends"].get<std::string>();
}

Policy Policy::from_json(std::string_view json_text, const Policy* base) {
    const json doc = parse_policy_json(json_text);
    Policy policy;
    if (base != nullptr) {
        policy.globals_ = base->globals_;
        policy.numpy_arrays_as_tensors_ = base->numpy_arrays_as_tensors_;
        policy.inert_ = base->inert_;
        policy.refused_ = base->refused_;
    } else if (doc.contains("extends")) {
        bad_policy("\"extends\" given but the base policy was not supplied");
    }
    if (!doc.contains("name") || !doc["name"].is_string()) bad_policy("missing string \"name\"");
    policy.name_ = doc["name"].get<std::string>();
    if (!doc.contains("globals") || !doc["globals"].is_object()) {
        bad_policy("missing object \"globals\"");
    }
    for (const auto& [global, handler_json] : doc["globals"].items()) {
        if (!handler_json.is_string()) bad_policy("handler of " + global + " must be a string");
        const auto handler = handler_from_name(handler_json.get<std::string>());
        if (!handler) bad_policy("unknown handler \"" + handler_json.get<std::string>() + "\"");
        if (global.find('*') != std::string::npos || global.find('.') == std::string::npos) {
            bad_policy("\"" + global + "\" is not an exact module.name");
        }
        policy.globals_[global] = *handler;
    }
    read_inert_fields(doc, policy.inert_, policy.refused_);
    if (doc.contains("numpy_arrays_as_tensors")) {
        if (!doc["numpy_arrays_as_tensors"].is_boolean()) {
            bad_policy("\"numpy_arrays_as_tensors\" must be a boolean");
        }
        policy.numpy_arrays_as_tensors_ = doc["numpy_arrays_as_tensors"].get<bool>();
    }
    return policy;
}

std::optional<std::string> Policy::refusal(std::string_view full_name) const {
    for (const auto& prefix : refused_) {
        if (full_name.starts_with(prefix) &&
            (full_name.size() == prefix.size() || full_name[prefix.size()] == '.')) {
            return prefix;
        }
    }
    return std::nullopt;
}

std::optional<Handler> Policy::resolve(std::string_view module, std::string_view name) const {
    const auto it = globals_.find(canonical_global_name(module, name));
    if (it == globals_.end()) return std::nullopt;
    return it->second;
}

}  // namespace picklejail::loader
