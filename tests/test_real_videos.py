"""Real videos at real scale: Kinetics-400 from a stand-in of its download, and one's own videos.

The Kinetics-400 stand-in has real K-400 class names (with ``'``, ``()`` and spaces), train
videos in class folders and validation videos flat, a train CSV with ``is_cc`` and a
``validate.csv`` without, .mp4, .webm and .mkv files, and the rows a real download has: one
without a video, one whose file does not decode, a duplicate, one of a class that is not in the
authors' classInd.txt, and a malformed one. The folder of one's own videos has two cameras, one
with a nested folder, a file that is not a video and two files with one name. Both are prepared
once per session into one data folder, and one Hydra multirun trains one round on each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest

from fedvssl.data.errors import DataError
from fedvssl.data.kinetics import class_index
from fedvssl.data.preparation import dataset_is_prepared, prepare_dataset
from fedvssl.data.synthetic import write_video
from fedvssl.run_config import ConfigValue, node_client_settings

REPO = Path(__file__).resolve().parents[1]
FRAMES = 16
# CSV label -> (class folder, 1-based label in the authors' classInd.txt)
CLASSES = {
    "massaging person's head": ("massaging_person's_head", 15),
    "hurling (sport)": ("hurling_(sport)", 66),
    "passing American football (in game)": ("passing_American_football_(in_game)", 151),
    "taking a shower": ("taking_a_shower", 42),
    "air drumming": ("air_drumming", 4),
}
HEADER = "label,youtube_id,time_start,time_end,split"


CODECS = {".mp4": "libx264", ".webm": "libvpx", ".mkv": "mpeg4", ".mov": "mpeg4"}


def write_clip(path: Path, frames: np.ndarray) -> None:
    """Encode RGB frames [T,H,W,3] in the container the suffix names (H.264, VP8, MPEG-4)."""
    write_video(path, frames, bit_rate=None, codec=CODECS[path.suffix])


def clip_frames(
    seed: int, num_frames: int = FRAMES, size: tuple[int, int] = (48, 64)
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 120, (1, *size, 3), dtype=np.uint8), num_frames, axis=0)
    for t in range(num_frames):
        frames[t, 10:22, 2 * t : 2 * t + 12] = (230, 200, 40)  # a square moving right
    return frames


def youtube_id(i: int) -> str:
    return f"y{i:02d}_Ab-cdEf"  # 11 characters with '_' and '-', as YouTube ids have


def stem(i: int) -> str:
    return f"{youtube_id(i)}_{i:06d}_{i + 10:06d}"


def write_standin(raw: Path) -> dict[str, Any]:
    """Write the stand-in download; return what a correct preparation must make of it."""
    train_rows, val_rows = [], []
    expected: dict[str, Any] = {"train": [], "val": [], "frames": {}}
    suffixes = {3: ".webm", 6: ".mkv"}
    for i, (label, (folder, index)) in enumerate([*CLASSES.items()] * 2):
        train_rows.append(f'"{label}",{youtube_id(i)},{i},{i + 10},train,0')
        suffix = suffixes.get(i, ".mp4")
        write_clip(raw / "train" / label / f"{stem(i)}{suffix}", clip_frames(i))  # class folders
        expected["train"].append({"name": f"{folder}/{stem(i)}", "label": index})
    for i, (label, (folder, index)) in enumerate(list(CLASSES.items())[:3], start=20):
        val_rows.append(f'"{label}",{youtube_id(i)},{i},{i + 10},val')
        write_clip(raw / "validate" / f"{stem(i)}.mp4", clip_frames(i))  # flat
        expected["val"].append({"name": f"{folder}/{stem(i)}", "label": index})
    train_rows += [
        f"taking a shower,{youtube_id(40)},40,50,train,0",  # no video
        f"air drumming,{youtube_id(41)},41,51,train,1",  # does not decode
        train_rows[0],  # a duplicate row
        f"flying a drone,{youtube_id(42)},42,52,train,0",  # not a K-400 class
        f"air drumming,{youtube_id(43)},forty,53,train,0",  # malformed
    ]
    (raw / "train" / "air drumming").mkdir(parents=True, exist_ok=True)
    (raw / "train" / "air drumming" / f"{stem(41)}.mp4").write_bytes(b"not a video " * 40)
    write_clip(raw / "train" / "flying a drone" / f"{stem(42)}.mp4", clip_frames(42))
    (raw / "annotations").mkdir(parents=True)
    (raw / "annotations" / "train.csv").write_text("\n".join([f"{HEADER},is_cc", *train_rows]))
    (raw / "annotations" / "validate.csv").write_text("\n".join([HEADER, *val_rows]) + "\n")
    return expected


@pytest.fixture(scope="session")
def k400_standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    raw = tmp_path_factory.mktemp("k400_download")
    return raw, write_standin(raw)


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder of both prepared sets (``k400/`` and ``videos/``), for one multirun."""
    return tmp_path_factory.mktemp("real_data")


