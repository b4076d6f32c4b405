#include "loader/object_flattener.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/error.hpp"
#include "loader/json_text.hpp"
#include "loader/tensor_kinds.hpp"

namespace picklejail::loader {
namespace {

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

// One step of the path to a node, for tensor names.
struct PathPart {
    std::optional<std::string> text;  // nullopt: a step that cannot name a tensor (a tuple key)
    bool skipped = false;             // a module's _parameters/_buffers/_modules: absent from names

    PathPart(std::nullopt_t) {}  // NOLINT(google-explicit-constructor): pushed as values
    PathPart(std::optional<std::string> part) : text(std::move(part)) {}  // NOLINT
    PathPart(std::string part) : text(std::move(part)) {}                 // NOLINT
    PathPart(const char* part) : text(std::string(part)) {}               // NOLINT

    [[nodiscard]] static PathPart skip() {
        PathPart part{std::string()};
        part.skipped = true;
        return part;
    }
};

// What a pickled torch.nn.Module's __dict__ holds: its tensors are named as
// module.state_dict() names them, so these three keys are not part of names.
bool is_module_container_key(const Value& key) {
    const auto* text = key.as<StringValue>();
    return text != nullptr &&
           (text->utf8 == "_parameters" || text->utf8 == "_buffers" || text->utf8 == "_modules");
}

bool has_key(const DictValue& dict, std::string_view wanted) {
    return std::any_of(dict.items.begin(), dict.items.end(), [wanted](const auto& item) {
        const auto* text = item.first->template as<StringValue>();
        return text != nullptr && text->utf8 == wanted;
    });
}

const Value* item_of(const DictValue& dict, std::string_view wanted) {
    for (const auto& [key, value] : dict.items) {
        const auto* text = key->as<StringValue>();
        if (text != nullptr && text->utf8 == wanted) return value.get();
    }
    return nullptr;
}

// The pickled torch.nn.Module whose __dict__ is being written: its tensors
// are named as module.state_dict() names them, except the buffers it keeps out
// of state_dict(), which keep "_buffers" in their names.
struct ModuleScope {
    const DictValue* state = nullptr;    // the module's __dict__
    const DictValue* buffers = nullptr;  // its _buffers, when some are non-persistent
    std::unordered_set<std::string> non_persistent;

    static ModuleScope of(const Value& state) {
        ModuleScope scope;
        const auto* dict = state.as<DictValue>();
        if (dict == nullptr || !has_key(*dict, "_parameters") || !has_key(*dict, "_buffers") ||
            !has_key(*dict, "_modules")) {
            return scope;
        }
        scope.state = dict;
        const Value* names = item_of(*dict, "_non_persistent_buffers_set");
        const auto* set = names != nullptr ? names->as<SetValue>() : nullptr;
        if (set == nullptr) return scope;
        for (const auto& name : set->items) {
            if (const auto* text = name->as<StringValue>()) scope.non_persistent.insert(text->utf8);
        }
        if (!scope.non_persistent.empty())
            scope.buffers = item_of(*dict, "_buffers")->as<DictValue>();
        return scope;
    }
};

class Flattener {
  public:
    Flattener(const Limits& limits, const StorageTable& storages, ObjectShape shape)
        : limits_(limits), storages_(storages), shape_(shape) {}

    FlattenedObject run(const ValuePtr& root) {
        FlattenedObject out;
        if (shape_ == ObjectShape::graph) find_shared(root);
        walk(root, 0);
        out.description = std::move(text_);
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
        if (header_bytes_ > limits_.max_header_bytes) fail_header_too_large();
    }

    [[noreturn, gnu::noinline, gnu::cold]] void fail_header_too_large() const {
        throw Error(ErrorCode::too_large,
                    "the object's description and tensor names need more than " +
                        std::to_string(limits_.max_header_bytes) +
                        " bytes of safetensors header (limit max_header_bytes)");
    }

