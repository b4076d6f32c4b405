#include "loader/tensor_kinds.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "loader/checked_math.hpp"
#include "loader/json_text.hpp"
#include "loader/tensor_rebuild.hpp"

namespace picklejail::loader {
namespace {

struct LayoutName {
    std::string_view global;  // "torch.sparse_coo", as _get_layout's argument and the GLOBAL
    TensorKind kind;
};
constexpr std::array<LayoutName, 5> kLayouts{{
    {"torch.sparse_coo", TensorKind::sparse_coo},
    {"torch.sparse_csr", TensorKind::sparse_csr},
    {"torch.sparse_csc", TensorKind::sparse_csc},
    {"torch.sparse_bsr", TensorKind::sparse_bsr},
    {"torch.sparse_bsc", TensorKind::sparse_bsc},
}};

std::optional<TensorKind> layout_kind(std::string_view name) noexcept {
    for (const auto& layout : kLayouts) {
        if (layout.global == name) return layout.kind;
    }
    return std::nullopt;
}

bool is_compressed(TensorKind kind) noexcept {
    return kind == TensorKind::sparse_csr || kind == TensorKind::sparse_csc ||
           kind == TensorKind::sparse_bsr || kind == TensorKind::sparse_bsc;
}
bool is_blocked(TensorKind kind) noexcept {
    return kind == TensorKind::sparse_bsr || kind == TensorKind::sparse_bsc;
}
// CSR/BSR compress rows (dimension 0), CSC/BSC columns (dimension 1).
bool compresses_rows(TensorKind kind) noexcept {
    return kind == TensorKind::sparse_csr || kind == TensorKind::sparse_bsr;
}

TensorKindValue kind_value(TensorKind kind, std::vector<std::pair<std::string, ValuePtr>> parts,
                           std::vector<std::uint64_t> shape) {
    TensorKindValue out;
    out.kind = kind;
    out.parts = std::move(parts);
    out.shape = std::move(shape);
    return out;
}

void count_tensor(CallContext& ctx) {
    if (++ctx.tensors_built > ctx.limits.max_tensors) {
        fail_at(
            ctx, ErrorCode::too_large,
            "more than " + std::to_string(ctx.limits.max_tensors) + " tensors (limit max_tensors)");
    }
}

const std::vector<ValuePtr>& tuple_arg(const ValuePtr& value, std::string_view what,
                                       const CallContext& ctx) {
    const auto* tuple = value->as<TupleValue>();
    if (tuple == nullptr) {
        fail_at(ctx, ErrorCode::malformed,
                std::string(what) + " is a " + describe(*value) + ", not a tuple");
    }
    return tuple->items;
}

// A size or stride: non-negative ints, at most max_ndim of them.
std::vector<std::uint64_t> dims_arg(const ValuePtr& value, std::string_view what,
                                    const CallContext& ctx) {
    const std::vector<ValuePtr>* items = nullptr;
    if (const auto* tuple = value->as<TupleValue>()) items = &tuple->items;
    if (const auto* list = value->as<ListValue>()) items = &list->items;
    if (items == nullptr) fail_at(ctx, ErrorCode::malformed, std::string(what) + " is not a tuple");
    if (items->size() > ctx.limits.max_ndim) {
        fail_at(ctx, ErrorCode::too_large,
                std::string(what) + " has " + std::to_string(items->size()) +
                    " dimensions (limit max_ndim " + std::to_string(ctx.limits.max_ndim) + ")");
    }
    std::vector<std::uint64_t> out;
    for (const auto& item : *items) {
        const auto number = as_int(*item);
        if (!number || *number < 0) {
            fail_at(ctx, ErrorCode::malformed,
                    std::string(what) + " holds something other than a non-negative int");
        }
        out.push_back(static_cast<std::uint64_t>(*number));
    }
    return out;
}

// The element count a size describes must fit an int64, as in torch.
void check_numel(const std::vector<std::uint64_t>& size, std::string_view what,
                 const CallContext& ctx) {
    std::uint64_t numel = 1;
    for (const auto dim : size) {
        if (__builtin_mul_overflow(numel, dim, &numel) || numel > INT64_MAX) {
            fail_at(ctx, ErrorCode::malformed, std::string(what) + " has more than 2^63 elements");
        }
    }
}

const TensorValue& tensor_arg(const ValuePtr& value, std::string_view what,
                              const CallContext& ctx) {
    const auto* tensor = value->as<TensorValue>();
    if (tensor == nullptr) {
        fail_at(ctx, ErrorCode::malformed,
                std::string(what) + " is a " + describe(*value) + ", not a dense tensor");
    }
    return *tensor;
}

std::string dtype_name(DType dtype) {
    return std::string(info(dtype).torch_name);
}

bool truthy(const ValuePtr& value) {
    const auto number = as_int(*value);
    return number && *number != 0;
}

TensorKind layout_arg(const ValuePtr& value, const CallContext& ctx) {
    const auto* global = value->as<GlobalValue>();
    const auto kind = global && global->handler == Handler::layout ? layout_kind(global->name)
                                                                   : std::optional<TensorKind>{};
    if (!kind) {
        fail_at(ctx, ErrorCode::unsupported,
                "sparse layout " + describe(*value) + " is not sparse_coo/csr/csc/bsr/bsc");
    }
    return *kind;
}

ValuePtr make_sparse_coo(const std::vector<ValuePtr>& data, CallContext& ctx) {
    if (data.size() != 3 && data.size() != 4) {
        fail_at(ctx, ErrorCode::malformed,
                "sparse COO data has " + std::to_string(data.size()) +
                    " items, expected (indices, values, size[, is_coalesced])");
    }
    const auto& indices = tensor_arg(data[0], "sparse COO indices", ctx);
    const auto& values = tensor_arg(data[1], "sparse COO values", ctx);
    auto size = dims_arg(data[2], "sparse COO size", ctx);
    if (indices.dtype != DType::int64) {
        fail_at(ctx, ErrorCode::malformed,
                "sparse COO indices are " + dtype_name(indices.dtype) + ", not int64");
    }
    if (indices.shape.size() != 2) {
        fail_at(ctx, ErrorCode::malformed,
                "sparse COO indices have " + std::to_string(indices.shape.size()) +
                    " dimensions, not 2 ([sparse_dim, nnz])");
    }
    const std::uint64_t sparse_dim = indices.shape[0];
    const std::uint64_t nnz = indices.shape[1];
    if (values.shape.empty() || values.shape[0] != nnz) {
        fail_at(ctx, ErrorCode::malformed,
                "sparse COO has " + std::to_string(nnz) + " indices but " +
                    (values.shape.empty() ? std::string("a 0-d values tensor")
                                          : std::to_string(values.shape[0]) + " values"));
    }
    const std::uint64_t dense_dim = values.shape.size() - 1;
    if (checked_add(sparse_dim, dense_dim, "sparse COO dimensions") != size.size()) {
        fail_at(ctx, ErrorCode::malformed,
                "sparse COO size has " + std::to_string(size.size()) + " dimensions but indices " +
                    "give " + std::to_string(sparse_dim) + " sparse and values " +
                    std::to_string(dense_dim) + " dense ones");
    }
    for (std::uint64_t d = 0; d < dense_dim; ++d) {
        if (values.shape[1 + d] != size[sparse_dim + d]) {
            fail_at(ctx, ErrorCode::malformed, "sparse COO values' dense shape differs from size");
        }
    }
    check_numel(size, "sparse COO size", ctx);
    auto out = kind_value(TensorKind::sparse_coo, {{"indices", data[0]}, {"values", data[1]}},
                          std::move(size));
    if (data.size() == 4 && !data[3]->is<NoneValue>()) {
        if (!as_int(*data[3]))
            fail_at(ctx, ErrorCode::malformed, "sparse COO is_coalesced is not a bool");
        out.coalesced = truthy(data[3]);
    }
    return ctx.arena.make(std::move(out));
}

ValuePtr make_sparse_compressed(TensorKind kind, const std::vector<ValuePtr>& data,
                                CallContext& ctx) {
    if (data.size() != 4) {
        fail_at(ctx, ErrorCode::malformed,
                "compressed sparse data has " + std::to_string(data.size()) +
                    " items, expected (compressed_indices, plain_indices, values, size)");
    }
    const auto& compressed = tensor_arg(data[0], "compressed sparse indices", ctx);
    const auto& plain = tensor_arg(data[1], "compressed sparse plain indices", ctx);
    const auto& values = tensor_arg(data[2], "compressed sparse values", ctx);
    auto size = dims_arg(data[3], "compressed sparse size", ctx);
    for (const auto* index : {&compressed, &plain}) {
        if (index->dtype != DType::int64 && index->dtype != DType::int32) {
            fail_at(ctx, ErrorCode::malformed,
                    "compressed sparse indices are " + dtype_name(index->dtype) +
                        ", not int32 or int64");
        }
        if (index->shape.size() != 1) {
            fail_at(ctx, ErrorCode::unsupported,
                    "compressed sparse indices with " + std::to_string(index->shape.size()) +
                        " dimensions (batched) are not loaded; only 1-d ones");
        }
    }
    if (compressed.dtype != plain.dtype) {
        fail_at(ctx, ErrorCode::malformed, "compressed and plain sparse indices differ in dtype");
    }
    const std::uint64_t nnz = plain.shape[0];
    const std::size_t block_dims = is_blocked(kind) ? 2 : 0;
    if (values.shape.size() < 1 + block_dims || values.shape[0] != nnz) {
        fail_at(ctx, ErrorCode::malformed,
                "compressed sparse values do not hold " + std::to_string(nnz) +
                    (block_dims != 0 ? " blocks" : " values"));
    }
    const std::size_t dense_dim = values.shape.size() - 1 - block_dims;
    if (size.size() != 2 + dense_dim) {
        fail_at(ctx, ErrorCode::malformed,
                "compressed sparse size has " + std::to_string(size.size()) +
                    " dimensions, expected " + std::to_string(2 + dense_dim));
    }
    std::array<std::uint64_t, 2> block{1, 1};
    if (block_dims != 0) block = {values.shape[1], values.shape[2]};
    for (std::size_t d = 0; d < 2; ++d) {
        if (block[d] == 0 || size[d] % block[d] != 0) {
            fail_at(ctx, ErrorCode::malformed, "sparse block shape does not divide the size");
        }
    }
    for (std::size_t d = 0; d < dense_dim; ++d) {
        if (values.shape[1 + block_dims + d] != size[2 + d]) {
            fail_at(ctx, ErrorCode::malformed,
                    "compressed sparse values' dense shape differs from size");
        }
    }
    const std::size_t compressed_dim = compresses_rows(kind) ? 0 : 1;
    const std::uint64_t segments = size[compressed_dim] / block[compressed_dim];
    if (compressed.shape[0] != checked_add(segments, 1, "compressed sparse indices")) {
        fail_at(ctx, ErrorCode::malformed,
                "compressed sparse indices hold " + std::to_string(compressed.shape[0]) +
                    " entries, expected " + std::to_string(segments) + " + 1");
    }
    check_numel(size, "compressed sparse size", ctx);
    return ctx.arena.make(kind_value(
        kind, {{"compressed_indices", data[0]}, {"plain_indices", data[1]}, {"values", data[2]}},
        std::move(size)));
}

ValuePtr rebuild_sparse(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                        CallContext& ctx) {
    if (a.size() != 2) fail_at(ctx, ErrorCode::malformed, callee.name + " takes (layout, data)");
    const auto kind = layout_arg(a[0], ctx);
    if (callee.handler == Handler::rebuild_sparse_csr && kind != TensorKind::sparse_csr) {
        fail_at(ctx, ErrorCode::malformed, callee.name + " called with a layout other than CSR");
    }
    const auto& data = tuple_arg(a[1], "sparse tensor data", ctx);
    count_tensor(ctx);
    ValuePtr out = kind == TensorKind::sparse_coo ? make_sparse_coo(data, ctx)
                                                  : make_sparse_compressed(kind, data, ctx);
    out->as<TensorKindValue>()->id = ctx.next_tensor_id++;
    return out;
}

std::string qtype_name(DType repr) {
    switch (repr) {
        case DType::int8:
            return "qint8";
        case DType::uint8:
            return "quint8";
        case DType::int32:
            return "qint32";
        default:
            break;
    }
    return "q" + dtype_name(repr);
}

void per_channel_params(TensorKindValue& out, const std::vector<ValuePtr>& q,
                        const CallContext& ctx) {
    if (q.size() != 4) {
        fail_at(ctx, ErrorCode::malformed,
                "per-channel quantizer has " + std::to_string(q.size()) +
                    " items, expected (qscheme, scales, zero_points, axis)");
    }
    const auto& scales = tensor_arg(q[1], "quantizer scales", ctx);
    const auto& zero_points = tensor_arg(q[2], "quantizer zero_points", ctx);
    const auto axis = as_int(*q[3]);
    const auto ndim = static_cast<std::int64_t>(out.shape.size());
    if (!axis || *axis < 0 || *axis >= ndim) {
        fail_at(ctx, ErrorCode::malformed,
                "quantizer axis " + (axis ? std::to_string(*axis) : describe(*q[3])) +
                    " is out of range for a tensor of " + std::to_string(ndim) + " dimensions");
    }
    const auto channels = out.shape[static_cast<std::size_t>(*axis)];
    for (const auto* param : {&scales, &zero_points}) {
        if (param->shape.size() != 1 || param->shape[0] != channels) {
            fail_at(ctx, ErrorCode::malformed,
                    std::string(param == &scales ? "scales" : "zero_points") + " hold " +
                        (param->shape.size() == 1 ? std::to_string(param->shape[0])
                                                  : std::string("a non-1-d tensor of")) +
                        " values but axis " + std::to_string(*axis) + " has " +
                        std::to_string(channels) + " channels");
        }
    }
    if (scales.dtype != DType::float64 && scales.dtype != DType::float32) {
        fail_at(ctx, ErrorCode::malformed, "quantizer scales are " + dtype_name(scales.dtype));
    }
    if (zero_points.dtype != DType::int64 && zero_points.dtype != DType::float32 &&
        zero_points.dtype != DType::float64) {
        fail_at(ctx, ErrorCode::malformed,
                "quantizer zero_points are " + dtype_name(zero_points.dtype));
    }
    out.per_channel = true;
    out.axis = *axis;
    out.parts.emplace_back("scales", q[1]);
    out.parts.emplace_back("zero_points", q[2]);
}

void per_tensor_params(TensorKindValue& out, const std::vector<ValuePtr>& q,
                       const CallContext& ctx) {
    if (q.size() != 3) {
        fail_at(ctx, ErrorCode::malformed,
                "per-tensor quantizer has " + std::to_string(q.size()) +
                    " items, expected (qscheme, scale, zero_point)");
    }
    const auto* scale = q[1]->as<FloatValue>();
    const auto scale_int = as_int(*q[1]);
    const auto zero_point = as_int(*q[2]);
    if ((scale == nullptr && !scale_int) || !zero_point) {
        fail_at(ctx, ErrorCode::malformed, "per-tensor quantizer scale/zero_point are not numbers");
    }
    out.scale = scale ? scale->value : static_cast<double>(*scale_int);
    if (!std::isfinite(out.scale))
        fail_at(ctx, ErrorCode::malformed, "per-tensor quantizer scale is not finite");
    out.zero_point = *zero_point;
}

ValuePtr rebuild_qtensor(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                         CallContext& ctx) {
    if (a.size() != 7) {
        fail_at(ctx, ErrorCode::malformed,
                callee.name + " called with " + std::to_string(a.size()) + " arguments");
    }
    const auto& quantizer = tuple_arg(a[4], "quantizer_params", ctx);
    const auto* scheme = quantizer.empty() ? nullptr : quantizer[0]->as<GlobalValue>();
    if (scheme == nullptr || scheme->handler != Handler::qscheme) {
        fail_at(ctx, ErrorCode::malformed, "quantizer_params do not start with a torch qscheme");
    }
    TensorArgs view;
    view.storage = a[0];
    view.offset = a[1];
    view.size = a[2];
    view.stride = a[3];
    view.quantized = true;
    ValuePtr int_repr = rebuild_tensor(view, ctx);
    const auto& repr = *int_repr->as<TensorValue>();
    auto out = kind_value(TensorKind::quantized, {{"int_repr", int_repr}}, repr.shape);
    out.qtype = qtype_name(repr.dtype);
    out.requires_grad = truthy(a[5]);
    if (scheme->name == "torch.per_tensor_affine") {
        per_tensor_params(out, quantizer, ctx);
    } else if (scheme->name == "torch.per_channel_affine" ||
               scheme->name == "torch.per_channel_affine_float_qparams") {
        per_channel_params(out, quantizer, ctx);
    } else {
        fail_at(ctx, ErrorCode::unsupported,
                "quantized tensor with qscheme " + scheme->name + " (torch cannot load it either)");
    }
    out.id = ctx.next_tensor_id++;
    return ctx.arena.make(std::move(out));
}

ValuePtr rebuild_meta(const GlobalValue& callee, const std::vector<ValuePtr>& a, CallContext& ctx) {
    if (a.size() != 4) {
        fail_at(ctx, ErrorCode::malformed,
                callee.name + " called with " + std::to_string(a.size()) + " arguments");
    }
    const auto* dtype = a[0]->as<DTypeValue>();
    if (dtype == nullptr)
        fail_at(ctx, ErrorCode::malformed, "meta tensor dtype is a " + describe(*a[0]));
    auto out = kind_value(TensorKind::meta, {}, dims_arg(a[1], "meta tensor size", ctx));
    out.stride = dims_arg(a[2], "meta tensor stride", ctx);
    if (out.stride.size() != out.shape.size()) {
        fail_at(ctx, ErrorCode::malformed, "meta tensor size and stride have different lengths");
    }
    check_numel(out.shape, "meta tensor size", ctx);
    count_tensor(ctx);
    out.dtype = dtype->dtype;
    out.requires_grad = truthy(a[3]);
    out.id = ctx.next_tensor_id++;
    return ctx.arena.make(std::move(out));
}

ValuePtr get_layout(const GlobalValue& callee, const std::vector<ValuePtr>& a, CallContext& ctx) {
    const auto* name = a.size() == 1 ? a[0]->as<StringValue>() : nullptr;
    if (name == nullptr || !layout_kind(name->utf8)) {
        fail_at(ctx, ErrorCode::unsupported,
                callee.name + " is only allowed for the sparse layouts (torch.sparse_coo ...)");
    }
    return ctx.arena.make(GlobalValue{Handler::layout, name->utf8});
}

// ------------------------------------------------------------ index contents

// Reads integer elements of a checked 1-d or 2-d view, little- or big-endian.
class IndexReader {
  public:
    IndexReader(const TensorValue& view, const StorageTable& storages, std::string_view where)
        : view_(view), storage_(storages.at(view.storage)) {
        if (!storage_.bound) {
            throw Error(ErrorCode::malformed, "storage \"" + storage_.key + "\" of " +
                                                  std::string(where) + " has no data");
        }
    }

