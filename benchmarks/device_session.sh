#!/usr/bin/env bash
# One development session's GPU work on a 4-GPU machine, in two back-to-back calls of at most
# 10 minutes (run directories live in the git-ignored .dev/ and survive while the machine stays
# warm). Issue 4: trainer throughput against a plain diffusers loop, eager and torch.compile.
# Issue 7: a Phase-1 slice (docs/reproduction.md), two runs per GPU, resumed across calls.
#
#   bash benchmarks/device_session.sh call1|call2
#
# Needs, carried in .carry/gpu/: inception_fp16.pt.xz (antdiff stats --export-inception-fp16,
# xz-compressed to fit the 64 MiB carry limit), cifar10-train-jpeg.tar.xz and the wheels of
# diffusers, importlib_metadata and torchjd. Everything worth keeping is bundled into
# $OUT/<call>.tar.gz (result JSONs, metrics.jsonl, logs, affinity matrices).
set -uo pipefail
STAGE=${1:?call1 or call2}
case $STAGE in call1 | call2) ;; *) echo "unknown stage $STAGE: call1 or call2" >&2 && exit 2 ;; esac
START=$SECONDS
BUDGET=${BUDGET:-570}          # seconds this call may use before bundling its results
C=.carry/gpu
D=.dev
OUT=${OUT:-$D/out}
mkdir -p "$D/results" "$D/logs" "$OUT"
say() { echo "[device_session $(date +%H:%M:%S) +$((SECONDS - START))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$C"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ -f "$D/inception_fp16.pt" ] || xz -dc "$C/inception_fp16.pt.xz" >"$D/inception_fp16.pt"
[ -f "$D/cifar10-train-jpeg.tar.xz" ] || cp "$C/cifar10-train-jpeg.tar.xz" "$D/"
export ANTDIFF_INCEPTION=$PWD/$D/inception_fp16.pt
DATA=$D/cifar10-train-jpeg.tar.xz
REF=$D/cifar10_train_ref.npz
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
if [ ! -f "$REF" ]; then
    say "reference statistics of CIFAR-10 train (50k)"
    python3 -m antdiff.cli stats "$DATA" --out "$REF" --device cuda:0 || exit 1
fi

# The Phase-1 slice: pairs of runs per GPU, 4,000 iterations, FID/P/R (n = 5k) every 2,000.
PAIRS=("vanilla-eps-s0,timestep-uw-eps-s0" "vanilla-hybrid-s0,timestep-uw-hybrid-s0"
    "minsnr-eps-s0,p2-eps-s0")
repro() { # DEVICE ONLY STEPS TIME_LIMIT
    python3 benchmarks/repro_cifar.py train phase1 --only "$2" --devices "$1" --per-device 2 \
        --data "$DATA" --ref "$REF" --inception "$ANTDIFF_INCEPTION" --steps "$3" \
        --eval-every 2000 --eval-n 5000 --root "$D/repro" --results "$D/results" \
        --time-limit "$4" >>"$D/logs/repro_$1.log" 2>&1
}
left() { # seconds of training left this call; 90 s kept for the stop and the bundling
    local l=$((BUDGET - 90 - (SECONDS - START)))
    echo $((l > 20 ? l : 20))
}

work() {
pids=()
case $STAGE in
call1)
    for i in 0 1 2; do
        repro "cuda:$((i + 1))" "${PAIRS[$i]}" 4000 "$(left)" &
        pids+=($!)
    done
    if [ ! -f "$D/results/train_throughput_eager.json" ] && [ -z "${SKIP_EAGER:-}" ]; then
        say "GPU 0: throughput, eager (plain diffusers loop, vanilla, ANT-UW, ANT-PCGrad)"
        CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train_throughput.py --data "$DATA" \
            --seconds 40 --variants vanilla,ant_uw,ant_pcgrad --out "$D/results" --tag eager \
            >"$D/logs/throughput_eager.log" 2>&1
    fi
    for v in vanilla ant_uw; do
        say "GPU 0: throughput, train.compile=true ($v)"
        CUDA_VISIBLE_DEVICES=0 timeout 210 python3 benchmarks/train_throughput.py \
            --data "$DATA" --skip-plain --steps 600 --warmup 200 --compile --variants $v \
            --out "$D/results" --tag compiled_$v >"$D/logs/throughput_compiled_$v.log" 2>&1
    done
    ;;
call2)
    for i in 0 1 2; do
        repro "cuda:$((i + 1))" "${PAIRS[$i]}" 4000 "$(left)" &
        pids+=($!)
    done
    wait "${pids[@]}"
    pids=()
    say "O1: affinity of the vanilla runs' last checkpoints (EMA weights, 10 bins, 1,000 images)"
    for r in vanilla-eps-s0 vanilla-hybrid-s0; do
        dev=cuda:$([ $r = vanilla-eps-s0 ] && echo 0 || echo 1)
        python3 -m antdiff.cli affinity "$D/repro/$r" --out "$D/results/affinity-$r" --ema \
            --bins 10 --images 1000 --mode exact --device "$dev" >"$D/logs/affinity_$r.log" 2>&1 &
        pids+=($!)
    done
    ;;
esac
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
}

# The work runs in the background so that the results are bundled inside BUDGET whatever
# happens (a trainer caught in a long evaluation, a hung process): nothing is lost to the
# device call's hard limit, and run folders need not survive to the next call.
work &
body=$!
while kill -0 $body 2>/dev/null && [ $((SECONDS - START)) -lt $((BUDGET - 45)) ]; do sleep 2; done
kill -0 $body 2>/dev/null && say "budget reached: bundling while the work is still running"
say "collect and bundle"
python3 benchmarks/repro_cifar.py collect phase1 --root "$D/repro" --results "$D/results" \
    >>"$D/logs/collect.log" 2>&1
python3 benchmarks/repro_cifar.py summary --root "$D/repro" --results "$D/results" \
    >>"$D/logs/collect.log" 2>&1
for f in "$D"/logs/repro_*.log; do tail -n 5 "$f"; done
for r in "$D"/repro/*/; do
    [ -f "$r/metrics.jsonl" ] || continue
    n=$(basename "$r")
    mkdir -p "$D/results/runs/$n"
    cp "$r"/metrics.jsonl "$r"/config.yaml "$D/results/runs/$n/" 2>/dev/null
    cp "$r"/clusters.* "$D/results/runs/$n/" 2>/dev/null
    tail -n 40 "$r/train.log" >"$D/results/runs/$n/train.log.tail" 2>/dev/null
done
cp "$D"/logs/*.log "$D/results/" 2>/dev/null
tar -czf "$OUT/$STAGE.tar.gz" -C "$D" results
say "done: $(du -h "$OUT/$STAGE.tar.gz" | cut -f1)"
