#include "loader/global_calls.hpp"

#include "loader/inert_objects.hpp"
#include "loader/numpy_values.hpp"
#include "loader/tensor_kinds.hpp"
#include "loader/tensor_rebuild.hpp"

namespace picklejail::loader {
namespace {

const std::vector<ValuePtr>& tuple_items(const ValuePtr& args) {
    return args->as<TupleValue>()->items;
}

void expect_arity(const GlobalValue& callee, const std::vector<ValuePtr>& items, std::size_t low,
                  std::size_t high, const CallContext& ctx) {
    if (items.size() < low || items.size() > high) {
        fail_at(ctx, ErrorCode::malformed,
                callee.name + " called with " + std::to_string(items.size()) + " arguments");
    }
}

bool truthy(const ValuePtr& value) {
    const auto number = as_int(*value);
    return number && *number != 0;
}

std::optional<DType> dtype_arg(const ValuePtr& value) {
    if (const auto* dtype = value->as<DTypeValue>()) return dtype->dtype;
    return std::nullopt;
}

ValuePtr make_dict_from_pairs(const GlobalValue& callee, const std::vector<ValuePtr>& items,
                              DictValue::Kind kind, CallContext& ctx) {
    DictValue dict;
    dict.kind = kind;
    if (!items.empty()) {
        const auto& source = items.front();
        if (const auto* other = source->as<DictValue>()) {
            dict.items = other->items;
        } else {
            const std::vector<ValuePtr>* pairs = nullptr;
            if (const auto* list = source->as<ListValue>()) pairs = &list->items;
            if (const auto* tuple = source->as<TupleValue>()) pairs = &tuple->items;
            if (pairs == nullptr)
                fail_at(ctx, ErrorCode::malformed,
                        callee.name + " argument is not a list of pairs");
            for (const auto& pair : *pairs) {
                const auto* kv = pair->as<TupleValue>();
                const auto* kv_list = pair->as<ListValue>();
                const auto* kv_items = kv ? &kv->items : kv_list ? &kv_list->items : nullptr;
                if (kv_items == nullptr || kv_items->size() != 2) {
                    fail_at(ctx, ErrorCode::malformed,
                            callee.name + " item is not a (key, value) pair");
                }
                dict.items.emplace_back((*kv_items)[0], (*kv_items)[1]);
            }
        }
    }
    return ctx.arena.make(std::move(dict));
}

ValuePtr rebuild_from_tensor_args(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                                  CallContext& ctx) {
    TensorArgs args;
    switch (callee.handler) {
        case Handler::rebuild_tensor:
            expect_arity(callee, a, 4, 4, ctx);
            break;
        case Handler::rebuild_tensor_v2:
            expect_arity(callee, a, 6, 7, ctx);
            args.requires_grad = truthy(a[4]);
            if (a.size() == 7) args.metadata = a[6];
            break;
        case Handler::rebuild_tensor_v3:
            expect_arity(callee, a, 7, 8, ctx);
            args.requires_grad = truthy(a[4]);
            args.dtype = dtype_arg(a[6]);
            if (!args.dtype)
                fail_at(ctx, ErrorCode::malformed,
                        callee.name + " dtype argument is not a torch dtype");
            if (a.size() == 8) args.metadata = a[7];
            break;
        default:
            fail_at(ctx, ErrorCode::internal, "not a tensor rebuild: " + callee.name);
    }
    args.storage = a[0];
    args.offset = a[1];
    args.size = a[2];
    args.stride = a[3];
    return rebuild_tensor(args, ctx);
}

ValuePtr as_parameter(const ValuePtr& data, bool requires_grad, CallContext& ctx) {
    if (const auto* other_kind = data->as<TensorKindValue>())
        return tensor_kind_as_parameter(*other_kind, requires_grad, ctx);
    const auto* tensor = data->as<TensorValue>();
    if (tensor == nullptr)
        fail_at(ctx, ErrorCode::malformed,
                "Parameter data is a " + describe(*data) + ", not a tensor");
    TensorValue param = *tensor;
    param.parameter = true;
    param.requires_grad = requires_grad;
    param.id = ctx.next_tensor_id++;
    return ctx.arena.make(std::move(param));
}

bool is_tensor_rebuild(Handler handler) {
    return handler == Handler::rebuild_tensor || handler == Handler::rebuild_tensor_v2 ||
           handler == Handler::rebuild_tensor_v3 || handler == Handler::rebuild_parameter ||
           handler == Handler::rebuild_parameter_with_state || is_tensor_kind_rebuild(handler);
}

ValuePtr rebuild_from_type_v2(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                              CallContext& ctx) {
    expect_arity(callee, a, 4, 4, ctx);
    const auto* func = a[0]->as<GlobalValue>();
    const auto* new_type = a[1]->as<GlobalValue>();
    if (func == nullptr || !is_tensor_rebuild(func->handler)) {
        fail_at(ctx, ErrorCode::forbidden_global,
                callee.name + " may only wrap a tensor rebuild function, not " + describe(*a[0]));
    }
    if (new_type == nullptr || (new_type->handler != Handler::tensor_class &&
                                new_type->handler != Handler::parameter_class)) {
        fail_at(ctx, ErrorCode::unsupported,
                "tensor subclass " + describe(*a[1]) + " is not a plain Tensor or Parameter");
    }
    if (!a[2]->is<TupleValue>())
        fail_at(ctx, ErrorCode::malformed, callee.name + " args are not a tuple");
    ValuePtr tensor = call_global(*func, a[2], ctx);
    // The state holds the tensor's Python __dict__; weights do not depend on it.
    if (new_type->handler == Handler::parameter_class) {
        if (const auto* plain = tensor->as<TensorValue>(); plain && !plain->parameter)
            return as_parameter(tensor, plain->requires_grad, ctx);
        if (const auto* other = tensor->as<TensorKindValue>(); other && !other->parameter)
            return as_parameter(tensor, other->requires_grad, ctx);
    }
    return tensor;
}

ValuePtr codecs_encode(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                       CallContext& ctx) {
    expect_arity(callee, a, 1, 2, ctx);
    const auto* text = a[0]->as<StringValue>();
    const auto* encoding = a.size() == 2 ? a[1]->as<StringValue>() : nullptr;
    if (text == nullptr || encoding == nullptr ||
        (encoding->utf8 != "latin1" && encoding->utf8 != "latin-1")) {
        fail_at(ctx, ErrorCode::unsupported, callee.name + " is only allowed as (str, 'latin1')");
    }
    // UTF-8 → Latin-1: every code point must be below 256.
    std::string out;
    const auto& s = text->utf8;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            out.push_back(static_cast<char>(c));
        } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size() && c <= 0xC3) {
            out.push_back(static_cast<char>(((c & 0x1F) << 6) |
                                            (static_cast<unsigned char>(s[i + 1]) & 0x3F)));
            ++i;
        } else {
            fail_at(ctx, ErrorCode::malformed, callee.name + ": text is not Latin-1");
        }
    }
    return ctx.arena.make(BytesValue{std::move(out), false});
}

