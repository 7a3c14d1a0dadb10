"""Kinetics-400 from its standard download to the layout ``conf/dataset/k400.yaml`` reads.

Input, as people have it (CVDF, DeepMind, mmaction2 copies)::

    K400_DIR/annotations/train.csv, val.csv (or validate.csv)
        label,youtube_id,time_start,time_end,split[,is_cc]
    K400_DIR/train/, val/ (or validate/)
        <youtube_id>_<start:06d>_<end:06d>.mp4, flat or in class folders (a few .webm, .mkv)

Output, named as the FedVSSL authors named it, so that their partition files and checkpoints
agree with ours::

    data/k400/zips/<class_dir>/<youtube_id>_<start:06d>_<end:06d>.zip
    data/k400/annotations/train.json, val.json                  [{"name", "label"}]
    data/k400/annotations/client_distribution/client_dist{N}.json

``class_dir`` is the CSV label with spaces as ``_``, keeping ``'`` and ``()``
(``massaging_person's_head``, ``hurling_(sport)``); labels are 1-based in the order of the
authors' ``classInd.txt`` (shipped as ``kinetics400_classInd.txt``), which is not alphabetical.
Rows without a video, duplicates, unknown classes and malformed rows are left out and reported;
so are videos that do not decode. The test CSV (no labels in most copies) is not used.
"""

from __future__ import annotations

import csv
import importlib.resources
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvssl.data.annotations import (
    client_dist_path,
    partition_dir,
    read_annotations,
    write_annotations,
)
from fedvssl.data.errors import DataError
from fedvssl.data.extraction import PlannedVideo, extract_planned, zip_path
from fedvssl.data.partitions import (
    Record,
    partition_dirichlet,
    partition_iid,
    partition_noniid,
    write_client_lists,
)
from fedvssl.data.report import PreparationReport, write_report

log = logging.getLogger(__name__)

CLASS_INDEX_FILE = "kinetics400_classInd.txt"  # the authors' classInd.txt, package data
HEADER = ("label", "youtube_id", "time_start", "time_end", "split")  # then optionally is_cc
SUBSETS = {"train": ("train",), "val": ("val", "validate")}  # CSV stems of each subset
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")  # preferred in this order when a clip has several
SCHEMES = ("noniid", "iid", "dirichlet")
DEFAULT_CLIENTS = 100  # the paper's K-400 federation (reference §4.2)
ANNOTATION_FILES = {"train": "annotations/train.json", "val": "annotations/val.json"}


@dataclass(frozen=True)
class KineticsRow:
    """One row of an annotation CSV."""

    where: str  # "train.csv:12", for the report
    subset: str  # "train" or "val"
    label: str  # as in the CSV: "massaging person's head"
    youtube_id: str
    start: int
    end: int

    @property
    def stem(self) -> str:
        """Return the clip's file name without suffix: ``<id>_<start:06d>_<end:06d>``."""
        return f"{self.youtube_id}_{self.start:06d}_{self.end:06d}"

    @property
    def name(self) -> str:
        """Return the annotation name ``<class_dir>/<stem>``."""
        return f"{class_dir(self.label)}/{self.stem}"


def class_dir(label: str) -> str:
    """Return the class folder of a CSV label: spaces as ``_``, ``'`` and ``()`` kept."""
    return "_".join(label.strip().split(" "))


def class_index() -> dict[str, int]:
    """Return the authors' class order: class folder -> 1-based label (400 classes)."""
    text = importlib.resources.files("fedvssl.data").joinpath(CLASS_INDEX_FILE).read_text("utf-8")
    pairs = (line.split(maxsplit=1) for line in text.splitlines() if line.strip())
    return {name.strip(): int(index) for index, name in pairs}


def find_csvs(folder: Path) -> dict[str, Path]:
    """Return the train and val CSVs of an annotation folder.

    Raises
    ------
    DataError
        If the folder or one of the two CSVs is missing.
    """
    if not folder.is_dir():
        raise DataError(
            f"no Kinetics-400 annotation folder at {folder}: put train.csv and val.csv there, "
            "or pass the folder that holds them with --annotations"
        )
    found = {}
    for subset, stems in SUBSETS.items():
        paths = [folder / f"{stem}.csv" for stem in stems if (folder / f"{stem}.csv").is_file()]
        if not paths:
            names = " or ".join(f"{stem}.csv" for stem in stems)
            raise DataError(
                f"{folder} has no {names}: pass the folder of the Kinetics-400 CSVs with "
                "--annotations"
            )
        found[subset] = paths[0]
    return found


