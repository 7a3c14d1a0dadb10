"""Video datasets over annotation JSON: frames from CtP zips of JPEGs, or from video files.

An annotation file is a JSON list of ``{"name": "Class/video", "label": 1-based int}``, read and
checked by :mod:`CtP.annotations` (re-exported here). Two frame sources read a video by name:

- :class:`ZipFrameSource`: the CtP layout ``<root>/zips/<Class>/<video>.zip`` holding
  ``img_00001.jpg``, ``img_00002.jpg``, ... (one JPEG per frame, every frame of the video);
- :class:`VideoFileSource`: the video files themselves, decoded with PyAV.

Three datasets sit on top: :class:`CtPDataset` (the pretext task), :class:`ClipDataset` (one random
labelled clip per video, for fine-tuning) and :class:`MultiClipDataset` (uniformly spaced clips
per video, for testing and retrieval).

A video that is missing, corrupt or empty never ends an epoch: the pretext and fine-tuning datasets
log one warning naming it, count it, and serve the next video instead (the count travels with the
sample as ``"skipped"`` so that it survives DataLoader worker processes); the multi-clip dataset
marks the sample ``"valid": False`` so evaluation leaves it out. Every sample draws its randomness
from ``numpy.random.default_rng((seed, epoch, index))``, so a run is reproducible whatever the
number of workers.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from CtP.annotations import Annotation
from CtP.annotations import load_annotations as load_annotations  # re-exported
from CtP.sampling import random_clip_indices, uniform_clip_indices

logger = logging.getLogger(__name__)

Frames = np.ndarray  # uint8 [T, H, W, 3], RGB
IndexChooser = Callable[[int], np.ndarray]  # number of frames -> 0-based frame indices


class VideoReadError(RuntimeError):
    """A video could not be read: missing, corrupt, or without frames."""


class FrameSource(Protocol):
    """Reads chosen frames of a named video."""

    def read_clip(self, name: str, choose: IndexChooser) -> Frames:
        """Return the frames ``choose(num_frames)`` of video ``name`` as uint8 RGB ``[T,H,W,3]``."""
        ...


class ZipFrameSource:
    """Frames stored as JPEGs in one zip per video (the CtP layout).

    Parameters
    ----------
    root
        The dataset folder (``data/<dataset>``).
    template
        Path of a video's zip relative to ``root``; ``{name}`` is the annotation name.
    """

    def __init__(self, root: str | Path, template: str = "zips/{name}.zip") -> None:
        self.root = Path(root)
        self.template = template

    def read_clip(self, name: str, choose: IndexChooser) -> Frames:
        """Decode the chosen frames of one video."""
        try:
            return np.stack([_decode_jpeg(data) for data in self.read_jpegs(name, choose)])
        except cv2.error as err:
            raise VideoReadError(f"{self.root / self.template.format(name=name)}: {err}") from err

    def read_jpegs(self, name: str, choose: IndexChooser) -> list[bytes]:
        """Read the chosen frames of one video as JPEG files, without decoding them."""
        path = self.root / self.template.format(name=name)
        try:
            with zipfile.ZipFile(path) as archive:
                num_frames = sum(1 for n in archive.namelist() if n.endswith(".jpg"))
                if num_frames == 0:
                    raise VideoReadError(f"{path} holds no frames")
                return [archive.read(f"img_{i + 1:05d}.jpg") for i in choose(num_frames)]
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise VideoReadError(f"{path}: {err}") from err


def _decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoReadError("a frame is not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoFileSource:
    """Frames decoded from video files with PyAV.

    Parameters
    ----------
    root
        The dataset folder (``data/<dataset>``).
    template
        Path of a video file relative to ``root``: ``{name}`` is the annotation name
        (``Class/video``), ``{video}`` its last part and ``{cls}`` its first part. The default
        reads the flat raw UCF-101 layout.
    """

    def __init__(self, root: str | Path, template: str = "UCF101_raw/{video}.avi") -> None:
        self.root = Path(root)
        self.template = template

    def path_of(self, name: str) -> Path:
        """Return the file of video ``name``."""
        cls, _, video = name.rpartition("/")
        return self.root / self.template.format(name=name, video=video, cls=cls)

    def read_clip(self, name: str, choose: IndexChooser) -> Frames:
        """Decode the video sequentially up to the last chosen frame; keep the chosen ones.

        The number of frames comes from the container's index when it has one (MP4, AVI), so
        decoding stops at the last frame the clip needs and only the chosen frames are
        converted to RGB; otherwise (WebM, MKV), or when the index overstates the frames, the
        whole video is decoded first. The file is opened by Python, so any character in its
        name is safe.
        """
        import av  # PyAV is needed by this source only: frame zips are read without it

        path = self.path_of(name)
        try:
            with path.open("rb") as f, av.open(f, "r") as container:
                indexed = container.streams.video[0].frames
                clip = _decode_chosen(container, choose(indexed)) if indexed > 0 else None
            if clip is None:
                with path.open("rb") as f, av.open(f, "r") as container:
                    decoded = [
                        frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)
                    ]
                if not decoded:
                    raise VideoReadError(f"{path} holds no frames")
                clip = np.stack([decoded[i] for i in choose(len(decoded))])
        except (OSError, av.FFmpegError, ValueError, IndexError) as err:
            raise VideoReadError(f"{path}: {err}") from err
        return clip


def _decode_chosen(container: Any, wanted: np.ndarray) -> Frames | None:
    """Decode up to the last of the ``wanted`` frame indices; None when the video is shorter."""
    needed, kept = set(wanted.tolist()), {}
    last = max(needed)
    for index, frame in enumerate(container.decode(video=0)):
        if index in needed:
            kept[index] = frame.to_ndarray(format="rgb24")
        if index == last:
            return np.stack([kept[i] for i in wanted.tolist()])  # [T, H, W, 3]
    return None


def open_frame_source(
    kind: str, root: str | Path, *, zip_template: str, video_template: str
) -> FrameSource:
    """Open a dataset's frames: ``"zip"`` (CtP zips of JPEGs) or ``"video"`` (files, PyAV).

    Raises
    ------
    ValueError
        For any other ``kind``.
    """
    if kind == "zip":
        return ZipFrameSource(root, zip_template)
    if kind == "video":
        return VideoFileSource(root, video_template)
    raise ValueError(f"dataset.frames must be 'zip' or 'video', got {kind!r}")


class SkippingDataset(Dataset[dict[str, torch.Tensor]]):
    """Shared machinery: per-sample seeding; skipping unreadable videos, one warning each."""

    def __init__(self, annotations: Sequence[Annotation], source: FrameSource, seed: int) -> None:
        if not annotations:
            raise ValueError("the annotation list is empty: there is no video to read")
        self.annotations = list(annotations)
        self.source = source
        self.seed = seed
        self.epoch = 0
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.annotations)

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream, so that every epoch (or round) sees new clips."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def _make(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for skipped in range(len(self)):
            position = (index + skipped) % len(self)
            try:
                sample = self._make(position, self._rng(position))
            except VideoReadError as err:
                self._warn(self.annotations[position].name, err)
                continue
            sample["skipped"] = torch.tensor(skipped)
            return sample
        raise VideoReadError("no video of the annotation list could be read")

    def _warn(self, name: str, err: Exception) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning("skipping unreadable video %s (%s)", name, err)


class CtPDataset(SkippingDataset):
    """The CtP pretext dataset: one randomly sampled clip per video, with pasted patches.

    Parameters
    ----------
    annotations
        The videos (labels are ignored).
    source
        Where frames come from.
    augmentation
        ``(frames, rng) -> {"imgs": [3,T,S,S], "gt_trajs": [N,T,4], ...}``, e.g.
        :class:`CtP.ctp_augmentation.CtPAugmentation`.
    clip_len
        Frames per clip (reference: 16).
    strides
        Temporal strides drawn uniformly per clip (reference: 1 to 5).
    temporal_jitter
        Jitter each frame index within its stride (reference: on).
    seed
        Base seed of the per-sample random streams.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        augmentation: Callable[[Frames, np.random.Generator], dict[str, torch.Tensor]],
        *,
        clip_len: int = 16,
        strides: Sequence[int] = (1, 2, 3, 4, 5),
        temporal_jitter: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(annotations, source, seed)
        self.augmentation = augmentation
        self.clip_len = clip_len
        self.strides = tuple(strides)
        self.temporal_jitter = temporal_jitter

    def chooser(self, rng: np.random.Generator) -> IndexChooser:
        """Return the chooser of a clip's frame indices (§3.1), drawing from ``rng``."""

        def choose(n: int) -> np.ndarray:
            return random_clip_indices(n, self.clip_len, self.strides, self.temporal_jitter, rng)

        return choose

    def _make(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        frames = self.source.read_clip(self.annotations[index].name, self.chooser(rng))
        sample = self.augmentation(frames, rng)  # frames: [T, H, W, 3]
        return {"imgs": sample["imgs"], "gt_trajs": sample["gt_trajs"]}


class ClipDataset(SkippingDataset):
    """One random labelled clip per video, for fine-tuning (reference §7.1: 16 frames, stride 2).

    ``label`` in the sample is 0-based (the annotation's label minus 1).
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        transform: Callable[[Frames, np.random.Generator], torch.Tensor],
        *,
        clip_len: int = 16,
        stride: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(annotations, source, seed)
        self.transform = transform
        self.clip_len = clip_len
        self.stride = stride

    def _make(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        def choose(n: int) -> np.ndarray:
            return random_clip_indices(n, self.clip_len, (self.stride,), False, rng)

        item = self.annotations[index]
        frames = self.source.read_clip(item.name, choose)
        return {"imgs": self.transform(frames, rng), "label": torch.tensor(item.label - 1)}


class MultiClipDataset(Dataset[dict[str, torch.Tensor]]):
    """Uniformly spaced clips of every video, for testing and retrieval (reference §7.1, §7.2).

    A sample is ``{"imgs": [num_clips, 3, T, S, S], "label": 0-based, "index", "valid"}``; an
    unreadable video gives zeros and ``valid`` False (one warning), so evaluation can leave it out.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        transform: Callable[[Frames], torch.Tensor],
        *,
        clip_len: int = 16,
        stride: int = 2,
        num_clips: int = 10,
        crop_size: int = 112,
    ) -> None:
        if not annotations:
            raise ValueError("the annotation list is empty: there is no video to read")
        self.annotations = list(annotations)
        self.source = source
        self.transform = transform
        self.clip_len = clip_len
        self.stride = stride
        self.num_clips = num_clips
        self.crop_size = crop_size

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.annotations[index]

        def choose(n: int) -> np.ndarray:
            return uniform_clip_indices(n, self.clip_len, self.stride, self.num_clips).reshape(-1)

        try:
            frames = self.source.read_clip(item.name, choose)  # [K*T,H,W,3]
            clips = [self.transform(c) for c in np.split(frames, self.num_clips)]
            imgs, valid = torch.stack(clips), True  # [K,3,T,S,S]
        except VideoReadError as err:
            logger.warning("leaving out unreadable video %s (%s)", item.name, err)
            shape = (self.num_clips, 3, self.clip_len, self.crop_size, self.crop_size)
            imgs, valid = torch.zeros(shape), False
        return {
            "imgs": imgs,
            "label": torch.tensor(item.label - 1),
            "index": torch.tensor(index),
            "valid": torch.tensor(valid),
        }
