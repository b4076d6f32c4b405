// The daemon's release version, reported by `ping`.
#pragma once

namespace picklejail::daemon {
inline constexpr const char* kVersion = PICKLEJAIL_VERSION;
}
