"""``python -m fedvssl.report``: one setting end to end at tiny size, resume, bad input, table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedvssl.published import lookup
from fedvssl.report import sweep_settings
from fedvssl.report_table import Row, markdown, summarise

ROOT = Path(__file__).resolve().parents[1]
TINY_FINETUNE = (
    'finetune=["clip_len=8","crop_size=32","num_clips=2","batch_size=4","progress=false",'
    '"epochs=1","workers=0"]'
)


def report(work: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedvssl.report", f"work_dir={work}", f"data_dir={data_dir}",
         'pretrain=["experiment=smoke"]', TINY_FINETUNE, *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_one_setting_end_to_end_then_nothing_new(synthetic_data_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "report"
    grid = ["grid.alpha=[1]", "grid.beta=[0]", "fedavg=false"]
    done = report(work, synthetic_data_dir, *grid)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((work / "report.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["alpha=1 beta=0", "random init"]
    assert data["computed"] == 3  # one pre-training, two evaluations
    for row in data["rows"][:1]:
        ratio, std = row["summary"]["ratio"]
        assert 0.5 < ratio < 1.5 and std == 0.0
        assert row["seeds"][0]["pretraining"]["checkpoint"].endswith("round-2-weights.array.npz")
    assert data["rows"][1]["summary"]["ratio"] is None  # nothing pre-trained
    for row in data["rows"]:
        for metric in ("R@1", "R@5", "top1", "top5"):
            mean, _ = row["summary"][f"synthetic {metric}"]
            assert 0 <= mean <= 100
    table = (work / "report.md").read_text().splitlines()
    assert table[0] == (
        "| setting | ratio to trivial | synthetic R@1 | synthetic R@5 | synthetic top1 "
        "| synthetic top5 | wall time |"
    )
    assert len(table) == 4 and table[3].startswith("| random init | - |")
    assert (work / "report.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("cells/*/cell.json")}
    assert len(stamps) == 3

    again = report(work, synthetic_data_dir, *grid)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((work / "report.json").read_text())["computed"] == 0
    assert {p: p.stat().st_mtime_ns for p in work.glob("cells/*/cell.json")} == stamps
    assert "python -m fedvssl" not in again.stdout  # no cell was started


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["downstream=[nosuchset]"], "unknown dataset 'nosuchset'"),
        (["pretexts=[rotation]"], "unknown pretext 'rotation'"),
        (["checkpoints=[/no/such/file.npz]"], "/no/such/file.npz does not exist"),
        (["grid.alpha=[]", "fedavg=false"], "the grid is empty"),
        (["checkpoints=[published:nope]"], "no published checkpoint is called 'nope'"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    work = tmp_path / "report"
    done = report(work, tmp_path / "no-data", *overrides)
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stdout + done.stderr
    assert not (work / "cells").exists()


def test_failed_cell_is_reported_and_the_others_complete(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.npz"
    bad.write_text("not a checkpoint")
    work = tmp_path / "report"
    done = report(work, synthetic_data_dir, f"checkpoints=[{bad}]")
    assert done.returncode == 0, done.stdout + done.stderr
    table = (work / "report.md").read_text()
    assert "| broken | - | failed |" in table and "| random init | - |" in table
    assert "Failed cells:" in table and "broken, synthetic, seed 7:" in table
    random_row = json.loads((work / "report.json").read_text())["rows"][1]
    assert random_row["errors"] == [] and random_row["summary"]["synthetic R@1"] is not None


def test_table_puts_reported_numbers_beside_ours() -> None:
    entry = lookup("fedvssl-a0.9-b1")  # reported: UCF-101 R@1 35.34, top-1 79.41; HMDB-51 16.93
    seeds = [
        {"seed": 7, "evaluation": {"ucf101": {"R@1": 30.0, "top1": 80.0, "seconds": 60.0}}},
        {"seed": 8, "evaluation": {"ucf101": {"R@1": 40.0, "top1": 82.0, "seconds": 90.0}}},
    ]
    row = Row("fedvssl-a0.9-b1", 0.9, 1.0, entry, seeds)
    summary = summarise(row, ["ucf101"])
    assert summary["ucf101 R@1"] == (35.0, 5.0)
    assert summary["ucf101 R@1 reported"] == 35.34
    assert summary["ucf101 R@1 difference"] == pytest.approx(-0.34)
    assert summary["ucf101 top1 difference"] == pytest.approx(81.0 - 79.41)
    assert summary["seconds"] == 150.0 and summary["ratio"] is None
    line = markdown([row], ["ucf101"]).splitlines()[2]
    assert line == (
        "| fedvssl-a0.9-b1 | - | 35.00 ± 5.00 (reported 35.34, -0.34) "
        "| 81.00 ± 1.00 (reported 79.41, +1.59) | 2.5 min |"
    )


def test_sweep_rows_are_compared_with_the_published_setting() -> None:
    rows = sweep_settings({"grid": {"alpha": [0.9, 0.5], "beta": [1.0]}, "fedavg": True})
    assert [r.label for r in rows] == ["alpha=0.9 beta=1", "alpha=0.5 beta=1", "FedAvg"]
    assert rows[0].pretrain == ["pretext=ctp", "strategy.alpha=0.9", "strategy.beta=1.0"]
    assert rows[0].published is not None and rows[0].published.name == "fedvssl-a0.9-b1"
    assert rows[1].published is None and rows[2].pretrain == ["pretext=ctp", "strategy=fedavg"]


def test_pretexts_multiply_the_rows_and_make_a_column() -> None:
    cfg = {"grid": {"alpha": [0.9], "beta": [1.0]}, "fedavg": False, "pretexts": ["ctp", "vcop"]}
    rows = sweep_settings(cfg)
    assert [(r.label, r.pretext) for r in rows] == [
        ("ctp alpha=0.9 beta=1", "ctp"), ("vcop alpha=0.9 beta=1", "vcop"),
    ]  # fmt: skip
    assert rows[1].pretrain is not None and rows[1].pretrain[0] == "pretext=vcop"
    assert rows[0].published is not None and rows[1].published is None  # published: CtP only
    seed = {"seed": 7, "pretraining": {"ratio": 0.5}, "evaluation": {"synthetic": {"R@1": 20.0}}}
    table = markdown(
        [Row(r.label, r.alpha, r.beta, None, [seed], r.pretext) for r in rows], ["synthetic"]
    ).splitlines()
    assert table[0].startswith("| setting | pretext | ratio to trivial | synthetic R@1 |")
    assert table[3].startswith("| vcop alpha=0.9 beta=1 | vcop | 0.50 | 20.00 |")
