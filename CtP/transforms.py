"""Clip-level transforms: fine-tuning augmentation, test transform and the clip operations.

A clip is an RGB uint8 array ``[T, H, W, 3]``; every random choice is made once per clip (the
same scale, crop, flip and colour change for all its frames, or a smooth key-frame schedule for
the dynamic colour ops) and comes from the ``numpy.random.Generator`` passed in. Resizes are
OpenCV bilinear without antialiasing, as the reference. The output is a float32 tensor
``[3, T, S, S]`` normalised with the ImageNet mean and std.

* :class:`FinetuneAugmentation`: fine-tuning (reference §7.1, train), and VCOP and Speed;
* :class:`EvalTransform`: testing and retrieval (reference §7.1, §7.2);
* the clip operations these and CtP's pipeline (:mod:`CtP.ctp_augmentation`) are made of.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from CtP.patches import REFERENCE_CROP

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # §3.2 step 8, RGB order
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_clip(frames: np.ndarray) -> torch.Tensor:
    """Turn an RGB clip into a normalised network input (reference §3.2 step 8).

    Parameters
    ----------
    frames
        ``[T, H, W, 3]`` RGB clip, uint8 or float in ``0..255``.

    Returns
    -------
    torch.Tensor
        ``[3, T, H, W]`` float32: ``(frames / 255 - mean) / std``.
    """
    out = np.empty((3, *frames.shape[:3]), dtype=np.float32)  # [3, T, H, W]
    for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        # one pass per channel straight into the channel-first layout
        np.multiply(frames[..., c], np.float32(1.0 / (255.0 * std)), out=out[c], dtype=np.float32)
        out[c] -= np.float32(mean / std)
    return torch.from_numpy(out)


def resize_clip(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize every frame to ``width x height`` (OpenCV bilinear, no antialiasing).

    Parameters
    ----------
    frames
        ``[T, H, W, 3]`` clip.
    width, height
        Output frame size.

    Returns
    -------
    numpy.ndarray
        ``[T, height, width, 3]`` clip of the same dtype.
    """
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    )


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output ``(width, height)`` that scales the short side to ``short_side`` (§3.2 step 1)."""
    factor = short_side / min(height, width)
    return round(width * factor), round(height * factor)


def fixed_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Output ``(width, height)`` for a fixed landscape ``size``; swapped for portrait frames."""
    return (size[1], size[0]) if height > width else size


