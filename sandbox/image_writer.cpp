#include "sandbox/image_writer.hpp"

#include <sys/sendfile.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"

namespace picklejail::sandbox {
namespace {

// The kernel moves at most this much per sendfile call.
constexpr std::uint64_t kMaxSendfile = 0x7ffff000;
// Below this a memcpy through the mapping beats two syscalls per tensor.
constexpr std::uint64_t kMinSendfile = std::uint64_t{256} * 1024;

[[noreturn]] void io_fail(const char* what) {
    throw Error(ErrorCode::io_error, std::string(what) + ": " + std::strerror(errno));
}

void send_range(int input_fd, std::uint64_t input_offset, int output_fd,
                std::uint64_t output_offset, std::uint64_t length) {
    if (::lseek(output_fd, static_cast<off_t>(output_offset), SEEK_SET) < 0) io_fail("lseek");
    auto in = static_cast<off_t>(input_offset);
    while (length > 0) {
        const ssize_t n = ::sendfile(output_fd, input_fd, &in, std::min(length, kMaxSendfile));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) io_fail("sendfile");
        if (n == 0) throw Error(ErrorCode::io_error, "sendfile: the input ended early");
        length -= static_cast<std::uint64_t>(n);
    }
}

// The part of `input` that `run` occupies, as an offset, when it lies inside.
std::optional<std::uint64_t> offset_in(std::span<const std::byte> input,
                                       std::span<const std::byte> run) {
    const auto begin = std::less_equal<const std::byte*>();
    if (run.empty() || !begin(input.data(), run.data()) ||
        !begin(run.data() + run.size(), input.data() + input.size()))
        return std::nullopt;
    return static_cast<std::uint64_t>(run.data() - input.data());
}

}  // namespace

WriteStats write_image(const loader::Conversion& conversion, int input_fd,
                       std::span<const std::byte> input, int output_fd) {
    const auto& layout = conversion.layout();
    auto output = ipc::map_output(output_fd, layout.total_size(), "output");
    const auto out = output.bytes();
    WriteStats stats;
    layout.write_header(out.first(layout.data_offset()));
    for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
        const auto& t = layout.tensors()[i];
        const std::uint64_t at = layout.data_offset() + t.begin;
        const std::uint64_t length = t.end - t.begin;
        const auto from =
            length >= kMinSendfile ? offset_in(input, layout.contiguous_source(i)) : std::nullopt;
        if (from) {
            send_range(input_fd, *from, output_fd, at, length);
            stats.sent_bytes += length;
        } else {
            layout.write_tensor(i, out.subspan(at, length));
            stats.written_bytes += length;
        }
    }
    return stats;
}

}  // namespace picklejail::sandbox
