"""A seeded synthetic action dataset written in the raw UCF-101 layout; classes differ by motion.

Each video shows two textured objects on a muted, textured, static background, both moving the
way of the video's class. The objects' shapes, colours, textures, sizes and orientations and the
background are drawn at random for every video from the same distribution whatever the class,
so only the motion tells the classes apart:
translation in four directions, circles in two senses, bouncing, spinning in place, zooming in
and out, each with random speed, path and speed profile. The output looks exactly like the
extracted official files::

    <root>/UCF101_raw/v_<Class>_gXX_cYY.avi    MPEG-4 (XVID tag), 25 fps
    <root>/ucfTrainTestlist/classInd.txt        "1 MoveRight" lines, CRLF
    <root>/ucfTrainTestlist/trainlist01.txt     "MoveRight/v_MoveRight_g03_c01.avi 1" lines
    <root>/ucfTrainTestlist/testlist01.txt      "MoveRight/v_MoveRight_g01_c01.avi" lines

As in UCF-101 split 1, whole groups go to the test list (the first groups of each class) or to the
train list. Every video has its own random stream, seeded by (seed, class, group, clip), so the
dataset is reproducible byte for byte and a larger ``scale`` only adds videos. ``light_change``
(0 by default) makes the light of every scene change steadily over its video
(:func:`fedvssl.data.scenes.change_light`): a cue to time that does not depend on the motion.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
import numpy as np

from fedvssl.data.annotations import write_json_atomic
from fedvssl.data.atomic import atomic_path, write_bytes_atomic
from fedvssl.data.scenes import (
    MOTIONS,
    change_light,
    render_video,
    sample_appearance,
    sample_track,
)
from fedvssl.data.workers import run_jobs

log = logging.getLogger(__name__)

VIDEOS_PER_CLASS = 28  # at scale 1: 8 test videos (groups 1-2) and 20 train videos
TEST_FRACTION = 8 / 28
CLIPS_PER_GROUP = 4
MANIFEST = "synthetic.json"
GENERATOR_VERSION = 2  # 2: two larger objects per video on a muted background
OBJECTS_PER_VIDEO = 2
RAW_DIR = "UCF101_raw"
SPLITS_DIR = "ucfTrainTestlist"


@dataclass(frozen=True)
class VideoSpec:
    """One video of the plan: class, UCF group and clip numbers, and its split-1 subset."""

    motion: str
    label: int  # 1-based, as in classInd.txt
    group: int
    clip: int
    subset: str  # "train" or "test"

    @property
    def file_name(self) -> str:
        """Return the UCF-style file name ``v_<Class>_gXX_cYY.avi``."""
        return f"v_{self.motion}_g{self.group:02d}_c{self.clip:02d}.avi"


# The containers :func:`write_video` writes, by file suffix (the temporary name hides it).
CONTAINERS = {".avi": "avi", ".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 25,
    bit_rate: int | None = 800_000,
    *,
    codec: str = "mpeg4",
    options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames as a video file with PyAV, atomically.

    The synthetic set's videos are MPEG-4 in AVI with UCF-101's XVID tag (the defaults); tests
    and benchmarks write other codecs and containers through the same function.

    Parameters
    ----------
    path : Path
        Destination file; its suffix names the container (:data:`CONTAINERS`).
    frames : numpy.ndarray
        RGB uint8 frames [T, H, W, 3]; H and W must be even.
    fps : int
        Frame rate.
    bit_rate : int or None
        Target bit rate in bits per second; None leaves the rate to the codec (libx264's crf).
    codec : str
        FFmpeg encoder (``mpeg4``, ``libx264``, ``libvpx``).
    options : dict or None
        Encoder options, e.g. ``{"preset": "fast", "crf": "23"}``.

    Returns
    -------
    Path
        ``path``.
    """
    container_format = CONTAINERS[path.suffix.lower()]
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=container_format) as container:
        stream = cast(av.VideoStream, container.add_stream(codec, rate=fps, options=options or {}))
        if container_format == "avi":
            stream.codec_context.codec_tag = "XVID"  # the FourCC of UCF-101's files
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def video_plan(num_classes: int = 10, scale: float = 1.0) -> list[VideoSpec]:
    """List the videos of the dataset: per class, test groups first, then train groups.

    Parameters
    ----------
    num_classes : int
        Number of motion classes (at most ``len(MOTIONS)``).
    scale : float
        Multiplier of the 28 videos per class (at least 2 per class: one train, one test).

    Returns
    -------
    list[VideoSpec]
        Videos in class, group, clip order.
    """
    if not 1 <= num_classes <= len(MOTIONS):
        raise ValueError(f"num_classes must be in 1..{len(MOTIONS)}, got {num_classes}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    per_class = max(2, round(VIDEOS_PER_CLASS * scale))
    num_test = max(1, round(per_class * TEST_FRACTION))
    plan = []
    for label, motion in enumerate(MOTIONS[:num_classes], start=1):
        group = 0
        for subset, count in (("test", num_test), ("train", per_class - num_test)):
            for k in range(count):
                group += k % CLIPS_PER_GROUP == 0
                plan.append(VideoSpec(motion, label, group, k % CLIPS_PER_GROUP + 1, subset))
    return plan


def make_video(
    spec: VideoSpec,
    *,
    seed: int,
    frames: tuple[int, int],
    size: tuple[int, int],
    light_change: float = 0.0,
) -> np.ndarray:
    """Render one planned video from its own random stream.

    Parameters
    ----------
    spec : VideoSpec
        The video.
    seed : int
        Dataset seed.
    frames : tuple[int, int]
        Inclusive range of the frame count.
    size : tuple[int, int]
        Frame (width, height).
    light_change : float
        Largest change of the scene's log-brightness over the video (0: constant light, and
        the same video as without it).

    Returns
    -------
    numpy.ndarray
        RGB uint8 frames [T, H, W, 3].
    """
    rng = np.random.default_rng([seed, spec.label, spec.group, spec.clip])
    look = sample_appearance(rng, *size)
    num_frames = int(rng.integers(frames[0], frames[1] + 1))
    video = render_video(look, sample_track(spec.motion, rng, num_frames, size, look.radius))
    for _ in range(OBJECTS_PER_VIDEO - 1):  # the others move the same way, each on its own path
        look = sample_appearance(rng, *size, background=look.background)
        track = sample_track(spec.motion, rng, num_frames, size, look.radius)
        video = render_video(look, track, base=video)
    return change_light(video, rng, light_change)


@dataclass(frozen=True)
class SyntheticJob:
    """Render and write one planned video (a picklable job for a worker process)."""

    spec: VideoSpec
    path: Path
    seed: int
    frames: tuple[int, int]
    size: tuple[int, int]
    fps: int
    light_change: float = 0.0


def write_synthetic_video(job: SyntheticJob) -> Path:
    """Render one planned video and write it; run in a worker process.

    Parameters
    ----------
    job : SyntheticJob
        The video and its settings.

    Returns
    -------
    Path
        The written ``.avi`` file.
    """
    video = make_video(
        job.spec, seed=job.seed, frames=job.frames, size=job.size, light_change=job.light_change
    )
    return write_video(job.path, video, job.fps)


def _write_lists(plan: list[VideoSpec], splits_dir: Path, num_classes: int) -> None:
    """Write classInd / trainlist01 / testlist01 exactly like the official files (CRLF)."""
    lines = {
        "classInd.txt": [f"{i} {m}" for i, m in enumerate(MOTIONS[:num_classes], start=1)],
        "trainlist01.txt": [
            f"{s.motion}/{s.file_name} {s.label}" for s in plan if s.subset == "train"
        ],
        "testlist01.txt": [f"{s.motion}/{s.file_name}" for s in plan if s.subset == "test"],
    }
    for name, rows in lines.items():
        write_bytes_atomic("".join(row + "\r\n" for row in rows).encode("ascii"), splits_dir / name)


def recorded_setting(root: Path, key: str) -> float | None:
    """Return a setting the synthetic dataset in ``root`` was made with.

    ``key`` is ``scale`` or ``light_change``; ``None`` when there is no dataset, or it was made
    without that setting.
    """
    try:
        return float(json.loads((root / MANIFEST).read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def generate_synthetic_ucf(
    root: Path,
    *,
    scale: float = 1.0,
    seed: int = 0,
    num_classes: int = 10,
    frames: tuple[int, int] = (40, 48),
    size: tuple[int, int] = (128, 96),
    fps: int = 25,
    light_change: float = 0.0,
    workers: int | None = None,
    progress: bool = False,
) -> bool:
    """Write the synthetic dataset into ``root`` in the raw UCF-101 layout, unless already there.

    Parameters
    ----------
    root : Path
        Dataset root; ``UCF101_raw/`` and ``ucfTrainTestlist/`` are written inside.
    scale : float
        Multiplier of the number of videos per class (1.0: 20 train + 8 test).
    seed : int
        Seed of the whole dataset.
    num_classes : int
        Number of motion classes, at most 10.
    frames : tuple[int, int]
        Inclusive range of frames per video.
    size : tuple[int, int]
        Frame (width, height), both even.
    fps : int
        Frame rate.
    light_change : float
        Largest change of each scene's log-brightness over its video (0: constant light).
    workers : int | None
        Worker processes (default: min(4, CPUs)).
    progress : bool
        Show a progress bar.

    Returns
    -------
    bool
        True when videos were (re)written, False when a matching dataset was already there.
        Raw files of a dataset made with other settings are replaced.
    """
    settings = {
        "version": GENERATOR_VERSION,
        "scale": scale,
        "seed": seed,
        "num_classes": num_classes,
        "frames": list(frames),
        "size": list(size),
        "fps": fps,
    } | ({"light_change": light_change} if light_change else {})  # datasets made before it match
    if light_change < 0:  # bad settings are refused before a dataset already there is touched
        raise ValueError(f"light_change must be at least 0, got {light_change}")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"frame width and height must be even, got {size}")
    plan = video_plan(num_classes, scale)
    manifest = root / MANIFEST
    if manifest.is_file():
        if json.loads(manifest.read_text()) == settings:
            return False
        log.info("synthetic dataset in %s was made with other settings: writing it again", root)
        manifest.unlink()
        for folder in (RAW_DIR, SPLITS_DIR):
            shutil.rmtree(root / folder, ignore_errors=True)
    log.info("writing %d synthetic videos into %s", len(plan), root / RAW_DIR)
    jobs = [  # an interrupted run resumes: every video is deterministic and written atomically
        SyntheticJob(spec, root / RAW_DIR / spec.file_name, seed, frames, size, fps, light_change)
        for spec in plan
        if not (root / RAW_DIR / spec.file_name).is_file()
    ]
    for _ in run_jobs(
        write_synthetic_video, jobs, workers=workers, desc="synthetic", progress=progress
    ):
        pass
    _write_lists(plan, root / SPLITS_DIR, num_classes)
    write_json_atomic(settings, manifest)
    return True
