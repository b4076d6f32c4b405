#include "loader/value.hpp"

namespace picklejail::loader {

std::string describe(const Value& value) {
    struct Namer {
        std::string operator()(const NoneValue&) const { return "None"; }
        std::string operator()(const BoolValue&) const { return "bool"; }
        std::string operator()(const IntValue&) const { return "int"; }
        std::string operator()(const BigIntValue&) const { return "int"; }
        std::string operator()(const FloatValue&) const { return "float"; }
        std::string operator()(const ComplexValue&) const { return "complex"; }
        std::string operator()(const StringValue&) const { return "str"; }
        std::string operator()(const BytesValue& b) const {
            return b.bytearray ? "bytearray" : "bytes";
        }
        std::string operator()(const ListValue&) const { return "list"; }
        std::string operator()(const TupleValue&) const { return "tuple"; }
        std::string operator()(const SetValue& s) const { return s.frozen ? "frozenset" : "set"; }
        std::string operator()(const DictValue& d) const {
            switch (d.kind) {
                case DictValue::Kind::ordered_dict:
                    return "collections.OrderedDict";
                case DictValue::Kind::default_dict:
                    return "collections.defaultdict";
                case DictValue::Kind::counter:
                    return "collections.Counter";
                case DictValue::Kind::dict:
                    break;
            }
            return "dict";
        }
        std::string operator()(const GlobalValue& g) const { return "global " + g.name; }
        std::string operator()(const StorageValue&) const { return "storage"; }
        std::string operator()(const TensorValue&) const { return "tensor"; }
        std::string operator()(const DTypeValue&) const { return "dtype"; }
        std::string operator()(const DeviceValue&) const { return "torch.device"; }
        std::string operator()(const Boxed<RecordValue>& r) const {
            return r.held->class_name + " object";
        }
        std::string operator()(const MethodValue& m) const {
            return "bound method " + m.name + " of a " + describe(*m.self);
        }
        std::string operator()(const Boxed<TensorKindValue>&) const { return "tensor"; }
    };
    return std::visit(Namer{}, value.v);
}

bool is_container(const Value& value) noexcept {
    return value.is<ListValue>() || value.is<TupleValue>() || value.is<SetValue>() ||
           value.is<DictValue>() || value.is<RecordValue>() || value.is<MethodValue>();
}

std::optional<std::int64_t> as_int(const Value& value) {
    if (const auto* i = value.as<IntValue>()) return i->value;
    if (const auto* b = value.as<BoolValue>()) return b->value ? 1 : 0;
    return std::nullopt;
}

}  // namespace picklejail::loader