    // Element [row][column] (row 0 for 1-d views); in bounds by construction
    // (rebuild_tensor checked the view's extent against the storage).
    [[nodiscard]] std::int64_t at(std::uint64_t row, std::uint64_t column) const {
        std::uint64_t element = view_.offset + column * view_.stride.back();
        if (view_.stride.size() == 2) element += row * view_.stride[0];
        const std::size_t size = info(view_.dtype).element_size;
        std::array<unsigned char, 8> raw{};
        std::memcpy(raw.data(), storage_.bytes.data() + element * size, size);
        if (storage_.big_endian) std::reverse(raw.begin(), raw.begin() + size);
        if (size == 4) {
            std::int32_t v = 0;
            std::memcpy(&v, raw.data(), 4);
            return v;
        }
        std::int64_t v = 0;
        std::memcpy(&v, raw.data(), 8);
        return v;
    }

  private:
    const TensorValue& view_;
    const Storage& storage_;
};

const TensorValue& part(const TensorKindValue& tensor, std::string_view name) {
    for (const auto& [part_name, value] : tensor.parts) {
        if (part_name == name) return *value->as<TensorValue>();
    }
    throw Error(ErrorCode::internal, "tensor kind without its " + std::string(name));
}

[[noreturn]] void bad_index(std::string_view where, const std::string& what) {
    throw Error(ErrorCode::malformed, std::string(where) + ": " + what);
}

void check_coo(const TensorKindValue& t, const StorageTable& storages, std::string_view where) {
    const auto& indices = part(t, "indices");
    const IndexReader read(indices, storages, where);
    const std::uint64_t sparse_dim = indices.shape[0];
    const std::uint64_t nnz = indices.shape[1];
    for (std::uint64_t d = 0; d < sparse_dim; ++d) {
        for (std::uint64_t j = 0; j < nnz; ++j) {
            const auto index = read.at(d, j);
            if (index < 0 || static_cast<std::uint64_t>(index) >= t.shape[d]) {
                bad_index(where, "sparse COO index " + std::to_string(index) + " at [" +
                                     std::to_string(d) + "][" + std::to_string(j) +
                                     "] is out of bounds for size " + std::to_string(t.shape[d]));
            }
        }
    }
    if (!t.coalesced.value_or(false)) return;
    // Coalesced: the index columns strictly increase in lexicographic order.
    for (std::uint64_t j = 1; j < nnz; ++j) {
        int order = 0;
        for (std::uint64_t d = 0; d < sparse_dim && order == 0; ++d) {
            const auto previous = read.at(d, j - 1);
            const auto current = read.at(d, j);
            order = current < previous ? -1 : current > previous ? 1 : 0;
        }
        if (order <= 0) {
            bad_index(where,
                      "sparse COO tensor marked coalesced has unsorted or repeated "
                      "indices at column " +
                          std::to_string(j));
        }
    }
}

void check_compressed(const TensorKindValue& t, const StorageTable& storages,
                      std::string_view where) {
    const auto& compressed = part(t, "compressed_indices");
    const auto& plain = part(t, "plain_indices");
    const IndexReader starts(compressed, storages, where);
    const IndexReader positions(plain, storages, where);
    const std::uint64_t nnz = plain.shape[0];
    const std::size_t plain_dim = compresses_rows(t.kind) ? 1 : 0;
    const auto& values = part(t, "values");
    const std::uint64_t block = is_blocked(t.kind) ? values.shape[1 + plain_dim] : 1;
    const std::uint64_t plain_size = t.shape[plain_dim] / block;
    const std::uint64_t segments = compressed.shape[0] - 1;
    if (starts.at(0, 0) != 0) {
        bad_index(where, "compressed sparse indices start at " + std::to_string(starts.at(0, 0)) +
                             ", not 0");
    }
    for (std::uint64_t s = 0; s < segments; ++s) {
        const auto begin = starts.at(0, s);
        const auto end = starts.at(0, s + 1);
        if (end < begin || static_cast<std::uint64_t>(end) > nnz) {
            bad_index(where, "compressed sparse indices are not non-decreasing within [0, " +
                                 std::to_string(nnz) + "] at entry " + std::to_string(s + 1));
        }
        for (auto k = begin; k < end; ++k) {
            const auto position = positions.at(0, static_cast<std::uint64_t>(k));
            if (position < 0 || static_cast<std::uint64_t>(position) >= plain_size) {
                bad_index(where, "compressed sparse plain index " + std::to_string(position) +
                                     " is out of bounds for " + std::to_string(plain_size));
            }
            if (k > begin && position <= positions.at(0, static_cast<std::uint64_t>(k - 1))) {
                bad_index(where,
                          "compressed sparse plain indices are not sorted and unique "
                          "within entry " +
                              std::to_string(s));
            }
        }
    }
    if (static_cast<std::uint64_t>(starts.at(0, segments)) != nnz) {
        bad_index(where, "compressed sparse indices end at " +
                             std::to_string(starts.at(0, segments)) + ", not at nnz " +
                             std::to_string(nnz));
    }
}

void append_dims(std::string& text, std::string_view key, const std::vector<std::uint64_t>& dims) {
    text += ",\"";
    text += key;
    text += "\":[";
    for (std::size_t i = 0; i < dims.size(); ++i) {
        if (i != 0) text.push_back(',');
        append_json_integer(text, dims[i]);
    }
    text.push_back(']');
}

}  // namespace

std::optional<DType> quantized_storage_repr(std::string_view storage_class) noexcept {
    if (storage_class == "QInt8Storage") return DType::int8;
    if (storage_class == "QUInt8Storage") return DType::uint8;
    if (storage_class == "QInt32Storage") return DType::int32;
    return std::nullopt;  // QUInt4x2/QUInt2x4 pack several values per byte: not loaded
}

bool is_tensor_kind_rebuild(Handler handler) noexcept {
    return handler == Handler::rebuild_qtensor || handler == Handler::rebuild_sparse_tensor ||
           handler == Handler::rebuild_sparse_csr || handler == Handler::rebuild_meta_tensor;
}

ValuePtr call_tensor_kind(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                          CallContext& ctx) {
    switch (callee.handler) {
        case Handler::rebuild_qtensor:
            return rebuild_qtensor(callee, a, ctx);
        case Handler::rebuild_sparse_tensor:
        case Handler::rebuild_sparse_csr:
            return rebuild_sparse(callee, a, ctx);
        case Handler::rebuild_meta_tensor:
            return rebuild_meta(callee, a, ctx);
        case Handler::get_layout:
            return get_layout(callee, a, ctx);
        default:
            break;
    }
    fail_at(ctx, ErrorCode::internal, "not a tensor kind rebuild: " + callee.name);
}

ValuePtr tensor_kind_as_parameter(const TensorKindValue& tensor, bool requires_grad,
                                  CallContext& ctx) {
    TensorKindValue param = tensor;
    param.parameter = true;
    param.requires_grad = requires_grad;
    param.id = ctx.next_tensor_id++;
    return ctx.arena.make(std::move(param));
}

void check_tensor_kind_data(const TensorKindValue& tensor, const StorageTable& storages,
                            std::string_view where) {
    if (tensor.kind == TensorKind::sparse_coo) check_coo(tensor, storages, where);
    if (is_compressed(tensor.kind)) check_compressed(tensor, storages, where);
}

std::string_view tensor_kind_tag(const TensorKindValue& tensor) noexcept {
    if (tensor.kind == TensorKind::quantized) return "quantized";
    if (tensor.kind == TensorKind::meta) return "meta_tensor";
    return "sparse";
}

std::string tensor_kind_tag_value(const TensorKindValue& tensor) {
    for (const auto& layout : kLayouts) {
        if (layout.kind == tensor.kind)
            return std::string(layout.global.substr(6));  // "sparse_coo"
    }
    if (tensor.kind == TensorKind::quantized) return tensor.qtype;
    return dtype_name(tensor.dtype);
}

void append_tensor_kind_fields(std::string& text, const TensorKindValue& tensor) {
    text += ",\"id\":";
    append_json_integer(text, tensor.id);
    append_dims(text, "shape", tensor.shape);
    if (tensor.kind == TensorKind::meta) append_dims(text, "stride", tensor.stride);
    if (tensor.coalesced)
        text += *tensor.coalesced ? ",\"coalesced\":true" : ",\"coalesced\":false";
    if (tensor.kind == TensorKind::quantized) {
        text += tensor.per_channel ? ",\"qscheme\":\"per_channel_affine\",\"axis\":"
                                   : ",\"qscheme\":\"per_tensor_affine\",\"scale\":";
        if (tensor.per_channel) {
            append_json_integer(text, tensor.axis);
        } else {
            append_json_double(text, tensor.scale);
            text += ",\"zero_point\":";
            append_json_integer(text, tensor.zero_point);
        }
    }
    if (tensor.parameter) text += ",\"parameter\":true";
    if (tensor.requires_grad) text += ",\"requires_grad\":true";
}

}  // namespace picklejail::loader
