"""The package's CUDA branches on a CPU-only machine, under the pretend-CUDA harness.

``pretend_cuda`` (tests/pretend_cuda.py) makes CPU tensors report ``cuda:0`` and keep CUDA's
rules, so the code a GPU user runs first (``augment=auto``, bf16 autocast, channels_last_3d,
pinned memory, nvJPEG, retrieval and fine-tuning on the device) runs here: a tensor left on the
host, a ``.numpy()`` of a device tensor, an autocast that never engages, a copy that is not
pinned, a wait for the device between log lines or a decode racing queued kernels fails a test.
Every test has ``cuda`` in its name: ``pytest -k cuda`` runs them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import global_model, settings_for
from pretend_cuda import CUDA, PretendCuda, on_device
from torch import Tensor, nn

import fedvssl.local_training as local_training
from CtP.ctp import CtP
from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import ZipFrameSource, load_annotations
from CtP.device_augmentation import (
    DeviceAugmentation,
    PlannedClips,
    augment_batch,
    collate_planned,
)
from CtP.patches import PatchMaskParams
from CtP.recipe import CtPRecipe
from CtP.retrieval import build_retrieval_model, extract_features, retrieval_metrics
from CtP.transforms import IMAGENET_STD, normalize_clip
from fedvssl.checkpoints import save_global_checkpoint
from fedvssl.evaluation import multi_clip
from fedvssl.local_training import cached_model, train_locally
from fedvssl.settings import ClientSettings

CUDA_ANY = torch.device("cuda")  # what the package asks for; its tensors then report cuda:0
TINY = ["clip_len=8", "crop_size=32", "num_clips=2", "batch_size=4", "progress=false"]


@pytest.fixture(scope="module")
def small(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few of the synthetic set's videos, laid out as a prepared dataset (seconds, not minutes).

    ``annotations/train_split_1.json`` lists 8 train videos, ``test_split_1.json`` 4 test videos,
    ``client6.json`` 6 train videos (a client's list); ``zips`` is the synthetic set's.
    """
    source = synthetic_data_dir / "synthetic"
    root = tmp_path_factory.mktemp("small") / "synthetic"
    (root / "annotations").mkdir(parents=True)
    (root / "zips").symlink_to(source / "zips")
    lists = {"train": 8, "test": 4, "client": 6}
    for name, count in lists.items():
        split = "test" if name == "test" else "train"
        items = json.loads((source / "annotations" / f"{split}_split_1.json").read_text())
        path = root / ("client6.json" if name == "client" else f"annotations/{split}_split_1.json")
        path.write_text(json.dumps(items[:count]))
    return root


def client_settings(small: Path, results: Path, **changes: Any) -> ClientSettings:
    """Tiny client settings (width 16, 8x32x32 clips) over ``small``'s client list."""
    settings = settings_for(small.parent, results)
    return replace(settings, annotations=str(small / "client6.json"), **changes)


