"""Frame samplers, key frames and key-frame interpolation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from CtP.sampling import (
    interpolate_keys,
    random_clip_indices,
    sample_key_frames,
    uniform_clip_indices,
)


def test_uniform_clip_indices_match_hand_computed_offsets() -> None:
    # 100 frames, 10 clips of 16 frames at stride 2: delta = 100 - 32 + 1 = 69, tick = 6.9,
    # start c = int(3.45 + 6.9 c): 3, 10.35, 17.25, 24.15, 31.05, 37.95, 44.85, 51.75, 58.65, 65.55
    starts = [3, 10, 17, 24, 31, 37, 44, 51, 58, 65]
    expected = np.array([[s + 2 * i for i in range(16)] for s in starts])
    got = uniform_clip_indices(100, 16, 2, 10)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_uniform_clip_indices_short_video_starts_at_zero_and_clamps() -> None:
    # 20 frames: delta = 20 - 32 + 1 <= 0, so every clip starts at 0 and indices stop at 19
    got = uniform_clip_indices(20, 16, 2, 3)
    row = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 19, 19, 19, 19, 19]
    np.testing.assert_array_equal(got, np.array([row] * 3))


def test_random_clip_indices_stride_without_jitter() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = random_clip_indices(100, 16, [2], False, rng)
        assert idx.shape == (16,) and idx.dtype == np.int64
        np.testing.assert_array_equal(np.diff(idx), np.full(15, 2))
        assert 0 <= idx[0] <= 100 - 31  # span 31


def test_random_clip_indices_draws_every_stride() -> None:
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(100):
        idx = random_clip_indices(200, 8, (1, 2, 3, 4, 5), False, rng)
        steps = np.unique(np.diff(idx))
        assert len(steps) == 1
        seen.add(int(steps[0]))
    assert seen == {1, 2, 3, 4, 5}


def test_random_clip_indices_jitter_stays_within_stride() -> None:
    rng = np.random.default_rng(2)
    jitters = set()
    for _ in range(100):
        idx = random_clip_indices(80, 16, [4], True, rng)
        assert idx.min() >= 0 and idx.max() <= 79
        offsets = idx - 4 * np.arange(16)  # start + jitter_i, jitter_i in 0..3
        assert offsets.max() - offsets.min() <= 3
        jitters.update((offsets - offsets.min()).tolist())
    assert jitters == {0, 1, 2, 3}


def test_random_clip_indices_short_video_is_clamped() -> None:
    idx = random_clip_indices(10, 16, [2], False, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [0, 2, 4, 6, 8] + [9] * 11)


def test_random_clip_indices_same_seed_same_clip() -> None:
    a = random_clip_indices(300, 16, (1, 2, 3, 4, 5), True, np.random.default_rng(7))
    b = random_clip_indices(300, 16, (1, 2, 3, 4, 5), True, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_frames", [2, 3, 8, 16])
def test_key_frames_include_ends_sorted_unique(num_frames: int) -> None:
    rng = np.random.default_rng(num_frames)
    for _ in range(200):
        keys = sample_key_frames(num_frames, (0.5, 0.3, 0.2), rng)
        assert keys.dtype == np.int64
        assert keys[0] == 0 and keys[-1] == num_frames - 1
        assert np.all(np.diff(keys) > 0)


def test_key_frames_two_inner_positions_by_hand() -> None:
    # T=16, always 2 inner key frames: ticks int(16/3)=5 and int(32/3)=10, jitter j=int(16/3/3)=1
    # drawn from [-1, 0], so the inner key frames are {4, 5} and {9, 10}
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(100):
        keys = sample_key_frames(16, (0.0, 0.0, 1.0), rng)
        assert len(keys) == 4 and keys[1] in (4, 5) and keys[2] in (9, 10)
        seen.add((int(keys[1]), int(keys[2])))
    assert seen == {(4, 9), (4, 10), (5, 9), (5, 10)}
    np.testing.assert_array_equal(sample_key_frames(16, (1.0,), rng), [0, 15])


def test_interpolate_keys_schemes_by_hand() -> None:
    values, keys = np.array([0.0, 5.0]), np.array([0, 10])
    t = np.arange(11)
    np.testing.assert_allclose(interpolate_keys(values, keys, "uniform"), 0.5 * t)
    accelerate = [0, 0.05, 0.2, 0.45, 0.8, 1.25, 1.8, 2.45, 3.2, 4.05, 5.0]
    np.testing.assert_allclose(interpolate_keys(values, keys, "accelerate"), accelerate)
    decelerate = [5.0 - 5.0 * ((10 - i) / 10) ** 2 for i in t]
    np.testing.assert_allclose(interpolate_keys(values, keys, "decelerate"), decelerate)


def test_interpolate_keys_random_hits_key_values_and_stays_between() -> None:
    rng = np.random.default_rng(4)
    keys = np.array([0, 3, 9, 15])
    values = rng.uniform(-3, 3, size=(4, 3, 2))  # [K, N, 2]
    out = interpolate_keys(values, keys, "random", rng)
    assert out.shape == (16, 3, 2)
    np.testing.assert_array_equal(out[keys], values)
    for i in range(3):  # every scheme is monotone inside a segment
        seg = out[keys[i] : keys[i + 1] + 1]
        low = np.minimum(values[i], values[i + 1]) - 1e-12
        high = np.maximum(values[i], values[i + 1]) + 1e-12
        assert np.all((seg >= low) & (seg <= high))


def test_bad_arguments_raise_clear_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="strides"):
        random_clip_indices(10, 4, [], False, rng)
    with pytest.raises(ValueError, match="num_frames"):
        uniform_clip_indices(0, 4, 2, 3)
    with pytest.raises(ValueError, match="summing to 1"):
        sample_key_frames(8, (0.5, 0.2), rng)
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_key_frames(1, (1.0,), rng)
    with pytest.raises(ValueError, match="needs an rng"):
        interpolate_keys(np.zeros(2), np.array([0, 4]), "random")
