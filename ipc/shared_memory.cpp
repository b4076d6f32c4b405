#include "ipc/shared_memory.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>

#include "common/error.hpp"

namespace picklejail::ipc {
namespace bip = boost::interprocess;

SharedMemoryObject::SharedMemoryObject(std::string name, std::span<const std::byte> bytes,
                                       uid_t uid, gid_t gid)
    : name_(std::move(name)), size_(bytes.size()) {
    try {
        bip::permissions owner_only;
        owner_only.set_permissions(0600);
        bip::shared_memory_object object(bip::create_only, name_.c_str(), bip::read_write,
                                         owner_only);
        const int fd = object.get_mapping_handle().handle;
        // Created by us (root); hand it to the caller before it holds data.
        if (::fchown(fd, uid, gid) != 0 && !(uid == ::geteuid() && gid == ::getegid())) {
            const int saved = errno;
            bip::shared_memory_object::remove(name_.c_str());
            throw Error(ErrorCode::denied,
                        std::string("cannot give the shared memory to the caller: ") +
                            std::strerror(saved));
        }
        object.truncate(static_cast<bip::offset_t>(bytes.size()));
        if (!bytes.empty()) {
            bip::mapped_region region(object, bip::read_write, 0, bytes.size());
            std::memcpy(region.get_address(), bytes.data(), bytes.size());
        }
    } catch (const bip::interprocess_exception& e) {
        bip::shared_memory_object::remove(name_.c_str());
        throw Error(ErrorCode::io_error, "cannot create shared memory " + name_ + ": " + e.what());
    }
}

SharedMemoryObject::~SharedMemoryObject() {
    bip::shared_memory_object::remove(name_.c_str());
}

bool shared_memory_exists(const std::string& name) {
    struct stat st {};
    return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

}  // namespace picklejail::ipc
