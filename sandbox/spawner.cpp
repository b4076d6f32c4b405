#include "sandbox/spawner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "ipc/file_mapping.hpp"
#include "ipc/memfd.hpp"
#include "ipc/result_record.hpp"
#include "ipc/safetensors_check.hpp"
#include "ipc/unique_fd.hpp"
#include "sandbox/clone_pidfd.hpp"
#include "sandbox/user_namespace.hpp"
#include "sandbox/worker_fds.hpp"

namespace picklejail::sandbox {
namespace {

using ipc::UniqueFd;

constexpr int kStagingFd = 10;  // sources are moved above 3..5 before the child dup2s them
constexpr std::uint64_t kHeapAllowance = 1ULL << 30;
// The child's exit status when it could not write its user namespace's maps.
constexpr int kExitIdMaps = 125;

// How a worker is kept apart from the host.
enum class Isolation {
    none,            // not root and no user namespaces: rlimits, no_new_privs, Landlock, seccomp
    root,            // new namespaces and a switch to the unprivileged worker user
    user_namespace,  // not root: the same namespaces inside a new user namespace
};

[[noreturn]] void spawn_fail(const std::string& what) {
    throw Error(ErrorCode::internal,
                "cannot start the worker: " + what + ": " + std::strerror(errno));
}

UniqueFd dup_high(int fd) {
    UniqueFd out(::fcntl(fd, F_DUPFD_CLOEXEC, kStagingFd));
    if (!out) spawn_fail("dup");
    return out;
}

// True when the process behind `pidfd` ended before the deadline.
bool wait_for_exit(int pidfd, std::chrono::milliseconds deadline) {
    pollfd pfd{pidfd, POLLIN, 0};
    const auto end = std::chrono::steady_clock::now() + deadline;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            end - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        const int rc =
            ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
        if (rc > 0) return true;
        if (rc < 0 && errno != EINTR) return false;
    }
}

// A started worker: killed and reaped on every exit path.
class ChildProcess {
  public:
    ChildProcess(pid_t pid, UniqueFd pidfd) : pid_(pid), pidfd_(std::move(pidfd)) {}
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;
    ~ChildProcess() {
        if (!reaped_) {
            kill();
            (void)reap();
        }
    }
    ChildProcess(ChildProcess&& other) noexcept
        : pid_(other.pid_), pidfd_(std::move(other.pidfd_)), reaped_(other.reaped_) {
        other.reaped_ = true;
    }
    ChildProcess& operator=(ChildProcess&&) = delete;
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    [[nodiscard]] int pidfd() const noexcept { return pidfd_.get(); }
    void kill() const noexcept {
        (void)::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    }
    struct Status {
        int wait_status = 0;
        rusage usage{};
    };
    [[nodiscard]] Status reap() {
        Status status;
        while (::wait4(pid_, &status.wait_status, 0, &status.usage) < 0 && errno == EINTR) {
        }
        reaped_ = true;
        return status;
    }

