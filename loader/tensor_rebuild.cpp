#include "loader/tensor_rebuild.hpp"

#include <cstring>

#include "loader/checked_math.hpp"

namespace picklejail::loader {
namespace {

std::vector<std::uint64_t> int_tuple(const ValuePtr& value, std::string_view what,
                                     const CallContext& ctx) {
    const std::vector<ValuePtr>* items = nullptr;
    if (const auto* tuple = value->as<TupleValue>()) items = &tuple->items;
    if (const auto* list = value->as<ListValue>()) items = &list->items;
    if (items == nullptr) {
        fail_at(ctx, ErrorCode::malformed,
                "tensor " + std::string(what) + " is a " + describe(*value) + ", not a tuple");
    }
    if (items->size() > ctx.limits.max_ndim) {
        fail_at(ctx, ErrorCode::too_large,
                "tensor has " + std::to_string(items->size()) + " dimensions (limit max_ndim " +
                    std::to_string(ctx.limits.max_ndim) + ")");
    }
    std::vector<std::uint64_t> out;
    out.reserve(items->size());
    for (const auto& item : *items) {
        const auto number = as_int(*item);
        if (!number)
            fail_at(ctx, ErrorCode::malformed,
                    "tensor " + std::string(what) + " holds a non-integer");
        if (*number < 0) {
            fail_at(ctx, ErrorCode::malformed,
                    "tensor " + std::string(what) + " holds a negative value (" +
                        std::to_string(*number) + ")");
        }
        out.push_back(static_cast<std::uint64_t>(*number));
    }
    return out;
}

void check_math_bits(const ValuePtr& metadata, const CallContext& ctx) {
    if (!metadata || metadata->is<NoneValue>()) return;
    const auto* dict = metadata->as<DictValue>();
    if (dict == nullptr) fail_at(ctx, ErrorCode::malformed, "tensor metadata is not a dict");
    for (const auto& [key, value] : dict->items) {
        const auto flag = as_int(*value);
        if (flag && *flag == 0) continue;
        const auto* name = key->as<StringValue>();
        fail_at(
            ctx, ErrorCode::unsupported,
            "tensor with math bit \"" + (name ? name->utf8 : std::string("?")) +
                "\" set (conjugate/negative views): save it with .resolve_conj() / .resolve_neg()");
    }
}

// Bytes a strided view reaches: (offset + Σ(size-1)·stride + 1) · element size.
std::uint64_t view_extent_bytes(std::uint64_t offset, const std::vector<std::uint64_t>& shape,
                                const std::vector<std::uint64_t>& stride, std::uint64_t elsize) {
    std::uint64_t last = offset;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        last =
            checked_add(last, checked_mul(shape[i] - 1, stride[i], "tensor view"), "tensor view");
    }
    return checked_mul(checked_add(last, 1, "tensor view"), elsize, "tensor view");
}

void count_tensor(CallContext& ctx) {
    if (++ctx.tensors_built > ctx.limits.max_tensors) {
        fail_at(
            ctx, ErrorCode::too_large,
            "more than " + std::to_string(ctx.limits.max_tensors) + " tensors (limit max_tensors)");
    }
}

}  // namespace

ValuePtr rebuild_tensor(const TensorArgs& args, CallContext& ctx) {
    const auto* storage_ref = args.storage->as<StorageValue>();
    if (storage_ref == nullptr) {
        fail_at(ctx, ErrorCode::malformed,
                "tensor storage argument is a " + describe(*args.storage) + ", not a storage");
    }
    const Storage& storage = ctx.storages.at(storage_ref->index);
    if (storage.quantized != args.quantized) {
        fail_at(ctx, ErrorCode::malformed,
                "storage \"" + storage.key + "\" is " +
                    (storage.quantized ? "quantized but viewed by a plain tensor rebuild"
                                       : "not quantized but viewed by _rebuild_qtensor"));
    }
    DType dtype = storage.dtype;
    if (args.dtype && *args.dtype != storage.dtype) {
        // v3 views a byte (untyped) storage as its own dtype; a typed storage keeps one dtype.
        if (storage.dtype != DType::uint8) {
            fail_at(ctx, ErrorCode::malformed,
                    "storage \"" + storage.key + "\" holds " +
                        std::string(info(storage.dtype).torch_name) + " but a tensor views it as " +
                        std::string(info(*args.dtype).torch_name));
        }
        dtype = *args.dtype;
    }
    const auto offset = as_int(*args.offset);
    if (!offset || *offset < 0)
        fail_at(ctx, ErrorCode::malformed, "tensor storage offset is not a non-negative int");
    auto shape = int_tuple(args.size, "size", ctx);
    auto stride = int_tuple(args.stride, "stride", ctx);
    if (shape.size() != stride.size()) {
        fail_at(ctx, ErrorCode::malformed, "tensor size and stride have different lengths");
    }
    check_math_bits(args.metadata, ctx);
    count_tensor(ctx);

    const std::uint64_t elsize = info(dtype).element_size;
    std::uint64_t numel = 1;
    for (const auto dim : shape) numel = checked_mul(numel, dim, "tensor element count");
    const std::uint64_t nbytes = checked_mul(numel, elsize, "tensor byte size");
    if (nbytes > ctx.limits.max_output_bytes) {
        fail_at(ctx, ErrorCode::too_large,
                "tensor of " + std::to_string(nbytes) + " bytes exceeds max_output_bytes");
    }
    if (numel != 0) {
        const auto extent =
            view_extent_bytes(static_cast<std::uint64_t>(*offset), shape, stride, elsize);
        if (extent > storage.nbytes) {
            fail_at(ctx, ErrorCode::malformed,
                    "tensor view reaches byte " + std::to_string(extent) + " of storage \"" +
                        storage.key + "\", which holds " + std::to_string(storage.nbytes));
        }
    }
    return ctx.arena.make(TensorValue{
        storage_ref->index, dtype, static_cast<std::uint64_t>(*offset), std::move(shape),
        std::move(stride), args.requires_grad, false, ctx.next_tensor_id++});
}

ValuePtr tensor_from_bytes(std::string_view bytes, DType dtype,
                           const std::vector<std::uint64_t>& shape, bool fortran, bool big_endian,
                           CallContext& ctx) {
    count_tensor(ctx);
    const std::uint64_t elsize = info(dtype).element_size;
    std::uint64_t numel = 1;
    for (const auto dim : shape) numel = checked_mul(numel, dim, "array element count");
    if (checked_mul(numel, elsize, "array byte size") != bytes.size()) {
        fail_at(ctx, ErrorCode::malformed, "numpy array data length does not match its shape");
    }
    const std::string key = "numpy:" + std::to_string(ctx.storages.size());
    const auto index = ctx.storages.declare(key, dtype, numel, "cpu");
    auto owned = ctx.storages.own_buffer(bytes.size());
    if (!bytes.empty()) std::memcpy(owned.data(), bytes.data(), bytes.size());
    ctx.storages.bind(index, owned, big_endian);
    std::vector<std::uint64_t> stride(shape.size(), 1);
    if (fortran) {
        for (std::size_t i = 1; i < shape.size(); ++i)
            stride[i] = stride[i - 1] * std::max<std::uint64_t>(shape[i - 1], 1);
    } else {
        for (std::size_t i = shape.size(); i-- > 1;)
            stride[i - 1] = stride[i] * std::max<std::uint64_t>(shape[i], 1);
    }
    return ctx.arena.make(
        TensorValue{index, dtype, 0, shape, std::move(stride), false, false, ctx.next_tensor_id++});
}

}  // namespace picklejail::loader
