#include "ipc/file_ranges_check.hpp"

#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"

namespace picklejail::ipc {
namespace {

[[noreturn]] void bad(const std::string& message) {
    throw Error(ErrorCode::malformed, std::string(kFileRangesKey) + ": " + message);
}

template <typename T>
T integer(const nlohmann::json& value, const std::string& what) {
    if constexpr (std::is_signed_v<T>) {
        if (!value.is_number_integer()) bad(what + " is not an integer");
    } else {
        if (!value.is_number_unsigned()) bad(what + " is not a non-negative integer");
    }
    return value.get<T>();
}

FileRange parse_entry(const std::string& name, const nlohmann::json& entry,
                      std::uint64_t file_size) {
    const std::string label = "tensor \"" + name + "\"";
    if (!entry.is_object() || entry.size() != 3 || !entry.contains("dtype") ||
        !entry.contains("shape") || !entry.contains("file_offsets")) {
        bad(label + ": entry must have exactly dtype, shape and file_offsets");
    }
    FileRange range;
    range.name = name;
    if (!entry["dtype"].is_string()) bad(label + ": dtype is not a string");
    range.dtype = entry["dtype"].get<std::string>();
    const std::uint64_t bits = dtype_bits(range.dtype);
    if (bits == 0 || bits % 8 != 0) bad(label + ": unknown or sub-byte dtype " + range.dtype);
    if (!entry["shape"].is_array()) bad(label + ": shape is not an array");
    unsigned __int128 bytes = bits / 8;
    for (const auto& dim : entry["shape"]) {
        range.shape.push_back(integer<std::uint64_t>(dim, label + " shape"));
        bytes *= range.shape.back();
        if (bytes > file_size) bad(label + ": shape needs more bytes than the file holds");
    }
    const auto& offsets = entry["file_offsets"];
    if (!offsets.is_array() || offsets.size() != 2)
        bad(label + ": file_offsets is not two integers");
    range.begin = integer<std::uint64_t>(offsets[0], label + " file_offsets");
    range.end = integer<std::uint64_t>(offsets[1], label + " file_offsets");
    if (range.begin >= range.end || range.end > file_size)
        bad(label + ": file_offsets outside the file");
    if (range.end - range.begin != bytes) bad(label + ": file_offsets do not match its shape");
    if (range.begin % (bits / 8) != 0) bad(label + ": offset not aligned to its elements");
    return range;
}

}  // namespace

FileRanges parse_file_ranges(const std::string& json_text) {
    const auto json = nlohmann::json::parse(json_text, nullptr, false);
    if (!json.is_object() || json.size() != 2 || !json.contains("file") ||
        !json.contains("tensors") || !json["tensors"].is_object()) {
        bad("must be an object with \"file\" and \"tensors\"");
    }
    const auto& file = json["file"];
    if (!file.is_object() || file.size() != 5) bad("\"file\" must hold five integers");
    FileRanges ranges;
    ranges.device = integer<std::uint64_t>(file.value("dev", nlohmann::json()), "dev");
    ranges.inode = integer<std::uint64_t>(file.value("ino", nlohmann::json()), "ino");
    ranges.size = integer<std::uint64_t>(file.value("size", nlohmann::json()), "size");
    ranges.mtime_ns = integer<std::int64_t>(file.value("mtime_ns", nlohmann::json()), "mtime_ns");
    ranges.ctime_ns = integer<std::int64_t>(file.value("ctime_ns", nlohmann::json()), "ctime_ns");
    for (const auto& [name, entry] : json["tensors"].items())
        ranges.tensors.push_back(parse_entry(name, entry, ranges.size));
    return ranges;
}

void check_same_file(const FileRanges& ranges, const struct stat& st) {
    constexpr std::int64_t kNs = 1'000'000'000;
    const std::int64_t mtime =
        static_cast<std::int64_t>(st.st_mtim.tv_sec) * kNs + st.st_mtim.tv_nsec;
    const std::int64_t ctime =
        static_cast<std::int64_t>(st.st_ctim.tv_sec) * kNs + st.st_ctim.tv_nsec;
    if (static_cast<std::uint64_t>(st.st_dev) != ranges.device ||
        static_cast<std::uint64_t>(st.st_ino) != ranges.inode ||
        static_cast<std::uint64_t>(st.st_size) != ranges.size || mtime != ranges.mtime_ns ||
        ctime != ranges.ctime_ns) {
        throw Error(ErrorCode::io_error,
                    "the checkpoint changed after the sandbox checked it (identity, size or "
                    "times differ); load it again");
    }
}

}  // namespace picklejail::ipc
