// Real workers, real seccomp: every forbidden act dies, a running worker is
// confined as /proc shows, deadlines and memory caps end jobs with the right
// code, and nothing (process, fd) is left behind.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <csignal>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "ipc/memfd.hpp"
#include "sandbox/clone_pidfd.hpp"
#include "sandbox/kernel_probe.hpp"
#include "sandbox/policy_files.hpp"
#include "sandbox/selftest_acts.hpp"
#include "sandbox/selftest_verdict.hpp"
#include "sandbox/spawner.hpp"
#include "sandbox/user_namespace.hpp"

namespace {

using namespace picklejail;

sandbox::SpawnOptions base_options() {
    sandbox::SpawnOptions options;
    options.worker = std::string(PICKLEJAIL_BINARY_DIR) + "/bin/picklejail-worker";
    options.deadline = std::chrono::seconds(10);
    return options;
}

std::size_t open_fd_count() {
    std::size_t count = 0;
    DIR* dir = ::opendir("/proc/self/fd");
    while (dirent* entry = ::readdir(dir)) count += entry->d_name[0] != '.';
    ::closedir(dir);
    return count;
}

bool has_children() {
    std::ifstream in("/proc/self/task/" + std::to_string(::getpid()) + "/children");
    std::string text;
    std::getline(in, text);
    return !text.empty();
}

sandbox::JobResult run_act(const std::string& act, sandbox::SpawnOptions options = base_options()) {
    const auto in = ipc::create_image_memfd("test-in");
    const auto out = ipc::create_image_memfd("test-out");
    options.selftest_act = act;
    return sandbox::run_worker(in.get(), out.get(), options);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::string status_field(const std::string& status, const std::string& field) {
    const auto at = status.find(field + ":");
    if (at == std::string::npos) return {};
    const auto end = status.find('\n', at);
    std::string value = status.substr(at + field.size() + 1, end - at - field.size() - 1);
    value.erase(0, value.find_first_not_of(" \t"));
    return value;
}

// The namespaces a worker must not share with its spawner.
constexpr const char* kIsolatedNamespaces[] = {"pid", "net", "mnt", "ipc", "uts"};

std::string namespace_of(const std::string& proc, const std::string& kind) {
    char link[256] = {};
    if (::readlink((proc + "/ns/" + kind).c_str(), link, sizeof link - 1) <= 0) return {};
    return link;
}

struct Observation {
    std::string status;
    std::vector<std::string> fds;
    std::map<std::string, std::string> namespaces;  // kind -> "pid:[4026531836]"
    bool root_listed = false;
    std::vector<std::string> root_entries;  // what the worker sees in its /
    bool root_read_only = false;
};

// Independently of the spawner's probe: can a process here make a user namespace at all?
bool can_unshare_user_namespace() {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(::unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

TEST_CASE("sandbox: every forbidden act is stopped", "[sandbox]") {
    const auto ia32_entry = sandbox::probe_ia32_entry();
    const auto fds_before = open_fd_count();
    for (const auto act : sandbox::kSelftestActs) {
        INFO("act " << act << ", 32-bit entry " << sandbox::to_string(ia32_entry));
        const auto result = run_act(std::string(act));
        const auto verdict = sandbox::judge_act(act, result, ia32_entry);
        INFO(verdict.description);
        CHECK(verdict.counts_as_stopped());
        // Only int80 on a kernel without the entry may be stopped by anything
        // but the sandbox.
        if (act != "int80" || ia32_entry != sandbox::Ia32Entry::absent)
            CHECK(result.status == ErrorCode::sandbox_violation);
    }
    CHECK(open_fd_count() == fds_before);
    CHECK_FALSE(has_children());
}

#if defined(__x86_64__)
TEST_CASE("sandbox: the 32-bit entry probe agrees with the confined int80 act", "[sandbox]") {
    const auto entry = sandbox::probe_ia32_entry();
    REQUIRE(entry != sandbox::Ia32Entry::not_applicable);
    const auto result = run_act("int80");
    INFO(sandbox::describe(result));
    if (entry == sandbox::Ia32Entry::present) {
        // The filter's bad-architecture action kills before the i386 table is reached.
        CHECK(result.status == ErrorCode::sandbox_violation);
        CHECK(result.signal == SIGSYS);
    } else {
        CHECK(result.status == ErrorCode::worker_crashed);
        CHECK(result.signal == SIGSEGV);
    }
}
#else
TEST_CASE("sandbox: no 32-bit entry to probe off x86-64", "[sandbox]") {
    CHECK(sandbox::probe_ia32_entry() == sandbox::Ia32Entry::not_applicable);
}
#endif

// The verdicts for hosts other than this one: the probe's result is an input.
TEST_CASE("sandbox: selftest verdicts for every kind of 32-bit entry", "[sandbox]") {
    using sandbox::Ia32Entry;
    using sandbox::Verdict;
    sandbox::JobResult segv;
    segv.status = ErrorCode::worker_crashed;
    segv.signal = SIGSEGV;
    segv.message = "the worker crashed with signal SEGV";
    sandbox::JobResult refused;
    refused.status = ErrorCode::sandbox_violation;
    refused.signal = SIGSYS;
    sandbox::JobResult ran;
    ran.status = ErrorCode::ok;
    ran.message = "NOT STOPPED: 32-bit int 0x80 syscall ran";

    const auto no_entry = sandbox::judge_act("int80", segv, Ia32Entry::absent);
    CHECK(no_entry.verdict == Verdict::stopped_by_kernel);
    CHECK(no_entry.counts_as_stopped());
    CHECK(std::string(sandbox::to_string(no_entry.verdict)) + ": " + no_entry.description ==
          "stopped by the kernel: no IA32 entry (int 0x80 faults with SIGSEGV without any filter "
          "too)");
    // Where the entry exists (or the probe did not fault), a SEGV is a failure.
    CHECK(sandbox::judge_act("int80", segv, Ia32Entry::present).verdict == Verdict::not_stopped);
    CHECK(sandbox::judge_act("int80", segv, Ia32Entry::not_applicable).verdict ==
          Verdict::not_stopped);
    // A missing entry excuses nothing but a fault of int80 itself.
    CHECK(sandbox::judge_act("int80", ran, Ia32Entry::absent).verdict == Verdict::not_stopped);
    CHECK(sandbox::judge_act("open_file", segv, Ia32Entry::absent).verdict == Verdict::not_stopped);
    CHECK(sandbox::judge_act("x32_syscall", segv, Ia32Entry::absent).verdict ==
          Verdict::not_stopped);
    for (const auto entry : {Ia32Entry::present, Ia32Entry::absent, Ia32Entry::not_applicable}) {
        CHECK(sandbox::judge_act("int80", refused, entry).verdict == Verdict::stopped);
        CHECK(sandbox::judge_act("open_file", refused, entry).verdict == Verdict::stopped);
        CHECK(sandbox::judge_act("open_file", ran, entry).verdict == Verdict::not_stopped);
    }
}

TEST_CASE("sandbox: a violation reports the refused syscall", "[sandbox]") {
    const auto result = run_act("socket_connect");
    REQUIRE(result.status == ErrorCode::sandbox_violation);
    CHECK(result.syscall == SYS_socket);
    CHECK(sandbox::describe(result).find("socket") != std::string::npos);
}

TEST_CASE("sandbox: a running worker is confined", "[sandbox]") {
    auto options = base_options();
    options.deadline = std::chrono::milliseconds(4000);
    Observation seen;
    const auto observe = [](pid_t pid, void* context) {
        auto& out = *static_cast<Observation*>(context);
        const std::string proc = "/proc/" + std::to_string(pid);
        // Confinement finishes within milliseconds of exec; wait for the filter.
        for (int i = 0; i < 300 && status_field(out.status, "Seccomp") != "2"; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
            out.status = read_file(proc + "/status");
        }
        if (DIR* dir = ::opendir((proc + "/fd").c_str())) {
            while (dirent* entry = ::readdir(dir)) {
                if (entry->d_name[0] != '.') out.fds.push_back(entry->d_name);
            }
            ::closedir(dir);
        }
        for (const char* kind : kIsolatedNamespaces)
            out.namespaces[kind] = namespace_of(proc, kind);
        out.namespaces["user"] = namespace_of(proc, "user");
        // Its root as it sees it (we may look: we are root, or own its user namespace).
        if (DIR* dir = ::opendir((proc + "/root").c_str())) {
            out.root_listed = true;
            while (dirent* entry = ::readdir(dir)) {
                const std::string name = entry->d_name;
                if (name != "." && name != "..") out.root_entries.push_back(name);
            }
            ::closedir(dir);
        }
        struct statvfs fs {};
        out.root_read_only =
            ::statvfs((proc + "/root").c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY) != 0;
    };
    const auto in = ipc::create_image_memfd("test-in");
    const auto out = ipc::create_image_memfd("test-out");
    options.selftest_act = "spin";
    const auto result = sandbox::run_worker(in.get(), out.get(), options, observe, &seen);

    CHECK(result.status == ErrorCode::timeout);  // spin never ends: the deadline kills it
    CHECK(status_field(seen.status, "Seccomp") == "2");
    CHECK(status_field(seen.status, "NoNewPrivs") == "1");
    const bool root = ::geteuid() == 0;
    // Not root, the spawner isolates through a user namespace where the host allows one.
    const auto userns = root ? sandbox::UserNamespaceSupport{} : sandbox::probe_user_namespaces();
    INFO("root " << root << ", user namespaces usable " << userns.usable << " " << userns.reason);
    if (root || userns.usable) {
        CHECK(result.isolated);
        CHECK(result.user_namespace == !root);
        for (const char* kind : kIsolatedNamespaces) {
            INFO(kind << " namespace");
            CHECK(!seen.namespaces[kind].empty());
            CHECK(seen.namespaces[kind] != namespace_of("/proc/self", kind));
        }
        // An empty, read-only root: the host's files are not even there to name.
        CHECK(seen.root_listed);
        CHECK(seen.root_entries.empty());
        CHECK(seen.root_read_only);
        CHECK(status_field(seen.status, "CapEff") == "0000000000000000");
        CHECK(status_field(seen.status, "CapPrm") == "0000000000000000");
        const auto uid = status_field(seen.status, "Uid");
        const auto real_uid = uid.substr(0, uid.find_first_of(" \t"));
        if (root) {
            CHECK(real_uid != "0");
        } else {
            // Its own user namespace, where it keeps our uid and lost every capability.
            CHECK(seen.namespaces["user"] != namespace_of("/proc/self", "user"));
            CHECK(real_uid == std::to_string(::getuid()));
            CHECK(status_field(seen.status, "CapBnd") == "0000000000000000");
            CHECK(status_field(seen.status, "CapAmb") == "0000000000000000");
        }
        std::sort(seen.fds.begin(), seen.fds.end());
        CHECK(seen.fds == std::vector<std::string>{"0", "1", "2", "3", "4", "5"});
    } else {
        // Today's unprivileged confinement, and a reason that matches the host.
        CHECK_FALSE(result.isolated);
        CHECK_FALSE(userns.reason.empty());
        // Non-dumpable and in the host's user namespace, its ns links are closed
        // to an unprivileged observer; where one can be read it must be ours.
        for (const char* kind : kIsolatedNamespaces) {
            if (!seen.namespaces[kind].empty())
                CHECK(seen.namespaces[kind] == namespace_of("/proc/self", kind));
        }
        // Where a bare user namespace can be made, the probe must blame a later step.
        if (can_unshare_user_namespace())
            CHECK(userns.reason.find("inside a new user namespace") != std::string::npos);
    }
    CHECK_FALSE(has_children());
}

TEST_CASE("sandbox: the memory cap ends a hungry worker", "[sandbox]") {
    auto options = base_options();
    options.memory_bytes = 256ULL << 20;
    const auto result = run_act("exhaust_memory", options);
    INFO(sandbox::describe(result));
    CHECK(result.status == ErrorCode::resource_exceeded);
    CHECK_FALSE(has_children());
}

TEST_CASE("sandbox: fixtures convert through the worker as in-process", "[sandbox]") {
    auto options = base_options();
    options.policy_json =
        sandbox::load_policy_text("weights", std::string(PICKLEJAIL_SOURCE_DIR) + "/policies");
    const auto fds_before = open_fd_count();
    for (const std::string file : {"torch-2.11/train_checkpoint.pt", "torch-1.13/legacy_format.pt",
                                   "torch-2.11/dtypes.pt"}) {
        INFO(file);
        const auto path = std::string(PICKLEJAIL_SOURCE_DIR) + "/tests/fixtures/" + file;
        const int in = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        REQUIRE(in >= 0);
        const auto out = ipc::create_image_memfd("test-out");
        const auto result = sandbox::run_worker(in, out.get(), options);
        ::close(in);
        CHECK(result.status == ErrorCode::ok);
        CHECK(ipc::is_sealed_image(out.get()));
        struct stat st {};
        REQUIRE(::fstat(out.get(), &st) == 0);
        CHECK(static_cast<std::uint64_t>(st.st_size) == result.output_size);
    }
    {
        const auto path =
            std::string(PICKLEJAIL_SOURCE_DIR) + "/tests/fixtures/torch-2.11/whole_module.pt";
        const int in = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        const auto out = ipc::create_image_memfd("test-out");
        const auto rejected = sandbox::run_worker(in, out.get(), options);
        ::close(in);
        CHECK(rejected.status == ErrorCode::forbidden_global);
        CHECK(rejected.message.find("torch.nn.modules.container.Sequential") != std::string::npos);
    }
    CHECK(open_fd_count() == fds_before);
    CHECK_FALSE(has_children());
}

// The path the spawner takes where clone3 answers ENOSYS (containers); the
// ctests convert_without_clone3 and selftest_without_clone3 take it end to end.
TEST_CASE("sandbox: clone with CLONE_PIDFD starts a child with a pidfd", "[sandbox]") {
    const bool root = ::geteuid() == 0;
    const std::uint64_t flags = root ? CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS : 0;
    auto child = sandbox::legacy_clone_with_pidfd(flags);
    if (child.pid == 0) ::_exit(::getpid() == 1 ? 41 : 42);  // pid 1 in a new PID namespace
    REQUIRE(child.pid > 0);
    REQUIRE(child.pidfd.valid());
    pollfd pfd{child.pidfd.get(), POLLIN, 0};
    CHECK(::poll(&pfd, 1, 10'000) == 1);  // the pidfd reports the exit
    int status = 0;
    REQUIRE(::waitpid(child.pid, &status, 0) == child.pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == (root ? 41 : 42));
    CHECK_FALSE(has_children());
}

namespace {

// Waits until `pid` runs under its seccomp filter (confinement is complete).
bool wait_until_filtered(pid_t pid) {
    const std::string status_path = "/proc/" + std::to_string(pid) + "/status";
    for (int i = 0; i < 500; ++i) {
        if (status_field(read_file(status_path), "Seccomp") == "2") return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

std::string fixture_path(const std::string& name) {
    return std::string(PICKLEJAIL_SOURCE_DIR) + "/tests/fixtures/" + name;
}

}  // namespace

TEST_CASE("sandbox: both threads trapping at once report one violation", "[sandbox]") {
    for (int round = 0; round < 20; ++round) {
        INFO("round " << round);
        const auto result = run_act("both_threads_trap");
        INFO(sandbox::describe(result));
        REQUIRE(result.status == ErrorCode::sandbox_violation);
        CHECK(result.syscall == SYS_openat);
    }
    CHECK_FALSE(has_children());
}

TEST_CASE("sandbox: a SIGSYS sent by kill is not a violation", "[sandbox]") {
    auto options = base_options();
    options.deadline = std::chrono::milliseconds(2000);
    bool signalled = false;
    const auto send_sigsys = [](pid_t pid, void* context) {
        *static_cast<bool*>(context) = wait_until_filtered(pid) && ::kill(pid, SIGSYS) == 0;
    };
    const auto in = ipc::create_image_memfd("test-in");
    const auto out = ipc::create_image_memfd("test-out");
    options.selftest_act = "spin";
    const auto result = sandbox::run_worker(in.get(), out.get(), options, send_sigsys, &signalled);
    REQUIRE(signalled);
    INFO(sandbox::describe(result));
    CHECK(result.status == ErrorCode::timeout);  // ignored: it spun on until the deadline
}

TEST_CASE("sandbox: the output size limit ends a job as resource_exceeded", "[sandbox]") {
    auto options = base_options();
    options.policy_json =
        sandbox::load_policy_text("weights", std::string(PICKLEJAIL_SOURCE_DIR) + "/policies");
    options.output_bytes = 4096;  // RLIMIT_FSIZE; the image is ~40 KB
    const ipc::UniqueFd in(
        ::open(fixture_path("torch-2.11/train_checkpoint.pt").c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(in.valid());
    // A regular file, as `picklejail convert` writes; as root the worker is
    // PID 1 of its namespace, where an unhandled SIGXFSZ would be dropped.
    const ipc::UniqueFd out(::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    REQUIRE(out.valid());
    const auto result = sandbox::run_worker(in.get(), out.get(), options);
    INFO(sandbox::describe(result));
    CHECK(result.status == ErrorCode::resource_exceeded);
    CHECK(result.message.find("output size") != std::string::npos);
    CHECK_FALSE(has_children());
}

TEST_CASE("sandbox: a confined worker dies with its spawner", "[sandbox]") {
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
    ipc::UniqueFd read_end(pipe_fds[0]);
    ipc::UniqueFd write_end(pipe_fds[1]);
    const pid_t spawner = ::fork();
    REQUIRE(spawner >= 0);
    if (spawner == 0) {
        // A spawner that dies (without killing its worker) once the worker is
        // fully confined, credentials changed and all.
        auto options = base_options();
        options.deadline = std::chrono::seconds(60);
        options.selftest_act = "spin";
        const auto in = ipc::create_image_memfd("test-in");
        const auto out = ipc::create_image_memfd("test-out");
        auto job = sandbox::start_worker(in.get(), out.get(), options);
        const pid_t worker = wait_until_filtered(job.pid()) ? job.pid() : -1;
        (void)!::write(write_end.get(), &worker, sizeof worker);
        ::_exit(0);  // no destructors: the job is not killed by us
    }
    write_end.reset();
    pid_t worker = -1;
    const bool got = ::read(read_end.get(), &worker, sizeof worker) == sizeof worker;
    // Opened before the spawner is reaped; ESRCH means the worker is already gone.
    const ipc::UniqueFd worker_fd(
        got && worker > 0 ? static_cast<int>(::syscall(SYS_pidfd_open, worker, 0)) : -1);
    const int open_errno = errno;
    int status = 0;
    REQUIRE(::waitpid(spawner, &status, 0) == spawner);
    REQUIRE(got);
    REQUIRE(worker > 0);
    bool died = !worker_fd.valid() && open_errno == ESRCH;
    if (worker_fd.valid()) {
        pollfd pfd{worker_fd.get(), POLLIN, 0};
        died = ::poll(&pfd, 1, 5000) == 1;
        if (!died) (void)::syscall(SYS_pidfd_send_signal, worker_fd.get(), SIGKILL, nullptr, 0);
    }
    CHECK(died);
    CHECK_FALSE(has_children());
}
