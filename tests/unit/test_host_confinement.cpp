// The host description says what a real worker gets on this host.
#include <sys/syscall.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "ipc/memfd.hpp"
#include "sandbox/host_confinement.hpp"
#include "sandbox/kernel_probe.hpp"
#include "sandbox/spawner.hpp"

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
    CHECK(host["uid_drop"]["applied"] == result.isolated);
}
