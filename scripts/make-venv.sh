#!/bin/sh
# make-venv.sh PYTHON DIR: make the virtualenv DIR with PYTHON (whatever python3 is first on
# PATH). Debian's python3 is externally managed (PEP 668), so the project never installs into
# it; it needs Debian's python3-venv for `-m venv`, which this installs when it is missing and
# it can (root and apt-get). Otherwise it says what to install and fails.
set -eu
python=$1
dir=$2
if "$python" -m venv "$dir" >/dev/null 2>&1; then exit 0; fi
rm -rf "$dir"                       # a venv without pip is half made: never keep it
if ! ver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    echo "make-venv: '$python' does not run; install Python 3.11 or newer, or name one with PYTHON=" >&2
    exit 1
fi
pkgs="python3-venv python$ver-venv"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make-venv: '$python -m venv' failed; installing $pkgs" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install -y -qq $pkgs >/dev/null || apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$dir" && exit 0
    rm -rf "$dir"
fi
echo "make-venv: '$python -m venv $dir' failed. Install the venv module and run make again:" >&2
echo "    sudo apt-get install $pkgs      (Debian/Ubuntu)" >&2
exit 1
