// The host description says what a real worker gets on this host.
#include <sys/syscall.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "ipc/memfd.hpp"
#include "sandbox/host_confinement.hpp"
#include "sandbox/kernel_probe.hpp"
#include "sandbox/spawner.hpp"
#include "sandbox/user_namespace.hpp"

using namespace picklejail;

TEST_CASE("host confinement: every part is described, with a reason when missing", "[sandbox]") {
    const auto host = sandbox::describe_host_confinement();
    for (const char* part : {"namespaces", "uid_drop", "no_new_privs", "landlock", "seccomp"}) {
        INFO(part << ": " << host.dump());
        REQUIRE(host.contains(part));
        REQUIRE(host[part]["applied"].is_boolean());
        if (!host[part]["applied"].get<bool>()) CHECK(host[part]["reason"].is_string());
    }
    CHECK(host["running_as_root"] == (::geteuid() == 0));
    CHECK(host["ia32_entry"]["state"] ==
          std::string(sandbox::to_string(sandbox::probe_ia32_entry())));
    CHECK(host["seccomp"]["applied"] == true);  // the worker could not run otherwise
    const auto& landlock = host["landlock"];
    CHECK(landlock["applied"] == landlock["abi"].is_number_integer());
}

TEST_CASE("host confinement: namespaces and uid drop match a real worker", "[sandbox]") {
    sandbox::SpawnOptions options;
    options.worker = std::string(PICKLEJAIL_BINARY_DIR) + "/bin/picklejail-worker";
    options.deadline = std::chrono::seconds(10);
    options.selftest_act = "open_file";
    const auto in = ipc::create_image_memfd("test-in");
    const auto out = ipc::create_image_memfd("test-out");
    const auto result = sandbox::run_worker(in.get(), out.get(), options);
    const auto host = sandbox::describe_host_confinement();
    CHECK(host["namespaces"]["applied"] == result.isolated);
    // Without root a user namespace isolates, but the worker keeps the caller's uid.
    CHECK(host["uid_drop"]["applied"] == (result.isolated && !result.user_namespace));
    CHECK(result.user_namespace == (result.isolated && ::geteuid() != 0));
}

TEST_CASE("host confinement: without root, namespaces follow the user namespace probe",
          "[sandbox]") {
    const auto host = sandbox::describe_host_confinement();
    INFO(host.dump());
    // As root the probe is not consulted: the root path always isolates.
    const auto userns = ::geteuid() == 0 ? sandbox::UserNamespaceSupport{true, ""}
                                         : sandbox::probe_user_namespaces();
    CHECK(host["namespaces"]["applied"] == userns.usable);
    if (::geteuid() == 0) {
        CHECK(host["namespaces"]["kinds"].size() == 5);
    } else if (userns.usable) {
        const auto kinds = host["namespaces"]["kinds"].get<std::vector<std::string>>();
        CHECK(kinds == std::vector<std::string>{"user", "mount", "network", "ipc", "uts", "pid"});
    } else {
        // Says why: the probe's own reason is part of it.
        CHECK(host["namespaces"]["reason"].get<std::string>().find(userns.reason) !=
              std::string::npos);
    }
}
