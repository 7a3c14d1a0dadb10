"""Does CtP learn at a given size? Loss and prediction spread over SGD steps, against a control.

Trains a CtP model centrally (no federation) on a prepared dataset with the reference pipeline and
optimiser, for each learning rate asked for, and records per window of steps the mean loss and
the standard deviation of the predicted (standardised) deltas. A model that has not left the
trivial answer "nothing moves" predicts deltas near zero whatever the clip: a spread far below
the targets' spread, and the same loss for every learning rate.

The control trains the same model and loss on fresh batches of coloured squares moving in
straight lines over a noise background (an easier tracking problem), to show that the model,
loss and optimiser can learn at this size.

    python -m benchmarks.ctp_learning --dataset-root data/synthetic --steps 1000 --lrs 0.01 0.2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import machine_info, pick_device, write_report
from CtP.ctp import CtP, build_ctp, encode_targets
from CtP.datasets import CtPDataset, ZipFrameSource, load_annotations
from CtP.train import autocast, build_optimizer, make_loader
from CtP.transforms import CtPAugmentation


def _step(model: CtP, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    imgs = batch["imgs"]
    with autocast(imgs.device, bf16=True):  # bf16 on CUDA, as clients train there; fp32 on CPU
        losses = model(imgs, batch["gt_trajs"])
    loss = losses["loss_ctr"] + losses["loss_size"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 40.0)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def _spreads(model: CtP, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Spread (std) of the predicted and of the target standardised deltas on one batch."""
    head = model.head
    predicted = model.predict_deltas(batch["imgs"], batch["gt_trajs"][:, :, 0])  # [B,N,T,4]
    targets = encode_targets(batch["gt_trajs"], head.target_means, head.target_stds)
    return float(predicted.std()), float(targets.std())


def _windows(
    model: CtP,
    optimizer: torch.optim.Optimizer,
    batches: Any,
    steps: int,
    window: int,
    device: torch.device,
    max_seconds: float,
) -> list[dict[str, float]]:
    rows, losses, started = [], [], time.perf_counter()
    for step, batch in enumerate(batches, start=1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        losses.append(_step(model, optimizer, batch))
        if step % window == 0:
            predicted, target = _spreads(model, batch)
            rows.append({
                "step": step, "loss": float(np.mean(losses[-window:])),
                "predicted_std": predicted, "target_std": target,
                "seconds": time.perf_counter() - started,
            })  # fmt: skip
        if step == steps or time.perf_counter() - started > max_seconds:
            break
    return rows


def _pipeline_batches(
    root: Path, crop: int, clip_len: int, batch: int, seed: int, workers: int
) -> Any:
    annotations = load_annotations(root / "annotations" / "train_split_1.json")
    dataset = CtPDataset(
        annotations, ZipFrameSource(root), CtPAugmentation(crop_size=crop),
        clip_len=clip_len, seed=seed,
    )  # fmt: skip
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        for item in make_loader(dataset, batch_size=batch, seed=epoch, workers=workers):
            item.pop("skipped")
            yield item
        epoch += 1


def _square_batches(size: int, clip_len: int, batch: int, seed: int) -> Any:
    """Fresh clips of three squares (red, green, blue) moving in straight lines."""
    rng = np.random.default_rng(seed)
    while True:
        imgs = rng.uniform(0.25, 0.75, (batch, 3, clip_len, size, size)).astype(np.float32)
        trajs = np.zeros((batch, 3, clip_len, 4), np.float32)
        for b in range(batch):
            for n in range(3):
                side = int(rng.integers(size // 8, size // 4 + 1))
                x0, y0 = rng.integers(0, size - side, 2)
                vx, vy = rng.integers(-2, 3, 2)
                for t in range(clip_len):
                    x = int(np.clip(x0 + vx * t, 0, size - side))
                    y = int(np.clip(y0 + vy * t, 0, size - side))
                    trajs[b, n, t] = (x, y, x + side, y + side)
                    imgs[b, :, t, y : y + side, x : x + side] = np.eye(3)[n][:, None, None]
        yield {"imgs": torch.from_numpy(imgs), "gt_trajs": torch.from_numpy(trajs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01])
    parser.add_argument("--control-steps", type=int, default=1500, help="0 skips the control")
    parser.add_argument("--control-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="per run")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    device = pick_device(args.device)

    report: dict[str, Any] = {
        "benchmark": "ctp_learning", "machine": machine_info(),
        "model": {"width": args.width, "clip_len": args.clip_len, "crop_size": args.crop_size},
        "batch": args.batch, "runs": [],
    }  # fmt: skip
    for lr in args.lrs:
        torch.manual_seed(args.seed)
        model = build_ctp(width=args.width, clip_len=args.clip_len).to(device)
        batches = _pipeline_batches(
            args.dataset_root, args.crop_size, args.clip_len, args.batch, args.seed, args.workers
        )
        optimizer = build_optimizer(model, lr=lr)
        rows = _windows(
            model, optimizer, batches, args.steps, args.window, device, args.max_seconds
        )
        report["runs"].append({"data": "ctp", "lr": lr, "windows": rows})
        if args.output is not None:  # keep what is done if a later run is cut short
            write_report(report, args.output)
    if args.control_steps:
        torch.manual_seed(args.seed)
        model = build_ctp(width=args.width, clip_len=8).to(device)
        batches = _square_batches(args.control_size, 8, args.batch, args.seed)
        rows = _windows(
            model, build_optimizer(model), batches, args.control_steps, args.window, device,
            args.max_seconds,
        )  # fmt: skip
        report["runs"].append({"data": f"squares {args.control_size}px, 8 frames", "lr": 0.01,
                               "windows": rows})  # fmt: skip
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
