// picklejail-worker: exec'd fresh for one job by the spawner, with fd 3 the
// checkpoint, fd 4 the output, fd 5 the result pipe. It confines itself
// completely before it reads a single byte of the checkpoint, converts it,
// writes the safetensors image to fd 4 and one result record to fd 5.
#include <sys/stat.h>
#include <unistd.h>

#ifdef PICKLEJAIL_WITH_MIMALLOC
#include <mimalloc.h>
#endif

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <system_error>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/result_record.hpp"
#include "loader/checkpoint_loader.hpp"
#include "sandbox/confine.hpp"
#include "sandbox/copy_thread.hpp"
#include "sandbox/image_writer.hpp"
#include "sandbox/seccomp_policy.hpp"
#include "sandbox/selftest_acts.hpp"
#include "sandbox/worker_fds.hpp"
#include "sandbox/worker_signals.hpp"

namespace {

using picklejail::Error;
using picklejail::ErrorCode;
namespace sandbox = picklejail::sandbox;
namespace loader = picklejail::loader;
namespace ipc = picklejail::ipc;

// Inputs smaller than this convert too quickly for a second thread to pay.
constexpr std::uint64_t kCopyThreadMinInput = std::uint64_t{32} << 20;
// A zip archive this big can have a directory worth reading beside the
// pickle (a thread costs ~0.1 ms; 20,000 entries take ~10 ms to read). The
// size alone decides: the format is in bytes not read before confinement.
constexpr std::uint64_t kDirectoryThreadMinInput = std::uint64_t{1} << 20;

struct WorkerArgs {
    std::string policy_json;
    std::string limits_json;
    std::string select_json;
    std::string selftest;
    bool map_file = false;  // a mapped load: leave stored records in the file
    sandbox::ConfineOptions confine;
};

std::uint64_t parse_number(const std::string& text, const std::string& flag) {
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        throw Error(ErrorCode::invalid_request, "worker: bad number for " + flag);
    }
    return value;
}

// The spawner is the only caller; flags come in "--name value" pairs.
WorkerArgs parse_args(int argc, char** argv) {
    std::map<std::string, std::string> flags;
    for (int i = 1; i + 1 < argc; i += 2) flags[argv[i]] = argv[i + 1];
    if ((argc - 1) % 2 != 0)
        throw Error(ErrorCode::invalid_request, "worker: flags must come in pairs");
    WorkerArgs args;
    args.policy_json = flags["--policy-json"];
    args.limits_json = flags["--limits-json"];
    args.select_json = flags["--select-json"];
    args.selftest = flags["--selftest"];
    args.map_file = flags.count("--map-file") != 0 && flags["--map-file"] == "1";
    auto& c = args.confine;
    if (flags.count("--parent"))
        c.expected_parent = static_cast<pid_t>(parse_number(flags["--parent"], "--parent"));
    if (flags.count("--address-space"))
        c.address_space_bytes = parse_number(flags["--address-space"], "--address-space");
    if (flags.count("--cpu-seconds"))
        c.cpu_seconds = parse_number(flags["--cpu-seconds"], "--cpu-seconds");
    if (flags.count("--output-bytes"))
        c.output_bytes = parse_number(flags["--output-bytes"], "--output-bytes");
    if (flags.count("--drop-to-uid")) {
        c.drop_privileges = true;
        c.uid = static_cast<uid_t>(parse_number(flags["--drop-to-uid"], "--drop-to-uid"));
        c.gid = static_cast<gid_t>(parse_number(
            flags.count("--drop-to-gid") ? flags["--drop-to-gid"] : "65534", "--drop-to-gid"));
    }
    // Started in a new user namespace by an unprivileged spawner.
    if (flags.count("--user-namespace")) c.user_namespace = flags["--user-namespace"] == "1";
    if (c.user_namespace && c.drop_privileges)
        throw Error(ErrorCode::invalid_request,
                    "worker: --user-namespace and --drop-to-uid exclude each other");
    if (args.policy_json.empty() && args.selftest.empty())
        throw Error(ErrorCode::invalid_request, "worker: --policy-json is required");
    return args;
}

