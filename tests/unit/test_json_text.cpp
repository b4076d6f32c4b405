// The JSON text writer must produce exactly what nlohmann::json's dump()
// does, which the description and header used before; clients parse both.
#include <catch2/catch.hpp>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"
#include "loader/json_text.hpp"

using picklejail::loader::append_json_double;
using picklejail::loader::append_json_integer;
using picklejail::loader::append_json_string;

namespace {

std::string written(std::string_view text) {
    std::string out = "prefix:";
    append_json_string(out, text);
    return out.substr(7);
}

}  // namespace

TEST_CASE("json_text: strings are escaped as nlohmann escapes them") {
    const std::string cases[] = {
        "",
        "layers.0.weight",
        "a \"quoted\" name",
        "back\\slash and \\\" both",
        "tab\tnewline\ncarriage\rbell\x07 del\x7f",
        std::string("nul\0inside", 10),
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
        "{\"odict\":[[\"k\",{\"tensor\":\"k\",\"id\":0,\"dtype\":\"float32\"}]]}",
    };
    for (const auto& text : cases) {
        INFO(text);
        CHECK(written(text) == nlohmann::json(text).dump());
        CHECK(nlohmann::json::parse(written(text)).get<std::string>() == text);
    }
}

TEST_CASE("json_text: invalid UTF-8 is refused as malformed, not copied") {
    for (const std::string bad : {"\xff", "a\xc3", "\xed\xa0\x80", "\xc0\xaf"}) {
        std::string out;
        try {
            append_json_string(out, bad);
            FAIL("accepted");
        } catch (const picklejail::Error& e) {
            CHECK(e.code() == picklejail::ErrorCode::malformed);
        }
        CHECK(out.empty());
    }
}

TEST_CASE("json_text: numbers") {
    std::string out;
    append_json_integer(out, std::numeric_limits<std::int64_t>::min());
    out.push_back(',');
    append_json_integer(out, std::numeric_limits<std::uint64_t>::max());
    out.push_back(',');
    append_json_double(out, 0.1);
    out.push_back(',');
    append_json_double(out, 1.0);
    CHECK(out == "-9223372036854775808,18446744073709551615,0.1,1.0");
}