@pytest.fixture(scope="session")
def k400_data(k400_standin: tuple[Path, dict[str, Any]], real_data_dir: Path) -> Path:
    """The stand-in prepared once: 2 IID clients, frames at short side 32 (shared by the run)."""
    data = real_data_dir
    prepare_dataset(
        "k400", data, raw=k400_standin[0], num_clients=2, scheme="iid", short_side=32,
        workers=1, progress=False,
    )  # fmt: skip
    return data


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def load_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dataset_preparation_k400", REPO / "dataset_preparation.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_index_is_the_authors_order() -> None:
    classes = class_index()
    assert len(classes) == 400 and sorted(classes.values()) == list(range(1, 401))
    assert classes["sticking_tongue_out"] == 1 and classes["tai_chi"] == 400  # not alphabetical
    for folder, index in CLASSES.values():
        assert classes[folder] == index


def test_standin_prepared_end_to_end(
    k400_standin: tuple[Path, dict[str, Any]], k400_data: Path
) -> None:
    _, expected = k400_standin
    root = k400_data / "k400"
    assert read(root / "annotations/train.json") == expected["train"]  # CSV order, authors' labels
    assert read(root / "annotations/val.json") == expected["val"]
    for record in expected["train"] + expected["val"]:
        with zipfile.ZipFile(root / "zips" / f"{record['name']}.zip") as zf:
            assert zf.namelist() == [f"img_{i:05d}.jpg" for i in range(1, FRAMES + 1)]
            image = cv2.imdecode(np.frombuffer(zf.read("img_00003.jpg"), np.uint8), 1)
        assert image is not None and image.shape == (32, 43, 3)  # 48x64 at short side 32
    parts = [read(root / f"annotations/client_distribution/client_dist{n}.json") for n in (1, 2)]
    assert sorted(r["name"] for p in parts for r in p) == sorted(
        r["name"] for r in expected["train"]
    )
    assert dataset_is_prepared(root, 2, ["annotations/train.json", "annotations/val.json"])

    report = read(root / "preparation_report.json")
    assert (report["train"], report["test"], report["partitions"]) == (10, 3, 2)
    counts = report["counts"]
    assert counts["no video"] == counts["cannot be decoded"] == counts["duplicate row"] == 1
    assert counts["class not in the class index"] == counts["malformed row"] == 1
    left_out = report["left out"]
    assert left_out["no video"] == [f"taking_a_shower/{stem(40)}"]
    assert list(left_out["cannot be decoded"]) == [f"air_drumming/{stem(41)}"]
    assert left_out["duplicate row"] == [f"train.csv:14: {stem(0)} (first in train.csv:2)"]
    assert left_out["class not in the class index"] == ["train.csv:15: 'flying a drone'"]
    assert left_out["malformed row"][0].startswith("train.csv:16:")
    assert not (root / "zips" / "flying_a_drone").exists()


