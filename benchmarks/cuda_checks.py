r"""The checks of the GPU path that only a GPU can make (the pretend-CUDA harness cannot).

The test suite runs every CUDA branch on CPU tensors that report ``cuda:0``; what it cannot see
is what happens inside CUDA: nvJPEG's pixels, cuDNN's bf16 arithmetic, the synchronising calls
the CUDA runtime makes, the order of work between streams, ``torch.compile``'s CUDA code. On a
GPU this script checks them, each on its own and each reported even when another fails:

- ``nvjpeg``: ``decode_jpeg(..., device="cuda")`` against the CPU decoder on the input's JPEG
  frames (the largest and mean difference, the share of values more than one level apart), and
  the device path (:class:`CtP.device_augmentation.DeviceAugmentation`) against the CPU path
  (:class:`CtP.ctp_augmentation.CtPAugmentation`) on the same plans, with the CPU test's
  thresholds (median below 0.01 level, at most 3 % of values more than 1.5 levels apart);
- ``cudnn_step``: one CtP training step in float32 and in bf16 with channels_last_3d clips, from
  the same weights and batch: the losses' relative difference (below 2 %), finite gradients,
  the stem's output bf16 and channels_last_3d, the weights float32;
- ``syncs``: a client's training steps on the device path under
  ``torch.cuda.set_sync_debug_mode("warn")``: the synchronising calls per step (none expected
  between log lines);
- ``race``: pytorch/vision#9606's pattern, tensors read by kernels queued behind a long one and
  freed before a decode, then checked: with nvJPEG on a stream of its own (the package's way)
  and, as a control, on the training stream;
- ``compile``: a client's round (:func:`fedvssl.local_training.train_locally`) with
  ``compile=true`` against ``compile=false`` from the same start: the loss of each and the
  compiling round's extra seconds.

Without CUDA every check reports ``skipped``. Input: the UCF-like set of ``benchmarks.pipeline``
(``--data`` reuses one), as the other GPU benchmarks.

    python -m benchmarks.cuda_checks [--data DIR] [--checks nvjpeg cudnn_step syncs race compile]
        [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks import machine_info, write_report
from benchmarks.client_round import lay_out_partitions
from benchmarks.pipeline import add_input_arguments, open_input
from CtP.ctp_augmentation import ClipPlan, CtPAugmentation
from CtP.datasets import Annotation, ZipFrameSource, _decode_jpeg
from CtP.device_augmentation import (
    DeviceAugmentation,
    PlannedClips,
    collate_planned,
    decode_clips,
)
from CtP.recipe import CtPRecipe
from CtP.train import build_optimizer, train_one_epoch, training_loss
from CtP.transforms import IMAGENET_STD, normalize_clip
from fedvssl.client_data import round_loader
from fedvssl.local_training import train_locally
from fedvssl.settings import ClientSettings

CHECKS = ("nvjpeg", "cudnn_step", "syncs", "race", "compile")
PARTITION = "annotations/client_distribution/client_dist{client}.json"
LEVEL = 1 / (255 * min(IMAGENET_STD))  # one grey level in normalised units (at most)


def jpeg_frames(root: Path, items: list[Annotation], videos: int) -> list[list[torch.Tensor]]:
    """Return the first 8 JPEG frames of ``videos`` videos, as 1-D uint8 tensors."""
    source = ZipFrameSource(root)
    clips = [source.read_jpegs(a.name, _first_eight) for a in items[:videos]]
    return [[torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in clip] for clip in clips]


def _first_eight(num_frames: int) -> np.ndarray:
    return np.arange(min(8, num_frames))


def check_nvjpeg(root: Path, items: list[Annotation], device: torch.device) -> dict[str, Any]:
    """Compare nvJPEG with the CPU decoder, and the device path with the CPU path."""
    encoded = jpeg_frames(root, items, 4)
    decoded = decode_clips(encoded, device, torch.cuda.Stream(device))
    gaps = []
    for clip, jpegs in zip(decoded, encoded, strict=True):
        cpu = np.stack([_decode_jpeg(j.numpy().tobytes()) for j in jpegs])  # [T, H, W, 3]
        gaps.append(np.abs(clip.permute(0, 2, 3, 1).cpu().numpy().astype(int) - cpu))
    gap = np.concatenate([g.ravel() for g in gaps])
    augmentation = CtPAugmentation(crop_size=112, hue_sat_prob=0.5)
    planned = PlannedClips(items[:8], ZipFrameSource(root), augmentation, clip_len=16, seed=3)
    samples = [planned[i] for i in range(8)]
    device_clips = DeviceAugmentation(112, device)(collate_planned(samples))["imgs"].float().cpu()
    cpu_clips = []
    for sample in samples:  # the CPU path: its decoder, its augmentation, the same plan
        frames = np.stack([_decode_jpeg(f.numpy().tobytes()) for f in sample["frames"]])
        cpu_clips.append(normalize_clip(augmentation.apply(frames, cast(ClipPlan, sample["plan"]))))
    diff = (device_clips - torch.stack(cpu_clips)).abs() / LEVEL
    median, beyond = float(diff.median()), float((diff > 1.5).float().mean())
    return {
        "frames": int(sum(len(c) for c in encoded)),
        "decode_max_levels": int(gap.max()), "decode_mean_levels": round(float(gap.mean()), 4),
        "decode_share_beyond_1": round(float((gap > 1).mean()), 5),
        "device_path_median_levels": round(median, 4),
        "device_path_share_beyond_1_5": round(beyond, 5),
        "ok": median < 0.01 and beyond <= 0.03,
    }  # fmt: skip


def check_cudnn_step(device: torch.device) -> dict[str, Any]:
    """One CtP step in float32 and in bf16 + channels_last_3d, from the same weights and batch."""
    torch.manual_seed(0)
    reference = CtPRecipe().build_model(width=64, clip_len=16).to(device)
    imgs = torch.randn(8, 3, 16, 112, 112, device=device)
    corner = torch.randint(0, 40, (8, 3, 1, 2), device=device).float()  # boxes of 40 pixels
    drift = torch.arange(16, device=device, dtype=torch.float32).view(1, 1, 16, 1) * 2  # 2 px/frame
    gt_trajs = torch.cat([corner, corner + 40], dim=-1) + drift  # [8, 3, 16, 4], inside 112
    results: dict[str, dict[str, Any]] = {}
    for name, bf16 in (("fp32", False), ("bf16_cl", True)):
        model = CtPRecipe().build_model(width=64, clip_len=16).to(device)
        model.load_state_dict(reference.state_dict())
        stem = _watch(model.backbone.stem)
        x = imgs.contiguous(memory_format=torch.channels_last_3d) if bf16 else imgs
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = training_loss(model(x, gt_trajs))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        results[name] = {
            "loss": float(loss), "stem": stem,
            "grads_finite": bool(all(torch.isfinite(g).all() for g in grads)),
            "weights_float32": all(p.dtype == torch.float32 for p in model.parameters()),
        }  # fmt: skip
    fp32, bf16_cl = results["fp32"], results["bf16_cl"]
    gap = abs(bf16_cl["loss"] - fp32["loss"]) / abs(fp32["loss"])
    stem_ok = bf16_cl["stem"] == {"dtype": "torch.bfloat16", "channels_last": True}
    ok = gap < 0.02 and bf16_cl["grads_finite"] and bf16_cl["weights_float32"] and stem_ok
    return results | {"loss_relative_gap": round(gap, 5), "ok": ok}


def _watch(module: torch.nn.Module) -> dict[str, Any]:
    """Note the dtype and layout of ``module``'s output, at every forward pass."""
    seen: dict[str, Any] = {}

    def note(module: torch.nn.Module, inputs: Any, out: torch.Tensor) -> None:
        seen.update(
            dtype=str(out.dtype),
            channels_last=out.is_contiguous(memory_format=torch.channels_last_3d),
        )

    module.register_forward_hook(note)
    return seen


