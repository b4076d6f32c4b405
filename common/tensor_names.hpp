// The longest tensor name any picklejail image may carry: the loader refuses
// to write a longer one (too_large) and every reader's checker refuses to
// read one, so the two can never disagree about the same image.
#pragma once

#include <cstddef>

namespace picklejail {

inline constexpr std::size_t kMaxTensorNameBytes = std::size_t{64} * 1024;

}  // namespace picklejail
