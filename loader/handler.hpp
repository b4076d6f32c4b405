// The built-in behaviours a policy may bind a global to. A pickle can only
// ever reach these; no name is imported and no Python code exists to call.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace picklejail::loader {

enum class Handler : std::uint8_t {
    ordered_dict,       // collections.OrderedDict
    rebuild_tensor,     // torch._utils._rebuild_tensor
    rebuild_tensor_v2,  // torch._utils._rebuild_tensor_v2
    rebuild_tensor_v3,  // torch._utils._rebuild_tensor_v3
    rebuild_parameter,  // torch._utils._rebuild_parameter
    rebuild_parameter_with_state,
    rebuild_from_type_v2,  // torch._tensor._rebuild_from_type_v2
    tensor_class,          // torch.Tensor (as _rebuild_from_type_v2's new_type)
    parameter_class,       // torch.nn.parameter.Parameter
    storage_class,         // torch.FloatStorage ... (only inside persistent ids)
    dtype,                 // torch.float32 ...
    torch_size,            // torch.Size
    torch_device,          // torch.device
    codecs_encode,         // _codecs.encode(str, "latin1") → bytes
    builtins_set,
    builtins_frozenset,
    builtins_bytearray,
    builtins_complex,
    counter,                // collections.Counter
    default_dict,           // collections.defaultdict (checkpoint policy)
    default_factory,        // builtins.list/dict/... as a defaultdict factory
    record_class,           // argparse.Namespace etc.: kept as an inert record
    torch_version,          // torch.torch_version.TorchVersion (a str)
    numpy_reconstruct,      // numpy.core.multiarray._reconstruct
    numpy_ndarray,          // numpy.ndarray
    numpy_dtype,            // numpy.dtype
    numpy_scalar,           // numpy.core.multiarray.scalar
    rebuild_qtensor,        // torch._utils._rebuild_qtensor (loader/tensor_kinds.cpp)
    rebuild_sparse_tensor,  // torch._utils._rebuild_sparse_tensor
    rebuild_sparse_csr,     // torch._utils._rebuild_sparse_csr_tensor (torch 1.13)
    rebuild_meta_tensor,    // torch._utils._rebuild_meta_tensor_no_storage
    get_layout,             // torch.serialization._get_layout("torch.sparse_coo")
    layout,                 // torch.sparse_coo ... as a value
    qscheme,                // torch.per_tensor_affine ... as a value
    reference,              // inert: any unbound global, kept as a name; calls make records
    getattr,                // inert: builtins.getattr on a reference or a record, never called
    reconstructor,          // inert: copyreg._reconstructor(cls, base, state), protocol 0/1 objects
    unsupported_tensor,     // nested/wrapper/device-numpy rebuilds: clear refusal (keep last)
};

[[nodiscard]] std::optional<Handler> handler_from_name(std::string_view name) noexcept;
[[nodiscard]] std::string_view handler_name(Handler handler) noexcept;

}  // namespace picklejail::loader
