// Runs one job in a fresh picklejail-worker: exec with fds 3/4/5, a
// deadline enforced through a pidfd, a memory cap, and every way a worker
// can end mapped to one error code. Used by the CLI and the daemon.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::sandbox {

// The unprivileged user workers run as (when the spawner is root).
struct WorkerIdentity {
    uid_t uid;
    gid_t gid;
};

struct SpawnOptions {
    std::filesystem::path worker;     // empty: default_worker_path()
    std::string policy_json;          // self-contained policy text
    std::string limits_json;          // optional loader limit overrides
    std::vector<std::string> select;  // tensor names or prefixes; empty: all
    bool map_file = false;            // layout only for stored records (loader/file_ranges.hpp)
    std::chrono::milliseconds deadline{60'000};
    std::uint64_t memory_bytes = 0;           // RLIMIT_AS; 0: 2 × input + 1 GiB
    std::uint64_t output_bytes = 1ULL << 40;  // RLIMIT_FSIZE on the output
    std::optional<std::string> selftest_act;  // run a forbidden act instead of a job
    // As root: namespaces + unprivileged uid. Not root: the same namespaces in
    // a new user namespace, where the host allows unprivileged ones.
    bool isolate = true;
    int network_namespace_fd = -1;  // an empty network namespace to join; -1: a new one each
    std::optional<WorkerIdentity> worker_identity;  // unset: looked up (worker_identity())
};

struct JobResult {
    ErrorCode status = ErrorCode::internal;
    std::string message;
    int syscall = -1;  // sandbox_violation: the refused syscall number
    int signal = 0;    // the signal that ended the worker, if any
    std::uint64_t output_size = 0;
    std::uint64_t tensor_count = 0;
    std::string source_format;  // zip, legacy or pickle (from the checked image)
    std::uint64_t peak_rss_kib = 0;
    // Pages the worker faulted in (its fresh memory, mostly).
    std::uint64_t minor_faults = 0;
    bool isolated = false;        // new namespaces (and, as root, the uid switch)
    bool user_namespace = false;  // isolated in a user namespace, keeping the caller's uid
    pid_t pid = 0;                // for diagnostics and tests (already reaped)
};

// The dedicated picklejail user when it exists, else nobody. Looks up the
// user database: long-lived callers resolve it once.
[[nodiscard]] WorkerIdentity worker_identity();

// An empty network namespace (no interfaces, not even loopback up) that
// workers can share: made once by a short-lived child. Invalid when not root.
[[nodiscard]] ipc::UniqueFd create_empty_network_namespace();

// <dir of this executable>/picklejail-worker, or $PICKLEJAIL_WORKER.
[[nodiscard]] std::filesystem::path default_worker_path();

// A worker that has been started and not yet collected. Destroying it kills
// and reaps the worker, so no exit path leaks a process.
class RunningJob {
  public:
    struct State;
    explicit RunningJob(std::unique_ptr<State> state);
    RunningJob(RunningJob&&) noexcept;
    RunningJob& operator=(RunningJob&&) noexcept;
    ~RunningJob();

    [[nodiscard]] pid_t pid() const noexcept;
    // Becomes readable (poll/epoll) when the worker has exited.
    [[nodiscard]] int pidfd() const noexcept;
    void kill() const noexcept;
    // Reaps the worker (killing it first when `timed_out`), classifies how it
    // ended, and seals and checks its output. Call once, after pidfd() is
    // readable or with timed_out set; otherwise it blocks until the worker exits.
    [[nodiscard]] JobResult finish(bool timed_out);

  private:
    std::unique_ptr<State> state_;
};

// Starts the worker on `input_fd`, writing into `output_fd`, and returns at
// once; the caller waits on pidfd() and enforces the deadline. Used by the
// daemon, whose event loop must not block.
[[nodiscard]] RunningJob start_worker(int input_fd, int output_fd, const SpawnOptions& options);

// Runs the worker on `input_fd`, writing into `output_fd` (a memfd, sealed
// here after the worker exits, or a regular file). On success the output is
// verified with the safetensors checker before the result says ok.
// `on_started` (optional) is called with the worker's pid while it runs.
[[nodiscard]] JobResult run_worker(int input_fd, int output_fd, const SpawnOptions& options,
                                   void (*on_started)(pid_t, void*) = nullptr,
                                   void* on_started_context = nullptr);

// "sandbox_violation: forbidden system call 41 (socket)"-style one-liner.
[[nodiscard]] std::string describe(const JobResult& result);

}  // namespace picklejail::sandbox