loader::Selection parse_selection(const std::string& json_text) {
    loader::Selection select;
    if (json_text.empty()) return select;
    const auto parsed = nlohmann::json::parse(json_text, nullptr, false);
    if (!parsed.is_array()) throw Error(ErrorCode::invalid_request, "worker: bad --select-json");
    for (const auto& entry : parsed) {
        if (!entry.is_string())
            throw Error(ErrorCode::invalid_request,
                        "worker: --select-json entries must be strings");
        select.entries.push_back(entry.get<std::string>());
    }
    return select;
}

// What the client's fstat must still show when it maps the file (taken
// before confinement: the filter refuses fstat).
loader::SourceFileIdentity input_identity() {
    struct stat st {};
    if (::fstat(sandbox::kInputFd, &st) != 0)
        throw Error(ErrorCode::io_error, "cannot stat input: " + std::string(std::strerror(errno)));
    constexpr std::int64_t kNs = 1'000'000'000;
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::uint64_t>(st.st_size),
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * kNs + st.st_mtim.tv_nsec,
            static_cast<std::int64_t>(st.st_ctim.tv_sec) * kNs + st.st_ctim.tv_nsec};
}

void send_result(const ipc::ResultRecord& record) {
    (void)!::write(sandbox::kResultFd, &record, sizeof record);
}

// Everything up to and including the seccomp load; no checkpoint byte has
// been read when this returns.
void confine(const WorkerArgs& args, sandbox::SeccompFilter& filter) {
    sandbox::apply_rlimits(args.confine);
    if (args.confine.drop_privileges) {
        sandbox::enter_empty_root();
        sandbox::drop_to(args.confine.uid, args.confine.gid, args.confine.expected_parent);
    } else if (args.confine.user_namespace) {
        // The same empty root, built with the capabilities the worker holds
        // in its own user namespace, which then all go.
        sandbox::enter_empty_root();
        sandbox::drop_capabilities();
        sandbox::bind_to_parent(args.confine.expected_parent);
    }
    sandbox::set_no_new_privs();
    (void)sandbox::apply_landlock_deny_all();
    filter.load();
}

// A copy thread only speeds the copy up: where one cannot be started (a
// thread limit, say), the worker copies alone.
void start_copy_thread(std::optional<sandbox::CopyThread>& helper) {
    try {
        helper.emplace();
    } catch (const std::system_error&) {
        helper.reset();
    }
}

[[noreturn]] void convert(const WorkerArgs& args, std::optional<sandbox::CopyThread>& helper) {
    const auto policy = loader::Policy::from_json(args.policy_json);
    const auto limits =
        args.limits_json.empty() ? loader::Limits{} : loader::limits_from_json(args.limits_json);
    const auto select = parse_selection(args.select_json);
    auto filter = sandbox::SeccompFilter::worker_policy();
    // Mapping is not reading: the pages are touched only after confinement.
    const auto input_size = ipc::regular_file_size(sandbox::kInputFd, "input");
    const auto input = ipc::map_read_only(sandbox::kInputFd, input_size, "input");
    std::optional<loader::SourceFileIdentity> identity;
    if (args.map_file) identity = input_identity();
    // Started before confinement, which it shares (copy_thread.hpp); only an
    // input big enough to have a big copy or a long zip directory gets one.
    const bool big_copy = input_size >= kCopyThreadMinInput;
    if (input_size >= kDirectoryThreadMinInput) start_copy_thread(helper);
    confine(args, filter);

    const auto conversion =
        loader::Conversion::plan(input.bytes(), policy, limits, select, helper ? &*helper : nullptr,
                                 identity ? &*identity : nullptr);
    (void)sandbox::write_image(conversion, sandbox::kInputFd, input.bytes(), sandbox::kOutputFd,
                               big_copy && helper ? &*helper : nullptr);
    send_result(
        ipc::make_result(ErrorCode::ok, "", conversion.output_size(),
                         conversion.layout().tensors().size() + conversion.mapped_tensors()));
    // Done: the kernel frees the address space at once, where destroying the
    // conversion would free its object graph one allocation at a time (a
    // tenth of the job for a file of many small tensors) before the caller
    // sees the worker exit.
    ::_exit(0);
}

