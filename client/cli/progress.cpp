#include "client/cli/progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace picklejail::cli {
namespace {

constexpr int kBarWidth = 30;

double gib(std::uint64_t bytes) {
    return static_cast<double>(bytes) / (1ULL << 30);
}

}  // namespace

ProgressBar::ProgressBar(std::uint64_t total_bytes, std::size_t total_items)
    : enabled_(::isatty(STDERR_FILENO) == 1),
      total_bytes_(total_bytes),
      total_items_(total_items) {}

ProgressBar::~ProgressBar() {
    if (enabled_) (void)std::fputc('\n', stderr);
}

void ProgressBar::start_item(const std::string& label) {
    label_ = label;
    draw();
}

void ProgressBar::finish_item(std::uint64_t bytes) {
    done_bytes_ += bytes;
    ++done_items_;
    draw();
}

void ProgressBar::draw() const {
    if (!enabled_) return;
    const double fraction =
        total_bytes_ == 0 ? 1.0
                          : static_cast<double>(done_bytes_) / static_cast<double>(total_bytes_);
    const int filled = static_cast<int>(fraction * kBarWidth);
    char bar[kBarWidth + 1];
    for (int i = 0; i < kBarWidth; ++i) bar[i] = i < filled ? '#' : '.';
    bar[kBarWidth] = '\0';
    (void)std::fprintf(stderr, "\r\033[K[%s] %zu/%zu  %.2f/%.2f GiB  %s", bar, done_items_,
                       total_items_, gib(done_bytes_), gib(total_bytes_), label_.c_str());
    (void)std::fflush(stderr);
}

}  // namespace picklejail::cli
