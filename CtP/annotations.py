"""The annotation list: videos by name with a 1-based label, read and checked where it enters.

An annotation file is a JSON list of ``{"name": "Class/video", "label": 1-based int}``. Every
reader of the package goes through :func:`parse_annotations`, which refuses, naming the file and
the record: a record that is not ``{"name": str, "label": int}``, an empty name, a label below 1
or above ``num_classes``, and a video listed under two labels. This module is plain Python (no
torch), so the preparation tools can use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Annotation:
    """One video of an annotation file."""

    name: str  # "Class/video"
    label: int  # 1-based, as written by the preparation step


def parse_annotations(
    data: object, source: str, num_classes: int | None = None
) -> list[Annotation]:
    """Check decoded annotation JSON and return its videos, in order.

    Parameters
    ----------
    data
        The decoded JSON.
    source
        Where it comes from (a file name), for the error messages.
    num_classes
        The dataset's number of classes (labels 1..num_classes); None: no upper bound.

    Raises
    ------
    ValueError
        Naming ``source``, the record and what is wrong with it.
    """
    if not isinstance(data, list):
        raise ValueError(f"{source} must hold a JSON list of {{'name', 'label'}} records")
    items: list[Annotation] = []
    labels: dict[str, tuple[int, int]] = {}  # name -> (label, record index)
    for index, record in enumerate(data):
        name = record.get("name") if isinstance(record, dict) else None
        label = record.get("label") if isinstance(record, dict) else None
        if not (isinstance(name, str) and name and type(label) is int):
            raise ValueError(
                f"{source}: record {index} must be {{'name': str, 'label': int}}, got {record!r}"
            )
        if label < 1 or (num_classes is not None and label > num_classes):
            top = f"{num_classes}" if num_classes is not None else "the number of classes"
            raise ValueError(
                f"{source}: record {index} ({name}) has label {label}, not in [1, {top}]"
            )
        first = labels.setdefault(name, (label, index))
        if first[0] != label:
            raise ValueError(
                f"{source}: {name} has label {first[0]} in record {first[1]} and {label} in "
                f"record {index}: a video has one label"
            )
        items.append(Annotation(name, label))
    return items


def load_annotations(path: str | Path, num_classes: int | None = None) -> list[Annotation]:
    """Read and check an annotation JSON file.

    Parameters
    ----------
    path
        The JSON file.
    num_classes
        The dataset's number of classes; None: labels are only checked to be at least 1.

    Returns
    -------
    list[Annotation]
        The videos, in file order.

    Raises
    ------
    ValueError
        If the file is missing, not JSON, or a record is malformed or out of range (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"annotation file {path} is not valid JSON ({err})") from None
    return parse_annotations(data, str(path), num_classes)
