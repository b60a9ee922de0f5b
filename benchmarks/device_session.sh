#!/usr/bin/env bash
# A session's GPU work for the reproduction study (issue 7) on a device machine: the same
# command in back-to-back calls of at most 10 minutes, until it prints "slice finished".
#
#   bash benchmarks/device_session.sh            # every call; BUDGET=seconds this call may use
#
# Each call: set up (idempotent), train/resume every group of runs (one group per GPU, the runs
# of a group side by side on that GPU) until the call's budget, then collect the result JSONs,
# the training summary, logs and metrics into $OUT/<stamp>.tar.gz. Run folders live in DEV_DIR
# (/tmp/antdiff_device_session) and survive between calls while the machine stays warm; every
# call bundles inside BUDGET, so a lost machine loses only the work since the last reply. Once a
# run of AFFINITY_RUNS is finished (checked right after its group's trainers are done) it
# computes its O1 affinity (EMA weights, AFFINITY_BINS bins, 1,000 images, exact mode).
#
# DETACH=1 keeps the trainers running *between* calls: the first call starts the work in a new
# process session (which outlives the call) with a fixed deadline, TRAIN_SECONDS after the first
# call began; every call, that one too, waits up to its BUDGET and bundles a snapshot of the
# results so far. No trainer restarts, recompiles or abandons an evaluation at a call boundary,
# and each reply brings what exists even if the machine is lost later. At the deadline (or
# before it, once a trainer's next evaluation cannot end in time) the trainers checkpoint and
# stop, and the affinity of each group's AFFINITY_RUNS is computed as soon as that group is
# done (latest checkpoint). Back-to-back calls keep the machine (it goes back 30 s after a call).
#
# Settings (environment):
#   RUN_GROUPS      space-separated groups, one per GPU, each a comma-separated list of run names of
#               `repro_cifar.py list SLICE` (default: the 2026-11-26 slice plus second seeds);
#               checked before anything starts: an unknown name is an error, not a lost session
#   SLICE       the grid the names come from: phase1 (default) or phase2, with LOSS (eps or hybrid:
#               the Phase-2 grid is per loss) and, for its affinity-* cells, AFFINITY_MATRIX (the
#               fixed O1 matrix of protocol change 5, e.g. benchmarks/results/repro/phase2_affinity/
#               affinity-vanilla-eps-mean.npy; it travels with the working tree)
#   STEPS       iterations per run (4000); EVAL_EVERY (2000); EVAL_N (5000)
#   SETS        extra config overrides for every run, e.g. "train.compile=true"
#   THROUGHPUT  1: GPU 0 measures trainer throughput (eager and compiled) instead of a group
#   BUDGET      seconds this call may use (570)
#   SMOKE       1: a CPU dry run of this script's logic (digits, tiny UNet, a stand-in FID net)
#   DETACH      1: trainers outlive the call (above); TRAIN_SECONDS (1380) from the first call's
#               start to the deadline. The deadline is final (the machine goes away with the run
#               folders), so a trainer whose next evaluation cannot end before it stops at once
#               (`repro_cifar.py --deadline-is-final`): its card goes to the O1 matrices sooner
#   AFFINITY_RUNS  runs whose O1 affinity is computed at the end ("vanilla-eps-s0 vanilla-hybrid-s0";
#               set and empty: none)
#   AFFINITY_BINS  uniform timestep bins of the O1 matrix (100: the protocol's 10-step bins)
#   AFFINITY_DRAWS measurement draws (images, timesteps, noise: `antdiff affinity --seed`) per
#               matrix ("0"); draw d > 0 of run r goes to results/affinity-r-draw<d>, so two
#               draws of one checkpoint tell the measurement's share of a matrix's pattern
#   AFFINITY_SPLIT_HALF  1 (default; set and empty: off): each matrix also gets its split-half
#               reliability (`antdiff affinity --split-half`: the same matrix, no extra gradient
#               passes; 8 GiB of stored gradients so that 100 bins of this model need no more
#               passes than without it)
#   AFFINITY_CARDS the card (group index) of each matrix, in the order of AFFINITY_RUNS x
#               AFFINITY_DRAWS (default: the k-th on card k mod the number of groups), e.g. "0 0"
#               to keep both draws off a card whose trainer is still running
#   NTG_JOINTS  O2: runs of RUN_GROUPS whose negative transfer gap is measured (none). Beside them
#               the 5 equal-interval specialists are trained from the first joint's config (same
#               model, loss, data and STEPS; no balancer, so they serve every joint), on
#               NTG_DEVICES (GPU indices, "0 1 2 3"), NTG_PER_DEVICE (1) each, seeds NTG_SEEDS
#               ("0,1"); once joints and specialists reached STEPS, `antdiff ntg` measures every
#               FID (n = EVAL_N, sampling seeds NTG_SAMPLE_SEEDS, "0"), sharded over the GPUs.
#               STEPS must be reachable (not a time-limited slice).
#   CARRY_DIR   the carried folder of this call (.carry/gpu): its site.tar.xz (or wheels), the fp16
#               Inception and the data are added to DEV_DIR and stay there for the later calls
#   STAGE_ONLY  1: only add CARRY_DIR's files to DEV_DIR and stop (seconds). When the working tree
#               and the whole carry exceed a call's 64 MiB, `SPLIT=1 prepare_carry.sh` makes two
#               folders: a first call `STAGE_ONLY=1 CARRY_DIR=.carry/gpu-part1` (Inception and
#               packages), then the session's calls with CARRY_DIR=.carry/gpu-part2 (the data).
#               When even part 1 no longer fits beside the tree, `SPLIT=2` cuts the Inception in
#               two pieces: staging calls with .carry/gpu-part1a, then -part1b (the second piece),
#               then CARRY_DIR=.carry/gpu-part2; the pieces are joined once both are staged
#   DEV_DIR     where runs, results and logs live (/tmp/antdiff_device_session)
#   BUNDLE_TAG  a word in the bundle's name ($OUT/session_<tag>-<stamp>.tar.gz). Two slices in one
#               session (e.g. Phase 1 on two cards, Phase 2 on the other two) are two instances
#               in one call, each with its own DEV_DIR, BUNDLE_TAG and CUDA_VISIBLE_DEVICES:
#                 ( CUDA_VISIBLE_DEVICES=0,1 DEV_DIR=/tmp/ds_a BUNDLE_TAG=a ... bash $0 ) &
#                 CUDA_VISIBLE_DEVICES=2,3 DEV_DIR=/tmp/ds_b BUNDLE_TAG=b ... bash $0; wait
#
# Needs, carried in .carry/gpu/ (benchmarks/prepare_carry.sh builds it): inception_fp16.pt.xz
# (antdiff stats --export-inception-fp16, xz-compressed to fit the 64 MiB carry limit),
# cifar10-train-jpeg.tar.xz and site.tar.xz, the packages the device image lacks (not needed
# with SMOKE=1).
set -uo pipefail
START=$SECONDS
T0=$(date +%s)
PY=${PYTHON:-python3}  # the interpreter (tests pass their own)
BUDGET=${BUDGET:-570}
STEPS=${STEPS:-4000}
EVAL_EVERY=${EVAL_EVERY:-2000}
EVAL_N=${EVAL_N:-5000}
SETS=${SETS:-}
SMOKE=${SMOKE:-}
STAGE_ONLY=${STAGE_ONLY:-}
DETACH=${DETACH:-}
TRAIN_SECONDS=${TRAIN_SECONDS:-1380}
AFFINITY_RUNS=${AFFINITY_RUNS-"vanilla-eps-s0 vanilla-hybrid-s0"} # set and empty: no O1
ROLE=${DS_ROLE:-call} # "work": the detached worker this script starts (DETACH=1)
AFFINITY_BINS=${AFFINITY_BINS:-100}
AFFINITY_DRAWS=${AFFINITY_DRAWS:-0}
AFFINITY_CARDS=${AFFINITY_CARDS:-}
AFFINITY_SPLIT_HALF=${AFFINITY_SPLIT_HALF-1}
NTG_JOINTS=${NTG_JOINTS:-}
NTG_DEVICES=${NTG_DEVICES:-"0 1 2 3"}
NTG_PER_DEVICE=${NTG_PER_DEVICE:-1}
NTG_SEEDS=${NTG_SEEDS:-"0,1"}
NTG_SAMPLE_SEEDS=${NTG_SAMPLE_SEEDS:-0}
RUN_GROUPS=${RUN_GROUPS:-"vanilla-eps-s0,timestep-uw-eps-s0 vanilla-hybrid-s0,timestep-uw-hybrid-s0 minsnr-eps-s0,p2-eps-s0 vanilla-eps-s1,timestep-uw-eps-s1"}
SLICE=${SLICE:-phase1}
LOSS=${LOSS:-}
AFFINITY_MATRIX=${AFFINITY_MATRIX:-}
read -r -a GROUP <<<"$RUN_GROUPS"
C=${CARRY_DIR:-.carry/gpu}
# Outside the working tree: a git-ignored folder in the repository root (.dev/) was gone at the
# next call on the same warm machine, twice; /tmp kept its files between calls.
D=${DEV_DIR:-/tmp/antdiff_device_session}
mkdir -p "$D" && D=$(cd "$D" && pwd) # absolute: the work may live outside the working tree
OUT=${OUT:-$D/out}
mkdir -p "$D/results" "$D/logs" "$OUT"
say() { echo "[device_session $(date +%H:%M:%S) +$((SECONDS - START))s] $*"; }
left() { # seconds of training left: this call's (90 s kept for the stop and the bundling), or
    local l # with DETACH=1 the session's, up to the deadline
    if [ -n "$DETACH" ]; then l=$(($(cat "$D/deadline") - $(date +%s))); else
        l=$((BUDGET - 90 - (SECONDS - START)))
    fi
    echo $((l > 20 ? l : 20))
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The slice's grid: every run name must be in it, checked before anything trains.
SLICE_ARGS=("$SLICE")
case $SLICE in
phase1) ;;
phase2)
    case $LOSS in
    eps | hybrid) ;;
    *) echo "SLICE=phase2 needs LOSS=eps or LOSS=hybrid (the Phase-2 grid is per loss)" >&2 && exit 2 ;;
    esac
    ;;
