"""The device path of CtP's clips, run on CPU tensors: it must draw what the CPU path draws."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import global_model, settings_for

from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import (
    CtPDataset,
    VideoFileSource,
    ZipFrameSource,
    _decode_jpeg,
    load_annotations,
)
from CtP.device_augmentation import (
    DeviceAugmentation,
    PlannedClips,
    augment_batch,
    collate_planned,
    decode_clips,
    hsv_to_rgb,
    rgb_to_hsv,
)
from CtP.patches import PatchMaskParams
from CtP.transforms import IMAGENET_STD, hsv_to_rgb_8bit, normalize_clip
from CtP.vcop import VCOPRecipe
from fedvssl.client_app import train_locally
from fedvssl.client_data import augments_on_device, round_loader

CPU = torch.device("cpu")
LEVEL = 1 / (255 * min(IMAGENET_STD))  # one grey level, in normalised units (at most)


def textured_clip(seed: int, num_frames: int = 10, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth colourful frames drifting right, with pixel noise: uint8 ``[T, H, W, 3]``."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (width, height))
    frames = np.stack([np.roll(base, 2 * t, axis=1) for t in range(num_frames)]).astype(int)
    return np.clip(frames + rng.integers(-20, 21, frames.shape), 0, 255).astype(np.uint8)


def both_paths(
    augmentation: CtPAugmentation, frames: np.ndarray, seeds: range
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU path's clips and the device path's, on the same seeded plans: ``[B, 3, T, S, S]``."""
    num_frames, height, width = frames.shape[:3]
    plans = [augmentation.plan(num_frames, height, width, np.random.default_rng(s)) for s in seeds]
    cpu = torch.stack([normalize_clip(augmentation.apply(frames, p)) for p in plans])
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
    return cpu, augment_batch([tensor] * len(plans), plans, augmentation.crop_size)


@pytest.mark.parametrize(
    ("hue_sat_prob", "patch"),
    [(0.0, PatchMaskParams()), (1.0, PatchMaskParams()),
     (0.0, PatchMaskParams(highlight=0.8, tint="random"))],
    ids=["no-hue", "hue", "tinted-patches"],
)  # fmt: skip
def test_device_path_draws_the_cpu_paths_clips(hue_sat_prob: float, patch: PatchMaskParams) -> None:
    # the reference recipe: curved, resizing, soft, translucent patches, flips, dynamic colour
    augmentation = CtPAugmentation(crop_size=32, hue_sat_prob=hue_sat_prob, patch_params=patch)
    frames = textured_clip(0)
    cpu, device = both_paths(augmentation, frames, range(16))
    assert device.shape == cpu.shape == (16, 3, 10, 32, 32)
    # the statistics of the two: per-channel mean and spread
    for c in range(3):
        assert abs(float(device[:, c].mean() - cpu[:, c].mean())) < 0.2 * LEVEL
        assert float(device[:, c].std() / cpu[:, c].std()) == pytest.approx(1.0, abs=0.005)
    # and pixel by pixel: OpenCV's fixed-point resize moves some pixels by one level (a little
    # more after a contrast change), which a hue change can amplify near a hue boundary
    diff = (device - cpu).abs() / LEVEL
    assert float(diff.median()) < 0.01
    assert float((diff > 1.5).float().mean()) < (0.04 if hue_sat_prob else 0.01)
    # a negative control: other plans give other clips
    _, other = both_paths(augmentation, frames, range(16, 32))
    assert float((other - cpu).abs().mean()) > 20 * float((device - cpu).abs().mean())


def test_hsv_round_trip_is_opencvs() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb[:5] = rgb[:5, :, :1]  # greys too (no saturation, no hue)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    ours = rgb_to_hsv(torch.from_numpy(rgb).permute(2, 0, 1))
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), hsv)
    # back: the CPU path's conversion and the device path's are the same rounded formula...
    every = np.stack(np.meshgrid(np.arange(180), np.arange(256), [0, 1, 97, 200, 255]), -1)
    every = every.reshape(-1, 1, 3).astype(np.uint8)  # [N, 1, 3]: every hue and saturation
    for table in (hsv, every):
        cpu = hsv_to_rgb_8bit(table)
        device = hsv_to_rgb(torch.from_numpy(table).permute(2, 0, 1).float())
        assert np.array_equal(device.permute(1, 2, 0).numpy(), cpu)
        # ...which is OpenCV's to within a level (OpenCV 4 rounds it; some later builds truncate)
        opencv = cv2.cvtColor(table, cv2.COLOR_HSV2RGB).astype(int)
        assert np.abs(cpu.astype(int) - opencv).max() <= 1
    assert np.array_equal(hsv_to_rgb_8bit(hsv[:5]), rgb[:5])  # greys come back exactly


