#include "sandbox/image_writer.hpp"

#include <sys/mman.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"
#include "sandbox/output_pages.hpp"
#include "sandbox/page_advice.hpp"

namespace picklejail::sandbox {
namespace {

// The kernel moves at most this much per sendfile call.
constexpr std::uint64_t kMaxSendfile = 0x7ffff000;
// Below this a memcpy through the mapping beats two syscalls per tensor.
constexpr std::uint64_t kMinSendfile = std::uint64_t{256} * 1024;
// Below this the copy thread saves less than handing it work costs.
constexpr std::uint64_t kMinParallelCopy = std::uint64_t{32} << 20;
// The unit of work the two threads share out.
constexpr std::uint64_t kChunk = std::uint64_t{8} << 20;

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

// The runs cut into pieces of at most kChunk bytes, each cut at an output
// page boundary, so two threads can share them out as they go.
std::vector<Run> chunked(const std::vector<Run>& runs) {
    std::vector<Run> chunks;
    for (const Run& run : runs) {
        for (std::uint64_t done = 0; done < run.length;) {
            const std::uint64_t to = run.to + done;
            // > to: kChunk is larger than any page.
            const std::uint64_t end = (to + kChunk) / page_size() * page_size();
            const std::uint64_t length = std::min(end - to, run.length - done);
            chunks.push_back({run.from + done, to, length});
            done += length;
        }
    }
    return chunks;
}

// Hands out each chunk once, to whichever thread asks first: the faster way
// (sendfile, or the mapping when the other core is free) ends up doing more.
class ChunkQueue {
  public:
    explicit ChunkQueue(std::vector<Run> chunks) : chunks_(std::move(chunks)) {}
    [[nodiscard]] const Run* take() noexcept {
        const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
        return i < chunks_.size() ? &chunks_[i] : nullptr;
    }

  private:
    std::vector<Run> chunks_;
    std::atomic<std::size_t> next_{0};
};

// Unmaps pages of the input or output mapping from this process once they
// are written or read; the data stays where it is (the memfd, the page
// cache), since the output is a shared mapping and the input a read-only
// one. The worker's resident set then holds a chunk at a time, not the
// image. Never for heap memory, whose pages MADV_DONTNEED would discard.
void release_mapped(const std::byte* data, std::uint64_t length) {
    (void)advise_whole_pages(data, length, MADV_DONTNEED);  // only a saving if it fails
}

// Allocate the chunk's output pages with one call (output_pages.hpp), copy,
// let go.
void copy_through_mapping(const Run& run, std::span<const std::byte> input,
                          const OutputPages& pages) {
    pages.populate(run.to, run.length);
    const auto out = pages.bytes();
    std::memcpy(out.data() + run.to, input.data() + run.from, run.length);
    release_mapped(out.data() + run.to, run.length);
    release_mapped(input.data() + run.from, run.length);
}

// Allocates the output pages that this thread writes itself (the header and
// the tensors it converts or copies) ahead of the writes, a window of up to
// kChunk at a time: one MADV_POPULATE_WRITE instead of a fault per page,
// which for a file of 20,000 small tensors was ~1,200 faults, a tenth of the
// worker's time on a VM where each costs ~11 µs. A window stops where the
// next verbatim run starts: sendfile fills whole pages without zeroing them
// first and the copy thread populates its own chunks, so a window reaching
// into runs zeroed up to 8 MiB in advance per small tensor between them (the
// 500 MB job's worker went from ~265 to ~460 ms).
class PopulatedWindow {
  public:
    // `run_starts`: the output offsets where verbatim runs begin, ascending.
    PopulatedWindow(const OutputPages& pages, std::vector<std::uint64_t> run_starts)
        : pages_(pages), run_starts_(std::move(run_starts)) {}
    void cover(std::uint64_t offset, std::uint64_t length) {
        const std::uint64_t end = offset + length;  // within the output: the layout is checked
        if (end <= populated_end_) return;
        const std::uint64_t from = std::max(offset, populated_end_);
        populated_end_ =
            std::min({size(), std::max(end, from + kChunk), std::max(end, next_run_start(end))});
        pages_.populate(from, populated_end_ - from);
    }

  private:
    [[nodiscard]] std::uint64_t next_run_start(std::uint64_t offset) const {
        const auto next = std::lower_bound(run_starts_.begin(), run_starts_.end(), offset);
        return next == run_starts_.end() ? size() : *next;
    }
    [[nodiscard]] std::uint64_t size() const noexcept { return pages_.bytes().size(); }

    const OutputPages& pages_;
    std::vector<std::uint64_t> run_starts_;
    std::uint64_t populated_end_ = 0;
};

}  // namespace

WriteStats write_image(const loader::Conversion& conversion, int input_fd,
                       std::span<const std::byte> input, int output_fd, CopyThread* helper) {
    const auto& layout = conversion.layout();
    auto output = ipc::map_output(output_fd, layout.total_size(), "output");
    const OutputPages pages(output_fd, output.bytes());
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
    ChunkQueue queue(chunked(runs));
    const bool shared = helper != nullptr && verbatim >= kMinParallelCopy;
    if (shared) {
        helper->start([&queue, &stats, input, &pages] {
            while (const Run* chunk = queue.take()) {
                copy_through_mapping(*chunk, input, pages);
                stats.helper_bytes += chunk->length;  // read only after wait()
            }
        });
    }
    try {
        std::vector<std::uint64_t> run_starts;
        run_starts.reserve(runs.size());
        for (const Run& run : runs) run_starts.push_back(run.to);
        PopulatedWindow window(pages, std::move(run_starts));
        window.cover(0, layout.data_offset());
        layout.write_header(out.first(layout.data_offset()));
        for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
            if (is_run[i]) continue;
            const auto& t = layout.tensors()[i];
            const auto target = out.subspan(layout.data_offset() + t.begin, t.end - t.begin);
            window.cover(layout.data_offset() + t.begin, t.end - t.begin);
            layout.write_tensor(i, target);
            if (target.size() >= kChunk) release_mapped(target.data(), target.size());
            stats.written_bytes += target.size();
        }
        while (const Run* chunk = queue.take()) {
            send_range(input_fd, chunk->from, output_fd, chunk->to, chunk->length);
            stats.sent_bytes += chunk->length;
        }
    } catch (...) {
        if (shared) {
            try {
                helper->wait();  // it copies into `out`: never unmap it under the thread
            } catch (...) {      // NOLINT(bugprone-empty-catch): the first error is reported
            }
        }
        throw;
    }
    if (shared) helper->wait();
    return stats;
}

}  // namespace picklejail::sandbox
