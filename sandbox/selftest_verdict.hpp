// How the outcome of one selftest act is judged. Kept apart from running the
// act so the judgement can be tested with any host's facts (a kernel without
// the 32-bit entry, say) on whichever host runs the tests.
#pragma once

#include <string>
#include <string_view>

#include "sandbox/kernel_probe.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::sandbox {

enum class Verdict {
    stopped,            // the sandbox refused the act
    stopped_by_kernel,  // the act cannot be made on this kernel at all
    not_stopped,        // the act ran, or the worker ended some other way
};

struct ActVerdict {
    Verdict verdict = Verdict::not_stopped;
    std::string description;

    [[nodiscard]] bool counts_as_stopped() const noexcept {
        return verdict != Verdict::not_stopped;
    }
};

// `act`'s worker ended as `result` on a host whose 32-bit entry is
// `ia32_entry` (probe_ia32_entry()). Only a SIGSEGV from int80 where the
// unconfined probe faulted the same way is "stopped by the kernel"; where the
// entry exists the act must be refused by the filter like any other.
[[nodiscard]] ActVerdict judge_act(std::string_view act, const JobResult& result,
                                   Ia32Entry ia32_entry);

[[nodiscard]] std::string_view to_string(Verdict verdict) noexcept;

}  // namespace picklejail::sandbox
