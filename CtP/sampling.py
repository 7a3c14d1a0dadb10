"""Temporal sampling: which frames make a clip, key frames, and key-frame interpolation.

This module owns

* the random clip sampler of pre-training and fine-tuning (reference §3.1, §7.1),
* the uniform multi-clip sampler of testing and retrieval (reference §7.1, §7.2),
* the clip-tuple sampler of VCOP and the signed-stride sampler of Speed (conf/pretext/),
* the key-frame sampler shared by the patch trajectories and the dynamic colour ops (§3.3.2),
* the interpolation of values between key frames (§3.3.3).

All randomness comes from a :class:`numpy.random.Generator` passed in by the caller, so the same
seed always gives the same indices. Frame indices are 0-based.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Interpolation = Literal["random", "uniform", "accelerate", "decelerate"]

# §3.3.3: per-segment probabilities of the uniform / accelerate / decelerate schemes.
SCHEME_PROBS: tuple[float, float, float] = (0.7, 0.15, 0.15)
_SCHEMES: tuple[Interpolation, ...] = ("uniform", "accelerate", "decelerate")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def random_start(num_frames: int, span: int, rng: np.random.Generator) -> int:
    """Draw where a clip spanning ``span`` frames starts: uniform, or 0 if the video is shorter."""
    return 0 if span >= num_frames else int(rng.integers(0, num_frames - span + 1))


def random_clip_indices(
    num_frames: int,
    clip_len: int,
    strides: Sequence[int],
    temporal_jitter: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample one clip at a random start and a random stride (reference §3.1).

    The stride is drawn uniformly from ``strides``; the clip spans ``stride * (clip_len - 1) + 1``
    frames and starts uniformly in ``0 .. num_frames - span`` (0 if the video is shorter). With
    ``temporal_jitter`` and a stride above 1, every position gets its own offset in
    ``0 .. stride - 1``. Indices past the end are clamped to the last frame.

    Parameters
    ----------
    num_frames
        Number of frames in the video.
    clip_len
        Frames per clip.
    strides
        Candidate temporal strides (pre-training: 1..5; fine-tuning: ``[2]`` without jitter).
    temporal_jitter
        Whether to jitter each index within its stride.
    rng
        Random stream.

    Returns
    -------
    numpy.ndarray
        ``[clip_len]`` int64 frame indices, 0-based.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len)
    if len(strides) == 0 or min(strides) < 1:
        raise ValueError(f"strides must be a non-empty list of positive integers, got {strides}")
    stride = int(strides[int(rng.integers(len(strides)))])
    if temporal_jitter and stride > 1:
        jitter = rng.integers(0, stride, size=clip_len)
    else:
        jitter = np.zeros(clip_len, dtype=np.int64)
    start = random_start(num_frames, stride * (clip_len - 1) + 1, rng)
    indices = start + stride * np.arange(clip_len) + jitter
    return np.minimum(indices, num_frames - 1).astype(np.int64)


def uniform_clip_indices(num_frames: int, clip_len: int, stride: int, num_clips: int) -> np.ndarray:
    """Take ``num_clips`` evenly spaced clips of a video (reference §7.1 ``UniformFrameSampler``).

    The clips cover ``clip_len * stride`` frames. With
    ``delta = num_frames - clip_len * stride + 1`` and ``tick = delta / num_clips``, clip ``c``
    starts at ``int(tick / 2 + c * tick)``, or at 0 for every clip when ``delta <= 0``. Indices
    are clamped to the last frame.

    Parameters
    ----------
    num_frames
        Number of frames in the video.
    clip_len
        Frames per clip.
    stride
        Temporal stride inside a clip.
    num_clips
        Number of clips.

    Returns
    -------
    numpy.ndarray
        ``[num_clips, clip_len]`` int64 frame indices, 0-based.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len, stride=stride, num_clips=num_clips)
    delta = num_frames - clip_len * stride + 1
    if delta > 0:
        tick = delta / num_clips
        starts = np.array([int(tick / 2.0 + tick * c) for c in range(num_clips)], dtype=np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    indices = starts[:, None] + stride * np.arange(clip_len, dtype=np.int64)[None, :]
    return np.clip(indices, 0, num_frames - 1)


def tuple_clip_indices(
    num_frames: int,
    clip_len: int,
    tuple_len: int,
    interval: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample ``tuple_len`` consecutive clips in their true order, for clip order prediction.

    The clips follow each other with the same gap of ``gap`` frames, drawn uniformly from
    ``interval`` (min, max) but never larger than the video allows; the tuple starts uniformly at
    random. A video too short for any gap gets ``tuple_len`` evenly spaced (overlapping) clips,
    as :func:`uniform_clip_indices` places them; indices are clamped to the last frame.

    Parameters
    ----------
    num_frames
        Number of frames in the video.
    clip_len
        Frames per clip.
    tuple_len
        Clips per tuple (at least 2).
    interval
        Smallest and largest gap between neighbouring clips, in frames.
    rng
        Random stream.

    Returns
    -------
    numpy.ndarray
        ``[tuple_len, clip_len]`` int64 frame indices, 0-based, clips in temporal order.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len)
    low, high = int(interval[0]), int(interval[1])
    if tuple_len < 2 or low < 0 or high < low:
        raise ValueError(
            f"need tuple_len >= 2 and 0 <= min <= max interval, got {tuple_len} and {interval}"
        )
    room = (num_frames - tuple_len * clip_len) // (tuple_len - 1)  # the largest gap that fits
    if room <= 0:
        return uniform_clip_indices(num_frames, clip_len, 1, tuple_len)
    gap = room if room < low else int(rng.integers(low, min(high, room) + 1))
    last_start = num_frames - tuple_len * clip_len - (tuple_len - 1) * gap
    start = int(rng.integers(0, last_start + 1))
    starts = start + (clip_len + gap) * np.arange(tuple_len, dtype=np.int64)
    indices = starts[:, None] + np.arange(clip_len, dtype=np.int64)[None, :]
    return np.minimum(indices, num_frames - 1)


def signed_stride_indices(
    num_frames: int, clip_len: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
    """Sample a clip played at ``stride`` frames per step, backwards when ``stride < 0``.

    The clip spans ``|stride| * (clip_len - 1) + 1`` frames from a uniform start (0 if the video
    is shorter); stride 0 repeats one frame (a still clip). Indices are clamped to the last frame.

    Parameters
    ----------
    num_frames
        Number of frames in the video.
    clip_len
        Frames per clip.
    stride
        Signed playback stride.
    rng
        Random stream.

    Returns
    -------
    numpy.ndarray
        ``[clip_len]`` int64 frame indices, 0-based, in playback order.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len)
    step = abs(int(stride))
    start = random_start(num_frames, step * (clip_len - 1) + 1, rng)
    indices = np.minimum(start + step * np.arange(clip_len, dtype=np.int64), num_frames - 1)
    return indices[::-1].copy() if stride < 0 else indices


def sample_key_frames(
    num_frames: int, key_frame_probs: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Sample key frames: always the first and the last, plus a random few inside (§3.3.2).

    The number ``k`` of inner key frames is drawn with probabilities ``key_frame_probs`` (entry
    ``i`` is the probability of ``k = i``). Inner key frames sit at ``int(i * T / (k + 1))`` for
    ``i = 1..k``, each jittered by an integer in ``[-j, j - 1]`` with ``j = int(T / (k + 1) / 3)``.

    Parameters
    ----------
    num_frames
        Clip length ``T`` (at least 2).
    key_frame_probs
        Probabilities of 0, 1, 2, ... inner key frames; they must sum to 1.
    rng
        Random stream.

    Returns
    -------
    numpy.ndarray
        Sorted, unique int64 key-frame indices, starting at 0 and ending at ``T - 1``.
    """
    if num_frames < 2:
        raise ValueError(f"key frames need a clip of at least 2 frames, got {num_frames}")
    probs = np.asarray(key_frame_probs, dtype=np.float64)
    if probs.ndim != 1 or len(probs) == 0 or np.any(probs < 0) or not np.isclose(probs.sum(), 1):
        raise ValueError(
            f"key_frame_probs must be probabilities summing to 1, got {key_frame_probs}"
        )
    num_inner = int(rng.choice(len(probs), p=probs / probs.sum()))
    if num_inner == 0:
        return np.array([0, num_frames - 1], dtype=np.int64)
    gap = num_frames / (num_inner + 1)
    ticks = np.array([int(gap * i) for i in range(1, num_inner + 1)], dtype=np.int64)
    jitter_range = int(gap / 3)
    if jitter_range > 0:
        ticks = ticks + rng.integers(-jitter_range, jitter_range, size=num_inner)
    return np.unique(np.concatenate([ticks, [0, num_frames - 1]])).astype(np.int64)


def _segment_fraction(scheme: str, steps: int) -> np.ndarray:
    """Fraction of the way from the start to the end value at ``0..steps`` (``[steps + 1]``)."""
    tau = np.arange(steps + 1, dtype=np.float64) / steps
    if scheme == "uniform":
        return tau
    if scheme == "accelerate":  # start + (end - start) * (t / Δ)^2
        return tau**2
    if scheme == "decelerate":  # end - (end - start) * ((Δ - t) / Δ)^2
        return 1.0 - (1.0 - tau) ** 2
    raise ValueError(f"unknown interpolation scheme {scheme!r}; use one of {_SCHEMES}")


def interpolate_keys(
    values: np.ndarray,
    key_frames: np.ndarray,
    scheme: Interpolation = "random",
    rng: np.random.Generator | None = None,
    scheme_probs: Sequence[float] = SCHEME_PROBS,
) -> np.ndarray:
    """Fill every frame between key frames with interpolated values (reference §3.3.3).

    Each segment between two consecutive key frames follows ``scheme``: ``"uniform"`` (linear),
    ``"accelerate"`` (``start + (end - start) * (t / Δ)^2``), ``"decelerate"``
    (``end - (end - start) * ((Δ - t) / Δ)^2``), or ``"random"``, where every segment draws one
    of the three with ``scheme_probs``, shared by all trailing dimensions of ``values``.

    Parameters
    ----------
    values
        ``[K, ...]`` values at the key frames.
    key_frames
        ``[K]`` key-frame indices, strictly increasing from 0.
    scheme
        Interpolation scheme (the opacity schedule uses ``"uniform"``).
    rng
        Random stream; required for ``"random"``.
    scheme_probs
        Probabilities of uniform / accelerate / decelerate for ``"random"``.

    Returns
    -------
    numpy.ndarray
        ``[key_frames[-1] + 1, ...]`` float64 values, equal to ``values`` at the key frames.
    """
    values = np.asarray(values, dtype=np.float64)
    keys = np.asarray(key_frames, dtype=np.int64)
    if keys.ndim != 1 or len(keys) != len(values) or len(keys) < 2:
        raise ValueError("key_frames must be 1-D, at least 2 long, and match values' first axis")
    if keys[0] != 0 or np.any(np.diff(keys) <= 0):
        raise ValueError(f"key_frames must start at 0 and strictly increase, got {keys.tolist()}")
    if scheme == "random" and rng is None:
        raise ValueError("the 'random' interpolation scheme needs an rng")
    out = np.empty((int(keys[-1]) + 1, *values.shape[1:]), dtype=np.float64)
    trailing = (1,) * (values.ndim - 1)
    for i in range(len(keys) - 1):
        start, end = int(keys[i]), int(keys[i + 1])
        segment_scheme: str = scheme
        if scheme == "random":
            assert rng is not None
            segment_scheme = _SCHEMES[int(rng.choice(len(_SCHEMES), p=scheme_probs))]
        frac = _segment_fraction(segment_scheme, end - start)[:-1].reshape(-1, *trailing)
        out[start:end] = values[i] + (values[i + 1] - values[i]) * frac
    out[-1] = values[-1]  # exact at the last key frame; frac 0 makes the others exact
    return out
