#include "sandbox/selftest_verdict.hpp"

#include <csignal>

namespace picklejail::sandbox {

ActVerdict judge_act(std::string_view act, const JobResult& result, Ia32Entry ia32_entry) {
    if (result.status == ErrorCode::sandbox_violation) return {Verdict::stopped, describe(result)};
    if (act == "int80" && ia32_entry == Ia32Entry::absent &&
        result.status == ErrorCode::worker_crashed && result.signal == SIGSEGV) {
        return {Verdict::stopped_by_kernel,
                "no IA32 entry (int 0x80 faults with SIGSEGV without any filter too)"};
    }
    return {Verdict::not_stopped, describe(result)};
}

std::string_view to_string(Verdict verdict) noexcept {
    switch (verdict) {
        case Verdict::stopped:
            return "stopped";
        case Verdict::stopped_by_kernel:
            return "stopped by the kernel";
        case Verdict::not_stopped:
            return "NOT STOPPED";
    }
    return "unknown";
}

}  // namespace picklejail::sandbox