*) echo "SLICE=$SLICE: phase1 or phase2" >&2 && exit 2 ;;
esac
[ -n "$LOSS" ] && SLICE_ARGS+=(--loss "$LOSS")
if [ -n "$AFFINITY_MATRIX" ]; then
    [ -f "$AFFINITY_MATRIX" ] || {
        echo "AFFINITY_MATRIX=$AFFINITY_MATRIX is not a file (the O1 matrix of the affinity cells)" >&2
        exit 2
    }
    SLICE_ARGS+=(--affinity "$(cd "$(dirname "$AFFINITY_MATRIX")" && pwd)/$(basename "$AFFINITY_MATRIX")")
fi
KNOWN=$("$PY" benchmarks/repro_cifar.py list "${SLICE_ARGS[@]}" | cut -d' ' -f1) || exit 2
for r in ${RUN_GROUPS//,/ }; do
    grep -qx -- "$r" <<<"$KNOWN" || {
        echo "run $r is not in slice $SLICE${LOSS:+ (loss $LOSS)}: see benchmarks/repro_cifar.py list ${SLICE_ARGS[*]:0:3}" >&2
        exit 2
    }
    case $r in
    affinity-*) [ -n "$AFFINITY_MATRIX" ] || {
        echo "run $r clusters by task affinity: set AFFINITY_MATRIX (protocol change 5's matrix)" >&2
        exit 2
    } ;;
    esac
