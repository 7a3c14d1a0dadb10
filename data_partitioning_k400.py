"""Partition a Kinetics-400 annotation list among federated clients.

Examples
--------
``python data_partitioning_k400.py --annotations train.txt --output parts --scheme noniid``
``python data_partitioning_k400.py --annotations train.json --output parts --scheme dirichlet
--alpha 0.5 --num-clients 50 --plot parts.png``

Schemes: ``noniid`` (the original: 100 clients in pairs sharing 8 classes, seeds 1234/4321),
``iid`` (seeded shuffle, contiguous slices) and ``dirichlet`` (per-class Dirichlet proportions).
Writes ``<output>/client_dist{N}.json`` and prints the videos and classes of every client.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from fedvssl.data.errors import DataError
from fedvssl.data.partitions import (
    load_annotation_list,
    partition_dirichlet,
    partition_iid,
    partition_noniid,
    summarise,
    write_client_lists,
)
from fedvssl.data.plots import plot_label_distribution

SCHEMES = ("noniid", "iid", "dirichlet")

DESCRIPTION = "Partition a Kinetics-400 annotation list among federated clients."


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(prog="data_partitioning_k400.py", description=DESCRIPTION)
    parser.add_argument(
        "--annotations", type=Path, required=True, help="'name label' text list or JSON list"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for client_dist*.json")
    parser.add_argument("--scheme", choices=SCHEMES, default="noniid", help="default: noniid")
    parser.add_argument("--num-clients", type=int, default=100, help="default: 100")
    parser.add_argument(
        "--classes-per-client", type=int, default=8, help="noniid only (default: 8)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="dirichlet only (default: 0.5)")
    parser.add_argument(
        "--seed", type=int, help="iid and dirichlet (default: 7); noniid uses seeds 1234/4321"
    )
    parser.add_argument("--plot", type=Path, help="save the label distribution as this PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the partition; return the exit status (2 on bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    try:
        items = load_annotation_list(args.annotations)
        if args.scheme == "noniid":
            if args.seed is not None:
                raise DataError("--seed does not apply to --scheme noniid (fixed seeds 1234/4321)")
            clients = partition_noniid(items, args.num_clients, args.classes_per_client)
        elif args.scheme == "iid":
            clients = partition_iid(items, args.num_clients, 7 if args.seed is None else args.seed)
        else:
            seed = 7 if args.seed is None else args.seed
            clients = partition_dirichlet(items, args.num_clients, args.alpha, seed)
        paths = write_client_lists(clients, args.output)
    except DataError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    for row in summarise(clients):
        print(f"client_dist{row.client}.json: {row.videos} videos, {row.classes} classes")
    unique = {r["name"] for records in clients for r in records}
    labels = {r["label"] for records in clients for r in records}
    print(
        f"{args.scheme}: {len(paths)} clients, {sum(len(c) for c in clients)} entries, "
        f"{len(unique)} unique videos of {len(items)}, {len(labels)} classes, in {args.output}"
    )
    if args.plot is not None:
        title = f"{args.annotations.name}: {args.scheme}, {len(clients)} clients"
        try:
            print(f"plot: {plot_label_distribution(clients, args.plot, title)}")
        except OSError as err:
            message = f"cannot write the plot {args.plot} ({err.strerror or err})"
            print(f"{parser.prog}: error: {message}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
