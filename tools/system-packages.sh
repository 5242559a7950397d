#!/usr/bin/env bash
# The system packages the napari tests need on Debian/Ubuntu: a virtual display (Xvfb) and the
# Qt/xcb/OpenGL libraries. Stated once; `make test` and .ci/run call this script.
#   bash tools/system-packages.sh           install what is missing (root with apt-get), else explain
#   bash tools/system-packages.sh --check   exit 0 when everything is there, 1 otherwise
set -uo pipefail

PACKAGES=(xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
          libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
          libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1)

present() {
    command -v Xvfb >/dev/null 2>&1 || return 1
    # Read the linker cache once: `ldconfig -p | grep -q` under pipefail fails at random (grep -q
    # exits at the first match and ldconfig dies of SIGPIPE).
    local lib libraries
    libraries="$(ldconfig -p 2>/dev/null)"
    for lib in libxcb-icccm libxcb-cursor libxkbcommon-x11 libEGL libGL.so; do
        grep -q "$lib" <<<"$libraries" || return 1
    done
}

if present; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    exit 1
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing the virtual display and Qt libraries for the napari tests (apt-get)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    present && exit 0
    echo "apt-get did not install everything the napari tests need" >&2
    exit 1
fi
echo "The napari tests need a virtual display; they will be skipped. To run them:" >&2
echo "  sudo apt-get install -y ${PACKAGES[*]}" >&2
exit 0
