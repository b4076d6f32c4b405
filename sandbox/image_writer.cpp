#include "sandbox/image_writer.hpp"

#include <sys/mman.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"

namespace picklejail::sandbox {
namespace {

// The kernel moves at most this much per sendfile call.
constexpr std::uint64_t kMaxSendfile = 0x7ffff000;
// Below this a memcpy through the mapping beats two syscalls per tensor.
constexpr std::uint64_t kMinSendfile = std::uint64_t{256} * 1024;
// Below this the copy thread saves less than handing it work costs.
constexpr std::uint64_t kMinParallelCopy = std::uint64_t{32} << 20;
constexpr std::uint64_t kPage = 4096;

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

// A verbatim run: `length` bytes from input offset `from` to output offset `to`.
struct Run {
    std::uint64_t from;
    std::uint64_t to;
    std::uint64_t length;
};

// The runs split where `keep` bytes are covered, at an output page boundary,
// into the first part (this thread's) and the rest (the copy thread's).
std::pair<std::vector<Run>, std::vector<Run>> split_runs(const std::vector<Run>& runs,
                                                         std::uint64_t keep) {
    std::pair<std::vector<Run>, std::vector<Run>> parts;
    std::uint64_t covered = 0;
    for (const Run& run : runs) {
        if (covered >= keep) {
            parts.second.push_back(run);
            continue;
        }
        const std::uint64_t end = (run.to + (keep - covered) + kPage - 1) / kPage * kPage;
        const std::uint64_t cut = std::min(end - run.to, run.length);
        parts.first.push_back({run.from, run.to, cut});
        if (cut < run.length)
            parts.second.push_back({run.from + cut, run.to + cut, run.length - cut});
        covered += cut;
    }
    return parts;
}

// Fault the output pages in with one call (MADV_POPULATE_WRITE, Linux 5.14;
// where it is missing the copy faults them one by one), then copy.
void copy_through_mapping(const std::vector<Run>& runs, std::span<const std::byte> input,
                          std::span<std::byte> out) {
    for (const Run& run : runs) {
        const auto address = reinterpret_cast<std::uintptr_t>(out.data() + run.to);
        const std::uintptr_t first = address / kPage * kPage;
        const std::uintptr_t last = (address + run.length + kPage - 1) / kPage * kPage;
        // NOLINTNEXTLINE(performance-no-int-to-ptr): the mapping's own pages
        (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_POPULATE_WRITE);
        std::memcpy(out.data() + run.to, input.data() + run.from, run.length);
    }
}

}  // namespace

WriteStats write_image(const loader::Conversion& conversion, int input_fd,
                       std::span<const std::byte> input, int output_fd, CopyThread* helper) {
    const auto& layout = conversion.layout();
    auto output = ipc::map_output(output_fd, layout.total_size(), "output");
    const auto out = output.bytes();
    WriteStats stats;
    std::vector<Run> runs;  // in output order, as the tensors are laid out
    std::vector<bool> is_run(layout.tensors().size(), false);
    std::uint64_t verbatim = 0;
    for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
        const auto& t = layout.tensors()[i];
        const std::uint64_t length = t.end - t.begin;
        const auto from =
            length >= kMinSendfile ? offset_in(input, layout.contiguous_source(i)) : std::nullopt;
        if (from) {
            runs.push_back({*from, layout.data_offset() + t.begin, length});
            is_run[i] = true;
            verbatim += length;
        }
    }
    std::vector<Run> helper_runs;
    if (helper != nullptr && verbatim >= kMinParallelCopy) {
        // sendfile runs faster than faulting and copying through the mapping
        // (measured on 2 cores: 3/5 here gave the shortest total).
        std::tie(runs, helper_runs) = split_runs(runs, verbatim * 3 / 5);
        helper->start(
            [&helper_runs, input, out] { copy_through_mapping(helper_runs, input, out); });
    }
    try {
        layout.write_header(out.first(layout.data_offset()));
        for (std::size_t i = 0, next_run = 0; i < layout.tensors().size(); ++i) {
            const auto& t = layout.tensors()[i];
            const std::uint64_t at = layout.data_offset() + t.begin;
            const std::uint64_t length = t.end - t.begin;
            if (!is_run[i]) {
                layout.write_tensor(i, out.subspan(at, length));
                stats.written_bytes += length;
                continue;
            }
            // This thread's share of the tensor, if any (runs are in output order).
            for (; next_run < runs.size() && runs[next_run].to < at + length; ++next_run) {
                const Run& run = runs[next_run];
                send_range(input_fd, run.from, output_fd, run.to, run.length);
                stats.sent_bytes += run.length;
            }
        }
    } catch (...) {
        if (!helper_runs.empty()) {
            try {
                helper->wait();  // it copies into `out`: never unmap it under the thread
            } catch (...) {      // NOLINT(bugprone-empty-catch): the first error is reported
            }
        }
        throw;
    }
    if (!helper_runs.empty()) {
        helper->wait();
        for (const Run& run : helper_runs) stats.helper_bytes += run.length;
    }
    return stats;
}

}  // namespace picklejail::sandbox
