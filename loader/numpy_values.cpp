#include "loader/numpy_values.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include "loader/tensor_rebuild.hpp"

namespace picklejail::loader {
namespace {

constexpr std::string_view kArrayRecord = "numpy.ndarray";
constexpr std::string_view kDTypeRecord = "numpy.dtype";

struct TypeCode {
    std::string_view code;
    DType dtype;
};
constexpr std::array<TypeCode, 13> kTypeCodes{{
    {"b1", DType::boolean},
    {"i1", DType::int8},
    {"u1", DType::uint8},
    {"i2", DType::int16},
    {"u2", DType::uint16},
    {"i4", DType::int32},
    {"u4", DType::uint32},
    {"i8", DType::int64},
    {"u8", DType::uint64},
    {"f2", DType::float16},
    {"f4", DType::float32},
    {"f8", DType::float64},
    {"c8", DType::complex64},
}};

struct NumpyType {
    DType dtype;
    bool big_endian;
};

// A dtype record: args ("f8", False, True), state (3, "<", ...).
NumpyType numpy_type_of(const ValuePtr& value, const CallContext& ctx) {
    const auto* record = value->as<RecordValue>();
    if (record == nullptr || record->class_name != kDTypeRecord) {
        fail_at(ctx, ErrorCode::malformed, "numpy dtype expected, got " + describe(*value));
    }
    const auto& args = record->args->as<TupleValue>()->items;
    const auto* code = args.empty() ? nullptr : args[0]->as<StringValue>();
    if (code == nullptr) fail_at(ctx, ErrorCode::malformed, "numpy dtype without a type code");
    NumpyType out{DType::uint8, false};
    bool found = false;
    for (const auto& row : kTypeCodes) {
        if (row.code == code->utf8) {
            out.dtype = row.dtype;
            found = true;
        }
    }
    if (code->utf8 == "c16") {
        out.dtype = DType::complex128;
        found = true;
    }
    if (!found)
        fail_at(ctx, ErrorCode::unsupported,
                "numpy dtype \"" + code->utf8 + "\" is not a tensor dtype");
    if (record->state) {
        const auto* state = record->state->as<TupleValue>();
        const auto* order =
            state && state->items.size() > 1 ? state->items[1]->as<StringValue>() : nullptr;
        out.big_endian = order != nullptr && order->utf8 == ">";
    }
    return out;
}

std::string_view bytes_of(const ValuePtr& value, const CallContext& ctx) {
    if (const auto* bytes = value->as<BytesValue>()) return bytes->bytes;
    // Protocol-2 numpy writes raw data as a latin-1 str only through _codecs.encode.
    fail_at(ctx, ErrorCode::unsupported,
            "numpy data is a " + describe(*value) + " (object arrays are not loaded)");
}

std::vector<std::uint64_t> shape_of(const ValuePtr& value, const CallContext& ctx) {
    const auto* tuple = value->as<TupleValue>();
    if (tuple == nullptr) fail_at(ctx, ErrorCode::malformed, "numpy shape is not a tuple");
    if (tuple->items.size() > ctx.limits.max_ndim)
        fail_at(ctx, ErrorCode::too_large, "numpy array rank above max_ndim");
    std::vector<std::uint64_t> shape;
    for (const auto& item : tuple->items) {
        const auto dim = as_int(*item);
        if (!dim || *dim < 0) fail_at(ctx, ErrorCode::malformed, "numpy shape holds a non-size");
        shape.push_back(static_cast<std::uint64_t>(*dim));
    }
    return shape;
}

template <typename T>
T load_scalar(std::string_view raw, bool big_endian) {
    std::array<char, sizeof(T)> buffer{};
    std::memcpy(buffer.data(), raw.data(), sizeof(T));
    if (big_endian) std::reverse(buffer.begin(), buffer.end());
    T value;
    std::memcpy(&value, buffer.data(), sizeof(T));
    return value;
}

ValuePtr scalar_value(const NumpyType& type, std::string_view raw, CallContext& ctx) {
    if (raw.size() != info(type.dtype).element_size)
        fail_at(ctx, ErrorCode::malformed, "numpy scalar has the wrong size");
    const bool be = type.big_endian;
    switch (type.dtype) {
        case DType::boolean:
            return ctx.arena.make(BoolValue{raw[0] != 0});
        case DType::int8:
            return ctx.arena.make(IntValue{load_scalar<std::int8_t>(raw, be)});
        case DType::uint8:
            return ctx.arena.make(IntValue{load_scalar<std::uint8_t>(raw, be)});
        case DType::int16:
            return ctx.arena.make(IntValue{load_scalar<std::int16_t>(raw, be)});
        case DType::uint16:
            return ctx.arena.make(IntValue{load_scalar<std::uint16_t>(raw, be)});
        case DType::int32:
            return ctx.arena.make(IntValue{load_scalar<std::int32_t>(raw, be)});
        case DType::uint32:
            return ctx.arena.make(IntValue{load_scalar<std::uint32_t>(raw, be)});
        case DType::int64:
            return ctx.arena.make(IntValue{load_scalar<std::int64_t>(raw, be)});
        case DType::float32:
            return ctx.arena.make(FloatValue{load_scalar<float>(raw, be)});
        case DType::float64:
            return ctx.arena.make(FloatValue{load_scalar<double>(raw, be)});
        default:
            break;
    }
    fail_at(ctx, ErrorCode::unsupported,
            "numpy scalar of type " + std::string(info(type.dtype).torch_name));
}

}  // namespace

bool is_numpy_record(const RecordValue& record) noexcept {
    return record.class_name == kArrayRecord || record.class_name == kDTypeRecord;
}

ValuePtr numpy_reconstruct(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                           CallContext& ctx) {
    const auto* cls = args.empty() ? nullptr : args[0]->as<GlobalValue>();
    if (cls == nullptr || cls->handler != Handler::numpy_ndarray) {
        fail_at(ctx, ErrorCode::forbidden_global, callee.name + " may only rebuild numpy.ndarray");
    }
    return ctx.arena.make(RecordValue::of(std::string(kArrayRecord), ctx.arena.make(TupleValue{})));
}

ValuePtr numpy_dtype(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                     CallContext& ctx) {
    if (args.empty() || !args[0]->is<StringValue>())
        fail_at(ctx, ErrorCode::malformed, callee.name + " needs a type code");
    return ctx.arena.make(
        RecordValue::of(std::string(kDTypeRecord), ctx.arena.make(TupleValue{args})));
}

ValuePtr numpy_scalar(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                      CallContext& ctx) {
    if (args.size() != 2) fail_at(ctx, ErrorCode::malformed, callee.name + " needs (dtype, bytes)");
    return scalar_value(numpy_type_of(args[0], ctx), bytes_of(args[1], ctx), ctx);
}

void numpy_build(const ValuePtr& target, const ValuePtr& state, CallContext& ctx) {
    auto* record = target->as<RecordValue>();
    if (record->class_name == kDTypeRecord) {
        record->state = state;
        return;
    }
    // ndarray.__setstate__((version, shape, dtype, is_fortran, rawdata))
    const auto* tuple = state->as<TupleValue>();
    if (tuple == nullptr || tuple->items.size() != 5)
        fail_at(ctx, ErrorCode::malformed, "numpy array state is not a 5-tuple");
    const auto& s = tuple->items;
    const auto type = numpy_type_of(s[2], ctx);
    const auto shape = shape_of(s[1], ctx);
    const auto fortran = as_int(*s[3]).value_or(0) != 0;
    // Refuse before copying the array's bytes into a storage nobody will use.
    if (!ctx.policy.numpy_arrays_as_tensors()) {
        fail_at(ctx, ErrorCode::unsupported,
                "numpy array found but policy \"" + ctx.policy.name() +
                    "\" does not turn arrays into tensors");
    }
    ValuePtr tensor =
        tensor_from_bytes(bytes_of(s[4], ctx), type.dtype, shape, fortran, type.big_endian, ctx);
    // Replace the record in place so every memo reference sees the tensor.
    target->v = std::move(tensor->v);
}

}  // namespace picklejail::loader