def read_csv(path: Path, subset: str) -> tuple[list[KineticsRow], list[str]]:
    """Read one annotation CSV; return its rows and its malformed rows ("file:line: why").

    Raises
    ------
    DataError
        If the header is not ``label,youtube_id,time_start,time_end,split[,is_cc]``.
    """
    rows, malformed = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = tuple(column.strip() for column in next(reader, []))
        if header not in (HEADER, (*HEADER, "is_cc")):
            raise DataError(
                f"{path} has the header {','.join(header) or '(none)'}; a Kinetics-400 CSV "
                f"starts with {','.join(HEADER)} (and optionally is_cc)"
            )
        for line, values in enumerate(reader, start=2):
            where = f"{path.name}:{line}"
            try:
                label, youtube_id, start, end = (v.strip() for v in values[:4])
                row = KineticsRow(where, subset, label, youtube_id, int(start), int(end))
            except ValueError:
                malformed.append(f"{where}: {','.join(values)}")
                continue
            if not (label and youtube_id):
                malformed.append(f"{where}: {','.join(values)}")
                continue
            rows.append(row)
    return rows, malformed


def index_videos(raw: Path) -> dict[str, Path]:
    """Map every clip's file stem under ``raw`` (flat or class folders) to its video file."""
    rank = {suffix: i for i, suffix in enumerate(VIDEO_SUFFIXES)}
    found = sorted(
        (rank[p.suffix.lower()], str(p), p)
        for p in raw.rglob("*")
        if p.suffix.lower() in rank and not p.name.startswith(".") and p.is_file()
    )
    index: dict[str, Path] = {}
    for _, _, path in found:
        index.setdefault(path.stem, path)
    return index


@dataclass
class KineticsPlan:
    """The rows kept for each subset, the videos to store, and the rows left out."""

    records: dict[str, list[dict[str, Any]]]  # subset -> [{"name", "label"}] in CSV order
    videos: list[PlannedVideo]


def plan_kinetics(
    rows: Sequence[KineticsRow],
    videos: dict[str, Path],
    classes: dict[str, int],
    root: Path,
    report: PreparationReport,
) -> KineticsPlan:
    """Match CSV rows to videos and labels; report rows left out (no video, duplicate, class)."""
    plan = KineticsPlan({subset: [] for subset in SUBSETS}, [])
    seen: dict[str, str] = {}  # stem -> where it was first listed
    for row in rows:
        if row.stem in seen:
            report.duplicates.append(f"{row.where}: {row.stem} (first in {seen[row.stem]})")
            continue
        seen[row.stem] = row.where
        label = classes.get(class_dir(row.label))
        if label is None:
            report.unknown_classes.append(f"{row.where}: {row.label!r}")
        elif row.stem not in videos:
            report.missing.append(row.name)
        else:
            plan.records[row.subset].append({"name": row.name, "label": label})
            plan.videos.append(PlannedVideo(row.name, videos[row.stem], zip_path(root, row.name)))
    return plan


def read_published_partitions(folder: Path) -> list[list[dict[str, Any]]]:
    """Read ``client_dist1.json`` .. ``client_dist{N}.json`` of a folder (the authors' files).

    Raises
    ------
    DataError
        If the folder holds no ``client_dist1.json``, or a file is not an annotation list.
    """
    if not client_dist_path(folder, 1).is_file():
        raise DataError(
            f"--partitions folder {folder} has no client_dist1.json: pass the folder of the "
            "published client_dist{N}.json files"
        )
    clients, n = [], 1
    while client_dist_path(folder, n).is_file():
        clients.append(read_annotations(client_dist_path(folder, n)))
        n += 1
    return clients


