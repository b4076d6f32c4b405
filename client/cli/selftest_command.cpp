#include <cstdio>

#include "client/cli/commands.hpp"
#include "client/cli/report_error.hpp"
#include "ipc/memfd.hpp"
#include "sandbox/host_confinement.hpp"
#include "sandbox/kernel_probe.hpp"
#include "sandbox/selftest_acts.hpp"
#include "sandbox/selftest_verdict.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::cli {

int run_selftest() {
    int not_stopped = 0;
    const int rc = report_errors([&] {
        std::printf("host confinement: %s\n", sandbox::describe_host_confinement().dump(2).c_str());
        // Probed once, unconfined: an act this kernel cannot even make is
        // reported as such, not as a failure of the sandbox.
        const auto ia32_entry = sandbox::probe_ia32_entry();
        for (const auto act : sandbox::kSelftestActs) {
            const auto scratch_in = ipc::create_image_memfd("picklejail-selftest-in");
            const auto scratch_out = ipc::create_image_memfd("picklejail-selftest-out");
            sandbox::SpawnOptions options;
            options.selftest_act = std::string(act);
            options.deadline = std::chrono::seconds(10);
            const auto result = sandbox::run_worker(scratch_in.get(), scratch_out.get(), options);
            const auto verdict = sandbox::judge_act(act, result, ia32_entry);
            if (!verdict.counts_as_stopped()) ++not_stopped;
            std::printf("%-22s %s: %s\n", std::string(act).c_str(),
                        std::string(sandbox::to_string(verdict.verdict)).c_str(),
                        verdict.description.c_str());
        }
    });
    std::printf("%s\n", not_stopped == 0 && rc == 0 ? "selftest: every forbidden act was stopped"
                                                    : "selftest: FAILED");
    return not_stopped == 0 ? rc : 1;
}

}  // namespace picklejail::cli
