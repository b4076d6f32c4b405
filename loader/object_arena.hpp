// Owns every container the VM creates. Pickles can build cycles and very deep
// chains through the memo; with plain shared_ptr those would leak or recurse
// on destruction. The arena clears every container's children first, so
// teardown is flat and cycles are freed.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "loader/limits.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

class ObjectArena {
  public:
    explicit ObjectArena(const Limits& limits) : limits_(limits) {}
    ObjectArena(const ObjectArena&) = delete;
    ObjectArena& operator=(const ObjectArena&) = delete;
    ~ObjectArena();

    template <typename T>
    [[nodiscard]] ValuePtr make(T&& alternative) {
        count_object();
        ValuePtr value = make_value(std::forward<T>(alternative));
        if (is_container(*value)) containers_.push_back(value);
        return value;
    }

    // Containers that only the arena still holds are garbage: nothing can
    // reach them again. sweep() frees them; run it where no raw pointer into
    // the graph is live (the VM does, between opcodes). Due each time the
    // count of containers doubles, so sweeping costs O(1) per container.
    [[nodiscard]] bool sweep_due() const noexcept { return containers_.size() >= next_sweep_; }
    void sweep();
    [[nodiscard]] std::size_t containers_held() const noexcept { return containers_.size(); }

    // Counts work that is proportional to the input's object graph, so a
    // "billion laughs" file fails with too_large instead of exhausting memory.
    void count_object() {
        if (++objects_ > limits_.max_objects) {
            throw Error(ErrorCode::too_large, "more than " + std::to_string(limits_.max_objects) +
                                                  " objects (limit max_objects)");
        }
    }

  private:
    const Limits& limits_;
    static constexpr std::size_t kFirstSweep = 4096;

    std::vector<ValuePtr> containers_;
    std::size_t next_sweep_ = kFirstSweep;
    std::uint64_t objects_ = 0;
};

}  // namespace picklejail::loader
