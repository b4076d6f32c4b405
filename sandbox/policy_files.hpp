// Finding and reading policies/*.json. The loader never opens files, so the
// side that spawns it reads the policy, resolves "extends", and hands the
// worker one self-contained JSON text.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace picklejail::sandbox {

inline constexpr std::string_view kDefaultPolicy = "weights";

// $PICKLEJAIL_POLICY_DIR, else <exe>/../share/picklejail/policies, else the
// install prefix's share directory.
[[nodiscard]] std::filesystem::path default_policy_dir();

// `name_or_path`: a policy name ("weights") looked up in `dir`, or a path to a
// .json file. Returns policy JSON with any "extends" chain merged in.
// Throws Error(invalid_request) for unknown or invalid policies.
[[nodiscard]] std::string load_policy_text(std::string_view name_or_path,
                                           const std::filesystem::path& dir);

}  // namespace picklejail::sandbox
