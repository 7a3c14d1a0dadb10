"""A client process's data: its partition's pretext samples and one lasting loader.

A Ray actor (or any long-lived client process) trains many clients over many rounds. Building a
DataLoader each round would start its worker processes each round; instead the process keeps one
loader per data setting, with persistent workers, whose dataset serves every partition: a sample
is asked for by ``(partition, epoch, position)`` (:class:`PartitionClips`) and the loader's
sampler (:class:`RoundSampler`) is pointed at the next client's partition and round before each
epoch. The shuffle is the one a fresh ``DataLoader(shuffle=True)`` seeded the same way would make,
and every sample's randomness comes from ``(seed, epoch, index)``, so the batches are the same
whatever the number of workers, and whether the loader is new or kept.

Where CtP clips are decoded and augmented is ``augment`` (conf/base.yaml): ``cpu`` in the loader
workers, ``device`` on the training device in batches (:mod:`CtP.device_augmentation`), ``auto``
on the device when it is a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from CtP.datasets import (
    Annotation,
    FrameSource,
    SkippingDataset,
    VideoFileSource,
    load_annotations,
    open_frame_source,
)
from CtP.device_augmentation import PlannedClips, collate_planned
from CtP.recipe import CtPRecipe
from CtP.train import make_loader
from fedvssl.data.video_files import video_file_names
from fedvssl.settings import ClientSettings, check_augment

Key = tuple[int, int, int]  # (partition, epoch, position in the partition)


def augments_on_device(settings: ClientSettings, device: torch.device) -> bool:
    """Whether the clips are decoded and augmented on ``device`` (see the module's docstring)."""
    check_augment(settings.augment, settings.pretext.name)
    wanted = {"cpu": False, "device": True, "auto": device.type == "cuda"}[settings.augment]
    return isinstance(settings.pretext, CtPRecipe) and wanted


def build_dataset(
    settings: ClientSettings, partition_id: int, on_device: bool = False
) -> SkippingDataset:
    """Build a client's pretext dataset over its partition (planned clips for the device path)."""
    items, source = _videos_of(settings, partition_id)
    seed = settings.seed * 1000 + partition_id
    if on_device and isinstance(settings.pretext, CtPRecipe):
        augmentation = settings.pretext.augmentation(settings.crop_size)
        return PlannedClips(items, source, augmentation, clip_len=settings.clip_len, seed=seed)
    return settings.pretext.dataset(
        items, source, clip_len=settings.clip_len, crop_size=settings.crop_size, seed=seed
    )


def _videos_of(settings: ClientSettings, partition_id: int) -> tuple[list[Annotation], FrameSource]:
    """Return a client's videos and their frame source: its partition, or its own folder."""
    if settings.videos:  # every video file of the node's folder, decoded in place
        names = video_file_names(Path(settings.videos))
        return [Annotation(name, 1) for name in names], VideoFileSource(settings.videos, "{name}")
    annotations = settings.partition_file(partition_id)
    if not annotations.is_file():
        raise FileNotFoundError(
            f"partition {partition_id} is not on this node ({annotations} does not exist): "
            "prepare it with dataset_preparation.py --num-clients N, or point the node's "
            "data-dir or annotations at it (--node-config)"
        )
    source = open_frame_source(
        settings.frames, settings.dataset_root,
        zip_template=settings.zip_template, video_template=settings.video_template,
    )  # fmt: skip
    return load_annotations(annotations), source


class PartitionClips(Dataset[dict[str, Any]]):
    """Every partition's pretext samples behind one index, ``(partition, epoch, position)``.

    Each partition's dataset is built by ``build(partition_id)`` on first use, in whichever
    process asks (the loader's workers build their own), and kept.
    """

    def __init__(self, build: Callable[[int], SkippingDataset]) -> None:
        self.build = build
        self._partitions: dict[int, SkippingDataset] = {}

    def partition(self, partition_id: int) -> SkippingDataset:
        """Return the dataset of one partition."""
        if partition_id not in self._partitions:
            self._partitions[partition_id] = self.build(partition_id)
        return self._partitions[partition_id]

    def __len__(self) -> int:
        return sum(len(d) for d in self._partitions.values())

    def __getitem__(self, key: Key) -> dict[str, Any]:
        partition_id, epoch, position = key
        dataset = self.partition(partition_id)
        dataset.set_epoch(epoch)
        return dataset[position]


class RoundSampler(Sampler[Key]):
    """The keys of one partition's epoch, shuffled as a seeded ``DataLoader(shuffle=True)``."""

    def __init__(self) -> None:
        self.partition_id, self.epoch, self.size, self.seed = 0, 0, 0, 0

    def start(self, partition_id: int, epoch: int, size: int, seed: int) -> None:
        """Point the next pass at a partition's epoch."""
        self.partition_id, self.epoch, self.size, self.seed = partition_id, epoch, size, seed

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Key]:
        generator = torch.Generator().manual_seed(self.seed)
        # a DataLoader draws its workers' base seed from its generator before shuffling
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        for position in torch.randperm(self.size, generator=generator).tolist():
            yield self.partition_id, self.epoch, position


@dataclass
class RoundLoader:
    """A lasting loader: the dataset of every partition, its sampler, the DataLoader."""

    clips: PartitionClips
    sampler: RoundSampler
    loader: DataLoader[dict[str, Any]]


_LOADERS: dict[tuple[ClientSettings, bool, bool], RoundLoader] = {}


def round_loader(
    settings: ClientSettings, partition_id: int, epoch: int, seed: int, device: torch.device
) -> tuple[DataLoader[dict[str, Any]], SkippingDataset]:
    """Point this process's loader at one partition's epoch; return it and the partition.

    Parameters
    ----------
    settings
        The client settings (one loader, and one set of workers, per distinct settings).
    partition_id, epoch
        Whose samples, and which epoch's random stream (``set_epoch``).
    seed
        Seed of the shuffle.
    device
        The training device (pinned memory and the device path on CUDA).

    Returns
    -------
    tuple
        The DataLoader (iterate it once for the epoch) and the partition's dataset.
    """
    on_device = augments_on_device(settings, device)
    key = (settings, on_device, device.type == "cuda")
    if key not in _LOADERS:
        _LOADERS.clear()  # one run's settings per process: other loaders' workers can stop
        clips = PartitionClips(functools.partial(build_dataset, settings, on_device=on_device))
        sampler = RoundSampler()
        loader = make_loader(
            clips, batch_size=settings.batch_size, workers=settings.workers, shuffle=False,
            pin_memory=device.type == "cuda", sampler=sampler,
            collate_fn=collate_planned if on_device else None,
        )  # fmt: skip
        _LOADERS[key] = RoundLoader(clips, sampler, loader)
    kept = _LOADERS[key]
    dataset = kept.clips.partition(partition_id)  # built here first: a missing one fails here
    kept.sampler.start(partition_id, epoch, len(dataset), seed)
    return kept.loader, dataset
