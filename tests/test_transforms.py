"""Clip pipelines: CtP pretext augmentation, fine-tuning augmentation, test transform."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from CtP.ctp_augmentation import CtPAugmentation, dynamic_schedule
from CtP.patches import PatchMaskParams
from CtP.transforms import (
    EvalTransform,
    FinetuneAugmentation,
    adjust_hue_saturation,
    fixed_size,
    normalize_clip,
    short_side_size,
)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _clip(num_frames: int = 8, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)


def _pixel(value: float, channel: int) -> float:
    return (value / 255.0 - MEAN[channel]) / STD[channel]


def test_normalize_clip_layout_and_values_by_hand() -> None:
    frames = np.zeros((2, 3, 4, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 0, 51
    frames[1, 2, 3] = (10, 20, 30)
    out = normalize_clip(frames)
    assert out.shape == (3, 2, 3, 4) and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-5)
    assert out[1, 0, 0, 0].item() == pytest.approx(-0.456 / 0.224, abs=1e-5)
    assert out[2, 0, 0, 0].item() == pytest.approx((0.2 - 0.406) / 0.225, abs=1e-5)
    for c, v in enumerate((10, 20, 30)):
        assert out[c, 1, 2, 3].item() == pytest.approx(_pixel(v, c), abs=1e-5)


def test_output_sizes_follow_the_reference() -> None:
    # §3.2: a 320x240 frame becomes 149x112, 171x128 or 192x144
    assert [short_side_size(240, 320, s) for s in (112, 128, 144)] == [
        (149, 112),
        (171, 128),
        (192, 144),
    ]
    assert fixed_size(240, 320, (171, 128)) == (171, 128)
    assert fixed_size(320, 240, (171, 128)) == (128, 171)  # portrait: swapped


@pytest.mark.parametrize("crop", [32, 64, 112])
def test_ctp_augmentation_shapes_boxes_and_targets(crop: int) -> None:
    aug = CtPAugmentation(crop_size=crop)
    frames = _clip(8, 60 if crop < 112 else 120, 80 if crop < 112 else 160)
    for seed in range(5):
        sample = aug(frames, np.random.default_rng(seed))
        imgs, trajs, visible = sample["imgs"], sample["gt_trajs"], sample["visible"]
        assert imgs.shape == (3, 8, crop, crop) and imgs.dtype == torch.float32
        assert trajs.shape == (3, 8, 4) and trajs.dtype == torch.float32
        assert visible.shape == (3, 8) and visible.dtype == torch.bool
        assert torch.isfinite(imgs).all()
        boxes = trajs.numpy()
        np.testing.assert_array_equal(boxes, np.round(boxes))  # integer boxes
        assert np.all((boxes[..., 0] >= 0) & (boxes[..., 0] < boxes[..., 2]))
        assert np.all((boxes[..., 1] >= 0) & (boxes[..., 1] < boxes[..., 3]))
        assert np.all(boxes[..., 2:] <= crop)
        # CtP targets relative to the frame-0 query box: centre delta and log-size ratio
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [N, T, 2]
        log_size = np.log(np.maximum(boxes[..., 2:] - boxes[..., :2], 1.0))
        targets = np.concatenate([centre - centre[:, :1], log_size - log_size[:, :1]], axis=-1)
        assert np.isfinite(targets).all()
        np.testing.assert_array_equal(targets[:, 0], 0.0)
        assert visible[:, 0].all()


def test_ctp_augmentation_same_seed_same_clip() -> None:
    aug = CtPAugmentation(crop_size=32, hue_sat_prob=1.0, brightness_prob=1.0, contrast_prob=1.0)
    frames = _clip()
    a, b = aug(frames, np.random.default_rng(3)), aug(frames, np.random.default_rng(3))
    c = aug(frames, np.random.default_rng(4))
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["imgs"], c["imgs"])
    assert not torch.equal(a["gt_trajs"], c["gt_trajs"])


def test_ctp_augmentation_pastes_only_where_visible() -> None:
    # Flat frames stay flat through scale, crop and flip; with colour jitter off, a frame whose
    # patch is invisible comes out flat, and pixels outside the box always keep the frame value.
    aug = CtPAugmentation(
        crop_size=32,
        patch_params=PatchMaskParams(num_rois=1),
        hue_sat_prob=0.0,
        brightness_prob=0.0,
        contrast_prob=0.0,
    )
    values = [10 + 30 * t for t in range(8)]
    frames = np.empty((8, 40, 56, 3), dtype=np.uint8)
    frames[:] = np.array(values, dtype=np.uint8)[:, None, None, None]
    saw_hidden = False
    for seed in range(20):
        sample = aug(frames, np.random.default_rng(seed))
        imgs, visible = sample["imgs"].numpy(), sample["visible"].numpy()
        boxes = sample["gt_trajs"].numpy().astype(int)
        for t, value in enumerate(values):
            flat = np.array([_pixel(value, c) for c in range(3)])[:, None, None]
            same = np.all(np.abs(imgs[:, t] - flat) < 1e-4, axis=0)  # [S, S]
            x1, y1, x2, y2 = boxes[0, t]
            outside = ~same
            outside[y1:y2, x1:x2] = False
            assert not outside.any()
            if not visible[0, t]:
                saw_hidden = True
                assert same.all()
    assert saw_hidden


def test_hue_saturation_exact_cases() -> None:
    grey = np.full((2, 4, 4, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(adjust_hue_saturation(grey, 11.0, 1.1), grey)  # no saturation
    colour = _clip(2, 4, 4)
    desaturated = adjust_hue_saturation(colour, 5.0, 0.0)
    assert desaturated.dtype == np.uint8
    np.testing.assert_array_equal(desaturated[..., 0], desaturated[..., 1])
    np.testing.assert_array_equal(desaturated[..., 1], desaturated[..., 2])
    # no wrap-around: hue 170 + 12 stays at 179 instead of wrapping to 3
    hsv = np.zeros((1, 1, 1, 3), dtype=np.uint8)
    hsv[..., :] = (170, 200, 200)
    rgb = cv2.cvtColor(hsv[0], cv2.COLOR_HSV2RGB)[None]
    shifted = cv2.cvtColor(adjust_hue_saturation(rgb, 12.0, 1.0)[0], cv2.COLOR_RGB2HSV)
    assert int(shifted[0, 0, 0]) >= 175


def test_dynamic_schedule_bounds_and_determinism() -> None:
    a = dynamic_schedule(16, 30.0, (0.7, 0.3), np.random.default_rng(0))
    b = dynamic_schedule(16, 30.0, (0.7, 0.3), np.random.default_rng(0))
    assert a.shape == (16,)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.abs(a) <= 30.0)


@pytest.mark.parametrize("crop", [32, 64, 112])
def test_finetune_augmentation_shapes_and_determinism(crop: int) -> None:
    aug = FinetuneAugmentation(crop_size=crop, brightness_prob=1.0, hue_sat_prob=1.0)
    frames = _clip(4, 48, 64)
    a, b = aug(frames, np.random.default_rng(1)), aug(frames, np.random.default_rng(1))
    assert a.shape == (3, 4, crop, crop) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(frames, np.random.default_rng(2)))


def test_finetune_augmentation_plain_path_is_a_window_of_the_resized_clip() -> None:
    aug = FinetuneAugmentation(
        crop_size=32,
        sizes=((171, 128),),
        flip_prob=0.0,
        brightness_prob=0.0,
        contrast_prob=0.0,
        hue_sat_prob=0.0,
    )
    frames = _clip(2, 48, 64)
    out = aug(frames, np.random.default_rng(0))
    resized = normalize_clip(np.stack([cv2.resize(f, (49, 37)) for f in frames]))  # 171x128 @32
    windows = [
        torch.equal(out, resized[:, :, y : y + 32, x : x + 32])
        for y in range(37 - 32 + 1)
        for x in range(49 - 32 + 1)
    ]
    assert sum(windows) >= 1


@pytest.mark.parametrize("portrait", [False, True])
def test_eval_transform_is_deterministic_and_centre_cropped(portrait: bool) -> None:
    # crop 32: 171x128 scales to round(48.86)=49 x round(36.57)=37; centre crop starts at
    # x=(49-32)//2=8, y=(37-32)//2=2 (swapped for portrait frames)
    frames = _clip(3, 48, 64)
    size, (y, x) = ((49, 37), (2, 8))
    if portrait:
        frames = np.ascontiguousarray(frames.transpose(0, 2, 1, 3))
        size, (y, x) = ((37, 49), (8, 2))
    transform = EvalTransform(crop_size=32)
    out = transform(frames)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, transform(frames))
    resized = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])
    expected = normalize_clip(resized[:, y : y + 32, x : x + 32])
    assert torch.equal(out, expected)


def test_bad_clips_raise_clear_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        CtPAugmentation(crop_size=32)(np.zeros((8, 40, 40, 3), dtype=np.float32), rng)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        EvalTransform(crop_size=32)(np.zeros((40, 40, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="at least 2"):
        CtPAugmentation(crop_size=32)(np.zeros((1, 40, 40, 3), dtype=np.uint8), rng)
    with pytest.raises(ValueError, match="at least 112"):
        CtPAugmentation(scales=(96, 128))