    // A container reached more than once is written whole at its first
    // occurrence as {"shared": K, "value": ...} and as {"ref": K} after that,
    // so shared objects stay shared and cycles through mutable ones can be
    // rebuilt (docs/output-format.md).
    void walk(const ValuePtr& value, std::size_t depth) {
        enter(depth);
        if (shape_ == ObjectShape::tree) return walk_tree(value, depth);
        const Value* node = value.get();
        if (!is_container(*value) || !shared_.contains(node)) return visit(*value, depth);
        if (!open_shared(*value)) return;
        visit(*value, depth);
        on_path_.erase(node);
        text_.push_back('}');
    }

    // Writes {"ref": K} for a shared container seen before (false), or opens
    // {"shared": K, "value": for its first occurrence (true).
    [[gnu::noinline]] bool open_shared(const Value& value) {
        const Value* node = &value;
        if (const auto known = shared_ids_.find(node); known != shared_ids_.end()) {
            if (on_path_.contains(node) && is_immutable(value)) {
                throw Error(ErrorCode::unsupported, "a " + describe(value) +
                                                        " contains itself (a reference cycle at " +
                                                        path_string() + ")");
            }
            text_ += "{\"ref\":";
            append_json_integer(text_, known->second);
            text_.push_back('}');
            return false;
        }
        const auto id = static_cast<std::int64_t>(shared_ids_.size());
        shared_ids_.emplace(node, id);
        text_ += "{\"shared\":";
        append_json_integer(text_, id);
        text_ += ",\"value\":";
        on_path_.insert(node);
        return true;
    }

    // The tree shape: what is reached twice is written twice (the visit and
    // header limits bound a memo-multiplied graph); a cycle is malformed.
    void walk_tree(const ValuePtr& value, std::size_t depth) {
        // Only a container can lead back to itself; leaves skip the bookkeeping.
        const bool container = is_container(*value);
        if (container && !on_path_.insert(value.get()).second) fail_cycle();
        visit(*value, depth);
        if (container) on_path_.erase(value.get());
    }

    [[noreturn, gnu::noinline, gnu::cold]] void fail_cycle() const {
        throw Error(ErrorCode::malformed,
                    "the object contains itself (a reference cycle at " + path_string() + ")");
    }

    // Python could not have built it, and a set or dict that holds itself
    // would otherwise reach clients as a cycle: list, dict and set values (or
    // tuples holding them) as keys or set items are malformed. Iterative: a
    // key can be a deep tuple.
    void check_hashable(const Value& key, std::string_view what) const {
        std::vector<const Value*> pending{&key};
        while (!pending.empty()) {
            const Value* value = pending.back();
            pending.pop_back();
            const auto* set = value->as<SetValue>();
            if (value->is<ListValue>() || value->is<DictValue>() ||
                (set != nullptr && !set->frozen)) {
                throw Error(ErrorCode::malformed, "unhashable " + std::string(what) + " (a " +
                                                      describe(*value) + ") at " + path_string());
            }
            if (const auto* tuple = value->as<TupleValue>()) {
                for (const auto& item : tuple->items) pending.push_back(item.get());
            }
            if (set != nullptr) {
                for (const auto& item : set->items) pending.push_back(item.get());
            }
        }
    }

    static bool is_immutable(const Value& value) {
        const auto* set = value.as<SetValue>();
        return value.is<TupleValue>() || (set != nullptr && set->frozen);
    }

    // Every container reached more than once from the root, found without
    // recursion; each container's children are listed once.
    void find_shared(const ValuePtr& root) {
        std::unordered_set<const Value*> reached;
        std::vector<const Value*> pending{root.get()};
        const auto push = [&pending](const ValuePtr& child) {
            if (child) pending.push_back(child.get());
        };
        while (!pending.empty()) {
            const Value* value = pending.back();
            pending.pop_back();
            if (!is_container(*value)) continue;
            if (!reached.insert(value).second) {
                shared_.insert(value);
                continue;
            }
            for_each_child(*value, push);
        }
    }

