"""Benchmarks: the generated UCF-like set, the random trajectories, and each report's contents.

Each benchmark runs as the suite runs it, ``python -m benchmarks.<name>`` from the repository
root, in a tiny configuration; nothing here asserts a timing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_INPUT = ["--videos", "3", "--frames", "12", "--size", "64", "48"]
TINY_CLIP = ["--crop-size", "32", "--clip-len", "8"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` from the repository root (so ``benchmarks`` is importable)."""
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if check and done.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed:\n{done.stderr}")
    return done


def benchmark(name: str, *args: str) -> dict[str, Any]:
    """Run one benchmark (its report goes to stdout) and return the report."""
    done = run("-m", f"benchmarks.{name}", *args)
    report = json.loads(done.stdout)
    assert report["benchmark"] == name
    assert report["machine"]["cpu_count"] >= 1
    return report


@pytest.fixture(scope="module")
def ucf_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("ucf_like")
    run("-m", "benchmarks.pipeline", *TINY_INPUT, "--data", str(data), "--generate-only")
    return data


def test_ucf_like_set_has_the_zip_layout(ucf_like: Path) -> None:
    items = json.loads((ucf_like / "annotations" / "ucf_like.json").read_text())
    assert [item["label"] for item in items] == [1, 2, 3]
    for item in items:
        with zipfile.ZipFile(ucf_like / "zips" / f"{item['name']}.zip") as archive:
            assert archive.namelist() == [f"img_{i:05d}.jpg" for i in range(1, 13)]
            data = np.frombuffer(archive.read("img_00007.jpg"), np.uint8)
        frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert frame is not None
        assert frame.shape == (48, 64, 3)
        assert frame.std() > 10  # textured, not flat
    spec = json.loads((ucf_like / "ucf_like.json").read_text())
    assert spec | {"seed": 0} == {
        "videos": 3,
        "frames": 12,
        "size": [64, 48],
        "seed": 0,
        "jpeg_quality": 95,
    }


def test_pipeline_report_reuses_the_set(ucf_like: Path) -> None:
    zip_file = next((ucf_like / "zips").rglob("*.zip"))
    stamp = zip_file.stat().st_mtime_ns
    report = benchmark(
        "pipeline",
        *TINY_INPUT,
        "--data",
        str(ucf_like),
        *TINY_CLIP,
        *["--workers", "0", "2", "--clips", "3", "--batch", "2", "--batches", "2"],
    )
    assert zip_file.stat().st_mtime_ns == stamp  # the same options reuse the set
    assert report["input"]["frames_per_video"] == 12
    assert report["input"]["frame_size"] == [64, 48]
    assert report["input"]["videos"] == 3
    here = report["in_process"]
    assert here["clips"] == 3
    assert here["ms_per_clip"] == pytest.approx(here["decode_ms"] + here["augment_ms"], abs=2e-3)
    assert here["clips_per_s"] == pytest.approx(1e3 / here["ms_per_clip"], rel=1e-3)
    assert 0 < here["decode_share"] < 1
    (loaded,) = report["loader"]
    assert (loaded["workers"], loaded["batch"], loaded["batches"]) == (2, 2, 6)  # 3 per worker
    assert loaded["clips_per_s_per_worker"] == pytest.approx(loaded["clips_per_s"] / 2, rel=1e-2)
    assert 0 < loaded["first_batch_s"] <= loaded["seconds"]

    other = run("-m", "benchmarks.pipeline", "--videos", "4", "--data", str(ucf_like), check=False)
    assert other.returncode != 0 and "other options" in other.stderr


