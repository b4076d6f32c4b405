// picklejail: convert or inspect untrusted PyTorch checkpoints without
// running any of the code a pickle can carry.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "client/cli/commands.hpp"

namespace {

int run(int argc, char** argv) {
    using namespace picklejail::cli;
    CLI::App app{
        "picklejail: load untrusted PyTorch checkpoints as safetensors, never running pickle code"};
    app.require_subcommand(1);
    CommonOptions common;
    const auto add_common = [&common](CLI::App* command) {
        command
            ->add_option("--policy", common.policy,
                         "policy name (weights, checkpoint) or a .json file")
            ->capture_default_str();
        command->add_option("--policy-dir", common.policy_dir,
                            "directory holding the policy files");
        command->add_option("--limits", common.limits_file, "JSON file overriding loader limits");
        command
            ->add_option("--deadline", common.deadline_seconds,
                         "seconds before the worker is killed")
            ->capture_default_str();
        command->add_option("--memory", common.memory_bytes,
                            "worker address-space cap in bytes (0: automatic)");
        command->add_option("--select", common.select,
                            "only tensors with this name or name prefix (repeatable)");
        command->add_option("--socket", common.socket,
                            "use picklejaild at this socket (default: $PICKLEJAIL_SOCKET, or "
                            "/run/picklejail/picklejail.sock when present)");
        command->add_flag("--local", common.local,
                          "convert in a local sandboxed worker even when a daemon is running");
        command->add_option(
            "--input-fd", common.input_fd,
            "read the checkpoint from this inherited fd (input then only names it)");
    };

    ConvertOptions convert;
    auto* convert_cmd = app.add_subcommand("convert", "write a checkpoint as a .safetensors file");
    convert_cmd
        ->add_option("input", convert.input,
                     "checkpoint (.pt, .pth, .bin, .ckpt), or a sharded index "
                     "(pytorch_model.bin.index.json or its folder)")
        ->required();
    convert_cmd->add_option("output", convert.output,
                            "output file, or folder for a sharded checkpoint (default: beside "
                            "the input, with .safetensors)");
    convert_cmd
        ->add_option("--output-fd", convert.output_fd,
                     "write the image into this inherited fd (a memfd is sealed)")
        ->excludes(convert_cmd->get_option("output"));
    convert_cmd->add_flag("--json", convert.json, "print a JSON summary");
    convert_cmd->add_flag("--mmap", common.map_file,
                          "layout only: tensors stored uncompressed in the input are named by "
                          "their byte range in it (picklejail.file_ranges) instead of copied, "
                          "for a client that maps the same file");
    add_common(convert_cmd);

    InspectOptions inspect;
    auto* inspect_cmd = app.add_subcommand("inspect", "list format, globals and tensors");
    inspect_cmd->add_option("input", inspect.input, "checkpoint")->required();
    inspect_cmd->add_flag("--json", inspect.json, "print JSON");
    add_common(inspect_cmd);

    auto* selftest_cmd = app.add_subcommand("selftest", "prove the sandbox stops forbidden acts");

    CLI11_PARSE(app, argc, argv);
    if (selftest_cmd->parsed()) return run_selftest();
    if (convert_cmd->parsed()) return run_convert(common, convert);
    if (inspect_cmd->parsed()) return run_inspect(common, inspect);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {  // commands report their own errors; this is a bug
        (void)std::fprintf(stderr, "picklejail: internal: %s\n", e.what());
        return 1;
    }
}
