#include "loader/file_ranges.hpp"

#include <algorithm>
#include <functional>
#include <optional>
#include <utility>

#include "common/error.hpp"
#include "common/tensor_names.hpp"
#include "loader/checked_math.hpp"
#include "loader/json_text.hpp"

namespace picklejail::loader {
namespace {

// Where `bytes` starts in `input`, when it lies wholly inside it.
std::optional<std::uint64_t> offset_in(std::span<const std::byte> bytes,
                                       std::span<const std::byte> input) {
    // std::less: a total order even for pointers into different objects.
    const std::less<const std::byte*> before;
    const std::byte* const begin = input.data();
    const std::byte* const end = input.data() + input.size();
    if (bytes.empty() || before(bytes.data(), begin) || before(end, bytes.data())) return {};
    const auto offset = static_cast<std::uint64_t>(bytes.data() - begin);
    if (bytes.size() > input.size() - offset) return {};
    return offset;
}

// The tensor's [begin, end) in the file, when it can be a view of the file.
std::optional<std::pair<std::uint64_t, std::uint64_t>> mappable_range(
    const TensorSource& source, std::span<const std::byte> input) {
    const auto record = offset_in(source.storage, input);
    if (!record || *record % kMappedRecordAlignment != 0) return {};
    const auto run = contiguous_bytes(source);
    if (run.size() < kMinMappedBytes) return {};
    const auto begin = offset_in(run, input);
    if (!begin) return {};
    return std::pair{*begin, *begin + run.size()};
}

void append_identity(std::string& json, const SourceFileIdentity& identity) {
    json += "\"file\":{\"dev\":";
    append_json_integer(json, identity.device);
    json += ",\"ino\":";
    append_json_integer(json, identity.inode);
    json += ",\"size\":";
    append_json_integer(json, identity.size);
    json += ",\"mtime_ns\":";
    append_json_integer(json, identity.mtime_ns);
    json += ",\"ctime_ns\":";
    append_json_integer(json, identity.ctime_ns);
    json += "}";
}

void append_entry(std::string& json, const TensorSource& source,
                  std::pair<std::uint64_t, std::uint64_t> range) {
    append_json_string(json, source.name);
    json += ":{\"dtype\":\"";
    json += info(source.dtype).safetensors_name;
    json += "\",\"shape\":[";
    for (std::size_t i = 0; i < source.shape.size(); ++i) {
        if (i != 0) json.push_back(',');
        append_json_integer(json, source.shape[i]);
    }
    if (source.dtype == DType::complex128) json += source.shape.empty() ? "2" : ",2";
    json += "],\"file_offsets\":[";
    append_json_integer(json, range.first);
    json.push_back(',');
    append_json_integer(json, range.second);
    json += "]}";
}

}  // namespace

std::span<const std::byte> contiguous_bytes(const TensorSource& source) {
    const auto& d = info(source.dtype);
    if (source.big_endian && d.swap_width > 1) return {};
    // C order: each stride equals the product of the later dimensions
    // (dimensions of size 1 may have any stride).
    std::uint64_t expected = 1;
    std::uint64_t numel = 1;
    for (std::size_t i = source.shape.size(); i-- > 0;) {
        if (source.shape[i] != 1 && source.stride[i] != expected) return {};
        expected = checked_mul(expected, source.shape[i], "tensor size");
        numel = expected;
    }
    const std::uint64_t length = checked_mul(numel, d.element_size, "tensor size");
    const std::uint64_t start = checked_mul(source.offset, d.element_size, "tensor offset");
    if (length == 0 || start > source.storage.size() || length > source.storage.size() - start)
        return {};
    return source.storage.subspan(start, length);
}

FileRangePlan plan_file_ranges(std::vector<TensorSource> tensors, std::span<const std::byte> input,
                               bool stored_zip, const SourceFileIdentity& identity,
                               const Limits& limits) {
    FileRangePlan plan;
    struct Mapped {
        std::size_t index;
        std::pair<std::uint64_t, std::uint64_t> range;
    };
    std::vector<Mapped> mapped;
    std::vector<bool> is_mapped(tensors.size(), false);
    for (std::size_t i = 0; stored_zip && i < tensors.size(); ++i) {
        if (tensors[i].name.size() > kMaxTensorNameBytes) continue;  // the layout refuses it
        if (const auto range = mappable_range(tensors[i], input)) {
            mapped.push_back({i, *range});
            is_mapped[i] = true;
        }
    }
    // Sorted by name, so the image stays deterministic.
    std::sort(mapped.begin(), mapped.end(), [&tensors](const Mapped& a, const Mapped& b) {
        return tensors[a.index].name < tensors[b.index].name;
    });
    std::string json = "{";
    append_identity(json, identity);
    json += ",\"tensors\":{";
    for (std::size_t k = 0; k < mapped.size(); ++k) {
        if (k != 0) json.push_back(',');
        append_entry(json, tensors[mapped[k].index], mapped[k].range);
        if (json.size() > limits.max_header_bytes) {
            throw Error(ErrorCode::too_large, "the file ranges exceed max_header_bytes (" +
                                                  std::to_string(limits.max_header_bytes) + ")");
        }
    }
    json += "}}";
    plan.metadata_value = std::move(json);
    plan.mapped = mapped.size();
    plan.copied.reserve(tensors.size() - mapped.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        if (!is_mapped[i]) plan.copied.push_back(std::move(tensors[i]));
    }
    return plan;
}

}  // namespace picklejail::loader
