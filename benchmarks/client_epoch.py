"""One client's local CtP epoch end to end, to see whether the data pipeline keeps the model fed.

The client's own code path: :class:`CtP.datasets.CtPDataset` over frame zips with
:class:`CtP.ctp_augmentation.CtPAugmentation`, :func:`CtP.train.make_loader` (pinned memory on CUDA)
and :func:`CtP.train.train_one_epoch` (bf16 autocast and ``channels_last_3d`` inputs on CUDA,
unless ``--precision`` says otherwise). The model first takes a few untimed steps on random
clips (kernel selection, allocator), then each worker count gets a fresh loader and one timed
epoch. The loop's per-iteration log gives the time spent waiting for data (``data_time``): a
share near 0 means the GPU (or CPU) is the bottleneck, a large one that the loader is.

Each ``--augment`` path is timed with each worker count: ``cpu`` decodes and augments in the
workers (:class:`CtP.datasets.CtPDataset`), ``device`` has the workers read JPEG bytes and plan
the clips, and the training process decode and augment them on the device in batches
(:mod:`CtP.device_augmentation`). With ``--epochs N`` the loader is the client's lasting one
(persistent workers, :func:`CtP.train.make_loader` with a sampler), so epochs after the first
show what a round costs once the workers are up. The model alone (``model_only``: timed steps on
one random batch, no loader) gives the rate the epoch is compared with, in the same run.

    python -m benchmarks.client_epoch [--videos 40] [--frames 100] [--size 320 240] [--data DIR]
        [--dataset-root DIR [--annotations FILE]] [--repeat 1] [--workers 0] [--batch 4]
        [--augment cpu device] [--epochs 1] [--model-steps 10]
        [--width 16] [--crop-size 112] [--clip-len 16] [--precision bf16_cl] [--threads N]
        [--device cuda] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks import machine_info, pick_device, synchronize, write_report
from benchmarks.pipeline import add_input_arguments, open_input, repeat_to
from benchmarks.train_step import VARIANTS, random_batch
from CtP.ctp import CtP, build_ctp
from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import Annotation, CtPDataset, SkippingDataset, ZipFrameSource
from CtP.device_augmentation import DeviceAugmentation, PlannedClips, collate_planned
from CtP.train import build_optimizer, make_loader, train_one_epoch
from fedvssl.client_data import PartitionClips, RoundSampler

PRECISIONS = ("fp32", "bf16", "bf16_cl")


def warm_up(
    model: CtP, optimizer: torch.optim.Optimizer, args: argparse.Namespace, device: torch.device
) -> None:
    """Take ``args.warmup_steps`` untimed steps on random clips of the benchmark's shape."""
    variant = VARIANTS[args.precision]
    batch = random_batch(args.batch, args.clip_len, args.crop_size, device)
    loader = cast(DataLoader[dict[str, torch.Tensor]], [batch] * args.warmup_steps)
    train_one_epoch(
        model,
        loader,
        optimizer,
        device=device,
        bf16=variant.bf16,
        channels_last=variant.channels_last,
        progress=False,
    )
    synchronize(device)


