#include "daemon/request_handler.hpp"

#include <fcntl.h>

#include <chrono>

#include "daemon/caller_file.hpp"
#include "ipc/image_summary.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/limits.hpp"
#include "version.hpp"

namespace picklejail::daemon {
namespace {

using Clock = std::chrono::steady_clock;

// Everything a load or inspect carries from admission to its reply.
struct LoadRequest {  // NOLINT(bugprone-exception-escape): members never throw when empty
    ipc::Request request;
    ipc::PeerCredentials peer;
    std::string policy;
    nlohmann::json audit;
    Clock::time_point start = Clock::now();
    ReplyHandler reply;
};

long long elapsed_ms(Clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

nlohmann::json audit_base(const ipc::Request& request, const ipc::PeerCredentials& peer) {
    nlohmann::json entry{{"event", "request"},
                         {"op", ipc::to_string(request.op)},
                         {"uid", peer.uid},
                         {"pid", peer.pid}};
    if (request.path) entry["path"] = *request.path;
    return entry;
}

void record_result(Services& s, nlohmann::json& audit, ErrorCode code, std::string_view message,
                   Clock::time_point start) {
    s.stats.count_result(code);
    audit["result"] = to_string(code);
    if (code != ErrorCode::ok) {
        audit["message"] = message;
        const auto global = ipc::named_global(message);
        audit["globals_refused"] =
            global.empty() ? nlohmann::json::array() : nlohmann::json::array({global});
    }
    audit["duration_ms"] = elapsed_ms(start);
    s.audit.record(audit);
}

// The loader limits every worker gets: the operator's overrides, with the
// daemon's input and output caps on top so the loader refuses early.
std::string worker_limits_json(const Config& config) {
    auto limits = config.loader_limits_json.empty()
                      ? nlohmann::json::object()
                      : nlohmann::json::parse(config.loader_limits_json);
    // The daemon's caps bound the loader's; an operator may set tighter ones.
    const auto tighter = [&limits](const char* key, std::uint64_t cap) {
        const auto it = limits.find(key);
        if (it == limits.end() || !it->is_number_unsigned() || it->get<std::uint64_t>() > cap)
            limits[key] = cap;
    };
    tighter("max_output_bytes", config.max_output_bytes);
    tighter("max_input_bytes", config.max_input_bytes);
    return limits.dump();
}

ipc::UniqueFd take_input(const ipc::Request& request, const ipc::PeerCredentials& peer,
                         std::vector<ipc::UniqueFd>& fds) {
    if (request.fd) {
        if (fds.size() != 1)
            throw Error(ErrorCode::invalid_request,
                        "\"fd\":true needs exactly one fd attached to the request line (got " +
                            std::to_string(fds.size()) + ")");
        return std::move(fds.front());
    }
    if (!fds.empty())
        throw Error(ErrorCode::invalid_request, "a request by path must not carry an fd");
    return open_as_caller(*request.path, peer);
}

Reply image_reply(Services& s, const LoadRequest& load, JobOutcome& outcome) {
    const auto& result = outcome.result;
    nlohmann::json fields{{"size", result.output_size},
                          {"tensors", result.tensor_count},
                          {"format", result.source_format},
                          {"policy", load.policy},
                          {"cached", outcome.cached}};
    Reply reply;
    if (load.request.op == ipc::Op::inspect) {
        const auto image = ipc::map_read_only(outcome.image.get(), result.output_size, "image");
        auto summary = ipc::image_summary(ipc::check_safetensors(image.bytes()), load.policy);
        reply.message = ipc::ok_reply(nlohmann::json::parse(summary.dump()), load.request.id);
        return reply;
    }
    fields["transport"] = ipc::to_string(load.request.transport);
    switch (load.request.transport) {
        case ipc::Transport::memfd:
            reply.fd = std::move(outcome.image);
            break;
        case ipc::Transport::inline_bytes:
            reply.payload = ipc::map_read_only(outcome.image.get(), result.output_size, "image");
            break;
        case ipc::Transport::shm: {
            const auto image = ipc::map_read_only(outcome.image.get(), result.output_size, "image");
            const auto name = s.shm.publish(load.peer.uid, load.peer.gid, image.bytes());
            fields["shm_name"] = name;
            fields["shm_path"] = "/dev/shm/" + name;
            fields["ttl_s"] = s.shm.ttl().count();
            break;
        }
    }
    s.stats.bytes_out += result.output_size;
    reply.message = ipc::ok_reply(fields, load.request.id);
    return reply;
}

void finish_load(Services& s, LoadRequest& load, JobOutcome outcome) {
    auto& audit = load.audit;
    const auto& result = outcome.result;
    if (outcome.cached) {
        audit["cached"] = true;
    } else {
        audit["worker_pid"] = result.pid;
        audit["queued_ms"] = outcome.queued.count();
        audit["peak_rss_kib"] = result.peak_rss_kib;
    }
    Reply reply;
    ErrorCode code = result.status;
    std::string message = sandbox::describe(result);
    if (code == ErrorCode::ok) {
        try {
            reply = image_reply(s, load, outcome);
            audit["bytes"] = result.output_size;
            audit["tensors"] = result.tensor_count;
        } catch (const Error& e) {
            code = e.code();
            message = e.what();
        }
    }
    if (code != ErrorCode::ok) reply.message = ipc::error_reply(code, message, load.request.id);
    record_result(s, audit, code, message, load.start);
    load.reply(std::move(reply));
}

JobOutcome outcome_from_cache(const CachedImage& image) {
    JobOutcome outcome;
    outcome.result.status = ErrorCode::ok;
    outcome.result.output_size = image.size;
    outcome.result.tensor_count = image.tensors;
    outcome.result.source_format = image.format;
    outcome.image.reset(::fcntl(image.fd->get(), F_DUPFD_CLOEXEC, 0));
    if (!outcome.image) throw Error(ErrorCode::internal, "cannot duplicate a cached image");
    outcome.cached = true;
    return outcome;
}

// With the cache on: a hit answers at once; a conversion of the same thing
// already running is joined; otherwise a new one starts and fills the cache.
std::shared_ptr<PendingRequest> load_through_cache(
    Services& s, const std::shared_ptr<LoadRequest>& load, const CacheKey& key,
    const std::function<std::shared_ptr<Job>(Job::Done)>& submit) {
    Services* services = &s;
    if (const auto hit = s.cache->find(key)) {
        finish_load(s, *load, outcome_from_cache(*hit));
        return nullptr;
    }
    Deliver deliver = [services, load](JobOutcome outcome) {
        finish_load(*services, *load, std::move(outcome));
    };
    if (auto joined = s.in_flight.join(key, deliver)) {
        s.cache->count_coalesced();
        load->audit["coalesced"] = true;
        return joined;
    }
    auto fill_cache = [services, key](const JobOutcome& outcome) {
        if (outcome.result.status != ErrorCode::ok || !outcome.image || !services->cache) return;
        const int copy = ::fcntl(outcome.image.get(), F_DUPFD_CLOEXEC, 0);
        if (copy < 0) return;
        services->cache->insert(
            key,
            CachedImage{std::make_shared<const ipc::UniqueFd>(copy), outcome.result.output_size,
                        outcome.result.tensor_count, outcome.result.source_format});
    };
    return s.in_flight.start(key, submit, fill_cache, deliver);
}

std::shared_ptr<PendingRequest> start_load(Services& s, const ipc::PeerCredentials& peer,
                                           ipc::Request request, std::vector<ipc::UniqueFd> fds,
                                           ReplyHandler reply, nlohmann::json audit) {
    auto load = std::make_shared<LoadRequest>();
    load->peer = peer;
    load->policy = request.policy.empty() ? s.config.default_policy : request.policy;
    load->audit = std::move(audit);
    load->audit["policy"] = load->policy;
    if (request.op == ipc::Op::load) load->audit["transport"] = ipc::to_string(request.transport);
    load->request = std::move(request);
    load->reply = std::move(reply);

    ipc::UniqueFd input = take_input(load->request, peer, fds);
    const FileIdentity file = readable_file_identity(input.get());
    load->audit["file"] = to_json(file);
    if (file.size > s.config.max_input_bytes) {
        throw Error(ErrorCode::too_large, "the checkpoint is " + std::to_string(file.size) +
                                              " bytes; this daemon accepts at most " +
                                              std::to_string(s.config.max_input_bytes));
    }
    sandbox::SpawnOptions options;
    options.worker = s.config.worker;
    options.policy_json = s.policies.text(load->policy);
    options.limits_json = worker_limits_json(s.config);
    options.deadline = s.config.deadline;
    options.memory_bytes = s.config.worker_memory_bytes;
    options.output_bytes = s.config.max_output_bytes;
    options.select = load->request.select;
    options.network_namespace_fd = s.network_namespace.get();
    options.worker_identity = s.worker_identity;
    if (load->request.transport == ipc::Transport::shm) s.shm.check_quota(peer.uid, 0);

    Services* services = &s;
    const uid_t uid = peer.uid;
    auto shared_input = std::make_shared<ipc::UniqueFd>(std::move(input));
    auto submit = [services, uid, shared_input, options](Job::Done done) {
        return services->pool.submit(uid, std::move(*shared_input), options, std::move(done));
    };
    if (s.cache) {
        CacheKey key{file, load->policy, s.policies.generation(), load->request.select};
        return load_through_cache(s, load, key, submit);
    }
    return submit([services, load](JobOutcome outcome) {
        finish_load(*services, *load, std::move(outcome));
    });
}

nlohmann::json stats_json(const Services& s) {
    auto stats = s.stats.to_json();
    stats["workers_running"] = s.pool.running();
    stats["queued"] = s.pool.queued();
    stats["workers_started"] = s.pool.started_total();
    stats["shm_objects"] = s.shm.count();
    stats["shm_bytes"] = s.shm.total_bytes();
    stats["draining"] = s.draining;
    stats["cache"] = s.cache ? s.cache->stats() : nlohmann::json{{"enabled", false}};
    if (s.cache) stats["cache"]["enabled"] = true;
    stats["in_flight_shared"] = s.in_flight.size();
    stats["policies"] = s.policies.names();
    stats["limits"] = {{"max_workers", s.pool.limits().max_workers},
                       {"max_queue", s.pool.limits().max_queue},
                       {"max_requests_per_uid", s.pool.limits().max_per_uid},
                       {"max_connections", s.config.max_connections},
                       {"max_shm_bytes_per_uid", s.config.max_shm_bytes_per_uid},
                       {"max_input_bytes", s.config.max_input_bytes},
                       {"max_output_bytes", s.config.max_output_bytes},
                       {"deadline_ms", s.config.deadline.count()},
                       {"shm_ttl_s", s.config.shm_ttl.count()}};
    return stats;
}

}  // namespace

std::shared_ptr<PendingRequest> handle_request(Services& services, const ipc::PeerCredentials& peer,
                                               ipc::Request request, std::vector<ipc::UniqueFd> fds,
                                               const ReplyHandler& reply) {
    services.stats.count_request(ipc::to_string(request.op));
    const nlohmann::json id = request.id;
    switch (request.op) {
        case ipc::Op::ping:
            reply(Reply(
                ipc::ok_reply({{"version", kVersion}, {"protocol", ipc::kProtocolVersion}}, id)));
            return nullptr;
        case ipc::Op::stats:
            reply(Reply(ipc::ok_reply({{"stats", stats_json(services)}}, id)));
            return nullptr;
        case ipc::Op::release:
            try {
                services.shm.release(peer.uid, request.shm_name);
                reply(Reply(ipc::ok_reply({}, id)));
            } catch (const Error& e) {
                reply(Reply(ipc::error_reply(e.code(), e.what(), id)));
            }
            return nullptr;
        case ipc::Op::load:
        case ipc::Op::inspect:
            break;
    }
    auto audit = audit_base(request, peer);
    const auto start = Clock::now();
    try {
        if (services.draining)
            throw Error(ErrorCode::busy, "the daemon is shutting down; retry shortly");
        return start_load(services, peer, std::move(request), std::move(fds), reply, audit);
    } catch (const Error& e) {
        record_result(services, audit, e.code(), e.what(), start);
        reply(Reply(ipc::error_reply(e.code(), e.what(), id)));
    }
    return nullptr;
}

}  // namespace picklejail::daemon
