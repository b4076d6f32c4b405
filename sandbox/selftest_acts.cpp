#include "sandbox/selftest_acts.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace picklejail::sandbox {

#if defined(__x86_64__)
namespace {
constexpr long kX32SyscallBit = 0x40000000;  // __X32_SYSCALL_BIT
constexpr long kI386Getpid = 20;             // __NR_getpid in the i386 table
}  // namespace

long int80_getpid() noexcept {
    long result = kI386Getpid;
    asm volatile("int $0x80" : "+a"(result) : : "memory");
    return result;
}
#endif

// Each branch makes the raw attempt; reaching `return` means it was not stopped.
std::string_view attempt_forbidden_act(std::string_view act) {
    if (act == "open_file") {
        const int fd = ::open("/etc/passwd", O_RDONLY);
        return fd >= 0 ? "opened /etc/passwd" : "open failed with an errno";
    }
    if (act == "socket_connect") {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(9);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        return rc == 0 ? "connected" : "socket/connect failed with an errno";
    }
    if (act == "execve") {
        char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
        ::execve("/bin/true", argv, nullptr);
        return "execve failed with an errno";
    }
    if (act == "fork") {
        const long pid = ::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) ::syscall(SYS_exit_group, 0);
        return pid > 0 ? "created a child process" : "clone failed with an errno";
    }
    if (act == "ptrace") {
        return ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) == 0 ? "ptrace allowed"
                                                                  : "ptrace failed with an errno";
    }
    if (act == "kill") {
        return ::kill(1, 0) == 0 ? "signalled pid 1" : "kill failed with an errno";
    }
    if (act == "mprotect_exec") {
        void* page =
            ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return ::mprotect(page, 4096, PROT_READ | PROT_EXEC) == 0 ? "made memory executable"
                                                                  : "mprotect failed with an errno";
    }
#if defined(__x86_64__)
    if (act == "int80") {
        return int80_getpid() > 0 ? "32-bit int 0x80 syscall ran" : "int 0x80 failed with an errno";
    }
    if (act == "x32_syscall") {
        return ::syscall(kX32SyscallBit | SYS_getpid) > 0 ? "x32 syscall ran"
                                                          : "x32 syscall failed with an errno";
    }
#endif
    if (act == "write_foreign_fd") {
        return ::write(1, "x", 1) == 1 ? "wrote to fd 1" : "write failed with an errno";
    }
    // Test-only behaviours (not forbidden acts): a worker that never ends, and
    // one that allocates until its address-space limit stops it.
    if (act == "spin") {
        volatile std::uint64_t counter = 0;
        for (;;) counter = counter + 1U;
    }
    if (act == "exhaust_memory") {
        for (;;) {
            // malloc, not new: under ASan (sanitizer builds) a refused new prints
            // an out-of-memory report and dies instead of throwing std::bad_alloc.
            auto* block = static_cast<char*>(std::malloc(64 << 20));
            if (block == nullptr) throw std::bad_alloc();
            std::memset(block, 1, 64 << 20);
        }
    }
    return "unknown act";
}

}  // namespace picklejail::sandbox
