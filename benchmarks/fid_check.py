"""GPU check of antdiff's FID against the measured facts of the CIFAR-10 JPEG copy.

Reproduces, with antdiff's own library functions (those behind ``antdiff stats`` / ``antdiff
eval``):

* FID(test 10k, train 50k) = 3.114 (measured by the data set's maintainers on an H100);
* the floor of 10k train images against the train-50k statistics ≈ 2.08 (``subset`` floor), next
  to antdiff's default ``disjoint`` floor at n = 10k;
* the effect of the fp16 copy of the network (≈ 0.02 FID),

and prints the feature-extraction throughput (images/s) with the card's name. It writes the JSON
to ``$OUT/fid_check.json`` when ``$OUT`` is set. Runs in well under 4 minutes on one H100.

Usage (the archives are ``../shared/data/cifar10/*.tar.xz``; the fp32 network is 87.3 MB, so a
GPU machine that only receives 64 MiB gets the fp16 copy from ``antdiff stats
--export-inception-fp16``)::

    python benchmarks/fid_check.py --data-dir DIR [--inception PATH ...] [--batch-size 500]

``--inception`` may be repeated (default: the installed standard network). An fp32 network is
also run as an fp16 copy exported to a temporary folder (unless ``--no-fp16``); an fp16 file is
run twice on a GPU: in fp16 (as ``antdiff eval`` does) and upcast to fp32, which separates the
compute precision from the rounding of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antdiff.data import load_images_uint8
from antdiff.evaluation import (
    InceptionFeatures,
    compute_reference_stats,
    default_inception_path,
    evaluate_features,
    export_fp16_inception,
    real_floor,
)

TRAIN = "cifar10-train-jpeg.tar.xz"
TEST = "cifar10-test-jpeg.tar.xz"
EXPECTED = {"fid_test_vs_train50k": 3.114, "floor_subset_10k": 2.08, "fp16_change": 0.02}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_extractor(
    label: str,
    net: InceptionFeatures,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    net(train[: net.batch_size])  # warm-up: cuDNN algorithm selection, lazy CUDA init
    _sync(net.device)
    t0 = time.perf_counter()
    test_features = net(test)
    _sync(net.device)
    t_test = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = compute_reference_stats(
        train, net, max_features=train.shape[0], seed=seed, dataset="cifar10-train (JPEG copy)"
    )
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = evaluate_features(
        test_features,
        ref,
        extractor_info=net.describe(),
        metrics="fid,kid,pr",
        seed=seed,
        device=net.device,
    )
    subset = real_floor(ref, test.shape[0], method="subset", seed=seed)
    t_metrics = time.perf_counter() - t0
    desc = net.describe()
    return {
        "label": label,
        "extractor": {
            k: desc[k] for k in ("name", "format", "checksum", "file_sha256", "compute_dtype")
        },
        "fid_test_vs_train50k": result["fid"],
        "floor_subset_10k": subset.value,
        "floor_disjoint_10k": result["floor"],
        "floor_disjoint_n_ref": result["floor_n_ref"],
        "kid": result["kid"],
        "kid_std": result["kid_std"],
        "precision": result["precision"],
        "recall": result["recall"],
        "images_per_s_test_extraction": test.shape[0] / t_test,
        "images_per_s_reference_stats": train.shape[0] / t_ref,
        "seconds": {"test_features": t_test, "reference_stats": t_ref, "metrics": t_metrics},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help=f"folder holding {TRAIN} and {TEST}")
    parser.add_argument("--inception", action="append", default=None, metavar="PATH")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-fp16", action="store_true", help="do not also run an fp16 copy of an fp32 network"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="use only this many train/test images (smoke test)"
    )
    args = parser.parse_args(argv)

    data = Path(args.data_dir)
    for name in (TRAIN, TEST):
        if not (data / name).is_file():
            parser.error(f"{data / name} not found")

    t0 = time.perf_counter()
    train = load_images_uint8(str(data / TRAIN), n=args.limit, seed=args.seed)
    test = load_images_uint8(str(data / TEST), n=args.limit, seed=args.seed)
    t_decode = time.perf_counter() - t0
    print(f"decoded {train.shape} + {test.shape} in {t_decode:.1f} s", file=sys.stderr)

    tmp = tempfile.TemporaryDirectory()
    paths = [Path(p) for p in args.inception] if args.inception else [default_inception_path()]
    runs: list[tuple[str, InceptionFeatures]] = []
    for p in paths:
        net = InceptionFeatures.from_path(p, device=args.device, batch_size=args.batch_size)
        if net.format == "torchscript":
            runs.append(("fp32", net))
            if not args.no_fp16:  # also the fp16 copy (appended: this loop then runs it too)
                fp16_path = Path(tmp.name) / f"inception-fp16-{len(paths)}.pt"
                export_fp16_inception(fp16_path, src=p)
                paths.append(fp16_path)
        elif net.format == "torchscript-fp16":
            runs.append(("fp16 weights, fp16 compute" if net.compute_dtype == torch.float16
                         else "fp16 weights, fp32 compute (CPU)", net))  # fmt: skip
            if net.device.type == "cuda":
                runs.append((
                    "fp16 weights, fp32 compute",
                    InceptionFeatures.from_path(
                        p, device=args.device, batch_size=args.batch_size, force_fp32=True
                    ),
                ))  # fmt: skip
        else:
            runs.append((net.format, net))

    device = runs[0][1].device
    report: dict[str, Any] = {
        "card": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "decode_seconds": t_decode,
        "batch_size": args.batch_size,
        "expected": EXPECTED,
        "runs": [],
    }
    for label, net in runs:
        print(f"running {label} ({net.name}) on {net.device}", file=sys.stderr)
        report["runs"].append(check_extractor(label, net, train, test, args.seed))
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fids = {r["label"]: r["fid_test_vs_train50k"] for r in report["runs"]}
    if "fp32" in fids and "fp16 weights, fp16 compute" in fids:
        report["fp16_change"] = fids["fp16 weights, fp16 compute"] - fids["fp32"]
    if "fp16 weights, fp32 compute" in fids and "fp16 weights, fp16 compute" in fids:
        report["fp16_compute_change"] = (
            fids["fp16 weights, fp16 compute"] - fids["fp16 weights, fp32 compute"]
        )
    tmp.cleanup()

    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "fid_check.json"
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
