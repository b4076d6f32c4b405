#include "loader/zip_archive.hpp"

#include <minizip/unzip.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "common/error.hpp"
#include "loader/checked_math.hpp"

namespace picklejail::loader {

// minizip reads through these callbacks: a cursor over the input bytes, so
// the archive is never opened by path and no syscall is made.
struct ZipArchive::MemoryStream {
    std::span<const std::byte> bytes;
    std::uint64_t position = 0;

    static voidpf open(voidpf opaque, const void* /*name*/, int /*mode*/) { return opaque; }
    static uLong read(voidpf /*opaque*/, voidpf stream, void* buf, uLong size) {
        auto* self = static_cast<MemoryStream*>(stream);
        if (self->position >= self->bytes.size()) return 0;
        const uLong n =
            static_cast<uLong>(std::min<std::uint64_t>(size, self->bytes.size() - self->position));
        // minizip reads each directory field a byte at a time: skip the call.
        if (n == 1) {
            *static_cast<std::byte*>(buf) = self->bytes[self->position];
        } else {
            std::memcpy(buf, self->bytes.data() + self->position, n);
        }
        self->position += n;
        return n;
    }
    static uLong write(voidpf, voidpf, const void*, uLong) { return 0; }
    static ZPOS64_T tell(voidpf /*opaque*/, voidpf stream) {
        return static_cast<MemoryStream*>(stream)->position;
    }
    static long seek(voidpf /*opaque*/, voidpf stream, ZPOS64_T offset, int origin) {
        auto* self = static_cast<MemoryStream*>(stream);
        std::uint64_t base = 0;
        switch (origin) {
            case ZLIB_FILEFUNC_SEEK_SET:
                base = 0;
                break;
            case ZLIB_FILEFUNC_SEEK_CUR:
                base = self->position;
                break;
            case ZLIB_FILEFUNC_SEEK_END:
                base = self->bytes.size();
                break;
            default:
                return -1;
        }
        std::uint64_t target = 0;
        if (__builtin_add_overflow(base, offset, &target) || target > self->bytes.size()) return -1;
        self->position = target;
        return 0;
    }
    static int close(voidpf, voidpf) { return 0; }
    static int error(voidpf, voidpf) { return 0; }
};

namespace {

[[noreturn]] void bad_zip(const std::string& why) {
    throw Error(ErrorCode::malformed, "zip archive: " + why);
}

bool unsafe_name(std::string_view name) {
    if (name.empty() || name.front() == '/' || name.find('\\') != std::string_view::npos)
        return true;
    if (name.find('\0') != std::string_view::npos) return true;
    std::size_t start = 0;
    while (start <= name.size()) {
        const auto end = std::min(name.find('/', start), name.size());
        if (name.substr(start, end - start) == "..") return true;
        start = end + 1;
    }
    return false;
}

// General-purpose flag bits. Encryption of any kind is refused as such; of the
// rest only what torch and ordinary zip writers set is accepted: bits 1-2
// (deflate options), bit 3 (sizes in a data descriptor) and bit 11 (UTF-8
// names). miniz and Python's zipfile refuse patched data (bit 5) and strong
// encryption (bit 6); minizip would read them, so a file torch refuses would
// otherwise convert here.
constexpr std::uint32_t kEncryptionFlags = 0x0001 | 0x0040 | 0x2000;
constexpr std::uint32_t kAllowedFlags = 0x0002 | 0x0004 | 0x0008 | 0x0800;
constexpr std::uint32_t kLocalHeaderSize = 30;

std::string hex16(std::uint32_t value) {
    constexpr char kDigits[] = "0123456789abcdef";
    std::string out = "0x";
    for (int shift = 12; shift >= 0; shift -= 4) out.push_back(kDigits[(value >> shift) & 0xF]);
    return out;
}

void check_flags(const std::string& name, std::uint32_t flags, const char* where) {
    if ((flags & kEncryptionFlags) != 0) {
        throw Error(ErrorCode::unsupported, "zip entry \"" + name + "\" is encrypted (" + where +
                                                " flags " + hex16(flags) + ")");
    }
    if ((flags & ~kAllowedFlags) != 0) {
        throw Error(ErrorCode::unsupported, "zip entry \"" + name + "\" uses " + where + " flags " +
                                                hex16(flags) + " (patched data or reserved bits)");
    }
}

std::uint32_t le16(std::span<const std::byte> bytes, std::uint64_t at) {
    return std::to_integer<std::uint32_t>(bytes[at]) |
           (std::to_integer<std::uint32_t>(bytes[at + 1]) << 8);
}

std::uint32_t le32(std::span<const std::byte> bytes, std::uint64_t at) {
    return le16(bytes, at) | (le16(bytes, at + 2) << 16);
}

std::uint64_t le64(std::span<const std::byte> bytes, std::uint64_t at) {
    return le32(bytes, at) | (std::uint64_t{le32(bytes, at + 4)} << 32);
}

constexpr unsigned char kLocalSignature[4] = {'P', 'K', 3, 4};
constexpr std::uint32_t kCentralRecordSize = 46;
constexpr std::uint32_t kZip64Marker = 0xFFFFFFFF;
constexpr std::uint32_t kZip64ExtraTag = 0x0001;
constexpr std::uint32_t kDataDescriptorFlag = 0x0008;

// A deflated entry may not claim more than max_inflate_ratio × its compressed
// size. Checked when the directory is read, before any buffer of the claimed
// size is allocated, and again when inflating.
void check_inflate_ratio(const ZipEntry& entry, const Limits& limits) {
    const std::uint64_t ratio_cap =
        checked_mul(std::max<std::uint64_t>(entry.compressed_size, 1024), limits.max_inflate_ratio,
                    "inflate limit");
    if (entry.uncompressed_size > ratio_cap) {
        throw Error(ErrorCode::too_large, "zip entry \"" + entry.name + "\" inflates more than " +
                                              std::to_string(limits.max_inflate_ratio) +
                                              "× (limit max_inflate_ratio): a zip bomb?");
    }
}

void check_end_record(void* handle, std::span<const std::byte> bytes) {
    // minizip finds the end-of-directory record by scanning backwards and
    // tolerates bytes after it; a checkpoint ends with that record and its
    // comment, so appended data (a second archive, a hidden pickle) or a cut
    // record is refused rather than silently ignored.
    unz_global_info64 global{};
    if (unzGetGlobalInfo64(static_cast<unzFile>(handle), &global) != UNZ_OK)
        bad_zip("unreadable end-of-directory record");
    static constexpr unsigned char kEnd[4] = {'P', 'K', 5, 6};
    const std::uint64_t tail = 22 + std::uint64_t{global.size_comment};
    if (bytes.size() < tail || std::memcmp(bytes.data() + (bytes.size() - tail), kEnd, 4) != 0 ||
        le16(bytes, bytes.size() - tail + 20) != global.size_comment) {
        bad_zip(
            "the end-of-directory record is not at the end of the file "
            "(appended or truncated data)");
    }
}

// The entry count the end record claims, as a capacity to reserve: grown by
// doubling, the directory of a 20,000-tensor checkpoint was copied into fresh
// memory at every step. Hostile, so bounded by what the file can hold (a
// central directory entry takes at least 46 bytes) and by max_zip_entries;
// the walk itself still counts and checks every entry.
std::size_t claimed_entries(void* handle, std::size_t file_bytes, const Limits& limits) {
    constexpr std::size_t kMinDirectoryEntry = 46;
    unz_global_info64 global{};
    if (unzGetGlobalInfo64(static_cast<unzFile>(handle), &global) != UNZ_OK) return 0;
    return static_cast<std::size_t>(std::min<std::uint64_t>(
        {global.number_entry, file_bytes / kMinDirectoryEntry, limits.max_zip_entries}));
}

}  // namespace

bool looks_like_zip(std::span<const std::byte> bytes) noexcept {
    return bytes.size() >= 4 && std::memcmp(bytes.data(), kLocalSignature, 4) == 0;
}

ZipArchive::ZipArchive(std::span<const std::byte> bytes, const Limits& limits)
    : ZipArchive(bytes, limits, FirstEntryOnly{}) {
    read_directory();  // a throw here runs the destructor: the delegating constructor finished
}

ZipArchive::ZipArchive(std::span<const std::byte> bytes, const Limits& limits, FirstEntryOnly)
    : bytes_(bytes), limits_(limits), stream_(std::make_unique<MemoryStream>()) {
    open();
}

ZipArchive::~ZipArchive() {
    if (handle_ != nullptr) unzClose(static_cast<unzFile>(handle_));
}

void ZipArchive::open() {
    stream_->bytes = bytes_;
    zlib_filefunc64_def funcs{};
    funcs.zopen64_file = &MemoryStream::open;
    funcs.zread_file = &MemoryStream::read;
    funcs.zwrite_file = &MemoryStream::write;
    funcs.ztell64_file = &MemoryStream::tell;
    funcs.zseek64_file = &MemoryStream::seek;
    funcs.zclose_file = &MemoryStream::close;
    funcs.zerror_file = &MemoryStream::error;
    funcs.opaque = stream_.get();
    handle_ = unzOpen2_64("memory", &funcs);
    if (handle_ == nullptr) bad_zip("no readable central directory");
    // A constructor that throws runs no destructor: close minizip's handle here.
    try {
        check_end_record(handle_, bytes_);
        auto* zip = static_cast<unzFile>(handle_);
        const int rc = unzGoToFirstFile(zip);
        if (rc == UNZ_END_OF_LIST_OF_FILE) bad_zip("archive is empty");
        if (rc != UNZ_OK)
            bad_zip("central directory is corrupt (minizip error " + std::to_string(rc) + ")");
        if (limits_.max_zip_entries == 0)  // what read_directory() would say first
            throw Error(ErrorCode::too_large, "zip archive has more than 0 entries");
        std::vector<char> name(65536 + 1);
        first_entry_ = current_entry(name);
    } catch (...) {
        unzClose(static_cast<unzFile>(handle_));
        handle_ = nullptr;
        throw;
    }
}

ZipEntry ZipArchive::current_entry(std::vector<char>& name) const {
    auto* zip = static_cast<unzFile>(handle_);
    unz_file_info64 file_info{};
    if (unzGetCurrentFileInfo64(zip, &file_info, name.data(), name.size() - 1, nullptr, 0, nullptr,
                                0) != UNZ_OK) {
        bad_zip("unreadable central directory entry");
    }
    ZipEntry entry;
    entry.name.assign(name.data(), file_info.size_filename);
    if (unsafe_name(entry.name)) bad_zip("unsafe entry name \"" + entry.name + "\"");
    check_flags(entry.name, static_cast<std::uint32_t>(file_info.flag), "central directory");
    if (file_info.compression_method != 0 && file_info.compression_method != Z_DEFLATED) {
        throw Error(ErrorCode::unsupported, "zip entry \"" + entry.name +
                                                "\" uses compression method " +
                                                std::to_string(file_info.compression_method));
    }
    entry.method = static_cast<std::uint16_t>(file_info.compression_method);
    entry.compressed_size = file_info.compressed_size;
    entry.uncompressed_size = file_info.uncompressed_size;
    // The ratio check below trusts compressed_size, so it may not claim more
    // bytes than the file holds (else a tiny file "passes" with a 1 TiB record,
    // allocated before a byte is inflated).
    if (entry.compressed_size > bytes_.size()) {
        bad_zip("entry \"" + entry.name + "\" claims " + std::to_string(entry.compressed_size) +
                " compressed bytes, more than the whole file");
    }
    if (entry.method == Z_DEFLATED) check_inflate_ratio(entry, limits_);
    entry.crc = static_cast<std::uint32_t>(file_info.crc);
    entry.local_header = local_header_offset(entry, unzGetOffset64(zip));
    return entry;
}

void ZipArchive::read_directory() {
    auto* zip = static_cast<unzFile>(handle_);
    std::vector<char> name(65536 + 1);
    entries_.reserve(claimed_entries(zip, bytes_.size(), limits_));
    for (int rc = unzGoToFirstFile(zip); rc != UNZ_END_OF_LIST_OF_FILE; rc = unzGoToNextFile(zip)) {
        if (rc != UNZ_OK)
            bad_zip("central directory is corrupt (minizip error " + std::to_string(rc) + ")");
        if (entries_.size() >= limits_.max_zip_entries) {
            throw Error(ErrorCode::too_large, "zip archive has more than " +
                                                  std::to_string(limits_.max_zip_entries) +
                                                  " entries");
        }
        entries_.push_back(current_entry(name));
    }
    if (entries_.empty()) bad_zip("archive is empty");
    // torch's reader: the prefix is the first entry's directory, and every
    // entry lives under it.
    const auto slash = entries_.front().name.find('/');
    if (slash == std::string::npos) bad_zip("first entry is not in a subdirectory");
    prefix_ = entries_.front().name.substr(0, slash + 1);
    by_relative_name_.reserve(entries_.size());
    for (std::size_t i = 0; i < entries_.size(); ++i) {
        const std::string_view full_name = entries_[i].name;
        if (!full_name.starts_with(prefix_)) {
            bad_zip("entry \"" + entries_[i].name + "\" is outside the archive directory \"" +
                    prefix_ + "\"");
        }
        if (!by_relative_name_.emplace(full_name.substr(prefix_.size()), i).second)
            bad_zip("duplicate entry \"" + entries_[i].name + "\"");
    }
}

const ZipEntry* ZipArchive::find(std::string_view relative_name) const {
    const auto it = by_relative_name_.find(relative_name);
    return it == by_relative_name_.end() ? nullptr : &entries_[it->second];
}

// minizip parsed the central record but does not say where the entry's local
// header is; it is the record's offset field, or with ZIP64 the offset in the
// record's ZIP64 extra field (after the sizes that overflowed 32 bits).
std::uint64_t ZipArchive::local_header_offset(const ZipEntry& entry,
                                              std::uint64_t directory_record) const {
    static constexpr unsigned char kCentral[4] = {'P', 'K', 1, 2};
    if (directory_record > bytes_.size() ||
        bytes_.size() - directory_record < kCentralRecordSize + entry.name.size() ||
        std::memcmp(bytes_.data() + directory_record, kCentral, 4) != 0 ||
        le16(bytes_, directory_record + 28) != entry.name.size() ||
        std::memcmp(bytes_.data() + directory_record + kCentralRecordSize, entry.name.data(),
                    entry.name.size()) != 0) {
        bad_zip(
            "the central directory is not where the end record places it "
            "(data before the archive?)");
    }
    const std::uint32_t offset32 = le32(bytes_, directory_record + 42);
    if (offset32 != kZip64Marker) return offset32;
    // ZIP64: walk the extra field's (tag, size, data) blocks.
    const std::uint64_t extra_length = le16(bytes_, directory_record + 30);
    std::uint64_t at = directory_record + kCentralRecordSize + entry.name.size();
    const std::uint64_t extra_end = at + extra_length;
    if (extra_end > bytes_.size()) bad_zip("entry \"" + entry.name + "\" has a cut extra field");
    while (at + 4 <= extra_end) {
        const std::uint32_t tag = le16(bytes_, at);
        const std::uint64_t size = le16(bytes_, at + 2);
        if (at + 4 + size > extra_end) break;
        if (tag == kZip64ExtraTag) {
            std::uint64_t field = at + 4;
            if (le32(bytes_, directory_record + 24) == kZip64Marker) field += 8;  // uncompressed
            if (le32(bytes_, directory_record + 20) == kZip64Marker) field += 8;  // compressed
            if (field + 8 > at + 4 + size) break;
            return le64(bytes_, field);
        }
        at += 4 + size;
    }
    bad_zip("entry \"" + entry.name + "\" has no ZIP64 local header offset");
}

// The checks minizip's unzOpenCurrentFile makes (signature, method, name
// length, and CRC and sizes unless a data descriptor holds them), plus what it
// does not compare: the name bytes and the flags (CVE-2025-1944/1945: a reader
// keyed on local headers would see another file).
std::uint64_t ZipArchive::data_start(const ZipEntry& entry) const {
    const std::uint64_t at = entry.local_header;
    if (at > bytes_.size() || bytes_.size() - at < kLocalHeaderSize + entry.name.size() ||
        std::memcmp(bytes_.data() + at, kLocalSignature, 4) != 0) {
        bad_zip("local header of \"" + entry.name + "\" is missing or out of place");
    }
    const std::uint32_t local_flags = le16(bytes_, at + 6);
    try {
        check_flags(entry.name, local_flags, "local header");
    } catch (const Error&) {
        throw Error(ErrorCode::malformed, "zip archive: local header of \"" + entry.name +
                                              "\" sets flags " + hex16(local_flags) +
                                              " that the central directory does not");
    }
    const auto mismatch = [&](const std::string& what) {
        bad_zip("local header of \"" + entry.name + "\" does not match the central directory (" +
                what + ")");
    };
    if (le16(bytes_, at + 8) != entry.method) mismatch("compression method");
    if ((local_flags & kDataDescriptorFlag) == 0) {
        if (le32(bytes_, at + 14) != entry.crc) mismatch("CRC");
        const std::uint32_t compressed = le32(bytes_, at + 18);
        const std::uint32_t uncompressed = le32(bytes_, at + 22);
        if (compressed != kZip64Marker && compressed != entry.compressed_size)
            mismatch("compressed size");
        if (uncompressed != kZip64Marker && uncompressed != entry.uncompressed_size)
            mismatch("uncompressed size");
    }
    if (le16(bytes_, at + 26) != entry.name.size()) mismatch("name length");
    if (std::memcmp(bytes_.data() + at + kLocalHeaderSize, entry.name.data(), entry.name.size()) !=
        0) {
        bad_zip("local header of \"" + entry.name +
                "\" names another file than the central directory does");
    }
    const std::uint64_t start = at + kLocalHeaderSize + entry.name.size() + le16(bytes_, at + 28);
    if (start > bytes_.size()) bad_zip("local header of \"" + entry.name + "\" runs past the end");
    return start;
}

std::span<const std::byte> ZipArchive::stored_bytes(const ZipEntry& entry) {
    if (entry.method != 0) throw Error(ErrorCode::internal, "stored_bytes on a compressed entry");
    if (entry.compressed_size != entry.uncompressed_size) {
        bad_zip("stored entry \"" + entry.name +
                "\" has different compressed and uncompressed sizes");
    }
    // A CRC mismatch in the data is tolerated: torch does not check CRCs.
    const std::uint64_t start = data_start(entry);
    const std::uint64_t end = checked_add(start, entry.uncompressed_size, "zip entry end");
    if (end > bytes_.size()) bad_zip("entry \"" + entry.name + "\" runs past the end of the file");
    return bytes_.subspan(start, entry.uncompressed_size);
}

// zlib's inflate state, ended however the inflation ends.
class InflateStream {
  public:
    explicit InflateStream(const std::string& name) {
        if (inflateInit2(&stream_, -MAX_WBITS) != Z_OK)  // raw deflate, as zip stores it
            throw Error(ErrorCode::internal, "zlib cannot start inflating \"" + name + "\"");
    }
    ~InflateStream() { inflateEnd(&stream_); }
    InflateStream(const InflateStream&) = delete;
    InflateStream& operator=(const InflateStream&) = delete;
    z_stream& get() noexcept { return stream_; }

