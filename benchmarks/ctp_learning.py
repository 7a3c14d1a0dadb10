"""Does CtP learn? Loss against the trivial loss, live head units and backbone gradient, per recipe.

Trains CtP centrally (no federation) on a prepared dataset, once per recipe, from the same seed
and over the same clips, and records per window of SGD steps:

- ``ratio``: the mean loss over the mean loss of predicting "nothing moves" on the same batches
  (1 means nothing has been learned);
- ``live_units``: the fraction of the head's fc1 ReLU units that fire for at least one box of the
  batch (units that never fire pass no gradient: a dead head stops the backbone's learning);
- ``backbone_grad``: the L2 norm of the backbone's gradient before clipping;
- the spread (standard deviation) of the predicted and of the target standardised deltas.

The recipes are the presets of ``conf/ctp/`` (``reference``: the original; ``marked``: the
default), or, with ``--sweep levers``, the default and the default with each of its departures
from the reference undone in turn (which departures the learning needs).

    python -m benchmarks.ctp_learning --dataset-root data/synthetic --recipes reference marked
    python -m benchmarks.ctp_learning --dataset-root data/synthetic --sweep levers --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks import grad_norm, machine_info, pick_device, write_report
from CtP.ctp import CtP, encode_targets
from CtP.datasets import CtPDataset, ZipFrameSource, load_annotations
from CtP.patches import PatchMaskParams
from CtP.recipe import CtPRecipe, recipe_from_mapping
from CtP.train import autocast, build_optimizer, make_loader, training_loss

CONF = Path(__file__).resolve().parents[1] / "conf"


def preset(name: str) -> CtPRecipe:
    """Return the recipe of ``conf/ctp/<name>.yaml``, composed as ``fedvssl.main`` does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="base", overrides=[f"ctp={name}"])
    return recipe_from_mapping(OmegaConf.to_container(cfg.ctp, resolve=True))  # type: ignore[arg-type]


def lever_sweep() -> dict[str, CtPRecipe]:
    """Return the default recipe, then the default with each departure undone in turn."""
    marked, reference = preset("marked"), CtPRecipe()
    recipes = {"marked": marked}
    for name in ("head_init", "hue_sat_prob", "brightness_prob", "contrast_prob"):
        if getattr(marked, name) != getattr(reference, name):
            recipes[f"marked, reference {name}"] = dataclasses.replace(
                marked, **{name: getattr(reference, name)}
            )
    for field in dataclasses.fields(PatchMaskParams):
        value = getattr(reference.patch, field.name)
        if getattr(marked.patch, field.name) != value:
            patch = dataclasses.replace(marked.patch, **{field.name: value})
            recipes[f"marked, reference {field.name}"] = dataclasses.replace(marked, patch=patch)
    return recipes


class _HeadProbe:
    """Records the fc1 pre-activations of every forward pass (to count live units)."""

    def __init__(self, model: CtP) -> None:
        self.pre: Tensor | None = None
        model.head.fc1.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self.pre = output.detach()

    def live_fraction(self) -> float:
        """Fraction of fc1 units positive for at least one box of the last batch."""
        assert self.pre is not None
        return float((self.pre > 0).any(dim=0).float().mean())


