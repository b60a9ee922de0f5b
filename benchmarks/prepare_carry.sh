#!/usr/bin/env bash
# Prepares, on the development machine, the git-ignored folder that the first device call
# carries for benchmarks/device_session.sh (a call's working tree is limited to 64 MiB):
#
#   inception_fp16.pt.xz        fp16 Inception, xz with 2-byte-unit settings (37.5 MB)
#   cifar10-train-jpeg.tar.xz   CIFAR-10 train split (15 MB)
#   site.tar.xz                 the packages the device image lacks, unpacked from their wheels
#                               and xz-compressed as one archive: diffusers (without the
#                               pipelines antdiff never loads), importlib_metadata, torchjd, and
#                               cvxpy + clarabel + qdldl (NashMTL's solver; cvxpy imports qdldl,
#                               its other solvers are optional) — 2.8 MB, 1.2 MB without cvxpy
#
#   bash benchmarks/prepare_carry.sh [SHARED_DATA_DIR]          (default ../shared/data)
#   WITH_NASH=0 bash benchmarks/prepare_carry.sh                 no cvxpy: .carry/gpu-nonash
#
#   SPLIT=1 bash benchmarks/prepare_carry.sh                    two folders, <carry>-part1 and -part2
#   SPLIT=2 bash benchmarks/prepare_carry.sh                    three: -part1a, -part1b, -part2
#
# SPLIT=1 also hard-links the carry into two folders for a working tree too large to travel
# beside the whole carry: <carry>-part1 (Inception and packages, ~40 MB) for a first call with
# STAGE_ONLY=1, which only stages them on the device machine, and <carry>-part2 (the data,
# 15 MB) for the session's calls; device_session.sh keeps staged files between warm calls.
# SPLIT=2 cuts the Inception in two pieces (~19 MB each) for a tree too large even for part 1:
# <carry>-part1a (piece 1 and the packages) and <carry>-part1b (piece 2), each staged by its own
# STAGE_ONLY=1 call (device_session.sh joins them once both are there), then <carry>-part2.
# WITH_NASH=0 builds a second folder without NashMTL's solver, 1.6 MB smaller, for slices
# without Nash runs (device_session.sh refuses Nash runs when cvxpy does not import); carry it
# with CARRY_DIR=.carry/gpu-nonash. CARRY_OUT=DIR names the folder explicitly. Both share the
# Inception and data files (hard links). Needs antdiff[eval] installed here (the Inception
# weights) and access to the package index.
set -euo pipefail
DATA_DIR=${1:-../shared/data}
WITH_NASH=${WITH_NASH:-1}
case $WITH_NASH in
1) CARRY=${CARRY_OUT:-.carry/gpu} ;;
0) CARRY=${CARRY_OUT:-.carry/gpu-nonash} ;;
*) echo "WITH_NASH=$WITH_NASH: 1 (cvxpy included, the default) or 0" >&2 && exit 2 ;;
esac
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >>.git/info/exclude
mkdir -p "$CARRY"
share() { # FILE: hard-link it from another carry folder that has it (no second copy on disk)
    local f
    for f in .carry/*/"$1"; do
        [ -f "$f" ] && [ ! -e "$CARRY/$1" ] && ln "$f" "$CARRY/$1" 2>/dev/null && return
    done
    return 0
}
share inception_fp16.pt.xz
share cifar10-train-jpeg.tar.xz
if [ ! -f "$CARRY/inception_fp16.pt.xz" ]; then
    tmp=$(mktemp -d)
    antdiff stats --export-inception-fp16 "$tmp/inception_fp16.pt"
    # fp16 weights are 2-byte units whose bytes carry no literal context: lc=0, lp=1, pb=1
    # compress them to 37.5 MB instead of preset 6's 39.4 MB (xz -d needs no options).
    xz -T1 --lzma2=preset=9e,lc=0,lp=1,pb=1 -c "$tmp/inception_fp16.pt" >"$CARRY/inception_fp16.pt.xz"
    rm -rf "$tmp"
fi
cp -n "$DATA_DIR/cifar10/cifar10-train-jpeg.tar.xz" "$CARRY/"
if [ ! -f "$CARRY/site.tar.xz" ]; then
    tmp=$(mktemp -d)
    # Wheels for the device's Python (3.12, x86-64). A wheel install into a --target folder is
    # its archive unpacked, so unpacking here needs neither that Python nor that platform.
    download() {
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp/wheels" "$@"
    }
    download diffusers==0.42.1 importlib_metadata==10.2.0 torchjd==0.18.0
    [ "$WITH_NASH" = 0 ] || download cvxpy==1.9.3 clarabel==0.11.1 qdldl==0.1.9.post1
    mkdir -p "$tmp/site"
    for w in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tmp/site"; done
    # cvxpy's own tests and the extensions' debug symbols are 2 and ~17 MB of the 57 MB unpacked
    # (3.2 MB of the archive): without them the carry fits beside a grown working tree.
    rm -rf "$tmp/site/cvxpy/tests"
    find "$tmp/site" -name '*.so' -exec strip --strip-debug {} +
    # diffusers' pipelines are imported lazily, one subpackage per name: antdiff uses DDPM, DDIM,
    # DiT and LDM (diffusers' top level also resolves names through pipelines/deprecated). The
    # other ~90 pipelines and modular_pipelines are 17 of its 30 MB (0.8 MB of the archive).
    rm -rf "$tmp/site/diffusers/modular_pipelines"
    for d in "$tmp"/site/diffusers/pipelines/*/; do
        case $(basename "$d") in
        ddim | ddpm | dit | latent_diffusion | deprecated) ;;
        *) rm -rf "$d" ;;
        esac
    done
    tar -C "$tmp/site" -cf - . | xz -T0 -9e >"$CARRY/site.tar.xz.part"
    mv "$CARRY/site.tar.xz.part" "$CARRY/site.tar.xz"
    rm -rf "$tmp"
