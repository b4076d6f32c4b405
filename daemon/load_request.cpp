#include "daemon/load_request.hpp"

#include <fcntl.h>

#include "daemon/caller_file.hpp"
#include "daemon/image_reply.hpp"

namespace picklejail::daemon {
namespace {

// The input once opened and identified (on the caller-files pool).
struct OpenedInput {
    ipc::UniqueFd fd;
    FileIdentity identity;
};

// The loader limits every worker gets: the operator's overrides, with the
// daemon's input and output caps on top so the loader refuses early.
std::string worker_limits_json(const Config& config) {
    auto limits = config.loader_limits_json.empty()
                      ? nlohmann::json::object()
                      : nlohmann::json::parse(config.loader_limits_json);
    const auto tighter = [&limits](const char* key, std::uint64_t cap) {
        const auto it = limits.find(key);
        if (it == limits.end() || !it->is_number_unsigned() || it->get<std::uint64_t>() > cap)
            limits[key] = cap;
    };
    tighter("max_output_bytes", config.max_output_bytes);
    tighter("max_input_bytes", config.max_input_bytes);
    return limits.dump();
}

ipc::UniqueFd duplicate(int fd, const char* what) {
    ipc::UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!copy) throw Error(ErrorCode::internal, std::string("cannot duplicate ") + what);
    return copy;
}

JobOutcome outcome_from_cache(const CachedImage& image) {
    JobOutcome outcome;
    outcome.result.status = ErrorCode::ok;
    outcome.result.output_size = image.size;
    outcome.result.tensor_count = image.tensors;
    outcome.result.source_format = image.format;
    outcome.image = duplicate(image.fd->get(), "a cached image");
    outcome.cached = true;
    return outcome;
}

class LoadRequest : public PendingRequest, public std::enable_shared_from_this<LoadRequest> {
  public:
    LoadRequest(Services& services, const ipc::PeerCredentials& peer, ipc::Request request,
                std::shared_ptr<RequestAudit> audit, ReplyHandler reply)
        : s_(services),
          peer_(peer),
          request_(std::move(request)),
          audit_(std::move(audit)),
          reply_(std::move(reply)) {}

    void start(std::vector<ipc::UniqueFd> fds);
    void cancel() override;

  private:
    void on_opened(std::variant<OpenedInput, Error> opened);
    void convert(OpenedInput input);
    [[nodiscard]] sandbox::SpawnOptions spawn_options() const;
    void convert_through_cache(std::shared_ptr<ipc::UniqueFd> input, const FileIdentity& file,
                               const sandbox::SpawnOptions& options);
    void on_outcome(JobOutcome outcome);
    void answer(Reply reply);
    [[nodiscard]] std::function<void(JobOutcome)> outcome_handler();

