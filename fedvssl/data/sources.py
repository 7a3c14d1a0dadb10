"""Where the raw videos and split files come from: official addresses or local files.

For each dataset, a raw part (videos) and a split part (the official lists) are each taken from,
in order: the ``--raw`` / ``--splits`` path given by the user (a folder used in place, or a
``.zip`` / ``.rar`` archive extracted beside the dataset), a folder already extracted by an
earlier run, or the official address (downloaded with resume, then extracted). An extraction
leaves a marker file naming its source, so an interrupted extraction is redone and a completed
one is not. Layout under ``data/<dataset>``::

    ucf101/UCF101_raw/v_<Class>_gXX_cYY.avi           (flat, as ``unrar e`` gives)
    ucf101/ucfTrainTestlist/classInd.txt ...
    hmdb51/hmdb51_raw/<class>/<video>.avi
    hmdb51/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from CtP.progress import progress_bar
from fedvssl.data.archives import extract_archive
from fedvssl.data.download import download_file
from fedvssl.data.errors import DataError
from fedvssl.data.splits import VIDEO_SUFFIX

log = logging.getLogger(__name__)

MARKER = ".extracted.json"
IN_PROGRESS = ".extracting"


@dataclass(frozen=True)
class RemoteFile:
    """An official download: its address and, when known, its size and SHA-256."""

    url: str
    size: int | None = None
    sha256: str | None = None

    @property
    def file_name(self) -> str:
        """Return the last component of the address."""
        return self.url.rsplit("/", 1)[-1]


UCF101_VIDEOS = RemoteFile("https://www.crcv.ucf.edu/data/UCF101/UCF101.rar")
UCF101_SPLITS = RemoteFile(
    "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
)
HMDB51_VIDEOS = RemoteFile(
    "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"
)
HMDB51_SPLITS = RemoteFile(
    "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
)


@dataclass(frozen=True)
class Part:
    """One part of a dataset to materialise: the folder it lives in and how to fill it."""

    what: str  # "videos" or "split files", for messages
    option: str  # the command-line option that points at it
    remote: RemoteFile
    target: Path
    flat: bool
    select: Callable[[str], bool]
    looks_ready: Callable[[Path], bool]  # a folder filled by hand is used as it is
    nested: bool = False  # the archive holds one archive per class (HMDB-51)


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIX)


def _is_text(name: str) -> bool:
    return name.lower().endswith(".txt")


def _is_video_or_rar(name: str) -> bool:
    return _is_video(name) or name.lower().endswith(".rar")


def _has_videos(folder: Path) -> bool:
    return any(_is_video(p.name) for p in folder.rglob("*"))


def _marker_source(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MARKER).read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _extract_into(archive: Path, part: Part, progress: bool) -> Path:
    """Extract ``archive`` into the part's folder (again, unless this archive is already there)."""
    target = part.target
    if _marker_source(target) == str(archive.resolve()) and not (target / IN_PROGRESS).exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    (target / MARKER).unlink(missing_ok=True)
    (target / IN_PROGRESS).touch()
    with progress_bar(desc=f"extract {archive.name}", unit="file", enabled=progress) as bar:
        extract_archive(archive, target, flat=part.flat, select=part.select, progress=bar.update)
        if part.nested:
            for inner in sorted(target.rglob("*.rar")):
                inner_dir = target / inner.stem  # one class per inner archive
                extract_archive(inner, inner_dir, flat=True, select=_is_video, progress=bar.update)
                inner.unlink()
    (target / MARKER).write_text(json.dumps({"source": str(archive.resolve())}))
    (target / IN_PROGRESS).unlink()
    log.info("extracted %s into %s", archive, target)
    return target


def materialise(part: Part, given: Path | None, *, verify_tls: bool, progress: bool) -> Path:
    """Return a folder holding one part of a dataset, extracting or downloading it if needed.

    Parameters
    ----------
    part : Part
        What to materialise and where.
    given : Path | None
        A user-supplied folder (used in place) or archive (extracted into ``part.target``).
    verify_tls : bool
        Check TLS certificates when downloading.
    progress : bool
        Show progress bars.

    Returns
    -------
    Path
        The folder with the part's files.

    Raises
    ------
    DataError
        If the given path is missing or of the wrong kind, or the download or extraction fails.
    """
    if given is not None:
        if given.is_dir():
            if not part.looks_ready(given):
                raise DataError(f"{part.option} folder {given} holds no {part.what}")
            return given
        if not given.is_file():
            raise DataError(f"{part.option} path not found: {given}")
        if given.suffix.lower() not in (".zip", ".rar"):
            raise DataError(f"{part.option} must be a folder or a .zip/.rar archive, got {given}")
        return _extract_into(given, part, progress)
    target = part.target
    finished = _marker_source(target) is not None or part.looks_ready(target)
    if target.is_dir() and not (target / IN_PROGRESS).exists() and finished:
        return target
    archive = download_file(
        part.remote.url,
        target.parent / part.remote.file_name,
        expected_size=part.remote.size,
        sha256=part.remote.sha256,
        progress=progress,
        verify_tls=verify_tls,
    )
    return _extract_into(archive, part, progress)


def _has_class_index(folder: Path) -> bool:
    return (folder / "classInd.txt").is_file()


def _has_hmdb_lists(folder: Path) -> bool:
    return any(folder.glob("*_test_split*.txt"))


def ucf101_parts(root: Path) -> tuple[Part, Part]:
    """Return the (videos, split files) parts of UCF-101 under ``root`` (``data/ucf101``)."""
    return (
        Part("videos", "--raw", UCF101_VIDEOS, root / "UCF101_raw", True, _is_video, _has_videos),
        Part(
            "split files",
            "--splits",
            UCF101_SPLITS,
            root / "ucfTrainTestlist",
            True,
            _is_text,
            _has_class_index,
        ),
    )


def hmdb51_parts(root: Path) -> tuple[Part, Part]:
    """Return the (videos, split files) parts of HMDB-51 under ``root`` (``data/hmdb51``)."""
    return (
        Part(
            "videos",
            "--raw",
            HMDB51_VIDEOS,
            root / "hmdb51_raw",
            False,
            _is_video_or_rar,
            _has_videos,
            nested=True,
        ),
        Part(
            "split files",
            "--splits",
            HMDB51_SPLITS,
            root / "testTrainMulti_7030_splits",
            True,
            _is_text,
            _has_hmdb_lists,
        ),
    )


def index_videos(folder: Path) -> dict[str, Path]:
    """Map every ``.avi`` file name under ``folder`` (flat or in class folders) to its path."""
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if _is_video(path.name) and path.is_file():
            index.setdefault(path.name, path)
    return index
