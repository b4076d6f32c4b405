#include "daemon/image_reply.hpp"

#include <malloc.h>

#include "ipc/image_summary.hpp"
#include "ipc/safetensors_check.hpp"

namespace picklejail::daemon {
namespace {

nlohmann::json load_fields(const ipc::Request& request, const std::string& policy,
                           const FinishedImage& image) {
    return {{"size", image.size},     {"tensors", image.tensors},
            {"format", image.format}, {"policy", policy},
            {"cached", image.cached}, {"transport", ipc::to_string(request.transport)}};
}

// {"ok":true[,"id":…],<the summary's fields>}\n, written straight from the
// summary: a listing of 20,000 tensors is megabytes, and building it as a
// second JSON tree first would double the memory it takes.
std::string summary_line(const nlohmann::ordered_json& summary, const nlohmann::json& id) {
    const auto text = summary.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::string line = "{\"ok\":true";
    if (!id.is_null())
        line += ",\"id\":" + id.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > 2) line += "," + text.substr(1, text.size() - 2);
    line += "}\n";
    return line;
}

// Checking a header of up to 64 MiB and writing its summary takes long
// enough to matter, so it runs off the loop and returns the finished line.
void inspect_reply(Services& s, uid_t uid, const ipc::Request& request, const std::string& policy,
                   FinishedImage image, const std::function<void(Reply)>& done) {
    auto fd = std::make_shared<ipc::UniqueFd>(std::move(image.fd));
    std::function<std::string()> work = [fd, size = image.size, policy, id = request.id] {
        std::string line;
        {
            const auto mapping = ipc::map_read_only(fd->get(), size, "image");
            line = summary_line(ipc::image_summary(ipc::check_safetensors(mapping.bytes()), policy),
                                id);
        }
        // The summary's temporaries sat in this thread's arena: give them back.
        if (line.size() >= MemoryTrim::kWorthTrimming) (void)::malloc_trim(0);
        if (line.size() > ipc::kMaxReplyLineBytes)
            throw Error(ErrorCode::too_large,
                        "the inspect listing is " + std::to_string(line.size()) +
                            " bytes, over the protocol's reply line limit; use load and read "
                            "the header instead");
        return line;
    };
    s.compute.run<std::string>(uid, std::move(work),
                               [done, id = request.id](std::variant<std::string, Error> result) {
                                   if (auto* error = std::get_if<Error>(&result))
                                       return done(Reply::error(error->code(), error->what(), id));
                                   Reply reply;
                                   reply.line = std::move(std::get<std::string>(result));
                                   done(std::move(reply));
                               });
}

// The copy into a caller-owned object runs off the loop and never through a
// mapping of ours, so nothing the caller does to the object can hurt us.
void shm_reply(Services& s, const ipc::PeerCredentials& peer, const ipc::Request& request,
               const std::string& policy, FinishedImage image,
               const std::function<void(Reply)>& done) {
    auto reservation =
        std::make_shared<ShmRegistry::Reservation>(s.shm.reserve(peer.uid, image.size));
    auto fields = load_fields(request, policy, image);
    auto fd = std::make_shared<ipc::UniqueFd>(std::move(image.fd));
    using Object = std::shared_ptr<ipc::SharedMemoryObject>;
    std::function<Object()> work = [fd, size = image.size, name = reservation->name(),
                                    uid = peer.uid, gid = peer.gid] {
        return std::make_shared<ipc::SharedMemoryObject>(name, fd->get(), size, uid, gid);
    };
    Services* services = &s;
    s.compute.run<Object>(peer.uid, std::move(work),
                          [services, done, reservation, fields, uid = peer.uid,
                           id = request.id](std::variant<Object, Error> result) mutable {
                              if (auto* error = std::get_if<Error>(&result))
                                  return done(Reply::error(error->code(), error->what(), id));
                              auto& object = std::get<Object>(result);
                              fields["shm_name"] = object->name();
                              fields["shm_path"] = object->path();
                              fields["ttl_s"] = services->shm.ttl().count();
                              // The registry takes the object over; only it removes the name.
                              services->shm.adopt(std::move(*reservation), uid, std::move(object));
                              done(Reply::ok(fields, id));
                          });
}

}  // namespace

void build_image_reply(Services& s, const ipc::PeerCredentials& peer, const ipc::Request& request,
                       const std::string& policy, FinishedImage image,
                       const std::function<void(Reply)>& done) {
    try {
        if (request.op == ipc::Op::inspect)
            return inspect_reply(s, peer.uid, request, policy, std::move(image), done);
        s.stats.bytes_out += image.size;
        switch (request.transport) {
            case ipc::Transport::memfd: {
                Reply reply = Reply::ok(load_fields(request, policy, image), request.id);
                reply.fd = std::move(image.fd);
                return done(std::move(reply));
            }
            case ipc::Transport::inline_bytes: {
                Reply reply = Reply::ok(load_fields(request, policy, image), request.id);
                reply.payload = ipc::map_read_only(image.fd.get(), image.size, "image");
                return done(std::move(reply));
            }
            case ipc::Transport::shm:
                return shm_reply(s, peer, request, policy, std::move(image), done);
        }
    } catch (const Error& e) {
        done(Reply::error(e.code(), e.what(), request.id));
    }
}

}  // namespace picklejail::daemon