def test_pipeline_reads_a_prepared_dataset(ucf_like: Path) -> None:
    report = benchmark(
        "pipeline",
        *["--dataset-root", str(ucf_like), "--annotations", "annotations/ucf_like.json"],
        *TINY_CLIP,
        *["--workers", "0", "--clips", "2"],
    )
    assert report["input"]["kind"] == "dataset"
    assert report["loader"] == []
    missing = run("-m", "benchmarks.pipeline", "--dataset-root", str(ucf_like / "no"), check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_train_step_report() -> None:
    report = benchmark(
        "train_step",
        *["--width", "8", "--batch", "2", "--clip-len", "8", "--crop-size", "32"],
        *["--steps", "2", "--warmup", "1", "--threads", "1", "--device", "cpu"],
        *["--variants", "fp32", "fp32_cl", "bf16"],
    )
    assert report["model"] == {"width": 8, "clip_len": 8, "crop_size": 32}
    fp32, fp32_cl, bf16 = report["results"]
    assert fp32["variant"] == "fp32" and fp32["steps"] == 2
    assert fp32["clips_per_s"] == pytest.approx(2 * 2 / fp32["seconds"], rel=1e-2)
    assert fp32["step_ms"] == pytest.approx(1e3 * fp32["seconds"] / 2, rel=1e-2)
    assert fp32["speedup_vs_fp32"] == 1.0 and "speedup_vs_bf16_cl" not in fp32
    assert math.isfinite(fp32["loss"]) and fp32["loss"] > 0
    assert fp32["peak_memory_mib"] is None  # CPU
    assert fp32_cl["channels_last"] and not fp32_cl["bf16"] and fp32_cl["steps"] == 2
    assert fp32_cl["speedup_vs_fp32"] == pytest.approx(
        fp32_cl["clips_per_s"] / fp32["clips_per_s"], rel=1e-2
    )
    assert bf16 == {"variant": "bf16", "skipped": "CUDA only (bf16 autocast and compile)"}


def test_client_epoch_report(ucf_like: Path) -> None:
    report = benchmark(
        "client_epoch",
        *TINY_INPUT,
        *["--data", str(ucf_like), *TINY_CLIP, "--repeat", "2", "--workers", "0", "1"],
        *["--batch", "4", "--width", "8", "--warmup-steps", "1", "--threads", "1"],
        *["--device", "cpu", "--augment", "cpu", "device", "--epochs", "2"],
        *["--model-steps", "2"],
    )
    assert report["precision"] == "fp32"  # autocast and layout apply on CUDA only
    assert report["iterations_per_epoch"] == 2  # 6 clips in batches of 4
    model_rate = report["model_only"]["clips_per_s"]
    assert report["model_only"]["steps"] == 2 and model_rate > 0
    runs = [(a, w, e) for a in ("cpu", "device") for w in (0, 1) for e in (1, 2)]
    assert [(r["augment"], r["workers"], r["epoch"]) for r in report["results"]] == runs
    for result in report["results"]:
        assert (result["clips"], result["iterations"], result["skipped_videos"]) == (6, 2, 0)
        assert 0 <= result["data_time_share_after_first"] <= 1
        assert 0 < result["data_time_share"] < 1
        assert result["clips_per_s"] == pytest.approx(6 / result["seconds"], rel=1e-2)
        assert result["of_model_only"] == pytest.approx(result["clips_per_s"] / model_rate, 1e-2)
        assert math.isfinite(result["loss"]) and result["loss"] > 0


def test_trajectories_are_boxes_and_nothing_needs_pyav_or_flower() -> None:
    code = """
import json, sys
sys.modules.update(av=None, flwr=None, hydra=None)  # importing any of them now fails
import torch
import benchmarks.client_epoch, benchmarks.pipeline
from benchmarks.train_step import random_trajectories
trajs = random_trajectories(64, 16, 40, torch.Generator().manual_seed(1))
print(json.dumps(trajs.tolist()))
"""
    trajs = np.array(json.loads(run("-c", code).stdout))
    assert trajs.shape == (64, 3, 16, 4)
    np.testing.assert_array_equal(trajs, np.round(trajs))
    x1, y1, x2, y2 = np.moveaxis(trajs, -1, 0)
    assert (x1 >= 0).all() and (y1 >= 0).all()
    assert (x1 < x2).all() and (y1 < y2).all()
    assert (x2 <= 40).all() and (y2 <= 40).all()
    assert (trajs[:, :, 1:] != trajs[:, :, :1]).any()  # the boxes move


def test_gpu_suite_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


def test_ctp_learning_report(synthetic_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "learning.json"
    run(
        "-m", "benchmarks.ctp_learning", "--dataset-root", str(synthetic_data_dir / "synthetic"),
        "--width", "16", *TINY_CLIP, "--batch", "2", "--steps", "4", "--window", "2",
        "--recipes", "reference", "marked", "--device", "cpu", "--output", str(output),
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert report["benchmark"] == "ctp_learning"
    runs = report["runs"]
    assert [r["recipe"] for r in runs] == ["reference", "marked"]
    assert runs[0]["settings"]["head_init"] == "reference"
    assert runs[1]["settings"]["patch"]["highlight"] == 1.0
    for entry in runs:
        assert [w["step"] for w in entry["windows"]] == [2, 4]
        for window in entry["windows"]:
            assert math.isfinite(window["loss"]) and window["trivial_loss"] > 0
            assert window["ratio"] == pytest.approx(window["loss"] / window["trivial_loss"])
            assert 0.0 <= window["live_units"] <= 1.0 and window["backbone_grad"] >= 0
            assert window["predicted_std"] >= 0 and window["target_std"] > 0


def test_lever_sweep_undoes_one_departure_at_a_time() -> None:
    from benchmarks.ctp_learning import lever_sweep

    recipes = lever_sweep()
    marked = recipes.pop("marked")
    assert "marked, reference head_init" in recipes
    assert "marked, reference highlight" in recipes
    for name, recipe in recipes.items():
        undone = name.removeprefix("marked, reference ")
        assert recipe != marked
        if undone in ("head_init", "hue_sat_prob", "brightness_prob", "contrast_prob"):
            assert getattr(recipe, undone) != getattr(marked, undone)
        else:
            assert getattr(recipe.patch, undone) != getattr(marked.patch, undone)
            assert recipe.head_init == marked.head_init


TINY_PRETEXT = "model.width=8 clip_len=8 crop_size=32 batch_size=2"


def pretext_learning(data_dir: Path, output: Path, *args: str) -> dict[str, Any]:
    """Run benchmarks.pretext_learning on the synthetic set, one thread; return its report."""
    root = str(data_dir / "synthetic")
    run(
        "-m", "benchmarks.pretext_learning", "--dataset-root", root, "--threads", "1",
        "--output", str(output), *args,
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert report["benchmark"] == "pretext_learning"
    return report


def test_pretext_learning_report(synthetic_data_dir: Path, tmp_path: Path) -> None:
    report = pretext_learning(
        synthetic_data_dir, tmp_path / "pretexts.json", "--steps", "4", "--window", "2",
        "--runs", f"pretext=speed {TINY_PRETEXT}", f"pretext=vcop optimizer.lr=0.01 {TINY_PRETEXT}",
    )  # fmt: skip
    runs = report["runs"]
    assert (report["dataset_root"], report["seed"], report["window"]) == (
        str(synthetic_data_dir / "synthetic"), 0, 2,
    )  # fmt: skip
    assert [r["overrides"][0] for r in runs] == ["pretext=speed", "pretext=vcop"]
    assert runs[1]["overrides"][1] == "optimizer.lr=0.01"
    for entry in runs:
        assert [w["step"] for w in entry["windows"]] == [2, 4]
        for window in entry["windows"]:
            assert 0.0 < window["ratio"] < 10.0 and 0.0 <= window["accuracy"] <= 1.0
            assert window["backbone_grad"] > 0


def test_client_round_report(ucf_like: Path) -> None:
    report = benchmark(
        "client_round",
        *TINY_INPUT,
        *["--data", str(ucf_like), *TINY_CLIP, "--clients", "3", "--per-client", "4"],
        *["--parallel", "2", "--rounds", "2", "--workers", "0", "--batch", "2", "--width", "8"],
        *["--device", "cpu", "--augment", "device"],
    )
    assert report["clients"] == 3 and report["input"]["per_client"] == 4
    (result,) = report["results"]
    assert result["parallel"] == 2 and sorted(result["clients_per_process"]) == [1, 2]
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for row in result["rounds"]:
        assert row["clips"] == 3 * 4  # every client's whole partition, every round
        assert row["clips_per_s"] == pytest.approx(12 / row["seconds"], rel=1e-2)
    rate = result["rounds"][-1]["clips_per_s"]
    assert result["baseline_projection_min"] == pytest.approx(20 * 5 * 1907 / rate / 60, 1e-2)


def test_pretext_learning_controls(synthetic_data_dir: Path, tmp_path: Path) -> None:
    # The memorisation control: Adam on one repeated batch must fit it (the ratio falls).
    report = pretext_learning(
        synthetic_data_dir, tmp_path / "fixed.json", "--steps", "30", "--window", "10",
        "--optimizer", "adam", "--fixed-batch",
        "--runs", f"pretext=speed {TINY_PRETEXT} optimizer.lr=0.001",
    )  # fmt: skip
    assert report["optimizer"] == "adam" and report["fixed_batch"] is True
    windows = report["runs"][0]["windows"]
    assert [w["step"] for w in windows] == [10, 20, 30]
    assert windows[-1]["ratio"] < 0.5 * windows[0]["ratio"]
    assert windows[-1]["accuracy"] == 1.0


def test_pretext_learning_classes_and_devices(synthetic_data_dir: Path, tmp_path: Path) -> None:
    # --classes keeps the named classes' videos; an unknown class or GPU is refused in one line.
    report = pretext_learning(
        synthetic_data_dir, tmp_path / "zoom.json", "--steps", "6", "--window", "2",
        "--classes", "ZoomIn", "ZoomOut", "--runs", f"pretext=speed {TINY_PRETEXT}",
        "--workers", "1", "--max-seconds", "0",
    )  # fmt: skip
    assert report["classes"] == ["ZoomIn", "ZoomOut"]
    assert report["device"] == "cpu" and report["workers"] == 1
    assert [w["step"] for w in report["runs"][0]["windows"]] == [2]  # out of time: one window
    root = str(synthetic_data_dir / "synthetic")

    def refused(*args: str) -> str:
        done = run(
            "-m", "benchmarks.pretext_learning", "--dataset-root", root, "--steps", "2",
            "--runs", f"pretext=speed {TINY_PRETEXT}", *args, check=False,
        )  # fmt: skip
        assert done.returncode != 0
        return done.stderr.strip().splitlines()[-1]

    unknown_class = refused("--classes", "Zoom")
    assert unknown_class.startswith("--classes: no video of ['Zoom']")
    assert "'ZoomIn'" in unknown_class
    assert refused("--device", "cuda:99").startswith("--device cuda:99: this machine has")


def test_synthetic_downstream_sends_data_dir_to_both_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import synthetic_downstream as sd

    commands: list[list[str]] = []

    class Done:
        """A finished step that wrote what the real one writes."""

        def __init__(self, args: list[str], threads: int | None = None) -> None:
            commands.append(args)
            run_dir = Path(next(a for a in args if a.startswith("hydra.run.dir=")).split("=")[1])
            run_dir.mkdir(parents=True)
            if args[1] == "fedvssl.main":
                rounds = [{"round": 15, "train_loss": 0.9, "trivial_loss": 1.8}]
                (run_dir / "metrics.json").write_text(json.dumps({"rounds": rounds}))
            else:
                (run_dir / "results.json").write_text(json.dumps(dict.fromkeys(sd.METRICS, 1.0)))
            self.args = args

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(sd, "_run", Done)
    argv = ["--seeds", "7", "--work-dir", str(tmp_path), "--pretrain", "pretext=vcop"]
    assert sd.main([*argv, "--data-dir", "data/light"]) == 0
    main, *tunes = commands
    assert main[1] == "fedvssl.main" and main[-2:] == ["pretext=vcop", "data_dir=data/light"]
    assert [t[-1] for t in tunes] == ["data_dir=data/light"] * 2  # pre-trained and random
    assert any("round-15-weights" in a for a in tunes[0])


def test_every_injected_device_bug_still_applies_to_one_line() -> None:
    from benchmarks.mutation_check import BUGS, load_bugs

    bugs = load_bugs(BUGS, None)
    assert len(bugs) >= 10 and len({b.name for b in bugs}) == len(bugs)
    for bug in bugs:
        text = (ROOT / bug.file).read_text()
        changed = bug.inject(text)  # exits when the line is gone or not unique
        assert changed != text and len(changed.splitlines()) == len(text.splitlines()), bug.name


def test_cuda_checks_say_skipped_without_a_gpu(tmp_path: Path) -> None:
    from benchmarks.cuda_checks import CHECKS, main

    main(["--videos", "2", "--frames", "10", "--size", "48", "36", "--data",
          str(tmp_path / "set"), "--output", str(tmp_path / "checks.json")])  # fmt: skip
    report = json.loads((tmp_path / "checks.json").read_text())
    assert report["checks"] == {name: {"skipped": "no CUDA device"} for name in CHECKS}
    assert report["input"]["videos"] == 2
