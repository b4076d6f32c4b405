// A one-line progress bar on stderr, drawn only when stderr is a terminal.
#pragma once

#include <cstdint>
#include <string>

namespace picklejail::cli {

class ProgressBar {
  public:
    ProgressBar(std::uint64_t total_bytes, std::size_t total_items);
    ProgressBar(const ProgressBar&) = delete;
    ProgressBar& operator=(const ProgressBar&) = delete;
    ~ProgressBar();

    // Draws "item n of total" as started, then advances by `bytes` when done.
    void start_item(const std::string& label);
    void finish_item(std::uint64_t bytes);

  private:
    void draw() const;
    bool enabled_;
    std::uint64_t total_bytes_;
    std::uint64_t done_bytes_ = 0;
    std::size_t total_items_;
    std::size_t done_items_ = 0;
    std::string label_;
};

}  // namespace picklejail::cli
