"""The official train/test split files of UCF-101 and HMDB-51, read into one entry type.

UCF-101 (``ucfTrainTestlist/``): ``classInd.txt`` lines "1 ApplyEyeMakeup"; ``trainlist0N.txt``
lines "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"; ``testlist0N.txt`` lines without a label.
Labels come from classInd through the class folder, 1-based.

HMDB-51 (``testTrainMulti_7030_splits/``): ``<class>_test_split{1,2,3}.txt`` with lines
"<video>.avi <id>", id 1 = train, 2 = test, 0 = unused. Labels are 1-based in sorted class order.

Both kinds of files are read with CRLF or LF line endings; a video's name in the annotations is
"<Class>/<file name without .avi>", whatever characters the file name holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedvssl.data.errors import DataError

VIDEO_SUFFIX = ".avi"
_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")


@dataclass(frozen=True)
class SplitEntry:
    """One video of a split: its annotation name, 1-based label, class folder and file name."""

    name: str  # "Class/video", the key of the annotation JSON and of zips/<Class>/<video>.zip
    label: int
    class_name: str
    video_file: str  # file name in the raw folder, with .avi


@dataclass(frozen=True)
class Split:
    """The train and test entries of one official split, and the class names by label order."""

    train: list[SplitEntry]
    test: list[SplitEntry]
    classes: list[str]


def _lines(path: Path) -> list[tuple[int, str]]:
    """Return (line number, stripped text) of the non-empty lines; CRLF or LF."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise DataError(f"split file not found: {path}") from err
    except UnicodeDecodeError:
        text = path.read_bytes().decode("latin-1")
    rows = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)]
    return [(i, line) for i, line in rows if line]


def _entry(class_name: str, video_file: str, label: int) -> SplitEntry:
    stem = (
        video_file[: -len(VIDEO_SUFFIX)]
        if video_file.lower().endswith(VIDEO_SUFFIX)
        else video_file
    )
    return SplitEntry(f"{class_name}/{stem}", label, class_name, video_file)


def read_class_index(path: Path) -> dict[str, int]:
    """Read UCF-101's ``classInd.txt``.

    Parameters
    ----------
    path : Path
        The file, lines "index ClassName".

    Returns
    -------
    dict[str, int]
        Class name -> 1-based label.
    """
    classes: dict[str, int] = {}
    for number, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{number}: expected 'index ClassName', got {line!r}")
        name, index = parts[1].strip(), int(parts[0])
        if name in classes or index in classes.values():
            raise DataError(f"{path}:{number}: class {name} or index {index} is listed twice")
        classes[name] = index
    if not classes:
        raise DataError(f"{path} lists no classes")
    return classes


def _ucf_line(path: Path, number: int, line: str) -> tuple[str, int | None]:
    """Split a list line into its video path and its label: "Class/v.avi 1" or "Class/v.avi"."""
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], int(parts[1])
    if len(parts) == 1 or line.lower().endswith(VIDEO_SUFFIX):
        return line, None
    raise DataError(
        f"{path}:{number}: expected 'Class/video.avi' or 'Class/video.avi <label>', got {line!r} "
        f"({parts[1]!r} is not a label)"
    )


def _read_ucf_list(path: Path, classes: dict[str, int]) -> list[SplitEntry]:
    entries = []
    for number, line in _lines(path):
        relative, label = _ucf_line(path, number, line)
        class_name, sep, video_file = relative.replace("\\", "/").rpartition("/")
        if not sep or class_name not in classes:
            raise DataError(
                f"{path}:{number}: expected 'Class/video.avi' with a class of classInd.txt, "
                f"got {line!r}"
            )
        if label is not None and label != classes[class_name]:
            raise DataError(
                f"{path}:{number}: label {label} for {class_name}, but classInd.txt gives it "
                f"{classes[class_name]}; fix the line or classInd.txt"
            )
        entries.append(_entry(class_name, video_file, classes[class_name]))
    return entries


def read_ucf_split(split_dir: Path, split: int = 1) -> Split:
    """Read one official UCF-101 split (also the synthetic dataset's).

    Parameters
    ----------
    split_dir : Path
        Folder with ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``.
    split : int
        Split number, 1 to 3.

    Returns
    -------
    Split
        Train and test entries in file order; classes ordered by label.

    Raises
    ------
    DataError
        If a file is missing or malformed.
    """
    classes = read_class_index(split_dir / "classInd.txt")
    return Split(
        train=_read_ucf_list(split_dir / f"trainlist{split:02d}.txt", classes),
        test=_read_ucf_list(split_dir / f"testlist{split:02d}.txt", classes),
        classes=sorted(classes, key=classes.__getitem__),
    )


def read_hmdb_split(split_dir: Path, split: int = 1) -> Split:
    """Read one official HMDB-51 split (the 70/30 ``testTrainMulti`` files).

    Parameters
    ----------
    split_dir : Path
        Folder with ``<class>_test_split{N}.txt`` files.
    split : int
        Split number, 1 to 3.

    Returns
    -------
    Split
        Train (id 1) and test (id 2) entries, classes sorted, labels 1-based in that order.

    Raises
    ------
    DataError
        If no split file is found or a line is malformed.
    """
    files = {}
    for path in split_dir.glob(f"*_test_split{split}.txt"):
        match = _HMDB_SPLIT.match(path.name)
        if match is not None and int(match["split"]) == split:
            files[match["cls"]] = path
    if not files:
        raise DataError(
            f"no '<class>_test_split{split}.txt' files in {split_dir}; pass the HMDB-51 split "
            "archive or folder with --splits"
        )
    train: list[SplitEntry] = []
    test: list[SplitEntry] = []
    classes = sorted(files)
    for label, class_name in enumerate(classes, start=1):
        for number, line in _lines(files[class_name]):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(
                    f"{files[class_name]}:{number}: expected '<video>.avi 0|1|2', got {line!r}"
                )
            if parts[1] != "0":
                subset = train if parts[1] == "1" else test
                subset.append(_entry(class_name, parts[0], label))
    return Split(train=train, test=test, classes=classes)