ValuePtr make_collection(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                         CallContext& ctx) {
    expect_arity(callee, a, 0, 1, ctx);
    std::vector<ValuePtr> items;
    if (!a.empty()) {
        if (const auto* list = a[0]->as<ListValue>())
            items = list->items;
        else if (const auto* tuple = a[0]->as<TupleValue>())
            items = tuple->items;
        else if (const auto* set = a[0]->as<SetValue>())
            items = set->items;
        else if (const auto* bytes = a[0]->as<BytesValue>();
                 bytes && callee.handler == Handler::builtins_bytearray) {
            return ctx.arena.make(BytesValue{bytes->bytes, true});
        } else {
            fail_at(ctx, ErrorCode::malformed, callee.name + " argument is a " + describe(*a[0]));
        }
    }
    if (callee.handler == Handler::builtins_bytearray) {
        std::string bytes;
        for (const auto& item : items) {
            const auto number = as_int(*item);
            if (!number || *number < 0 || *number > 255)
                fail_at(ctx, ErrorCode::malformed, "bytearray item out of range");
            bytes.push_back(static_cast<char>(*number));
        }
        return ctx.arena.make(BytesValue{std::move(bytes), true});
    }
    return ctx.arena.make(
        SetValue{std::move(items), callee.handler == Handler::builtins_frozenset});
}

double number_arg(const ValuePtr& value, const CallContext& ctx) {
    if (const auto* f = value->as<FloatValue>()) return f->value;
    if (const auto i = as_int(*value)) return static_cast<double>(*i);
    fail_at(ctx, ErrorCode::malformed, "complex() argument is a " + describe(*value));
}

}  // namespace

