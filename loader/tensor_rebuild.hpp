// torch._utils._rebuild_tensor* semantics: validate storage, offset, size and
// stride with overflow-checked arithmetic and produce an inert TensorValue.
#pragma once

#include <optional>

#include "loader/global_calls.hpp"

namespace picklejail::loader {

struct TensorArgs {
    ValuePtr storage;
    ValuePtr offset;
    ValuePtr size;
    ValuePtr stride;
    std::optional<DType> dtype;  // _rebuild_tensor_v3 passes it; others use the storage's
    bool requires_grad = false;
    ValuePtr metadata;  // v2/v3 optional math-bit dict
    bool quantized = false;  // _rebuild_qtensor: the storage must be a quantized one
};

[[nodiscard]] ValuePtr rebuild_tensor(const TensorArgs& args, CallContext& ctx);

// A tensor whose bytes are owned by the loader (numpy arrays in checkpoints).
[[nodiscard]] ValuePtr tensor_from_bytes(std::string_view bytes, DType dtype,
                                         const std::vector<std::uint64_t>& shape, bool fortran,
                                         bool big_endian, CallContext& ctx);

}  // namespace picklejail::loader
