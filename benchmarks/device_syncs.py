r"""Host syncs and host-to-device copies per training step of a GPU client, counted on any machine.

A GPU runs ahead of the host only while the host does not wait for it: every ``.item()``,
``float()``, ``bool()`` of a device tensor, every blocking (or pageable) host-to-device copy makes
the host wait until the device has caught up, and the device then idles while the host prepares
the next step. This benchmark counts them for a client's training steps on the CUDA code path
(bf16 autocast, channels_last_3d, pinned memory, ``augment=device`` decoding and augmenting on
the device, or ``augment=cpu``), run under the test suite's pretend-CUDA harness
(``tests/pretend_cuda.py``: CPU tensors that report ``cuda:0`` and record what the host waits
for), so it needs no GPU. Per step it reports the host syncs and what caused them, the
host-to-device copies (bytes, pinned, non-blocking), the nvJPEG calls and any stream hazard; a
step that writes a log line (every ``--log-interval`` steps) may sync, the others should not.

The client code path is :func:`CtP.train.train_one_epoch` over the lasting loader of
:func:`fedvssl.client_data.round_loader` and :class:`CtP.device_augmentation.DeviceAugmentation`,
as :func:`fedvssl.local_training.train_locally` wires them, on a UCF-like set of frame zips
(``benchmarks.pipeline``'s, small by default) laid out as one client's partition.

    python -m benchmarks.device_syncs [--augment device cpu] [--batch 4] [--log-interval 5]
        [--videos 40 --frames 24 --size 96 72] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.utils.data import DataLoader

from benchmarks import machine_info, write_report
from benchmarks.client_round import lay_out_partitions
from benchmarks.pipeline import add_input_arguments, open_input
from CtP.device_augmentation import DeviceAugmentation
from CtP.recipe import CtPRecipe
from CtP.train import build_optimizer, train_one_epoch
from fedvssl.client_data import augments_on_device, round_loader
from fedvssl.local_training import cached_model
from fedvssl.settings import ClientSettings

if TYPE_CHECKING:
    from pretend_cuda import PretendCuda, Record

HARNESS = Path(__file__).resolve().parents[1] / "tests" / "pretend_cuda.py"
PARTITION = "annotations/client_distribution/client_dist{client}.json"


def load_harness() -> Any:
    """Import the test suite's pretend-CUDA harness from its file (``tests/`` is no package)."""
    if "pretend_cuda" in sys.modules:  # one harness per process: its tags are process-wide
        return sys.modules["pretend_cuda"]
    spec = importlib.util.spec_from_file_location("pretend_cuda", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class StepMarks:
    """A loader that cuts the harness's record at every batch: one record per training step.

    The step of batch ``k`` is everything from handing batch ``k`` to the loop to handing it
    batch ``k + 1`` (which includes fetching that batch); what happened before the first batch
    is left out, what happened after the last one is the epoch's end.
    """

    def __init__(self, loader: DataLoader[Any], harness: PretendCuda) -> None:
        self.loader, self.harness = loader, harness
        self.records: list[Record] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        first = True
        for batch in self.loader:
            kept = self.harness.reset()
            if not first:
                self.records.append(kept)
            first = False
            yield batch
        self.records.append(self.harness.reset())


def describe(record: Record, step: int, log_interval: int) -> dict[str, Any]:
    """One step's counts, JSON-ready."""
    h2d = record.h2d()
    return {
        "step": step,
        "log_line": step % log_interval == 0,
        "syncs": len(record.syncs),
        "sync_causes": dict(Counter(record.syncs)),
        "h2d_copies": len(h2d),
        "h2d_bytes": sum(c.nbytes for c in h2d),
        "h2d_pageable": sum(not c.pinned for c in h2d),
        "h2d_blocking": sum(not c.non_blocking for c in h2d),
        "nvjpeg_calls": len(record.decodes),  # each moves the batch's JPEG files over itself
        "h2d_transfers": len(h2d) + len(record.decodes),
        "hazards": record.hazards,
    }


def count_steps(harness: Any, settings: ClientSettings, log_interval: int) -> dict[str, Any]:
    """Run one epoch of one client under the harness; return its per-step counts."""
    with harness.PretendCuda() as cuda:
        device = torch.device("cuda")
        model = cached_model(settings.pretext, settings.width, settings.clip_len, device)
        torch.manual_seed(settings.seed)
        fresh = settings.pretext.build_model(width=settings.width, clip_len=settings.clip_len)
        model.load_state_dict(fresh.state_dict())
        optimizer = build_optimizer(model)
        loader, _ = round_loader(settings, 0, epoch=0, seed=settings.seed, device=device)
        on_device = augments_on_device(settings, device)
        prepare = DeviceAugmentation(settings.crop_size, device, True) if on_device else None
        marks = StepMarks(loader, cuda)
        result = train_one_epoch(
            model, cast(DataLoader[Any], marks), optimizer, device=device, bf16=True,
            channels_last=True, log_interval=log_interval, progress=False, prepare=prepare,
        )  # fmt: skip
        end = cuda.reset()
    steps = [describe(r, k, log_interval) for k, r in enumerate(marks.records, start=1)]
    quiet = [s for s in steps if not s["log_line"]]
    return {
        "augment": settings.augment,
        "steps": len(steps),
        "loss": round(result.loss, 4),
        "syncs_per_step_between_log_lines": max((s["syncs"] for s in quiet), default=0),
        "syncs_per_log_step": max((s["syncs"] for s in steps if s["log_line"]), default=0),
        "h2d_copies_per_step": max(s["h2d_copies"] for s in steps),
        "h2d_transfers_per_step": max(s["h2d_transfers"] for s in steps),  # with nvJPEG's
        "h2d_bytes_per_step": max(s["h2d_bytes"] for s in steps),
        "hazards": sum(len(s["hazards"]) for s in steps),
        "epoch_end_syncs": len(end.syncs),
        "per_step": steps,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.set_defaults(videos=40, frames=24, size=[96, 72])
    parser.add_argument(
        "--augment", nargs="+", choices=("cpu", "device"), default=["device", "cpu"]
    )
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--width", type=int, default=16, help="backbone width (64: R3D-18)")
    parser.add_argument("--crop-size", type=int, default=32, help="clip side in pixels")
    parser.add_argument("--clip-len", type=int, default=8, help="frames per clip")
    parser.add_argument("--log-interval", type=int, default=5, help="steps per log line")
    parser.add_argument("--workers", type=int, default=0, help="loader workers")
    parser.add_argument("--seed", type=int, default=0, help="sampling and shuffling seed")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    if min(args.batch, args.width, args.log_interval, args.videos) < 1 or args.workers < 0:
        parser.error("--batch, --width, --log-interval, --videos must be >= 1, --workers >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON report."""
    args = parse_args(argv)
    harness_module = load_harness()
    with contextlib.ExitStack() as stack:
        source, annotations, described = open_input(args, stack)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="device_syncs_")))
        lay_out_partitions(source, annotations, work / "data", 1, len(annotations))
        report: dict[str, Any] = {
            "benchmark": "device_syncs",
            "machine": machine_info(),
            "harness": "tests/pretend_cuda.py (CPU tensors reporting cuda:0)",
            "input": described | {"videos": len(annotations)},
            "batch": args.batch,
            "model": {"width": args.width, "clip_len": args.clip_len, "crop_size": args.crop_size},
            "recipe": "reference (hue/saturation 0.25, brightness and contrast 0.5)",
            "log_interval": args.log_interval,
            "workers": args.workers,
            "results": [],
        }
        for augment in args.augment:
            settings = ClientSettings(
                results_dir=str(work / "results"), dataset_root=str(work / "data"), frames="zip",
                zip_template="zips/{name}.zip", video_template="UCF101_raw/{video}.avi",
                partition_template=PARTITION, width=args.width, clip_len=args.clip_len,
                crop_size=args.crop_size, batch_size=args.batch, workers=args.workers,
                local_epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=40.0,
                seed=args.seed, bf16=True, channels_last=True, log_interval=args.log_interval,
                progress=False, num_threads=1, pretext=CtPRecipe(), augment=augment,
            )  # fmt: skip
            report["results"].append(count_steps(harness_module, settings, args.log_interval))
            if args.output is not None:
                write_report(report, args.output)
    if args.output is None:
        write_report(report, None)


if __name__ == "__main__":
    main()
