// Runs a command body and turns every failure into one stderr line,
// "picklejail: CODE: message", and exit status 1.
#pragma once

#include <cstdio>
#include <exception>
#include <new>

#include "common/error.hpp"

namespace picklejail::cli {

template <typename Body>
[[nodiscard]] int report_errors(Body&& body) {
    try {
        body();
        return 0;
    } catch (const Error& e) {
        (void)std::fprintf(stderr, "picklejail: %s: %s\n", std::string(to_string(e.code())).c_str(),
                           e.what());
    } catch (const std::bad_alloc&) {
        (void)std::fprintf(stderr, "picklejail: resource_exceeded: out of memory\n");
    } catch (const std::exception& e) {
        (void)std::fprintf(stderr, "picklejail: internal: %s\n", e.what());
    }
    return 1;
}

}  // namespace picklejail::cli
