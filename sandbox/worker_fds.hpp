// The worker's fixed descriptor numbers, so the seccomp filter can pin them.
#pragma once

namespace picklejail::sandbox {

inline constexpr int kInputFd = 3;   // the checkpoint, read-only
inline constexpr int kOutputFd = 4;  // the safetensors image (memfd or output file)
inline constexpr int kResultFd = 5;  // the result record pipe
inline constexpr int kFirstUnusedFd = 6;

}  // namespace picklejail::sandbox