  private:
    z_stream stream_{};
};

// Inflates straight from the input with zlib (minizip only walks the
// directory): the stream must end exactly where the directory says, both
// in compressed bytes (nothing after it) and in inflated ones (no more, no
// fewer). torch's reader refuses a record that inflates to another size too.
void ZipArchive::inflate(const ZipEntry& entry, std::span<std::byte> out) {
    if (out.size() != entry.uncompressed_size)
        throw Error(ErrorCode::internal, "inflate buffer size mismatch");
    check_inflate_ratio(entry, limits_);
    const std::uint64_t start = data_start(entry);
    if (entry.compressed_size > bytes_.size() - start)
        bad_zip("entry \"" + entry.name + "\" runs past the end of the file");
    auto in = bytes_.subspan(start, entry.compressed_size);
    InflateStream inflater(entry.name);
    z_stream& z = inflater.get();
    constexpr std::size_t kStep = 1U << 30;  // zlib counts in 32-bit uInt
    std::byte overflow{};                    // room for one byte more than declared
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        if (z.avail_in == 0 && !in.empty()) {
            const auto n = std::min(in.size(), kStep);
            z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
            z.avail_in = static_cast<uInt>(n);
            in = in.subspan(n);
        }
        if (z.avail_out == 0) {
            const bool full = z.total_out >= out.size();
            std::byte* next = full ? &overflow : out.data() + z.total_out;
            const std::size_t room = full ? 1 : std::min(out.size() - z.total_out, kStep);
            z.next_out = reinterpret_cast<Bytef*>(next);
            z.avail_out = static_cast<uInt>(room);
        }
        rc = ::inflate(&z, Z_NO_FLUSH);
        if (z.total_out > out.size())
            bad_zip("entry \"" + entry.name + "\" inflates to more bytes than its directory says");
        if (rc == Z_BUF_ERROR && z.avail_in == 0 && in.empty())
            bad_zip("entry \"" + entry.name + "\" ends before its deflate stream does");
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
            bad_zip("entry \"" + entry.name + "\" is not a valid deflate stream (" +
                    std::string(z.msg != nullptr ? z.msg : "zlib error " + std::to_string(rc)) +
                    ")");
        }
    }
    if (z.total_out < out.size())
        bad_zip("entry \"" + entry.name + "\" inflates to fewer bytes than its directory says");
    if (z.avail_in != 0 || !in.empty())
        bad_zip("entry \"" + entry.name + "\" has bytes after its deflate stream");
}

}  // namespace picklejail::loader