    template <typename Push>
    static void for_each_child(const Value& value, const Push& push) {
        const auto items = [&push](const std::vector<ValuePtr>& values) {
            for (const auto& item : values) push(item);
        };
        const auto pairs = [&push](const std::vector<std::pair<ValuePtr, ValuePtr>>& entries) {
            for (const auto& [key, item] : entries) {
                push(key);
                push(item);
            }
        };
        if (const auto* l = value.as<ListValue>()) items(l->items);
        if (const auto* t = value.as<TupleValue>()) items(t->items);
        if (const auto* set = value.as<SetValue>()) items(set->items);
        if (const auto* d = value.as<DictValue>()) {
            pairs(d->items);
            push(d->attributes);
        }
        if (const auto* r = value.as<RecordValue>()) {
            push(r->args);
            push(r->kwargs);
            push(r->state);
            pairs(r->dict_items);
            items(r->list_items);
        }
        if (const auto* m = value.as<MethodValue>()) push(m->self);
    }

    // What reaching any node costs: a byte of header, a visit, a level of depth.
    void enter(std::size_t depth) {
        spend(1);
        if (++visited_ > limits_.max_objects) fail_too_many_objects();
        if (depth > limits_.max_nesting_depth) fail_too_deep();
    }

    [[noreturn, gnu::noinline, gnu::cold]] void fail_too_many_objects() const {
        throw Error(ErrorCode::too_large, "object graph expands to more than " +
                                              std::to_string(limits_.max_objects) +
                                              " nodes (limit max_objects; shared references are "
                                              "counted each time they are reached)");
    }

    [[noreturn, gnu::noinline, gnu::cold]] void fail_too_deep() const {
        throw Error(ErrorCode::too_large, "containers nested deeper than " +
                                              std::to_string(limits_.max_nesting_depth) +
                                              " (limit max_nesting_depth)");
    }

    // {"tag":
    void open_tagged(std::string_view tag) {
        text_ += "{\"";
        text_ += tag;
        text_ += "\":";
    }

    void tagged_string(std::string_view tag, std::string_view value) {
        open_tagged(tag);
        append_json_string(text_, value);
        text_.push_back('}');
    }

    void number(double value) {
        if (std::isnan(value)) return tagged_string("float", "nan");
        if (std::isinf(value)) return tagged_string("float", value > 0 ? "inf" : "-inf");
        append_json_double(text_, value);
    }

    // The recursion runs walk -> visit -> a container's writer -> walk, at most
    // max_nesting_depth times: those frames stay small (leaves, messages and
    // their string temporaries live in frames of their own), so the default
    // limit fits an 8 MiB stack even in a sanitizer build.
    void visit(const Value& value, std::size_t depth) {
        if (const auto* l = value.as<ListValue>()) {
            sequence(l->items, depth);
        } else if (const auto* t = value.as<TupleValue>()) {
            tuple(*t, depth);
        } else if (const auto* set = value.as<SetValue>()) {
            set_node(*set, depth);
        } else if (const auto* d = value.as<DictValue>()) {
            dict(*d, depth);
        } else if (const auto* r = value.as<RecordValue>()) {
            record(*r, depth);
        } else if (const auto* m = value.as<MethodValue>()) {
            method(*m, depth);
        } else if (const auto* kind = value.as<TensorKindValue>()) {
            tensor_kind(*kind, depth);
        } else {
            leaf(value);
        }
    }

    [[gnu::noinline]] void leaf(const Value& value) {
        if (value.is<NoneValue>()) {
            text_ += "null";
        } else if (const auto* b = value.as<BoolValue>()) {
            text_ += b->value ? "true" : "false";
        } else if (const auto* i = value.as<IntValue>()) {
            append_json_integer(text_, i->value);
        } else if (const auto* big = value.as<BigIntValue>()) {
            spend(2 * big->le_bytes.size());
            tagged_string("int", big_int_hex(*big));
        } else if (const auto* f = value.as<FloatValue>()) {
            number(f->value);
        } else if (const auto* c = value.as<ComplexValue>()) {
            open_tagged("complex");
            text_.push_back('[');
            number(c->real);
            text_.push_back(',');
            number(c->imag);
            text_ += "]}";
        } else if (const auto* s = value.as<StringValue>()) {
            spend(s->utf8.size());
            append_json_string(text_, s->utf8);
        } else if (const auto* bytes = value.as<BytesValue>()) {
            spend((bytes->bytes.size() + 2) / 3 * 4);
            tagged_string(bytes->bytearray ? "bytearray" : "bytes", base64(bytes->bytes));
        } else if (const auto* tensor_value = value.as<TensorValue>()) {
            tensor(*tensor_value);
        } else if (const auto* dt = value.as<DTypeValue>()) {
            tagged_string("dtype", info(dt->dtype).torch_name);
        } else if (const auto* dev = value.as<DeviceValue>()) {
            spend(dev->spec.size());
            tagged_string("device", dev->spec);
        } else if (const auto* g = value.as<GlobalValue>()) {
            tagged_string("global", g->name);
        } else {
            throw Error(ErrorCode::unsupported, "a bare " + describe(value) + " at " +
                                                    path_string() + " cannot be represented");
        }
    }