def _step(
    model: CtP, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor]
) -> dict[str, float]:
    imgs = batch["imgs"]
    with autocast(imgs.device, bf16=True):  # bf16 on CUDA, as clients train there; fp32 on CPU
        losses = model(imgs, batch["gt_trajs"])
    loss = training_loss(losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    backbone_grad = grad_norm(model.backbone)
    nn.utils.clip_grad_norm_(model.parameters(), 40.0)
    optimizer.step()
    return {
        "loss": float(loss.detach()), "trivial": float(losses["trivial_loss"]),
        "backbone_grad": backbone_grad,
    }  # fmt: skip


@torch.no_grad()
def _spreads(model: CtP, batch: dict[str, Tensor]) -> tuple[float, float]:
    """Spread (std) of the predicted and of the target standardised deltas on one batch."""
    head = model.head
    predicted = model.predict_deltas(batch["imgs"], batch["gt_trajs"][:, :, 0])  # [B,N,T,4]
    targets = encode_targets(batch["gt_trajs"], head.target_mean, head.target_std)
    return float(predicted.std()), float(targets.std())


def train_windows(
    model: CtP,
    batches: Iterator[dict[str, Tensor]],
    *,
    steps: int,
    window: int,
    device: torch.device,
    max_seconds: float = float("inf"),
) -> list[dict[str, float]]:
    """Train with the reference optimiser; one summary row per ``window`` steps."""
    optimizer, probe = build_optimizer(model), _HeadProbe(model)
    rows, records, started = [], [], time.perf_counter()
    model.train()
    for step, batch in enumerate(batches, start=1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch["imgs"] = batch["imgs"].contiguous(memory_format=torch.channels_last_3d)
        records.append(_step(model, optimizer, batch) | {"live": probe.live_fraction()})
        if step % window == 0:
            done = records[-window:]
            predicted, target = _spreads(model, batch)
            loss = float(np.mean([r["loss"] for r in done]))
            trivial = float(np.mean([r["trivial"] for r in done]))
            rows.append({
                "step": step, "loss": loss, "trivial_loss": trivial, "ratio": loss / trivial,
                "live_units": float(np.mean([r["live"] for r in done])),
                "backbone_grad": float(np.mean([r["backbone_grad"] for r in done])),
                "predicted_std": predicted, "target_std": target,
                "seconds": time.perf_counter() - started,
            })  # fmt: skip
        if step == steps or time.perf_counter() - started > max_seconds:
            break
    return rows


def pipeline_batches(
    root: Path, recipe: CtPRecipe, *, crop: int, clip_len: int, batch: int, seed: int, workers: int
) -> Iterator[dict[str, Tensor]]:
    """Endless CtP batches of the dataset's training split with the recipe's pipeline."""
    annotations = load_annotations(root / "annotations" / "train_split_1.json")
    dataset = CtPDataset(
        annotations, ZipFrameSource(root), recipe.augmentation(crop), clip_len=clip_len, seed=seed
    )
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        for item in make_loader(dataset, batch_size=batch, seed=epoch, workers=workers):
            item.pop("skipped")
            yield item
        epoch += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--recipes", nargs="+", default=["reference", "marked"],
                        help="presets of conf/ctp/")  # fmt: skip
    parser.add_argument("--sweep", choices=["levers"], help="run the lever sweep instead")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="per run")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = lever_sweep() if args.sweep else {name: preset(name) for name in args.recipes}

    report: dict[str, Any] = {
        "benchmark": "ctp_learning", "machine": machine_info(device),
        "model": {"width": args.width, "clip_len": args.clip_len, "crop_size": args.crop_size},
        "batch": args.batch, "steps": args.steps, "seed": args.seed, "runs": [],
    }  # fmt: skip
    for name, recipe in recipes.items():
        torch.manual_seed(args.seed)
        model = recipe.build_model(width=args.width, clip_len=args.clip_len).to(device)
        batches = pipeline_batches(
            args.dataset_root, recipe, crop=args.crop_size, clip_len=args.clip_len,
            batch=args.batch, seed=args.seed, workers=args.workers,
        )  # fmt: skip
        rows = train_windows(
            model, batches, steps=args.steps, window=args.window, device=device,
            max_seconds=args.max_seconds,
        )  # fmt: skip
        report["runs"].append({"recipe": name, "settings": dataclasses.asdict(recipe),
                               "windows": rows})  # fmt: skip
        last = rows[-1] if rows else {}
        ratio, live = last.get("ratio", float("nan")), last.get("live_units", float("nan"))
        print(f"{name}: ratio {ratio:.3f} after {last.get('step')} steps, live units {live:.2f}")
        if args.output is not None:  # keep what is done if a later run is cut short
            write_report(report, args.output)
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