def crop_origin(
    height: int, width: int, crop_size: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Draw the ``(x, y)`` top-left corner of a uniform ``crop_size`` crop (y is drawn first)."""
    y = int(rng.integers(0, height - crop_size + 1))
    x = int(rng.integers(0, width - crop_size + 1))
    return x, y


def random_crop(frames: np.ndarray, crop_size: int, rng: np.random.Generator) -> np.ndarray:
    """Crop a ``crop_size`` square at a uniform position, the same for all frames."""
    height, width = frames.shape[1:3]
    x, y = crop_origin(height, width, crop_size, rng)
    return frames[:, y : y + crop_size, x : x + crop_size]


def center_crop(frames: np.ndarray, crop_size: int) -> np.ndarray:
    """Crop the central ``crop_size`` square (top-left at ``(H - S) // 2, (W - S) // 2``)."""
    height, width = frames.shape[1:3]
    y, x = (height - crop_size) // 2, (width - crop_size) // 2
    return frames[:, y : y + crop_size, x : x + crop_size]


def adjust_hue_saturation(
    frames: np.ndarray, hue_shift: float, saturation_factor: float
) -> np.ndarray:
    """Shift the hue and scale the saturation in OpenCV's HSV (hue 0..179, no wrap-around).

    The clip is rounded to uint8 and converted to HSV; the hue gets ``hue_shift`` added and the
    saturation is multiplied by ``saturation_factor``, both rounded and clipped (hue to 0..179),
    and the clip is converted back, as the reference's ``RandomHueSaturation`` (§3.2 step 5):
    there with OpenCV 4's rounding (:func:`hsv_to_rgb_8bit`), whatever OpenCV is installed.
    Both channel changes are per-value lookup tables, so the whole clip costs two colour
    conversions and one table lookup.

    Parameters
    ----------
    frames
        ``[T, H, W, 3]`` RGB clip, uint8 or float.
    hue_shift
        Added to the hue, in OpenCV hue units (half degrees).
    saturation_factor
        Multiplies the saturation.

    Returns
    -------
    numpy.ndarray
        ``[T, H, W, 3]`` uint8 RGB clip.
    """
    num_frames, height, width, _ = frames.shape
    if frames.dtype != np.uint8:
        frames = np.round(np.clip(frames, 0, 255)).astype(np.uint8)
    rgb = np.ascontiguousarray(frames).reshape(num_frames * height, width, 3)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # one call for all frames, hue in 0..179
    values = np.arange(256, dtype=np.float32)
    table = np.stack(
        [
            np.minimum(np.round(np.clip(values + np.float32(hue_shift), 0, 255)), 179),
            np.round(np.clip(values * np.float32(saturation_factor), 0, 255)),
            values,
        ],
        axis=-1,
    ).astype(np.uint8)  # [256, 3]
    hsv = cv2.LUT(hsv, table.reshape(256, 1, 3))
    return hsv_to_rgb_8bit(hsv).reshape(num_frames, height, width, 3)


def _hsv_factors() -> np.ndarray:
    """``[180, 256, 3]`` float32: what each of r, g, b is of v, per 8-bit hue and saturation.

    OpenCV's formula: with the hue in sectors ``h`` (0..6) and ``f`` its fraction, a channel is
    one of v, ``v(1 - s)``, ``v(1 - sf)`` or ``v(1 - s(1 - f))``, chosen by the sector; the
    factors depend on hue and saturation only, so they are tabled once.
    """
    hue, sat = np.meshgrid(np.arange(180), np.arange(256), indexing="ij")  # [180, 256]
    h = hue.astype(np.float32) * np.float32(6.0 / 180)
    s = sat.astype(np.float32) / np.float32(255.0)
    sector = np.floor(h)
    f = h - sector
    one = np.float32(1)
    table = np.stack([np.ones_like(s), one - s, one - s * f, one - s * (one - f)], axis=-1)
    sectors = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
    return np.take_along_axis(table, sectors[sector.astype(np.int64)], axis=-1)  # (r, g, b)


HSV_FACTORS = _hsv_factors()


def hsv_to_rgb_8bit(hsv: np.ndarray) -> np.ndarray:
    """8-bit HSV (hue 0..179) -> RGB, OpenCV's formula in float32, rounded to the nearest level.

    OpenCV 4 (the original's) rounds the result; some later OpenCV builds truncate it, which
    darkens every colour-changed clip by about a third of a level on average. Converting here
    keeps the clips the same whatever OpenCV is installed, and equal to the device path's
    (:func:`CtP.device_augmentation.hsv_to_rgb`, the same table and float32 products in torch).

    Parameters
    ----------
    hsv
        ``[..., 3]`` uint8 HSV, hue in OpenCV's half degrees (0..179).

    Returns
    -------
    numpy.ndarray
        ``[..., 3]`` uint8 RGB.
    """
    v = hsv[..., 2:].astype(np.float32) / np.float32(255.0)  # [..., 1]
    rgb = v * HSV_FACTORS[hsv[..., 0], hsv[..., 1]]  # [..., 3]
    return np.clip(np.round(rgb * np.float32(255)), 0, 255).astype(np.uint8)


def add_clipped(frames: np.ndarray, offset: np.ndarray | float) -> np.ndarray:
    """``clip(frames + offset, 0, 255)`` as float32 (brightness)."""
    out = np.add(frames, offset, dtype=np.float32)
    return np.clip(out, 0, 255, out=out)


def multiply_clipped(frames: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """``clip(frames * factor, 0, 255)`` as float32 (contrast)."""
    out = np.multiply(frames, factor, dtype=np.float32)
    return np.clip(out, 0, 255, out=out)


def check_clip(frames: np.ndarray, min_frames: int) -> None:
    """Raise one clear error unless ``frames`` is a uint8 RGB clip ``[T, H, W, 3]``."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"a clip must be an array shaped [T, H, W, 3], got {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"a clip must hold uint8 RGB frames, got {frames.dtype}")
    if frames.shape[0] < min_frames or min(frames.shape[1:3]) < 1:
        raise ValueError(
            f"a clip needs at least {min_frames} non-empty frames, got shape {frames.shape}"
        )


def scale_to_crop(value: float, crop_size: int) -> int:
    """Scale a size given for the 112-pixel reference crop to ``crop_size``."""
    if crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size}")
    return round(value * crop_size / REFERENCE_CROP)


class FinetuneAugmentation:
    """The fine-tuning training augmentation (reference §7.1).

    Resize to a fixed size, flip, brightness, contrast, hue/saturation, random crop, normalise.
    The colour ops act on each pixel alone, so the crop is taken before them (same result, less
    work).

    Parameters
    ----------
    crop_size
        Side ``S`` of the output clip.
    sizes
        Candidate ``(width, height)`` at the 112 reference, for landscape frames.
    flip_prob
        Horizontal flip probability.
    brightness_prob, brightness_delta
        Probability and bound of the additive brightness change.
    contrast_prob, contrast_delta
        Probability and log-factor bound of the contrast change.
    hue_sat_prob, hue_delta, saturation_delta
        Probability, hue shift bound (OpenCV units) and log-saturation bound.
    """

    def __init__(
        self,
        *,
        crop_size: int = 112,
        sizes: Sequence[tuple[int, int]] = ((149, 112), (171, 128), (192, 144)),  # §7.1
        flip_prob: float = 0.35,  # §7.1
        brightness_prob: float = 0.2,  # §7.1
        brightness_delta: float = 32.0,  # §7.1, additive
        contrast_prob: float = 0.2,  # §7.1
        contrast_delta: float = 0.2,  # §7.1, factor exp(U(-d, d))
        hue_sat_prob: float = 0.2,  # §7.1
        hue_delta: float = 12.0,  # §7.1, OpenCV hue units
        saturation_delta: float = 0.1,  # §7.1, saturation x exp(U(-d, d))
    ) -> None:
        self.crop_size = crop_size
        self.sizes = tuple(
            (scale_to_crop(w, crop_size), scale_to_crop(h, crop_size)) for w, h in sizes
        )
        if not self.sizes or min(min(s) for s in self.sizes) < crop_size:
            raise ValueError(f"every size must be at least 112x112 (the crop), got {sizes}")
        self.flip_prob = flip_prob
        self.brightness_prob, self.brightness_delta = brightness_prob, brightness_delta
        self.contrast_prob, self.contrast_delta = contrast_prob, contrast_delta
        self.hue_sat_prob, self.hue_delta = hue_sat_prob, hue_delta
        self.saturation_delta = saturation_delta

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Augment one clip.

        Parameters
        ----------
        frames
            ``[T, H, W, 3]`` uint8 RGB clip.
        rng
            Random stream.

        Returns
        -------
        torch.Tensor
            ``[3, T, S, S]`` float32.
        """
        check_clip(frames, min_frames=1)
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        height, width = frames.shape[1:3]
        clip = resize_clip(frames, *fixed_size(height, width, size))
        if rng.random() < self.flip_prob:
            clip = clip[:, :, ::-1]
        clip = random_crop(clip, self.crop_size, rng)
        colour: np.ndarray = clip  # [T, S, S, 3]
        if rng.random() < self.brightness_prob:
            delta = rng.uniform(-self.brightness_delta, self.brightness_delta)
            colour = add_clipped(colour, float(delta))
        if rng.random() < self.contrast_prob:
            factor = np.exp(rng.uniform(-self.contrast_delta, self.contrast_delta))
            colour = multiply_clipped(colour, float(factor))
        if rng.random() < self.hue_sat_prob:
            hue = rng.uniform(-self.hue_delta, self.hue_delta)
            saturation = np.exp(rng.uniform(-self.saturation_delta, self.saturation_delta))
            colour = adjust_hue_saturation(colour, hue, saturation)
        return normalize_clip(colour)


class EvalTransform:
    """The test and retrieval transform (reference §7.1, §7.2): resize, centre crop, normalise.

    Parameters
    ----------
    crop_size
        Side ``S`` of the output clip.
    size
        ``(width, height)`` at the 112 reference (swapped for portrait frames).
    """

    def __init__(self, *, crop_size: int = 112, size: tuple[int, int] = (171, 128)) -> None:
        self.crop_size = crop_size
        self.size = (scale_to_crop(size[0], crop_size), scale_to_crop(size[1], crop_size))
        if min(self.size) < crop_size:
            raise ValueError(f"size must be at least 112x112 (the crop), got {size}")

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Transform one clip (deterministic).

        Parameters
        ----------
        frames
            ``[T, H, W, 3]`` uint8 RGB clip.

        Returns
        -------
        torch.Tensor
            ``[3, T, S, S]`` float32.
        """
        check_clip(frames, min_frames=1)
        height, width = frames.shape[1:3]
        clip = resize_clip(frames, *fixed_size(height, width, self.size))
        return normalize_clip(center_crop(clip, self.crop_size))