    [[gnu::noinline]] void tuple(const TupleValue& t, std::size_t depth) {
        open_tagged(t.torch_size ? "size" : "tuple");
        sequence(t.items, depth);
        text_.push_back('}');
    }

    [[gnu::noinline]] void set_node(const SetValue& set, std::size_t depth) {
        if (shape_ == ObjectShape::graph) {
            for (const auto& item : set.items) check_hashable(*item, "set item");
        }
        open_tagged(set.frozen ? "frozenset" : "set");
        sequence(set.items, depth);
        text_.push_back('}');
    }

    [[gnu::noinline]] void sequence(const std::vector<ValuePtr>& items, std::size_t depth) {
        text_.push_back('[');
        for (std::size_t i = 0; i < items.size(); ++i) {
            if (i != 0) text_.push_back(',');
            push_index(i);
            walk(items[i], depth + 1);
            path_.pop_back();
        }
        text_.push_back(']');
    }

    // Python's str() of a key, for tensor names; empty when it has none.
    static std::optional<std::string> key_component(const Value& key) {
        if (const auto* s = key.as<StringValue>()) return s->utf8;
        if (const auto* i = key.as<IntValue>()) return std::to_string(i->value);
        if (const auto* b = key.as<BoolValue>()) return b->value ? "True" : "False";
        if (key.is<NoneValue>()) return "None";
        return std::nullopt;
    }

    static std::string_view dict_tag(DictValue::Kind kind) noexcept {
        switch (kind) {
            case DictValue::Kind::ordered_dict:
                return "odict";
            case DictValue::Kind::default_dict:
                return "defaultdict";
            case DictValue::Kind::counter:
                return "counter";
            case DictValue::Kind::dict:
                break;
        }
        return "dict";
    }

    [[gnu::noinline]] void dict(const DictValue& d, std::size_t depth) {
        const bool module_buffers = &d == module_.buffers;
        if (!module_buffers && holds_plain_tensors(d)) return tensor_dict(d, depth);
        open_tagged(dict_tag(d.kind));
        pairs(d.items, depth,
              &d == module_.state ? Pairs::module_dict
                                  : (module_buffers ? Pairs::module_buffers : Pairs::plain));
        if (!d.factory.empty()) {
            text_ += ",\"factory\":";
            append_json_string(text_, d.factory);
        }
        attributes(d, depth);
        text_.push_back('}');
    }

    enum class Pairs : std::uint8_t { plain, module_dict, module_buffers };

    // [[key, value], ...]; in a module's __dict__ the _parameters, _buffers and
    // _modules keys are left out of tensor names, as state_dict() leaves them.
    [[gnu::noinline]] void pairs(const std::vector<std::pair<ValuePtr, ValuePtr>>& entries,
                                 std::size_t depth, Pairs kind) {
        text_.push_back('[');
        for (std::size_t index = 0; index < entries.size(); ++index) {
            const auto& [key, value] = entries[index];
            text_ += index == 0 ? "[" : ",[";
            const bool positional = push_key_path(*key, index);
            walk(key, depth + 1);
            if (positional) path_.erase(path_.end() - 2, path_.end());
            text_.push_back(',');
            push_item_part(kind, *key, index, positional);
            walk(value, depth + 1);
            path_.pop_back();
            text_.push_back(']');
        }
        text_.push_back(']');
    }

    // A key that cannot name a tensor is, in the graph shape, named by its
    // position: "#i.key" (tensors inside the key) and "#i" (the value).
    [[gnu::noinline]] bool push_key_path(const Value& key, std::size_t index) {
        if (shape_ != ObjectShape::graph || key_component(key)) return false;
        check_hashable(key, "dict key");
        path_.emplace_back("#" + std::to_string(index));
        path_.emplace_back("key");
        return true;
    }

