// The C++ client library against a real picklejaild process: load by path
// and by fd, tensor views over the sealed mapping, aliases, typed errors.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "ipc/unique_fd.hpp"
#include "picklejail/client.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using picklejail::Client;
using picklejail::Error;
using picklejail::ErrorCode;

const fs::path kFixtures = fs::path(PICKLEJAIL_SOURCE_DIR) / "tests" / "fixtures";

// picklejaild in the foreground on a private socket, stopped on scope exit.
class DaemonProcess {
  public:
    DaemonProcess() {
        char pattern[] = "/tmp/picklejail-client-test.XXXXXX";
        REQUIRE(::mkdtemp(pattern) != nullptr);
        dir_ = pattern;
        socket_ = dir_ / "d.sock";
        const std::string daemon = std::string(PICKLEJAIL_BINARY_DIR) + "/bin/picklejaild";
        const std::string policies =
            std::string(PICKLEJAIL_BINARY_DIR) + "/share/picklejail/policies";
        std::vector<std::string> args{daemon, "--socket", socket_.string(), "--policy-dir",
                                      policies};
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
        REQUIRE(::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) == 0);
        posix_spawn_file_actions_destroy(&actions);
        for (int i = 0; i < 500 && !fs::exists(socket_); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        REQUIRE(fs::exists(socket_));
    }
    DaemonProcess(const DaemonProcess&) = delete;
    DaemonProcess& operator=(const DaemonProcess&) = delete;
    ~DaemonProcess() {
        ::kill(pid_, SIGTERM);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    [[nodiscard]] const fs::path& socket() const { return socket_; }

  private:
    fs::path dir_;
    fs::path socket_;
    pid_t pid_ = 0;
};

std::vector<float> as_floats(std::span<const std::byte> bytes) {
    std::vector<float> out(bytes.size() / sizeof(float));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
    return out;
}

}  // namespace

TEST_CASE("the C++ client loads through the daemon") {
    DaemonProcess daemon;
    Client client(daemon.socket());
    CHECK_FALSE(client.ping().empty());

    const auto ckpt = kFixtures / "torch-2.11" / "cnn_state_dict.pt";
    const auto by_fd = [&] {
        const picklejail::ipc::UniqueFd fd(::open(ckpt.c_str(), O_RDONLY | O_CLOEXEC));
        return client.load_fd(fd.get());
    }();
    REQUIRE(by_fd.tensors().size() == 9);
    const auto* weight = by_fd.find("0.weight");
    REQUIRE(weight != nullptr);
    CHECK(weight->dtype == "F32");
    CHECK(weight->shape == std::vector<std::uint64_t>{8, 3, 3, 3});
    CHECK(weight->bytes.size() == 8 * 3 * 3 * 3 * 4);
    CHECK(by_fd.reply()["format"] == "zip");
    CHECK(by_fd.metadata().at("format") == "pt");

    // Loading by path (as the caller, here this test's uid) gives the same bytes.
    const auto by_path = client.load(ckpt);
    CHECK(as_floats(by_path.find("0.weight")->bytes) == as_floats(weight->bytes));
    CHECK(std::equal(by_path.bytes().begin(), by_path.bytes().end(), by_fd.bytes().begin(),
                     by_fd.bytes().end()));

    const auto selected = client.load(ckpt, {"weights", {"1.running_mean"}});
    CHECK(selected.tensors().size() == 1);
    CHECK(client.stats()["requests"].get<int>() >= 4);
}

TEST_CASE("the C++ client follows aliases of tied weights") {
    DaemonProcess daemon;
    Client client(daemon.socket());
    const auto image = client.load(kFixtures / "torch-2.11" / "views.pt", {"checkpoint", {}});
    for (const auto& [key, stored] : image.metadata()) {
        if (key.starts_with("picklejail.") || key == "format") continue;
        REQUIRE(image.find(key) != nullptr);
        CHECK(image.find(key)->name == stored);
    }
}