done
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -n "$SMOKE" ]; then
    export PYTHONPATH=$PWD/src
    DATA=digits
    REF=$D/smoke_ref.npz
    INCEPTION=$D/smoke_net.pt
    [ -f "$REF" ] || "$PY" - "$REF" "$INCEPTION" <<'EOF' || exit 1
import sys, torch
from antdiff.data import load_images_uint8
from antdiff.evaluation import InceptionFeatures, compute_reference_stats
class Net(torch.nn.Module):  # a stand-in with the FID network's interface (RGB -> features)
    def __init__(self):
        super().__init__(); self.conv = torch.nn.Conv2d(3, 6, kernel_size=23, stride=23)
    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))
torch.manual_seed(0)
torch.jit.save(torch.jit.trace(Net().eval(), torch.zeros(1, 3, 299, 299)), sys.argv[2])
real = load_images_uint8("digits", 40, resolution=8, channels=3)
compute_reference_stats(real, InceptionFeatures.from_path(sys.argv[2], device="cpu"),
                        dataset="digits").save(sys.argv[1])
EOF
    device() { echo cpu; }
    EXTRA=(--smoke)
else
    # Whatever this call carried is added to $D (site.tar.xz unpacked, wheels installed into
    # $D/site), so a later call's carry folder (CARRY_DIR) can add what did not fit the first.
    if [ -f "$C/site.tar.xz" ] && ! cmp -s "$C/site.tar.xz" "$D/site.tar.xz"; then
        mkdir -p "$D/site" && tar -xJf "$C/site.tar.xz" -C "$D/site" && cp "$C/site.tar.xz" "$D/" ||
            exit 1
    fi
    for w in "$C"/*.whl; do
        [ -f "$w" ] || continue
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$D/site" "$w" || exit 1
    done
    export PYTHONPATH=$D/site:$PWD/src
    # The Inception may come whole or in pieces over several staging calls (prepare_carry.sh
    # SPLIT=2: inception_fp16.pt.xz.piece<i>of<n>); the pieces wait in $D until all n are there.
    for f in "$C"/inception_fp16.pt.xz.piece*of*; do
        [ -f "$f" ] && [ ! -f "$D/inception_fp16.pt" ] && { cp "$f" "$D/" || exit 1; }
    done
    pieces_missing=""
    if [ ! -f "$D/inception_fp16.pt" ] && [ -f "$C/inception_fp16.pt.xz" ]; then
        xz -dc "$C/inception_fp16.pt.xz" >"$D/inception_fp16.pt.part" &&
            mv "$D/inception_fp16.pt.part" "$D/inception_fp16.pt"
    elif [ ! -f "$D/inception_fp16.pt" ] && compgen -G "$D/inception_fp16.pt.xz.piece*of*" >/dev/null; then
        first=$(compgen -G "$D/inception_fp16.pt.xz.piece*of*" | head -1)
        n=${first##*of}
        case $n in '' | 0 | *[!0-9]*)
            echo "$first: not a piece name inception_fp16.pt.xz.piece<i>of<n> (prepare_carry.sh SPLIT=2)" >&2
            exit 1
            ;;
        esac
        ordered=()
        for i in $(seq 1 "$n"); do
            if [ -f "$D/inception_fp16.pt.xz.piece${i}of$n" ]; then
                ordered+=("$D/inception_fp16.pt.xz.piece${i}of$n")
            else
                pieces_missing+=" $i"
            fi
        done
        if [ -z "$pieces_missing" ]; then # xz's own check refuses a wrong or partial stream
            cat "${ordered[@]}" | xz -dc >"$D/inception_fp16.pt.part" &&
                mv "$D/inception_fp16.pt.part" "$D/inception_fp16.pt" && rm -f "${ordered[@]}" || {
                rm -f "$D/inception_fp16.pt.part"
                echo "the Inception's $n pieces in $D do not decompress: rebuild them (prepare_carry.sh SPLIT=2) and stage them again" >&2
                exit 1
            }
        else
            pieces_missing="piece(s)$pieces_missing of $n"
        fi
    fi
    [ -f "$D/cifar10-train-jpeg.tar.xz" ] || cp "$C/cifar10-train-jpeg.tar.xz" "$D/" 2>/dev/null
    if [ -n "$STAGE_ONLY" ]; then # a carry too large for one call (prepare_carry.sh SPLIT=1 or 2)
        say "staged in $D:$(for f in inception_fp16.pt cifar10-train-jpeg.tar.xz site.tar.xz; do
            [ -f "$D/$f" ] && printf ' %s' "$f"; done)${pieces_missing:+; the Inception still lacks $pieces_missing}; nothing else done"
        exit 0
    fi
    for f in "$D/inception_fp16.pt" "$D/cifar10-train-jpeg.tar.xz"; do
        [ -f "$f" ] || {
            echo "missing $f: carry it in $C (see the header)${pieces_missing:+; the Inception lacks $pieces_missing: stage it with STAGE_ONLY=1}" >&2
            exit 1
        }
    done
    INCEPTION=$D/inception_fp16.pt
    DATA=$D/cifar10-train-jpeg.tar.xz
    REF=$D/cifar10_train_ref.npz
    if [ "$ROLE" = call ]; then
        nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
        if ! "$PY" -c "import cvxpy; print('cvxpy', cvxpy.__version__, cvxpy.installed_solvers())" 2>/dev/null; then
            echo "cvxpy: not in this carry (fine unless a run uses NashMTL)"
            case $RUN_GROUPS in # the protocol's NashMTL solves with cvxpy, not the Newton fallback
            *nash*) echo "cvxpy does not import: rebuild .carry/gpu (prepare_carry.sh)" >&2 && exit 1 ;;
            esac
        fi
    fi
    if [ ! -f "$REF" ]; then
        say "reference statistics of CIFAR-10 train (50k)"
        "$PY" -m antdiff.cli stats "$DATA" --out "$REF" --device cuda:0 \
            --inception "$INCEPTION" || exit 1
    fi
    device() { echo "cuda:$1"; }
    EXTRA=()
fi
export ANTDIFF_INCEPTION=$INCEPTION
# What the session ran on (cards, versions, commit, source digest), once: NTG and O1 results
# have no result file of their own that names the card.
if [ "$ROLE" = call ] && [ ! -f "$D/results/environment.json" ]; then
    "$PY" benchmarks/repro_cifar.py environment --results "$D/results" >/dev/null ||
        say "warning: environment.json not written"
fi
read -r -a SET_ARGS <<<"$SETS"
[ ${#SET_ARGS[@]} -gt 0 ] && EXTRA+=(--set "${SET_ARGS[@]}")

repro() { # DEVICE RUNS
    "$PY" benchmarks/repro_cifar.py train "${SLICE_ARGS[@]}" --only "$2" --devices "$1" --per-device 8 \
        --data "$DATA" --ref "$REF" --inception "$INCEPTION" --steps "$STEPS" \
        --eval-every "$EVAL_EVERY" --eval-n "$EVAL_N" --root "$D/repro" --results "$D/results" \
        --time-limit "$(left)" ${DETACH:+--deadline-is-final} "${EXTRA[@]}" \
        >>"$D/logs/repro_${1//:/}.log" 2>&1
}
ntg() { # the O2 command of this script's settings; extra arguments follow
    "$PY" -m antdiff.cli ntg --intervals uniform:5 --inception "$INCEPTION" "$@"
}
specialists_finished() { # exit 0 when every specialist (5 intervals x NTG_SEEDS) reached STEPS
    "$PY" -c "import glob, sys; from antdiff.analysis.ntg_pipeline import run_finished; \
runs = glob.glob('$D/ntg/specialists/*/'); want = 5 * len('$NTG_SEEDS'.split(',')); \
sys.exit(0 if len(runs) == want and all(run_finished(r, $STEPS) for r in runs) else 1)"
}
finished() { # RUN [RUN ...]: exit 0 when every run reached STEPS and owes no evaluation (one
    # interpreter for all: each start imports torch, ~5 s, which once delayed the O1 by ~45 s)
    "$PY" - "$D/repro" "$STEPS" "$@" <<'PYEOF'
import sys
from antdiff.analysis.ntg_pipeline import run_finished
root, steps, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
sys.exit(0 if all(run_finished(f"{root}/{r}", steps) for r in runs) else 1)
PYEOF
}