fi
# A device call carries the tracked and untracked-not-ignored files plus the carry folder: 64 MiB
# in all.
carry=$(du -cb "$CARRY"/* | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null |
    awk '$2 == "total" {s += $1} END {print s + 0}')
limit=$((64 * 1048576))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "$CARRY: $(mib "$carry"); working tree: $(mib "$tree"); left of the 64 MiB: $(mib $((limit - carry - tree)))"
fits() { # FOLDER...: each fits beside the working tree in one call
    local part size
    for part in "$@"; do
        size=$(du -cb "$part"/* | tail -1 | cut -f1)
        echo "$part: $(mib "$size"); left of the 64 MiB beside the tree: $(mib $((limit - size - tree)))"
        [ $((size + tree)) -lt $limit ] || { echo "error: $part does not fit beside the working tree" >&2 && exit 1; }
    done
}
case ${SPLIT:-0} in
0) ;;
1)
    rm -rf "$CARRY-part1" "$CARRY-part2" && mkdir -p "$CARRY-part1" "$CARRY-part2"
    ln "$CARRY/inception_fp16.pt.xz" "$CARRY/site.tar.xz" "$CARRY-part1/"
    ln "$CARRY/cifar10-train-jpeg.tar.xz" "$CARRY-part2/"
    fits "$CARRY-part1" "$CARRY-part2"
    echo "first call: STAGE_ONLY=1 CARRY_DIR=$CARRY-part1 (carry $CARRY-part1); then CARRY_DIR=$CARRY-part2"
    ;;
2) # the Inception in two pieces over two staging calls; device_session.sh joins them
    rm -rf "$CARRY-part1a" "$CARRY-part1b" "$CARRY-part2" && mkdir -p "$CARRY-part1a" "$CARRY-part1b" "$CARRY-part2"
    split -n 2 -d -a 1 "$CARRY/inception_fp16.pt.xz" "$CARRY-part1a/piece"
    mv "$CARRY-part1a/piece0" "$CARRY-part1a/inception_fp16.pt.xz.piece1of2"
    mv "$CARRY-part1a/piece1" "$CARRY-part1b/inception_fp16.pt.xz.piece2of2"
    ln "$CARRY/site.tar.xz" "$CARRY-part1a/"
    ln "$CARRY/cifar10-train-jpeg.tar.xz" "$CARRY-part2/"
    fits "$CARRY-part1a" "$CARRY-part1b" "$CARRY-part2"
    echo "staging calls: STAGE_ONLY=1 CARRY_DIR=$CARRY-part1a (carry $CARRY-part1a), then the same with $CARRY-part1b; then CARRY_DIR=$CARRY-part2"
    ;;
*) echo "SPLIT=$SPLIT: 0 (one folder), 1 (two: part1, part2) or 2 (three: part1a, part1b, part2)" >&2 && exit 2 ;;
esac
if [ "${SPLIT:-0}" = 0 ] && [ $((carry + tree)) -ge $limit ]; then
    echo "error: together $(mib $((carry + tree))), over a device call's 64 MiB: split the carry over two or three calls (SPLIT=1 or 2), move large untracked files out of the tree, or carry without cvxpy (WITH_NASH=0) when no Nash run is planned" >&2
    exit 1
fi
