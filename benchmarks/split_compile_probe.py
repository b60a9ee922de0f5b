"""How often ``torch.compile`` compiles the model of a split-engine ANT run, padded or not.

The split engine calls the model once per cluster on that cluster's sub-batch. When the batch
is not a multiple of k, stratified sampling gives the clusters ⌊B/k⌋ or ⌈B/k⌉ samples (the
extra ones on random clusters each step), so a compiled model meets two batch sizes: dynamo
compiles it twice (the second time with a dynamic batch dimension), and CUDA graphs
(``train.compile_mode=reduce-overhead``) are recorded per size. ``ant.pad_split=true`` pads
every sub-batch to the step's largest, so the model meets one size.

Each variant trains a tiny UNet for ``--steps`` PCGrad steps (batch 13, k = 5: 2 or 3 samples a
cluster) in a fresh process, twice (the second run finds inductor's compile cache warm), and
prints the compiled frames and the wall time::

    python benchmarks/split_compile_probe.py            # CPU, about a minute
    python benchmarks/split_compile_probe.py --device cuda --compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, tempfile, torch
import torch._dynamo.utils as du
from antdiff.training.config import load_config
from antdiff.training.trainer import train
a = json.loads(sys.argv[1])
cfg = load_config(None, [
    f"run.dir={tempfile.mkdtemp()}", "model.preset=unet-tiny", "data.resolution=8",
    f"optim.batch_size={a['batch']}", f"train.steps={a['steps']}", "train.ckpt_every=100000",
    "train.progress=false", "train.tensorboard=false", "train.sample_every=0", "train.sample_n=4",
    "sample.steps=2", f"train.device={a['device']}", "ant.enabled=true", "ant.balancer=pcgrad",
    "ant.k=5", "ant.engine=split", f"ant.pad_split={a['pad']}", "train.compile=true",
    f"train.compile_mode={a['mode']}",
])
t0 = time.perf_counter()
train(cfg, log=None)
print(json.dumps({"wall_s": time.perf_counter() - t0, "frames": du.counters["frames"]["total"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=13)
    args = ap.parse_args()
    print(
        f"split-engine PCGrad, tiny UNet, batch {args.batch}, k = 5, {args.steps} steps, "
        f"{args.device}, compile mode {args.compile_mode}"
    )
    for pad in ("false", "true"):
        for attempt in (1, 2):
            spec = {
                "batch": args.batch,
                "steps": args.steps,
                "device": args.device,
                "pad": pad,
                "mode": args.compile_mode,
            }
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                sys.exit(f"pad_split={pad}: the child failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"pad_split={pad:<5} run {attempt}: {r['frames']} compiled frame(s), "
                f"training {r['wall_s']:.1f} s (process {time.perf_counter() - t0:.1f} s)"
            )


if __name__ == "__main__":
    main()
