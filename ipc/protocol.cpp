#include "ipc/protocol.hpp"

#include <algorithm>
#include <cctype>

namespace picklejail::ipc {
namespace {

constexpr std::size_t kMaxSelectEntries = 4096;
constexpr std::size_t kMaxPolicyName = 64;

[[noreturn]] void bad(const std::string& message) {
    throw Error(ErrorCode::invalid_request, message);
}

Op parse_op(const nlohmann::json& message) {
    const auto it = message.find("op");
    if (it == message.end() || !it->is_string()) bad("request has no \"op\" string");
    const auto& name = it->get_ref<const std::string&>();
    for (const Op op : {Op::ping, Op::load, Op::inspect, Op::release, Op::stats}) {
        if (to_string(op) == name) return op;
    }
    bad("unknown op \"" + name.substr(0, 64) + "\"");
}

const nlohmann::json* field(const nlohmann::json& message, const char* name) {
    const auto it = message.find(name);
    return it == message.end() || it->is_null() ? nullptr : &*it;
}

std::string string_field(const nlohmann::json& message, const char* name) {
    const auto* value = field(message, name);
    if (value == nullptr) return {};
    if (!value->is_string()) bad(std::string("\"") + name + "\" must be a string");
    return value->get<std::string>();
}

bool valid_policy_name(std::string_view name) {
    return !name.empty() && name.size() <= kMaxPolicyName &&
           std::all_of(name.begin(), name.end(), [](char c) {
               return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-';
           });
}

void parse_source(const nlohmann::json& message, Request& request) {
    const auto* fd = field(message, "fd");
    if (fd != nullptr) {
        if (!fd->is_boolean()) bad("\"fd\" must be true or absent");
        request.fd = fd->get<bool>();
    }
    if (field(message, "path") != nullptr) request.path = string_field(message, "path");
    if (request.fd == request.path.has_value()) bad("give exactly one of \"path\" and \"fd\":true");
    if (request.path) {
        if (request.path->empty() || request.path->front() != '/') bad("\"path\" must be absolute");
        if (request.path->find('\0') != std::string::npos) bad("\"path\" contains a NUL byte");
    }
}

void parse_load_fields(const nlohmann::json& message, Request& request) {
    parse_source(message, request);
    request.policy = string_field(message, "policy");
    if (!request.policy.empty() && !valid_policy_name(request.policy))
        bad("\"policy\" must be a policy name ([A-Za-z0-9_-], at most 64 characters)");
    if (const auto* select = field(message, "select")) {
        if (!select->is_array()) bad("\"select\" must be an array of strings");
        if (select->size() > kMaxSelectEntries) bad("\"select\" has too many entries");
        for (const auto& entry : *select) {
            if (!entry.is_string() || entry.get_ref<const std::string&>().empty())
                bad("\"select\" entries must be non-empty strings");
            request.select.push_back(entry.get<std::string>());
        }
    }
    const std::string transport = string_field(message, "transport");
    if (transport.empty() || transport == "memfd") {
        request.transport = Transport::memfd;
    } else if (transport == "shm") {
        request.transport = Transport::shm;
    } else if (transport == "inline") {
        request.transport = Transport::inline_bytes;
    } else {
        bad("\"transport\" must be memfd, shm or inline");
    }
    if (const auto* map = field(message, "mmap")) {
        if (!map->is_boolean()) bad("\"mmap\" must be true, false or absent");
        request.map_file = map->get<bool>();
        // The client maps the very file description it sent (docs/protocol.md).
        if (request.map_file && !request.fd) bad("\"mmap\":true needs \"fd\":true");
    }
}

}  // namespace

std::string_view to_string(Op op) noexcept {
    switch (op) {
        case Op::ping:
            return "ping";
        case Op::load:
            return "load";
        case Op::inspect:
            return "inspect";
        case Op::release:
            return "release";
        case Op::stats:
            return "stats";
    }
    return "ping";
}

std::string_view to_string(Transport transport) noexcept {
    switch (transport) {
        case Transport::memfd:
            return "memfd";
        case Transport::shm:
            return "shm";
        case Transport::inline_bytes:
            return "inline";
    }
    return "memfd";
}

Request parse_request(std::string_view line) {
    if (line.size() >= kMaxLineBytes) bad("request line too long");
    const auto message = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (message.is_discarded()) bad("request is not valid JSON");
    if (!message.is_object()) bad("request must be a JSON object");
    Request request;
    request.op = parse_op(message);
    if (const auto it = message.find("id"); it != message.end()) request.id = *it;
    switch (request.op) {
        case Op::load:
        case Op::inspect:
            parse_load_fields(message, request);
            if (request.op == Op::inspect) request.map_file = false;  // lists every tensor anyway
            break;
        case Op::release:
            request.shm_name = string_field(message, "shm_name");
            if (request.shm_name.empty()) bad("release needs \"shm_name\"");
            break;
        case Op::ping:
        case Op::stats:
            break;
    }
    return request;
}

nlohmann::json error_reply(ErrorCode code, std::string_view message, const nlohmann::json& id) {
    nlohmann::json error{{"code", to_string(code)}, {"message", message}};
    if (const auto global = named_global(message); !global.empty()) error["global"] = global;
    nlohmann::json reply{{"ok", false}, {"error", std::move(error)}};
    if (!id.is_null()) reply["id"] = id;
    return reply;
}

nlohmann::json ok_reply(const nlohmann::json& fields, const nlohmann::json& id) {
    nlohmann::json reply{{"ok", true}};
    if (fields.is_object()) reply.update(fields);
    if (!id.is_null()) reply["id"] = id;
    return reply;
}

std::string named_global(std::string_view message) {
    constexpr std::string_view marker = "global ";
    for (std::size_t at = message.find(marker); at != std::string_view::npos;
         at = message.find(marker, at + 1)) {
        const std::size_t begin = at + marker.size();
        std::size_t end = begin;
        while (end < message.size() && (std::isalnum(static_cast<unsigned char>(message[end])) ||
                                        message[end] == '_' || message[end] == '.')) {
            ++end;
        }
        if (end > begin && message.substr(begin, end - begin).find('.') != std::string_view::npos)
            return std::string(message.substr(begin, end - begin));
    }
    return {};
}

std::string to_line(const nlohmann::json& message) {
    return message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace picklejail::ipc