    [[gnu::noinline]] void push_item_part(Pairs kind, const Value& key, std::size_t index,
                                          bool positional) {
        path_.push_back(item_part(kind, key,
                                  positional
                                      ? std::optional<std::string>("#" + std::to_string(index))
                                      : key_component(key)));
    }

    [[gnu::noinline]] void push_index(std::size_t index) {
        path_.emplace_back(std::to_string(index));
    }

    // nullopt: a key that cannot name a tensor.
    [[nodiscard]] PathPart item_part(Pairs kind, const Value& key,
                                     std::optional<std::string> component) const {
        if (kind == Pairs::module_dict && is_module_container_key(key)) return PathPart::skip();
        if (kind == Pairs::module_buffers && component &&
            module_.non_persistent.contains(*component)) {
            return PathPart("_buffers." + *component);
        }
        return component;
    }

    [[gnu::noinline]] void attributes(const DictValue& d, std::size_t depth) {
        if (!d.attributes) return;
        text_ += ",\"attrs\":";
        path_.push_back(std::nullopt);
        walk(d.attributes, depth + 1);
        path_.pop_back();
    }

    // A dict or OrderedDict of string keys to tensors that carry nothing but
    // their bytes (on the CPU, no Parameter, no requires_grad), pickled one
    // after another (consecutive ids): the shape of every state_dict(). It is
    // described by its keys alone (docs/output-format.md), since each tensor's
    // name, id and dtype follow from them; for a file of many small tensors the
    // full nodes were most of the header and of every client's parsing.
    [[nodiscard]] bool holds_plain_tensors(const DictValue& d) const {
        if (d.items.empty() ||
            (d.kind != DictValue::Kind::dict && d.kind != DictValue::Kind::ordered_dict)) {
            return false;
        }
        if (!nameable_path_length()) return false;  // the full walk reports it
        const auto* first = d.items.front().second->as<TensorValue>();
        if (first == nullptr) return false;
        std::uint64_t next_id = first->id;
        for (const auto& [key, value] : d.items) {
            const auto* t = value->as<TensorValue>();
            if (!key->is<StringValue>() || t == nullptr || t->id != next_id++ || t->parameter ||
                t->requires_grad || !on_cpu(*t)) {
                return false;
            }
        }
        return true;
    }

    [[nodiscard]] bool on_cpu(const TensorValue& t) const {
        const auto& location = storages_.at(t.storage).location;
        return location.empty() || location == "cpu";
    }

    // {"odict_of_tensors": [keys], "first_id": N, "prefix": "path.", "attrs": ...},
    // with each key and tensor counted and charged as walk() would.
    [[gnu::noinline]] void tensor_dict(const DictValue& d, std::size_t depth) {
        open_tagged(d.kind == DictValue::Kind::ordered_dict ? "odict_of_tensors"
                                                            : "dict_of_tensors");
        text_.push_back('[');
        // Each name is the dict's own path plus "." plus the key, charged as
        // tensor_name() charges it (holds_plain_tensors checked the path).
        std::string prefix_dot = joined_path();
        if (!prefix_dot.empty()) prefix_dot.push_back('.');
        const std::uint64_t path_length = nameable_path_length().value_or(0);
        bool first = true;
        for (const auto& [key, value] : d.items) {
            if (!first) text_.push_back(',');
            first = false;
            const std::string& key_text = key->as<StringValue>()->utf8;
            enter(depth + 1);
            spend(key_text.size());
            append_json_string(text_, key_text);
            enter(depth + 1);
            spend(2 * (path_length + key_text.size() + 1));
            record_tensor(*value->as<TensorValue>(), prefix_dot + key_text);
        }
        text_ += "],\"first_id\":";
        append_json_integer(text_, d.items.front().second->as<TensorValue>()->id);
        if (!prefix_dot.empty()) {
            text_ += ",\"prefix\":";
            append_json_string(text_, prefix_dot);
        }
        attributes(d, depth);
        text_.push_back('}');
    }