def adopt_partitions(
    clients: Sequence[Sequence[dict[str, Any]]], train: Sequence[dict[str, Any]]
) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Keep the entries of given partitions whose video is in ``train``, with its label.

    Returns
    -------
    tuple
        The kept partitions, and the dropped entries ("client_dist{N}.json: name").

    Raises
    ------
    DataError
        If no entry at all, or no entry of some client, is in ``train``.
    """
    labels = {r["name"]: int(r["label"]) for r in train}
    kept: list[list[dict[str, Any]]] = []
    dropped: list[str] = []
    for n, records in enumerate(clients, start=1):
        kept.append(
            [
                {"name": r["name"], "label": labels[r["name"]]}
                for r in records
                if r["name"] in labels
            ]
        )
        dropped += [f"client_dist{n}.json: {r['name']}" for r in records if r["name"] not in labels]
    if not any(kept):
        raise DataError(
            "no entry of the --partitions files names a video of the training set here: check "
            "that they are Kinetics-400 partitions (names '<class_dir>/<id>_<start>_<end>')"
        )
    empty = [n for n, records in enumerate(kept, start=1) if not records]
    if empty:
        raise DataError(
            f"client_dist{empty[0]}.json of --partitions keeps none of its videos here "
            f"({len(empty)} such clients): prepare the videos it names, or make new partitions "
            "with --scheme"
        )
    return kept, dropped


def make_partitions(
    train: Sequence[Record], scheme: str, num_clients: int, seed: int, alpha: float
) -> list[list[Record]]:
    """Partition the training list by ``scheme`` (the original non-IID scheme, IID, Dirichlet)."""
    if scheme == "noniid":
        return partition_noniid(train, num_clients)
    if scheme == "iid":
        return partition_iid(train, num_clients, seed)
    if scheme == "dirichlet":
        return partition_dirichlet(train, num_clients, alpha, seed)
    raise DataError(f"unknown --scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def prepare_kinetics(
    data_dir: Path,
    raw: Path | None,
    *,
    annotations: Path | None = None,
    num_clients: int | None = None,
    scheme: str = "noniid",
    partitions: Path | None = None,
    seed: int = 7,
    alpha: float = 0.5,
    short_side: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    disk_check: bool = True,
) -> PreparationReport:
    """Prepare Kinetics-400 under ``data_dir/k400`` from its standard download.

    Parameters
    ----------
    data_dir : Path
        Parent of the dataset root.
    raw : Path | None
        ``K400_DIR``: the videos (train/, val/ or validate/, flat or class folders) and,
        unless ``annotations`` is given, ``annotations/*.csv``.
    annotations : Path | None
        The folder of the CSVs, when it is not ``K400_DIR/annotations``.
    num_clients : int | None
        Clients to partition the training list among (default 100); with ``partitions``, the
        number of files there (a different number is refused).
    scheme : str
        ``noniid`` (the original: 8 classes per client), ``iid`` or ``dirichlet``.
    partitions : Path | None
        A folder of published ``client_dist{N}.json`` files to adopt instead of a scheme.
    seed, alpha : int, float
        Seed of the IID and Dirichlet schemes; Dirichlet's concentration.
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
        Counts, written files and every row left out (also in ``preparation_report.json``).

    Raises
    ------
    DataError
        On bad input, before anything is written: no ``--raw``, a missing CSV or one with
        another header, no video under ``--raw``, partitions that name no video here, a scheme
        the data cannot satisfy, or not enough disk.
    """
    root = data_dir / "k400"
    if raw is None or not raw.is_dir():
        raise DataError(
            f"--raw must be the Kinetics-400 folder (train/, val/, annotations/), got {raw}"
        )
    csvs = find_csvs(annotations or raw / "annotations")
    report = PreparationReport("k400", root)
    rows: list[KineticsRow] = []
    for subset, path in csvs.items():
        subset_rows, malformed = read_csv(path, subset)
        rows += subset_rows
        report.malformed += malformed
    videos = index_videos(raw)
    if not videos:
        raise DataError(
            f"--raw {raw} holds no {'/'.join(VIDEO_SUFFIXES)} videos: pass the folder with "
            "the Kinetics-400 train/ and val/ videos"
        )
    plan = plan_kinetics(rows, videos, class_index(), root, report)
    adopted = read_published_partitions(partitions) if partitions is not None else None
    clients = len(adopted) if adopted is not None else num_clients or DEFAULT_CLIENTS
    if adopted is not None and num_clients is not None and num_clients != clients:
        raise DataError(
            f"--partitions holds {clients} clients, not --num-clients {num_clients}: "
            "leave --num-clients out"
        )
    # everything that can be refused is refused now, on the videos that are there
    if adopted is not None:
        adopt_partitions(adopted, plan.records["train"])
    elif plan.records["train"]:
        make_partitions(plan.records["train"], scheme, clients, seed, alpha)
    if not plan.records["train"]:
        raise DataError(f"no row of {csvs['train']} has its video under {raw}")
    done = extract_planned(
        root, plan.videos, short_side=short_side, workers=workers, progress=progress,
        disk_check=disk_check,
    )  # fmt: skip
    report.extracted, report.skipped = done.extracted, done.already_there
    report.failed, report.partial = done.failed, done.partial
    ready = {p.name for p in plan.videos if p.zip_path.is_file()}
    train = [r for r in plan.records["train"] if r["name"] in ready]
    val = [r for r in plan.records["val"] if r["name"] in ready]
    if not train:
        raise DataError(f"no training video could be decoded ({len(done.failed)} failed)")
    report.train, report.test = len(train), len(val)
    report.annotation_files = [
        write_annotations(train, root / ANNOTATION_FILES["train"]),
        write_annotations(val, root / ANNOTATION_FILES["val"]),
    ]
    parts: Sequence[Sequence[Record]]
    if adopted is not None:
        parts, report.dropped = adopt_partitions(adopted, train)
    else:
        parts = make_partitions(train, scheme, clients, seed, alpha)
    report.partition_files = write_client_lists(parts, partition_dir(root))
    write_report(report)
    return report
