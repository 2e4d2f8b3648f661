"""Command line: ``python -m helpers.data {download,synthesize,prepare} DATASET ...``."""
from __future__ import annotations

import argparse
import sys

from .kaggle import DownloadError, download
from .prepared import prepare
from .specs import DATASETS, SPLITS
from .synthetic import synthesize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.data",
                                     description="Datasets: download, synthesize, prepare.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch a Kaggle dataset with kagglehub")
    d.add_argument("dataset", choices=list(DATASETS))
    d.add_argument("--to", default=None, help="folder to link/copy the download into")
    s = sub.add_parser("synthesize", help="write the synthetic phantoms in the Kaggle layout")
    s.add_argument("dataset", choices=list(DATASETS))
    s.add_argument("--n-per-class", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--root", default=None, help="default: data/synthetic/<dataset>")
    pr = sub.add_parser("prepare", help="decode, balance, split and cache a dataset")
    pr.add_argument("dataset", choices=list(DATASETS))
    pr.add_argument("--data-dir", default="", help="real data folder; empty = synthetic")
    pr.add_argument("--image-size", type=int, default=128)
    pr.add_argument("--no-balance", dest="balance", action="store_false")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out-dir", default="")
    pr.add_argument("--split", choices=SPLITS, default="random")
    pr.add_argument("--n-per-class", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            print(download(args.dataset, args.to))
        elif args.command == "synthesize":
            print(synthesize(args.dataset, args.root, args.n_per_class, args.seed))
        else:
            prepare(args.dataset, args.data_dir, args.image_size, args.balance, args.seed,
                    args.out_dir, args.split, args.n_per_class)
    except (DownloadError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
