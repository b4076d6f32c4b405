"""`cmake --install` lays out what a distribution needs, and the installed
C++ client library builds a consumer through pkg-config and through CMake."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon_support import REPO

BUILD = Path(os.environ.get("PICKLEJAIL_BUILD_DIR", REPO / "build"))

CONSUMER = r"""
#include <picklejail/client.hpp>
#include <cstdio>
int main(int argc, char** argv) {
    try {
        picklejail::Client client(argv[1]);
        auto image = client.load(argv[2]);
        std::printf("%zu\n", image.tensors().size());
    } catch (const picklejail::Error& e) {
        std::printf("error %d %s\n", static_cast<int>(e.code()), e.what());
        return 1;
    }
}
"""


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if not (BUILD / "CMakeCache.txt").is_file():
        pytest.skip("no configured build tree")
    prefix = tmp_path_factory.mktemp("prefix")
    res = subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return prefix


def test_install_layout(prefix):
    for rel in ["bin/picklejail", "sbin/picklejaild", "libexec/picklejail/picklejail-worker",
                "share/picklejail/policies/weights.json", "share/picklejail/policies/checkpoint.json",
                "lib/systemd/system/picklejail.service", "lib/systemd/system/picklejail.socket",
                "lib/sysusers.d/picklejail.conf", "etc/picklejail/picklejaild.json",
                "include/picklejail/client.hpp", "include/picklejail/common/error.hpp",
                "lib/libpicklejail-client.a", "lib/pkgconfig/picklejail-client.pc",
                "lib/cmake/picklejail-client/picklejail-client-config.cmake"]:
        assert (prefix / rel).exists(), rel
    service = (prefix / "lib/systemd/system/picklejail.service").read_text()
    assert f"ExecStart={prefix}/sbin/picklejaild --config {prefix}/etc/picklejail/picklejaild.json" \
        in service


def test_installed_cli_finds_its_worker_and_policies(prefix, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEJAIL")}
    res = subprocess.run([str(prefix / "bin/picklejail"), "convert",
                          str(REPO / "tests/fixtures/torch-2.11/cnn_state_dict.pt"),
                          str(tmp_path / "out.safetensors"), "--local"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr


def build_consumer_with_pkg_config(prefix, tmp_path):
    src = tmp_path / "consumer.cpp"
    src.write_text(CONSUMER)
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib/pkgconfig")}
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "picklejail-client"],
                           capture_output=True, text=True, env=env, check=True).stdout.split()
    exe = tmp_path / "consumer"
    subprocess.run(["g++", str(src), "-o", str(exe), *flags], check=True, timeout=300)
    return exe


def build_consumer_with_cmake(prefix, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "consumer.cpp").write_text(CONSUMER)
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.22)\nproject(consumer CXX)\n"
        "find_package(picklejail-client REQUIRED)\n"
        "add_executable(consumer consumer.cpp)\n"
        "target_link_libraries(consumer PRIVATE picklejail::picklejail_client)\n")
    subprocess.run(["cmake", "-S", str(proj), "-B", str(proj / "b"), f"-DCMAKE_PREFIX_PATH={prefix}"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(proj / "b")], check=True, capture_output=True, timeout=300)
    return proj / "b" / "consumer"


@pytest.mark.parametrize("build", [build_consumer_with_pkg_config, build_consumer_with_cmake])
def test_installed_client_library_links_and_talks_to_the_daemon(prefix, tmp_path, build):
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config missing")
    exe = build(prefix, tmp_path)
    from daemon_support import Daemon
    d = Daemon(tmp_path)
    try:
        res = subprocess.run([str(exe), d.socket_path,
                              str(REPO / "tests/fixtures/torch-2.11/cnn_state_dict.pt")],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.strip() == "9", res.stdout + res.stderr
    finally:
        d.stop()
