#!/bin/sh
# Installs the Debian packages the tests use as independent oracles: tshark (dissects the
# wire) and python3-pyverbs (rdma-core 44's own pyverbs and its test suite). Needs root and
# apt; anything missing afterwards makes the tests that need it skip with the reason.
set -u
missing=""
command -v tshark >/dev/null 2>&1 || missing="$missing tshark"
[ -d /usr/lib/python3/dist-packages/pyverbs ] && [ -d /usr/share/doc/rdma-core/tests ] \
    || missing="$missing python3-pyverbs"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-sysdeps: not root or no apt-get; missing:$missing (their tests skip)" >&2
    exit 0
fi
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
# shellcheck disable=SC2086
apt-get install -y -qq $missing >/dev/null 2>&1 \
    || echo "install-sysdeps: could not install:$missing (their tests skip)" >&2
exit 0
