"""The CtP pretext's clip pipeline (reference §3.2): scale, crop, flip, patches, colour, normalise.

:class:`CtPAugmentation` turns one sampled clip into the network input and the patch targets of
:class:`CtP.patches.PatchMask`; :func:`dynamic_schedule` gives the per-frame values of its dynamic
brightness and contrast. The clip operations themselves live in :mod:`CtP.transforms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from CtP.patches import PatchMask, PatchMaskParams, PatchPlan, paste
from CtP.sampling import interpolate_keys, sample_key_frames
from CtP.transforms import (
    add_clipped,
    adjust_hue_saturation,
    check_clip,
    crop_origin,
    multiply_clipped,
    normalize_clip,
    resize_clip,
    scale_to_crop,
    short_side_size,
)

REFERENCE_PATCH_PARAMS = PatchMaskParams()  # §3.3, for the 112 reference crop


def dynamic_schedule(
    num_frames: int, delta: float, key_frame_probs: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Per-frame values: ``U(-delta, delta)`` at key frames, interpolated between (§3.2 6-7).

    Parameters
    ----------
    num_frames
        Clip length (at least 2).
    delta
        Magnitude of the key-frame values.
    key_frame_probs
        Probabilities of 0, 1, ... inner key frames.
    rng
        Random stream.

    Returns
    -------
    numpy.ndarray
        ``[num_frames]`` float64, interpolated with the per-segment "random" scheme.
    """
    keys = sample_key_frames(num_frames, key_frame_probs, rng)
    return interpolate_keys(rng.uniform(-delta, delta, size=len(keys)), keys, "random", rng)


@dataclass(frozen=True)
class ClipPlan:
    """Every random choice of one CtP clip (:meth:`CtPAugmentation.plan`)."""

    size: tuple[int, int]  # (width, height) of the short-side resize
    crop: tuple[int, int]  # (x, y) of the crop's top-left corner in the resized frames
    flip: bool
    patches: PatchPlan
    hue_sat: tuple[float, float] | None  # (hue shift, saturation factor), or no change
    brightness: np.ndarray | None  # [T] float32 offsets, or no change
    contrast: np.ndarray | None  # [T] float32 factors, or no change

    def targets(self) -> dict[str, torch.Tensor]:
        """Return the targets: ``gt_trajs`` float32 ``[N, T, 4]``, ``visible`` bool ``[N, T]``."""
        return {
            "gt_trajs": torch.from_numpy(self.patches.boxes.astype(np.float32)),
            "visible": torch.from_numpy(self.patches.visible),
        }


