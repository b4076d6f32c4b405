// Real checkpoints written by PyTorch 1.13 and 2.11 (tests/fixtures): every
// `load` file converts with each tensor's dtype, shape and SHA-256 matching
// the manifest, and the output passes the independent safetensors checker;
// every `reject` file fails with the expected error code.
#include <openssl/evp.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

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

// Converts `file` and checks every manifest tensor against the output.
void check_loads(const std::string& path, const nlohmann::json& expected) {
    const auto input = read_bytes(path);
    const auto conversion = loader::Conversion::plan(input, policy_named("weights"), {});
    std::vector<std::byte> image(conversion.output_size());
    conversion.write(image);
    const auto index = ipc::check_safetensors(image);
    REQUIRE(index.data_offset % 64 == 0);
    REQUIRE(index.metadata.at("format") == "pt");

    std::map<std::string, const ipc::TensorEntry*> by_name;
    for (const auto& entry : index.tensors) by_name[entry.name] = &entry;
    REQUIRE(by_name.size() + index.metadata.size() >= expected.size());
    for (const auto& [name, want] : expected.items()) {
        INFO("tensor " << name);
        std::string stored = name;
        if (!by_name.count(name)) {
            REQUIRE(index.metadata.count(name) == 1);  // an alias of a stored tensor
            stored = index.metadata.at(name);
        }
        REQUIRE(by_name.count(stored) == 1);
        const auto& entry = *by_name.at(stored);
        auto shape = want["shape"].get<std::vector<std::uint64_t>>();
        std::string dtype = want["dtype"].get<std::string>();
        if (dtype == "C128") {  // complex128 travels as F64 pairs
            dtype = "F64";
            shape.push_back(2);
        }
        CHECK(entry.dtype == dtype);
        CHECK(entry.shape == shape);
        const auto bytes = std::span<const std::byte>(image).subspan(
            index.data_offset + entry.begin, entry.end - entry.begin);
        CHECK(sha256_hex(bytes) == want["sha256"].get<std::string>());
    }
}

ErrorCode expected_rejection(const std::string& file) {
    if (file == "quantized.pt" || file == "sparse.pt" || file == "torchscript.pt")
        return ErrorCode::unsupported;
    return ErrorCode::forbidden_global;
}

void run_manifest(const std::string& version) {
    const auto manifest_bytes = read_bytes(kFixtures + version + "/manifest.json");
    const auto manifest = nlohmann::json::parse(
        std::string(reinterpret_cast<const char*>(manifest_bytes.data()), manifest_bytes.size()));
    int loaded = 0;
    int rejected = 0;
    for (const auto& entry : manifest) {
        const std::string file = entry["file"];
        const std::string path = kFixtures + version + "/" + file;
        DYNAMIC_SECTION(version << "/" << file) {
            if (entry["expect"] == "load") {
                check_loads(path, entry["tensors"]);
                ++loaded;
            } else {
                const auto input = read_bytes(path);
                try {
                    (void)loader::Conversion::plan(input, policy_named("weights"), {});
                    FAIL("expected a rejection");
                } catch (const Error& e) {
                    INFO(e.what());
                    CHECK(e.code() == expected_rejection(file));
                    if (e.code() == ErrorCode::forbidden_global)
                        CHECK(std::string(e.what()).find("global ") != std::string::npos);
                }
                ++rejected;
            }
        }
    }
}

}  // namespace

TEST_CASE("fixtures: torch 1.13 manifest", "[fixtures]") {
    run_manifest("torch-1.13");
}
TEST_CASE("fixtures: torch 2.11 manifest", "[fixtures]") {
    run_manifest("torch-2.11");
}

TEST_CASE("fixtures: checkpoint policy loads numpy, argparse and training metadata", "[fixtures]") {
    for (const std::string version : {"torch-1.13", "torch-2.11"}) {
        for (const std::string file :
             {"numpy_scalar.pt", "numpy_array.pt", "argparse_namespace.pt"}) {
            INFO(version << "/" << file);
            const auto input = read_bytes(kFixtures + version + "/" + file);
            const auto conversion = loader::Conversion::plan(input, policy_named("checkpoint"), {});
            std::vector<std::byte> image(conversion.output_size());
            conversion.write(image);
            const auto index = ipc::check_safetensors(image);
            CHECK(!index.tensors.empty());
        }
    }
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
