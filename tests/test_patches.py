"""PatchMask invariants: box bounds, targets, exact pasting and visibility, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from CtP.patches import PatchMask, PatchMaskParams


def _random_clip(num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_frames, size, size, 3), dtype=np.uint8)


def _constant_clip(values: list[int], size: int) -> np.ndarray:
    """Every frame one flat grey value, a different one per frame."""
    clip = np.empty((len(values), size, size, 3), dtype=np.uint8)
    clip[:] = np.array(values, dtype=np.uint8)[:, None, None, None]
    return clip


def _encode(boxes: np.ndarray) -> np.ndarray:
    """The CtP regression target: centre delta (pixels) and log-size ratio w.r.t. frame 0."""
    boxes = boxes.astype(np.float64)  # [N, T, 4]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = np.maximum(boxes[..., 2:] - boxes[..., :2], 1.0)
    return np.concatenate(
        [centre - centre[:, :1], np.log(size) - np.log(size[:, :1])], axis=-1
    )  # [N, T, 4]


@pytest.mark.parametrize(("crop", "num_frames"), [(32, 8), (64, 8), (112, 16)])
def test_shapes_dtypes_and_box_bounds(crop: int, num_frames: int) -> None:
    mask = PatchMask(PatchMaskParams().for_crop(crop))
    frames = _random_clip(num_frames, crop)
    for seed in range(40 if crop < 112 else 5):
        out, boxes, visible = mask(frames, np.random.default_rng(seed))
        assert out.shape == frames.shape and out.dtype == np.uint8
        assert boxes.shape == (3, num_frames, 4) and boxes.dtype == np.int64
        assert visible.shape == (3, num_frames) and visible.dtype == np.bool_
        x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
        assert np.all((x1 >= 0) & (x1 < x2) & (x2 <= crop))
        assert np.all((y1 >= 0) & (y1 < y2) & (y2 <= crop))
        assert visible[:, 0].all()  # frame 0 always shows the patch
        targets = _encode(boxes)
        np.testing.assert_array_equal(targets[:, 0], 0.0)
        assert np.isfinite(targets).all()


def test_same_seed_same_clip_different_seed_differs() -> None:
    mask = PatchMask(PatchMaskParams().for_crop(64))
    frames = _random_clip(8, 64)
    a = mask(frames, np.random.default_rng(5))
    b = mask(frames, np.random.default_rng(5))
    c = mask(frames, np.random.default_rng(6))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(frames, _random_clip(8, 64))  # the input is left alone


def test_static_trajectory_and_exact_truncated_blend() -> None:
    # One static rectangle patch, opacity exactly 0.5: where pasted, a box pixel must be
    # floor((background_t + source) / 2); consecutive frame values differ by an odd 31, so
    # truncation and rounding disagree on half the frames.
    params = PatchMaskParams(
        num_rois=1,
        loc_velocity=0.0,
        size_velocity=0.0,
        mask_shape_probs=(1.0, 0.0, 0.0),
        soft_edge_prob=0.0,
        opacity_range=(0.5, 0.5),
    ).for_crop(32)
    values = [10 + 31 * t for t in range(8)]
    frames = _constant_clip(values, 32)
    for seed in range(20):
        out, boxes, visible = PatchMask(params)(frames, np.random.default_rng(seed))
        assert np.all(boxes == boxes[:, :1])  # no motion, no size change
        x1, y1, x2, y2 = (int(v) for v in boxes[0, 0])
        # the source frame is the one whose value reproduces frame 0's pasted value
        pasted0 = int(out[0, y1, x1, 0])
        sources = [s for s in range(8) if (values[0] + values[s]) // 2 == pasted0]
        assert len(sources) == 1
        source = sources[0]
        assert visible[0, 0] and visible[0, source]
        for t in range(8):
            expected = frames[t].copy()
            if visible[0, t]:
                expected[y1:y2, x1:x2] = (values[t] + values[source]) // 2
            np.testing.assert_array_equal(out[t], expected)


@pytest.mark.parametrize("crop", [32, 64])
def test_patch_present_exactly_where_visible(crop: int) -> None:
    # Moving, shaped, semi-transparent patch on flat frames of distinct values: frames without
    # the patch are untouched; changes stay inside the box; every visible frame except the
    # source frame (whose patch has its own colour) changes inside the box.
    params = PatchMaskParams(num_rois=1).for_crop(crop)
    values = [10 + 30 * t for t in range(8)]
    frames = _constant_clip(values, crop)
    mask = PatchMask(params)
    for seed in range(30):
        out, boxes, visible = mask(frames, np.random.default_rng(seed))
        unchanged_visible = 0
        for t in range(8):
            changed = np.any(out[t] != frames[t], axis=-1)  # [S, S]
            x1, y1, x2, y2 = (int(v) for v in boxes[0, t])
            outside = changed.copy()
            outside[y1:y2, x1:x2] = False
            assert not outside.any()
            if not visible[0, t]:
                assert not changed.any()
            elif not changed[y1:y2, x1:x2].any():
                unchanged_visible += 1
        assert unchanged_visible <= 1


def test_large_patch_is_pasted_below_small_one() -> None:
    # Two static opaque rectangles on every frame: the smaller one must be whole, on top.
    params = PatchMaskParams(
        num_rois=2,
        loc_velocity=0.0,
        size_velocity=0.0,
        mask_shape_probs=(1.0, 0.0, 0.0),
        soft_edge_prob=0.0,
        opacity_range=(1.0, 1.0),
        label_prob=1.0,
    ).for_crop(64)
    frames = _random_clip(4, 64, seed=1)
    checked = 0
    for seed in range(100):
        out, boxes, _ = PatchMask(params)(frames, np.random.default_rng(seed))
        areas = np.prod(boxes[:, 0, 2:] - boxes[:, 0, :2], axis=1)
        overlap = np.minimum(boxes[0, 0, 2:], boxes[1, 0, 2:]) - np.maximum(
            boxes[0, 0, :2], boxes[1, 0, :2]
        )
        if areas[0] == areas[1] or np.any(overlap <= 0):
            continue
        x1, y1, x2, y2 = (int(v) for v in boxes[int(np.argmin(areas)), 0])
        # a static opaque patch is its source frame's crop, unresized, on every frame
        shown = out[:, y1:y2, x1:x2]
        sources = [s for s in range(4) if np.array_equal(shown[0], frames[s, y1:y2, x1:x2])]
        assert len(sources) == 1
        for t in range(4):
            np.testing.assert_array_equal(shown[t], frames[sources[0], y1:y2, x1:x2])
        checked += 1
    assert checked >= 5


def test_for_crop_scales_spatial_parameters() -> None:
    params = PatchMaskParams()
    assert params.for_crop(112) == params
    half = params.for_crop(56)
    assert half.scales == (8.0, 12.0, 14.0, 16.0, 24.0, 32.0)
    assert half.loc_velocity == pytest.approx(1.5)
    assert half.size_velocity == params.size_velocity
    tiny = params.for_crop(8)  # 16 * 8 / 112 = 1.14 px, kept at the 2 px minimum
    assert min(tiny.scales) == 2.0


def test_bad_input_raises_clear_errors() -> None:
    mask = PatchMask(PatchMaskParams().for_crop(32))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        mask(np.zeros((8, 32, 32, 3), dtype=np.float32), rng)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        mask(np.zeros((8, 32, 32), dtype=np.uint8), rng)
    with pytest.raises(ValueError, match="at least 2 frames"):
        mask(np.zeros((1, 32, 32, 3), dtype=np.uint8), rng)
    with pytest.raises(ValueError, match="summing to 1"):
        PatchMaskParams(key_frame_probs=(0.5, 0.1))


def test_random_tints_are_saturated_hues_and_white_keeps_its_draws() -> None:
    frames = np.full((6, 40, 40, 3), 60, dtype=np.uint8)
    # the marked recipe's opaque, hard-edged rectangles: a pasted patch is exactly its tint
    marked = PatchMaskParams(highlight=1.0, opacity_range=(1.0, 1.0), mask_shape_probs=(1, 0, 0),
                             soft_edge_prob=0.0).for_crop(40)  # fmt: skip
    white, tinted = PatchMask(marked), PatchMask(replace(marked, tint="random"))
    plain = white.plan(6, 40, 40, np.random.default_rng(3))
    plan = tinted.plan(6, 40, 40, np.random.default_rng(3))
    np.testing.assert_array_equal(plain.tints, 255)
    np.testing.assert_array_equal(plan.boxes, plain.boxes)  # the tints are drawn after the rest
    assert (plan.tints.max(axis=1) == 255).all() and (plan.tints.min(axis=1) == 0).all()
    assert len({tuple(t) for t in plan.tints}) == len(plan.tints)  # a hue per patch
    out, boxes, _ = tinted(frames, np.random.default_rng(3))
    for i, tint in enumerate(np.round(plan.tints)):
        x1, y1, x2, y2 = boxes[i, 0]
        assert (out[0, y1:y2, x1:x2] == tint).all(axis=-1).any()  # smaller patches may cover it
    with pytest.raises(ValueError, match="tint must be one of"):
        PatchMaskParams(tint="blue")