class CtPAugmentation:
    """The CtP pre-training pipeline (reference §3.2), with the patch targets of §3.3.

    Scale the short side, random crop, flip, paste patches, then hue/saturation, dynamic
    brightness and dynamic contrast, and normalise. Sizes are given for the reference 112 crop
    and scaled by ``crop_size / 112`` (the patch parameters too, see
    :meth:`PatchMaskParams.for_crop`).

    Parameters
    ----------
    crop_size
        Side ``S`` of the output clip.
    scales
        Candidate short sides at the 112 reference (§3.2 step 1).
    flip_prob
        Horizontal flip probability (§3.2 step 3).
    patch_params
        PatchMask parameters at the 112 reference (§3.3).
    hue_sat_prob, hue_delta, saturation_delta
        Hue/saturation probability, hue shift bound (OpenCV units) and log-saturation bound
        (§3.2 step 5).
    brightness_prob, brightness_delta, brightness_key_frame_probs
        Dynamic brightness: probability, offset bound, inner key-frame probabilities (step 6).
    contrast_prob, contrast_delta, contrast_key_frame_probs
        Dynamic contrast: probability, log-factor bound, inner key-frame probabilities (step 7).
    """

    def __init__(
        self,
        *,
        crop_size: int = 112,
        scales: Sequence[int] = (112, 128, 144),  # §3.2 step 1
        flip_prob: float = 0.5,  # §3.2 step 3
        patch_params: PatchMaskParams = REFERENCE_PATCH_PARAMS,  # §3.3
        hue_sat_prob: float = 0.25,  # §3.2 step 5
        hue_delta: float = 12.0,  # §3.2 step 5, OpenCV hue units (0..179)
        saturation_delta: float = 0.1,  # §3.2 step 5, saturation x exp(U(-d, d))
        brightness_prob: float = 0.5,  # §3.2 step 6
        brightness_delta: float = 30.0,  # §3.2 step 6, additive
        brightness_key_frame_probs: Sequence[float] = (0.7, 0.3),  # §3.2 step 6
        contrast_prob: float = 0.5,  # §3.2 step 7
        contrast_delta: float = 0.12,  # §3.2 step 7, factor exp(U(-d, d))
        contrast_key_frame_probs: Sequence[float] = (0.7, 0.3),  # §3.2 step 7
    ) -> None:
        self.crop_size = crop_size
        self.scales = tuple(scale_to_crop(s, crop_size) for s in scales)
        if not self.scales or min(self.scales) < crop_size:
            raise ValueError(f"every scale must be at least 112 (the crop), got {tuple(scales)}")
        self.flip_prob = flip_prob
        self.patch_mask = PatchMask(patch_params.for_crop(crop_size))
        self.hue_sat_prob, self.hue_delta = hue_sat_prob, hue_delta
        self.saturation_delta = saturation_delta
        self.brightness_prob, self.brightness_delta = brightness_prob, brightness_delta
        self.brightness_key_frame_probs = tuple(brightness_key_frame_probs)
        self.contrast_prob, self.contrast_delta = contrast_prob, contrast_delta
        self.contrast_key_frame_probs = tuple(contrast_key_frame_probs)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Augment one clip and make its CtP targets.

        Parameters
        ----------
        frames
            ``[T, H, W, 3]`` uint8 RGB clip, ``T >= 2``.
        rng
            Random stream.

        Returns
        -------
        dict of torch.Tensor
            ``imgs`` float32 ``[3, T, S, S]``; ``gt_trajs`` float32 ``[N, T, 4]``, the integer
            boxes ``(x1, y1, x2, y2)`` in pixels of the crop; ``visible`` bool ``[N, T]``.
        """
        check_clip(frames, min_frames=2)
        num_frames, height, width = frames.shape[:3]
        plan = self.plan(num_frames, height, width, rng)
        return {"imgs": normalize_clip(self.apply(frames, plan))} | plan.targets()

    def plan(self, num_frames: int, height: int, width: int, rng: np.random.Generator) -> ClipPlan:
        """Draw every random choice for a ``[num_frames, height, width]`` clip (§3.2 steps 1-7).

        The clip's pixels are not needed: a loader worker can plan a clip whose JPEGs it has not
        decoded, and :mod:`CtP.device_augmentation` applies the plan on the GPU. The draws come in
        the order the pipeline has always made them, so a seed gives the same clip either way.
        """
        short = self.scales[int(rng.integers(len(self.scales)))]
        size = short_side_size(height, width, short)  # (width, height) after the resize
        x, y = crop_origin(size[1], size[0], self.crop_size, rng)
        flip = bool(rng.random() < self.flip_prob)
        patches = self.patch_mask.plan(num_frames, self.crop_size, self.crop_size, rng)
        hue_sat = None
        if rng.random() < self.hue_sat_prob:
            hue = rng.uniform(-self.hue_delta, self.hue_delta)
            saturation = np.exp(rng.uniform(-self.saturation_delta, self.saturation_delta))
            hue_sat = (float(hue), float(saturation))
        brightness = contrast = None
        if rng.random() < self.brightness_prob:
            brightness = dynamic_schedule(
                num_frames, self.brightness_delta, self.brightness_key_frame_probs, rng
            ).astype(np.float32)  # [T] offsets
        if rng.random() < self.contrast_prob:
            log_factors = dynamic_schedule(
                num_frames, self.contrast_delta, self.contrast_key_frame_probs, rng
            )
            contrast = np.exp(log_factors).astype(np.float32)  # [T] factors
        return ClipPlan(size, (x, y), flip, patches, hue_sat, brightness, contrast)

    def apply(self, frames: np.ndarray, plan: ClipPlan) -> np.ndarray:
        """Carry out a plan on the CPU: the clip ``[T, S, S, 3]`` in ``0..255``, not normalised."""
        x, y = plan.crop
        clip = resize_clip(frames, *plan.size)[:, y : y + self.crop_size, x : x + self.crop_size]
        if plan.flip:
            clip = clip[:, :, ::-1]
        colour: np.ndarray = paste(np.ascontiguousarray(clip), plan.patches)  # [T, S, S, 3]
        if plan.hue_sat is not None:
            colour = adjust_hue_saturation(colour, *plan.hue_sat)
        if plan.brightness is not None:
            colour = add_clipped(colour, plan.brightness[:, None, None, None])
        if plan.contrast is not None:
            colour = multiply_clipped(colour, plan.contrast[:, None, None, None])
        return colour
