"""A prepared dataset, checked before a run reads it: its lists, its videos' frames, its partitions.

:func:`check_prepared` reads the train and test lists (every record checked:
:func:`CtP.annotations.parse_annotations`), looks for every listed video's frames, and checks the
clients' partition files (:func:`fedvssl.data.partitions.check_client_lists`). It raises one
:class:`~fedvssl.data.errors.DataError` naming the first file, record or video at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedvssl.data.annotations import read_annotations
from fedvssl.data.errors import DataError
from fedvssl.data.partitions import check_client_lists


def check_prepared(
    root: Path,
    lists: Sequence[str],
    partitions: Sequence[str],
    *,
    zip_template: str | None,
    num_classes: int | None,
) -> None:
    """Check a prepared dataset under ``root``.

    Parameters
    ----------
    root : Path
        The dataset folder, e.g. ``data/ucf101``.
    lists : sequence of str
        The annotation files, relative to ``root``: the train list first, then the test list
        (a folder of one's own videos has no test list).
    partitions : sequence of str
        The clients' partition files, relative to ``root``, client 1 first.
    zip_template : str or None
        Where a video's frames are (``zips/{name}.zip``); None: the videos are read as files.
    num_classes : int or None
        Labels must be in 1..num_classes; None: at least 1.

    Raises
    ------
    DataError
        Naming the first file, record or video that is missing or malformed.
    """
    records = [read_annotations(root / name, num_classes) for name in lists]
    train = records[0]
    if zip_template is not None:
        listed = [r["name"] for list_records in records for r in list_records]
        missing = [n for n in listed if not (root / zip_template.format(name=n)).is_file()]
        if missing:
            example = root / zip_template.format(name=missing[0])
            raise DataError(f"{len(missing)} listed videos have no frames, e.g. {example}")
    check_client_lists(train, [root / name for name in partitions], num_classes)