  private:
    pid_t pid_;
    UniqueFd pidfd_;
    bool reaped_ = false;
};

// The worker's whole environment. mimalloc reads it before main:
// eager commit from the first segment. No MIMALLOC_LARGE_OS_PAGES: transparent
// huge pages cut a 20,000-tensor job's faults from ~7,900 to ~1,050, but each
// fresh 2 MiB page is zeroed whole at once, and on the VM measured (whose
// balloon reports free memory to the host) the job's worker took ~145 ms
// instead of ~97 ms (median, fresh processes).
constexpr std::array<const char*, 2> kWorkerEnvironment = {"MIMALLOC_EAGER_COMMIT_DELAY=0",
                                                           nullptr};

struct PreparedExec {
    std::vector<std::string> args;
    std::vector<char*> argv;
    std::array<const char*, kWorkerEnvironment.size()> envp = kWorkerEnvironment;
};

PreparedExec prepare_exec(const SpawnOptions& options, std::uint64_t input_size,
                          Isolation isolation) {
    PreparedExec exec;
    const auto worker = options.worker.empty() ? default_worker_path() : options.worker;
    // In a new PID namespace getppid() is 0, so the reparenting check is skipped.
    exec.args = {worker.string(), "--parent",
                 isolation != Isolation::none ? "0" : std::to_string(::getpid())};
    const auto add = [&exec](const std::string& flag, const std::string& value) {
        exec.args.push_back(flag);
        exec.args.push_back(value);
    };
    if (options.selftest_act) add("--selftest", *options.selftest_act);
    if (!options.policy_json.empty()) add("--policy-json", options.policy_json);
    if (!options.limits_json.empty()) add("--limits-json", options.limits_json);
    if (!options.select.empty()) add("--select-json", nlohmann::json(options.select).dump());
    if (options.map_file) add("--map-file", "1");
    const std::uint64_t memory =
        options.memory_bytes != 0 ? options.memory_bytes : 2 * input_size + kHeapAllowance;
    add("--address-space", std::to_string(memory));
    const auto cpu = std::chrono::duration_cast<std::chrono::seconds>(options.deadline).count() + 1;
    add("--cpu-seconds", std::to_string(cpu));
    add("--output-bytes", std::to_string(options.output_bytes));
    if (isolation == Isolation::user_namespace) add("--user-namespace", "1");
    if (isolation == Isolation::root) {
        const auto id = options.worker_identity ? *options.worker_identity : worker_identity();
        add("--drop-to-uid", std::to_string(id.uid));
        add("--drop-to-gid", std::to_string(id.gid));
    }
    for (auto& arg : exec.args) exec.argv.push_back(arg.data());
    exec.argv.push_back(nullptr);
    return exec;
}

// What the child needs between clone and exec, prepared before the clone: the
// child reads it from the parent's memory (spawn_with_pidfd shares it).
struct ChildSetup {
    const PreparedExec* exec;
    int in, out, result, devnull, network_namespace;
    const IdMaps* id_maps;
};

// In the child between clone and exec only async-signal-safe calls happen.
[[noreturn]] int exec_child(void* raw) {
    const auto& setup = *static_cast<const ChildSetup*>(raw);
    // Mapped before exec: an unmapped uid would lose the namespace's
    // capabilities at execve, which the worker needs to build its root.
    if (setup.id_maps != nullptr && !enter_id_maps(*setup.id_maps)) ::_exit(kExitIdMaps);
    if (setup.network_namespace >= 0 && ::setns(setup.network_namespace, CLONE_NEWNET) != 0)
        ::_exit(127);
    if (::dup2(setup.devnull, 0) < 0 || ::dup2(setup.devnull, 1) < 0 ||
        ::dup2(setup.devnull, 2) < 0 || ::dup2(setup.in, kInputFd) < 0 ||
        ::dup2(setup.out, kOutputFd) < 0 || ::dup2(setup.result, kResultFd) < 0) {
        ::_exit(127);
    }
    ::syscall(SYS_close_range, kFirstUnusedFd, ~0U, 0);
    const PreparedExec& exec = *setup.exec;
    ::execve(exec.argv[0], exec.argv.data(), const_cast<char* const*>(exec.envp.data()));
    ::_exit(127);
}

// `network_namespace` (as root): an empty one to join (cheaper than creating
// one per worker, which costs most of a millisecond); -1 creates a fresh one.
// In a user namespace the worker always gets a fresh one: joining a network
// namespace the host's user namespace owns needs privileges it lacks there.
ChildProcess start_child(const PreparedExec& exec, int in, int out, int result, Isolation isolation,
                         int network_namespace) {
    UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!devnull) spawn_fail("open /dev/null");
    std::uint64_t flags = 0;
    std::optional<IdMaps> id_maps;
    switch (isolation) {
        case Isolation::none:
            network_namespace = -1;
            break;
        case Isolation::root:
            flags |= CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID;
            if (network_namespace < 0) flags |= CLONE_NEWNET;
            break;
        case Isolation::user_namespace:
            flags |= user_namespace_clone_flags();
            network_namespace = -1;
            id_maps = caller_id_maps();
            break;
    }
    ChildSetup setup{
        &exec, in, out, result, devnull.get(), network_namespace, id_maps ? &*id_maps : nullptr};
    ClonedChild child = spawn_with_pidfd(flags, exec_child, &setup);
    if (child.pid < 0)
        spawn_fail(isolation == Isolation::user_namespace ? "clone (user namespace)" : "clone");
    return ChildProcess(child.pid, std::move(child.pidfd));
}

