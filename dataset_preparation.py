"""Prepare a video dataset for FedVSSL: frames, annotations and client partitions.

Examples
--------
``python dataset_preparation.py --dataset synthetic --data-dir data``
``python dataset_preparation.py --dataset ucf101 --data-dir data --num-clients 5``
``python dataset_preparation.py --dataset hmdb51 --data-dir data --raw hmdb51_org.rar``
``python dataset_preparation.py --dataset k400 --raw K400_DIR --data-dir data --workers 16``
``python dataset_preparation.py --dataset videos --raw DIR --data-dir data --partition-by folder``

Writes ``<data-dir>/<dataset>/zips/``, the annotation lists (``{train,test}_split_1.json``;
Kinetics-400: ``train.json``, ``val.json``; a folder of videos: ``train.json``) and
``annotations/client_distribution/client_dist{N}.json``; see ``fedvssl/data/preparation.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from fedvssl.data.errors import DataError
from fedvssl.data.extraction import DEFAULT_SHORT_SIDE
from fedvssl.data.kinetics import SCHEMES
from fedvssl.data.own_videos import PARTITION_BY
from fedvssl.data.preparation import DATASETS, prepare_dataset

DESCRIPTION = "Prepare a video dataset for FedVSSL: frames, annotations and client partitions."


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(prog="dataset_preparation.py", description=DESCRIPTION)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="default: data")
    parser.add_argument(
        "--raw", type=Path, help="local videos: a folder (flat or class folders) or the .rar"
    )
    parser.add_argument("--splits", type=Path, help="local split lists: a folder or the archive")
    parser.add_argument(
        "--num-clients",
        type=_positive_int,
        help="client partitions (default: 5; k400: 100; videos --partition-by folder: one per "
        "top-level folder)",
    )
    parser.add_argument("--seed", type=int, default=7, help="partition shuffle seed (default: 7)")
    parser.add_argument("--split", type=int, choices=(1, 2, 3), default=1, help="default: 1")
    parser.add_argument(
        "--short-side",
        type=_positive_int,
        help="resize frames to this short side (default: the size of the zips there, else "
        f"native; k400 and videos: {DEFAULT_SHORT_SIDE}, the largest scale of CtP's pre-training)",
    )
    parser.add_argument("--workers", type=_positive_int, help="processes (default: min(4, CPUs))")
    parser.add_argument(
        "--synthetic-scale",
        type=_positive_float,
        help="multiplier of the synthetic videos per class (default: the scale already there, "
        "else 1.0: 20 train + 8 test)",
    )
    parser.add_argument(
        "--synthetic-light-change",
        type=_non_negative_float,
        help="make the light of every synthetic scene change over its video: the largest change "
        "of log-brightness, e.g. 0.3 (default: the value already there, else 0: constant light)",
    )
    parser.add_argument(
        "--no-check-certificate",
        action="store_true",
        help="download without checking the server's TLS certificate",
    )
    parser.add_argument(
        "--annotations", type=Path, help="k400: the folder of its CSVs (default: RAW/annotations)"
    )
    parser.add_argument(
        "--scheme", choices=SCHEMES, default="noniid", help="k400 partitions (default: noniid)"
    )
    parser.add_argument(
        "--partitions",
        type=Path,
        help="k400: adopt the published client_dist{N}.json files of this folder",
    )
    parser.add_argument(
        "--alpha", type=_positive_float, default=0.5, help="k400 --scheme dirichlet (default: 0.5)"
    )
    parser.add_argument(
        "--partition-by",
        choices=PARTITION_BY,
        help="videos: one client per top-level folder (default: IID clients)",
    )
    parser.add_argument(
        "--no-disk-check",
        action="store_true",
        help="k400 and videos: start even when the projected frames exceed the free disk",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; return the exit status (2 on bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2, message already printed)
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    only = {"--annotations": ("k400", args.annotations), "--partitions": ("k400", args.partitions)}
    only["--partition-by"] = ("videos", args.partition_by)
    for option, (dataset, value) in only.items():
        if value is not None and args.dataset != dataset:
            print(
                f"{parser.prog}: error: {option} applies to --dataset {dataset} only",
                file=sys.stderr,
            )
            return 2
    try:
        report = prepare_dataset(
            args.dataset,
            args.data_dir,
            raw=args.raw,
            splits=args.splits,
            num_clients=args.num_clients,
            seed=args.seed,
            short_side=args.short_side,
            workers=args.workers,
            synthetic_scale=args.synthetic_scale,
            synthetic_light_change=args.synthetic_light_change,
            split=args.split,
            verify_tls=not args.no_check_certificate,
            progress=not args.quiet,
            annotations=args.annotations,
            scheme=args.scheme,
            partitions=args.partitions,
            alpha=args.alpha,
            partition_by=args.partition_by,
            disk_check=not args.no_disk_check,
        )
    except DataError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable --data-dir, a full disk: the file and the reason
        print(f"{parser.prog}: error: {err}; choose another --data-dir", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