o1() { # RUN DRAW CARD: one O1 matrix of RUN's EMA weights (unless it is there already)
    local name=affinity-$1$([ "$2" = 0 ] || echo "-draw$2") images=1000
    [ -d "$D/repro/$1" ] && [ ! -f "$D/results/$name/affinity.npy" ] || return 0
    # a run stopped before its first evaluation is not the model the O1 was planned for (slice 8
    # spent two cards' 225 s on a 196-step model): no matrix of it, and the log says so
    local ckpt step first=$STEPS
    [ "$EVAL_EVERY" -gt 0 ] && [ "$EVAL_EVERY" -lt "$STEPS" ] && first=$EVAL_EVERY
    ckpt=$(ls "$D/repro/$1/checkpoints/" 2>/dev/null | grep -E '^step_[0-9]+\.pt$' | sort | tail -n 1)
    step=$((10#$(echo "${ckpt:-step_0}" | tr -cd 0-9)))
    if [ "$step" -lt "$first" ]; then
        say "O1: $1 stopped at step $step, before its first evaluation ($first): no matrix of it"
        return 0
    fi
    [ -n "$SMOKE" ] && images=20
    say "O1: affinity of $1, draw $2 (EMA weights, $AFFINITY_BINS bins, $images images, card $3)"
    "$PY" -m antdiff.cli affinity "$D/repro/$1" --out "$D/results/$name" --seed "$2" \
        --ema --bins "$AFFINITY_BINS" --images "$images" --mode exact --device "$(device "$3")" \
        ${AFFINITY_SPLIT_HALF:+--split-half --max-memory-gb 8} \
        >"$D/logs/${name/affinity-/affinity_}.log" 2>&1
}
o1_matrices() { # [GROUP-INDEX]: the O1 matrices (of that group's runs only), all at once; the
    # k-th of AFFINITY_RUNS x AFFINITY_DRAWS goes to the k-th card of AFFINITY_CARDS, else to
    # card k mod (number of groups). A run's matrices start once it is finished, or (DETACH)
    # once its trainer stopped at the deadline.
    local r d k=0 pids=() cards
    read -r -a cards <<<"$AFFINITY_CARDS"
    for r in $AFFINITY_RUNS; do
        for d in $AFFINITY_DRAWS; do
            if { [ -z "${1:-}" ] || [[ ",${GROUP[$1]}," == *",$r,"* ]]; } &&
                { [ -n "$DETACH" ] || finished "$r"; }; then
                o1 "$r" "$d" "${cards[$k]:-$((k % ${#GROUP[@]}))}" &
                pids+=($!)
            fi
            k=$((k + 1))
        done
    done
    [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
}

work() {
    # this instance's first card (not the host's card 0 when CUDA_VISIBLE_DEVICES names others)
    local pids=() first=0 CARD0
    CARD0=$(echo "${CUDA_VISIBLE_DEVICES:-0}" | cut -d, -f1)
    if [ -n "${THROUGHPUT:-}" ] && [ -z "$SMOKE" ] && [ ! -f "$D/results/throughput.done" ]; then
        first=1
        (
            CUDA_VISIBLE_DEVICES=$CARD0 "$PY" benchmarks/train_throughput.py --data "$DATA" \
                --seconds 40 --variants vanilla,ant_uw,ant_pcgrad --out "$D/results" --tag eager \
                >"$D/logs/throughput_eager.log" 2>&1
            for v in vanilla ant_uw; do
                CUDA_VISIBLE_DEVICES=$CARD0 timeout 210 "$PY" benchmarks/train_throughput.py \
                    --data "$DATA" --skip-plain --steps 600 --warmup 200 --compile --variants $v \
                    --out "$D/results" --tag "compiled_$v" >"$D/logs/throughput_$v.log" 2>&1
            done
            touch "$D/results/throughput.done"
        ) &
        pids+=($!)
    fi
    local i
    for i in "${!GROUP[@]}"; do
        # a group's O1 matrices start as soon as its trainers are done, not after every group's
        { repro "$(device $((i + first)))" "${GROUP[$i]}"; o1_matrices "$i"; } &
        pids+=($!)
    done
    local joint0=${NTG_JOINTS%% *} devs=() k
    if [ -n "$NTG_JOINTS" ]; then # O2 specialists beside the joint runs (their config: the first's)
        for k in $NTG_DEVICES; do devs+=("$(device "$k")"); done
        local cfg=$D/repro/configs/$joint0.yaml
        while [ ! -f "$cfg" ] && [ "$(left)" -gt 20 ]; do sleep 1; done
        say "O2: specialists of $joint0 (seeds $NTG_SEEDS) on ${devs[*]}"
        ntg --joint "$cfg" --train-specialists --train-only --specialist-seeds "$NTG_SEEDS" \
            --devices "$(echo "${devs[*]}" | tr ' ' ,)" --per-device "$NTG_PER_DEVICE" \
            --time-limit "$(left)" --out "$D/ntg" >>"$D/logs/ntg_train.log" 2>&1 &
        pids+=($!)
    fi
    [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
    if [ -n "$NTG_JOINTS" ] && specialists_finished; then
        local j ok=1
        # shellcheck disable=SC2086 # a list of names
        finished $NTG_JOINTS || ok=0
        if [ $ok = 1 ]; then # every FID of every joint, sharded over the GPUs, then the tables
            local prec=(--precision bf16) specs=("$D"/ntg/specialists/*/)
            # the smoke runs sample with 2 steps, which would skip intervals
            [ -n "$SMOKE" ] && prec=(--precision fp32 --steps 10)
            pids=()
            for j in $NTG_JOINTS; do
                [ -f "$D/results/ntg-$j/ntg.json" ] && continue
                say "O2: NTG of $j (n = $EVAL_N, sampling seeds $NTG_SAMPLE_SEEDS)"
                for k in "${!devs[@]}"; do
                    ntg --joint "$D/repro/$j" --specialists "${specs[@]}" --ref "$REF" \
                        --n "$EVAL_N" --seeds "$NTG_SAMPLE_SEEDS" "${prec[@]}" \
                        --device "${devs[$k]}" --shard "$k/${#devs[@]}" \
                        --out "$D/results/ntg-$j" >>"$D/logs/ntg_$j.log" 2>&1 &
                    pids+=($!)
                done
            done
            [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
        fi
    fi
    local all=1 r
    # shellcheck disable=SC2046 # a list of names
    finished $(echo "$RUN_GROUPS" | tr ' ,' '\n\n') || all=0
    # whatever matrix is still missing (a failed one, or a run finished by an earlier call)
    o1_matrices
    for r in $NTG_JOINTS; do [ -f "$D/results/ntg-$r/ntg.json" ] || all=0; done
    [ $all = 1 ] && touch "$D/results/slice.finished"
    return 0
}

if [ "$ROLE" = work ]; then # the detached worker (DETACH=1): train to the deadline, then exit
    echo $$ >"$D/work.pid"
    work
    touch "$D/work.done"
    say "work done"
    exit 0
fi
# The work runs in the background so that the results are bundled inside BUDGET whatever
# happens: nothing is lost to the device call's hard limit.
if [ -n "$DETACH" ]; then
    [ -f "$D/deadline" ] || echo $((T0 + TRAIN_SECONDS)) >"$D/deadline"
    if [ ! -f "$D/work.done" ] && ! alive "$D/work.pid"; then
        rm -f "$D/work.pid"
        DS_ROLE=work setsid bash "$0" </dev/null >>"$D/logs/work.log" 2>&1 &
        while [ ! -f "$D/work.pid" ] && [ $((SECONDS - START)) -lt 60 ]; do sleep 0.2; done
        say "detached work started (deadline $(date -d @"$(cat "$D/deadline")" +%H:%M:%S))"
    fi
    body=$(cat "$D/work.pid" 2>/dev/null)
else
    work &
    body=$!
fi
running() { [ -n "$body" ] && kill -0 "$body" 2>/dev/null; }
while running && [ $((SECONDS - START)) -lt $((BUDGET - 45)) ]; do sleep 2; done
running && say "budget reached: bundling while the work is still running"
say "collect and bundle"
if [ -z "$SMOKE" ]; then
    # what every card of the host is doing now (all cards, not only this instance's): the tenth
    # session's trainers all landed on card 0 while cards 2 and 3 stood idle, unseen for 30 min
    {
        echo "# $(date -u +%FT%TZ) ${BUNDLE_TAG:-} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"
        env -u CUDA_VISIBLE_DEVICES nvidia-smi --query-gpu=index,utilization.gpu,memory.used \
            --format=csv,noheader
    } 2>&1 | tee -a "$D/results/cards.log"
fi
"$PY" benchmarks/repro_cifar.py collect "${SLICE_ARGS[@]}" --root "$D/repro" --results "$D/results" \
    >>"$D/logs/collect.log" 2>&1
"$PY" benchmarks/repro_cifar.py summary --root "$D/repro" --results "$D/results" \
    >>"$D/logs/collect.log" 2>&1
for f in "$D"/logs/repro_*.log; do [ -f "$f" ] && tail -n 4 "$f"; done
# While the detached work runs: what the final deadline's projection makes of each run now (the
# seventeenth session killed its supervisors on a guessed evaluation time that this table, made
# from the same logs, would have shown to be harmless).
if [ -n "$DETACH" ] && [ ! -f "$D/work.done" ] && [ -f "$D/deadline" ]; then
    "$PY" benchmarks/repro_cifar.py project --root "$D/repro" --logs "$D/logs" \
        --deadline "$(cat "$D/deadline")" 2>&1 | tee "$D/results/projection.md"
fi
for r in "$D"/repro/*/; do
    [ -f "$r/metrics.jsonl" ] || continue
    n=$(basename "$r")
    mkdir -p "$D/results/runs/$n"
    cp "$r"/metrics.jsonl "$r"/config.yaml "$r"/clusters.json "$D/results/runs/$n/" 2>/dev/null
    tail -n 40 "$r/train.log" >"$D/results/runs/$n/train.log.tail" 2>/dev/null
    # the newest sample grid (EMA weights), to look at next to the FID
    grid=$(ls "$r"/samples/*.png 2>/dev/null | sort | tail -n 1)
    [ -n "$grid" ] && cp "$grid" "$D/results/runs/$n/"
done
cp "$D"/logs/*.log "$D/results/" 2>/dev/null
stamp=${BUNDLE_TAG:+$BUNDLE_TAG-}$(date +%H%M%S)
tar -czf "$OUT/session_$stamp.tar.gz" -C "$D" results
[ -f "$D/results/slice.finished" ] && say "slice finished"
[ -n "$DETACH" ] && [ -f "$D/work.done" ] && say "detached work done"
say "done: $OUT/session_$stamp.tar.gz ($(du -h "$OUT/session_$stamp.tar.gz" | cut -f1))"