std::string read_result(int fd) {
    std::array<char, sizeof(ipc::ResultRecord) + 1> buffer{};
    std::size_t total = 0;
    for (;;) {
        const ssize_t n = ::read(fd, buffer.data() + total, buffer.size() - total);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        total += static_cast<std::size_t>(n);
        if (total == buffer.size()) break;
    }
    return {buffer.data(), total};
}

JobResult classify(const ChildProcess::Status& status, bool timed_out,
                   const std::string& record_bytes) {
    JobResult result;
    result.peak_rss_kib = static_cast<std::uint64_t>(status.usage.ru_maxrss);
    result.minor_faults = static_cast<std::uint64_t>(status.usage.ru_minflt);
    const auto record =
        ipc::decode_result(std::as_bytes(std::span(record_bytes.data(), record_bytes.size())));
    if (timed_out) {
        result.status = ErrorCode::timeout;
        result.message = "the worker ran past its deadline and was killed";
        return result;
    }
    if (record && record->status == ErrorCode::sandbox_violation) {
        result.status = ErrorCode::sandbox_violation;
        result.syscall = record->syscall;
        result.message = "the worker attempted a forbidden system call";
        return result;
    }
    if (WIFSIGNALED(status.wait_status)) {
        result.signal = WTERMSIG(status.wait_status);
        switch (result.signal) {
            case SIGSYS:
                result.status = ErrorCode::sandbox_violation;
                result.message =
                    "the worker was killed by the seccomp filter (foreign architecture or blocked "
                    "handler)";
                break;
            case SIGXCPU:
            case SIGXFSZ:
                result.status = ErrorCode::resource_exceeded;
                result.message = std::string("the worker exceeded its ") +
                                 (result.signal == SIGXCPU ? "CPU time" : "output size") + " limit";
                break;
            case SIGKILL:
                result.status = ErrorCode::resource_exceeded;
                result.message = "the worker was killed (CPU hard limit or out of memory)";
                break;
            default:
                result.status = ErrorCode::worker_crashed;
                result.message =
                    std::string("the worker crashed with signal ") + ::sigabbrev_np(result.signal);
        }
        return result;
    }
    if (!record) {
        result.status = ErrorCode::worker_crashed;
        const int code = WEXITSTATUS(status.wait_status);
        result.message =
            "the worker exited with status " + std::to_string(code) +
            (code == 127           ? " (could not exec picklejail-worker)"
             : code == kExitIdMaps ? " (could not write its user namespace's uid/gid maps)"
                                   : " without a valid result");
        return result;
    }
    result.status = record->status;
    result.message = record->message;
    result.output_size = record->output_size;
    result.tensor_count = record->tensor_count;
    return result;
}

// The worker is gone; freeze what it wrote and check it before anyone uses it.
void verify_output(int output_fd, JobResult& result) {
    if (ipc::is_memfd(output_fd)) ipc::seal_image(output_fd);
    const auto size = ipc::regular_file_size(output_fd, "worker output");
    if (size != result.output_size) {
        result.status = ErrorCode::worker_crashed;
        result.message = "the worker's output size does not match its result record";
        return;
    }
    try {
        const auto image = ipc::map_read_only(output_fd, size, "worker output");
        const auto index = ipc::check_safetensors(image.bytes());
        if (const auto it = index.metadata.find("picklejail.source_format");
            it != index.metadata.end()) {
            result.source_format = it->second;
        }
    } catch (const Error& e) {
        result.status = ErrorCode::worker_crashed;
        result.message =
            std::string("the worker produced an invalid safetensors image: ") + e.what();
    }
}

}  // namespace

WorkerIdentity worker_identity() {
    for (const char* name : {"picklejail", "nobody"}) {
        if (const passwd* pw = ::getpwnam(name); pw != nullptr && pw->pw_uid != 0)
            return {pw->pw_uid, pw->pw_gid};
    }
    return {65534, 65534};
}

