r"""Does a pretext learn? Its loss against its trivial loss, per window of SGD steps, centrally.

Trains one model per run (no federation) on a prepared dataset, from the same seed, and records
per window of steps:

- ``ratio``: the mean loss over the mean trivial loss on the same batches (CtP: predicting
  "nothing moves"; VCOP and Speed: uniform scores, ln of the number of classes); 1 means nothing
  has been learned, above 1 the head is confidently wrong;
- ``accuracy`` (VCOP, Speed): the fraction of samples whose order or stride is guessed right;
- ``backbone_grad``: the L2 norm of the backbone's gradient before clipping.

A run is a list of ``fedvssl.main`` overrides (the pretext, its options, the learning rate), so
each is exactly what the federated clients would train, with the model, clips and optimiser of
the composed config:

    python -m benchmarks.pretext_learning --steps 250 \\
        --runs "pretext=speed" "pretext=speed optimizer.lr=0.001" "pretext=vcop"

Two controls tell "cannot fit" from "fits but does not generalise": ``--fixed-batch`` trains on
the first batch over and over (a model that can learn at all memorises it), and
``--optimizer adam`` replaces the clients' SGD by Adam at the run's ``optimizer.lr``.
``--classes`` trains on the videos of the named classes only (which motions can a pretext read?).
``--device cuda --workers N`` runs the same training on a GPU, with N loader workers, for the long
runs a CPU cannot afford (the ratio is measured the same way; fp32, as on the CPU).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import grad_norm, machine_info, pick_device, write_report
from CtP.datasets import Annotation, ZipFrameSource, load_annotations
from CtP.pretext import pretext_from_mapping
from CtP.train import build_optimizer, make_loader, training_loss

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(overrides: list[str]) -> dict[str, Any]:
    """Return the ``fedvssl.main`` config with ``overrides``, as plain values."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="base", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def of_classes(items: list[Annotation], classes: list[str] | None) -> list[Annotation]:
    """Keep the videos of ``classes`` (names are ``Class/video``); all of them for ``None``."""
    if classes is None:
        return items
    present = sorted({a.name.split("/")[0] for a in items})
    unknown = sorted(set(classes) - set(present))
    if unknown:
        raise SystemExit(f"--classes: no video of {unknown}; the classes are {present}")
    return [a for a in items if a.name.split("/")[0] in classes]


def train_run(
    cfg: dict[str, Any],
    root: Path,
    steps: int,
    window: int,
    seed: int,
    *,
    optimizer_name: str = "sgd",
    fixed_batch: bool = False,
    classes: list[str] | None = None,
    device: str = "cpu",
    workers: int = 0,
    max_seconds: float = math.inf,
) -> list[dict]:
    """Train the composed config's pretext centrally; return one record per window of steps.

    ``optimizer_name`` is ``sgd`` (the clients' optimiser) or ``adam`` (at the same lr, no
    decay); ``fixed_batch`` repeats the first batch at every step (the memorisation control);
    ``classes`` keeps the videos of those classes only (all of them for ``None``); ``device`` is
    where the model trains and ``workers`` the loader's worker processes.
    """
    pretext = pretext_from_mapping(cfg["pretext"], cfg["ctp"])
    width, clip_len, crop = int(cfg["model"]["width"]), int(cfg["clip_len"]), int(cfg["crop_size"])
    torch.manual_seed(seed)
    model = pretext.build_model(width=width, clip_len=clip_len).to(device).train()
    backbone: nn.Module = model.backbone  # type: ignore[assignment]
    optimizer_cfg = cfg["optimizer"]
    lr = float(optimizer_cfg["lr"])
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr) if optimizer_name == "adam" else
        build_optimizer(model, lr=lr, momentum=float(optimizer_cfg["momentum"]),
                        weight_decay=float(optimizer_cfg["weight_decay"]))
    )  # fmt: skip
    dataset = pretext.dataset(
        of_classes(load_annotations(root / cfg["dataset"]["train_annotations"]), classes),
        ZipFrameSource(root),
        clip_len=clip_len, crop_size=crop, seed=seed,
    )  # fmt: skip
    batch_size = int(cfg["batch_size"])
    dataset.set_epoch(0)
    first = (
        next(iter(make_loader(dataset, batch_size=batch_size, seed=seed))) if fixed_batch else None
    )
    pin = torch.device(device).type == "cuda"
    records, current, started, step, epoch = [], [], time.perf_counter(), 0, 0
    while step < steps:
        dataset.set_epoch(epoch)
        loader = make_loader(
            dataset, batch_size=batch_size, seed=seed + epoch, workers=workers, pin_memory=pin
        )
        for batch in loader if first is None else itertools.repeat(first, steps - step):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "skipped"}
            losses = model(**batch)
            loss = training_loss(losses)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad = grad_norm(backbone)
            nn.utils.clip_grad_norm_(model.parameters(), float(optimizer_cfg["grad_clip"]))
            optimizer.step()
            accuracy = losses.get("accuracy", torch.tensor(np.nan))
            current.append((float(loss.detach()), float(losses["trivial_loss"]),
                            float(accuracy.detach()), grad))  # fmt: skip
            step += 1
            if step % window == 0 or step == steps:
                values = np.array(current)
                accuracies = values[:, 2]  # NaN for CtP, which has none
                records.append({
                    "step": step, "ratio": float(values[:, 0].mean() / values[:, 1].mean()),
                    "accuracy": None if np.isnan(accuracies).all() else float(accuracies.mean()),
                    "backbone_grad": float(values[:, 3].mean()),
                    "seconds": time.perf_counter() - started,
                })  # fmt: skip
                print(f"  step {step}: ratio {records[-1]['ratio']:.3f}", flush=True)
                current = []
                if time.perf_counter() - started > max_seconds:  # stop at a window's end
                    return records
            if step >= steps:
                break
        epoch += 1
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", nargs="+", default=["pretext=ctp", "pretext=vcop", "pretext=speed"],
        help="one quoted list of fedvssl.main overrides per run",
    )  # fmt: skip
    parser.add_argument("--dataset-root", type=Path, default=Path("data/synthetic"))
    parser.add_argument(
        "--steps", type=int, default=375, help="the default run's steps per client (15 x 25)"
    )
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default="sgd",
        help="sgd: the clients' optimiser; adam: Adam at the run's optimizer.lr",
    )
    parser.add_argument(
        "--fixed-batch",
        action="store_true",
        help="train on the first batch at every step (can the model fit at all?)",
    )
    parser.add_argument(
        "--classes", nargs="+", help="train on the videos of these classes only (default: all)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument(
        "--max-seconds", type=float, default=math.inf, help="per run: stop at the next window"
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict[str, Any] = {"benchmark": "pretext_learning", "machine": machine_info(device),
                              "dataset_root": str(args.dataset_root), "seed": args.seed,
                              "steps": args.steps, "window": args.window,
                              "optimizer": args.optimizer,
                              "fixed_batch": args.fixed_batch, "classes": args.classes,
                              "device": args.device, "workers": args.workers,
                              "runs": []}  # fmt: skip
    for run in args.runs:
        overrides = run.split()
        print(f"{run}:", flush=True)
        windows = train_run(
            composed(overrides), args.dataset_root, args.steps, args.window, args.seed,
            optimizer_name=args.optimizer, fixed_batch=args.fixed_batch, classes=args.classes,
            device=str(device), workers=args.workers, max_seconds=args.max_seconds,
        )  # fmt: skip
        report["runs"].append({"overrides": overrides, "windows": windows})
        write_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
