// What this kernel offers that the sandbox and its selftest depend on,
// learned by trying it in an unconfined child rather than from version
// numbers or build options (a distribution kernel may compile a feature in
// and switch it off at boot: ia32_emulation=0).
#pragma once

#include <string_view>

namespace picklejail::sandbox {

// The 32-bit system call entry (int 0x80) of an x86-64 kernel.
enum class Ia32Entry {
    present,         // int 0x80 reaches a system call table (the filter must stop it)
    absent,          // int 0x80 faults (SIGSEGV) before any filter sees it
    not_applicable,  // not an x86-64 build: the act does not exist here
};

// Forks a child that makes one unconfined int 0x80 getpid() and watches how
// it ends. Anything but the fault counts as present, so an odd result keeps
// the act checked against the filter.
[[nodiscard]] Ia32Entry probe_ia32_entry();

[[nodiscard]] std::string_view to_string(Ia32Entry entry) noexcept;

}  // namespace picklejail::sandbox
