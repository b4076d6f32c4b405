// The loader's entry point: checkpoint bytes in, a planned safetensors image
// out. Pure computation over memory the caller mapped; the caller provides
// the output buffer, so tensor bytes are copied exactly once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loader/file_ranges.hpp"
#include "loader/helper_thread.hpp"
#include "loader/limits.hpp"
#include "loader/policy.hpp"
#include "loader/safetensors_writer.hpp"

namespace picklejail::loader {

enum class InputFormat : std::uint8_t { zip, legacy, pickle };
[[nodiscard]] std::string_view to_string(InputFormat format) noexcept;

// Keys picklejail writes into __metadata__ besides alias entries.
inline constexpr std::string_view kMetaFormat = "format";
inline constexpr std::string_view kMetaObject = "picklejail.object";
inline constexpr std::string_view kMetaSource = "picklejail.source_format";
inline constexpr std::string_view kMetaComplex128 = "picklejail.complex128";
inline constexpr std::string_view kMetaGlobals = "picklejail.globals";
inline constexpr std::string_view kMetaProtocol = "picklejail.pickle_protocol";

// A request for part of a file: a tensor is kept when its stored or alias
// name equals an entry, starts with an entry followed by '.', or starts with
// an entry that itself ends with '.'. Empty: keep everything.
struct Selection {
    std::vector<std::string> entries;
    [[nodiscard]] bool empty() const noexcept { return entries.empty(); }
    [[nodiscard]] bool matches(std::string_view name) const noexcept;
};

class Conversion {
  public:
    // Parses `input` under `policy`; every failure throws picklejail::Error.
    // Only tensors `select` matches are written; the object description
    // still describes the whole file. `helper` (optional) takes a share of
    // the reading; the result and every error are the same without it.
    // `map_file` (optional): a mapped load of the file `input` is the whole
    // of; tensors the client can map are named in picklejail.file_ranges
    // instead of written (file_ranges.hpp).
    [[nodiscard]] static Conversion plan(std::span<const std::byte> input, const Policy& policy,
                                         const Limits& limits, const Selection& select = {},
                                         HelperThread* helper = nullptr,
                                         const SourceFileIdentity* map_file = nullptr);

    Conversion(Conversion&&) noexcept;
    Conversion& operator=(Conversion&&) noexcept;
    ~Conversion();

    [[nodiscard]] InputFormat format() const noexcept { return format_; }
    [[nodiscard]] int pickle_protocol() const noexcept { return protocol_; }
    [[nodiscard]] const std::vector<std::string>& globals() const noexcept { return globals_; }
    [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept {
        return metadata_;
    }
    [[nodiscard]] const SafetensorsLayout& layout() const noexcept { return layout_; }
    [[nodiscard]] std::uint64_t output_size() const noexcept { return layout_.total_size(); }
    // Tensors left in the file by a mapped load (not in layout()).
    [[nodiscard]] std::size_t mapped_tensors() const noexcept { return mapped_tensors_; }

    // Writes the complete image; `out` must be output_size() bytes.
    void write(std::span<std::byte> out) const { layout_.write(out); }

  private:
    Conversion() = default;

    struct Owned;  // storages (inflated records the layout points into), object graph
    std::unique_ptr<Owned> owned_;
    InputFormat format_ = InputFormat::pickle;
    int protocol_ = 0;
    std::vector<std::string> globals_;
    std::map<std::string, std::string> metadata_;
    SafetensorsLayout layout_;
    std::size_t mapped_tensors_ = 0;
};

}  // namespace picklejail::loader
