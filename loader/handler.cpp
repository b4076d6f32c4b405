#include "loader/handler.hpp"

#include <array>
#include <utility>

namespace picklejail::loader {
namespace {

constexpr std::array<std::pair<Handler, std::string_view>, 38> kNames{{
    {Handler::ordered_dict, "ordered_dict"},
    {Handler::rebuild_tensor, "rebuild_tensor"},
    {Handler::rebuild_tensor_v2, "rebuild_tensor_v2"},
    {Handler::rebuild_tensor_v3, "rebuild_tensor_v3"},
    {Handler::rebuild_parameter, "rebuild_parameter"},
    {Handler::rebuild_parameter_with_state, "rebuild_parameter_with_state"},
    {Handler::rebuild_from_type_v2, "rebuild_from_type_v2"},
    {Handler::tensor_class, "tensor_class"},
    {Handler::parameter_class, "parameter_class"},
    {Handler::storage_class, "storage_class"},
    {Handler::dtype, "dtype"},
    {Handler::torch_size, "torch_size"},
    {Handler::torch_device, "torch_device"},
    {Handler::codecs_encode, "codecs_encode"},
    {Handler::builtins_set, "set"},
    {Handler::builtins_frozenset, "frozenset"},
    {Handler::builtins_bytearray, "bytearray"},
    {Handler::builtins_complex, "complex"},
    {Handler::counter, "counter"},
    {Handler::default_dict, "default_dict"},
    {Handler::default_factory, "default_factory"},
    {Handler::record_class, "record"},
    {Handler::torch_version, "torch_version"},
    {Handler::numpy_reconstruct, "numpy_reconstruct"},
    {Handler::numpy_ndarray, "numpy_ndarray"},
    {Handler::numpy_dtype, "numpy_dtype"},
    {Handler::numpy_scalar, "numpy_scalar"},
    {Handler::rebuild_qtensor, "rebuild_qtensor"},
    {Handler::rebuild_sparse_tensor, "rebuild_sparse_tensor"},
    {Handler::rebuild_sparse_csr, "rebuild_sparse_csr"},
    {Handler::rebuild_meta_tensor, "rebuild_meta_tensor"},
    {Handler::get_layout, "get_layout"},
    {Handler::layout, "layout"},
    {Handler::qscheme, "qscheme"},
    {Handler::reference, "reference"},
    {Handler::getattr, "getattr"},
    {Handler::reconstructor, "reconstructor"},
    {Handler::unsupported_tensor, "unsupported_tensor"},
}};

}  // namespace

std::optional<Handler> handler_from_name(std::string_view name) noexcept {
    for (const auto& [handler, handler_name] : kNames) {
        if (handler_name == name) return handler;
    }
    return std::nullopt;
}

std::string_view handler_name(Handler handler) noexcept {
    for (const auto& [h, name] : kNames) {
        if (h == handler) return name;
    }
    return "unknown";
}

}  // namespace picklejail::loader
