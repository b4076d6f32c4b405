#include "loader/object_arena.hpp"

#include <algorithm>

namespace picklejail::loader {

// Newest first: a tuple is built after its items, so freeing it lets them
// go in the same pass. A freed container's children that are containers are
// still held here, so freeing one never recurses down a deep chain.
void ObjectArena::sweep() {
    for (auto it = containers_.rbegin(); it != containers_.rend(); ++it) {
        if (it->use_count() == 1) it->reset();
    }
    std::erase(containers_, nullptr);
    next_sweep_ = std::max(kFirstSweep, 2 * containers_.size());
}

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