    // {"object": name, "args", "kwargs"?, "state"?, "dictitems"?, "listitems"?}.
    // Tensors in a record are named by field (a dict state's keys, the items),
    // by __args__.i / __kwargs__.key, and a module's as its state_dict() names them.
    [[gnu::noinline]] void record(const RecordValue& r, std::size_t depth) {
        open_tagged("object");
        append_json_string(text_, r.class_name);
        text_ += ",\"args\":";
        path_.emplace_back("__args__");
        if (r.args) {
            walk(r.args, depth + 1);
        } else {
            text_ += "null";
        }
        path_.pop_back();
        if (r.kwargs) {
            text_ += ",\"kwargs\":";
            path_.emplace_back("__kwargs__");
            walk(r.kwargs, depth + 1);
            path_.pop_back();
        }
        if (r.state) {
            text_ += ",\"state\":";
            ModuleScope outer = std::exchange(module_, ModuleScope::of(*r.state));
            walk(r.state, depth + 1);
            module_ = std::move(outer);
        }
        if (!r.dict_items.empty()) {
            text_ += ",\"dictitems\":";
            pairs(r.dict_items, depth, Pairs::plain);
        }
        if (!r.list_items.empty()) {
            text_ += ",\"listitems\":";
            sequence(r.list_items, depth);
        }
        text_.push_back('}');
    }

    // {"method": name, "self": node}: getattr(record, name), never called.
    [[gnu::noinline]] void method(const MethodValue& m, std::size_t depth) {
        tagged_string_open("method", m.name);
        text_ += ",\"self\":";
        path_.emplace_back("__self__");
        walk(m.self, depth + 1);
        path_.pop_back();
        text_.push_back('}');
    }

    void tagged_string_open(std::string_view tag, std::string_view value) {
        spend(value.size());
        open_tagged(tag);
        append_json_string(text_, value);
    }

    // A sparse, quantized or meta tensor: its own node, whose data tensors are
    // named under its path ("name.indices", "name.values"; loader/tensor_kinds.hpp).
    [[gnu::noinline]] void tensor_kind(const TensorKindValue& t, std::size_t depth) {
        const bool bare = path_.empty();  // torch.save(sparse): named like a bare tensor
        if (bare) path_.emplace_back("tensor");
        check_tensor_kind_data(t, storages_, path_string());
        tagged_string(tensor_kind_tag(t), tensor_kind_tag_value(t));
        text_.pop_back();  // reopen the object for the fields
        append_tensor_kind_fields(text_, t);
        spend(64 + 24 * (t.shape.size() + t.stride.size()));
        for (const auto& [name, part] : t.parts) {
            text_ += ",\"";
            text_ += name;
            text_ += "\":";
            path_.emplace_back(name);
            walk(part, depth + 1);
            path_.pop_back();
        }
        text_.push_back('}');
        if (bare) path_.pop_back();
    }

    void tensor(const TensorValue& t) {
        std::string name = tensor_name();
        open_tagged("tensor");
        append_json_string(text_, name);
        text_ += ",\"id\":";
        append_json_integer(text_, t.id);
        text_ += ",\"dtype\":\"";
        text_ += info(t.dtype).torch_name;
        text_.push_back('"');
        const auto& location = storages_.at(t.storage).location;
        if (!location.empty() && location != "cpu") {
            text_ += ",\"device\":";
            append_json_string(text_, location);
        }
        if (t.parameter) text_ += ",\"parameter\":true";
        if (t.requires_grad) text_ += ",\"requires_grad\":true";
        text_.push_back('}');
        record_tensor(t, std::move(name));
    }

    void record_tensor(const TensorValue& t, std::string name) {
        spend(48);  // "tensor", "id", "dtype" and the header entry's own fields
        occurrences_.push_back({std::move(name), &t});
    }

    std::string tensor_name() {
        if (path_.empty()) return "tensor";  // torch.save(tensor): the object is one tensor
        const auto length = nameable_path_length();
        if (!length) {
            throw Error(ErrorCode::unsupported,
                        "a tensor sits under a key or attribute that cannot name it (" +
                            path_string() + ")");
        }
        // The name goes into the description and into the header (key or alias),
        // and memo-shared keys can make it far longer than the file: charge first.
        spend(2 * *length);
        return joined_path();
    }