def test_killed_midway_then_run_again_gives_identical_files(tmp_path: Path) -> None:
    raw = tmp_path / "download"
    (raw / "annotations").mkdir(parents=True)
    first = raw / "train" / f"{stem(0)}.mp4"  # long enough that the kill comes midway
    write_clip(first, clip_frames(0, num_frames=300, size=(64, 96)))
    rows = []
    for i, label in enumerate(["hurling (sport)", "taking a shower"] * 6):
        if i:
            shutil.copyfile(first, first.with_name(f"{stem(i)}.mp4"))
        rows.append(f'"{label}",{youtube_id(i)},{i},{i + 10},train')
    (raw / "annotations" / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (raw / "annotations" / "val.csv").write_text(
        "\n".join([HEADER, rows[0].replace("train", "val")]) + "\n"
    )
    options = [
        "--dataset",
        "k400",
        "--raw",
        str(raw),
        "--num-clients",
        "2",
        "--scheme",
        "iid",
        "--short-side",
        "48",
        "--workers",
        "2",
    ]

    straight = tmp_path / "straight"
    assert load_cli().main([*options, "--data-dir", str(straight), "--quiet"]) == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "dataset_preparation.py"), *options, "--data-dir", str(killed)],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    zips = killed / "k400" / "zips"
    deadline = time.monotonic() + 120
    while (
        process.poll() is None
        and time.monotonic() < deadline
        and len(list(zips.rglob("*.zip"))) < 2
    ):
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_at_kill = len(list(zips.rglob("*.zip")))
    assert 2 <= done_at_kill < 12 and not (killed / "k400" / "annotations").exists()

    assert load_cli().main([*options, "--data-dir", str(killed), "--quiet"]) == 0
    assert not list(zips.rglob("*.tmp"))  # the killed run's unfinished zips are gone
    assert snapshot(killed) == snapshot(straight)  # annotations, partitions, zips, report


def test_published_partitions_are_adopted_and_missing_videos_dropped(
    k400_standin: tuple[Path, dict[str, Any]], k400_data: Path, tmp_path: Path
) -> None:
    raw, expected = k400_standin
    data = tmp_path / "data"
    shutil.copytree(k400_data, data)  # the zips are there: nothing is decoded again
    published = tmp_path / "client_distribution"
    published.mkdir()
    train = expected["train"]
    missing = {"name": f"taking_a_shower/{stem(40)}", "label": 42}
    clients = [[train[0], train[1], missing], [train[1], train[2]]]  # overlapping, as non-IID
    for n, records in enumerate(clients, start=1):
        (published / f"client_dist{n}.json").write_text(json.dumps(records))
    report = prepare_dataset("k400", data, raw=raw, partitions=published, workers=1, progress=False)
    assert report.extracted == 0 and report.dropped == [f"client_dist1.json: {missing['name']}"]
    root = data / "k400"
    written = [read(root / f"annotations/client_distribution/client_dist{n}.json") for n in (1, 2)]
    assert written == [[train[0], train[1]], [train[1], train[2]]]
    assert not (root / "annotations/client_distribution/client_dist3.json").exists()
    assert (
        read(root / "preparation_report.json")["counts"]["partition entry without a prepared video"]
        == 1
    )
    assert any("partition entry without a prepared video (1)" in line for line in report.lines())


