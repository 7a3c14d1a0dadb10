"""A folder of one's own unlabelled videos: to frame zips and client partitions, or read in place.

Any folder tree of video files, without labels (``--dataset videos``)::

    DIR/cam1/2024-05-01.mp4, DIR/cam1/2024-05-02.mp4, DIR/cam2/a.mov, ...

becomes the layout ``conf/dataset/videos.yaml`` reads::

    data/videos/zips/cam1/2024-05-01.zip              the video's path under DIR, without suffix
    data/videos/annotations/train.json                [{"name": "cam1/2024-05-01", "label": 1}]
    data/videos/annotations/client_distribution/client_dist{N}.json

There are no classes: every video has label 1. The clients are IID slices of the seeded
shuffle, or, with ``partition_by="folder"``, one client per top-level folder (each camera or
device its own client). Downstream evaluation needs labels and stays on UCF-101 / HMDB-51.

A SuperNode can also train on such a folder with no preparation at all
(:func:`fedvssl.data.video_files.video_file_names`): its clips are decoded from the files, and
nothing is written there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedvssl.data.annotations import partition_dir, write_annotations
from fedvssl.data.errors import DataError
from fedvssl.data.extraction import PlannedVideo, extract_planned, zip_path
from fedvssl.data.partitions import Record, partition_iid, write_client_lists
from fedvssl.data.report import PreparationReport, write_report
from fedvssl.data.video_files import find_videos

log = logging.getLogger(__name__)

PARTITION_BY = ("folder",)
TRAIN_FILE = "annotations/train.json"


def _name(folder: Path, video: Path) -> str:
    return video.relative_to(folder).with_suffix("").as_posix()


def folder_partitions(names: Sequence[str], num_clients: int | None) -> list[list[dict[str, Any]]]:
    """One client per top-level folder, in sorted folder order.

    Raises
    ------
    DataError
        If a video lies outside any top-level folder, there is only one folder, or
        ``num_clients`` is given and is not the number of folders.
    """
    loose = [n for n in names if "/" not in n]
    if loose:
        raise DataError(
            f"--partition-by folder makes one client per top-level folder, and {len(loose)} "
            f"videos lie directly in --raw (e.g. {loose[0]}): move them into a folder"
        )
    folders = sorted({n.split("/", 1)[0] for n in names})
    if len(folders) < 2:
        raise DataError(
            f"--partition-by folder found one top-level folder ({folders[0]}): a federation "
            "needs one folder per client; point --raw at the folder above them, or drop "
            "--partition-by for IID partitions"
        )
    if num_clients is not None and num_clients != len(folders):
        raise DataError(
            f"--partition-by folder found {len(folders)} top-level folders, not --num-clients "
            f"{num_clients}: leave --num-clients out or make it {len(folders)}"
        )
    return [[{"name": n, "label": 1} for n in names if n.split("/", 1)[0] == f] for f in folders]


def _partitions(
    records: Sequence[dict[str, Any]],
    num_clients: int | None,
    partition_by: str | None,
    seed: int,
) -> Sequence[Sequence[Record]]:
    if partition_by == "folder":
        return folder_partitions([r["name"] for r in records], num_clients)
    if partition_by is not None:
        raise DataError(f"--partition-by must be one of {', '.join(PARTITION_BY)}")
    if num_clients is None:
        raise DataError("--dataset videos needs --num-clients N, or --partition-by folder")
    return partition_iid(records, num_clients, seed)


def prepare_own_videos(
    data_dir: Path,
    raw: Path | None,
    *,
    num_clients: int | None = None,
    partition_by: str | None = None,
    seed: int = 7,
    short_side: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    disk_check: bool = True,
) -> PreparationReport:
    """Prepare a folder tree of unlabelled videos under ``data_dir/videos``.

    Parameters
    ----------
    data_dir : Path
        Parent of the dataset root.
    raw : Path | None
        The folder of videos (any depth; the top-level folders are the clients with
        ``partition_by="folder"``).
    num_clients : int | None
        IID clients (required without ``partition_by``); with it, the number of folders.
    partition_by : str | None
        ``"folder"``: one client per top-level folder.
    seed : int
        Seed of the IID shuffle.
    short_side : int | None
        Short side of the stored frames (None: native).
    workers : int | None
        Extraction processes.
    progress : bool
        Show a progress bar.
    disk_check : bool
        Refuse to start when the projected frames do not fit on the disk.

    Returns
    -------
    PreparationReport
        Counts, written files and the videos left out (also in ``preparation_report.json``).

    Raises
    ------
    DataError
        On bad input, before anything is written: no videos, one folder with
        ``--partition-by folder``, a number of clients that does not fit, not enough disk.
    """
    root = data_dir / "videos"
    if raw is None:
        raise DataError("--dataset videos needs --raw DIR, the folder of your videos")
    report = PreparationReport("videos", root)
    plan: list[PlannedVideo] = []
    first: dict[str, Path] = {}
    for video in find_videos(raw):
        name = _name(raw, video)
        if name in first:  # a.mp4 beside a.mov: one name, two files
            report.duplicates.append(f"{video.relative_to(raw)} (the name of {first[name].name})")
            continue
        first[name] = video
        plan.append(PlannedVideo(name, video, zip_path(root, name)))
    records = [{"name": p.name, "label": 1} for p in plan]
    _partitions(records, num_clients, partition_by, seed)  # refuse bad settings before any work
    done = extract_planned(
        root, plan, short_side=short_side, workers=workers, progress=progress,
        disk_check=disk_check,
    )  # fmt: skip
    report.extracted, report.skipped = done.extracted, done.already_there
    report.failed, report.partial = done.failed, done.partial
    train = [r for r, p in zip(records, plan, strict=True) if p.zip_path.is_file()]
    if not train:
        raise DataError(f"no video of {raw} could be decoded ({len(done.failed)} failed)")
    report.train = len(train)
    report.annotation_files = [write_annotations(train, root / TRAIN_FILE)]
    report.partition_files = write_client_lists(
        _partitions(train, num_clients, partition_by, seed), partition_dir(root)
    )
    write_report(report)
    return report