class _Steps:
    """A loader that notes how many warnings were raised by the time each batch is handed on."""

    def __init__(self, loader: DataLoader[Any], caught: list[Any]) -> None:
        self.loader, self.caught, self.marks = loader, caught, [0]

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            self.marks.append(len(self.caught))


def check_syncs(settings: ClientSettings, device: torch.device) -> dict[str, Any]:
    """Count the synchronising calls per training step of the device path (sync debug mode)."""
    model = CtPRecipe().build_model(width=settings.width, clip_len=settings.clip_len).to(device)
    optimizer = build_optimizer(model)
    loader, _ = round_loader(settings, 0, epoch=0, seed=0, device=device)
    prepare = DeviceAugmentation(settings.crop_size, device, channels_last=True)
    train_one_epoch(
        model,
        loader,
        optimizer,
        device=device,
        bf16=True,
        channels_last=True,
        progress=False,
        prepare=prepare,
        log_interval=settings.log_interval,
    )  # warm-up
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = _Steps(loader, caught)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(
                model, cast(DataLoader[Any], steps), optimizer, device=device, bf16=True,
                channels_last=True, progress=False, prepare=prepare,
                log_interval=settings.log_interval,
            )  # fmt: skip
        finally:
            torch.cuda.set_sync_debug_mode("default")
    per_step = [b - a for a, b in zip(steps.marks, steps.marks[1:], strict=False)]
    quiet = [n for k, n in enumerate(per_step, 1) if k % settings.log_interval]
    messages = sorted({str(w.message).splitlines()[0] for w in caught})
    return {
        "steps": len(per_step), "log_interval": settings.log_interval,
        "syncs_per_step": per_step, "messages": messages[:10],
        "ok": max(quiet, default=0) == 0,
    }  # fmt: skip


