// Named shm images (daemon/shm_registry.hpp, ipc/shared_memory.hpp): quota
// with reservations, owners, renames that cannot keep the bytes, and the
// start-up sweep of a killed run's leftovers.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <filesystem>
#include <random>

#include "common/error.hpp"
#include "daemon/shm_registry.hpp"

using namespace picklejail;
using daemon::ShmRegistry;

namespace {

std::string unique_prefix() {
    std::random_device random;
    return "pjunit" + std::to_string(::getpid()) + "_" + std::to_string(random() % 100000);
}

ipc::UniqueFd source_of(std::size_t size, char fill) {
    ipc::UniqueFd fd(::memfd_create("src", MFD_CLOEXEC));
    std::string bytes(size, fill);
    REQUIRE(::write(fd.get(), bytes.data(), bytes.size()) == static_cast<ssize_t>(size));
    return fd;
}

std::shared_ptr<ipc::SharedMemoryObject> publish(ShmRegistry& registry, std::size_t size) {
    auto reservation = registry.reserve(::getuid(), size);
    const auto source = source_of(size, 'x');
    auto object = std::make_shared<ipc::SharedMemoryObject>(reservation.name(), source.get(), size,
                                                            ::getuid(), ::getgid());
    registry.adopt(std::move(reservation), ::getuid(), object);
    return object;
}

std::uint64_t file_size(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return static_cast<std::uint64_t>(st.st_size);
}

}  // namespace

TEST_CASE("shm registry: reservations count against the quota until released") {
    boost::asio::io_context io;
    ShmRegistry registry(io, std::chrono::seconds(60), 1000, unique_prefix());
    auto held = registry.reserve(::getuid(), 600);
    CHECK(registry.bytes_held(::getuid()) == 600);
    CHECK_THROWS_AS(registry.reserve(::getuid(), 600), Error);
    { const ShmRegistry::Reservation dropped = std::move(held); }
    CHECK(registry.bytes_held(::getuid()) == 0);
    auto object = publish(registry, 700);
    CHECK(registry.bytes_held(::getuid()) == 700);
    CHECK(file_size(object->path()) == 700);
    try {
        registry.check_quota(::getuid(), 400);
        FAIL("over quota accepted");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::busy);
    }
    registry.release(::getuid(), object->name());
    CHECK(registry.bytes_held(::getuid()) == 0);
}

TEST_CASE("shm registry: only the owner releases, and unknown names are refused") {
    boost::asio::io_context io;
    ShmRegistry registry(io, std::chrono::seconds(60), 1 << 20, unique_prefix());
    auto object = publish(registry, 64);
    const auto name = object->name();
    object.reset();  // the registry holds it now
    try {
        registry.release(::getuid() + 1, name);
        FAIL("released by another uid");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::denied);
    }
    CHECK(ipc::shared_memory_exists(name));
    try {
        registry.release(::getuid(), name + "x");
        FAIL("unknown name released");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::invalid_request);
    }
    registry.release(::getuid(), name);
    CHECK_FALSE(ipc::shared_memory_exists(name));
}

TEST_CASE("shm registry: an object renamed by its owner is emptied when released") {
    boost::asio::io_context io;
    ShmRegistry registry(io, std::chrono::seconds(60), 1 << 20, unique_prefix());
    auto object = publish(registry, 4096);
    const auto name = object->name();
    object.reset();
    const std::string hidden = "/dev/shm/" + name + "-hidden";
    REQUIRE(::rename(("/dev/shm/" + name).c_str(), hidden.c_str()) == 0);
    registry.release(::getuid(), name);
    CHECK(file_size(hidden) == 0);  // the bytes went with the quota
    std::filesystem::remove(hidden);
}

TEST_CASE("shm registry: the start-up sweep removes this prefix's leftovers only") {
    boost::asio::io_context io;
    const auto prefix = unique_prefix();
    ShmRegistry registry(io, std::chrono::seconds(60), 1 << 20, prefix);
    const std::string leftover = "/dev/shm/" + prefix + "-1000-0123456789abcdef01234567";
    const std::string lookalike = "/dev/shm/" + prefix + "-1000-not-ours";
    const std::string other = "/dev/shm/" + prefix + "x-1000-0123456789abcdef01234567";
    for (const auto& path : {leftover, lookalike, other}) {
        const ipc::UniqueFd fd(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
        REQUIRE(fd);
    }
    CHECK(registry.sweep_leftovers() == 1);
    CHECK_FALSE(std::filesystem::exists(leftover));
    CHECK(std::filesystem::exists(lookalike));
    CHECK(std::filesystem::exists(other));
    std::filesystem::remove(lookalike);
    std::filesystem::remove(other);
}
