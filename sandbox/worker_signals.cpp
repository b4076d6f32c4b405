#include "sandbox/worker_signals.hpp"

#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <string>

#include "common/error.hpp"
#include "ipc/result_record.hpp"
#include "sandbox/worker_fds.hpp"

namespace picklejail::sandbox {
namespace {

// Glibc's SIGSTKSZ is no longer a constant; this is ample for a handler that
// fills one record and makes two syscalls.
constexpr std::size_t kSignalStackBytes = 64 * 1024;

// si_code of a SIGSYS raised by a seccomp filter (SYS_SECCOMP in the
// kernel's asm-generic/siginfo.h, which clashes with glibc's <signal.h>).
constexpr int kSysSeccomp = 1;

// The handlers run on a stack ASan did not allocate, and ASan's check before a
// noreturn call would print a warning about the switch to fd 2, which the
// filter refuses (a SIGSYS inside the SIGSYS handler: killed, no record).
// Sanitizer builds leave these few lines uninstrumented.
#define PICKLEJAIL_SIGNAL_HANDLER __attribute__((no_sanitize("address", "undefined")))

// 0 until a handler claims the one report.
std::atomic<int> report_claimed{0};
static_assert(std::atomic<int>::is_always_lock_free, "used from signal handlers");

// Writes `record` unless another thread already reported, then ends the
// process. The loser parks on a futex (allowed by the filter) until the
// winner's exit_group takes it down with the process.
[[noreturn]] PICKLEJAIL_SIGNAL_HANDLER void report_once_and_exit(const ipc::ResultRecord& record,
                                                                 int exit_status) {
    if (report_claimed.exchange(1) == 0) {
        (void)!::write(kResultFd, &record, sizeof record);
        ::syscall(SYS_exit_group, exit_status);
    }
    for (;;) {
        ::syscall(SYS_futex, reinterpret_cast<int*>(&report_claimed), FUTEX_WAIT_PRIVATE, 1,
                  nullptr, nullptr, 0);
    }
}

PICKLEJAIL_SIGNAL_HANDLER void on_sigsys(int, siginfo_t* info, void*) {
    if (info->si_code != kSysSeccomp) return;  // sent by someone, not a trapped syscall
    ipc::ResultRecord record =
        ipc::make_result(ErrorCode::sandbox_violation, "forbidden system call");
    record.syscall = info->si_syscall;
    report_once_and_exit(record, 128 + SIGSYS);
}

PICKLEJAIL_SIGNAL_HANDLER void on_resource_limit(int signal, siginfo_t*, void*) {
    const ipc::ResultRecord record =
        ipc::make_result(ErrorCode::resource_exceeded,
                         signal == SIGXCPU ? "the worker exceeded its CPU time limit"
                                           : "the worker exceeded its output size limit");
    report_once_and_exit(record, 128 + signal);
}

void handle(int signal, void (*handler)(int, siginfo_t*, void*)) {
    struct sigaction action {};
    action.sa_sigaction = handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    // Each handler blocks the others: one report at a time within a thread.
    sigemptyset(&action.sa_mask);
    for (const int blocked : {SIGSYS, SIGXCPU, SIGXFSZ}) sigaddset(&action.sa_mask, blocked);
    if (::sigaction(signal, &action, nullptr) != 0) {
        throw Error(ErrorCode::internal, "sigaction(" + std::string(::sigabbrev_np(signal)) +
                                             ") failed: " + std::strerror(errno));
    }
}

// Unregisters the stack before freeing it, for threads that do exit (the
// copy thread outside the worker, in tests).
struct SignalStack {
    std::unique_ptr<std::byte[]> memory;
    ~SignalStack() {
        if (!memory) return;
        stack_t off{};
        off.ss_flags = SS_DISABLE;
        (void)::sigaltstack(&off, nullptr);
    }
};

}  // namespace

void install_worker_signal_handlers() {
    handle(SIGSYS, &on_sigsys);
    handle(SIGXCPU, &on_resource_limit);
    handle(SIGXFSZ, &on_resource_limit);
}

void give_thread_signal_stack() {
    thread_local SignalStack stack;
    if (stack.memory) return;
    stack.memory = std::make_unique<std::byte[]>(kSignalStackBytes);
    stack_t alternate{};
    alternate.ss_sp = stack.memory.get();
    alternate.ss_size = kSignalStackBytes;
    if (::sigaltstack(&alternate, nullptr) != 0) {
        stack.memory.reset();
        throw Error(ErrorCode::internal,
                    std::string("sigaltstack failed: ") + std::strerror(errno));
    }
}

}  // namespace picklejail::sandbox
