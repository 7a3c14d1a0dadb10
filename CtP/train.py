"""The training loop: one epoch of SGD on a model that returns its losses, and batched inference.

``train_one_epoch`` follows the original CtP runtime (reference §4.1): SGD (lr 0.01, momentum 0.9,
weight decay 1e-4 on every parameter), gradient clipping at L2 norm 40, the total loss being the
sum of every entry whose name starts with ``loss`` (the original summed every name containing
``loss``; here other entries, such as CtP's ``trivial_loss``, are measurements that are logged but
not trained on). It can feed clips in the ``channels_last_3d`` memory format (faster on the CPU
and on CUDA) and, on CUDA, run under bf16 autocast. It writes a JSON-lines log shaped like the
original's ``*.log.json`` (mode, epoch, iter, lr, time, data_time, loss and each loss term and
measurement, one line every ``log_interval`` iterations and one for the trailing partial
interval) and returns the epoch's mean training loss and the mean of every other entry, which
the federated client reports to the server. Between log lines a step never makes the host wait
for the device: the losses are read back once per log line, in one transfer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from CtP.progress import progress_bar

logger = logging.getLogger(__name__)

Batch = dict[str, Tensor]
LossFn = Callable[[Batch], Mapping[str, Tensor]]


def build_optimizer(
    model: nn.Module, *, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """SGD over every parameter, as the original (no exclusions for BN or biases)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def _init_worker(worker_id: int) -> None:
    # One thread per loader worker: the workers themselves are the parallelism.
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    sampler: Sampler[Any] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """Build a DataLoader with a seeded shuffle and single-threaded workers.

    With a ``sampler`` (which then does the shuffling) the workers persist: the loader can be
    iterated again, pointed at other samples by its sampler, without starting new workers.
    """
    if workers > 0:
        # Workers are forked: OpenCV's thread pool must not exist when they are, or a worker can
        # hang on a lock held by a pool thread that was not copied. One thread is also what the
        # workers use; decoding and augmenting small frames gains nothing from more.
        cv2.setNumThreads(1)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
        worker_init_fn=_init_worker if workers > 0 else None,
        persistent_workers=workers > 0 and sampler is not None,
        collate_fn=collate_fn,
    )


@dataclass
class EpochResult:
    """What one training epoch did."""

    loss: float  # mean total loss over the epoch's iterations
    terms: dict[str, float] = field(default_factory=dict)  # mean of each loss term and measurement
    iterations: int = 0
    samples: int = 0
    skipped: int = 0  # unreadable videos replaced by others
    seconds: float = 0.0


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA when asked for; a no-op otherwise."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last and moved["imgs"].dim() == 5:
        moved["imgs"] = moved["imgs"].contiguous(memory_format=torch.channels_last_3d)
    return moved


