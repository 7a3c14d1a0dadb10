"""End to end over Ray: `python -m fedvssl.main` on a tiny synthetic dataset.

Each run is a separate process (as a user runs it): 2 clients, a width-16 model on 8-frame 32 px
clips. Checked: checkpoints, client logs, metrics, the plot, resume after a kill, a two-job
multirun of the VCOP and Speed pretexts, and the one-line errors. (A failing client:
test_deployment.py, on a Ray cluster.)
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvssl.checkpoints import load_global_checkpoint

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TINY = [  # conftest.SMOKE, the run of the smoke_run fixture
    "experiment=smoke",  # 2 clients, 2 rounds, width 16, 8x32x32 clips, batch 2
    "client_resources.num_cpus=1",
    "log_interval=2",
]


def main_command(run_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "fedvssl.main", f"hydra.run.dir={run_dir}",
        f"data_dir={data_dir}", *TINY, *overrides,
    ]  # fmt: skip


def run_main(run_dir: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        main_command(run_dir, data_dir, *overrides),
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def checkpoint(run_dir: Path, server_round: int) -> dict[str, np.ndarray]:
    return load_global_checkpoint(
        run_dir / "fedvssl_results" / f"round-{server_round}-weights.array.npz"
    )


def test_two_rounds_write_checkpoints_logs_and_metrics(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    run_dir, done = smoke_run  # python -m fedvssl.main with TINY
    assert done.returncode == 0, done.stdout + done.stderr

    state = checkpoint(run_dir, 2)
    keys = list(state)
    assert len(keys) == 126
    assert keys[0] == "backbone.stem.conv.weight" and keys[-1] == "head.pred_head.bias"
    assert state["backbone.stem.bn.num_batches_tracked"].dtype == np.int64
    assert not np.array_equal(
        state["backbone.stem.conv.weight"], checkpoint(run_dir, 1)["backbone.stem.conv.weight"]
    )

    for client in (1, 2):
        logs = list((run_dir / "fedvssl_results" / f"client{client}").glob("*.log.json"))
        assert logs, f"client {client} wrote no log"
        line = json.loads(logs[0].read_text().splitlines()[0])
        assert {
            "mode",
            "epoch",
            "iter",
            "lr",
            "time",
            "data_time",
            "loss",
            "loss_ctr",
            "loss_size",
            "trivial_loss",
        } <= set(line)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert [c["id"] for c in record["clients"]] == [1, 2]
        assert abs(sum(c["weight"] for c in record["clients"]) - 1) < 1e-6
        assert all(np.isfinite(c["loss"]) and c["examples"] > 0 for c in record["clients"])
        assert all(c["trivial_loss"] > 0 for c in record["clients"])
        mean_trivial = sum(c["trivial_loss"] * c["examples"] for c in record["clients"]) / sum(
            c["examples"] for c in record["clients"]
        )
        assert record["trivial_loss"] == pytest.approx(mean_trivial)
        assert record["seconds"] > 0
    assert (run_dir / "metrics.png").stat().st_size > 0
    # one concise line per round, once, with the loss as a fraction of the trivial loss
    last = rounds[-1]
    ratio = last["train_loss"] / last["trivial_loss"]
    assert done.stdout.count("round 2/2: loss") == 1
    assert f"({ratio:.2f} of trivial)" in done.stdout


def test_multirun_of_the_other_pretexts_runs_each_job_in_its_own_folder(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    """One Hydra multirun over pretext=vcop,speed: two 2-round jobs with the same strategy."""
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            sys.executable, "-m", "fedvssl.main", "--multirun", f"hydra.sweep.dir={sweep}",
            f"data_dir={synthetic_data_dir}", *TINY, "pretext=vcop,speed",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for job, (pretext, entries, classes) in enumerate([("vcop", 124, 6), ("speed", 122, 7)]):
        run_dir = sweep / str(job)
        assert f"FedVSSL ({pretext} pretext, fedvssl," in done.stdout
        state = checkpoint(run_dir, 2)
        assert len(state) == entries and list(state)[:120] == list(checkpoint(run_dir, 1))[:120]
        assert all(k.startswith(("backbone.", "head.")) for k in state)
        for client in (1, 2):  # partial update: each client keeps its own head on disk
            client_dir = run_dir / "fedvssl_results" / f"client{client}"
            head = torch.load(client_dir / "head-round-2.pt", weights_only=True)
            assert sorted(head) == sorted(k for k in state if k.startswith("head."))
            log = next(client_dir.glob("*.log.json")).read_text().splitlines()[0]
            assert {"loss_cls", "accuracy", "trivial_loss"} <= set(json.loads(log))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["config"]["pretext"]["name"] == pretext
        last = metrics["rounds"][-1]
        assert last["trivial_loss"] == pytest.approx(math.log(classes))
        assert f"({last['train_loss'] / last['trivial_loss']:.2f} of trivial)" in done.stdout

    # the folder's run is VCOP's: resuming it as Speed is one clear line naming the setting
    wrong = run_main(sweep / "0", synthetic_data_dir, "pretext=speed", "resume=true")
    assert wrong.returncode == 2
    errors = [line for line in wrong.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and 'pretext.name ("vcop" -> "speed")' in errors[0]


def test_killed_run_resumes_to_the_same_final_checkpoint(
    synthetic_data_dir: Path,
    tmp_path: Path,
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    straight, _ = smoke_run  # the same 2-round run, uninterrupted
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        main_command(killed, synthetic_data_dir), cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first = killed / "fedvssl_results" / "round-1-weights.array.npz"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "fedvssl_results" / "round-2-weights.array.npz").exists()

    resumed = run_main(killed, synthetic_data_dir, "resume=true")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after round 1" in resumed.stdout
    final, expected = checkpoint(killed, 2), checkpoint(straight, 2)
    assert list(final) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(final[key], expected[key], err_msg=key)
    metrics = json.loads((killed / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=ucf101"], "dataset_preparation.py --dataset ucf101"),
        (["strategy.alpha=1.5"], "strategy.alpha must be in [0, 1]"),
        (["strategy.beta=-1"], "beta"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    done = run_main(tmp_path / "run", tmp_path / "nothing", *overrides)
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_run_whose_rounds_aggregate_nothing_fails_loudly(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    """A diverging learning rate: every reply is non-finite, so round 1 aggregates nothing."""
    run_dir = tmp_path / "diverged"
    done = run_main(run_dir, synthetic_data_dir, "optimizer.lr=1e12")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "round 1 aggregated nothing: 0 valid replies" in errors[0]
    assert "first client error: partition " in errors[0] and "must be a finite number" in errors[0]
    assert "Traceback" not in done.stdout + done.stderr and "done:" not in done.stdout
    assert not list((run_dir / "fedvssl_results").glob("round-*"))  # no checkpoint of nothing
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stopped"] in errors[0] and not metrics["rounds"][0]["aggregated"]
