// The worker's last step: the planned image into the output fd, tensor
// bytes copied once. Runs of the input that are copied verbatim go through
// sendfile (page cache to output, never through this process's memory);
// the header and gathered or byte-swapped tensors are written through a
// mapping of the output.
#pragma once

#include <cstdint>
#include <span>

#include "loader/checkpoint_loader.hpp"

namespace picklejail::sandbox {

struct WriteStats {
    std::uint64_t sent_bytes = 0;     // by sendfile
    std::uint64_t written_bytes = 0;  // through the mapping
};

// `input` is the mapping of `input_fd`; tensors whose bytes lie in it and
// need no conversion are sent from the fd. Throws Error(io_error).
WriteStats write_image(const loader::Conversion& conversion, int input_fd,
                       std::span<const std::byte> input, int output_fd);

}  // namespace picklejail::sandbox
