#include "loader/persistent_id.hpp"

#include "loader/tensor_kinds.hpp"

namespace picklejail::loader {

ValuePtr legacy_module_class(const ValuePtr& pid) {
    const auto* tuple = pid->as<TupleValue>();
    if (tuple == nullptr || tuple->items.size() != 4) return nullptr;
    const auto* tag = tuple->items[0]->as<StringValue>();
    if (tag == nullptr || tag->utf8 != "module" || !tuple->items[1]->is<GlobalValue>())
        return nullptr;
    return tuple->items[1];
}

StoragePid parse_storage_pid(const ValuePtr& pid, std::size_t expected_arity,
                             const CallContext& ctx) {
    const auto* tuple = pid->as<TupleValue>();
    if (tuple == nullptr) {
        fail_at(ctx, ErrorCode::malformed,
                "persistent id is a " + describe(*pid) + ", not a storage tuple");
    }
    const auto& items = tuple->items;
    const auto* tag = items.empty() ? nullptr : items[0]->as<StringValue>();
    if (tag == nullptr || tag->utf8 != "storage") {
        fail_at(ctx, ErrorCode::malformed, "only persistent ids of storages are allowed");
    }
    if (items.size() != expected_arity) {
        fail_at(ctx, ErrorCode::malformed,
                "storage persistent id has " + std::to_string(items.size()) + " fields, expected " +
                    std::to_string(expected_arity));
    }
    const auto* storage_class = items[1]->as<GlobalValue>();
    if (storage_class == nullptr || storage_class->handler != Handler::storage_class) {
        fail_at(ctx, ErrorCode::malformed,
                "storage type in a persistent id is a " + describe(*items[1]));
    }
    const auto dot = storage_class->name.rfind('.');
    const auto class_name = std::string_view(storage_class->name).substr(dot + 1);
    const auto quantized = quantized_storage_repr(class_name);
    const auto dtype = quantized ? quantized : dtype_from_storage_class(class_name);
    if (!dtype) {
        fail_at(ctx, ErrorCode::unsupported,
                "storage class " + storage_class->name + " has no safetensors dtype");
    }
    const auto* key = items[2]->as<StringValue>();
    const auto* location = items[3]->as<StringValue>();
    const auto numel = as_int(*items[4]);
    if (key == nullptr || location == nullptr || !numel || *numel < 0) {
        fail_at(ctx, ErrorCode::malformed, "storage persistent id fields have the wrong types");
    }
    if (expected_arity == 6 && !items[5]->is<NoneValue>()) {
        fail_at(ctx, ErrorCode::unsupported,
                "legacy storage views (pre-0.4 view_metadata) are not supported");
    }
    return {key->utf8, *dtype, static_cast<std::uint64_t>(*numel), location->utf8,
            quantized.has_value()};
}

}  // namespace picklejail::loader