def read_log(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-iteration ``time`` and ``data_time`` (seconds) of a log written with interval 1."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return np.array([x["time"] for x in lines]), np.array([x["data_time"] for x in lines])


def time_model(
    model: CtP, optimizer: torch.optim.Optimizer, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Time ``args.model_steps`` training steps on one random batch already on the device."""
    variant = VARIANTS[args.precision]
    batch = random_batch(args.batch, args.clip_len, args.crop_size, device)
    loader = cast(DataLoader[dict[str, torch.Tensor]], [batch] * args.model_steps)
    synchronize(device)
    result = train_one_epoch(
        model, loader, optimizer, device=device, bf16=variant.bf16,
        channels_last=variant.channels_last, progress=False,
    )  # fmt: skip
    synchronize(device)
    return {"steps": result.iterations, "clips_per_s": round(result.samples / result.seconds, 2)}


def time_epochs(
    model: CtP,
    optimizer: torch.optim.Optimizer,
    dataset: SkippingDataset,
    workers: int,
    args: argparse.Namespace,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Time ``args.epochs`` epochs through one lasting loader with ``workers`` processes.

    Returns
    -------
    list[dict]
        Per epoch: seconds, clips per second, the share of the loop spent waiting for data (with
        and without the first batch, which in the first epoch also waits for the workers to
        start) and the mean loss.
    """
    variant = VARIANTS[args.precision]
    on_device = isinstance(dataset, PlannedClips)
    sampler = RoundSampler()
    loader = make_loader(
        PartitionClips(lambda _: dataset), batch_size=args.batch, workers=workers, shuffle=False,
        pin_memory=device.type == "cuda", sampler=sampler,
        collate_fn=collate_planned if on_device else None,
    )  # fmt: skip
    prepare = (
        DeviceAugmentation(args.crop_size, device, variant.channels_last) if on_device else None
    )
    rows = []
    for epoch in range(args.epochs):
        sampler.start(0, epoch, len(dataset), args.seed + epoch)
        with tempfile.TemporaryDirectory(prefix="client_epoch_") as folder:
            log = Path(folder) / "epoch.log.json"
            result = train_one_epoch(
                model, loader, optimizer, device=device, bf16=variant.bf16,
                channels_last=variant.channels_last, log_path=log, log_interval=1,
                progress=False, prepare=prepare,
            )  # fmt: skip
            synchronize(device)
            step, wait = read_log(log)
        later = slice(1, None) if len(step) > 1 else slice(None)
        rows.append({
            "augment": "device" if on_device else "cpu",
            "workers": workers,
            "epoch": epoch + 1,
            "clips": result.samples,
            "iterations": result.iterations,
            "seconds": round(result.seconds, 3),
            "clips_per_s": round(result.samples / result.seconds, 2),
            "data_time_share": round(float(wait.sum() / step.sum()), 4),
            "data_time_share_after_first": round(float(wait[later].sum() / step[later].sum()), 4),
            "first_batch_wait_s": round(float(wait[0]), 3),
            "data_ms_mean": round(1e3 * float(wait.mean()), 3),
            "step_ms_mean": round(1e3 * float((step - wait).mean()), 3),
            "loss": round(result.loss, 5),
            "skipped_videos": result.skipped,
        })  # fmt: skip
    return rows


def build_dataset(
    root: Path, annotations: list[Annotation], augment: str, args: argparse.Namespace
) -> SkippingDataset:
    """Build the client's pretext dataset over the videos, repeated ``args.repeat`` times."""
    dataset = PlannedClips if augment == "device" else CtPDataset
    return dataset(
        repeat_to(annotations, len(annotations) * args.repeat),
        ZipFrameSource(root),
        CtPAugmentation(crop_size=args.crop_size),
        clip_len=args.clip_len,
        seed=args.seed,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.add_argument("--repeat", type=int, default=1, help="pass over the videos this often")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="loader processes")
    parser.add_argument("--augment", nargs="+", choices=("cpu", "device"), default=["cpu"],
                        help="where clips are decoded and augmented")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1, help="epochs per lasting loader")
    parser.add_argument("--model-steps", type=int, default=10, help="timed model-only steps")
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--width", type=int, default=16, help="backbone width (64: R3D-18)")
    parser.add_argument("--crop-size", type=int, default=112, help="clip side in pixels")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16_cl", help="CUDA only")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed random steps")
    parser.add_argument("--threads", type=int, help="torch threads here (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and shuffling seed")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    if min(args.repeat, args.batch, args.width, args.crop_size, args.warmup_steps, args.epochs,
           args.model_steps) < 1:  # fmt: skip
        parser.error("--repeat, --batch, --width, --crop-size, --warmup-steps, --epochs and "
                     "--model-steps must be >= 1")  # fmt: skip
    if min(args.workers) < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--workers must be >= 0 and --threads >= 1")
    if args.clip_len < 8 or args.clip_len % 8:
        parser.error("--clip-len must be a positive multiple of 8 (the backbone's stride)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON report."""
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type != "cuda":
        args.precision = "fp32"  # autocast and the layout apply on CUDA only
    with contextlib.ExitStack() as stack:
        root, annotations, described = open_input(args, stack)
        torch.manual_seed(args.seed)
        model = build_ctp(width=args.width, clip_len=args.clip_len).to(device)
        optimizer = build_optimizer(model)
        warm_up(model, optimizer, args, device)
        report: dict[str, Any] = {
            "benchmark": "client_epoch",
            "machine": machine_info(device),
            "input": described | {"videos": len(annotations), "repeat": args.repeat},
            "model": {"width": args.width, "clip_len": args.clip_len, "crop_size": args.crop_size},
            "batch": args.batch,
            "precision": args.precision,
            "iterations_per_epoch": math.ceil(len(annotations) * args.repeat / args.batch),
            "model_only": time_model(model, optimizer, args, device),
            "results": [],
        }
        for augment in args.augment:
            dataset = build_dataset(root, annotations, augment, args)
            for workers in args.workers:
                rows = time_epochs(model, optimizer, dataset, workers, args, device)
                model_rate = report["model_only"]["clips_per_s"]
                for row in rows:
                    row["of_model_only"] = round(row["clips_per_s"] / model_rate, 3)
                report["results"] += rows
                if args.output is not None:  # a run cut short keeps what it measured
                    write_report(report, args.output)
    if args.output is None:
        write_report(report, None)


if __name__ == "__main__":
    main()
