#!/bin/sh
# Installs the Debian packages bench/run.py uses for its peer baselines (../shared/bench/peers.py):
# ucx-utils (ucx_perftest), libfabric-bin (fi_pingpong), qperf. Needs root and apt. Best effort:
# peers.py reports a missing tool as a case with "value": null and an "error".
set -u
missing=""
command -v ucx_perftest >/dev/null 2>&1 || missing="$missing ucx-utils"
command -v fi_pingpong >/dev/null 2>&1 || missing="$missing libfabric-bin"
command -v qperf >/dev/null 2>&1 || missing="$missing qperf"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-bench-deps: not root or no apt-get; missing:$missing (those peer cases report an error)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
    || echo "install-bench-deps: could not install:$missing (those peer cases report an error)" >&2
exit 0
