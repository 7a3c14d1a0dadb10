"""The annotation JSON format and where its files live under a prepared dataset.

A prepared dataset root (``data/<dataset>``) holds::

    annotations/train_split_1.json                      [{"name": "Class/video", "label": 1}, ...]
    annotations/test_split_1.json
    annotations/client_distribution/client_dist{N}.json N = 1..num_clients, same format

Labels are 1-based. Files are written atomically (temporary file in the same folder, then
``os.replace``), so a reader never sees half a list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from CtP.annotations import parse_annotations
from fedvssl.data.atomic import write_bytes_atomic
from fedvssl.data.errors import DataError

ANNOTATION_DIR = "annotations"
PARTITION_DIR = "client_distribution"


def split_path(root: Path, subset: str, split: int = 1) -> Path:
    """Return the annotation file of one subset of an official split.

    Parameters
    ----------
    root : Path
        Prepared dataset root, e.g. ``data/ucf101``.
    subset : str
        ``"train"`` or ``"test"``.
    split : int
        Official split number (1, 2 or 3).

    Returns
    -------
    Path
        ``root/annotations/{subset}_split_{split}.json``.
    """
    return root / ANNOTATION_DIR / f"{subset}_split_{split}.json"


def partition_dir(root: Path) -> Path:
    """Return the folder of the per-client partition files of a prepared dataset root."""
    return root / ANNOTATION_DIR / PARTITION_DIR


def client_dist_path(out_dir: Path, client: int) -> Path:
    """Return ``out_dir/client_dist{client}.json`` (clients are numbered from 1)."""
    return out_dir / f"client_dist{client}.json"


def write_json_atomic(obj: Any, path: Path) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    Parameters
    ----------
    obj : Any
        JSON-serialisable object.
    path : Path
        Destination; its folder is created if needed.

    Returns
    -------
    Path
        ``path``.
    """
    return write_bytes_atomic(json.dumps(obj, ensure_ascii=False).encode("utf-8"), path)


def write_annotations(items: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write a list of ``{"name", "label"}`` records atomically.

    Parameters
    ----------
    items : Iterable[Mapping[str, Any]]
        Records with a ``name`` ("Class/video") and a 1-based integer ``label``.
    path : Path
        Destination JSON file.

    Returns
    -------
    Path
        ``path``.
    """
    records = [{"name": str(it["name"]), "label": int(it["label"])} for it in items]
    return write_json_atomic(records, path)


def read_annotations(path: Path, num_classes: int | None = None) -> list[dict[str, Any]]:
    """Read and check an annotation JSON file (:func:`CtP.annotations.parse_annotations`).

    Parameters
    ----------
    path : Path
        A file in the annotation format.
    num_classes : int | None
        The dataset's number of classes (labels 1..num_classes); None: labels are at least 1.

    Returns
    -------
    list[dict[str, Any]]
        The records, each with a non-empty string ``name`` and an integer ``label``.

    Raises
    ------
    DataError
        If the file is missing or is not JSON, or a record lacks a name or an integer label, has a
        label out of range, or names a video listed under another label (naming the record).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"annotation file not found: {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); prepare the dataset again") from err
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err})") from None
    try:
        items = parse_annotations(data, str(path), num_classes)
    except ValueError as err:
        raise DataError(str(err)) from None
    return [{"name": item.name, "label": item.label} for item in items]
