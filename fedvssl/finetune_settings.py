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
            With one line naming the first value out of range.
        """
        for key in POSITIVE_KEYS:
            if int(cfg[key]) < 1:
                raise DownstreamError(f"{key} must be at least 1, got {cfg[key]}")
        if int(cfg["epochs"]) < 0:
            raise DownstreamError(f"epochs must be 0 (retrieval only) or more, got {cfg['epochs']}")
        opt = cfg["optimizer"]
        return cls(
            seed=int(cfg["seed"]), resume=bool(cfg["resume"]), retrieval=bool(cfg["retrieval"]),
            recall_ks=tuple(int(k) for k in cfg["recall_ks"]), epochs=int(cfg["epochs"]),
            batch_size=int(cfg["batch_size"]), clip_len=int(cfg["clip_len"]),
            frame_stride=int(cfg["frame_stride"]), crop_size=int(cfg["crop_size"]),
            num_clips=int(cfg["num_clips"]), eval_batch_size=int(cfg["eval_batch_size"]),
            workers=int(cfg["workers"]), width=int(cfg["model"]["width"]),
            dropout=float(cfg["model"]["dropout"]),
            optimisation=Optimisation(
                lr=float(opt["lr"]), momentum=float(opt["momentum"]),
                weight_decay=float(opt["weight_decay"]), grad_clip=float(opt["grad_clip"]),
                milestones=tuple(int(m) for m in opt["milestones"]), gamma=float(opt["gamma"]),
            ),
            validate_every=int(cfg["validate_every"]), bf16=bool(cfg["bf16"]),
            channels_last=bool(cfg["channels_last"]), log_interval=int(cfg["log_interval"]),
            progress=bool(cfg["progress"]),
        )  # fmt: skip
