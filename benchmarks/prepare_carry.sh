#!/usr/bin/env bash
# Prepares, on the development machine, the git-ignored folders that a device call carries for
# benchmarks/device_session.sh (each call's working tree is limited to 64 MiB):
#
#   .carry/gpu/   fp16 Inception (xz, ~39 MB), CIFAR-10 train archive (15 MB), wheels of
#                 diffusers, importlib_metadata and torchjd (~7 MB)      -> the first call
#   .carry/gpu2/  wheels of cvxpy and clarabel (~6 MB; NashMTL's solver)  -> a later call, with
#                 CARRY_DIR=.carry/gpu2 (device_session.sh keeps what earlier calls brought)
#
#   bash benchmarks/prepare_carry.sh [SHARED_DATA_DIR]     (default ../shared/data)
#
# Needs antdiff[eval] installed here (the Inception weights) and access to the package index.
set -euo pipefail
DATA_DIR=${1:-../shared/data}
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >>.git/info/exclude
mkdir -p .carry/gpu .carry/gpu2
if [ ! -f .carry/gpu/inception_fp16.pt.xz ]; then
    tmp=$(mktemp -d)
    antdiff stats --export-inception-fp16 "$tmp/inception_fp16.pt"
    xz -T0 -6 -c "$tmp/inception_fp16.pt" >.carry/gpu/inception_fp16.pt.xz
    rm -rf "$tmp"
fi
cp -n "$DATA_DIR/cifar10/cifar10-train-jpeg.tar.xz" .carry/gpu/
download() { # DEST SPEC...
    local dest=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}
download .carry/gpu diffusers==0.42.1 importlib_metadata==10.2.0 torchjd==0.18.0
download .carry/gpu2 cvxpy==1.9.3 clarabel==0.11.1
du -sh .carry/gpu .carry/gpu2
total=$(du -sm .carry/gpu | cut -f1)
[ "$total" -lt 62 ] || echo "warning: .carry/gpu is ${total} MB; with the tracked files it may pass 64 MiB"
