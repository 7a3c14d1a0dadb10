"""A client's local work, without Flower: its model, its own head, one round of pretext training.

:mod:`fedvssl.client_app` wraps :func:`train_locally` in Flower messages; the benchmarks call it
directly. The model is built once per process and reused across rounds and clients (a Ray actor
serves many), and so is its compiled form (``compile=true``) and the data loader
(:func:`fedvssl.client_data.round_loader`).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from CtP.device_augmentation import DeviceAugmentation
from CtP.pretext import Pretext
from CtP.train import build_optimizer, train_one_epoch
from fedvssl.checkpoints import check_finite
from fedvssl.client_data import augments_on_device, round_loader
from fedvssl.data.atomic import atomic_path
from fedvssl.settings import ClientSettings

_MODELS: dict[tuple[Pretext, int, int, str], nn.Module] = {}


def cached_model(pretext: Pretext, width: int, clip_len: int, device: torch.device) -> nn.Module:
    """Return this worker process's model of ``pretext``, built on first use.

    Its initial weights never matter: every round loads the global arrays (and the client's
    own head) into it.
    """
    key = (pretext, width, clip_len, str(device))
    if key not in _MODELS:
        _MODELS[key] = pretext.build_model(width=width, clip_len=clip_len).to(device)
    return _MODELS[key]


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)``, made once per model and kept, when ``enabled``; else the model.

    The compiled module shares the model's parameters, so loading and reading the state dict
    still go through the model itself (no ``_orig_mod.`` prefix in the arrays).
    """
    if not enabled:
        return model
    if id(model) not in _COMPILED:
        _COMPILED[id(model)] = cast(nn.Module, torch.compile(model))
    return _COMPILED[id(model)]


_COMPILED: dict[int, nn.Module] = {}


def is_local(key: str) -> bool:
    """Whether a state-dict entry is the client's own (the pretext head), not the backbone's."""
    return not key.startswith("backbone.")


def head_files(client_dir: Path) -> dict[int, Path]:
    """List the client's stored heads by round."""
    pattern = re.compile(r"head-round-(\d+)\.pt")
    found = (pattern.fullmatch(p.name) for p in client_dir.glob("head-round-*.pt"))
    return {int(m.group(1)): client_dir / m.group(0) for m in found if m}


def load_own_head(client_dir: Path, server_round: int) -> dict[str, torch.Tensor] | None:
    """Load the head kept from the latest round before ``server_round`` (None: first time)."""
    earlier = {r: p for r, p in head_files(client_dir).items() if r < server_round}
    if not earlier:
        return None
    state: dict[str, torch.Tensor] = torch.load(earlier[max(earlier)], weights_only=True)
    check_finite(earlier[max(earlier)], state)
    return state


def save_own_head(client_dir: Path, server_round: int, state: dict[str, torch.Tensor]) -> None:
    """Store this round's head atomically; keep it and the one it started from, drop older ones."""
    with atomic_path(client_dir / f"head-round-{server_round}.pt") as tmp:
        torch.save(state, tmp)
    files = head_files(client_dir)
    for r in sorted(r for r in files if r < server_round)[:-1]:
        files[r].unlink(missing_ok=True)


def set_aside_interrupted_logs(client_dir: Path, server_round: int) -> None:
    """Move logs of this round and later ones into ``interrupted/``: an earlier, killed attempt's.

    A run resumed after its last complete round trains that round's successor again; the log
    the interrupted attempt left stays readable, beside the folder of the logs that count.
    """
    pattern = re.compile(r".*-round(\d+)\.log\.json")
    for path in client_dir.glob("*-round*.log.json"):
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= server_round:
            (client_dir / "interrupted").mkdir(exist_ok=True)
            path.replace(client_dir / "interrupted" / path.name)


def start_state(
    global_state: dict[str, torch.Tensor], own_head: dict[str, torch.Tensor] | None, partial: bool
) -> dict[str, torch.Tensor]:
    """Return the weights a client trains from: global backbone, and its own head if partial."""
    if not partial or own_head is None:
        return global_state
    return {k: own_head.get(k, v) if is_local(k) else v for k, v in global_state.items()}


def train_locally(
    settings: ClientSettings,
    partition_id: int,
    server_round: int,
    global_state: dict[str, Any],
    partial: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, int | float | list[int] | list[float]]]:
    """One round of local pretext training; returns the new arrays and the metrics to report."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, settings.num_threads))
    torch.manual_seed(settings.seed * 1_000_003 + server_round * 1009 + partition_id)
    client_dir = settings.client_dir(partition_id)
    prepare = (
        DeviceAugmentation(settings.crop_size, device, settings.channels_last)
        if augments_on_device(settings, device)
        else None  # the loader's batches go to the device as they are
    )

    model = cached_model(settings.pretext, settings.width, settings.clip_len, device)
    own_head = load_own_head(client_dir, server_round) if partial else None
    model.load_state_dict(start_state(global_state, own_head, partial))
    optimizer = build_optimizer(
        model, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    set_aside_interrupted_logs(client_dir, server_round)
    log_path = client_dir / f"{time.strftime('%Y%m%d_%H%M%S')}-round{server_round}.log.json"
    losses, trivial, skipped, seconds = [], [], 0, 0.0
    for epoch in range(settings.local_epochs):
        loader, dataset = round_loader(
            settings, partition_id, epoch=(server_round - 1) * settings.local_epochs + epoch,
            seed=settings.seed * 7919 + server_round * 31 + partition_id, device=device,
        )  # fmt: skip
        result = train_one_epoch(
            compiled(model, settings.compile), loader, optimizer, device=device,
            epoch=epoch + 1, grad_clip=settings.grad_clip, bf16=settings.bf16,
            channels_last=settings.channels_last, log_path=log_path,
            log_interval=settings.log_interval, progress=settings.progress,
            prepare=prepare,
        )  # fmt: skip
        losses.append(result.loss)
        trivial.append(result.terms.get("trivial_loss", math.nan))
        skipped += result.skipped
        seconds += result.seconds
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_own_head(client_dir, server_round, {k: v for k, v in state.items() if is_local(k)})
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": len(dataset),
        "train-loss": float(np.mean(losses)),
        "trivial-loss": float(np.mean(trivial)),
        "partition-id": partition_id,
        "skipped-videos": skipped,
        "train-seconds": seconds,
    }
    return state, metrics