    Services& s_;
    ipc::PeerCredentials peer_;
    ipc::Request request_;
    std::string policy_;
    std::shared_ptr<RequestAudit> audit_;
    ReplyHandler reply_;
    std::shared_ptr<PendingRequest> inner_;  // the job or shared conversion
    bool cancelled_ = false;
    bool answered_ = false;
};

void LoadRequest::start(std::vector<ipc::UniqueFd> fds) {
    if (s_.draining) throw Error(ErrorCode::busy, "the daemon is shutting down; retry shortly");
    policy_ = request_.policy.empty() ? s_.config.default_policy : request_.policy;
    auto& audit = audit_->fields();
    audit["policy"] = policy_;
    if (request_.op == ipc::Op::load) audit["transport"] = ipc::to_string(request_.transport);
    (void)s_.policies.text(policy_);  // an unknown policy is refused before any I/O
    if (request_.op == ipc::Op::load && request_.transport == ipc::Transport::shm)
        s_.shm.check_quota(peer_.uid, 0);

    std::shared_ptr<ipc::UniqueFd> passed;
    if (request_.fd) {
        if (fds.size() != 1)
            throw Error(ErrorCode::invalid_request,
                        "\"fd\":true needs exactly one fd attached to the request line (got " +
                            std::to_string(fds.size()) + ")");
        passed = std::make_shared<ipc::UniqueFd>(std::move(fds.front()));
    } else if (!fds.empty()) {
        throw Error(ErrorCode::invalid_request, "a request by path must not carry an fd");
    }
    // Opening a path and even fstat of a passed fd can block (NFS, FUSE):
    // both run on the caller-files pool, under the caller's uid's share.
    std::function<OpenedInput()> work = [passed, path = request_.path, peer = peer_] {
        OpenedInput opened;
        opened.fd = passed ? std::move(*passed) : open_as_caller(*path, peer);
        opened.identity = readable_file_identity(opened.fd.get());
        return opened;
    };
    std::weak_ptr<LoadRequest> weak = shared_from_this();
    s_.caller_files.run<OpenedInput>(peer_.uid, std::move(work),
                                     [weak](std::variant<OpenedInput, Error> opened) {
                                         if (auto self = weak.lock())
                                             self->on_opened(std::move(opened));
                                     });
}

void LoadRequest::on_opened(std::variant<OpenedInput, Error> opened) {
    if (cancelled_) return;
    if (auto* error = std::get_if<Error>(&opened))
        return answer(Reply::error(error->code(), error->what(), request_.id));
    try {
        convert(std::move(std::get<OpenedInput>(opened)));
    } catch (const Error& e) {
        answer(Reply::error(e.code(), e.what(), request_.id));
    }
}

sandbox::SpawnOptions LoadRequest::spawn_options() const {
    sandbox::SpawnOptions options;
    options.worker = s_.config.worker;
    options.policy_json = s_.policies.text(policy_);
    options.limits_json = worker_limits_json(s_.config);
    options.deadline = s_.config.deadline;
    options.memory_bytes = s_.config.worker_memory_bytes;
    options.output_bytes = s_.config.max_output_bytes;
    options.select = request_.select;
    options.map_file = request_.map_file;
    options.network_namespace_fd = s_.network_namespace.get();
    options.worker_identity = s_.worker_identity;
    return options;
}

void LoadRequest::convert(OpenedInput input) {
    audit_->fields()["file"] = to_json(input.identity);
    if (input.identity.size > s_.config.max_input_bytes) {
        throw Error(ErrorCode::too_large, "the checkpoint is " +
                                              std::to_string(input.identity.size) +
                                              " bytes; this daemon accepts at most " +
                                              std::to_string(s_.config.max_input_bytes));
    }
    const auto options = spawn_options();
    auto shared_input = std::make_shared<ipc::UniqueFd>(std::move(input.fd));
    if (s_.cache) return convert_through_cache(shared_input, input.identity, options);
    inner_ = s_.pool.submit(peer_.uid, std::move(*shared_input), options, outcome_handler());
}

std::function<void(JobOutcome)> LoadRequest::outcome_handler() {
    std::weak_ptr<LoadRequest> weak = shared_from_this();
    return [weak](JobOutcome outcome) {
        if (auto self = weak.lock()) self->on_outcome(std::move(outcome));
    };
}

// With the cache on: a hit answers at once; a conversion of the same thing
// already running is joined; otherwise a new one starts and fills the cache.
void LoadRequest::convert_through_cache(std::shared_ptr<ipc::UniqueFd> input,
                                        const FileIdentity& file,
                                        const sandbox::SpawnOptions& options) {
    const CacheKey key{file, policy_, s_.policies.generation(), request_.select, request_.map_file};
    if (const auto hit = s_.cache->find(key)) return on_outcome(outcome_from_cache(*hit));
    if (auto joined = s_.in_flight.join(key, outcome_handler())) {
        s_.cache->count_coalesced();
        audit_->fields()["coalesced"] = true;
        inner_ = std::move(joined);
        return;
    }
    Services* services = &s_;
    auto fill_cache = [services, key](const JobOutcome& outcome) {
        if (outcome.result.status != ErrorCode::ok || !outcome.image || !services->cache) return;
        const int copy = ::fcntl(outcome.image.get(), F_DUPFD_CLOEXEC, 0);
        if (copy < 0) return;  // not cached; every recipient still gets its own copy
        services->cache->insert(
            key,
            CachedImage{std::make_shared<const ipc::UniqueFd>(copy), outcome.result.output_size,
                        outcome.result.tensor_count, outcome.result.source_format});
    };
    const uid_t uid = peer_.uid;
    auto submit = [services, uid, input, options](Job::Done done) {
        return services->pool.submit(uid, std::move(*input), options, std::move(done));
    };
    inner_ = s_.in_flight.start(key, submit, fill_cache, outcome_handler());
}

void LoadRequest::on_outcome(JobOutcome outcome) {
    if (cancelled_) return;
    auto& audit = audit_->fields();
    const auto& result = outcome.result;
    if (outcome.cached) {
        audit["cached"] = true;
    } else {
        audit["worker_pid"] = result.pid;
        audit["queued_ms"] = outcome.queued.count();
        audit["peak_rss_kib"] = result.peak_rss_kib;
        audit["minor_faults"] = result.minor_faults;
    }
    if (result.status != ErrorCode::ok)
        return answer(Reply::error(result.status, sandbox::describe(result), request_.id));
    audit["bytes"] = result.output_size;
    audit["tensors"] = result.tensor_count;
    FinishedImage image{std::move(outcome.image), result.output_size, result.tensor_count,
                        result.source_format, outcome.cached};
    std::weak_ptr<LoadRequest> weak = shared_from_this();
    build_image_reply(s_, peer_, request_, policy_, std::move(image), [weak](Reply reply) {
        if (auto self = weak.lock()) self->answer(std::move(reply));
    });
}

void LoadRequest::answer(Reply reply) {
    if (answered_ || cancelled_) return;
    const auto keep_alive = shared_from_this();  // the session drops its reference in reply_
    answered_ = true;
    inner_.reset();
    reply_(std::move(reply));
}

void LoadRequest::cancel() {
    if (cancelled_) return;
    cancelled_ = true;
    if (inner_) inner_->cancel();
    inner_.reset();
}

}  // namespace

std::shared_ptr<PendingRequest> start_load(Services& services, const ipc::PeerCredentials& peer,
                                           ipc::Request request, std::vector<ipc::UniqueFd> fds,
                                           std::shared_ptr<RequestAudit> audit,
                                           ReplyHandler reply) {
    auto load = std::make_shared<LoadRequest>(services, peer, std::move(request), std::move(audit),
                                              std::move(reply));
    load->start(std::move(fds));
    return load;
}

}  // namespace picklejail::daemon
