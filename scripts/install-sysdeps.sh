#!/bin/sh
# Installs the Debian packages the tests use as oracles (tshark). Needs root and apt;
# anything missing afterwards makes the tests that need it skip with the reason.
set -u
command -v tshark >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-sysdeps: not root or no apt-get; tshark tests will skip" >&2
    exit 0
fi
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq tshark >/dev/null 2>&1 || echo "install-sysdeps: tshark could not be installed; tshark tests will skip" >&2
exit 0
