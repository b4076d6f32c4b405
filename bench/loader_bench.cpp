// The C++ side alone (Google Benchmark): checkpoint bytes already in memory
// to a finished safetensors image, the way the worker does it minus the
// sandbox. Inputs are named by $PICKLEJAIL_BENCH_LARGE (a big state dict)
// and $PICKLEJAIL_BENCH_SMALL (many small tensors); scripts/bench makes them.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ipc/file_mapping.hpp"
#include "loader/checkpoint_loader.hpp"
#include "sandbox/policy_files.hpp"

namespace {

using namespace picklejail;

std::string env_path(const char* name) {
    const char* value = std::getenv(name);
    return value == nullptr ? std::string() : std::string(value);
}

const loader::Policy& weights_policy() {
    static const loader::Policy policy = loader::Policy::from_json(
        sandbox::load_policy_text("weights", std::string(PICKLEJAIL_SOURCE_DIR) + "/policies"));
    return policy;
}

// Plan + write into a reused output buffer; bytes and tensors per second.
void convert(benchmark::State& state, const char* variable) {
    const std::string path = env_path(variable);
    if (path.empty()) {
        state.SkipWithError((std::string(variable) + " is not set").c_str());
        return;
    }
    const auto fd = ipc::open_read_only(path);
    const auto input = ipc::map_read_only(fd.get(), ipc::regular_file_size(fd.get(), path), path);
    std::vector<std::byte> output;
    std::uint64_t tensors = 0;
    for (auto _ : state) {
        const auto conversion = loader::Conversion::plan(input.bytes(), weights_policy(), {});
        output.resize(conversion.output_size());
        conversion.write(output);
        tensors = conversion.layout().tensors().size();
        benchmark::DoNotOptimize(output.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * input.size()));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tensors));
}

// The practical limit: reading the file's bytes once into memory, read(2)
// into a buffer allocated (and faulted in) anew each time, as a loader's is.
void read_file(benchmark::State& state, const char* variable) {
    const std::string path = env_path(variable);
    if (path.empty()) {
        state.SkipWithError((std::string(variable) + " is not set").c_str());
        return;
    }
    const auto fd = ipc::open_read_only(path);
    const auto size = ipc::regular_file_size(fd.get(), path);
    for (auto _ : state) {
        std::unique_ptr<char[]> buffer(new char[size]);
        std::uint64_t done = 0;
        while (done < size) {
            const ssize_t n = ::pread(fd.get(), buffer.get() + done, size - done,
                                      static_cast<off_t>(done));
            if (n <= 0) {
                state.SkipWithError("read failed");
                return;
            }
            done += static_cast<std::uint64_t>(n);
        }
        benchmark::DoNotOptimize(buffer.get());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * size));
}

BENCHMARK_CAPTURE(convert, large_state_dict, "PICKLEJAIL_BENCH_LARGE")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(convert, many_small_tensors, "PICKLEJAIL_BENCH_SMALL")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(read_file, large_state_dict, "PICKLEJAIL_BENCH_LARGE")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
