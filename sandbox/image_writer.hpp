// The worker's last step: the planned image into the output fd, tensor
// bytes copied once. Runs of the input that are copied verbatim go through
// sendfile (page cache to output, never through this process's memory);
// the header and gathered or byte-swapped tensors are written through a
// mapping of the output. With a CopyThread and enough verbatim bytes, the two
// threads share the verbatim bytes out in 8 MiB chunks: this one sends its
// chunks with sendfile, the copy thread copies its own through the mapping
// (sendfile into one memfd does not run in parallel: the kernel takes the
// inode lock).
#pragma once

#include <cstdint>
#include <span>

#include "loader/checkpoint_loader.hpp"
#include "sandbox/copy_thread.hpp"

namespace picklejail::sandbox {

struct WriteStats {
    std::uint64_t sent_bytes = 0;     // by sendfile
    std::uint64_t written_bytes = 0;  // through the mapping, by this thread
    std::uint64_t helper_bytes = 0;   // through the mapping, by the copy thread
};

// `input` is the mapping of `input_fd`; tensors whose bytes lie in it and
// need no conversion are sent from the fd. `helper` may be null. Throws
// Error(io_error).
WriteStats write_image(const loader::Conversion& conversion, int input_fd,
                       std::span<const std::byte> input, int output_fd,
                       CopyThread* helper = nullptr);

}  // namespace picklejail::sandbox
