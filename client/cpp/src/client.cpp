#include "picklejail/client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <unordered_set>

#include "ipc/fd_passing.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/file_ranges_check.hpp"
#include "ipc/line_framer.hpp"
#include "ipc/memfd.hpp"
#include "ipc/protocol.hpp"
#include "ipc/safetensors_check.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail {
namespace {

constexpr std::size_t kReadChunk = std::size_t{64} * 1024;

[[noreturn]] void io_fail(const std::string& what) {
    throw Error(ErrorCode::io_error, what + ": " + std::strerror(errno));
}

ipc::UniqueFd connect_to(const std::filesystem::path& path) {
    sockaddr_un address{};
    if (path.string().size() >= sizeof address.sun_path)
        throw Error(ErrorCode::invalid_request, "socket path too long: " + path.string());
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    ipc::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) io_fail("socket");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
        io_fail("cannot connect to picklejaild at " + path.string());
    return fd;
}

nlohmann::json load_request(const char* op, const LoadOptions& options) {
    nlohmann::json request{{"op", op}, {"transport", "memfd"}};
    if (!options.policy.empty()) request["policy"] = options.policy;
    if (!options.select.empty()) request["select"] = options.select;
    if (options.mmap) request["mmap"] = true;
    return request;
}

}  // namespace

// ---------------------------------------------------------------- LoadedImage

struct LoadedImage::Impl {  // NOLINT(bugprone-exception-escape): empty members never throw
    ipc::Mapping mapping;
    ipc::Mapping file_mapping;  // mmap: the checkpoint itself
    std::vector<TensorView> tensors;
    std::map<std::string, std::string> metadata;
    nlohmann::json reply;
};

LoadedImage::LoadedImage(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LoadedImage::LoadedImage(LoadedImage&&) noexcept = default;
LoadedImage& LoadedImage::operator=(LoadedImage&&) noexcept = default;
LoadedImage::~LoadedImage() = default;

const std::vector<TensorView>& LoadedImage::tensors() const noexcept {
    return impl_->tensors;
}
const std::map<std::string, std::string>& LoadedImage::metadata() const noexcept {
    return impl_->metadata;
}
std::span<const std::byte> LoadedImage::bytes() const noexcept {
    return impl_->mapping.bytes();
}
std::span<const std::byte> LoadedImage::file_bytes() const noexcept {
    return impl_->file_mapping.bytes();
}
nlohmann::json LoadedImage::object() const {
    const auto it = impl_->metadata.find("picklejail.object");
    if (it == impl_->metadata.end()) return nullptr;
    auto parsed = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded())
        throw Error(ErrorCode::malformed, "the image's picklejail.object is not JSON");
    return parsed;
}

ipc::ObjectNames LoadedImage::object_names() const {
    const auto it = impl_->metadata.find("picklejail.object");
    return it == impl_->metadata.end() ? ipc::ObjectNames{} : ipc::object_names(it->second);
}

const nlohmann::json& LoadedImage::reply() const noexcept {
    return impl_->reply;
}

const TensorView* LoadedImage::find(std::string_view name) const {
    for (int hop = 0; hop < 2; ++hop) {
        for (const auto& t : impl_->tensors) {
            if (t.name == name) return &t;
        }
        const auto alias = impl_->metadata.find(std::string(name));
        if (alias == impl_->metadata.end()) return nullptr;
        name = alias->second;
    }
    return nullptr;
}

namespace {

// The daemon is trusted to be the daemon, not to be bug-free: check the
// seals and the whole header before exposing a single byte.
std::unique_ptr<LoadedImage::Impl> map_image(ipc::UniqueFd fd, nlohmann::json reply) {
    if (!reply.contains("size") || !reply["size"].is_number_unsigned())
        throw Error(ErrorCode::malformed, "daemon reply has no size");
    const auto size = reply["size"].get<std::uint64_t>();
    if (!ipc::is_sealed_image(fd.get()))
        throw Error(ErrorCode::malformed, "the daemon's memfd is not sealed against writes");
    if (ipc::regular_file_size(fd.get(), "image") != size)
        throw Error(ErrorCode::malformed, "the daemon's memfd size differs from its reply");
    auto impl = std::make_unique<LoadedImage::Impl>();
    impl->mapping = ipc::map_read_only(fd.get(), size, "image");
    const auto bytes = impl->mapping.bytes();
    auto index = ipc::check_safetensors(bytes);
    for (auto& entry : index.tensors) {
        impl->tensors.push_back(
            TensorView{std::move(entry.name), std::move(entry.dtype), std::move(entry.shape),
                       bytes.subspan(index.data_offset + entry.begin, entry.end - entry.begin)});
    }
    impl->metadata = std::move(index.metadata);
    impl->reply = std::move(reply);
    return impl;
}

// mmap: the image names the file's own byte ranges; map `checkpoint_fd` (the
// fd that was sent) once it is shown to be the file the worker checked.
void add_file_tensors(LoadedImage::Impl& impl, int checkpoint_fd) {
    const auto text = impl.metadata.find(ipc::kFileRangesKey);
    if (text == impl.metadata.end())
        throw Error(ErrorCode::malformed, "a mapped load's image has no file ranges");
    const auto ranges = ipc::parse_file_ranges(text->second);
    std::unordered_set<std::string_view> in_image;  // a set: files hold 20,000 tensors
    for (const auto& t : impl.tensors) in_image.insert(t.name);
    for (const auto& range : ranges.tensors) {
        if (in_image.contains(range.name))
            throw Error(ErrorCode::malformed,
                        "tensor \"" + range.name + "\" is both in the image and mapped");
    }
    struct stat st {};
    if (::fstat(checkpoint_fd, &st) != 0) io_fail("cannot stat the checkpoint");
    ipc::check_same_file(ranges, st);
    if (ranges.tensors.empty()) return;
    impl.file_mapping = ipc::map_read_only(checkpoint_fd, ranges.size, "checkpoint");
    const auto file = impl.file_mapping.bytes();
    for (const auto& range : ranges.tensors) {
        impl.tensors.push_back(TensorView{range.name, range.dtype, range.shape,
                                          file.subspan(range.begin, range.end - range.begin),
                                          true});
    }
}

}  // namespace

