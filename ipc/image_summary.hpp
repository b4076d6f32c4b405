// What `picklejail inspect` and the daemon's `inspect` op report about a
// checked image: format, protocol, globals, tensors and aliases. Built only
// from the validated header, never from the checkpoint itself.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "ipc/safetensors_check.hpp"

namespace picklejail::ipc {

[[nodiscard]] nlohmann::ordered_json image_summary(const SafetensorsIndex& index,
                                                   const std::string& policy);

}  // namespace picklejail::ipc
