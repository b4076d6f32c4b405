# Shared by scripts/*: install what is missing, then build.
# shellcheck shell=bash
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${PICKLEJAIL_BUILD_DIR:-$REPO_ROOT/build}"
# Debian's interpreter: python3-torch and python3-pytest install there, not
# into any other python3 that may come first on PATH.
PYTHON=/usr/bin/python3

BUILD_PACKAGES=(cmake g++ make pkg-config zlib1g-dev libminizip-dev nlohmann-json3-dev
    libcli11-dev libseccomp-dev libboost-dev libsystemd-dev libssl-dev catch2 libmimalloc-dev
    libsimdjson-dev)
TEST_PACKAGES=(python3 python3-pytest python3-numpy python3-torch python3-venv python3-pip
    python3-setuptools python3-wheel nodejs systemd libbenchmark-dev e2fsprogs util-linux)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the Debian packages that are not installed yet. --no-install-recommends
# keeps python3-torch from pulling in a desktop.
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

build_project() {
    cmake -S "$REPO_ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
    cmake --build "$BUILD_DIR" -j"$(nproc)"
}
