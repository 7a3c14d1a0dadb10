"""Preparation of UCF-like and HMDB-like raw sets from local files, and the preparation CLI."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest

from fedvssl.data.errors import DataError
from fedvssl.data.frames import count_frames
from fedvssl.data.preparation import dataset_is_prepared, prepare_dataset
from fedvssl.data.synthetic import recorded_setting, write_video

REPO = Path(__file__).resolve().parents[1]
COLOUR = (200, 40, 90)  # RGB of the written frames, away from the moving bar
CLASS_IND = ["1 Gamma", "2 Alpha", "3 Beta"]  # labels come from here, not from sorting
UCF_TRAIN: dict[str, int | None] = {  # name -> frames; None: corrupt file, 0: listed but missing
    "Alpha/v_Alpha_g08_c01": 7,
    "Alpha/v_Alpha_g08_c02": 5,
    "Beta/v_Beta_g08_c01": 6,
    "Beta/v_Beta_g08_c02": None,
    "Gamma/v_Gamma_g08_c01": 8,
    "Gamma/v_Gamma_g09_c01": 0,
}
UCF_TEST: dict[str, int | None] = {
    "Alpha/v_Alpha_g01_c01": 5,
    "Beta/v_Beta_g01_c01": 6,
    "Gamma/v_Gamma_g01_c01": 7,
}
LABEL = {"Gamma": 1, "Alpha": 2, "Beta": 3}


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", REPO / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_clip(path: Path, frames: int | None) -> None:
    if frames is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"this is not a video " * 50)
        return
    clip = np.empty((frames, 48, 64, 3), np.uint8)
    clip[:] = COLOUR
    for t in range(frames):
        clip[t, :, 30 + 3 * t : 34 + 3 * t] = 255  # a moving bar
    write_video(path, clip)


def _write_ucf_raw(raw: Path, *, class_folders: bool) -> None:
    for name, frames in {**UCF_TRAIN, **UCF_TEST}.items():
        if frames != 0:
            cls, video = name.split("/")
            _write_clip(raw / (cls if class_folders else "") / f"{video}.avi", frames)


def _ucf_lists(newline: str) -> dict[str, str]:
    train = [f"{n}.avi {LABEL[n.split('/')[0]]}" for n in UCF_TRAIN]
    return {
        "classInd.txt": newline.join(CLASS_IND) + newline,
        "trainlist01.txt": newline.join(train) + newline,
        "testlist01.txt": newline.join(f"{n}.avi" for n in UCF_TEST) + newline,
    }


@pytest.fixture
def ucf(tmp_path: Path) -> dict[str, Path]:
    raw, lists = tmp_path / "raw_flat", tmp_path / "lists"
    _write_ucf_raw(raw, class_folders=False)
    lists.mkdir()
    for name, text in _ucf_lists("\n").items():
        (lists / name).write_text(text)
    return {"raw": raw, "splits": lists, "data": tmp_path / "data"}


def _read(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return records


def _expected(names: Mapping[str, int | None]) -> list[dict[str, Any]]:
    return [{"name": n, "label": LABEL[n.split("/")[0]]} for n, f in names.items() if f]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.zip")}


def test_ucf_from_local_folder(ucf: dict[str, Path]) -> None:
    report = prepare_dataset(
        "ucf101",
        ucf["data"],
        raw=ucf["raw"],
        splits=ucf["splits"],
        num_clients=2,
        workers=1,
        progress=False,
    )
    root = ucf["data"] / "ucf101"
    assert report.missing == ["Gamma/v_Gamma_g09_c01"]
    assert list(report.failed) == ["Beta/v_Beta_g08_c02"]
    assert (report.train, report.test, report.extracted, report.skipped) == (4, 3, 7, 0)
    assert any("v_Gamma_g09_c01" in line for line in report.lines())
    assert _read(root / "annotations/train_split_1.json") == _expected(UCF_TRAIN)
    assert _read(root / "annotations/test_split_1.json") == _expected(UCF_TEST)
    for name, frames in {**UCF_TRAIN, **UCF_TEST}.items():
        target = root / "zips" / f"{name}.zip"
        assert target.is_file() == bool(frames)
        if frames:
            with zipfile.ZipFile(target) as zf:
                assert zf.namelist() == [f"img_{i:05d}.jpg" for i in range(1, frames + 1)]
                assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
                image = cv2.imdecode(np.frombuffer(zf.read("img_00002.jpg"), np.uint8), 1)
            assert image is not None and image.shape == (48, 64, 3)
            rgb = image[..., ::-1][:, :20].reshape(-1, 3).mean(axis=0)
            assert np.abs(rgb - COLOUR).max() < 12  # stored so that BGR decoding + swap is RGB
    # IID partitions, computed here by hand: seeded shuffle, then contiguous slices
    train = _expected(UCF_TRAIN)
    random.Random(7).shuffle(train)
    parts = [_read(root / f"annotations/client_distribution/client_dist{n}.json") for n in (1, 2)]
    assert parts == [train[:2], train[2:]]
    assert dataset_is_prepared(root, 2) and not dataset_is_prepared(root, 3)

    # a re-run skips finished videos and retries only the failed one
    before = _mtimes(root / "zips")
    again = prepare_dataset(
        "ucf101",
        ucf["data"],
        raw=ucf["raw"],
        splits=ucf["splits"],
        num_clients=2,
        workers=1,
        progress=False,
    )
    assert (again.extracted, again.skipped, list(again.failed)) == (0, 7, ["Beta/v_Beta_g08_c02"])
    assert _mtimes(root / "zips") == before

    # a new number of clients: partitions only, no raw files needed, nothing decoded
    fresh = prepare_dataset("ucf101", ucf["data"], num_clients=3, seed=1, progress=False)
    assert fresh.extracted == 0 and _mtimes(root / "zips") == before
    assert dataset_is_prepared(root, 3) and not dataset_is_prepared(root, 2)
    three = [_read(p) for p in fresh.partition_files]
    assert sorted(len(p) for p in three) == [1, 1, 2]
    assert sorted(r["name"] for p in three for r in p) == sorted(r["name"] for r in train)

    with pytest.raises(DataError, match="extracted at native size"):
        prepare_dataset("ucf101", ucf["data"], short_side=24, progress=False)


def test_ucf_from_zip_of_splits_with_crlf_and_class_folders(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _write_ucf_raw(raw, class_folders=True)
    archive = tmp_path / "UCF101TrainTestSplits-RecognitionTask.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in _ucf_lists("\r\n").items():
            zf.writestr(f"ucfTrainTestlist/{name}", text)
    report = prepare_dataset(
        "ucf101",
        tmp_path / "data",
        raw=raw,
        splits=archive,
        short_side=24,
        workers=2,
        num_clients=2,
        progress=False,
    )
    root = tmp_path / "data/ucf101"
    assert (root / "ucfTrainTestlist/classInd.txt").read_bytes().count(b"\r\n") == 3
    assert _read(root / "annotations/train_split_1.json") == _expected(UCF_TRAIN)
    assert _read(root / "annotations/test_split_1.json") == _expected(UCF_TEST)
    assert report.missing == ["Gamma/v_Gamma_g09_c01"] and list(report.failed) == [
        "Beta/v_Beta_g08_c02"
    ]
    assert count_frames(root / "zips/Gamma/v_Gamma_g08_c01.zip") == 8
    with zipfile.ZipFile(root / "zips/Alpha/v_Alpha_g01_c01.zip") as zf:
        image = cv2.imdecode(np.frombuffer(zf.read("img_00001.jpg"), np.uint8), 1)
    assert image is not None and image.shape == (24, 32, 3)  # short side 24, aspect kept


HMDB_ODD = "#122_Cleaning&Up_(Beach);'x'_0"
HMDB_VIDEOS: dict[str, dict[str, int | None]] = {  # class -> {video: frames}; None: corrupt
    "brush_hair": {HMDB_ODD: 5, "b_ok_1": 4},
    "cartwheel": {"c_0": 6, "c_bad": None},
    "chew": {"d_0": 5, "d_unused": 4},
}
HMDB_SPLITS: dict[int, dict[str, list[str]]] = {  # split -> class -> lines (d_missing has no file)
    1: {
        "brush_hair": [f"{HMDB_ODD}.avi 1", "b_ok_1.avi 2"],
        "cartwheel": ["c_0.avi 1", "c_bad.avi 2"],
        "chew": ["d_0.avi 2", "d_missing.avi 1", "d_unused.avi 0"],
    },
    2: {
        "brush_hair": [f"{HMDB_ODD}.avi 2", "b_ok_1.avi 1"],
        "cartwheel": ["c_0.avi 1", "c_bad.avi 0"],
        "chew": ["d_0.avi 1", "d_missing.avi 0", "d_unused.avi 2"],
    },
    3: {"brush_hair": [], "cartwheel": [], "chew": ["d_0.avi 1"]},
}


def test_hmdb_from_class_folders_split_1_and_2(tmp_path: Path) -> None:
    raw, lists = tmp_path / "hmdb51_raw", tmp_path / "testTrainMulti_7030_splits"
    for cls, videos in HMDB_VIDEOS.items():
        for video, frames in videos.items():
            _write_clip(raw / cls / f"{video}.avi", frames)
    lists.mkdir()
    for split, classes in HMDB_SPLITS.items():
        for cls, lines in classes.items():
            (lists / f"{cls}_test_split{split}.txt").write_text(
                "".join(f"{ln} \r\n" for ln in lines)
            )
    data = tmp_path / "data"
    report = prepare_dataset(
        "hmdb51", data, raw=raw, splits=lists, num_clients=1, workers=1, progress=False
    )
    root = data / "hmdb51"
    assert report.missing == ["chew/d_missing"] and list(report.failed) == ["cartwheel/c_bad"]
    train = _read(root / "annotations/train_split_1.json")
    test = _read(root / "annotations/test_split_1.json")
    assert train == [
        {"name": f"brush_hair/{HMDB_ODD}", "label": 1},
        {"name": "cartwheel/c_0", "label": 2},
    ]
    assert test == [{"name": "brush_hair/b_ok_1", "label": 1}, {"name": "chew/d_0", "label": 3}]
    assert count_frames(root / "zips" / "brush_hair" / f"{HMDB_ODD}.zip") == 5
    assert not (root / "zips/chew/d_unused.zip").exists()  # id 0: not used by split 1
    shuffled = list(train)
    random.Random(7).shuffle(shuffled)  # one client: the whole shuffled train list
    assert _read(root / "annotations/client_distribution/client_dist1.json") == shuffled

    prepare_dataset(
        "hmdb51", data, raw=raw, splits=lists, split=2, num_clients=1, workers=1, progress=False
    )
    assert _read(root / "annotations/train_split_2.json") == [
        {"name": "brush_hair/b_ok_1", "label": 1},
        {"name": "cartwheel/c_0", "label": 2},
        {"name": "chew/d_0", "label": 3},
    ]
    assert _read(root / "annotations/test_split_2.json") == [
        {"name": f"brush_hair/{HMDB_ODD}", "label": 1},
        {"name": "chew/d_unused", "label": 3},
    ]


# --- the command line ---


def test_cli_synthetic_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = _load_script("dataset_preparation")
    argv = ["--dataset", "synthetic", "--data-dir", str(tmp_path), "--synthetic-scale", "0.2"]
    assert cli.main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "40 train and 20 test videos" in out and "client_distribution" in out
    root = tmp_path / "synthetic"
    assert dataset_is_prepared(root, 5)
    assert len(_read(root / "annotations/train_split_1.json")) == 40
    assert {r["label"] for r in _read(root / "annotations/test_split_1.json")} == set(range(1, 11))
    before = _mtimes(root / "zips")  # more clients later: the scale is kept, nothing is rebuilt
    report = prepare_dataset("synthetic", tmp_path, num_clients=3, workers=1, progress=False)
    assert (report.train, report.extracted, len(report.partition_files)) == (40, 0, 3)
    assert _mtimes(root / "zips") == before and dataset_is_prepared(root, 3)


def test_cli_synthetic_light_change_is_kept_until_asked_otherwise(tmp_path: Path) -> None:
    cli = _load_script("dataset_preparation")
    argv = ["--dataset", "synthetic", "--data-dir", str(tmp_path), "--synthetic-scale", "0.1"]
    assert cli.main([*argv, "--synthetic-light-change", "0.3", "--quiet"]) == 0
    root = tmp_path / "synthetic"
    assert recorded_setting(root, "light_change") == 0.3
    before = _mtimes(root / "zips")  # as when the pre-training prepares it: the light is kept
    prepare_dataset("synthetic", tmp_path, num_clients=2, workers=1, progress=False)
    assert _mtimes(root / "zips") == before and recorded_setting(root, "light_change") == 0.3
    assert cli.main([*argv, "--synthetic-light-change", "0", "--quiet"]) == 0  # constant again
    assert recorded_setting(root, "light_change") is None and _mtimes(root / "zips") != before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_raw", "--raw path not found"),
        ("missing_splits", "--splits path not found"),
        ("empty_splits", "holds no split files"),
        ("unknown_dataset", "invalid choice: 'kinetics'"),
        ("synthetic_raw", "do not apply to the synthetic dataset"),
        ("zero_clients", "must be a positive integer"),
        ("negative_light", "--synthetic-light-change: must be 0 or more"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    ucf: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    cli = _load_script("dataset_preparation")
    data, nowhere = ["--data-dir", str(ucf["data"])], str(ucf["data"] / "nowhere")
    (ucf["data"] / "empty").mkdir(parents=True)
    argv = {
        "missing_raw": ["--dataset", "ucf101", "--raw", nowhere, "--splits", str(ucf["splits"])],
        "missing_splits": ["--dataset", "ucf101", "--raw", str(ucf["raw"]), "--splits", nowhere],
        "empty_splits": ["--dataset", "ucf101", "--splits", str(ucf["data"] / "empty")],
        "unknown_dataset": ["--dataset", "kinetics"],
        "synthetic_raw": ["--dataset", "synthetic", "--raw", str(ucf["raw"])],
        "zero_clients": ["--dataset", "synthetic", "--num-clients", "0"],
        "negative_light": ["--dataset", "synthetic", "--synthetic-light-change", "-0.3"],
    }[case]
    assert cli.main([*argv, *data, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (ucf["data"] / "ucf101" / "zips").exists()


def test_cli_as_a_script_and_no_torch(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO / "dataset_preparation.py"), "--dataset", "ucf101"]
    paths = ["--data-dir", str(tmp_path), "--raw", str(tmp_path / "x"), "--splits", str(tmp_path)]
    run = subprocess.run([*script, *paths], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    probe = (
        "import sys, fedvssl.data.preparation, fedvssl.data.partitions, fedvssl.data.plots, "
        "dataset_preparation, data_partitioning_k400; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'unrar', 'flwr')))"
    )
    imports = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.strip() == "[]"
