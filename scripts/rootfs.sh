# Shared by scripts/systemd-test and scripts/container-image: Debian root
# filesystems built with mmdebstrap from Debian packages only (no image
# registry), cached under the build directory.
# shellcheck shell=bash

# The Debian packages that hold the shared libraries the installed binaries
# load, found with ldd, so a new dependency reaches the root filesystem (and
# changes the cache key) without anyone editing a list.
runtime_library_packages() {
    local binaries=("$BUILD_DIR/bin/picklejaild" "$BUILD_DIR/bin/picklejail-worker"
        "$BUILD_DIR/bin/picklejail")
    local lib pkg
    ldd "${binaries[@]}" | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
        # dpkg knows a library by the path its package ships, which on a
        # merged-/usr system may be either spelling.
        pkg=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "${lib#/usr}" 2>/dev/null ||
            dpkg-query -S "/usr$lib" 2>/dev/null || true)
        if [ -z "$pkg" ]; then
            echo "rootfs: no Debian package ships $lib" >&2
            return 1
        fi
        echo "${pkg%%:*}"
    done | sed 's/:[a-z0-9]*$//' | sort -u
}

# The apt sources the root filesystem is built from: the host's own (same
# suites and pockets as the libraries the binaries were built against),
# otherwise Debian's default mirror for the host's release.
rootfs_sources() {
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        echo /etc/apt/sources.list.d/debian.sources
    elif [ -s /etc/apt/sources.list ]; then
        echo /etc/apt/sources.list
    else
        echo "http://deb.debian.org/debian"
    fi
}

# ensure_rootfs NAME PACKAGE... prints the path of a rootfs tarball with the
# packages installed, built once per package list and reused after: the key
# is a hash of the suite, the sources and the sorted list, so a stale
# tarball is never used and is removed when a new one is built.
ensure_rootfs() {
    local name=$1
    shift
    local suite sources key dir tarball
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    sources=$(rootfs_sources)
    key=$({
        echo "minbase $suite"
        if [ -f "$sources" ]; then cat "$sources"; else echo "$sources"; fi
        printf '%s\n' "$@" | sort -u
    } | sha256sum | cut -c1-16)
    dir="$BUILD_DIR/rootfs"
    tarball="$dir/$name-$key.tar"
    if [ ! -f "$tarball" ]; then
        mkdir -p "$dir"
        rm -rf "$dir/$name"-*.tar "$dir/$name"-*.tar.partial
        echo "rootfs: building $tarball with mmdebstrap ($suite, $# packages)" >&2
        local include
        include=$(
            IFS=,
            echo "$*"
        )
        # --format: the name's extension would otherwise pick a directory.
        mmdebstrap --quiet --variant=minbase --format=tar --include="$include" "$suite" \
            "$tarball.partial" "$sources" >&2
        mv "$tarball.partial" "$tarball"
    else
        echo "rootfs: reusing $tarball" >&2
    fi
    echo "$tarball"
}
