// The restricted pickle machine on arbitrary bytes (loader/pickle_vm.hpp),
// under the checkpoint policy and under inert (references, records, getattr,
// the object graph with shared nodes and cycles), then everything that walks what it built: the
// flattener (names, aliases, the JSON description) and the safetensors writer, whose image must
// pass the checker. Persistent ids are parsed as torch's readers parse them (5 or 6 fields) and
// bound to zero-filled storages of the declared size.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_support.hpp"
#include "loader/global_calls.hpp"
#include "loader/object_arena.hpp"
#include "loader/object_flattener.hpp"
#include "loader/persistent_id.hpp"
#include "loader/pickle_vm.hpp"
#include "loader/safetensors_writer.hpp"
#include "loader/storage_table.hpp"

using namespace picklejail;
using namespace picklejail::loader;

namespace {

constexpr std::uint64_t kMaxBoundStorage = 1 << 20;

ValuePtr load_storage(const ValuePtr& pid, CallContext& ctx) {
    const auto* tuple = pid->as<TupleValue>();
    const std::size_t arity = tuple != nullptr && tuple->items.size() == 6 ? 6 : 5;
    const StoragePid storage = parse_storage_pid(pid, arity, ctx);
    const auto index =
        ctx.storages.declare(storage.key, storage.dtype, storage.numel, storage.location);
    Storage& declared = ctx.storages.at(index);
    if (!declared.bound && declared.nbytes <= kMaxBoundStorage) {
        ctx.storages.bind(index, ctx.storages.own_buffer(declared.nbytes), storage.key == "be");
    }
    return ctx.arena.make(StorageValue{index});
}

void write_image(const FlattenedObject& flat, const StorageTable& storages, const Limits& limits) {
    std::vector<TensorSource> sources;
    for (const auto& named : flat.tensors) {
        const Storage& storage = storages.at(named.view.storage);
        if (!storage.bound) return;  // larger than this driver binds
        sources.push_back(TensorSource{named.name, named.view.dtype, named.view.shape,
                                       named.view.stride, named.view.offset, storage.bytes,
                                       storage.big_endian});
    }
    std::map<std::string, std::string> metadata{{"format", "pt"},
                                                {"picklejail.object", flat.description}};
    for (const auto& [alias, kept] : flat.aliases) metadata.emplace(alias, kept);
    const auto layout = SafetensorsLayout::plan(std::move(sources), metadata, limits);
    std::vector<std::byte> image(layout.total_size());
    layout.write(image);
    fuzz::require_valid_image(image, "the pickle VM + flattener + writer");
}

}  // namespace

namespace {

void run_under(const Policy& policy, std::span<const std::byte> input) {
    const Limits limits = fuzz::fuzz_limits();
    StorageTable storages(limits);
    ObjectArena arena(limits);
    CallContext ctx{policy, limits, storages, arena};
    try {
        PickleVm vm(input, ctx, &load_storage);
        const ValuePtr root = vm.run();
        const FlattenedObject flat = flatten_object(
            root, limits, storages, policy.inert() ? ObjectShape::graph : ObjectShape::tree);
        write_image(flat, storages, limits);
    } catch (const Error& e) {
        // Every refusal is an Error; anything else escapes and is a finding.
        fuzz::require_not_internal(e, "the pickle VM");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = std::as_bytes(std::span(data, size));
    run_under(fuzz::checkpoint_policy(), input);
    run_under(fuzz::inert_policy(), input);
    return 0;
}