void fail_at(const CallContext& ctx, ErrorCode code, const std::string& message) {
    throw Error(code, message + " (pickle offset " + std::to_string(ctx.offset) + ")");
}

ValuePtr call_global(const GlobalValue& callee, const ValuePtr& args, CallContext& ctx) {
    const auto& a = tuple_items(args);
    switch (callee.handler) {
        case Handler::ordered_dict:
            return make_dict_from_pairs(callee, a, DictValue::Kind::ordered_dict, ctx);
        case Handler::counter:
            return make_dict_from_pairs(callee, a, DictValue::Kind::counter, ctx);
        case Handler::default_dict: {
            if (!a.empty()) {
                const auto* factory = a[0]->as<GlobalValue>();
                if (!a[0]->is<NoneValue>() &&
                    (factory == nullptr || (factory->handler != Handler::default_factory &&
                                            factory->handler != Handler::builtins_set))) {
                    fail_at(ctx, ErrorCode::forbidden_global,
                            "defaultdict factory " + describe(*a[0]) + " is not allowed");
                }
            }
            DictValue dict;
            dict.kind = DictValue::Kind::default_dict;
            if (!a.empty()) {
                if (const auto* factory = a[0]->as<GlobalValue>()) {
                    const auto dot = factory->name.rfind('.');
                    dict.factory = factory->name.substr(dot == std::string::npos ? 0 : dot + 1);
                }
            }
            return ctx.arena.make(std::move(dict));
        }
        case Handler::rebuild_tensor:
        case Handler::rebuild_tensor_v2:
        case Handler::rebuild_tensor_v3:
            return rebuild_from_tensor_args(callee, a, ctx);
        case Handler::rebuild_parameter:
            expect_arity(callee, a, 3, 3, ctx);
            return as_parameter(a[0], truthy(a[1]), ctx);
        case Handler::rebuild_parameter_with_state:
            expect_arity(callee, a, 4, 4, ctx);
            return as_parameter(a[0], truthy(a[1]), ctx);
        case Handler::rebuild_from_type_v2:
            return rebuild_from_type_v2(callee, a, ctx);
        case Handler::torch_size: {
            expect_arity(callee, a, 0, 1, ctx);
            if (a.empty()) return ctx.arena.make(TupleValue{{}, true});
            if (const auto* tuple = a[0]->as<TupleValue>())
                return ctx.arena.make(TupleValue{tuple->items, true});
            if (const auto* list = a[0]->as<ListValue>())
                return ctx.arena.make(TupleValue{list->items, true});
            fail_at(ctx, ErrorCode::malformed, "torch.Size argument is a " + describe(*a[0]));
        }
        case Handler::torch_device: {
            expect_arity(callee, a, 1, 2, ctx);
            const auto* spec = a[0]->as<StringValue>();
            if (spec == nullptr)
                fail_at(ctx, ErrorCode::malformed, "torch.device argument is not a str");
            std::string text = spec->utf8;
            if (a.size() == 2) {
                const auto index = as_int(*a[1]);
                if (!index) fail_at(ctx, ErrorCode::malformed, "torch.device index is not an int");
                // Appended piece by piece: ":" + std::to_string(...) trips g++ 12's
                // false -Wrestrict at -O3 (GCC bug 105329).
                text.push_back(':');
                text += std::to_string(*index);
            }
            return ctx.arena.make(DeviceValue{std::move(text)});
        }
        case Handler::codecs_encode:
            return codecs_encode(callee, a, ctx);
        case Handler::builtins_set:
        case Handler::builtins_frozenset:
        case Handler::builtins_bytearray:
            return make_collection(callee, a, ctx);
        case Handler::builtins_complex: {
            expect_arity(callee, a, 1, 2, ctx);
            return ctx.arena.make(
                ComplexValue{number_arg(a[0], ctx), a.size() == 2 ? number_arg(a[1], ctx) : 0.0});
        }
        case Handler::record_class:
        case Handler::reference:
            return ctx.arena.make(RecordValue::of(callee.name, args));
        case Handler::getattr:
            return inert_getattr(callee, a, ctx);
        case Handler::reconstructor:
            return inert_reconstruct(callee, a, ctx);
        case Handler::torch_version: {
            expect_arity(callee, a, 1, 1, ctx);
            if (!a[0]->is<StringValue>())
                fail_at(ctx, ErrorCode::malformed, "TorchVersion argument is not a str");
            return a[0];
        }
        case Handler::numpy_reconstruct:
            return numpy_reconstruct(callee, a, ctx);
        case Handler::numpy_dtype:
            return numpy_dtype(callee, a, ctx);
        case Handler::numpy_scalar:
            return numpy_scalar(callee, a, ctx);
        case Handler::rebuild_qtensor:
        case Handler::rebuild_sparse_tensor:
        case Handler::rebuild_sparse_csr:
        case Handler::rebuild_meta_tensor:
        case Handler::get_layout:
            return call_tensor_kind(callee, a, ctx);
        case Handler::unsupported_tensor:
            fail_at(ctx, ErrorCode::unsupported,
                    "unsupported tensor kind: " + callee.name +
                        " (nested, wrapper-subclass and device-numpy tensors are not loaded)");
        case Handler::tensor_class:
        case Handler::parameter_class:
        case Handler::storage_class:
        case Handler::dtype:
        case Handler::default_factory:
        case Handler::numpy_ndarray:
        case Handler::layout:
        case Handler::qscheme:
            break;
    }
    fail_at(ctx, ErrorCode::forbidden_global,
            "global " + callee.name + " may not be called (REDUCE) under policy \"" +
                ctx.policy.name() + "\"");
}

