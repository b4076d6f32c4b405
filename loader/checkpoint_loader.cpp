#include "loader/checkpoint_loader.hpp"

#include <nlohmann/json.hpp>
#include <set>

#include "loader/checkpoint_readers.hpp"
#include "loader/object_arena.hpp"
#include "loader/object_flattener.hpp"
#include "loader/storage_table.hpp"
#include "loader/zip_archive.hpp"

namespace picklejail::loader {

struct Conversion::Owned {
    explicit Owned(const Limits& l) : limits(l), storages(limits), arena(limits) {}
    Limits limits;
    StorageTable storages;
    // The object graph and its flattening live as long as the Conversion, so
    // tearing them down (a free per object) is the owner's choice: a one-shot
    // worker sends its result and exits without it (worker_main.cpp).
    ObjectArena arena;
    ValuePtr root;
    FlattenedObject flat;
};

namespace {

struct Parsed {
    ReadResult read;
    InputFormat format;
};

// One strict router (the CVE-2025-32434 lesson): zip → torch.save archive,
// tar → refused, otherwise a pickle that is either the legacy magic number
// or the whole object.
Parsed parse_input(std::span<const std::byte> input, CallContext& ctx) {
    if (input.size() > ctx.limits.max_input_bytes) {
        throw Error(ErrorCode::too_large, "input exceeds max_input_bytes");
    }
    if (input.empty()) throw Error(ErrorCode::malformed, "input is empty");
    if (looks_like_zip(input)) return {read_zip_checkpoint(input, ctx), InputFormat::zip};
    if (looks_like_tar(input)) {
        throw Error(
            ErrorCode::unsupported,
            "unsupported format: the pre-1.0 tar checkpoint layout is not read; re-save the "
            "file with a current torch in a trusted environment");
    }
    PickleVm first(input.first(std::min<std::size_t>(input.size(), ctx.limits.max_pickle_bytes)),
                   ctx, nullptr);
    ValuePtr value = first.run();
    if (is_legacy_magic(*value)) {
        return {read_legacy_checkpoint(input, first.info().end_offset, ctx), InputFormat::legacy};
    }
    if (first.info().end_offset != input.size()) {
        throw Error(ErrorCode::malformed,
                    "bytes after the pickle's STOP (a second, hidden pickle?)");
    }
    return {ReadResult{value, first.info()}, InputFormat::pickle};
}

// Moves each tensor's name and view out of `flat`, which is done with then.
std::vector<TensorSource> tensor_sources(FlattenedObject& flat, const StorageTable& storages) {
    std::vector<TensorSource> out;
    out.reserve(flat.tensors.size());
    for (auto& named : flat.tensors) {
        const Storage& storage = storages.at(named.view.storage);
        if (!storage.bound)
            throw Error(ErrorCode::malformed, "storage \"" + storage.key + "\" has no data");
        out.push_back(TensorSource{std::move(named.name), named.view.dtype,
                                   std::move(named.view.shape), std::move(named.view.stride),
                                   named.view.offset, storage.bytes, storage.big_endian});
    }
    return out;
}

// Drops the tensors and aliases a selection does not ask for. A stored
// tensor stays when any name it is reachable under matches.
void apply_selection(FlattenedObject& flat, const Selection& select) {
    if (select.empty()) return;
    std::set<std::string> wanted;
    for (const auto& [alias, kept] : flat.aliases) {
        if (select.matches(alias)) wanted.insert(kept);
    }
    std::erase_if(flat.tensors, [&](const NamedTensor& t) {
        return !select.matches(t.name) && !wanted.contains(t.name);
    });
    std::erase_if(flat.aliases, [&](const auto& entry) { return !select.matches(entry.first); });
}

constexpr std::uint64_t kOutputSlack = 64ULL << 20;

// Stride-0 and overlapping views make output larger than input; how much is
// capped so a tiny file cannot ask for a huge image (memfds live in RAM).
void check_output_ratio(std::uint64_t output, std::uint64_t input, const Limits& limits) {
    const unsigned __int128 allowed =
        static_cast<unsigned __int128>(input) * limits.max_output_ratio + kOutputSlack;
    if (output > allowed) {
        throw Error(ErrorCode::too_large,
                    "the image would be " + std::to_string(output) + " bytes from a " +
                        std::to_string(input) + "-byte file, more than " +
                        std::to_string(limits.max_output_ratio) +
                        " times its size plus 64 MiB (limit max_output_ratio)");
    }
}

std::map<std::string, std::string> build_metadata(FlattenedObject& flat, InputFormat format,
                                                  const PickleInfo& pickle) {
    std::map<std::string, std::string> metadata{
        {std::string(kMetaFormat), "pt"},
        {std::string(kMetaGlobals), nlohmann::json(pickle.globals).dump()},
        {std::string(kMetaProtocol), std::to_string(pickle.protocol)},
        {std::string(kMetaObject), std::move(flat.description)},
        {std::string(kMetaSource), std::string(to_string(format))},
    };
    nlohmann::json complex128 = nlohmann::json::array();
    for (const auto& named : flat.tensors) {
        if (named.view.dtype == DType::complex128) complex128.push_back(named.name);
    }
    if (!complex128.empty()) metadata.emplace(kMetaComplex128, complex128.dump());
    for (const auto& [alias, kept] : flat.aliases) {
        // The picklejail.* prefix is ours, so readers can tell aliases apart.
        if (alias.starts_with("picklejail.")) {
            throw Error(ErrorCode::malformed,
                        "tensor alias \"" + alias + "\" uses the reserved picklejail. prefix");
        }
        if (!metadata.emplace(alias, kept).second) {
            throw Error(ErrorCode::malformed,
                        "tensor alias \"" + alias + "\" collides with a reserved metadata key");
        }
    }
    return metadata;
}

}  // namespace

std::string_view to_string(InputFormat format) noexcept {
    switch (format) {
        case InputFormat::zip:
            return "zip";
        case InputFormat::legacy:
            return "legacy";
        case InputFormat::pickle:
            return "pickle";
    }
    return "unknown";
}

bool Selection::matches(std::string_view name) const noexcept {
    for (const auto& entry : entries) {
        if (!name.starts_with(entry)) continue;
        if (name.size() == entry.size() || entry.ends_with('.') || name[entry.size()] == '.')
            return true;
    }
    return false;
}

Conversion::Conversion(Conversion&&) noexcept = default;
Conversion& Conversion::operator=(Conversion&&) noexcept = default;
Conversion::~Conversion() = default;

Conversion Conversion::plan(std::span<const std::byte> input, const Policy& policy,
                            const Limits& limits, const Selection& select, HelperThread* helper,
                            const SourceFileIdentity* map_file) {
    Conversion conversion;
    conversion.owned_ = std::make_unique<Owned>(limits);
    Owned& owned = *conversion.owned_;
    CallContext ctx{policy, owned.limits, owned.storages, owned.arena};
    ctx.helper = helper;
    const Parsed parsed = parse_input(input, ctx);
    owned.root = parsed.read.root;
    owned.flat = flatten_object(parsed.read.root, owned.limits, owned.storages,
                                policy.inert() ? ObjectShape::graph : ObjectShape::tree);
    FlattenedObject& flat = owned.flat;
    apply_selection(flat, select);
    conversion.format_ = parsed.format;
    conversion.protocol_ = parsed.read.pickle.protocol;
    conversion.globals_ = parsed.read.pickle.globals;
    conversion.metadata_ = build_metadata(flat, parsed.format, parsed.read.pickle);
    auto sources = tensor_sources(flat, owned.storages);
    if (map_file != nullptr) {
        // A zip's storages that lie in the input are its stored records
        // (zip_archive.cpp checked their local headers); deflated ones were
        // inflated into owned buffers, legacy ones are not mapped.
        FileRangePlan ranges = plan_file_ranges(
            std::move(sources), input, parsed.format == InputFormat::zip, *map_file, owned.limits);
        sources = std::move(ranges.copied);
        conversion.mapped_tensors_ = ranges.mapped;
        conversion.metadata_.emplace(kMetaFileRanges, std::move(ranges.metadata_value));
    }
    conversion.layout_ =
        SafetensorsLayout::plan(std::move(sources), conversion.metadata_, owned.limits);
    check_output_ratio(conversion.output_size(), input.size(), owned.limits);
    return conversion;
}

}  // namespace picklejail::loader
