#include "loader/inert_objects.hpp"

#include <algorithm>

#include "loader/pickle_vm.hpp"

namespace picklejail::loader {
namespace {

bool is_dunder(std::string_view part) {
    return part.size() > 4 && part.starts_with("__") && part.ends_with("__");
}

// Each dotted component of the qualname, never the module: `__main__.Model`
// is an ordinary class defined in a script.
bool has_dunder_attribute(std::string_view qualname) {
    while (!qualname.empty()) {
        const auto dot = qualname.find('.');
        if (is_dunder(qualname.substr(0, dot))) return true;
        if (dot == std::string_view::npos) break;
        qualname.remove_prefix(dot + 1);
    }
    return false;
}

}  // namespace

void check_name_text(std::string_view text, bool dots, std::string_view what,
                     const CallContext& ctx) {
    const bool clean = std::none_of(text.begin(), text.end(), [dots](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c <= 0x20 || c == 0x7f || (!dots && c == '.');
    });
    if (text.empty() || !clean || !is_valid_utf8(text)) {
        fail_at(ctx, ErrorCode::malformed,
                std::string(what) + " is not a name (empty, not UTF-8, or holding " +
                    (dots ? "" : "a dot, ") + "whitespace or control characters)");
    }
}

void check_reference_name(std::string_view full_name, std::size_t qualname_start,
                          const CallContext& ctx, std::string_view shown_as) {
    const std::string shown(shown_as.empty() ? full_name : shown_as);
    if (const auto entry = ctx.policy.refusal(full_name)) {
        fail_at(ctx, ErrorCode::forbidden_global,
                "global " + shown + " is refused by policy \"" + ctx.policy.name() +
                    "\" (it falls under \"" + *entry + "\")");
    }
    if (qualname_start <= full_name.size() &&
        has_dunder_attribute(full_name.substr(qualname_start))) {
        fail_at(ctx, ErrorCode::forbidden_global,
                "global " + shown +
                    " names a dunder attribute, which only reaches interpreter internals");
    }
}

ValuePtr inert_getattr(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                       CallContext& ctx) {
    if (args.size() < 2 || args.size() > 3) {
        fail_at(ctx, ErrorCode::malformed,
                callee.name + " called with " + std::to_string(args.size()) + " arguments");
    }
    const auto* attribute = args[1]->as<StringValue>();
    if (attribute == nullptr)
        fail_at(ctx, ErrorCode::malformed, callee.name + " attribute name is not a str");
    check_name_text(attribute->utf8, /*dots=*/false, callee.name + " attribute", ctx);
    if (const auto* owner = args[0]->as<GlobalValue>()) {
        const std::string full = owner->name + "." + attribute->utf8;
        // The attribute is part of the qualname whatever the owner was.
        check_reference_name(full, owner->name.size() + 1, ctx);
        const auto dot = full.find('.');
        const auto bound = ctx.policy.resolve(std::string_view(full).substr(0, dot),
                                              std::string_view(full).substr(dot + 1));
        return ctx.arena.make(GlobalValue{bound.value_or(Handler::reference), full});
    }
    if (args[0]->is<RecordValue>()) {
        if (is_dunder(attribute->utf8)) {
            fail_at(ctx, ErrorCode::forbidden_global,
                    callee.name + " of the dunder attribute " + attribute->utf8 + " of a " +
                        describe(*args[0]));
        }
        return ctx.arena.make(MethodValue{args[0], attribute->utf8});
    }
    fail_at(ctx, ErrorCode::forbidden_global,
            callee.name + " on a " + describe(*args[0]) + " (attribute " + attribute->utf8 +
                ") is refused: only references and records have inert attributes");
}

ValuePtr inert_reconstruct(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                           CallContext& ctx) {
    if (args.size() != 3) {
        fail_at(ctx, ErrorCode::malformed,
                callee.name + " called with " + std::to_string(args.size()) + " arguments");
    }
    const auto* cls = args[0]->as<GlobalValue>();
    if (cls == nullptr || cls->handler != Handler::reference) {
        fail_at(ctx, ErrorCode::forbidden_global,
                callee.name + " of a " + describe(*args[0]) + " (only unbound classes)");
    }
    std::vector<ValuePtr> constructor_args;
    if (!args[2]->is<NoneValue>()) constructor_args.push_back(args[2]);
    return ctx.arena.make(
        RecordValue::of(cls->name, ctx.arena.make(TupleValue{std::move(constructor_args)})));
}

}  // namespace picklejail::loader
