// Helpers shared by the unit tests: the repository's policies, files read
// whole, and the smallest pieces of hand-assembled pickle bytes.
#pragma once

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "loader/policy.hpp"
#include "sandbox/policy_files.hpp"

namespace picklejail::test {

// policies/<name>.json from the source tree, parsed once.
inline const loader::Policy& policy_named(const std::string& name) {
    static std::map<std::string, loader::Policy> cache;
    auto it = cache.find(name);
    if (it == cache.end()) {
        const std::string text =
            sandbox::load_policy_text(name, std::string(PICKLEJAIL_SOURCE_DIR) + "/policies");
        it = cache.emplace(name, loader::Policy::from_json(text)).first;
    }
    return it->second;
}

// A whole file's bytes (a fixture).
inline std::vector<std::byte> read_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    const std::vector<char> chars((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

// One opcode byte.
inline std::string op(unsigned value) {
    return std::string(1, static_cast<char>(value));
}

// `value` as `width` little-endian bytes.
inline std::string le(std::uint64_t value, int width) {
    std::string out;
    for (int i = 0; i < width; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
    return out;
}

}  // namespace picklejail::test
