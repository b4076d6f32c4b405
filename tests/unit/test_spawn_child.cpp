// spawn_with_pidfd: the CLONE_VM | CLONE_VFORK start of every worker. The
// child shares the parent's memory until it execs, so these check what that
// sharing must never allow: a parent handler running in the child, a mask
// left blocked, a parent that returns before the child is done with its stack.
#include <poll.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>

#include "sandbox/clone_pidfd.hpp"

using namespace picklejail;

namespace {

struct Exchange {
    int exit_code = 0;
    int seen_pid = 0;  // the child's getpid(), written into the parent's memory
};

int exit_with_code(void* raw) {
    auto* exchange = static_cast<Exchange*>(raw);
    exchange->seen_pid = static_cast<int>(::getpid());
    ::_exit(exchange->exit_code);
}

int raise_usr1(void*) {
    (void)::raise(SIGUSR1);
    ::_exit(7);  // reached only if SIGUSR1 did not end the child
}

int exec_true(void*) {
    char arg0[] = "true";
    char* argv[] = {arg0, nullptr};
    char* envp[] = {nullptr};
    (void)::execve("/bin/true", argv, envp);
    ::_exit(127);
}

// Set by the parent's handler; the child must never run it.
std::atomic<int> usr1_handled{0};
void on_usr1(int) {
    usr1_handled.fetch_add(1);
}

int wait_status(const sandbox::ClonedChild& child) {
    pollfd pfd{child.pidfd.get(), POLLIN, 0};
    REQUIRE(::poll(&pfd, 1, 10'000) == 1);  // the pidfd reports the exit
    int status = 0;
    REQUIRE(::waitpid(child.pid, &status, 0) == child.pid);
    return status;
}

}  // namespace

TEST_CASE("spawn: the child runs on its own stack, exits with its code, and has a pidfd",
          "[sandbox][spawn]") {
    Exchange exchange{23, 0};
    const auto child = sandbox::spawn_with_pidfd(0, exit_with_code, &exchange);
    REQUIRE(child.pid > 0);
    REQUIRE(child.pidfd.valid());
#ifndef PICKLEJAIL_SANITIZE
    // Shared memory, and CLONE_VFORK: the child's write is there the moment
    // the parent resumes, before any wait.
    CHECK(exchange.seen_pid == child.pid);
#endif
    const int status = wait_status(child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 23);
}

TEST_CASE("spawn: a new PID namespace makes the child pid 1 (root)", "[sandbox][spawn]") {
    if (::geteuid() != 0) return;  // creating one needs CAP_SYS_ADMIN
    Exchange exchange{0, 0};
    const auto child = sandbox::spawn_with_pidfd(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC,
                                                 exit_with_code, &exchange);
    REQUIRE(child.pid > 0);
#ifndef PICKLEJAIL_SANITIZE
    CHECK(exchange.seen_pid == 1);
#endif
    const int status = wait_status(child);
    REQUIRE(WIFEXITED(status));
}

TEST_CASE("spawn: the parent's signal handlers never run in the child", "[sandbox][spawn]") {
    struct sigaction handler {};
    handler.sa_handler = on_usr1;
    struct sigaction before {};
    REQUIRE(::sigaction(SIGUSR1, &handler, &before) == 0);
    usr1_handled.store(0);
    const auto child = sandbox::spawn_with_pidfd(0, raise_usr1, nullptr);
    REQUIRE(child.pid > 0);
    const int status = wait_status(child);
    (void)::sigaction(SIGUSR1, &before, nullptr);
    // The default action ended the child; the handler (our code, our memory) did not run.
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGUSR1);
    CHECK(usr1_handled.load() == 0);
}

TEST_CASE("spawn: the parent's signal mask is the same afterwards", "[sandbox][spawn]") {
    sigset_t before{};
    REQUIRE(::pthread_sigmask(SIG_SETMASK, nullptr, &before) == 0);
    const auto child = sandbox::spawn_with_pidfd(0, exec_true, nullptr);
    REQUIRE(child.pid > 0);
    sigset_t after{};
    REQUIRE(::pthread_sigmask(SIG_SETMASK, nullptr, &after) == 0);
    for (int signal = 1; signal < NSIG; ++signal) {
        INFO("signal " << signal);
        CHECK(::sigismember(&before, signal) == ::sigismember(&after, signal));
    }
    const int status = wait_status(child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);  // /bin/true ran: exec works from the shared stack
}

TEST_CASE("spawn: flags beyond clone()'s int are refused, not truncated", "[sandbox][spawn]") {
    errno = 0;
    const auto child = sandbox::spawn_with_pidfd(std::uint64_t{1} << 40, exit_with_code, nullptr);
    CHECK(child.pid == -1);
    CHECK(errno == EINVAL);
}