TEST_CASE("the C++ client's mapped load views the checkpoint file itself") {
    DaemonProcess daemon;
    Client client(daemon.socket());
    const auto ckpt = kFixtures / "mapped" / "mixed_large.pt";
    const auto copied = client.load(ckpt, {"checkpoint", {}});
    const auto mapped = client.load(ckpt, {"checkpoint", {}, true});
    REQUIRE_FALSE(mapped.file_bytes().empty());
    CHECK(mapped.bytes().size() < copied.bytes().size());  // layout only for the mapped ones
    REQUIRE(mapped.tensors().size() == copied.tensors().size());
    std::size_t in_file = 0;
    const auto file = mapped.file_bytes();
    for (const auto& t : copied.tensors()) {
        INFO(t.name);
        const auto* m = mapped.find(t.name);
        REQUIRE(m != nullptr);
        CHECK(m->dtype == t.dtype);
        CHECK(m->shape == t.shape);
        CHECK(std::equal(m->bytes.begin(), m->bytes.end(), t.bytes.begin(), t.bytes.end()));
        if (m->mapped_from_file) {
            ++in_file;
            CHECK(m->bytes.data() >= file.data());
            CHECK(m->bytes.data() + m->bytes.size() <= file.data() + file.size());
        }
    }
    CHECK(in_file > 0);
    for (const auto& [key, stored] : mapped.metadata()) {  // aliases reach mapped tensors too
        if (key.starts_with("picklejail.") || key == "format") continue;
        CHECK(mapped.find(key) != nullptr);
    }
}

TEST_CASE("the C++ client hands records and references back as data (inert)") {
    DaemonProcess daemon;
    Client client(daemon.socket());
    const auto model = client.load(kFixtures / "realworld" / "yolov5_model.pt", {"inert", {}});
    const auto names = model.object_names();
    CHECK(names.records.contains("models.yolo.DetectionModel"));
    CHECK(names.records.contains("torch.nn.modules.conv.Conv2d"));
    const auto object = model.object();
    REQUIRE(object.contains("dict"));
    nlohmann::json record;  // {"epoch": ..., "model": DetectionModel record, ...}
    for (const auto& entry : object["dict"]) {
        if (entry.at(0) == "model") record = entry.at(1);
    }
    REQUIRE(record.is_object());
    if (record.contains("shared")) record = record["value"];
    CHECK(record["object"] == "models.yolo.DetectionModel");
    // The module's tensors are named as state_dict() names them, under its path.
    CHECK(model.find("model.model.0.conv.weight") != nullptr);

    const auto sd = client.load(kFixtures / "realworld" / "sd_v1.ckpt", {"inert", {}});
    CHECK(sd.object_names().references ==
          std::set<std::string>{"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"});
    // The strict default refuses the same file by the global's name.
    try {
        (void)client.load(kFixtures / "realworld" / "sd_v1.ckpt");
        FAIL("loaded under weights");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::forbidden_global);
        CHECK(std::string(e.what()).find("ModelCheckpoint") != std::string::npos);
    }
}

TEST_CASE("the C++ client throws the protocol's error codes") {
    DaemonProcess daemon;
    Client client(daemon.socket());
    const auto expect_code = [&](auto&& call, ErrorCode code) {
        try {
            call();
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == code);
        }
    };
    expect_code([&] { (void)client.load(kFixtures / "torch-2.11" / "torchscript.pt"); },
                ErrorCode::unsupported);
    expect_code([&] { (void)client.load(kFixtures / "torch-2.11" / "argparse_namespace.pt"); },
                ErrorCode::forbidden_global);
    expect_code([&] { (void)client.load("/nonexistent/model.pt"); }, ErrorCode::io_error);
    expect_code(
        [&] {
            (void)client.load(kFixtures / "torch-2.11" / "params.pt", {"no_such", {}});
        },
        ErrorCode::invalid_request);
    // The connection survives errors.
    CHECK_FALSE(client.ping().empty());
    expect_code([] { Client nowhere("/nonexistent/picklejail.sock"); }, ErrorCode::io_error);
}
