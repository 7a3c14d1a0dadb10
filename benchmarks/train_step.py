"""CtP training steps per second on random clips, for each precision and layout variant.

A step is exactly the client's: :func:`CtP.train.train_one_epoch` over batches already on the
device (autocast, summed losses, backward, gradient clipping at 40, SGD from
:func:`CtP.train.build_optimizer`, and the per-step loss read-back). The clips are random
normal noise with valid random box trajectories (three per clip, drifting over the frames).
Variants, each on a fresh model (seed 0), timed after warm-up with the device synchronised:

* ``fp32``: float32 (cuDNN's default TF32 convolutions on CUDA);
* ``fp32_cl``: float32 with ``channels_last_3d`` inputs, as a CPU client runs;
* ``bf16``: bf16 autocast (CUDA only);
* ``bf16_cl``: bf16 autocast and ``channels_last_3d`` inputs, as the client runs (CUDA only);
* ``bf16_cl_model``: ``bf16_cl`` with the model's weights in ``channels_last_3d`` too (CUDA only;
  not in the default list);
* ``compile``: ``bf16_cl`` with ``torch.compile`` on the model (CUDA only; its warm-up compiles).

    python -m benchmarks.train_step [--width 64] [--batch 32] [--clip-len 16] [--crop-size 112]
        [--steps 20] [--warmup 5] [--variants fp32 bf16 bf16_cl] [--compile] [--threads N]
        [--device cuda] [--output FILE]
"""

from __future__ import annotations

import argparse
import gc
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from benchmarks import machine_info, pick_device, synchronize, write_report
from CtP.ctp import build_ctp
from CtP.train import build_optimizer, train_one_epoch

NUM_ROIS = 3  # trajectories per clip, as the PatchMask default


@dataclass(frozen=True)
class Variant:
    """How one variant trains: precision, memory layout, compilation."""

    name: str
    bf16: bool = False
    channels_last: bool = False  # the inputs, as train_one_epoch does
    model_channels_last: bool = False  # the weights too
    compile: bool = False


VARIANTS = {
    "fp32": Variant("fp32"),
    "fp32_cl": Variant("fp32_cl", channels_last=True),
    "bf16": Variant("bf16", bf16=True),
    "bf16_cl": Variant("bf16_cl", bf16=True, channels_last=True),
    "bf16_cl_model": Variant(
        "bf16_cl_model", bf16=True, channels_last=True, model_channels_last=True
    ),
    "compile": Variant("compile", bf16=True, channels_last=True, compile=True),
}
CPU_VARIANTS = ("fp32", "fp32_cl")  # bf16 autocast and compile are measured on CUDA only


def random_trajectories(
    batch: int, clip_len: int, crop_size: int, generator: torch.Generator
) -> Tensor:
    """Draw valid integer box trajectories inside a ``crop_size`` square.

    Each box starts with sides in ``[S/8, S/2]`` at a uniform position and its corner drifts by
    up to two pixels per frame, clipped to the image; every box keeps ``x1 < x2`` and ``y1 < y2``.

    Parameters
    ----------
    batch, clip_len, crop_size
        Clips, frames per clip and crop side ``S``.
    generator
        Random stream.

    Returns
    -------
    Tensor
        ``[B, N, T, 4]`` float32 ``(x1, y1, x2, y2)`` with ``0 <= x1 < x2 <= S``, N = 3.
    """
    shape = (batch, NUM_ROIS, 1, 2)
    size = crop_size / 8 + torch.rand(shape, generator=generator) * (crop_size * 3 / 8)
    corner = torch.rand(shape, generator=generator) * (crop_size - size)
    drift = (torch.rand((batch, NUM_ROIS, clip_len, 2), generator=generator) * 4 - 2).cumsum(2)
    low = (corner + drift).round().clamp(0, crop_size - 1)  # [B, N, T, 2]
    high = torch.maximum((low + size).round().clamp(max=crop_size), low + 1)
    return torch.cat((low, high), dim=-1)


