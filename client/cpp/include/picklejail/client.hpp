// picklejail C++ client: asks picklejaild (docs/protocol.md) to load a
// checkpoint and maps the sealed safetensors image it returns, read-only and
// without copying. Every image is checked (seals, size, header) before use.
//
//   picklejail::Client client;                      // $PICKLEJAIL_SOCKET or the default
//   auto image = client.load("/models/gpt2.bin");   // throws picklejail::Error
//   for (const auto& t : image.tensors()) use(t.name, t.dtype, t.shape, t.bytes);
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "ipc/object_names.hpp"

namespace picklejail {

struct TensorView {
    std::string name;
    std::string dtype;  // safetensors dtype: "F32", "BF16", ...
    std::vector<std::uint64_t> shape;
    std::span<const std::byte> bytes;  // C-contiguous little-endian, inside the mapping
    bool mapped_from_file = false;     // mmap: a view of the checkpoint file itself
};

// A loaded image. Owns the read-only mapping; every span points into it and
// is valid for the image's lifetime. Movable, not copyable.
class LoadedImage {
  public:
    LoadedImage(LoadedImage&&) noexcept;
    LoadedImage& operator=(LoadedImage&&) noexcept;
    ~LoadedImage();

    [[nodiscard]] const std::vector<TensorView>& tensors() const noexcept;
    // By stored name or by alias (tied weights); nullptr when absent.
    [[nodiscard]] const TensorView* find(std::string_view name) const;
    // __metadata__: "format", "picklejail.*" keys, and alias → stored name.
    [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept;
    // The whole safetensors image (write it to a file to get a .safetensors).
    // With LoadOptions::mmap it is layout only: the mapped tensors are not in it.
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept;
    // mmap: the private read-only mapping of the checkpoint the mapped
    // tensors point into (empty otherwise).
    [[nodiscard]] std::span<const std::byte> file_bytes() const noexcept;
    // What the daemon said: "format", "tensors", "policy", "cached", ...
    [[nodiscard]] const nlohmann::json& reply() const noexcept;
    // The object the checkpoint holds, as data (docs/output-format.md): tensors
    // as {"tensor": name} (look it up with find()), objects kept as data as
    // {"object": "module.qualname", "args", "state"} records, globals as
    // {"global": name} references, shared objects as {"shared"}/{"ref"}. Null
    // when the image has no description. Parsed on each call.
    [[nodiscard]] nlohmann::json object() const;
    // The record classes and references that object names (what `inspect`
    // lists): names only, never resolved.
    [[nodiscard]] ipc::ObjectNames object_names() const;

    struct Impl;
    explicit LoadedImage(std::unique_ptr<Impl> impl);

  private:
    std::unique_ptr<Impl> impl_;
};

struct LoadOptions {
    std::string policy;               // empty: the daemon's default ("weights")
    std::vector<std::string> select;  // tensor names or prefixes; empty: all
    // As torch.load(mmap=True): tensors stored uncompressed in a zip checkpoint
    // are views of this process's own private read-only mapping of the file
    // (nothing copied); the rest come from the image. A file changed in place
    // afterwards changes the values; one truncated raises SIGBUS on access.
    bool mmap = false;
};

// One connection to picklejaild; requests run one at a time. Not thread-safe:
// use one Client per thread.
class Client {
  public:
    // Connects now. Throws Error(io_error) when nothing listens there.
    explicit Client(const std::filesystem::path& socket_path = default_socket_path(),
                    std::chrono::milliseconds timeout = std::chrono::minutes(5));
    Client(Client&&) noexcept;
    Client& operator=(Client&&) noexcept;
    ~Client();

    // $PICKLEJAIL_SOCKET, else /run/picklejail/picklejail.sock.
    [[nodiscard]] static std::filesystem::path default_socket_path();

    // The daemon's version string; checks the protocol version is 1.
    [[nodiscard]] std::string ping();
    // Loads by path: the daemon opens it with this process's credentials.
    [[nodiscard]] LoadedImage load(const std::filesystem::path& path,
                                   const LoadOptions& options = {});
    // Loads an already open checkpoint (passed with SCM_RIGHTS).
    [[nodiscard]] LoadedImage load_fd(int fd, const LoadOptions& options = {});
    // The `inspect` listing (format, globals, tensors, aliases); no data.
    [[nodiscard]] nlohmann::json inspect_fd(int fd, const LoadOptions& options = {});
    [[nodiscard]] nlohmann::json stats();

  private:
    struct Connection;
    std::unique_ptr<Connection> connection_;
};

}  // namespace picklejail
