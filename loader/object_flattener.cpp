#include "loader/object_flattener.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_set>

#include "common/error.hpp"

namespace picklejail::loader {
namespace {

using Json = nlohmann::ordered_json;

// Identical views of one storage are stored once (Hugging Face's convention).
using ViewKey = std::tuple<std::uint32_t, DType, std::uint64_t, std::vector<std::uint64_t>,
                           std::vector<std::uint64_t>>;

std::string base64(std::string_view bytes) {
    static constexpr char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const auto n = (std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16) |
                       (std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
        for (int shift = 18; shift >= 0; shift -= 6) out.push_back(kAlphabet[(n >> shift) & 63]);
    }
    if (i < bytes.size()) {
        std::uint32_t n = std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16;
        if (i + 1 < bytes.size()) n |= std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8;
        out.push_back(kAlphabet[(n >> 18) & 63]);
        out.push_back(kAlphabet[(n >> 12) & 63]);
        out.push_back(i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

std::string big_int_hex(const BigIntValue& big) {
    // Two's-complement little-endian bytes, written as hex for the client.
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (const auto byte : big.le_bytes) {
        out.push_back(kDigits[byte >> 4]);
        out.push_back(kDigits[byte & 15]);
    }
    return out;
}

Json float_json(double value) {
    if (std::isnan(value)) return Json{{"float", "nan"}};
    if (std::isinf(value)) return Json{{"float", value > 0 ? "inf" : "-inf"}};
    return value;
}

class Flattener {
  public:
    Flattener(const Limits& limits, const StorageTable& storages)
        : limits_(limits), storages_(storages) {}

    FlattenedObject run(const ValuePtr& root) {
        FlattenedObject out;
        out.description = walk(root, 0);
        assign_names(out);
        return out;
    }

  private:
    struct Occurrence {
        std::string name;
        const TensorValue* view;
    };

    // Every byte of the description and of each tensor name ends up in the
    // safetensors header, which max_header_bytes caps. Charge them while they
    // are built (never more than the final header will hold), so a small file
    // whose memo references multiply long keys into long or countless names
    // stops with too_large here instead of exhausting memory first.
    void spend(std::uint64_t bytes) {
        header_bytes_ += std::min<std::uint64_t>(bytes, limits_.max_header_bytes + 1);
        if (header_bytes_ > limits_.max_header_bytes) {
            throw Error(ErrorCode::too_large,
                        "the object's description and tensor names need more than " +
                            std::to_string(limits_.max_header_bytes) +
                            " bytes of safetensors header (limit max_header_bytes)");
        }
    }

    Json walk(const ValuePtr& value, std::size_t depth) {
        spend(1);
        if (++visited_ > limits_.max_objects) {
            throw Error(ErrorCode::too_large,
                        "object graph expands to more than " + std::to_string(limits_.max_objects) +
                            " nodes (limit max_objects; shared references are "
                            "counted each time they are reached)");
        }
        if (depth > limits_.max_nesting_depth) {
            throw Error(ErrorCode::too_large, "containers nested deeper than " +
                                                  std::to_string(limits_.max_nesting_depth) +
                                                  " (limit max_nesting_depth)");
        }
        if (!on_path_.insert(value.get()).second) {
            throw Error(ErrorCode::malformed,
                        "the object contains itself (a reference cycle at " + path_string() + ")");
        }
        Json out = visit(*value, depth);
        on_path_.erase(value.get());
        return out;
    }

    Json visit(const Value& value, std::size_t depth) {
        if (value.is<NoneValue>()) return nullptr;
        if (const auto* b = value.as<BoolValue>()) return b->value;
        if (const auto* i = value.as<IntValue>()) return i->value;
        if (const auto* big = value.as<BigIntValue>()) {
            spend(2 * big->le_bytes.size());
            return Json{{"int", big_int_hex(*big)}};
        }
        if (const auto* f = value.as<FloatValue>()) return float_json(f->value);
        if (const auto* c = value.as<ComplexValue>())
            return Json{{"complex", {float_json(c->real), float_json(c->imag)}}};
        if (const auto* s = value.as<StringValue>()) {
            spend(s->utf8.size());
            return s->utf8;
        }
        if (const auto* b = value.as<BytesValue>()) {
            spend((b->bytes.size() + 2) / 3 * 4);
            return Json{{b->bytearray ? "bytearray" : "bytes", base64(b->bytes)}};
        }
        if (const auto* l = value.as<ListValue>()) return sequence(l->items, depth);
        if (const auto* t = value.as<TupleValue>())
            return Json{{t->torch_size ? "size" : "tuple", sequence(t->items, depth)}};
        if (const auto* s = value.as<SetValue>())
            return Json{{s->frozen ? "frozenset" : "set", sequence(s->items, depth)}};
        if (const auto* d = value.as<DictValue>()) return dict(*d, depth);
        if (const auto* t = value.as<TensorValue>()) return tensor(*t);
        if (const auto* d = value.as<DTypeValue>())
            return Json{{"dtype", info(d->dtype).torch_name}};
        if (const auto* d = value.as<DeviceValue>()) {
            spend(d->spec.size());
            return Json{{"device", d->spec}};
        }
        if (const auto* r = value.as<RecordValue>()) return record(*r, depth);
        if (const auto* g = value.as<GlobalValue>()) return Json{{"global", g->name}};
        throw Error(ErrorCode::unsupported, "a bare " + describe(value) + " at " + path_string() +
                                                " cannot be represented");
    }

    Json sequence(const std::vector<ValuePtr>& items, std::size_t depth) {
        Json out = Json::array();
        for (std::size_t i = 0; i < items.size(); ++i) {
            path_.push_back(std::to_string(i));
            out.push_back(walk(items[i], depth + 1));
            path_.pop_back();
        }
        return out;
    }

    // Python's str() of a key, for tensor names; empty when it has none.
    static std::optional<std::string> key_component(const Value& key) {
        if (const auto* s = key.as<StringValue>()) return s->utf8;
        if (const auto* i = key.as<IntValue>()) return std::to_string(i->value);
        if (const auto* b = key.as<BoolValue>()) return b->value ? "True" : "False";
        if (key.is<NoneValue>()) return "None";
        return std::nullopt;
    }

    Json dict(const DictValue& d, std::size_t depth) {
        Json items = Json::array();
        for (const auto& [key, value] : d.items) {
            Json key_json = walk(key, depth + 1);
            const auto component = key_component(*key);
            path_.push_back(component);  // nullopt: a key that cannot name a tensor
            items.push_back(Json::array({std::move(key_json), walk(value, depth + 1)}));
            path_.pop_back();
        }
        const char* tag = "dict";
        switch (d.kind) {
            case DictValue::Kind::ordered_dict:
                tag = "odict";
                break;
            case DictValue::Kind::default_dict:
                tag = "defaultdict";
                break;
            case DictValue::Kind::counter:
                tag = "counter";
                break;
            case DictValue::Kind::dict:
                break;
        }
        Json out{{tag, std::move(items)}};
        if (!d.factory.empty()) out["factory"] = d.factory;
        if (d.attributes) {
            path_.push_back(std::nullopt);
            out["attrs"] = walk(d.attributes, depth + 1);
            path_.pop_back();
        }
        return out;
    }

    Json record(const RecordValue& r, std::size_t depth) {
        Json out{{"object", r.class_name}};
        path_.push_back(std::nullopt);
        out["args"] = r.args ? walk(r.args, depth + 1) : Json(nullptr);
        path_.pop_back();
        if (r.state) {
            // Attributes of config objects name tensors like dict keys do.
            out["state"] = walk(r.state, depth + 1);
        }
        return out;
    }

    Json tensor(const TensorValue& t) {
        spend(48);  // "tensor", "id", "dtype" and the header entry's own fields
        const std::string name = tensor_name();
        occurrences_.push_back({name, &t});
        Json out{{"tensor", name}, {"id", t.id}, {"dtype", info(t.dtype).torch_name}};
        const auto& location = storages_.at(t.storage).location;
        if (!location.empty() && location != "cpu") out["device"] = location;
        if (t.parameter) out["parameter"] = true;
        if (t.requires_grad) out["requires_grad"] = true;
        return out;
    }

    std::string tensor_name() {
        if (path_.empty()) return "tensor";  // torch.save(tensor): the object is one tensor
        std::uint64_t length = 0;
        for (const auto& part : path_) {
            if (!part) {
                throw Error(ErrorCode::unsupported,
                            "a tensor sits under a key or attribute that cannot name it (" +
                                path_string() + ")");
            }
            length += part->size() + 1;
        }
        // The name goes into the description and into the header (key or alias),
        // and memo-shared keys can make it far longer than the file: charge first.
        spend(2 * length);
        std::string name;
        name.reserve(length);
        for (const auto& part : path_) {
            if (!name.empty()) name.push_back('.');
            name += *part;
        }
        return name;
    }

    // For messages: the path to the current node, cut short when long.
    std::string path_string() const {
        constexpr std::size_t kMaxShown = 512;
        std::string out = "<root>";
        for (const auto& part : path_) {
            out += "." + part.value_or("?").substr(0, kMaxShown);
            if (out.size() > kMaxShown) {
                out.resize(kMaxShown);
                out += "...";
                break;
            }
        }
        return out;
    }

    void assign_names(FlattenedObject& out) const {
        std::map<ViewKey, std::vector<const Occurrence*>> groups;
        std::set<std::string, std::less<>> seen;
        for (const auto& occurrence : occurrences_) {
            if (!seen.insert(occurrence.name).second) {
                throw Error(ErrorCode::malformed,
                            "two tensors flatten to the same name \"" + occurrence.name + "\"");
            }
            if (occurrence.name == "__metadata__") {
                throw Error(ErrorCode::malformed, "a tensor is named \"__metadata__\"");
            }
            const auto& v = *occurrence.view;
            groups[ViewKey{v.storage, v.dtype, v.offset, v.shape, v.stride}].push_back(&occurrence);
        }
        for (const auto& [key, members] : groups) {
            const Occurrence* kept = members.front();
            for (const auto* member : members) {
                if (member->name < kept->name) kept = member;  // lexicographically smallest wins
            }
            out.tensors.push_back({kept->name, *kept->view});
            for (const auto* member : members) {
                if (member != kept) out.aliases.emplace(member->name, kept->name);
            }
        }
    }

    const Limits& limits_;
    const StorageTable& storages_;
    std::uint64_t visited_ = 0;
    std::uint64_t header_bytes_ = 0;
    std::vector<std::optional<std::string>> path_;
    std::unordered_set<const Value*> on_path_;
    std::vector<Occurrence> occurrences_;
};

}  // namespace

FlattenedObject flatten_object(const ValuePtr& root, const Limits& limits,
                               const StorageTable& storages) {
    return Flattener(limits, storages).run(root);
}

}  // namespace picklejail::loader