def test_projected_frames_larger_than_the_disk_are_refused(
    k400_standin: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedvssl.data import extraction

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(extraction.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(
        DataError,
        match=r"at short side 144 need about .* MB and .* has 0\.0 MB free.*--no-disk-check",
    ):
        prepare_dataset(
            "k400", tmp_path, raw=k400_standin[0], num_clients=2, scheme="iid", progress=False
        )
    assert not (tmp_path / "k400").exists()
    # the projection: frames x stored pixels x JPEG bytes per pixel, from the videos' metadata
    video = k400_standin[0] / "validate" / f"{stem(20)}.mp4"
    pixels = FRAMES * 32 * 64 * (32 / 48)  # 48x64 frames at short side 32
    projected = extraction.projected_bytes([video, video], 32)
    assert projected == int(2 * pixels * extraction.JPEG_BYTES_PER_PIXEL)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_csv", "has no val.csv or validate.csv"),
        ("other_header", "a Kinetics-400 CSV starts with label,youtube_id"),
        ("no_videos", "holds no .mp4/.webm/.mkv videos"),
        ("partitions_match_nothing", "no entry of the --partitions files"),
        ("one_folder", "--partition-by folder found one top-level folder"),
        ("misplaced_option", "--partition-by applies to --dataset videos only"),
    ],
)
def test_bad_input_is_one_line_status_2_and_nothing_written(
    k400_standin: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    case: str, message: str,
) -> None:  # fmt: skip
    raw, _ = k400_standin
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    csv = HEADER + f"\nhurling (sport),{youtube_id(1)},1,11,train\n"
    k400 = ["--dataset", "k400", "--raw", str(raw)]
    if case == "missing_csv":
        (bad / "annotations" / "train.csv").write_text(csv)
        argv = [*k400, "--annotations", str(bad / "annotations")]
    elif case == "other_header":
        for name in ("train.csv", "val.csv"):
            (bad / "annotations" / name).write_text(csv.replace("youtube_id", "video_id"))
        argv = [*k400, "--annotations", str(bad / "annotations")]
    elif case == "no_videos":
        for name in ("train.csv", "val.csv"):
            (bad / "annotations" / name).write_text(csv)
        argv = ["--dataset", "k400", "--raw", str(bad)]
    elif case == "partitions_match_nothing":
        (bad / "client_dist1.json").write_text(
            json.dumps([{"name": "abseiling/x_000001_000011", "label": 290}])
        )
        argv = [*k400, "--partitions", str(bad)]
    elif case == "misplaced_option":
        argv = [*k400, "--partition-by", "folder"]
    else:
        write_clip(bad / "videos" / "cam1" / "a.mp4", clip_frames(0, num_frames=4))
        argv = ["--dataset", "videos", "--raw", str(bad / "videos"), "--partition-by", "folder"]
    data = tmp_path / "data"
    for dataset in ("k400", "videos"):
        (data / dataset / "zips").mkdir(parents=True)
        (data / dataset / "zips" / "earlier.txt").write_text("kept")
    before = snapshot(data)
    assert load_cli().main([*argv, "--data-dir", str(data), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert snapshot(data) == before  # nothing written, nothing removed


# ---------------------------------------------------------------- a folder of one's own videos

OWN_VIDEOS = {  # file under the folder -> frames (a.mov is a second file named cam_a/a)
    "cam_a/a.mp4": 16, "cam_a/a.mov": 16, "cam_a/b.mkv": 12,
    "cam_b/c.mp4": 16, "cam_b/2024/d.webm": 14, "cam_b/2024/e.mp4": 16,
}  # fmt: skip


@pytest.fixture(scope="session")
def own_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("own_videos")
    for i, (name, frames) in enumerate(OWN_VIDEOS.items()):
        write_clip(raw / name, clip_frames(50 + i, num_frames=frames))
    (raw / "cam_b" / "notes.txt").write_text("not a video")
    (raw / "cam_b" / ".hidden.mp4").write_bytes(b"a half-copied file")
    return raw


@pytest.fixture(scope="session")
def own_videos_data(own_videos: Path, real_data_dir: Path) -> Path:
    """The folder prepared once, one client per camera, frames at short side 32."""
    prepare_dataset(
        "videos", real_data_dir, raw=own_videos, partition_by="folder", short_side=32,
        workers=1, progress=False,
    )  # fmt: skip
    return real_data_dir


def test_own_videos_one_client_per_top_level_folder(
    own_videos: Path, own_videos_data: Path
) -> None:
    root = own_videos_data / "videos"
    names = ["cam_a/a", "cam_a/b", "cam_b/2024/d", "cam_b/2024/e", "cam_b/c"]
    assert read(root / "annotations/train.json") == [{"name": n, "label": 1} for n in names]
    parts = [read(root / f"annotations/client_distribution/client_dist{n}.json") for n in (1, 2)]
    assert [[r["name"] for r in p] for p in parts] == [names[:2], names[2:]]
    assert not (root / "annotations/client_distribution/client_dist3.json").exists()
    for name in names:
        with zipfile.ZipFile(root / "zips" / f"{name}.zip") as zf:
            assert (
                len(zf.namelist())
                == OWN_VIDEOS[next(k for k in OWN_VIDEOS if k.startswith(name + "."))]
            )
    report = read(root / "preparation_report.json")
    assert report["left out"]["duplicate row"] == ["cam_a/a.mp4 (the name of a.mov)"]
    assert dataset_is_prepared(root, 2, ["annotations/train.json"])
    with pytest.raises(DataError, match="found 2 top-level folders, not --num-clients 3"):
        prepare_dataset(
            "videos", own_videos_data, raw=own_videos, partition_by="folder", num_clients=3
        )
    with pytest.raises(DataError, match="videos lie directly in --raw"):
        prepare_dataset("videos", own_videos_data, raw=own_videos / "cam_b", partition_by="folder")


def test_own_videos_in_iid_clients(own_videos: Path, own_videos_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(own_videos_data / "videos", data / "videos")  # the zips are there
    report = prepare_dataset("videos", data, raw=own_videos, num_clients=3, seed=3, progress=False)
    assert report.extracted == 0 and report.skipped == 5
    parts = [read(path) for path in report.partition_files]
    assert sorted(len(p) for p in parts) == [1, 2, 2]
    assert sorted(r["name"] for p in parts for r in p) == sorted(
        r["name"] for r in read(data / "videos/annotations/train.json")
    )


def test_a_node_trains_on_its_own_folder_of_video_files_in_place(
    own_videos: Path, tmp_path: Path
) -> None:
    """``--node-config "partition-id=0 videos='...'"``: no preparation, nothing written there."""
    from conftest import global_model
    from flwr.app import Context, RecordDict

    from CtP.datasets import VideoFileSource
    from fedvssl.client_data import build_dataset
    from fedvssl.local_training import train_locally

    folder = own_videos / "cam_b"
    before = {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}
    run_config: dict[str, ConfigValue] = {
        "experiment": "smoke",
        "run-dir": str(tmp_path / "run"),
        "overrides": "augment=cpu",
    }
    node: dict[str, ConfigValue] = {
        "partition-id": 0,
        "videos": str(folder),
        "data-dir": str(tmp_path / "nothing"),
    }
    context = Context(
        run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config
    )
    settings = node_client_settings(context)
    assert settings.videos == str(folder.resolve())
    dataset = build_dataset(settings, 0)
    assert isinstance(dataset.source, VideoFileSource)
    assert [a.name for a in dataset.annotations] == ["2024/d.webm", "2024/e.mp4", "c.mp4"]
    _, metrics = train_locally(settings, 0, 1, global_model(1), partial=True)
    assert metrics["num-examples"] == 3 and np.isfinite(float(metrics["train-loss"]))  # type: ignore[arg-type]
    assert (tmp_path / "run" / "fedvssl_results" / "client1" / "head-round-1.pt").is_file()
    assert {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))} == before


@pytest.mark.ray
def test_one_round_of_paper_k400_and_of_own_videos(
    k400_data: Path, own_videos_data: Path, tmp_path: Path
) -> None:
    """``experiment=paper_k400`` as shipped, sized down, on each prepared set: one multirun."""
    assert k400_data == own_videos_data
    sweep = tmp_path / "sweep"
    tiny = [
        "pool_size=2", "clients_per_round=2", "rounds=1", "model.width=16", "clip_len=8",
        "crop_size=32", "batch_size=2", "workers=0", "log_interval=2",
        "client_resources.num_gpus=0", "client_resources.num_cpus=1",
    ]  # fmt: skip
    done = subprocess.run(
        [
            sys.executable, "-m", "fedvssl.main", "--multirun", f"hydra.sweep.dir={sweep}",
            "experiment=paper_k400", "dataset=k400,videos", f"data_dir={k400_data}", *tiny,
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for job, dataset in enumerate(("k400", "videos")):
        assert f"2 clients, 1 rounds, {dataset} data in {k400_data / dataset}" in done.stdout
        run_dir = sweep / str(job)
        with np.load(run_dir / "fedvssl_results" / "round-1-weights.array.npz") as state:
            assert len(state.files) == 126
        metrics = read(run_dir / "metrics.json")
        assert [c["id"] for c in metrics["rounds"][0]["clients"]] == [1, 2]
        assert metrics["config"]["ctp"]["head_init"] == "reference"  # the paper's recipe
