// Tensor element types: how PyTorch names them (storage classes, dtype
// globals) and how safetensors does.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace picklejail::loader {

enum class DType : std::uint8_t {
    boolean,
    uint8,
    int8,
    int16,
    int32,
    int64,
    uint16,
    uint32,
    uint64,
    float16,
    bfloat16,
    float32,
    float64,
    float8_e4m3fn,
    float8_e5m2,
    float8_e4m3fnuz,
    float8_e5m2fnuz,
    complex64,
    complex128,
};

struct DTypeInfo {
    DType dtype;
    std::string_view torch_name;        // "float32", as in torch.float32
    std::string_view storage_class;     // "FloatStorage", empty for v3-only dtypes
    std::string_view safetensors_name;  // "F32"; complex128 is written as F64 pairs
    std::uint8_t element_size;          // bytes per element
    std::uint8_t swap_width;            // byte-swap unit for big-endian data (1 = none)
    std::uint8_t write_rank;            // safetensors writer order (higher first)
};

[[nodiscard]] const DTypeInfo& info(DType dtype) noexcept;

// "FloatStorage" (module ignored, as torch's find_class does) → float32.
// "UntypedStorage" → uint8 (a byte storage whose tensors carry their own dtype).
[[nodiscard]] std::optional<DType> dtype_from_storage_class(std::string_view class_name) noexcept;

// "float32" (the name after "torch.") → float32; aliases like "float" too.
[[nodiscard]] std::optional<DType> dtype_from_torch_name(std::string_view name) noexcept;

}  // namespace picklejail::loader
