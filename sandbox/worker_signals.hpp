// The worker's signal handlers, each reporting one result record and
// ending the process:
//  - SIGSYS from the seccomp filter (si_code SYS_SECCOMP): sandbox_violation
//    with the refused syscall. A SIGSYS sent by kill is not a violation and
//    is ignored.
//  - SIGXCPU and SIGXFSZ (RLIMIT_CPU, RLIMIT_FSIZE): resource_exceeded. As
//    PID 1 of its namespace the worker would otherwise never see them: the
//    kernel drops default-action signals to a namespace's init.
// The first report wins: a second thread that traps meanwhile waits for the
// exit instead of writing a second record into the result pipe.
// Handlers run on an alternate stack, so a violation on an exhausted stack
// is still reported.
#pragma once

namespace picklejail::sandbox {

// Process-wide; call once, before the seccomp filter is loaded.
void install_worker_signal_handlers();

// Gives the calling thread its alternate signal stack (sigaltstack is per
// thread). Call in every worker thread before the seccomp filter is loaded,
// which refuses sigaltstack.
void give_thread_signal_stack();

}  // namespace picklejail::sandbox