@pytest.fixture
def watched() -> Iterator[tuple[nn.Module, list[tuple[Any, ...]]]]:
    """The client's cached CtP model with hooks: what its backbone gets, what its stem makes."""
    model = cached_model(CtPRecipe(), 16, 8, CUDA_ANY)
    assert isinstance(model, CtP)
    seen: list[tuple[Any, ...]] = []

    def inputs(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        seen.append(("in", x.device, x.is_contiguous(memory_format=torch.channels_last_3d)))

    def outputs(module: nn.Module, args: Any, out: Tensor) -> None:
        seen.append(("stem", out.device, out.dtype))

    handles = [
        model.backbone.register_forward_pre_hook(inputs),
        model.backbone.stem.register_forward_hook(outputs),
    ]
    yield model, seen
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize(
    ("augment", "workers"),
    [("device", 0), ("device", 1), ("auto", 0), ("auto", 1), ("cpu", 0), ("cpu", 1)],
)
def test_client_round_on_cuda(
    small: Path, tmp_path: Path, pretend_cuda: PretendCuda,
    watched: tuple[nn.Module, list[tuple[Any, ...]]], augment: str, workers: int,
) -> None:  # fmt: skip
    model, seen = watched
    settings = client_settings(
        small, tmp_path / "results", augment=augment, workers=workers, bf16=True,
        channels_last=True,
    )  # fmt: skip
    start = global_model(1)
    state, metrics = train_locally(settings, 0, 1, start, partial=True)

    # the model trained on the device, on channels_last_3d clips there, with bf16 activations
    assert all(p.device == CUDA for p in model.parameters())
    assert ("in", CUDA, True) in seen and ("stem", CUDA, torch.bfloat16) in seen
    assert set(seen) == {("in", CUDA, True), ("stem", CUDA, torch.bfloat16)}
    record = pretend_cuda.record
    assert set(record.autocast) == {torch.bfloat16} and record.device_ops["conv3d"] > 0
    # clips decoded by nvJPEG on the device unless the workers make them (augment=cpu)
    assert bool(record.decodes) == (augment != "cpu") and record.hazards == []
    assert not [c for c in record.h2d() if c.non_blocking and not c.pinned]  # loader pins
    # the arrays for the server are on the host, and they moved
    assert list(state) == list(start) and not any(on_device(v) for v in state.values())
    assert all(v.device.type == "cpu" for v in state.values())
    assert not torch.equal(state["backbone.stem.conv.weight"], start["backbone.stem.conv.weight"])
    assert np.isfinite(float(metrics["train-loss"])) and float(metrics["trivial-loss"]) > 0  # type: ignore[arg-type]
    assert metrics["num-examples"] == len(load_annotations(settings.partition_file(0)))


@pytest.mark.parametrize("augment", ["device", "cpu"])
def test_cuda_steps_wait_for_nothing_between_log_lines(
    small: Path, tmp_path: Path, augment: str
) -> None:
    import pretend_cuda

    from benchmarks.device_syncs import count_steps

    train = small / "annotations" / "train_split_1.json"  # 8 videos: 4 steps
    settings = replace(
        client_settings(small, tmp_path / "results", augment=augment), annotations=str(train)
    )
    counted = count_steps(pretend_cuda, settings, log_interval=3)
    steps = counted["per_step"]
    assert [s["log_line"] for s in steps] == [False, False, True, False] and not counted["hazards"]
    for step in steps:
        assert step["syncs"] == (1 if step["log_line"] else 0), step  # the log line reads losses
        assert step["h2d_transfers"] <= 2 and step["h2d_pageable"] == step["h2d_blocking"] == 0
    assert {s["nvjpeg_calls"] for s in steps} == ({1} if augment == "device" else {0})


def test_device_path_on_cuda_draws_the_cpu_paths_clips(pretend_cuda: PretendCuda) -> None:
    # every colour change and tinted, translucent patches: each table of the device path is used
    augmentation = CtPAugmentation(
        crop_size=32, hue_sat_prob=1.0, brightness_prob=1.0, contrast_prob=1.0,
        patch_params=PatchMaskParams(highlight=0.5, tint="random"),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    frames = np.stack([rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)] * 8)  # [T, H, W, 3]
    plans = [augmentation.plan(8, 24, 32, np.random.default_rng(s)) for s in range(4)]
    cpu = torch.stack([normalize_clip(augmentation.apply(frames, p)) for p in plans])
    on_gpu = torch.from_numpy(frames).permute(0, 3, 1, 2).to(CUDA_ANY)  # [T, 3, H, W]
    device = augment_batch([on_gpu] * len(plans), plans, 32)
    assert device.is_cuda and device.dtype == torch.float32 and device.shape == cpu.shape
    level = 1 / (255 * min(IMAGENET_STD))  # one grey level in normalised units, at most
    diff = (device.cpu() - cpu).abs() / level
    assert float(diff.median()) < 0.01 and float((diff > 1.5).float().mean()) < 0.05


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's codecs
def test_cuda_decode_never_writes_where_queued_kernels_read(
    small: Path, pretend_cuda: PretendCuda
) -> None:
    items = load_annotations(small / "annotations" / "train_split_1.json")[:4]
    planned = PlannedClips(
        items, ZipFrameSource(small), CtPAugmentation(crop_size=32), clip_len=8, seed=1
    )
    batches = [collate_planned([planned[i], planned[i + 1]]) for i in (0, 2)]
    augment = DeviceAugmentation(32, CUDA_ANY)
    for batch in batches:  # no host sync between the batches, as between two steps
        augment(batch)["imgs"].square().mean()
    assert pretend_cuda.record.hazards == [] and len(pretend_cuda.record.decodes) == 2
    # the negative control: decoding on the training stream, behind its queued kernels
    augment._decode_stream = torch.cuda.current_stream()
    augment(batches[0])
    assert any("pytorch/vision#9606" in h for h in pretend_cuda.record.hazards)


def test_compiled_client_round_on_cuda(
    small: Path, tmp_path: Path, pretend_cuda: PretendCuda,
    watched: tuple[nn.Module, list[tuple[Any, ...]]], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # As far as the CPU allows: dynamo traces with tensors of the real device (the CPU), so a
    # graph traced under the harness would make CPU tensors where the model asks for its own
    # device. Here the compiled module runs the model eagerly (dynamo off) through every CUDA
    # branch; test_client.py traces it for real on the CPU, benchmarks/gpu_suite.sh on a GPU.
    monkeypatch.setattr(
        local_training.torch, "compile", functools.partial(torch.compile, backend="eager")
    )
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    model, seen = watched
    settings = client_settings(
        small, tmp_path / "results", augment="auto", bf16=True, channels_last=True, compile=True
    )
    start = global_model(1)
    state, metrics = train_locally(settings, 0, 1, start, partial=True)
    compiled = local_training._COMPILED[id(model)]
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert ("stem", CUDA, torch.bfloat16) in seen and pretend_cuda.record.decodes
    assert sorted(state) == sorted(start) and not any(on_device(v) for v in state.values())
    assert np.isfinite(float(metrics["train-loss"]))  # type: ignore[arg-type]


def test_retrieval_on_cuda(small: Path) -> None:
    source = ZipFrameSource(small)
    videos = load_annotations(small / "annotations" / "train_split_1.json")
    clips = multi_clip(source, videos, clip_len=8, stride=2, crop_size=32, num_clips=2)
    torch.manual_seed(0)
    model = build_retrieval_model(None, width=16)
    on_cpu = extract_features(model, clips, device=torch.device("cpu"), progress=False)
    with PretendCuda() as cuda:
        model.to(CUDA_ANY)
        cuda.reset()  # so that every copy recorded below is a batch
        on_gpu = extract_features(
            model, clips, device=CUDA_ANY, batch_size=4, bf16=True, channels_last=True,
            progress=False,
        )  # fmt: skip
        record = cuda.reset()
        metrics = retrieval_metrics(on_gpu, on_gpu, ks=(1, 5), device=CUDA_ANY)
        assert cuda.record.device_ops["topk"] == 1  # ranked on the device
    assert all(p.device.type == "cpu" for p in model.parameters())  # outside the harness again
    assert on_gpu.feats.dtype == torch.float32 and not on_device(on_gpu.feats)
    assert set(record.autocast) == {torch.bfloat16} and record.device_ops["conv3d"] > 0
    uploads = record.h2d()
    assert len(uploads) == 2 and all(c.pinned and c.non_blocking for c in uploads)  # the batches
    assert len(record.syncs) == 1, record.syncs  # the features come back once, not per batch
    torch.testing.assert_close(on_gpu.feats, on_cpu.feats, rtol=0.05, atol=0.02)  # bf16 only
    assert metrics == {"R@1": 100.0, "R@5": 100.0}  # every video finds itself first


def test_round_evaluator_on_cuda(synthetic_data_dir: Path, pretend_cuda: PretendCuda) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from CtP.ctp import build_ctp
    from fedvssl.evaluation import make_round_evaluator
    from fedvssl.settings import round_evaluation

    with initialize(config_path="../conf", version_base="1.3"):
        base = compose(
            config_name="base",
            overrides=[
                f"data_dir={synthetic_data_dir}", "experiment=smoke", "evaluation.num_clips=2",
                "evaluation.max_videos=8", "evaluation.batch_size=4",
            ],
        )  # fmt: skip
    cfg: dict[str, Any] = OmegaConf.to_container(base, resolve=True)  # type: ignore[assignment]
    evaluate = make_round_evaluator(round_evaluation(cfg))
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in build_ctp(width=16, clip_len=8).state_dict().items()}
    first = evaluate(1, state)
    assert set(first) == {"R@1", "R@5"} and all(0 <= v <= 100 for v in first.values())
    record = pretend_cuda.record
    assert record.device_ops["conv3d"] > 0 and set(record.autocast) == {torch.bfloat16}
    assert evaluate(2, state) == first


def test_finetune_on_cuda_resumes(
    small: Path, tmp_path: Path, pretend_cuda: PretendCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    import fedvssl.finetune as finetune_module
    from CtP.ctp import build_ctp
    from fedvssl.finetune import downstream

    seen: set[tuple[bool, torch.device, torch.dtype]] = set()  # (training, device, dtype)
    build = finetune_module.build_classifier

    def watched(**kwargs: Any) -> Any:
        model = build(**kwargs)
        model.backbone.stem.register_forward_hook(
            lambda module, args, out: seen.add((module.training, out.device, out.dtype))
        )
        return model

    monkeypatch.setattr(finetune_module, "build_classifier", watched)

    torch.manual_seed(3)
    checkpoint = tmp_path / "round-1-weights.array.npz"
    state = {k: v.numpy() for k, v in build_ctp(width=16, clip_len=8).state_dict().items()}
    save_global_checkpoint(checkpoint, state)

    def run(*overrides: str) -> dict[str, Any]:
        with initialize(config_path="../conf", version_base="1.3"):
            cfg = compose(
                config_name="finetune",
                overrides=[
                    f"data_dir={small.parent}", f"pretrained={checkpoint}", *TINY,
                    "retrieval=false", "log_interval=2", *overrides,
                ],
            )  # fmt: skip
        plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        return downstream(plain, tmp_path / "run")

    first = run("epochs=1")
    assert 0 <= first["top1"] <= first["top5"] <= 100
    # trained and tested on the device, in bf16
    assert seen == {(True, CUDA, torch.bfloat16), (False, CUDA, torch.bfloat16)}
    saved = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and saved["model"]["cls_head.fc_cls.weight"].device.type == "cpu"
    record = pretend_cuda.reset()
    assert set(record.autocast) == {torch.bfloat16} and record.device_ops["conv3d"] > 0
    batches = [c for c in record.h2d() if c.non_blocking]  # the model's upload blocks, once
    assert batches and all(c.pinned for c in batches)
    # the resumed run's optimizer state goes back to the device (a buffer left on the host
    # would meet the device's gradients in SGD's step and raise)
    resumed = run("epochs=2", "resume=true")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 2
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2
    assert 0 <= resumed["top1"] <= resumed["top5"] <= 100
    log = [json.loads(line) for line in (tmp_path / "run" / "finetune.log.json").open()]
    assert {line["epoch"] for line in log} == {1, 2} and all(np.isfinite(x["loss"]) for x in log)
