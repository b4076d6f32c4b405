// The container formats: each reads its pickles with the VM and binds
// storage bytes in the StorageTable.
#pragma once

#include <span>

#include "loader/pickle_vm.hpp"

namespace picklejail::loader {

struct ReadResult {
    ValuePtr root;
    PickleInfo pickle;  // of the main pickle
};

// torch.save zip archives (1.6+). TorchScript archives are refused.
[[nodiscard]] ReadResult read_zip_checkpoint(std::span<const std::byte> input, CallContext& ctx);

// The legacy magic-number stream (_use_new_zipfile_serialization=False), whose
// first pickle has already been run and yielded the magic number.
[[nodiscard]] ReadResult read_legacy_checkpoint(std::span<const std::byte> input,
                                                std::size_t after_magic, CallContext& ctx);

[[nodiscard]] bool is_legacy_magic(const Value& first_pickle_result) noexcept;
[[nodiscard]] bool looks_like_tar(std::span<const std::byte> input) noexcept;

}  // namespace picklejail::loader