def random_batch(
    batch: int, clip_len: int, crop_size: int, device: torch.device, seed: int = 0
) -> dict[str, Tensor]:
    """Return random clips ``[B, 3, T, S, S]`` with trajectories ``[B, 3, T, 4]`` on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    imgs = torch.randn((batch, 3, clip_len, crop_size, crop_size), generator=generator)
    trajs = random_trajectories(batch, clip_len, crop_size, generator)
    return {"imgs": imgs.to(device), "gt_trajs": trajs.to(device)}


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    steps: int,
    variant: Variant,
    device: torch.device,
) -> tuple[float, float]:
    """Run ``steps`` client training steps on ``batch``; return (seconds, mean loss)."""
    loader = cast(DataLoader[dict[str, Tensor]], [batch] * steps)  # the loop only iterates it
    synchronize(device)
    start = time.perf_counter()
    result = train_one_epoch(
        model,
        loader,
        optimizer,
        device=device,
        bf16=variant.bf16,
        channels_last=variant.channels_last,
        progress=False,
    )
    synchronize(device)
    return time.perf_counter() - start, result.loss


def time_variant(
    variant: Variant, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Build a fresh model, warm it up and time ``args.steps`` steps of one variant.

    Returns
    -------
    dict
        Step time, steps and clips per second, warm-up seconds and peak GPU memory.
    """
    torch.manual_seed(0)
    model = build_ctp(width=args.width, clip_len=args.clip_len).to(device)
    if variant.model_channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    runner = cast(nn.Module, torch.compile(model)) if variant.compile else model
    optimizer = build_optimizer(model)
    batch = random_batch(args.batch, args.clip_len, args.crop_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s, _ = run_steps(runner, optimizer, batch, args.warmup, variant, device)
    seconds, loss = run_steps(runner, optimizer, batch, args.steps, variant, device)
    result: dict[str, Any] = {
        "variant": variant.name,
        "bf16": variant.bf16,
        "channels_last": variant.channels_last,
        "model_channels_last": variant.model_channels_last,
        "compile": variant.compile,
        "warmup_steps": args.warmup,
        "warmup_s": round(warmup_s, 3),
        "steps": args.steps,
        "seconds": round(seconds, 4),
        "step_ms": round(1e3 * seconds / args.steps, 3),
        "steps_per_s": round(args.steps / seconds, 3),
        "clips_per_s": round(args.steps * args.batch / seconds, 2),
        "loss": round(loss, 5),
        "peak_memory_mib": None,
    }
    if device.type == "cuda":
        result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def release(device: torch.device, compiled: bool) -> None:
    """Free the previous variant's model, optimizer state and compiled graphs."""
    if compiled:
        torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_variant(variant: Variant, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time one variant; a variant that cannot run here or fails gives a note, not an exception."""
    if device.type != "cuda" and variant.name not in CPU_VARIANTS:
        return {"variant": variant.name, "skipped": "CUDA only (bf16 autocast and compile)"}
    try:
        return time_variant(variant, args, device)
    except Exception as err:  # one failing variant (e.g. compile) must not lose the others
        traceback.print_exc()
        return {"variant": variant.name, "error": f"{type(err).__name__}: {err}"}
    finally:
        release(device, variant.compile)


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Add each timed variant's clips/s ratio to fp32's and bf16_cl's, measured in the same run."""
    timed = {r["variant"]: r for r in results if "clips_per_s" in r}
    for name in ("fp32", "bf16_cl"):
        if name in timed:
            for r in timed.values():
                r[f"speedup_vs_{name}"] = round(r["clips_per_s"] / timed[name]["clips_per_s"], 3)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="backbone width (64: R3D-18)")
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--crop-size", type=int, default=112, help="clip side in pixels")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    if min(args.width, args.batch, args.steps, args.warmup, args.crop_size) < 1:
        parser.error("--width, --batch, --steps, --warmup and --crop-size must be >= 1")
    if args.clip_len < 8 or args.clip_len % 8:
        parser.error("--clip-len must be a positive multiple of 8 (the backbone's stride)")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    names = args.variants or ["fp32", "bf16", "bf16_cl"] + (["compile"] if args.compile else [])

    report: dict[str, Any] = {
        "benchmark": "train_step",
        "machine": machine_info(device),
        "model": {"width": args.width, "clip_len": args.clip_len, "crop_size": args.crop_size},
        "batch": args.batch,
        "results": [],
    }
    for name in names:
        report["results"].append(run_variant(VARIANTS[name], args, device))
        add_speedups(report["results"])
        if args.output is not None:  # a run cut short keeps what it measured
            write_report(report, args.output)
    if args.output is None:
        write_report(report, None)


if __name__ == "__main__":
    main()