ValuePtr new_object(const GlobalValue& cls, const ValuePtr& args, const ValuePtr& kwargs,
                    CallContext& ctx) {
    const auto& a = tuple_items(args);
    const auto* keywords = kwargs ? kwargs->as<DictValue>() : nullptr;
    if (kwargs &&
        (keywords == nullptr || (!keywords->items.empty() && cls.handler != Handler::reference))) {
        fail_at(ctx, ErrorCode::unsupported,
                "NEWOBJ_EX of " + cls.name + " with keyword arguments");
    }
    switch (cls.handler) {
        case Handler::record_class:
            return ctx.arena.make(RecordValue::of(cls.name, args));
        case Handler::reference: {
            auto record = RecordValue::of(cls.name, args);
            if (keywords != nullptr && !keywords->items.empty()) record.kwargs = kwargs;
            return ctx.arena.make(std::move(record));
        }
        case Handler::ordered_dict:
        case Handler::counter: {
            DictValue dict;
            dict.kind = cls.handler == Handler::counter ? DictValue::Kind::counter
                                                        : DictValue::Kind::ordered_dict;
            return ctx.arena.make(std::move(dict));
        }
        case Handler::parameter_class:
            expect_arity(cls, a, 1, 2, ctx);
            return as_parameter(a[0], a.size() < 2 || truthy(a[1]), ctx);
        case Handler::torch_version:
            return call_global(cls, args, ctx);
        default:
            break;
    }
    fail_at(ctx, ErrorCode::forbidden_global,
            "global " + cls.name + " may not be instantiated (NEWOBJ) under policy \"" +
                ctx.policy.name() + "\"");
}

void build(const ValuePtr& target, const ValuePtr& state, CallContext& ctx) {
    if (auto* dict = target->as<DictValue>()) {
        // OrderedDict state is its __dict__ (state_dict()._metadata); a
        // (dict, slots) pair is the protocol-2 form of the same thing.
        ValuePtr attributes = state;
        if (const auto* pair = state->as<TupleValue>(); pair && pair->items.size() == 2)
            attributes = pair->items[0];
        if (!attributes->is<DictValue>() && !attributes->is<NoneValue>()) {
            fail_at(ctx, ErrorCode::malformed,
                    "BUILD state for a dict is a " + describe(*attributes));
        }
        dict->attributes = attributes->is<NoneValue>() ? nullptr : attributes;
        return;
    }
    if (auto* record = target->as<RecordValue>()) {
        if (is_numpy_record(*record)) {
            numpy_build(target, state, ctx);
            return;
        }
        if (record->state)
            fail_at(ctx, ErrorCode::malformed, "BUILD twice on " + record->class_name);
        record->state = state;
        return;
    }
    if (target->is<TensorValue>() || target->is<TensorKindValue>()) {
        // Parameter.__setstate__ / tensor __dict__: no effect on the weights.
        if (state->is<DictValue>() || state->is<NoneValue>()) return;
    }
    fail_at(ctx, ErrorCode::forbidden_global,
            "BUILD on a " + describe(*target) + " is not allowed");
}

}  // namespace picklejail::loader