// ---------------------------------------------------------------- Client

struct Client::Connection {
    ipc::UniqueFd socket;
    std::chrono::milliseconds timeout;
    ipc::LineFramer framer{ipc::kMaxReplyLineBytes, ipc::kMaxReplyLineBytes};

    void wait_readable() const {
        pollfd pfd{socket.get(), POLLIN, 0};
        const int rc = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
        if (rc == 0) throw Error(ErrorCode::timeout, "no reply from picklejaild in time");
        if (rc < 0 && errno != EINTR) io_fail("poll");
    }

    ipc::FramedLine read_line() {
        for (;;) {
            if (auto line = framer.next_line()) return std::move(*line);
            wait_readable();
            std::array<std::byte, kReadChunk> buffer;
            auto chunk = ipc::receive_with_fds(socket.get(), buffer, 1);
            if (!chunk) continue;
            if (chunk->closed)
                throw Error(ErrorCode::io_error, "picklejaild closed the connection");
            framer.append(std::span(buffer.data(), chunk->size), std::move(chunk->fds));
        }
    }

    // Sends one request and returns its reply; error replies throw.
    std::pair<nlohmann::json, std::vector<ipc::UniqueFd>> call(const nlohmann::json& request,
                                                               int fd = -1) {
        const std::string line = ipc::to_line(request);
        ipc::send_all(socket.get(), std::as_bytes(std::span(line)), fd);
        auto reply_line = read_line();
        auto reply = nlohmann::json::parse(reply_line.text, nullptr, false);
        if (!reply.is_object() || !reply.contains("ok"))
            throw Error(ErrorCode::malformed, "picklejaild sent an unreadable reply");
        if (reply["ok"] != true) {
            const auto& error = reply["error"];
            throw Error(error_code_from_string(error.value("code", "internal")),
                        error.value("message", "picklejaild gave no message"));
        }
        return {std::move(reply), std::move(reply_line.fds)};
    }
};

Client::Client(const std::filesystem::path& socket_path, std::chrono::milliseconds timeout)
    : connection_(std::make_unique<Connection>(Connection{connect_to(socket_path), timeout})) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

std::filesystem::path Client::default_socket_path() {
    if (const char* env = std::getenv("PICKLEJAIL_SOCKET"); env != nullptr && *env != '\0')
        return env;
    return "/run/picklejail/picklejail.sock";
}

std::string Client::ping() {
    auto [reply, fds] = connection_->call({{"op", "ping"}});
    if (reply.value("protocol", 0) != ipc::kProtocolVersion)
        throw Error(ErrorCode::unsupported, "picklejaild speaks another protocol version");
    return reply.value("version", "");
}

LoadedImage Client::load(const std::filesystem::path& path, const LoadOptions& options) {
    // A mapped load maps the file it sent: opened here, with our credentials.
    if (options.mmap) return load_fd(ipc::open_read_only(path.string()).get(), options);
    auto request = load_request("load", options);
    request["path"] = std::filesystem::absolute(path).string();
    auto [reply, fds] = connection_->call(request);
    if (fds.size() != 1) throw Error(ErrorCode::malformed, "the reply carried no memfd");
    return LoadedImage(map_image(std::move(fds.front()), std::move(reply)));
}

LoadedImage Client::load_fd(int fd, const LoadOptions& options) {
    auto request = load_request("load", options);
    request["fd"] = true;
    auto [reply, fds] = connection_->call(request, fd);
    if (fds.size() != 1) throw Error(ErrorCode::malformed, "the reply carried no memfd");
    auto impl = map_image(std::move(fds.front()), std::move(reply));
    if (options.mmap) add_file_tensors(*impl, fd);
    return LoadedImage(std::move(impl));
}

nlohmann::json Client::inspect_fd(int fd, const LoadOptions& options) {
    auto request = load_request("inspect", options);
    request.erase("transport");
    request["fd"] = true;
    auto [reply, fds] = connection_->call(request, fd);
    reply.erase("ok");
    return reply;
}

nlohmann::json Client::stats() {
    return connection_->call({{"op", "stats"}}).first["stats"];
}

}  // namespace picklejail
