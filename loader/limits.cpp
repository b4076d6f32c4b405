#include "loader/limits.hpp"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/error.hpp"

namespace picklejail::loader {

Limits limits_from_json(std::string_view json_text, Limits base) {
    const std::array<std::pair<std::string_view, std::uint64_t Limits::*>, 17> fields{{
        {"max_input_bytes", &Limits::max_input_bytes},
        {"max_pickle_bytes", &Limits::max_pickle_bytes},
        {"max_memo_entries", &Limits::max_memo_entries},
        {"max_memo_index", &Limits::max_memo_index},
        {"max_stack_depth", &Limits::max_stack_depth},
        {"max_mark_depth", &Limits::max_mark_depth},
        {"max_nesting_depth", &Limits::max_nesting_depth},
        {"max_string_bytes", &Limits::max_string_bytes},
        {"max_int_bytes", &Limits::max_int_bytes},
        {"max_objects", &Limits::max_objects},
        {"max_tensors", &Limits::max_tensors},
        {"max_ndim", &Limits::max_ndim},
        {"max_header_bytes", &Limits::max_header_bytes},
        {"max_output_bytes", &Limits::max_output_bytes},
        {"max_zip_entries", &Limits::max_zip_entries},
        {"max_inflate_ratio", &Limits::max_inflate_ratio},
        {"max_output_ratio", &Limits::max_output_ratio},
    }};
    const auto doc = nlohmann::json::parse(json_text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
        throw Error(ErrorCode::invalid_request, "limits: not a JSON object");
    for (const auto& [name, value] : doc.items()) {
        // A named copy: clang before 16 cannot capture a structured binding.
        const std::string& key = name;
        const auto it = std::find_if(fields.begin(), fields.end(),
                                     [&key](const auto& f) { return f.first == key; });
        if (it == fields.end())
            throw Error(ErrorCode::invalid_request, "limits: unknown limit \"" + name + "\"");
        if (!value.is_number_unsigned())
            throw Error(ErrorCode::invalid_request,
                        "limits: \"" + name + "\" must be a non-negative integer");
        base.*(it->second) = value.get<std::uint64_t>();
    }
    return base;
}

}  // namespace picklejail::loader
