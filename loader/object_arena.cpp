#include "loader/object_arena.hpp"

namespace picklejail::loader {

ObjectArena::~ObjectArena() {
    for (const ValuePtr& value : containers_) {
        if (auto* list = value->as<ListValue>()) list->items.clear();
        if (auto* tuple = value->as<TupleValue>()) tuple->items.clear();
        if (auto* set = value->as<SetValue>()) set->items.clear();
        if (auto* dict = value->as<DictValue>()) {
            dict->items.clear();
            dict->attributes.reset();
        }
        if (auto* record = value->as<RecordValue>()) {
            record->args.reset();
            record->state.reset();
            record->kwargs.reset();
            record->dict_items.clear();
            record->list_items.clear();
        }
        if (auto* method = value->as<MethodValue>()) method->self.reset();
    }
}

}  // namespace picklejail::loader