// Every act runs with a copy thread present, so the filter's TSYNC is in
// play; "copy_thread_open_file" makes the attempt from that thread.
int selftest(const WorkerArgs& args, std::optional<sandbox::CopyThread>& helper) {
    auto filter = sandbox::SeccompFilter::worker_policy();
    helper.emplace();
    confine(args, filter);
    std::string_view outcome;
    if (args.selftest == "copy_thread_open_file") {
        helper->start([&outcome] { outcome = sandbox::attempt_forbidden_act("open_file"); });
        helper->wait();
    } else if (args.selftest == "both_threads_trap") {
        // Test only: both threads make a forbidden call at the same moment;
        // the spawner must still get one well-formed violation record.
        std::atomic<int> arrived{0};
        const auto meet_and_trap = [&arrived, &outcome] {
            arrived.fetch_add(1);
            while (arrived.load() < 2) {
            }
            outcome = sandbox::attempt_forbidden_act("open_file");
        };
        helper->start(meet_and_trap);
        meet_and_trap();
        helper->wait();
    } else {
        outcome = sandbox::attempt_forbidden_act(args.selftest);
    }
    send_result(ipc::make_result(ErrorCode::ok, "NOT STOPPED: " + std::string(outcome)));
    return 0;
}

// mimalloc reports allocation failures on stderr (a write the seccomp filter
// refuses) and may abort; silenced, a failure reaches us as bad_alloc.
void silence_allocator() {
#ifdef PICKLEJAIL_WITH_MIMALLOC
    mi_register_output([](const char*, void*) {}, nullptr);
    // The default handler may abort(); returning lets malloc return null.
    mi_register_error([](int, void*) {}, nullptr);
    // Heap options come from the environment the spawner gives (spawner.cpp):
    // set here, they would miss the first segments.
#endif
}

}  // namespace

#ifdef PICKLEJAIL_SANITIZE
// With ASan the worker's memory cap is an RLIMIT_AS above ASan's own
// reservations (confine.cpp). Have malloc return null when the cap refuses it
// (the caller then fails cleanly, e.g. with std::bad_alloc) instead of ASan
// printing an out-of-memory report, which the seccomp filter stops at its
// write(2). ASan's operator new still reports and dies: a sanitizer build
// shows such a job as sandbox_violation (write) rather than resource_exceeded.
// A SIGSEGV (the int 0x80 act on a kernel without the 32-bit entry) is left
// to the kernel too: ASan's report of it would be stopped at the same write.
extern "C" const char* __asan_default_options() {
    return "allocator_may_return_null=1:handle_segv=0";
}
#endif

int main(int argc, char** argv) {
    int status = 1;
    // Declared outside the try so no unwinding destroys it: the process ends
    // in _exit, and a thread's own exit makes calls the filter refuses
    // (rt_sigprocmask, rseq).
    std::optional<sandbox::CopyThread> helper;
    try {
        silence_allocator();
        sandbox::install_worker_signal_handlers();
        sandbox::give_thread_signal_stack();
        const WorkerArgs args = parse_args(argc, argv);
        sandbox::bind_to_parent(args.confine.expected_parent);
        sandbox::close_extra_fds();
        if (args.selftest.empty()) convert(args, helper);
        status = selftest(args, helper);
    } catch (const Error& e) {
        ErrorCode code = e.code();
        if (code == ErrorCode::io_error &&
            e.message().find(std::strerror(ENOMEM)) != std::string::npos) {
            code = ErrorCode::resource_exceeded;
        }
        send_result(ipc::make_result(code, e.message()));
    } catch (const std::bad_alloc&) {
        send_result(ipc::make_result(ErrorCode::resource_exceeded,
                                     "worker ran out of memory (address-space limit)"));
    } catch (const std::exception& e) {
        send_result(ipc::make_result(ErrorCode::internal, e.what()));
    }
    // _exit: no atexit handlers or stdio flushing, which would make syscalls.
    ::_exit(status);
}