def check_race(root: Path, items: list[Annotation], device: torch.device) -> dict[str, Any]:
    """Free tensors that queued kernels still read, decode, and check what the kernels read."""
    encoded = jpeg_frames(root, items, 2)
    shape = decode_clips(encoded[:1], device)[0].shape[1:]  # [3, H, W] uint8, a frame's block
    counts = {}
    for name, stream in (("own_stream", torch.cuda.Stream(device)), ("training_stream", None)):
        wrong = 0
        for _ in range(20):
            tensors = [torch.full(shape, i, dtype=torch.uint8, device=device) for i in range(16)]
            torch.cuda.synchronize(device)
            torch.cuda._sleep(50_000_000)  # a long kernel ahead of the reads
            sums = [t.sum(dtype=torch.int64) for t in tensors]  # queued behind it
            del tensors  # freed while the reads are still queued
            decode_clips(encoded, device, stream)
            torch.cuda.synchronize(device)
            wrong += sum(int(s) != i * shape.numel() for i, s in enumerate(sums))
        counts[name] = wrong
    return {"reads_corrupted": counts, "rounds": 20, "ok": counts["own_stream"] == 0}


def check_compile(settings: ClientSettings) -> dict[str, Any]:
    """Train a client's round with compile=true and with compile=false, from the same start."""
    torch.manual_seed(0)
    start = {
        k: v.detach().clone()
        for k, v in CtPRecipe().build_model(width=settings.width, clip_len=settings.clip_len)
        .state_dict().items()
    }  # fmt: skip
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        began = time.perf_counter()
        _, metrics = train_locally(replace(settings, compile=compiled), 0, 1, start, partial=True)
        runs[name] = {"seconds": round(time.perf_counter() - began, 2),
                      "loss": float(metrics["train-loss"])}  # type: ignore[arg-type]  # fmt: skip
    gap = abs(runs["compiled"]["loss"] - runs["eager"]["loss"]) / abs(runs["eager"]["loss"])
    return runs | {"loss_relative_gap": round(gap, 5), "ok": gap < 0.05}


def run_check(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one check; an exception is reported, not raised."""
    began = time.perf_counter()
    try:
        result = check()
    except Exception as err:  # a failing check must not hide the others
        result = {"ok": False, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc().splitlines()[-6:]}  # fmt: skip
    return result | {"seconds": round(time.perf_counter() - began, 2)}


def main(argv: list[str] | None = None) -> None:
    """Run the checks and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.set_defaults(videos=24, frames=40)
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    report: dict[str, Any] = {"benchmark": "cuda_checks", "machine": machine_info(device),
                              "checks": {}}  # fmt: skip
    with contextlib.ExitStack() as stack:
        root, items, described = open_input(args, stack)
        report["input"] = described | {"videos": len(items)}
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cuda_checks_")))
        lay_out_partitions(root, items, work / "data", 1, min(len(items), 64))
        settings = ClientSettings(
            results_dir=str(work / "results"), dataset_root=str(work / "data"), frames="zip",
            zip_template="zips/{name}.zip", video_template="UCF101_raw/{video}.avi",
            partition_template=PARTITION, width=16, clip_len=16, crop_size=112, batch_size=8,
            workers=2, local_epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=40.0,
            seed=0, bf16=True, channels_last=True, log_interval=4, progress=False,
            num_threads=1, augment="device",
        )  # fmt: skip
        checks: dict[str, Callable[[], dict[str, Any]]] = {
            "nvjpeg": lambda: check_nvjpeg(root, items, device),
            "cudnn_step": lambda: check_cudnn_step(device),
            "syncs": lambda: check_syncs(settings, device),
            "race": lambda: check_race(root, items, device),
            "compile": lambda: check_compile(settings),
        }
        for name in args.checks:
            report["checks"][name] = (
                run_check(name, checks[name]) if cuda else {"skipped": "no CUDA device"}
            )
            if args.output is not None:  # a run cut short keeps what it checked
                write_report(report, args.output)
    if args.output is None:
        write_report(report, None)


if __name__ == "__main__":
    main()
