"""Shared fixtures: everything runs on the CPU with tiny synthetic data."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import torch
    from pretend_cuda import PretendCuda

    from CtP.pretext import Pretext
    from fedvssl.settings import ClientSettings

# Flower must neither phone home nor touch the user's ~/.flwr during tests.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


Serve = Callable[[type[http.server.BaseHTTPRequestHandler]], str]


@pytest.fixture
def pretend_cuda() -> Iterator[PretendCuda]:
    """A GPU made of CPU tensors (tests/pretend_cuda.py): the package takes its CUDA branches."""
    from pretend_cuda import PretendCuda

    with PretendCuda() as harness:
        yield harness


@pytest.fixture
def loopback() -> Iterator[Serve]:
    """Serve request-handler classes on 127.0.0.1 in threads; each call returns its base address."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> str:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _flwr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.getbasetemp() / "flwr_home"))


@pytest.fixture
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give Flower the identity a running app would have: building a Message needs it."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


# The CI-sized federated run: 2 clients, 2 rounds, width 16, 8x32x32 clips, one thread per client.
SMOKE = ["experiment=smoke", "client_resources.num_cpus=1", "log_interval=2"]


@pytest.fixture(scope="session")
def smoke_run(
    synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One ``python -m fedvssl.main`` run of SMOKE, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fedvssl.main", f"hydra.run.dir={run_dir}",
         f"data_dir={synthetic_data_dir}", *SMOKE],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return run_dir, done


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared synthetic dataset (2 client partitions), shared by the tests that train."""
    from fedvssl.data.preparation import prepare_dataset

    data_dir = tmp_path_factory.mktemp("data")
    prepare_dataset("synthetic", data_dir, num_clients=2, synthetic_scale=0.2, workers=1)
    return data_dir


def write_frame_zip(path: Path, frames: np.ndarray) -> None:
    """Write frames as the CtP zip of JPEGs (img_00001.jpg, ...)."""
    import zipfile

    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i, image in enumerate(frames, start=1):
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            assert ok
            archive.writestr(f"img_{i:05d}.jpg", jpeg.tobytes())


def moving_square_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A textured background with a bright square moving right: uint8 [T,H,W,3]."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    side = max(4, height // 4)
    for t in range(num_frames):
        x = (2 * t) % (width - side)
        frames[t, height // 3 : height // 3 + side, x : x + side] = (230, 200, 40)
    return frames


@pytest.fixture
def tiny_video_root(tmp_path: Path) -> Path:
    """Three tiny UCF-like videos as raw .avi files and as CtP zips, with an annotation list."""
    root = tmp_path / "tiny"
    names = [
        "MoveRight/v_MoveRight_g01_c01",
        "MoveRight/v_MoveRight_g02_c01",
        "Still/v_Still_g01_c01",
    ]
    from fedvssl.data.synthetic import write_video

    for index, name in enumerate(names):
        frames = moving_square_frames(24, 48, 64, seed=index)
        write_video(root / "UCF101_raw" / f"{name.split('/')[1]}.avi", frames, bit_rate=None)
        write_frame_zip(root / "zips" / f"{name}.zip", frames)
    labels = {"MoveRight": 1, "Still": 2}
    items = [{"name": n, "label": labels[n.split("/")[0]]} for n in names]
    (root / "annotations.json").write_text(json.dumps(items))
    return root


def settings_for(data_dir: Path, results: Path) -> ClientSettings:
    """Tiny client settings over the prepared synthetic set of ``data_dir`` (width 16, 8x32x32)."""
    from fedvssl.settings import ClientSettings

    return ClientSettings(
        results_dir=str(results),
        dataset_root=str(data_dir / "synthetic"),
        frames="zip",
        zip_template="zips/{name}.zip",
        video_template="UCF101_raw/{video}.avi",
        partition_template="annotations/client_distribution/client_dist{client}.json",
        width=16, clip_len=8, crop_size=32, batch_size=2, workers=0, local_epochs=1,
        lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=40.0, seed=7,
        bf16=False, channels_last=False, log_interval=2, progress=False, num_threads=1,
    )  # fmt: skip


def global_model(seed: int, pretext: Pretext | None = None) -> dict[str, torch.Tensor]:
    """A fresh width-16 model of ``pretext`` (CtP by default), as the server would send it."""
    import torch

    from CtP.recipe import CtPRecipe
    from fedvssl.server_app import initial_state

    state = initial_state(pretext or CtPRecipe(), 16, 8, seed)
    return {k: torch.from_numpy(v) for k, v in state.items()}
