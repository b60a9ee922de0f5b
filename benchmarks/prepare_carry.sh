#!/usr/bin/env bash
# Prepares, on the development machine, the git-ignored folder that the first device call
# carries for benchmarks/device_session.sh (a call's working tree is limited to 64 MiB):
#
#   .carry/gpu/inception_fp16.pt.xz        fp16 Inception, xz (~39 MB)
#   .carry/gpu/cifar10-train-jpeg.tar.xz   CIFAR-10 train split (15 MB)
#   .carry/gpu/site.tar.xz                 the packages the device image lacks, unpacked from
#                                          their wheels and xz-compressed as one archive (~6 MB
#                                          instead of 12 MB of wheels; ~3.5 MB with
#                                          cvxpy's tests and debug symbols dropped): diffusers,
#                                          importlib_metadata, torchjd, and cvxpy + clarabel
#                                          + qdldl (NashMTL's solver; cvxpy imports qdldl,
#                                          its other solvers are optional)
#
#   bash benchmarks/prepare_carry.sh [SHARED_DATA_DIR]     (default ../shared/data)
#
# Needs antdiff[eval] installed here (the Inception weights) and access to the package index.
set -euo pipefail
DATA_DIR=${1:-../shared/data}
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >>.git/info/exclude
mkdir -p .carry/gpu
if [ ! -f .carry/gpu/inception_fp16.pt.xz ]; then
    tmp=$(mktemp -d)
    antdiff stats --export-inception-fp16 "$tmp/inception_fp16.pt"
    xz -T0 -6 -c "$tmp/inception_fp16.pt" >.carry/gpu/inception_fp16.pt.xz
    rm -rf "$tmp"
fi
cp -n "$DATA_DIR/cifar10/cifar10-train-jpeg.tar.xz" .carry/gpu/
if [ ! -f .carry/gpu/site.tar.xz ]; then
    tmp=$(mktemp -d)
    # Wheels for the device's Python (3.12, x86-64). A wheel install into a --target folder is
    # its archive unpacked, so unpacking here needs neither that Python nor that platform.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp/wheels" \
        diffusers==0.42.1 importlib_metadata==10.2.0 torchjd==0.18.0 cvxpy==1.9.3 clarabel==0.11.1 \
        qdldl==0.1.9.post1
    mkdir -p "$tmp/site"
    for w in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tmp/site"; done
    # cvxpy's own tests and the extensions' debug symbols are 2 and ~17 MB of the 57 MB unpacked
    # (3.2 MB of the archive): without them the carry fits beside a grown working tree.
    rm -rf "$tmp/site/cvxpy/tests"
    find "$tmp/site" -name '*.so' -exec strip --strip-debug {} +
    tar -C "$tmp/site" -cf - . | xz -T0 -9e >.carry/gpu/site.tar.xz.part
    mv .carry/gpu/site.tar.xz.part .carry/gpu/site.tar.xz
    rm -rf "$tmp"
fi
# A device call carries the tracked and untracked-not-ignored files plus .carry/gpu: 64 MiB in all.
carry=$(du -cb .carry/gpu/* | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null |
    awk '$2 == "total" {s += $1} END {print s + 0}')
echo ".carry/gpu: $((carry / 1048576)) MiB; working tree: $((tree / 1048576)) MiB"
[ $((carry + tree)) -lt $((64 * 1048576)) ] ||
    echo "error: together $(((carry + tree) / 1048576)) MiB, over a device call's 64 MiB: move large untracked files out of the tree" >&2
