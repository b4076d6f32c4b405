// Tensors of other kinds: sparse (COO, CSR, CSC, BSR, BSC), quantized
// (per tensor and per channel affine) and meta. Their data are ordinary
// strided tensors (indices, values, the integer representation, scales),
// each checked here before anything reads them: shapes and dtypes when the
// rebuild runs, index contents once the storages hold their bytes.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loader/global_calls.hpp"

namespace picklejail::loader {

// QInt8Storage → int8, QUInt8Storage → uint8, QInt32Storage → int32: the
// integer representation a quantized storage holds. Others: nullopt.
[[nodiscard]] std::optional<DType> quantized_storage_repr(std::string_view storage_class) noexcept;

// Whether `handler` is one of the rebuilds below (for _rebuild_from_type_v2).
[[nodiscard]] bool is_tensor_kind_rebuild(Handler handler) noexcept;

// REDUCE on _rebuild_qtensor, _rebuild_sparse_tensor,
// _rebuild_sparse_csr_tensor, _rebuild_meta_tensor_no_storage and
// _get_layout. Throws malformed/unsupported (with the pickle offset) for
// arguments torch would refuse or that do not fit together.
[[nodiscard]] ValuePtr call_tensor_kind(const GlobalValue& callee, const std::vector<ValuePtr>& a,
                                        CallContext& ctx);

// The same tensor as a Parameter (a new object, as _rebuild_parameter makes).
[[nodiscard]] ValuePtr tensor_kind_as_parameter(const TensorKindValue& tensor, bool requires_grad,
                                                CallContext& ctx);

// Checks what needs the bytes: COO indices in [0, size[d]) (and sorted and
// unique when marked coalesced); compressed indices starting at 0,
// non-decreasing, ending at nnz; plain indices in bounds and strictly
// increasing within each compressed row. `where` names it in messages.
void check_tensor_kind_data(const TensorKindValue& tensor, const StorageTable& storages,
                            std::string_view where);

// The description node's tag and value: "sparse": "sparse_coo", "quantized":
// "qint8", "meta_tensor": "float32" (docs/output-format.md).
[[nodiscard]] std::string_view tensor_kind_tag(const TensorKindValue& tensor) noexcept;
[[nodiscard]] std::string tensor_kind_tag_value(const TensorKindValue& tensor);

// The node's fields after the tag, each preceded by ',' ("id", "size", ...),
// without the data tensors, which the flattener writes as tensor nodes.
void append_tensor_kind_fields(std::string& text, const TensorKindValue& tensor);

}  // namespace picklejail::loader