class _IntervalLog:
    """Average loss terms and timings over a logging interval; one JSON line per interval."""

    def __init__(self, path: Path | None, epoch: int, lr: float) -> None:
        self.path, self.epoch, self.lr = path, epoch, lr
        self.sums: dict[str, float] = {}
        self.count = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def flush(self, iteration: int) -> None:
        if self.count == 0:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        line = {"mode": "train", "epoch": self.epoch, "iter": iteration, "lr": self.lr}
        line |= {"time": means.pop("time"), "data_time": means.pop("data_time")}
        if torch.cuda.is_available():
            line["memory"] = int(torch.cuda.max_memory_allocated() // 2**20)
        line |= means
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        self.sums, self.count = {}, 0


@dataclass
class _Step:
    """One training step's losses (device tensors) and timings, until they are read."""

    losses: dict[str, Tensor]
    time: float  # the step's and its batch's seconds, as the host saw them
    data_time: float


def _settle(steps: list[_Step], totals: dict[str, float], interval: _IntervalLog) -> float:
    """Read the steps' losses in one transfer, add them to the totals and the log; forget them.

    Returns the last step's loss (NaN without steps). The values are those ``float()`` of each
    loss would give, added in the same order.
    """
    flat = [value for step in steps for value in step.losses.values()]
    numbers = iter(torch.stack([v.float() for v in flat]).tolist() if flat else [])  # one wait
    last = math.nan
    for step in steps:
        values = {key: next(numbers) for key in step.losses}
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
        interval.add(values | {"time": step.time, "data_time": step.data_time})
        last = values["loss"]
    steps.clear()
    return last


def training_loss(losses: Mapping[str, Tensor]) -> Tensor:
    """Sum the entries named ``loss*``; the others (``trivial_loss``) are measurements."""
    loss = sum(v for k, v in losses.items() if k.startswith("loss"))
    assert isinstance(loss, Tensor), f"no entry named loss* among {sorted(losses)}"
    return loss


def _timed(loader: DataLoader[Batch]) -> Iterator[tuple[Batch, float]]:
    start = time.perf_counter()
    for batch in loader:
        yield batch, time.perf_counter() - start
        start = time.perf_counter()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int = 1,
    grad_clip: float | None = 40.0,
    bf16: bool = False,
    channels_last: bool = False,
    log_path: Path | None = None,
    log_interval: int = 10,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    prepare: Callable[[dict[str, Any]], Batch] | None = None,
) -> EpochResult:
    """Train ``model`` for one pass over ``loader``.

    Parameters
    ----------
    model
        A module whose ``model(**batch)`` returns a dict of losses (e.g. :class:`CtP.ctp.CtP`), or
        any module when ``loss_fn`` is given. Entries whose name starts with ``loss`` are summed
        into the training loss; the others (e.g. ``trivial_loss``) are only averaged and logged.
    loader
        Batches as dicts of tensors; a ``skipped`` entry (unreadable videos) is counted, not fed.
    optimizer
        Built by :func:`build_optimizer`.
    device
        Where to train.
    epoch
        The epoch (or round) number written to the log.
    grad_clip
        Max L2 norm of all gradients (reference: 40); None disables clipping.
    bf16, channels_last
        bf16 autocast (on CUDA only) and the channels_last_3d layout of the clips (any device).
    log_path
        The JSON-lines log to append to; None writes no file.
    log_interval
        Iterations per log line (reference: 10).
    progress
        Show a progress bar.
    loss_fn
        ``batch -> dict of losses``; defaults to ``model(**batch)``.
    prepare
        ``loader batch -> model batch on the device``; defaults to moving every tensor there
        (:class:`CtP.device_augmentation.DeviceAugmentation` decodes and augments there too).

    Returns
    -------
    EpochResult
        The mean training loss and its terms, iterations, samples, skipped videos and seconds.
    """
    compute = loss_fn or (lambda batch: model(**batch))
    to_inputs = prepare or (lambda batch: _to_device(batch, device, channels_last))
    model.train()
    lr = float(optimizer.param_groups[0]["lr"])
    interval = _IntervalLog(log_path, epoch, lr)
    totals: dict[str, float] = {}
    steps: list[_Step] = []  # since the last log line: losses still on the device, and timings
    result = EpochResult(loss=math.nan)
    started = time.perf_counter()
    bar = progress_bar(total=len(loader), desc=f"epoch {epoch}", enabled=progress, leave=False)
    for iteration, (batch, data_time) in enumerate(_timed(loader), start=1):
        step_start = time.perf_counter()
        result.skipped += int(batch.pop("skipped").sum()) if "skipped" in batch else 0
        inputs = to_inputs(batch)
        with autocast(device, bf16):
            losses = compute(inputs)
        loss = training_loss(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()

        # the losses stay on the device until the next log line: reading one makes the host
        # wait for the device, which then idles while the host prepares the next batch
        values = {k: v.detach() for k, v in losses.items()} | {"loss": loss.detach()}
        result.iterations = iteration
        result.samples += len(inputs["imgs"])
        steps.append(_Step(values, time.perf_counter() - step_start + data_time, data_time))
        if iteration % log_interval == 0:
            last = _settle(steps, totals, interval)
            interval.flush(iteration)
            bar.set_postfix(loss=f"{last:.4f}")
        bar.update()
    bar.close()
    _settle(steps, totals, interval)
    interval.flush(result.iterations)
    if result.iterations:
        means = {k: v / result.iterations for k, v in totals.items()}
        result.loss = means.pop("loss")
        result.terms = means
    result.seconds = time.perf_counter() - started
    return result


@torch.inference_mode()
def predict_videos(
    model: Callable[[Tensor], Tensor],
    loader: DataLoader[Batch],
    *,
    device: torch.device,
    bf16: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``model`` on every clip of multi-clip samples and average the outputs per video.

    Parameters
    ----------
    model
        ``[B*K, 3, T, S, S] -> [B*K, D]`` (logits or features); put it in eval mode first.
    loader
        Batches from :class:`CtP.datasets.MultiClipDataset` (``imgs`` ``[B, K, 3, T, S, S]``).

    Returns
    -------
    tuple[Tensor, Tensor, Tensor]
        Per-video mean outputs ``[N, D]`` (float32, CPU), 0-based labels ``[N]`` and the validity
        mask ``[N]``, in dataset order.
    """
    outputs, labels, valid = [], [], []
    for batch in progress_bar(loader, desc=desc, enabled=progress, leave=False):
        imgs = batch["imgs"]  # [B, K, 3, T, S, S]
        b, k = imgs.shape[:2]
        clips = _to_device({"imgs": imgs.flatten(0, 1)}, device, channels_last)["imgs"]
        with autocast(device, bf16):
            out = model(clips)  # [B*K, D]
        outputs.append(out.float().reshape(b, k, -1).mean(dim=1))  # [B, D], on the device
        labels.append(batch["label"])
        valid.append(batch["valid"])
    return torch.cat(outputs).cpu(), torch.cat(labels), torch.cat(valid)  # one wait, at the end
