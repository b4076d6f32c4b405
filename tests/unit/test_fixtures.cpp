// Real checkpoints written by PyTorch 1.13 and 2.11 (tests/fixtures): every
// expectation comes from the folder's manifest.json (tests/fixtures/README.md).
// Every `load` file converts to exactly the manifest's set of tensor names
// (stored tensors plus aliases), each with its dtype, shape and SHA-256, and
// the output passes the independent safetensors checker; every `reject` file
// fails with the code its stated reason (`why`) calls for. The numbers of
// files loaded and refused must equal the manifest's, and neither may be zero,
// so an empty or truncated manifest fails instead of passing vacuously.
#include <openssl/evp.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>

#include "common/error.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/checkpoint_loader.hpp"
#include "sandbox/policy_files.hpp"
#include "test_support.hpp"

namespace {

using picklejail::Error;
using picklejail::ErrorCode;
using namespace picklejail;

const std::string kFixtures = std::string(PICKLEJAIL_SOURCE_DIR) + "/tests/fixtures/";

std::string sha256_hex(std::span<const std::byte> bytes) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    REQUIRE(EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) == 1);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out.push_back(kHex[digest[i] >> 4]);
        out.push_back(kHex[digest[i] & 15]);
    }
    return out;
}

using test::policy_named;
using test::read_bytes;

nlohmann::json read_manifest(const std::string& version) {
    const auto bytes = read_bytes(kFixtures + version + "/manifest.json");
    auto manifest = nlohmann::json::parse(
        std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    REQUIRE(manifest.is_array());
    return manifest;
}

// The manifest states why a file must be refused in words (`why`); these are
// the reasons it uses, and the code each one calls for. A reason not listed
// here fails the test rather than falling back to some default code.
struct RefusalReason {
    std::string_view phrase;
    ErrorCode code;
    // A wider policy allows what `weights` refuses: `checkpoint` must load it.
    bool checkpoint_policy_loads;
};
constexpr RefusalReason kRefusalReasons[] = {
    {"unsupported kind", ErrorCode::unsupported, false},
    {"TorchScript archive", ErrorCode::unsupported, false},
    {"needs class imports", ErrorCode::forbidden_global, false},
    {"allowed only by a wider policy", ErrorCode::forbidden_global, true},
    {"allowed only by a numpy policy", ErrorCode::forbidden_global, true},
};

const RefusalReason& refusal_reason(const nlohmann::json& entry) {
    const std::string why = entry.value("why", "");
    const RefusalReason* found = nullptr;
    for (const auto& reason : kRefusalReasons) {
        if (why.find(reason.phrase) == std::string::npos) continue;
        INFO("why: " << why);
        REQUIRE(found == nullptr);  // one reason per file, or the expectation is ambiguous
        found = &reason;
    }
    INFO(entry["file"].get<std::string>() << ": no known refusal reason in why \"" << why << "\"");
    REQUIRE(found != nullptr);
    return *found;
}

// Metadata keys that are not tensor aliases (loader/checkpoint_loader.hpp).
bool is_alias_key(const std::string& key) {
    return key != loader::kMetaFormat && !key.starts_with("picklejail.");
}

// Converts `path` and checks the output against the manifest's `tensors`;
// true only when every check passed (each failure is also reported).
bool loads_as_manifest_says(const std::string& path, const nlohmann::json& expected) {
    REQUIRE(expected.is_object());
    REQUIRE_FALSE(expected.empty());
    const auto input = read_bytes(path);
    std::vector<std::byte> image;
    try {
        const auto conversion = loader::Conversion::plan(input, policy_named("weights"), {});
        image.resize(conversion.output_size());
        conversion.write(image);
    } catch (const Error& e) {
        FAIL_CHECK("refused: " << e.what());
        return false;
    }
    const auto index = ipc::check_safetensors(image);
    bool ok = true;
    const auto check = [&ok](bool condition) {
        ok = ok && condition;
        return condition;
    };
    CHECK(check(index.data_offset % 64 == 0));
    CHECK(check(index.metadata.count(std::string(loader::kMetaFormat)) == 1 &&
                index.metadata.at(std::string(loader::kMetaFormat)) == "pt"));

    // Exactly the manifest's names: stored tensors plus aliases, nothing more.
    std::map<std::string, const ipc::TensorEntry*> stored;
    for (const auto& entry : index.tensors) stored[entry.name] = &entry;
    std::map<std::string, std::string> aliases;
    for (const auto& [key, value] : index.metadata) {
        if (is_alias_key(key)) aliases[key] = value;
    }
    std::set<std::string> produced;
    for (const auto& [name, entry] : stored) produced.insert(name);
    for (const auto& [alias, kept] : aliases) {
        INFO("alias " << alias << " -> " << kept);
        CHECK(check(produced.insert(alias).second));  // an alias never shadows a tensor
        CHECK(check(stored.count(kept) == 1));        // and names a stored tensor
    }
    std::set<std::string> wanted;
    std::set<std::string> wanted_complex128;
    for (const auto& [name, want] : expected.items()) {
        wanted.insert(name);
        if (want["dtype"] == "C128" && stored.count(name)) wanted_complex128.insert(name);
    }
    CHECK(check(produced == wanted));

    for (const auto& [name, want] : expected.items()) {
        INFO("tensor " << name);
        const std::string kept = aliases.count(name) ? aliases.at(name) : name;
        if (!check(stored.count(kept) == 1)) continue;  // reported by the set comparison
        const auto& entry = *stored.at(kept);
        auto shape = want["shape"].get<std::vector<std::uint64_t>>();
        std::string dtype = want["dtype"].get<std::string>();
        if (dtype == "C128") {  // complex128 travels as F64 pairs
            dtype = "F64";
            shape.push_back(2);
        }
        CHECK(check(entry.dtype == dtype));
        CHECK(check(entry.shape == shape));
        const auto bytes = std::span<const std::byte>(image).subspan(
            index.data_offset + entry.begin, entry.end - entry.begin);
        CHECK(check(sha256_hex(bytes) == want["sha256"].get<std::string>()));
    }

    // The stored complex128 tensors are listed, so a reader can rebuild them.
    std::set<std::string> listed_complex128;
    const auto listed = index.metadata.find(std::string(loader::kMetaComplex128));
    if (listed != index.metadata.end()) {
        for (const auto& name : nlohmann::json::parse(listed->second)) {
            listed_complex128.insert(name.get<std::string>());
        }
    }
    CHECK(check(listed_complex128 == wanted_complex128));
    return ok;
}

// True when `policy` refuses the file with `code` (each mismatch is reported).
bool refused_as(const std::string& path, const std::string& policy, ErrorCode code) {
    const auto input = read_bytes(path);
    try {
        (void)loader::Conversion::plan(input, policy_named(policy), {});
    } catch (const Error& e) {
        INFO(e.what());
        CHECK(e.code() == code);
        if (e.code() != code) return false;
        if (code == ErrorCode::forbidden_global) {
            // A refused global is named in the message.
            CHECK(std::string(e.what()).find("global ") != std::string::npos);
            return std::string(e.what()).find("global ") != std::string::npos;
        }
        return true;
    }
    FAIL_CHECK("expected a rejection by policy " << policy);
    return false;
}

// Every checkpoint in the folder has exactly one manifest entry, and every
// entry names a file that is there.
void check_manifest_covers_folder(const std::string& version, const nlohmann::json& manifest) {
    std::multiset<std::string> listed;
    for (const auto& entry : manifest) listed.insert(entry.at("file").get<std::string>());
    std::multiset<std::string> present;
    for (const auto& dirent : std::filesystem::directory_iterator(kFixtures + version)) {
        if (dirent.path().filename() != "manifest.json")
            present.insert(dirent.path().filename().string());
    }
    CHECK(listed == present);
}

void run_manifest(const std::string& version) {
    const auto manifest = read_manifest(version);
    check_manifest_covers_folder(version, manifest);

    const auto expects = [&manifest](std::string_view what) {
        return std::count_if(manifest.begin(), manifest.end(),
                             [what](const nlohmann::json& e) { return e.at("expect") == what; });
    };
    const auto manifest_loads = expects("load");
    const auto manifest_rejects = expects("reject");
    // Every entry says one or the other.
    REQUIRE(manifest_loads + manifest_rejects == static_cast<std::ptrdiff_t>(manifest.size()));

    std::ptrdiff_t loaded = 0;
    std::ptrdiff_t rejected = 0;
    for (const auto& entry : manifest) {
        const std::string file = entry.at("file");
        const std::string path = kFixtures + version + "/" + file;
        INFO(version << "/" << file << ": " << entry.value("why", ""));
        if (entry.at("expect") == "load") {
            if (loads_as_manifest_says(path, entry.at("tensors"))) ++loaded;
        } else {
            if (refused_as(path, "weights", refusal_reason(entry).code)) ++rejected;
        }
    }
    CHECK(manifest_loads > 0);
    CHECK(manifest_rejects > 0);
    CHECK(loaded == manifest_loads);
    CHECK(rejected == manifest_rejects);
}

}  // namespace

