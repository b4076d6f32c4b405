// Lays out and writes a safetensors image: compact JSON header (metadata
// first, then tensors in the reference writer's order), space padding so the
// data section is aligned, then every tensor's bytes gathered C-contiguous,
// little-endian, straight from its source into the output buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "loader/dtype.hpp"
#include "loader/limits.hpp"

namespace picklejail::loader {

struct TensorSource {
    std::string name;
    DType dtype;
    std::vector<std::uint64_t> shape;    // logical shape (complex128 gets a trailing 2 on output)
    std::vector<std::uint64_t> stride;   // in elements
    std::uint64_t offset = 0;            // in elements
    std::span<const std::byte> storage;  // the whole storage the view reads from
    bool big_endian = false;
};

struct LaidOutTensor {
    TensorSource source;
    std::string safetensors_dtype;
    std::vector<std::uint64_t> written_shape;
    std::uint64_t begin = 0;  // relative to the data section
    std::uint64_t end = 0;
};

class SafetensorsLayout {
  public:
    // `alignment`: the data section starts at a multiple of it (8 = the
    // reference writer; picklejail uses 64). Throws too_large past the limits.
    [[nodiscard]] static SafetensorsLayout plan(std::vector<TensorSource> tensors,
                                                const std::map<std::string, std::string>& metadata,
                                                const Limits& limits, std::size_t alignment = 64);

    [[nodiscard]] std::uint64_t total_size() const noexcept { return data_offset_ + data_size_; }
    [[nodiscard]] std::uint64_t data_offset() const noexcept { return data_offset_; }
    [[nodiscard]] const std::string& header() const noexcept { return header_; }
    [[nodiscard]] const std::vector<LaidOutTensor>& tensors() const noexcept { return tensors_; }

    // Writes the whole image; `out` must be exactly total_size() bytes.
    void write(std::span<std::byte> out) const;
    // Writes only tensor `index`'s bytes into `out` (its end − begin bytes).
    void write_tensor(std::size_t index, std::span<std::byte> out) const;
    // Writes the 8-byte prefix and header (data_offset() bytes).
    void write_header(std::span<std::byte> out) const;
    // When tensor `index`'s output bytes are one contiguous, same-endian run
    // of its storage, that run (end − begin bytes): a caller may copy it
    // without touching it (sendfile). Empty otherwise.
    [[nodiscard]] std::span<const std::byte> contiguous_source(std::size_t index) const;

  private:
    std::vector<LaidOutTensor> tensors_;
    std::string header_;  // JSON plus padding
    std::uint64_t data_offset_ = 0;
    std::uint64_t data_size_ = 0;
};

// Copies a strided view into contiguous C order (`dst` holds numel × elsize).
void gather_strided(std::span<const std::byte> storage, std::uint64_t offset,
                    const std::vector<std::uint64_t>& shape,
                    const std::vector<std::uint64_t>& stride, std::size_t element_size,
                    std::span<std::byte> dst);

// Byte-swaps every `width`-byte unit in place (big-endian sources).
void swap_bytes(std::span<std::byte> data, std::size_t width);

}  // namespace picklejail::loader