    // Σ (part size + 1) over the path: what a name under it costs; nullopt when
    // a part (a tuple key, an attribute of a record's arguments) cannot name one.
    [[nodiscard]] std::optional<std::uint64_t> nameable_path_length() const {
        std::uint64_t length = 0;
        for (const auto& part : path_) {
            if (part.skipped) continue;
            if (!part.text) return std::nullopt;
            length += part.text->size() + 1;
        }
        return length;
    }

    // The path's parts joined with '.' (no dot after an empty start, as the
    // reference flatten does); each part is present (checked first).
    [[nodiscard]] std::string joined_path() const {
        std::string name;
        for (const auto& part : path_) {
            if (part.skipped) continue;
            if (!name.empty()) name.push_back('.');
            name += *part.text;
        }
        return name;
    }

    // For messages: the path to the current node, cut short when long.
    std::string path_string() const {
        constexpr std::size_t kMaxShown = 512;
        std::string out = "<root>";
        for (const auto& part : path_) {
            if (part.skipped) continue;
            out += "." + part.text.value_or("?").substr(0, kMaxShown);
            if (out.size() > kMaxShown) {
                out.resize(kMaxShown);
                out += "...";
                break;
            }
        }
        return out;
    }

    // Identical views of one storage are stored once (Hugging Face's
    // convention): occurrences are grouped by view, in the view's order.
    static bool same_view(const TensorValue& a, const TensorValue& b) noexcept {
        return a.storage == b.storage && a.dtype == b.dtype && a.offset == b.offset &&
               a.shape == b.shape && a.stride == b.stride;
    }
    static bool view_before(const TensorValue& a, const TensorValue& b) noexcept {
        return std::tie(a.storage, a.dtype, a.offset, a.shape, a.stride) <
               std::tie(b.storage, b.dtype, b.offset, b.shape, b.stride);
    }

    void assign_names(FlattenedObject& out) {
        std::unordered_set<std::string_view> seen;
        seen.reserve(occurrences_.size());
        for (const auto& occurrence : occurrences_) {
            if (!seen.insert(occurrence.name).second) {
                throw Error(ErrorCode::malformed,
                            "two tensors flatten to the same name \"" + occurrence.name + "\"");
            }
            if (occurrence.name == "__metadata__") {
                throw Error(ErrorCode::malformed, "a tensor is named \"__metadata__\"");
            }
        }
        std::vector<Occurrence*> order;
        order.reserve(occurrences_.size());
        for (auto& occurrence : occurrences_) order.push_back(&occurrence);
        std::stable_sort(order.begin(), order.end(), [](const Occurrence* a, const Occurrence* b) {
            return view_before(*a->view, *b->view);
        });
        out.tensors.reserve(order.size());
        for (std::size_t begin = 0, end = 0; begin < order.size(); begin = end) {
            Occurrence* kept = order[begin];
            for (end = begin + 1; end < order.size() && same_view(*order[end]->view, *kept->view);
                 ++end) {
                if (order[end]->name < kept->name) kept = order[end];  // smallest name wins
            }
            for (std::size_t i = begin; i < end; ++i) {
                if (order[i] != kept) out.aliases.emplace(order[i]->name, kept->name);
            }
            out.tensors.push_back({std::move(kept->name), *kept->view});
        }
    }

    const Limits& limits_;
    const StorageTable& storages_;
    std::uint64_t visited_ = 0;
    std::uint64_t header_bytes_ = 0;
    std::vector<PathPart> path_;
    std::unordered_set<const Value*> on_path_;  // shared containers being written
    std::unordered_set<const Value*> shared_;   // containers reached more than once
    std::unordered_map<const Value*, std::int64_t> shared_ids_;
    ObjectShape shape_;
    ModuleScope module_;  // the module whose __dict__ is being written, if any
    std::vector<Occurrence> occurrences_;
    std::string text_;  // the description's JSON text, as it is written
};

}  // namespace

FlattenedObject flatten_object(const ValuePtr& root, const Limits& limits,
                               const StorageTable& storages, ObjectShape shape) {
    return Flattener(limits, storages, shape).run(root);
}

}  // namespace picklejail::loader
