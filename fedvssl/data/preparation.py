"""Dataset preparation: raw videos and split lists -> frame zips, annotations, client partitions.

``prepare_dataset`` takes the synthetic dataset (generated on first use), UCF-101 or HMDB-51 from
its raw layout to the layout every other module reads (Kinetics-400 and a folder of one's own
videos go through :mod:`fedvssl.data.kinetics` and :mod:`fedvssl.data.own_videos`, to the same
layout with their own list names)::

    data/<dataset>/zips/<Class>/<video>.zip                              JPEG frames
    data/<dataset>/annotations/{train,test}_split_1.json                  [{"name", "label"}]
    data/<dataset>/annotations/client_distribution/client_dist{N}.json   IID, seed 7

It can be stopped and run again at any point: zips and lists are written atomically, finished
videos are skipped, and when only the partitions are missing (a new number of clients) nothing
is decoded again. A video that is missing or cannot be decoded is left out and reported.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedvssl.data.annotations import (
    client_dist_path,
    partition_dir,
    read_annotations,
    split_path,
    write_annotations,
    write_json_atomic,
)
from fedvssl.data.errors import DataError
from fedvssl.data.extraction import FRAMES_MANIFEST, ZIP_DIR, recorded_short_side, zip_path
from fedvssl.data.frames import FrameJob, extract_frames
from fedvssl.data.kinetics import prepare_kinetics
from fedvssl.data.own_videos import prepare_own_videos
from fedvssl.data.partitions import write_partitions
from fedvssl.data.report import PreparationReport
from fedvssl.data.sources import hmdb51_parts, index_videos, materialise, ucf101_parts
from fedvssl.data.splits import Split, SplitEntry, read_hmdb_split, read_ucf_split
from fedvssl.data.synthetic import RAW_DIR, SPLITS_DIR, generate_synthetic_ucf, recorded_setting
from fedvssl.data.workers import run_jobs

log = logging.getLogger(__name__)

DATASETS = ("synthetic", "ucf101", "hmdb51", "k400", "videos")
DEFAULT_CLIENTS = 5  # the Flower baseline's UCF-101 run (reference §4.1)
SPLIT_1_FILES = ("annotations/train_split_1.json", "annotations/test_split_1.json")


def _records(entries: list[SplitEntry], ready: set[str]) -> list[dict[str, Any]]:
    return [{"name": e.name, "label": e.label} for e in entries if e.name in ready]


def _prepared_lists(root: Path, files: Sequence[Path]) -> list[list[dict[str, Any]]] | None:
    """Return the annotation lists if they and all their zips are already there."""
    try:
        lists = [read_annotations(path) for path in files]
    except DataError:
        return None
    if not all(zip_path(root, r["name"]).is_file() for records in lists for r in records):
        return None
    return lists


def dataset_is_prepared(
    root: Path, num_clients: int, annotations: Sequence[str] = SPLIT_1_FILES
) -> bool:
    """Tell whether a dataset root holds its annotation lists, their zips and K partitions.

    Parameters
    ----------
    root : Path
        ``data_dir/<dataset>``.
    num_clients : int
        Number of clients K the partitions must be for.
    annotations : Sequence[str]
        The annotation files, relative to ``root``, the training list first (default: split
        1 of UCF-101 and HMDB-51; Kinetics-400 has ``annotations/train.json`` and ``val.json``,
        a folder of one's own videos only ``annotations/train.json``).

    Returns
    -------
    bool
        True when ``client_dist1..K.json`` exist (and no ``client_dist{K+1}.json``), name only
        videos of the training list (the original non-IID partitions of Kinetics-400 repeat
        videos and leave classes out), and every annotated video has its zip.
    """
    lists = _prepared_lists(root, [root / name for name in annotations])
    if lists is None or num_clients < 1:
        return False
    out_dir = partition_dir(root)
    if client_dist_path(out_dir, num_clients + 1).exists():
        return False
    try:
        parts = [read_annotations(client_dist_path(out_dir, n)) for n in range(1, num_clients + 1)]
    except DataError:
        return False
    in_parts = {r["name"] for records in parts for r in records}
    return in_parts <= {r["name"] for r in lists[0]}


def _read_split(
    dataset: str,
    root: Path,
    *,
    raw: Path | None,
    splits: Path | None,
    split: int,
    scale: float | None,
    light: float | None,
    workers: int | None,
    progress: bool,
    verify_tls: bool,
) -> tuple[Split, Path]:
    """Make the raw videos and split files available; return the split and the video folder."""
    if dataset == "synthetic":
        if raw is not None or splits is not None:
            raise DataError("--raw and --splits do not apply to the synthetic dataset")
        scale = scale or recorded_setting(root, "scale") or 1.0
        light = (recorded_setting(root, "light_change") or 0.0) if light is None else light
        if generate_synthetic_ucf(
            root, scale=scale, light_change=light, workers=workers, progress=progress
        ):  # new or changed videos: frames and lists of any earlier run are stale
            shutil.rmtree(root / ZIP_DIR, ignore_errors=True)
            shutil.rmtree(root / "annotations", ignore_errors=True)
        return read_ucf_split(root / SPLITS_DIR, split), root / RAW_DIR
    videos, lists = ucf101_parts(root) if dataset == "ucf101" else hmdb51_parts(root)
    split_dir = materialise(lists, splits, verify_tls=verify_tls, progress=progress)
    reader = read_ucf_split if dataset == "ucf101" else read_hmdb_split
    parsed = reader(split_dir, split)  # read the lists before fetching gigabytes of video
    return parsed, materialise(videos, raw, verify_tls=verify_tls, progress=progress)


def _frame_jobs(
    split: Split, root: Path, video_dir: Path, short_side: int | None, report: PreparationReport
) -> list[FrameJob]:
    index = index_videos(video_dir)
    jobs, seen = [], set()
    for entry in split.train + split.test:
        if entry.name in seen:
            continue
        seen.add(entry.name)
        target = zip_path(root, entry.name)
        in_class = video_dir / entry.class_name / entry.video_file
        video = in_class if in_class.is_file() else index.get(entry.video_file)
        if target.is_file():
            report.skipped += 1
        elif video is None:
            report.missing.append(entry.name)
        else:
            jobs.append(FrameJob(entry.name, video, target, short_side))
    return jobs


def prepare_dataset(
    dataset: str,
    data_dir: Path,
    *,
    raw: Path | None = None,
    splits: Path | None = None,
    num_clients: int | None = None,
    seed: int = 7,
    short_side: int | None = None,
    workers: int | None = None,
    synthetic_scale: float | None = None,
    synthetic_light_change: float | None = None,
    split: int = 1,
    verify_tls: bool = True,
    progress: bool = True,
    annotations: Path | None = None,
    scheme: str = "noniid",
    partitions: Path | None = None,
    alpha: float = 0.5,
    partition_by: str | None = None,
    disk_check: bool = True,
) -> PreparationReport:
    """Prepare one dataset under ``data_dir/<dataset>``: frames, annotations and partitions.

    Parameters
    ----------
    dataset : str
        ``"synthetic"``, ``"ucf101"``, ``"hmdb51"``, ``"k400"``
        (:func:`fedvssl.data.kinetics.prepare_kinetics`) or ``"videos"``
        (:func:`fedvssl.data.own_videos.prepare_own_videos`).
    data_dir : Path
        Parent folder of the dataset roots (``data``).
    raw : Path | None
        Local videos: a folder (flat or class folders) or the official archive. Downloaded
        from the official address when neither this nor an earlier extraction is there.
    splits : Path | None
        Local split lists: a folder or the official archive. Downloaded likewise.
    num_clients : int | None
        Number of client partitions to write (default 5; Kinetics-400: 100; a folder of
        videos split by folder: one per top-level folder).
    seed : int
        Seed of the partition shuffle (7 in the original).
    short_side : int | None
        Resize frames so their short side has this length (native size when ``None``).
    workers : int | None
        Frame-extraction processes (default min(4, CPUs)).
    synthetic_scale : float | None
        Multiplier of the synthetic dataset's videos per class; ``None`` keeps the scale of a
        synthetic dataset already there (1.0 for a new one), so that asking for a new number
        of clients never rebuilds it.
    synthetic_light_change : float | None
        Largest change of each synthetic scene's log-brightness over its video (0: constant
        light); ``None`` keeps that of a synthetic dataset already there (0 for a new one).
    split : int
        Official split to prepare (1 to 3); files are named ``*_split_{split}.json``.
    verify_tls : bool
        Check TLS certificates when downloading.
    progress : bool
        Show progress bars.
    annotations, scheme, partitions, alpha : Path | None, str, Path | None, float
        Kinetics-400 only: the folder of its CSVs, the partition scheme (``noniid``, ``iid``,
        ``dirichlet``), a folder of published partitions to adopt, Dirichlet's concentration.
    partition_by : str | None
        A folder of videos only: ``"folder"`` makes one client per top-level folder.
    disk_check : bool
        Kinetics-400 and a folder of videos: refuse to start when the projected frames do not
        fit on the disk.

    Returns
    -------
    PreparationReport
        Counts, written files and the videos left out.

    Raises
    ------
    DataError
        On bad input (unknown dataset, missing paths or files, malformed lists, failed
        downloads) or when no training video could be prepared at all.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if num_clients is not None and num_clients < 1:
        raise DataError(f"--num-clients must be at least 1, got {num_clients}")
    if dataset == "k400":
        return prepare_kinetics(
            data_dir, raw, annotations=annotations, num_clients=num_clients, scheme=scheme,
            partitions=partitions, seed=seed, alpha=alpha, short_side=short_side,
            workers=workers, progress=progress, disk_check=disk_check,
        )  # fmt: skip
    if dataset == "videos":
        return prepare_own_videos(
            data_dir, raw, num_clients=num_clients, partition_by=partition_by, seed=seed,
            short_side=short_side, workers=workers, progress=progress, disk_check=disk_check,
        )  # fmt: skip
    num_clients = num_clients or DEFAULT_CLIENTS
    root = data_dir / dataset
    report = PreparationReport(dataset, root)
    fetch = functools.partial(
        _read_split,
        dataset,
        root,
        raw=raw,
        splits=splits,
        split=split,
        scale=synthetic_scale,
        light=synthetic_light_change,
        workers=workers,
        progress=progress,
        verify_tls=verify_tls,
    )
    # the synthetic videos are made first (cheap when there; rebuilt if their settings changed)
    source = fetch() if dataset == "synthetic" else None
    recorded_short_side(root, short_side)  # refuse a size change before any work
    files = [split_path(root, "train", split), split_path(root, "test", split)]
    lists = _prepared_lists(root, files) if raw is None and splits is None else None
    if lists is None:
        split_info, video_dir = source or fetch()
        short_side = recorded_short_side(root, short_side)
        write_json_atomic({"short_side": short_side}, root / ZIP_DIR / FRAMES_MANIFEST)
        train, test = _extract_all(
            split_info, root, video_dir, short_side, workers, progress, report
        )
    else:  # only the partitions may be new: decode nothing
        train, test = lists
        report.skipped = len(train) + len(test)
    report.train, report.test = len(train), len(test)
    report.annotation_files = [
        write_annotations(train, split_path(root, "train", split)),
        write_annotations(test, split_path(root, "test", split)),
    ]
    report.partition_files = write_partitions(train, partition_dir(root), num_clients, seed)
    return report


def _extract_all(
    split: Split,
    root: Path,
    video_dir: Path,
    short_side: int | None,
    workers: int | None,
    progress: bool,
    report: PreparationReport,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Extract the frames of every listed video; return the train and test lists of the rest."""
    jobs = _frame_jobs(split, root, video_dir, short_side, report)
    for result in run_jobs(extract_frames, jobs, workers=workers, desc="frames", progress=progress):
        if result.num_frames == 0:
            report.failed[result.name] = result.error or "no frames"
        else:
            report.extracted += 1
            if result.error:
                report.partial[result.name] = result.error
    ready = {e.name for e in split.train + split.test if zip_path(root, e.name).is_file()}
    train, test = _records(split.train, ready), _records(split.test, ready)
    if not train:
        raise DataError(
            f"no training video of {root.name} could be prepared ({len(report.missing)} missing, "
            f"{len(report.failed)} not decodable); check the --raw videos"
        )
    for name in report.missing:
        log.warning("video listed but not found: %s", name)
    for name, why in report.failed.items():
        log.warning("video cannot be decoded, left out: %s (%s)", name, why)
    return train, test
