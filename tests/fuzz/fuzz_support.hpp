// Shared by the libFuzzer drivers: the real policy files, limits small enough
// that one input stays cheap, and a check that turns "our writer produced an
// image our own checker refuses" into a crash.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>
#include <string>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/limits.hpp"
#include "loader/policy.hpp"

namespace picklejail::fuzz {

inline std::string read_policy_file(const char* name) {
    const std::string path = std::string(PICKLEJAIL_SOURCE_DIR) + "/policies/" + name;
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "fuzz: cannot read %s\n", path.c_str());
        std::abort();
    }
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

inline const loader::Policy& weights_policy() {
    static const loader::Policy policy =
        loader::Policy::from_json(read_policy_file("weights.json"));
    return policy;
}

// "checkpoint" extends "weights": every handler a file can reach.
inline const loader::Policy& checkpoint_policy() {
    static const loader::Policy policy =
        loader::Policy::from_json(read_policy_file("checkpoint.json"), &weights_policy());
    return policy;
}

inline const loader::Policy& inert_policy() {
    static const loader::Policy policy =
        loader::Policy::from_json(read_policy_file("inert.json"), &checkpoint_policy());
    return policy;
}

// The defaults scaled down so that any one input finishes in milliseconds and
// a few hundred MiB; the nesting cap stays at its default, since recursion
// depth is what a smaller cap would hide.
inline loader::Limits fuzz_limits() {
    loader::Limits limits;
    limits.max_pickle_bytes = 1 << 20;
    limits.max_memo_entries = 100'000;
    limits.max_stack_depth = 100'000;
    limits.max_string_bytes = 1 << 20;
    limits.max_objects = 50'000;
    limits.max_tensors = 10'000;
    limits.max_header_bytes = 4 << 20;
    limits.max_output_bytes = 8 << 20;
    limits.max_zip_entries = 10'000;
    limits.max_inflate_ratio = 100;
    return limits;
}

// An image picklejail wrote must pass picklejail's own checker.
// The image passes the checker, and the JSON picklejail keeps in its metadata
// (the object description above all, written as text by the flattener) parses.
inline void require_valid_image(std::span<const std::byte> image, const char* what) {
    ipc::SafetensorsIndex index;
    try {
        index = ipc::check_safetensors(image);
    } catch (const Error& e) {
        std::fprintf(stderr, "fuzz: %s produced an image the checker refuses: %s\n", what,
                     e.what());
        std::abort();
    }
    for (const char* key : {"picklejail.object", "picklejail.globals", "picklejail.complex128"}) {
        const auto it = index.metadata.find(key);
        if (it != index.metadata.end() && !nlohmann::json::accept(it->second)) {
            std::fprintf(stderr, "fuzz: %s wrote %s that is not JSON\n", what, key);
            std::abort();
        }
    }
}

// A refusal is fine; an internal error (a check picklejail believes cannot
// fail, such as the memo scan missing a read the VM then makes) is a finding.
inline void require_not_internal(const Error& error, const char* what) {
    if (error.code() == ErrorCode::internal) {
        std::fprintf(stderr, "fuzz: %s reported an internal error: %s\n", what, error.what());
        std::abort();
    }
}

}  // namespace picklejail::fuzz
