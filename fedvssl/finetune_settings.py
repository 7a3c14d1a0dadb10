"""The downstream run's typed settings (``conf/finetune.yaml``), made once where the run starts.

:func:`fedvssl.finetune.downstream` takes the composed config (a plain dict) and builds these
settings and the dataset's :class:`~fedvssl.evaluation.DatasetFiles` from it; retrieval,
fine-tuning and the test then read typed fields, never the dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedvssl.evaluation import DownstreamError
from fedvssl.guard import config_values as values
from fedvssl.guard.config_values import ConfigValueError

# Settings that must be at least 1 (epochs may be 0: retrieval only).
POSITIVE_KEYS = ("batch_size", "clip_len", "crop_size", "frame_stride", "num_clips",
                 "eval_batch_size")  # fmt: skip


@dataclass(frozen=True)
class Optimisation:
    """SGD, its step decay and the gradient clip of the fine-tuning (reference §7.1)."""

    lr: float
    momentum: float
    weight_decay: float
    grad_clip: float
    milestones: tuple[int, ...]
    gamma: float


@dataclass(frozen=True)
class FinetuneSettings:
    """Retrieval, fine-tuning and test settings; see ``conf/finetune.yaml`` for each value."""

    seed: int
    resume: bool
    retrieval: bool
    recall_ks: tuple[int, ...]
    epochs: int
    batch_size: int
    clip_len: int
    frame_stride: int
    crop_size: int
    num_clips: int
    eval_batch_size: int
    workers: int
    width: int  # used with a random backbone only: a checkpoint sets its own
    dropout: float
    optimisation: Optimisation
    validate_every: int
    bf16: bool
    channels_last: bool
    log_interval: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FinetuneSettings:
        """Check and type the composed fine-tuning config.

        Raises
        ------
        DownstreamError
            With one line naming the first value of the wrong type or out of range.
        """
        try:
            return cls._from_config(cfg)
        except ConfigValueError as err:
            raise DownstreamError(str(err)) from None

    @classmethod
    def _from_config(cls, cfg: Mapping[str, Any]) -> FinetuneSettings:
        for key in POSITIVE_KEYS:
            values.integer(cfg, key, 1)
        if values.integer(cfg, "epochs") < 0:
            raise DownstreamError(f"epochs must be 0 (retrieval only) or more, got {cfg['epochs']}")
        return cls(
            seed=values.integer(cfg, "seed", 0), resume=values.flag(cfg, "resume"),
            retrieval=values.flag(cfg, "retrieval"),
            recall_ks=values.integers(cfg, "recall_ks", 1), epochs=int(cfg["epochs"]),
            batch_size=int(cfg["batch_size"]), clip_len=int(cfg["clip_len"]),
            frame_stride=int(cfg["frame_stride"]), crop_size=int(cfg["crop_size"]),
            num_clips=int(cfg["num_clips"]), eval_batch_size=int(cfg["eval_batch_size"]),
            workers=values.integer(cfg, "workers", 0), width=values.integer(cfg, "model.width", 1),
            dropout=values.number(cfg, "model.dropout", at_least=0),
            optimisation=Optimisation(
                lr=values.number(cfg, "optimizer.lr", above=0),
                momentum=values.number(cfg, "optimizer.momentum", at_least=0),
                weight_decay=values.number(cfg, "optimizer.weight_decay", at_least=0),
                grad_clip=values.number(cfg, "optimizer.grad_clip", above=0),
                milestones=values.integers(cfg, "optimizer.milestones", 1),
                gamma=values.number(cfg, "optimizer.gamma", above=0),
            ),
            validate_every=values.integer(cfg, "validate_every", 0),
            bf16=values.flag(cfg, "bf16"), channels_last=values.flag(cfg, "channels_last"),
            log_interval=values.integer(cfg, "log_interval", 1),
            progress=values.flag(cfg, "progress"),
        )  # fmt: skip
