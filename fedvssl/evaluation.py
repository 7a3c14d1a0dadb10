"""What retrieval and testing read, and the server's retrieval of the global model every K rounds.

Both entry points use this module: ``fedvssl.finetune`` for its retrieval and 10-clip test, and
``fedvssl.main`` (with ``evaluate_every=K``) for the per-round R@k of the global backbone, which
:func:`make_round_evaluator` builds once from :class:`RoundEvaluation` settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from CtP.backbone import load_backbone
from CtP.datasets import (
    Annotation,
    FrameSource,
    MultiClipDataset,
    load_annotations,
    open_frame_source,
)
from CtP.retrieval import RetrievalModel, build_retrieval_model, evaluate_retrieval
from CtP.transforms import EvalTransform
from fedvssl.data.errors import DataError
from fedvssl.guard import config_values as values

logger = logging.getLogger(__name__)

Config = dict[str, Any]
RoundEvaluator = Callable[[int, dict[str, np.ndarray]], dict[str, float]]


class DownstreamError(ValueError):
    """Bad input to retrieval or fine-tuning that the user can fix (the message says how)."""


@dataclass(frozen=True)
class DatasetFiles:
    """Where a prepared dataset's files are: the ``dataset`` section of the config, typed once."""

    name: str
    root: Path
    frames: str  # zip: CtP zips of JPEGs; video: the video files, decoded with PyAV
    zip_template: str
    video_template: str
    train_annotations: str  # relative to root
    test_annotations: str
    auto_prepare: bool  # prepare it on first use (the synthetic dataset)
    flip_changes_label: bool  # a horizontal flip turns one class into another
    num_classes: int | None = None  # labels 1..num_classes; None: as many as the largest label

    @classmethod
    def from_config(cls, dataset: Config) -> DatasetFiles:
        """Read the ``dataset`` section of a composed config."""
        return cls(
            name=str(dataset["name"]), root=Path(dataset["root"]), frames=str(dataset["frames"]),
            zip_template=str(dataset["zip_template"]),
            video_template=str(dataset["video_template"]),
            train_annotations=str(dataset["train_annotations"]),
            test_annotations=str(dataset["test_annotations"]),
            auto_prepare=bool(dataset.get("auto_prepare", False)),
            flip_changes_label=bool(dataset.get("flip_changes_label", False)),
            num_classes=values.optional_integer(dataset, "num_classes", 1),
        )  # fmt: skip

    def frame_source(self) -> FrameSource:
        """Where the frames come from: CtP zips of JPEGs, or the video files."""
        return open_frame_source(
            self.frames, self.root,
            zip_template=self.zip_template, video_template=self.video_template,
        )  # fmt: skip


def load_splits(dataset: DatasetFiles, data_dir: str) -> tuple[list[Annotation], list[Annotation]]:
    """Read the train and test annotations, preparing the synthetic dataset on first use."""
    root = dataset.root
    paths = [root / dataset.train_annotations, root / dataset.test_annotations]
    if not all(p.is_file() for p in paths) and dataset.auto_prepare:
        from fedvssl.data.preparation import prepare_dataset

        logger.info("preparing the %s dataset in %s (first use)", dataset.name, root)
        try:
            prepare_dataset(dataset.name, Path(data_dir))
        except DataError as err:
            raise DownstreamError(str(err)) from None
        except OSError as err:
            raise DownstreamError(
                f"cannot prepare the {dataset.name} dataset in {root} ({err.strerror or err}): "
                "choose a writable data_dir"
            ) from None
    missing = [p for p in paths if not p.is_file()]
    if missing:
        command = f"python dataset_preparation.py --dataset {dataset.name} --data-dir {data_dir}"
        raise DownstreamError(f"{missing[0]} does not exist: prepare the data with `{command}`")
    train, test = (load_annotations(p, dataset.num_classes) for p in paths)
    if not train or not test:
        raise DownstreamError(f"the annotations in {root} list no train or no test video")
    return train, test


def evenly_spaced(items: Sequence[Annotation], limit: int | None) -> list[Annotation]:
    """At most ``limit`` items, evenly spaced over the list (all of them for ``None``)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise DownstreamError(f"evaluation.max_videos must be at least 1, got {limit}")
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def multi_clip(
    source: FrameSource, items: Sequence[Annotation], *, clip_len: int, stride: int,
    crop_size: int, num_clips: int,
) -> MultiClipDataset:  # fmt: skip
    """Build the test/retrieval clips of ``items``: uniform clips, resize, centre crop (§7.1)."""
    return MultiClipDataset(
        items, source, EvalTransform(crop_size=crop_size), clip_len=clip_len, stride=stride,
        num_clips=num_clips, crop_size=crop_size,
    )  # fmt: skip


def pick_device() -> torch.device:
    """Return the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class RoundEvaluation:
    """Settings of the server's per-round retrieval (``evaluation`` in ``conf/base.yaml``)."""

    dataset: DatasetFiles
    data_dir: str
    clip_len: int
    stride: int  # frame stride of the evaluation clips (reference §7.2: 2)
    crop_size: int
    num_clips: int
    batch_size: int
    max_videos: int | None  # per split, an evenly spaced subset (None: all)
    ks: tuple[int, ...]
    workers: int
    bf16: bool
    channels_last: bool


def make_round_evaluator(settings: RoundEvaluation) -> RoundEvaluator:
    """Build the per-round retrieval of the global backbone during pre-training.

    Parameters
    ----------
    settings : RoundEvaluation
        Data, clips, batch and the cut-offs.

    Returns
    -------
    Callable
        ``evaluate(server_round, state) -> {"R@1": ..., "R@5": ...}`` over the test split
        (queries) and the train split (gallery); ``state`` holds the round's arrays by key.
    """
    train, test = load_splits(settings.dataset, settings.data_dir)
    source = settings.dataset.frame_source()
    clips = {
        "clip_len": settings.clip_len, "stride": settings.stride,
        "crop_size": settings.crop_size, "num_clips": settings.num_clips,
    }  # fmt: skip
    queries = multi_clip(source, evenly_spaced(test, settings.max_videos), **clips)
    gallery = multi_clip(source, evenly_spaced(train, settings.max_videos), **clips)
    device = pick_device()
    models: dict[int, RetrievalModel] = {}

    def evaluate(server_round: int, state: dict[str, np.ndarray]) -> dict[str, float]:
        backbone = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
        width = int(backbone["stem.conv.weight"].shape[0])
        if width not in models:
            models[width] = build_retrieval_model(None, width=width)
        model = models[width]
        load_backbone(model, backbone)
        return evaluate_retrieval(
            model, queries, gallery, device=device, ks=settings.ks,
            batch_size=settings.batch_size, workers=settings.workers, bf16=settings.bf16,
            channels_last=settings.channels_last, progress=False,
        )  # fmt: skip

    return evaluate