ipc::UniqueFd create_empty_network_namespace() {
    if (::geteuid() != 0) return {};
    ClonedChild child = clone_with_pidfd(CLONE_NEWNET);
    if (child.pid < 0) spawn_fail("clone (network namespace)");
    if (child.pid == 0) {
        ::pause();  // lives only until the parent has opened its namespace
        ::_exit(0);
    }
    const pid_t pid = child.pid;
    ChildProcess holder(pid, std::move(child.pidfd));
    UniqueFd ns(::open(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns) spawn_fail("open the worker network namespace");
    return ns;  // holder's destructor kills and reaps the child
}

std::filesystem::path default_worker_path() {
    if (const char* env = std::getenv("PICKLEJAIL_WORKER"); env != nullptr && *env != '\0')
        return env;
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    const auto dir = ec ? std::filesystem::path(".") : exe.parent_path();
    // The build tree keeps it beside the binaries; an install puts it in libexec.
    for (const auto& candidate :
         {dir / "picklejail-worker",
          dir.parent_path() / "libexec" / "picklejail" / "picklejail-worker",
          std::filesystem::path(PICKLEJAIL_INSTALL_WORKER)}) {
        if (std::filesystem::is_regular_file(candidate, ec)) return candidate;
    }
    return dir / "picklejail-worker";
}

struct RunningJob::State {
    std::unique_ptr<ChildProcess> child;
    UniqueFd result_read;
    UniqueFd output;  // a duplicate: the caller may close its own fd meanwhile
    bool isolated = false;
    bool user_namespace = false;
    bool selftest = false;
    bool finished = false;
};

RunningJob::RunningJob(std::unique_ptr<State> state) : state_(std::move(state)) {}
RunningJob::RunningJob(RunningJob&&) noexcept = default;
RunningJob& RunningJob::operator=(RunningJob&&) noexcept = default;
RunningJob::~RunningJob() = default;  // ChildProcess kills and reaps an unfinished worker

pid_t RunningJob::pid() const noexcept {
    return state_->child->pid();
}
int RunningJob::pidfd() const noexcept {
    return state_->child->pidfd();
}
void RunningJob::kill() const noexcept {
    state_->child->kill();
}

JobResult RunningJob::finish(bool timed_out) {
    if (state_->finished) throw Error(ErrorCode::internal, "worker job finished twice");
    if (timed_out) kill();
    const auto status = state_->child->reap();
    state_->finished = true;
    JobResult result = classify(status, timed_out, read_result(state_->result_read.get()));
    result.isolated = state_->isolated;
    result.user_namespace = state_->user_namespace;
    result.pid = pid();
    if (result.status == ErrorCode::ok && !state_->selftest)
        verify_output(state_->output.get(), result);
    return result;
}

RunningJob start_worker(int input_fd, int output_fd, const SpawnOptions& options) {
    const std::uint64_t input_size =
        options.selftest_act ? 0 : ipc::regular_file_size(input_fd, "input");
    Isolation isolation = Isolation::none;
    if (options.isolate) {
        // Unprivileged: a user namespace where the host allows one
        // (describe_host_confinement() says why not, where it does not).
        if (::geteuid() == 0)
            isolation = Isolation::root;
        else if (user_namespace_support().usable)
            isolation = Isolation::user_namespace;
    }
    const PreparedExec exec = prepare_exec(options, input_size, isolation);
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) spawn_fail("pipe2");
    auto state = std::make_unique<RunningJob::State>();
    state->result_read.reset(pipe_fds[0]);
    UniqueFd result_write(pipe_fds[1]);
    const UniqueFd in = dup_high(input_fd);
    state->output = dup_high(output_fd);
    {
        const UniqueFd result_fd = dup_high(result_write.get());
        state->child = std::make_unique<ChildProcess>(
            start_child(exec, in.get(), state->output.get(), result_fd.get(), isolation,
                        options.network_namespace_fd));
    }
    // Only the worker holds the result pipe's write end now, so EOF means it is gone.
    state->isolated = isolation != Isolation::none;
    state->user_namespace = isolation == Isolation::user_namespace;
    state->selftest = options.selftest_act.has_value();
    return RunningJob(std::move(state));
}

JobResult run_worker(int input_fd, int output_fd, const SpawnOptions& options,
                     void (*on_started)(pid_t, void*), void* on_started_context) {
    RunningJob job = start_worker(input_fd, output_fd, options);
    if (on_started != nullptr) on_started(job.pid(), on_started_context);
    const bool finished = wait_for_exit(job.pidfd(), options.deadline);
    return job.finish(!finished);
}

std::string describe(const JobResult& result) {
    std::string text = result.message;
    if (result.syscall >= 0) {
        char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, result.syscall);
        text += " " + std::to_string(result.syscall) +
                (name ? " (" + std::string(name) + ")" : std::string());
        std::free(name);
    }
    return text;
}

}  // namespace picklejail::sandbox