def test_decode_clips_reads_the_frames_opencv_reads() -> None:
    frames = textured_clip(2, num_frames=3)
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1] for f in frames]
    encoded = [[torch.from_numpy(j.ravel().copy()) for j in jpegs]] * 2  # two clips
    decoded = decode_clips(encoded, CPU)
    expected = np.stack([_decode_jpeg(j.tobytes()) for j in jpegs])  # the CPU path's decoder
    assert len(decoded) == 2 and decoded[0].shape == (3, 3, 48, 64)
    assert np.abs(decoded[1].permute(0, 2, 3, 1).numpy().astype(int) - expected).max() <= 1


def test_planned_clips_are_the_cpu_datasets_clips(synthetic_data_dir: Path) -> None:
    root = synthetic_data_dir / "synthetic"
    items = load_annotations(root / "annotations" / "train_split_1.json")[:6]
    source, augmentation = ZipFrameSource(root), CtPAugmentation(crop_size=32, hue_sat_prob=0.5)
    cpu = CtPDataset(items, source, augmentation, clip_len=8, seed=3)
    planned = PlannedClips(items, source, augmentation, clip_len=8, seed=3)
    for dataset in (cpu, planned):
        dataset.set_epoch(2)
    batch = collate_planned([planned[i] for i in range(6)])
    assert all(isinstance(f, list) and len(f) == 8 for f in batch["frames"])  # JPEG bytes
    inputs = DeviceAugmentation(32, CPU)(batch)
    expected = [cpu[i] for i in range(6)]
    assert torch.equal(inputs["gt_trajs"], torch.stack([s["gt_trajs"] for s in expected]))
    diff = (inputs["imgs"] - torch.stack([s["imgs"] for s in expected])).abs() / LEVEL
    assert float(diff.median()) < 0.01 and float((diff > 1.5).float().mean()) < 0.03


def test_planned_video_clips_travel_packed_and_are_the_cpu_datasets_clips(
    tiny_video_root: Path,
) -> None:
    items = load_annotations(tiny_video_root / "annotations.json")
    source, augmentation = VideoFileSource(tiny_video_root), CtPAugmentation(crop_size=32)
    cpu = CtPDataset(items, source, augmentation, clip_len=8, seed=4)
    planned = PlannedClips(items, source, augmentation, clip_len=8, seed=4)
    batch = collate_planned([planned[i] for i in range(3)])
    # decoded frames go to the device as one flat tensor, not one per clip
    assert isinstance(batch["frames"], torch.Tensor) and batch["frames"].dim() == 1
    assert batch["frame_shapes"] == [(8, 3, 48, 64)] * 3
    inputs = DeviceAugmentation(32, CPU)(batch)
    expected = [cpu[i] for i in range(3)]
    assert torch.equal(inputs["gt_trajs"], torch.stack([s["gt_trajs"] for s in expected]))
    diff = (inputs["imgs"] - torch.stack([s["imgs"] for s in expected])).abs() / LEVEL
    assert float(diff.median()) < 0.01 and float((diff > 1.5).float().mean()) < 0.03


def test_client_trains_on_the_device_path_with_lasting_workers(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    base = settings_for(synthetic_data_dir, tmp_path / "results")
    settings = replace(base, augment="device", workers=1)
    assert augments_on_device(settings, CPU) and not augments_on_device(base, CPU)
    assert not augments_on_device(replace(base, augment="auto"), CPU)  # auto: the device on a GPU
    with pytest.raises(ValueError, match=r"augment must be one of \['auto', 'cpu', 'device'\]"):
        augments_on_device(replace(base, augment="gpu"), CPU)
    with pytest.raises(ValueError, match="augment=device supports the ctp pretext only, not vcop"):
        augments_on_device(replace(base, augment="device", pretext=VCOPRecipe()), CPU)

    _, metrics = train_locally(settings, 0, 1, global_model(1), partial=True)
    assert np.isfinite(float(metrics["train-loss"]))  # type: ignore[arg-type]
    assert float(metrics["trivial-loss"]) > 0  # type: ignore[arg-type]

    # the next client and round use the same worker processes, and the batches do not depend on
    # whether they come from those workers or from the training process
    first, _ = round_loader(settings, 1, epoch=3, seed=5, device=CPU)
    kept = [b["gt_trajs"] for b in first]
    pids = [w.pid for w in first._iterator._workers]  # type: ignore[union-attr]
    again, _ = round_loader(settings, 0, epoch=4, seed=6, device=CPU)
    assert again is first
    list(again)
    assert [w.pid for w in again._iterator._workers] == pids  # type: ignore[union-attr]
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    fresh, _ = round_loader(replace(settings, workers=0), 1, epoch=3, seed=5, device=CPU)
    assert all(torch.equal(a, b["gt_trajs"]) for a, b in zip(kept, fresh, strict=True))
    assert len(kept) == len(fresh) > 1