TEST_CASE("fixtures: torch 1.13 manifest", "[fixtures]") {
    run_manifest("torch-1.13");
}
TEST_CASE("fixtures: torch 2.11 manifest", "[fixtures]") {
    run_manifest("torch-2.11");
}

// A file `weights` refuses only because a wider policy is needed (numpy,
// argparse) loads under `checkpoint`; every other refusal stands there too.
TEST_CASE("fixtures: checkpoint policy loads numpy, argparse and training metadata", "[fixtures]") {
    std::ptrdiff_t widened = 0;
    for (const std::string version : {"torch-1.13", "torch-2.11"}) {
        for (const auto& entry : read_manifest(version)) {
            if (entry.at("expect") != "reject") continue;
            const std::string file = entry.at("file");
            const std::string path = kFixtures + version + "/" + file;
            INFO(version << "/" << file << ": " << entry.value("why", ""));
            const auto& reason = refusal_reason(entry);
            if (!reason.checkpoint_policy_loads) {
                CHECK(refused_as(path, "checkpoint", reason.code));
                continue;
            }
            const auto input = read_bytes(path);
            const auto conversion = loader::Conversion::plan(input, policy_named("checkpoint"), {});
            std::vector<std::byte> image(conversion.output_size());
            conversion.write(image);
            const auto index = ipc::check_safetensors(image);
            CHECK(!index.tensors.empty());
            ++widened;
        }
    }
    // The manifests do name such files (numpy scalars and arrays, argparse).
    CHECK(widened > 0);
}

TEST_CASE("fixtures: output is deterministic", "[fixtures]") {
    const auto input = read_bytes(kFixtures + "torch-2.11/train_checkpoint.pt");
    const auto policy = policy_named("weights");
    std::vector<std::vector<std::byte>> images;
    for (int i = 0; i < 2; ++i) {
        const auto conversion = loader::Conversion::plan(input, policy, {});
        images.emplace_back(conversion.output_size());
        conversion.write(images.back());
    }
    CHECK(images[0] == images[1]);
}
