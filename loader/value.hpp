// The values the pickle VM builds. Nothing here can run code: globals are
// references to built-in handlers, and everything else is inert data.
// Containers are shared through shared_ptr so memo references alias the
// same object (as in Python) instead of being deep-copied.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "loader/dtype.hpp"
#include "loader/handler.hpp"

namespace picklejail::loader {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct NoneValue {};
struct BoolValue {
    bool value;
};
struct IntValue {
    std::int64_t value;
};
// Integers wider than 64 bits (the legacy magic number is 77 bits):
// little-endian two's complement, as LONG1/LONG4 store them.
struct BigIntValue {
    std::vector<std::uint8_t> le_bytes;
};
struct FloatValue {
    double value;
};
struct ComplexValue {
    double real;
    double imag;
};
struct StringValue {
    std::string utf8;
};
struct BytesValue {
    std::string bytes;
    bool bytearray = false;
};
struct ListValue {
    std::vector<ValuePtr> items;
};
struct TupleValue {
    std::vector<ValuePtr> items;
    bool torch_size = false;  // built by torch.Size: described as {"size": [...]}
};
struct SetValue {
    std::vector<ValuePtr> items;
    bool frozen = false;
};
struct DictValue {
    std::vector<std::pair<ValuePtr, ValuePtr>> items;  // insertion order
    enum class Kind : std::uint8_t { dict, ordered_dict, default_dict, counter } kind = Kind::dict;
    ValuePtr attributes;  // OrderedDict BUILD state, e.g. state_dict()._metadata
    std::string factory;  // defaultdict: "list", "dict", ... (the builtin's name); may be empty
};
// A global the policy allowed, resolved to a built-in handler.
struct GlobalValue {
    Handler handler;
    std::string name;  // "module.qualname"
};
struct StorageValue {
    std::uint32_t index;  // into the StorageTable
};
struct TensorValue {
    std::uint32_t storage;  // StorageTable index
    DType dtype;
    std::uint64_t offset;  // in elements of dtype
    std::vector<std::uint64_t> shape;
    std::vector<std::uint64_t> stride;
    bool requires_grad = false;
    bool parameter = false;
    std::uint32_t id = 0;  // identity of the pickled tensor object
};
struct DTypeValue {
    DType dtype;
};
struct DeviceValue {
    std::string spec;
};
// An allowed non-tensor class instance kept as data: {class, args, state}.
// Under the inert policy it may also hold NEWOBJ_EX keyword arguments and the
// items a dict or list subclass pickles after itself (SETITEMS/APPENDS).
struct RecordValue {
    std::string class_name;
    ValuePtr args;
    ValuePtr state;
    ValuePtr kwargs;                                        // a DictValue, or null
    std::vector<std::pair<ValuePtr, ValuePtr>> dict_items;  // insertion order
    std::vector<ValuePtr> list_items;

    [[nodiscard]] static RecordValue of(std::string class_name, ValuePtr args) {
        RecordValue record;
        record.class_name = std::move(class_name);
        record.args = std::move(args);
        return record;
    }
};
// getattr(record, "name"): a bound method kept as data. Calling it is refused.
struct MethodValue {
    ValuePtr self;
    std::string name;
};

// A tensor that is not one strided view of one storage: sparse (its index
// and value tensors), quantized (its integers and quantizer) or meta (shape
// only). Checked and described by loader/tensor_kinds.cpp.
enum class TensorKind : std::uint8_t {
    sparse_coo,
    sparse_csr,
    sparse_csc,
    sparse_bsr,
    sparse_bsc,
    quantized,
    meta
};
struct TensorKindValue {
    TensorKind kind = TensorKind::meta;
    // The data, each a TensorValue: "indices"/"values" (COO),
    // "compressed_indices"/"plain_indices"/"values" (compressed layouts),
    // "int_repr" and, per channel, "scales"/"zero_points" (quantized).
    std::vector<std::pair<std::string, ValuePtr>> parts;
    std::vector<std::uint64_t> shape;   // the tensor's size
    std::vector<std::uint64_t> stride;  // meta only
    DType dtype = DType::float32;       // meta only
    std::optional<bool> coalesced;      // COO, when the pickle says (torch >= 2.1)
    std::string qtype;                  // "qint8", "quint8", "qint32"
    bool per_channel = false;
    double scale = 0;  // per tensor
    std::int64_t zero_point = 0;
    std::int64_t axis = 0;  // per channel
    bool requires_grad = false;
    bool parameter = false;
    std::uint32_t id = 0;
};

// The two alternatives that are both large and rare (a record per pickled
// object, a tensor kind per sparse or quantized tensor) live out of line, so a
// Value, one per pickled int, str or tensor, stays at the size of a DictValue:
// 88 bytes rather than 168, which is a third less memory first touched for a
// 20,000-tensor file.
template <typename T>
struct Boxed {
    std::unique_ptr<T> held;
};
template <typename T>
inline constexpr bool kBoxed = std::is_same_v<T, RecordValue> || std::is_same_v<T, TensorKindValue>;
template <typename T>
using Stored = std::conditional_t<kBoxed<T>, Boxed<T>, T>;

using ValueVariant =
    std::variant<NoneValue, BoolValue, IntValue, BigIntValue, FloatValue, ComplexValue, StringValue,
                 BytesValue, ListValue, TupleValue, SetValue, DictValue, GlobalValue, StorageValue,
                 TensorValue, DTypeValue, DeviceValue, Boxed<RecordValue>, Boxed<TensorKindValue>,
                 MethodValue>;

struct Value {
    ValueVariant v;

    template <typename T>
    [[nodiscard]] T* as() noexcept {
        if constexpr (kBoxed<T>) {
            auto* boxed = std::get_if<Boxed<T>>(&v);
            return boxed != nullptr ? boxed->held.get() : nullptr;
        } else {
            return std::get_if<T>(&v);
        }
    }
    template <typename T>
    [[nodiscard]] const T* as() const noexcept {
        if constexpr (kBoxed<T>) {
            const auto* boxed = std::get_if<Boxed<T>>(&v);
            return boxed != nullptr ? boxed->held.get() : nullptr;
        } else {
            return std::get_if<T>(&v);
        }
    }
    template <typename T>
    [[nodiscard]] bool is() const noexcept {
        return std::holds_alternative<Stored<T>>(v);
    }
};

template <typename T>
[[nodiscard]] ValuePtr make_value(T&& alternative) {
    using Plain = std::remove_cvref_t<T>;
    if constexpr (kBoxed<Plain>) {
        return std::make_shared<Value>(Value{
            ValueVariant{Boxed<Plain>{std::make_unique<Plain>(std::forward<T>(alternative))}}});
    } else {
        return std::make_shared<Value>(Value{ValueVariant{std::forward<T>(alternative)}});
    }
}

// A short type name for error messages ("dict", "tuple", "global os.system").
[[nodiscard]] std::string describe(const Value& value);

// Lists, tuples, sets, dicts and records: the values that hold other values
// (and so can form cycles through the memo).
[[nodiscard]] bool is_container(const Value& value) noexcept;

// The integer held by an IntValue or BoolValue, if any.
[[nodiscard]] std::optional<std::int64_t> as_int(const Value& value);

}  // namespace picklejail::loader
