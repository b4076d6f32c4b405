#include "loader/dtype.hpp"

#include <array>

namespace picklejail::loader {
namespace {

// write_rank follows the safetensors Dtype enum order (BOOL lowest, U64
// highest) so our tensor order matches the reference writer's.
constexpr std::array<DTypeInfo, 19> kTable{{
    {DType::boolean, "bool", "BoolStorage", "BOOL", 1, 1, 0},
    {DType::uint8, "uint8", "ByteStorage", "U8", 1, 1, 4},
    {DType::int8, "int8", "CharStorage", "I8", 1, 1, 5},
    {DType::int16, "int16", "ShortStorage", "I16", 2, 2, 11},
    {DType::int32, "int32", "IntStorage", "I32", 4, 4, 15},
    {DType::int64, "int64", "LongStorage", "I64", 8, 8, 21},
    {DType::uint16, "uint16", "", "U16", 2, 2, 12},
    {DType::uint32, "uint32", "", "U32", 4, 4, 16},
    {DType::uint64, "uint64", "", "U64", 8, 8, 22},
    {DType::float16, "float16", "HalfStorage", "F16", 2, 2, 13},
    {DType::bfloat16, "bfloat16", "BFloat16Storage", "BF16", 2, 2, 14},
    {DType::float32, "float32", "FloatStorage", "F32", 4, 4, 17},
    {DType::float64, "float64", "DoubleStorage", "F64", 8, 8, 20},
    {DType::float8_e4m3fn, "float8_e4m3fn", "", "F8_E4M3", 1, 1, 7},
    {DType::float8_e5m2, "float8_e5m2", "", "F8_E5M2", 1, 1, 6},
    {DType::float8_e4m3fnuz, "float8_e4m3fnuz", "", "F8_E4M3FNUZ", 1, 1, 9},
    {DType::float8_e5m2fnuz, "float8_e5m2fnuz", "", "F8_E5M2FNUZ", 1, 1, 10},
    {DType::complex64, "complex64", "ComplexFloatStorage", "C64", 8, 4, 18},
    {DType::complex128, "complex128", "ComplexDoubleStorage", "F64", 16, 8, 20},  // written as F64
}};

struct Alias {
    std::string_view name;
    DType dtype;
};
// torch exposes these attribute aliases as the same dtype objects.
constexpr std::array<Alias, 10> kAliases{{
    {"float", DType::float32},
    {"double", DType::float64},
    {"half", DType::float16},
    {"long", DType::int64},
    {"int", DType::int32},
    {"short", DType::int16},
    {"cfloat", DType::complex64},
    {"cdouble", DType::complex128},
    {"complex", DType::complex64},
    {"bool_", DType::boolean},
}};

}  // namespace

const DTypeInfo& info(DType dtype) noexcept {
    return kTable[static_cast<std::size_t>(dtype)];
}

std::optional<DType> dtype_from_storage_class(std::string_view class_name) noexcept {
    if (class_name == "UntypedStorage") return DType::uint8;
    for (const auto& row : kTable) {
        if (!row.storage_class.empty() && row.storage_class == class_name) return row.dtype;
    }
    return std::nullopt;
}

std::optional<DType> dtype_from_torch_name(std::string_view name) noexcept {
    for (const auto& row : kTable) {
        if (row.torch_name == name) return row.dtype;
    }
    for (const auto& alias : kAliases) {
        if (alias.name == name) return alias.dtype;
    }
    return std::nullopt;
}

}  // namespace picklejail::loader
