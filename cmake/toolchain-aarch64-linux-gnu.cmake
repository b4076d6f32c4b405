# Cross-compiling picklejail for aarch64 (arm64: Grace Hopper, Graviton) on a
# Debian host with multiarch, as scripts/cross aarch64 sets it up:
#
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64-linux-gnu.cmake
#
# Compiler: Debian's aarch64-linux-gnu-g++ (g++-aarch64-linux-gnu). Target
# libraries, with their CMake and pkg-config files, are the :arm64 packages in
# /usr/lib/aarch64-linux-gnu. Headers-only packages (nlohmann-json, CLI11,
# Catch2 v2, the Boost headers Asio needs) are architecture-independent and
# shared with the native build, which is why nothing is re-rooted: host paths
# are searched, and CMAKE_LIBRARY_ARCHITECTURE makes every library and
# package search look in the aarch64 directories, never the x86-64 ones.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Build-time helpers (pkg-config, cmake itself) are host programs.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)

# pkg-config (minizip, libseccomp, libsystemd) must read the arm64 .pc files
# only: with the host's default path it would hand out the x86-64 libraries,
# which the linker then skips as incompatible, or worse, whose flags differ.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
unset(ENV{PKG_CONFIG_SYSROOT_DIR})

# Target programs that CMake runs at build time (catch_discover_tests lists
# the unit tests by running unit_tests) run under qemu's user-mode emulator;
# the arm64 loader and libraries come from the multiarch packages in /.
find_program(PICKLEJAIL_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(PICKLEJAIL_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${PICKLEJAIL_QEMU_AARCH64})
endif()
