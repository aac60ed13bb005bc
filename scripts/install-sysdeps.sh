#!/bin/sh
# Installs the Debian packages the tests use as independent oracles: tshark (dissects the
# wire) and python3-pyverbs (rdma-core 44's own pyverbs and its test suite); and what the C
# libraries (clients/c) build against and are tested with: rdma-core's headers
# (libibverbs-dev, librdmacm-dev), msgpack-c (libmsgpack-dev) and the unmodified programs
# (ibverbs-utils, perftest, rdmacm-utils). Needs root and
# apt; anything missing afterwards makes the tests that need it skip with the reason.
set -u
missing=""
command -v tshark >/dev/null 2>&1 || missing="$missing tshark"
[ -d /usr/lib/python3/dist-packages/pyverbs ] && [ -d /usr/share/doc/rdma-core/tests ] \
    || missing="$missing python3-pyverbs"
[ -e /usr/include/infiniband/verbs.h ] || missing="$missing libibverbs-dev"
[ -e /usr/include/rdma/rdma_cma.h ] || missing="$missing librdmacm-dev"
[ -e /usr/include/msgpack.h ] || missing="$missing libmsgpack-dev"
command -v ibv_rc_pingpong >/dev/null 2>&1 || missing="$missing ibverbs-utils"
command -v ib_write_bw >/dev/null 2>&1 || missing="$missing perftest"
command -v rping >/dev/null 2>&1 || missing="$missing rdmacm-utils"
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
