"""The run folder is owned: a lock, the record held back until a run is accepted, the fingerprint.

In-process: the lock (a second holder is refused naming the first; a killed run's lock is taken
over), the log file and ``.hydra/`` written only once the run is accepted, and the fine-tuning's
fingerprint (settings and the pre-trained file's hash). Then, on the folder of the shared smoke
run, ``python -m fedvssl.main`` refused two ways (the folder in use, ``resume`` with other
settings) leaves ``.hydra/``, ``main.log`` and ``metrics.json`` byte for byte as they were (the
refusal of rounds there without ``resume``: test_server_rounds.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SMOKE

from CtP.ctp import build_ctp
from fedvssl.checkpoints import save_global_checkpoint
from fedvssl.guard.fingerprint import FingerprintError, differences, write_fingerprint
from fedvssl.guard.run_folder import (
    LOCK_FILE,
    RunFolder,
    RunFolderError,
    acquire_lock,
    release_lock,
    survivors,
)

ROOT = Path(__file__).resolve().parents[1]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    handler, package = _Lines(), logging.getLogger("fedvssl")
    package.addHandler(handler)
    yield handler.lines
    package.removeHandler(handler)


def test_a_second_run_is_refused_and_a_killed_runs_lock_taken_over(
    tmp_path: Path, warnings: list[str]
) -> None:
    fd = acquire_lock(tmp_path)
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and "command" in holder and "started" in holder
    with pytest.raises(RunFolderError) as refused:
        acquire_lock(tmp_path)
    assert f"{tmp_path} is in use by another run (process {os.getpid()} on" in str(refused.value)
    release_lock(tmp_path, fd)
    assert not (tmp_path / LOCK_FILE).exists()

    killed = {"pid": 999999, "host": "elsewhere", "started": "then", "command": "python -m x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(killed))  # nobody holds it: its process died
    fd = acquire_lock(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert any("taking over" in line and "process 999999 on elsewhere" in line for line in warnings)
    release_lock(tmp_path, fd)

    helper = subprocess.Popen(["sleep", "30"])  # a helper left in the killed run's group
    try:
        group = {"pid": 999999, "host": socket.gethostname(), "pgid": os.getpgid(0)}
        assert helper.pid in survivors(group) and os.getpid() not in survivors(group)
    finally:
        helper.kill()
        helper.wait()


def test_the_log_and_hydra_record_are_written_only_by_an_accepted_run(tmp_path: Path) -> None:
    log = tmp_path / "main.log"
    log.write_text("the earlier run\n")
    root = logging.getLogger()
    handler = logging.FileHandler(log, delay=True)
    root.addHandler(handler)
    try:
        with RunFolder(tmp_path):
            logging.getLogger("fedvssl").error("error: refused")
        assert log.read_text() == "the earlier run\n" and handler not in root.handlers
        handler = logging.FileHandler(log, delay=True)
        root.addHandler(handler)
        with RunFolder(tmp_path) as folder:
            folder.accept({"config.yaml": "seed: 7\n"})
            logging.getLogger("fedvssl").error("accepted")
        handler.flush()
        assert log.read_text() == "the earlier run\naccepted\n"
        assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 7\n"
    finally:
        root.removeHandler(handler)
        handler.close()


def finetune_config(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose(
            config_name="finetune",
            overrides=[f"data_dir={tmp_path / 'no-data'}", "resume=true", *overrides],
        )
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return plain


def test_a_resumed_fine_tuning_must_be_the_same_run(tmp_path: Path) -> None:
    from fedvssl.finetune import downstream, finetune_fingerprint

    first, other = tmp_path / "a.npz", tmp_path / "b.npz"
    for seed, path in enumerate((first, other)):
        torch.manual_seed(seed)
        model = build_ctp(width=4, clip_len=8)
        save_global_checkpoint(path, {k: v.numpy() for k, v in model.state_dict().items()})
    run_dir = tmp_path / "run"
    made = finetune_config(tmp_path, f"pretrained={first}")
    write_fingerprint(run_dir, finetune_fingerprint(made, str(first)))
    (run_dir / "retrieval.json").write_text("{}")  # what a resumed run would reuse

    asked = finetune_config(tmp_path, f"pretrained={other}", "optimizer.lr=0.5", "epochs=300")
    with pytest.raises(FingerprintError) as refused:
        downstream(asked, run_dir)  # refused before any data is read
    message = str(refused.value)
    assert "optimizer.lr (0.01 -> 0.5), pretrained_sha256 (" in message
    assert "epochs" not in message and "\n" not in message
    moved = tmp_path / "moved.npz"
    moved.write_bytes(first.read_bytes())  # the same file elsewhere is the same run
    assert (
        differences(finetune_fingerprint(made, str(first)), finetune_fingerprint(made, str(moved)))
        == []
    )


def digests(run_dir: Path) -> dict[str, str]:
    files = [
        *sorted((run_dir / ".hydra").iterdir()),
        run_dir / "main.log",
        run_dir / "metrics.json",
    ]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_refused_runs_leave_the_folders_record_as_it_was(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]], synthetic_data_dir: Path
) -> None:
    run_dir, done = smoke_run
    assert done.returncode == 0, done.stdout + done.stderr
    before = digests(run_dir)

    def main(*overrides: str) -> str:
        refused = subprocess.run(
            [sys.executable, "-m", "fedvssl.main", f"hydra.run.dir={run_dir}",
             f"data_dir={synthetic_data_dir}", *SMOKE, *overrides],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        errors = [line for line in refused.stdout.splitlines() if "error:" in line]
        assert refused.returncode == 2 and len(errors) == 1, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr and digests(run_dir) == before
        return errors[0]

    fd = acquire_lock(run_dir)
    try:
        assert f"is in use by another run (process {os.getpid()} on" in main("resume=true")
    finally:
        release_lock(run_dir, fd)
    changed = main("resume=true", "rounds=3", "seed=99", "optimizer.lr=0.5", "strategy.alpha=0")
    assert "optimizer.lr (0.01 -> 0.5), seed (7 -> 99), strategy.alpha (0.9 -> 0.0)" in changed
    assert "rounds" not in changed.split("other settings")[1]
