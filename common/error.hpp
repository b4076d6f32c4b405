// One set of error codes shared by the loader, the worker's result record, the
// socket protocol and every client, so a failure keeps its meaning end to end.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace picklejail {

// Values are part of the worker's binary result record: append, never renumber.
enum class ErrorCode : std::uint8_t {
    ok = 0,
    forbidden_global = 1,   // the pickle names a global the policy does not allow
    malformed = 2,          // the bytes break the format's rules
    unsupported = 3,        // a valid format or object kind picklejail does not load
    too_large = 4,          // a configured limit was exceeded
    timeout = 5,            // the worker ran past its deadline
    sandbox_violation = 6,  // the worker attempted a forbidden system call
    worker_crashed = 7,     // the worker died from another signal or bad result
    resource_exceeded = 8,  // the worker hit an rlimit (memory, CPU, output size)
    busy = 9,               // the daemon refused to queue more work
    denied = 10,            // the caller may not read the file or use the policy
    io_error = 11,          // reading input or writing output failed
    invalid_request = 12,   // a protocol message or command line made no sense
    internal = 13,          // a bug in picklejail itself
};

[[nodiscard]] constexpr std::string_view to_string(ErrorCode code) noexcept {
    switch (code) {
        case ErrorCode::ok:
            return "ok";
        case ErrorCode::forbidden_global:
            return "forbidden_global";
        case ErrorCode::malformed:
            return "malformed";
        case ErrorCode::unsupported:
            return "unsupported";
        case ErrorCode::too_large:
            return "too_large";
        case ErrorCode::timeout:
            return "timeout";
        case ErrorCode::sandbox_violation:
            return "sandbox_violation";
        case ErrorCode::worker_crashed:
            return "worker_crashed";
        case ErrorCode::resource_exceeded:
            return "resource_exceeded";
        case ErrorCode::busy:
            return "busy";
        case ErrorCode::denied:
            return "denied";
        case ErrorCode::io_error:
            return "io_error";
        case ErrorCode::invalid_request:
            return "invalid_request";
        case ErrorCode::internal:
            return "internal";
    }
    return "internal";
}

// Parses the wire name back; unknown names map to `internal`.
[[nodiscard]] inline ErrorCode error_code_from_string(std::string_view name) noexcept {
    for (std::uint8_t i = 0; i <= static_cast<std::uint8_t>(ErrorCode::internal); ++i) {
        const auto code = static_cast<ErrorCode>(i);
        if (to_string(code) == name) return code;
    }
    return ErrorCode::internal;
}

// Every expected failure is thrown as an Error carrying its code; `what()`
// is the user-facing message (never containing attacker-controlled objects'
// representations, only names and numbers we validated).
class Error : public std::runtime_error {
  public:
    Error(ErrorCode code, const std::string& message)
        : std::runtime_error(message), code_(code), message_(message) {}
    [[nodiscard]] ErrorCode code() const noexcept { return code_; }
    // The whole message; what() is a C string and ends at the first NUL that
    // a name quoted from the file may hold.
    [[nodiscard]] const std::string& message() const noexcept { return message_; }

  private:
    ErrorCode code_;
    std::string message_;
};

}  // namespace picklejail
