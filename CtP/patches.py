"""The PatchMask of Catch-the-Patch: patch trajectories, alpha masks and pasting (reference §3.3).

A clip gets ``num_rois`` synthetic "objects": a patch cropped from one of its own frames moves
along a random box trajectory (location and size key frames, interpolated), is shaped by an
alpha mask (rectangle, ellipse or diamond, maybe with soft edges, with a varying opacity) and is
pasted onto most frames. The integer boxes are the regression targets of the pretext task; the
visibility flags say on which frames a patch was actually pasted.

The reference numbers are for a 112-pixel crop; :meth:`PatchMaskParams.for_crop` scales the
spatial ones (anchor scales, location velocity) for other crop sizes.

``highlight`` is not in the reference: it blends the patch content toward white, or toward a
random saturated colour per patch (``tint``) (0 keeps the reference's piece of the clip, 1 pastes
plain shapes of that colour). A piece of the clip looks like the
clip around it, and a randomly initialised backbone needs far more steps to learn to follow it
than a small CPU run has; a highlighted patch can be found from its colour alone, so the
pretext is learned within a few hundred steps (docs/differences.md has the measurements).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from CtP.sampling import interpolate_keys, sample_key_frames

REFERENCE_CROP = 112  # the crop size that the reference's spatial numbers are given for
TINTS = ("white", "random")


@dataclass(frozen=True)
class PatchMaskParams:
    """Parameters of :class:`PatchMask`; the defaults are the reference's, for a 112 crop.

    Parameters
    ----------
    num_rois
        Patches (trajectories) per clip.
    scales, ratios
        Anchor sizes in pixels and aspect ratios (width / height); every pair is an anchor of
        width ``scale * sqrt(ratio)`` and height ``scale / sqrt(ratio)``.
    scale_jitter
        Width and height are each multiplied by ``exp(U(-scale_jitter, scale_jitter))``.
    key_frame_probs
        Probabilities of 0, 1, 2 inner key frames for location, size and opacity.
    loc_velocity
        Maximum centre movement, pixels per frame between key frames.
    size_velocity
        Maximum log-size change per frame between key frames.
    label_prob
        Probability that a patch is pasted on a frame (frame 0 and the source frame always).
    min_size
        Smallest initial box side in pixels (keeps tiny test crops valid; the reference's is 1).
    mask_shape_probs
        Probabilities of the rectangle, ellipse and diamond alpha masks.
    soft_edge_prob, soft_edge_range
        Probability of soft mask edges, and the range of the turning point where they start.
    opacity_range
        Range of the opacity drawn at each opacity key frame.
    highlight
        Blend of the patch content toward its tint, in ``[0, 1]`` (not in the reference: 0).
    tint
        What a highlighted patch is blended toward: ``"white"``, or ``"random"``, a saturated
        colour of random hue drawn per patch (not in the reference).
    """

    num_rois: int = 3  # §3.3
    scales: tuple[float, ...] = (16, 24, 28, 32, 48, 64)  # §3.3, pixels at a 112 crop
    ratios: tuple[float, ...] = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)  # §3.3
    scale_jitter: float = 0.18  # §3.3.1
    key_frame_probs: tuple[float, ...] = (0.5, 0.3, 0.2)  # §3.3, §3.3.2
    loc_velocity: float = 3.0  # §3.3.4, pixels per frame at a 112 crop
    size_velocity: float = 0.025  # §3.3.4
    label_prob: float = 0.8  # §3.3.7
    min_size: float = 2.0  # project choice, see the docstring (reference: 1)
    mask_shape_probs: tuple[float, float, float] = (0.5, 0.35, 0.15)  # §3.3.6
    soft_edge_prob: float = 0.5  # §3.3.6
    soft_edge_range: tuple[float, float] = (0.30, 0.45)  # §3.3.6
    opacity_range: tuple[float, float] = (0.8, 1.0)  # §3.3.6
    highlight: float = 0.0  # project option; 0 is the reference's plain piece of the clip
    tint: str = "white"  # project option, with highlight > 0: "white" or "random" (hue)

    def __post_init__(self) -> None:
        if self.num_rois < 1:
            raise ValueError(f"num_rois must be at least 1, got {self.num_rois}")
        if not self.scales or not self.ratios or min(*self.scales, *self.ratios) <= 0:
            raise ValueError("scales and ratios must be non-empty lists of positive numbers")
        for name in ("key_frame_probs", "mask_shape_probs"):
            probs = np.asarray(getattr(self, name), dtype=np.float64)
            if probs.size == 0 or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
                raise ValueError(f"{name} must be probabilities summing to 1, got {probs}")
        for name in ("label_prob", "soft_edge_prob", "highlight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.tint not in TINTS:
            raise ValueError(f"tint must be one of {list(TINTS)}, got {self.tint!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be at least 1 pixel, got {self.min_size}")

    def for_crop(self, crop_size: int) -> PatchMaskParams:
        """Scale the spatial parameters from the 112-pixel reference crop to ``crop_size``.

        Parameters
        ----------
        crop_size
            Side of the square clip the patches are pasted on.

        Returns
        -------
        PatchMaskParams
            A copy with ``scales`` (at least ``min_size``) and ``loc_velocity`` multiplied by
            ``crop_size / 112``.
        """
        if crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer, got {crop_size}")
        factor = crop_size / REFERENCE_CROP
        scales = tuple(max(s * factor, self.min_size) for s in self.scales)
        return dataclasses.replace(self, scales=scales, loc_velocity=self.loc_velocity * factor)


@dataclass(frozen=True)
class PatchPlan:
    """Every random choice of one clip's patches; pasting it is deterministic (§3.3).

    The plan depends on the clip's shape only, not on its pixels, so it can be drawn where the
    frames are not decoded yet (a loader worker) and applied elsewhere (on the GPU, in a batch:
    :mod:`CtP.device_augmentation`).
    """

    boxes: np.ndarray  # [N, T, 4] int64 (x1, y1, x2, y2): the targets, and where to paste
    visible: np.ndarray  # [N, T] bool: pasted on that frame
    sources: np.ndarray  # [N] int64: the frame each patch is cut from, at its box there
    alphas: tuple[np.ndarray, ...]  # N x [h_s, w_s] float32 base alpha at the source box size
    opacity: np.ndarray  # [N, T] float64
    highlight: float  # blend of the patch content toward its tint
    tints: np.ndarray  # [N, 3] float32 RGB each patch is blended toward

    def paste_order(self) -> np.ndarray:
        """Patch indices, large ones first (by mean box area; ties keep their order) (§3.3.8)."""
        sizes = (self.boxes[..., 2:] - self.boxes[..., :2]).mean(axis=1)  # [N, 2] mean (w, h)
        return np.argsort(-(sizes[:, 0] * sizes[:, 1]), kind="stable")


class PatchMask:
    """Paste moving patches onto a clip and return their boxes (reference §3.3).

    Parameters
    ----------
    params
        Sizes, velocities and probabilities (already scaled to the clip's size; see
        :meth:`PatchMaskParams.for_crop`).
    """

    def __init__(self, params: PatchMaskParams = PatchMaskParams()) -> None:
        self.params = params
        scales = np.asarray(params.scales, dtype=np.float64)
        root = np.sqrt(np.asarray(params.ratios, dtype=np.float64))
        # [A, 2] anchor (width, height), A = len(ratios) * len(scales)
        self.anchors = np.stack(
            [np.outer(root, scales).ravel(), np.outer(1.0 / root, scales).ravel()], axis=1
        )

    def __call__(
        self, frames: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Paste the patches.

        Parameters
        ----------
        frames
            ``[T, S, S, 3]`` uint8 clip (any ``H x W`` works), at least 2 frames.
        rng
            Random stream.

        Returns
        -------
        tuple of numpy.ndarray
            The pasted clip (uint8 ``[T, H, W, 3]``), the integer boxes (int64 ``[N, T, 4]``,
            ``(x1, y1, x2, y2)`` with ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``) and the
            visibility flags (bool ``[N, T]``, True where the patch was pasted).
        """
        _check_frames(frames, self.params.min_size)
        num_frames, height, width = frames.shape[:3]
        plan = self.plan(num_frames, height, width, rng)
        return paste(frames, plan), plan.boxes, plan.visible

    def plan(self, num_frames: int, height: int, width: int, rng: np.random.Generator) -> PatchPlan:
        """Draw the patches of a ``[num_frames, height, width]`` clip without looking at it.

        The draws come in the order :meth:`__call__` has always made them, so a seed gives the
        same patches whichever way the plan is applied.
        """
        initial = self._initial_boxes(width, height, rng)  # [N, 4]
        trajs = self._move(initial, width, height, num_frames, rng)  # [N, T, 4]
        boxes = _integer_boxes(trajs, width, height)  # [N, T, 4]
        num_patches = len(boxes)
        sources = np.zeros(num_patches, dtype=np.int64)
        visible = np.zeros((num_patches, num_frames), dtype=bool)
        opacity = np.zeros((num_patches, num_frames), dtype=np.float64)
        alphas = []
        for i, box in enumerate(boxes):
            sources[i], alpha, opacity[i] = self._layer(box, num_frames, rng)
            alphas.append(alpha)
            u = np.asarray(rng.random(num_frames), dtype=np.float64)
            u[[0, sources[i]]] = 0.0
            visible[i] = u <= self.params.label_prob
        tints = np.full((num_patches, 3), 255.0, dtype=np.float32)  # white
        if self.params.tint == "random":  # drawn last: white patches keep the stream they had
            tints = _saturated(rng.uniform(0.0, 6.0, num_patches))
        return PatchPlan(
            boxes, visible, sources, tuple(alphas), opacity, self.params.highlight, tints
        )

    def _initial_boxes(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """Anchor shape with jitter at a uniform position (§3.3.1): ``[N, 4]`` float boxes."""
        p = self.params
        shapes = self.anchors[rng.integers(len(self.anchors), size=p.num_rois)]
        shapes = shapes * np.exp(rng.uniform(-p.scale_jitter, p.scale_jitter, (p.num_rois, 2)))
        shapes[:, 0] = np.clip(shapes[:, 0], p.min_size, width - 1)
        shapes[:, 1] = np.clip(shapes[:, 1], p.min_size, height - 1)
        x1 = rng.uniform(0, width - shapes[:, 0])
        y1 = rng.uniform(0, height - shapes[:, 1])
        return np.stack([x1, y1, x1 + shapes[:, 0], y1 + shapes[:, 1]], axis=1)

    def _move(
        self, boxes: np.ndarray, width: int, height: int, num_frames: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Centre and size trajectories from key frames (§3.3.4): ``[N, T, 4]`` float boxes."""
        p = self.params
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
        size = boxes[:, 2:] - boxes[:, :2]  # [N, 2]
        # the box keeps its initial size inside the image at every location key frame
        low, high = size / 2, np.array([width, height], dtype=np.float64) - size / 2

        loc_keys = sample_key_frames(num_frames, p.key_frame_probs, rng)
        centres = [centre]
        for gap in np.diff(loc_keys):
            if p.loc_velocity > 0:
                step = p.loc_velocity * gap
                centre = np.clip(centre + rng.uniform(-step, step, centre.shape), low, high)
            centres.append(centre)
        centre_t = interpolate_keys(np.stack(centres), loc_keys, "random", rng)  # [T, N, 2]

        size_keys = sample_key_frames(num_frames, p.key_frame_probs, rng)
        sizes = [size]
        for gap in np.diff(size_keys):
            if p.size_velocity > 0:
                step = p.size_velocity * gap
                size = size * np.exp(rng.uniform(-step, step, size.shape))
            sizes.append(size)
        size_t = interpolate_keys(np.stack(sizes), size_keys, "random", rng)  # [T, N, 2]

        trajs = np.concatenate([centre_t - size_t / 2, centre_t + size_t / 2], axis=2)
        trajs[..., 0::2] = np.clip(trajs[..., 0::2], 0, width)
        trajs[..., 1::2] = np.clip(trajs[..., 1::2], 0, height)
        return trajs.transpose(1, 0, 2)

    def _layer(
        self, box: np.ndarray, num_frames: int, rng: np.random.Generator
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Source frame, base alpha mask and opacity schedule of one trajectory (§3.3.5-6)."""
        p = self.params
        source = int(rng.integers(num_frames))
        x1, y1, x2, y2 = box[source]
        base_alpha = _base_alpha(int(x2 - x1), int(y2 - y1), p, rng)  # [h_s, w_s]
        keys = sample_key_frames(num_frames, p.key_frame_probs, rng)
        key_opacity = rng.uniform(*p.opacity_range, size=len(keys))
        return source, base_alpha, interpolate_keys(key_opacity, keys, "uniform")  # [T] opacity


def _check_frames(frames: np.ndarray, min_size: float) -> None:
    """Raise one clear error unless ``frames`` is a uint8 ``[T>=2, H, W, 3]`` clip."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"PatchMask needs frames shaped [T, H, W, 3], got {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"PatchMask needs uint8 frames, got {frames.dtype}; convert them first")
    if frames.shape[0] < 2:
        raise ValueError(f"PatchMask needs a clip of at least 2 frames, got {frames.shape[0]}")
    if min(frames.shape[1:3]) <= min_size:
        raise ValueError(
            f"frames of {frames.shape[2]}x{frames.shape[1]} are too small for patches of at "
            f"least {min_size} pixels; use larger frames or a smaller min_size"
        )


def _highlighted(crop: np.ndarray, highlight: float, tint: np.ndarray) -> np.ndarray:
    """Blend a uint8 patch toward ``tint``: ``crop * (1 - highlight) + tint * highlight``."""
    if highlight == 0.0:
        return crop
    blended = crop.astype(np.float32) * np.float32(1.0 - highlight) + tint * np.float32(highlight)
    return np.round(blended).astype(np.uint8)


def _saturated(hues: np.ndarray) -> np.ndarray:
    """Fully saturated, fully bright RGB colours ``[N, 3]`` (float32, 0..255) of hues in [0, 6)."""
    sectors = (hues[:, None] + np.array([0.0, 4.0, 2.0])) % 6  # [N, 3] distance along the wheel
    return (np.clip(np.abs(sectors - 3) - 1, 0, 1) * 255).astype(np.float32)


def _integer_boxes(trajs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Round to integers and clip to the image (§3.3.4), keeping every box at least 1 px wide."""
    boxes = np.round(trajs).astype(np.int64)  # [N, T, 4]
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        boxes[..., lo] = np.clip(boxes[..., lo], 0, limit - 1)
        boxes[..., hi] = np.clip(boxes[..., hi], boxes[..., lo] + 1, limit)
    return boxes


def _base_alpha(
    width: int, height: int, p: PatchMaskParams, rng: np.random.Generator
) -> np.ndarray:
    """Alpha mask at the source box size (§3.3.6): rectangle, ellipse or diamond, maybe soft."""
    x = np.abs(np.arange(width, dtype=np.float32) - (width - 1) // 2) / width  # [w]
    y = np.abs(np.arange(height, dtype=np.float32) - (height - 1) // 2) / height  # [h]
    dx, dy = x[None, :], y[:, None]
    shape = int(rng.choice(3, p=p.mask_shape_probs))
    if shape == 0:  # rectangle
        dist = np.maximum(dx, dy)
        alpha = np.ones((height, width), dtype=np.float32)
    else:  # ellipse or diamond
        dist = np.sqrt(dx**2 + dy**2) if shape == 1 else dx + dy
        alpha = (dist < 0.5).astype(np.float32)
    if rng.random() < p.soft_edge_prob:
        turning = rng.uniform(*p.soft_edge_range)
        alpha = alpha * np.clip((0.5 - dist) / (0.5 - turning), 0.0, 1.0).astype(np.float32)
    return alpha  # [h, w]


def paste(frames: np.ndarray, plan: PatchPlan) -> np.ndarray:
    """Blend a plan's patches into a copy of the clip, large ones first (§3.3.5-8).

    Each patch is the source frame at its box there (blended toward its tint by ``highlight``),
    resized with its alpha mask to the box of every frame it is visible on (OpenCV bilinear).

    Parameters
    ----------
    frames
        ``[T, H, W, 3]`` uint8 clip, the shape the plan was drawn for.
    plan
        From :meth:`PatchMask.plan`.

    Returns
    -------
    numpy.ndarray
        The pasted clip, uint8 ``[T, H, W, 3]``.
    """
    out = frames.copy()  # [T, H, W, 3]
    crops = []
    for i, source in enumerate(plan.sources):
        x1, y1, x2, y2 = plan.boxes[i, source]
        crop = frames[source, y1:y2, x1:x2]  # [h_s, w_s, 3]
        crops.append(_highlighted(crop, plan.highlight, plan.tints[i]))
    order = plan.paste_order()
    for t in range(len(frames)):
        for i in order:
            if not plan.visible[i, t]:
                continue
            x1, y1, x2, y2 = (int(v) for v in plan.boxes[i, t])
            dsize = (x2 - x1, y2 - y1)
            patch = cv2.resize(crops[i], dsize, interpolation=cv2.INTER_LINEAR)  # [h, w, 3]
            alpha = cv2.resize(plan.alphas[i], dsize, interpolation=cv2.INTER_LINEAR)
            alpha = (alpha * plan.opacity[i, t])[..., None]  # [h, w, 1] float64
            region = out[t, y1:y2, x1:x2]
            # uint8 truncation of the blended value, as the reference
            out[t, y1:y2, x1:x2] = (region * (1.0 - alpha) + patch * alpha).astype(np.uint8)
    return out
