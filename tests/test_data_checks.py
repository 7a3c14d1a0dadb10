"""Data is checked where it enters: annotation lists, split files, partitions, a prepared dataset.

Every reader refuses, naming the file and the record or line: a label outside [1, num_classes],
a video listed under two labels, a split line whose label field is not a label, a partition that
is malformed or lists a video the train list does not have, a listed video without frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from CtP.annotations import load_annotations
from fedvssl.data.annotations import read_annotations
from fedvssl.data.errors import DataError
from fedvssl.data.partitions import check_client_lists, load_annotation_list, write_client_lists
from fedvssl.data.splits import read_ucf_split
from fedvssl.settings import DataNotReadyError, ensure_dataset


def write(path: Path, records: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"name": "A/a", "label": 0}], r"record 0 \(A/a\) has label 0, not in \[1, 10\]"),
        ([{"name": "A/a", "label": 999}], r"record 0 \(A/a\) has label 999, not in \[1, 10\]"),
        ([{"name": "", "label": 1}], r"record 0 must be \{'name': str, 'label': int\}"),
        ([{"name": "A/a", "label": True}], r"record 0 must be"),
        (
            [{"name": "A/a", "label": 1}, {"name": "B/b", "label": 2}, {"name": "A/a", "label": 3}],
            r"A/a has label 1 in record 0 and 3 in record 2: a video has one label",
        ),
    ],
)
def test_annotation_records_are_checked_by_both_readers(
    tmp_path: Path, records: list[dict[str, Any]], message: str
) -> None:
    path = write(tmp_path / "train.json", records)
    with pytest.raises(ValueError, match=message) as caught:
        load_annotations(path, num_classes=10)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(DataError, match=message):
        read_annotations(path, num_classes=10)


def test_a_text_list_names_a_video_with_two_labels_and_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "k400.txt"
    path.write_text("abseiling/v1 1\narchery/v2 2\nabseiling/v1 7\n")
    with pytest.raises(DataError) as caught:
        load_annotation_list(path)
    assert str(caught.value) == (
        f"{path}:3: abseiling/v1 has label 7, but label 1 on line 1: a video has one label"
    )


def test_split_lines_are_parsed_by_their_format(tmp_path: Path) -> None:
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 Archery\n2 Bowling\n")
    (splits / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    train = splits / "trainlist01.txt"
    train.write_text("Archery/v_Archery_g02_c01.avi 1\nBowling/v_Bowling_g02_c01.avi x2\n")
    with pytest.raises(DataError) as bad_field:
        read_ucf_split(splits)
    assert str(bad_field.value).startswith(f"{train}:2: expected 'Class/video.avi' or")
    assert "('x2' is not a label)" in str(bad_field.value)
    train.write_text("Archery/v_Archery_g02_c01.avi 2\n")
    with pytest.raises(DataError, match=r"trainlist01\.txt:1: label 2 for Archery, but classInd"):
        read_ucf_split(splits)
    train.write_text("Bowling/v_Bowling_g02_c01.avi 2\n")
    split = read_ucf_split(splits)
    assert [(e.name, e.label) for e in split.train] == [("Bowling/v_Bowling_g02_c01", 2)]


def test_partitions_are_checked_and_written_only_into_a_folder(tmp_path: Path) -> None:
    train = [{"name": "A/a", "label": 1}, {"name": "B/b", "label": 2}]
    first = write(tmp_path / "p" / "client_dist1.json", train[:1])
    second = tmp_path / "p" / "client_dist2.json"
    with pytest.raises(
        DataError, match=r"the partition of client 2, .*client_dist2\.json, does not"
    ):
        check_client_lists(train, [first, second])
    write(second, [{"name": "C/c", "label": 2}])
    with pytest.raises(DataError, match=r"client_dist2\.json: record 0 \(C/c, label 2\) is not"):
        check_client_lists(train, [first, second])
    second.write_text('[{"name": "B/b"}]')
    with pytest.raises(DataError, match=r"client_dist2\.json: record 0 must be"):
        check_client_lists(train, [first, second])
    write(second, [])
    with pytest.raises(DataError, match=r"client 2, .*client_dist2\.json, lists no videos"):
        check_client_lists(train, [first, second])
    write(second, train[1:])
    check_client_lists(train, [first, second])

    a_file = tmp_path / "output"
    a_file.write_text("not a folder")
    with pytest.raises(DataError, match="is a file: the partitions go into a folder"):
        write_client_lists([train], a_file)
    assert a_file.read_text() == "not a folder"


def prepared(root: Path) -> dict[str, Any]:
    """A prepared dataset of two videos (empty zips suffice here) and two client partitions."""
    train = [{"name": "A/a", "label": 1}, {"name": "B/b", "label": 2}]
    write(root / "annotations" / "train_split_1.json", train)
    write(root / "annotations" / "test_split_1.json", [{"name": "A/t", "label": 1}])
    for number, records in enumerate([train[:1], train[1:]], start=1):
        write(root / "annotations" / "client_distribution" / f"client_dist{number}.json", records)
    for name in ("A/a", "B/b", "A/t"):
        (root / "zips" / f"{name}.zip").parent.mkdir(parents=True, exist_ok=True)
        (root / "zips" / f"{name}.zip").write_bytes(b"")
    return {
        "name": "ucf101", "root": str(root), "auto_prepare": False, "num_classes": 2,
        "frames": "zip", "zip_template": "zips/{name}.zip",
        "train_annotations": "annotations/train_split_1.json",
        "test_annotations": "annotations/test_split_1.json",
        "partition_template": "annotations/client_distribution/client_dist{client}.json",
    }  # fmt: skip


def test_a_prepared_dataset_names_what_is_wrong_with_it(tmp_path: Path) -> None:
    root = tmp_path / "ucf101"
    dataset = prepared(root)
    ensure_dataset(dataset, str(tmp_path), 2)
    command = f"run `python dataset_preparation.py --dataset ucf101 --data-dir {tmp_path}"

    def refusal() -> str:
        with pytest.raises(DataNotReadyError) as caught:
            ensure_dataset(dataset, str(tmp_path), 2)
        assert command in str(caught.value) and "\n" not in str(caught.value)
        return str(caught.value)

    write(root / "annotations" / "test_split_1.json", [{"name": "A/t", "label": 999}])
    assert "test_split_1.json: record 0 (A/t) has label 999, not in [1, 2]" in refusal()
    write(root / "annotations" / "test_split_1.json", [{"name": "A/t", "label": 1}])
    (root / "zips" / "B" / "b.zip").unlink()
    assert f"1 listed videos have no frames, e.g. {root / 'zips' / 'B' / 'b.zip'}" in refusal()
    (root / "zips" / "B" / "b.zip").write_bytes(b"")
    (root / "annotations" / "client_distribution" / "client_dist2.json").write_text("[{")
    assert "client_dist2.json is not valid JSON" in refusal()
    write(root / "annotations" / "client_distribution" / "client_dist2.json", [])
    assert "partition of client 2, " in refusal() and "lists no videos" in refusal()
    write(
        root / "annotations" / "client_distribution" / "client_dist2.json",
        [{"name": "B/b", "label": 2}],
    )
    with pytest.raises(DataNotReadyError, match="partition of client 3"):
        ensure_dataset(dataset, str(tmp_path), 3)
    with pytest.raises(DataNotReadyError, match="is not a dataset folder"):
        ensure_dataset(dataset | {"root": str(tmp_path / "nothing")}, str(tmp_path), 2)
