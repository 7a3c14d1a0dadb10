"""CtP's clip pipeline on a batch of device tensors: decode, scale, crop, flip, paste, colour.

The CPU pipeline (:class:`CtP.ctp_augmentation.CtPAugmentation`) decodes and augments each clip
in a loader worker. On a GPU those workers become the bottleneck, so this module takes over the
work after the random choices: a worker draws each clip's :class:`~CtP.ctp_augmentation.ClipPlan`
(which needs the frame size only) and hands over the JPEG bytes of the sampled frames (or, for
video files, the decoded uint8 frames); the training process decodes the whole batch on the
device (:func:`decode_clips`) and carries the plans out as batched tensor operations
(:func:`augment_batch`).

The device path does not make the host wait: a batch's plans reach the device as one packed
float32 tensor (:func:`pack_plans`, built by the loader workers, pinned by the loader and copied
without blocking), constant tables are uploaded once per device (:func:`device_constants`), and
whether any clip changes hue is read from the plans on the host, never from the device. nvJPEG
decodes on a stream of its own (:func:`decode_clips`), so that its outputs never take memory that
kernels queued on the training stream still read.

Both paths carry out the same plans, so they draw from the same distribution by construction;
every operation here reproduces its OpenCV counterpart (bilinear resizes with half-pixel centres
and rounding to uint8, the truncating alpha blend, OpenCV's 8-bit RGB -> HSV conversion and the
rounded HSV -> RGB of :func:`CtP.transforms.hsv_to_rgb_8bit`) up to the fixed-point rounding of
OpenCV's resize, which moves a pixel by at most one level.
tests/test_device_augmentation.py compares the two on CPU tensors.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from CtP.ctp_augmentation import ClipPlan, CtPAugmentation
from CtP.datasets import CtPDataset, VideoReadError, ZipFrameSource
from CtP.transforms import HSV_FACTORS, IMAGENET_MEAN, IMAGENET_STD

HSV_SHIFT = 12  # OpenCV's fixed-point shift of its 8-bit RGB -> HSV tables
HUE_RANGE = 180  # OpenCV's 8-bit hue: 0..179, half degrees


def decode_clips(
    encoded: Sequence[Sequence[Tensor]], device: torch.device, stream: Any = None
) -> list[Tensor]:
    """Decode every clip's JPEG frames in one batched call on ``device``.

    Parameters
    ----------
    encoded
        Per clip, its frames' JPEG files as 1-D uint8 CPU tensors.
    device
        Where to decode (``cuda`` uses nvJPEG; ``cpu`` libjpeg-turbo).
    stream
        On CUDA, a ``torch.cuda.Stream`` of its own for nvJPEG. torchvision's decoder allocates
        its outputs on the current stream and writes them from a stream of its own without
        waiting for the current one (pytorch/vision#9606): on the training stream, with the
        previous step's kernels still queued (nothing waits for them between log lines), it
        could write into memory they still read. On its own stream nothing is queued; the
        current stream then waits for it and the frames are recorded on it, so their memory is
        not handed out again while it still reads them. None decodes on the current stream.

    Returns
    -------
    list[Tensor]
        Per clip, uint8 ``[T, 3, H, W]`` RGB frames on ``device``.
    """
    flat = [frame for clip in encoded for frame in clip]
    on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with warnings.catch_warnings(), on_stream:
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec, whose
        # wheels need the system's FFmpeg libraries; decode_jpeg itself is unchanged
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(flat, mode=ImageReadMode.RGB, device=device)  # list of [3, H, W]
    if stream is not None:
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)
        for image in images:
            image.record_stream(current)
    clips, start = [], 0
    for clip in encoded:
        clips.append(torch.stack(images[start : start + len(clip)]))
        start += len(clip)
    return clips


def resize_crop_flip(frames: Tensor, plan: ClipPlan, crop_size: int) -> Tensor:
    """Scale, crop and flip one clip as its plan says (§3.2 steps 1-3).

    Parameters
    ----------
    frames
        uint8 ``[T, 3, H, W]``.
    plan
        The clip's plan.
    crop_size
        Side ``S`` of the crop.

    Returns
    -------
    Tensor
        float32 ``[T, 3, S, S]`` with integer values in ``0..255`` (the resize rounds, as
        OpenCV's on uint8 frames).
    """
    width, height = plan.size
    x, y = plan.crop
    clip = frames.float()
    if clip.shape[-2:] != (height, width):
        clip = F.interpolate(clip, size=(height, width), mode="bilinear", align_corners=False)
        clip = clip.round_().clamp_(0, 255)
    clip = clip[..., y : y + crop_size, x : x + crop_size]
    return clip.flip(-1) if plan.flip else clip


def _plan_arrays(plans: Sequence[ClipPlan]) -> dict[str, np.ndarray]:
    """Every number of a batch's plans that the device needs, by name (alphas padded)."""
    patches = [p.patches for p in plans]
    height = max(a.shape[0] for p in patches for a in p.alphas)
    width = max(a.shape[1] for p in patches for a in p.alphas)
    alphas = np.zeros((len(plans), len(patches[0].alphas), height, width), dtype=np.float32)
    for b, plan in enumerate(patches):
        for i, alpha in enumerate(plan.alphas):
            alphas[b, i, : alpha.shape[0], : alpha.shape[1]] = alpha
    ones = np.ones(patches[0].boxes.shape[1], dtype=np.float32)  # [T]
    return {
        "boxes": np.stack([p.boxes for p in patches]),  # [B, N, T, 4], also the targets
        "visible": np.stack([p.visible for p in patches]),  # [B, N, T]
        "sources": np.stack([p.sources for p in patches]),  # [B, N]
        "opacity": np.stack([p.opacity for p in patches]),  # [B, N, T]
        "order": np.stack([p.paste_order() for p in patches]),  # [B, N]
        "highlight": np.array([p.highlight for p in patches]),  # [B]
        "tints": np.stack([p.tints for p in patches]),  # [B, N, 3]
        "alphas": alphas,  # [B, N, Hs, Ws]
        "hue_sat": np.array([p.hue_sat or (0.0, 1.0) for p in plans]),  # [B, 2]
        "hue_applied": np.array([p.hue_sat is not None for p in plans]),  # [B]
        "brightness": np.stack([ones * 0 if p.brightness is None else p.brightness for p in plans]),
        "contrast": np.stack([ones if p.contrast is None else p.contrast for p in plans]),  # [B, T]
    }


def _plan_layout(plans: Sequence[ClipPlan]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of :func:`pack_plans`'s pieces, in order (known from the plans alone)."""
    b, (n, t) = len(plans), plans[0].patches.boxes.shape[:2]
    height = max(a.shape[0] for p in plans for a in p.patches.alphas)
    width = max(a.shape[1] for p in plans for a in p.patches.alphas)
    return [
        ("boxes", (b, n, t, 4)), ("visible", (b, n, t)), ("sources", (b, n)),
        ("opacity", (b, n, t)), ("order", (b, n)), ("highlight", (b,)), ("tints", (b, n, 3)),
        ("alphas", (b, n, height, width)), ("hue_sat", (b, 2)), ("hue_applied", (b,)),
        ("brightness", (b, t)), ("contrast", (b, t)),
    ]  # fmt: skip


def pack_plans(plans: Sequence[ClipPlan]) -> Tensor:
    """Pack every number of a batch's plans into one float32 tensor: one copy to the device.

    The integers (boxes, frame and patch indices, flags) are small enough to be exact in
    float32, and the other values are float32 already, so :func:`unpack_plans` gives back the
    plans' numbers exactly.

    Parameters
    ----------
    plans
        Per clip, its plan.

    Returns
    -------
    Tensor
        float32 ``[K]``, laid out as :func:`unpack_plans` reads it.
    """
    arrays = _plan_arrays(plans)
    pieces = [arrays[name].astype(np.float32).ravel() for name, _ in _plan_layout(plans)]
    return torch.from_numpy(np.concatenate(pieces))


def unpack_plans(packed: Tensor, plans: Sequence[ClipPlan]) -> dict[str, Tensor]:
    """Read :func:`pack_plans`'s tensor back as views by name, indices and flags cast back.

    ``boxes`` stays float32 (it is also the clips' target trajectories, ``[B, N, T, 4]``);
    ``box_index`` is the same boxes as int64, ``sources`` and ``order`` are int64,
    ``visible`` and ``hue_applied`` bool, all on ``packed``'s device.
    """
    tables, start = {}, 0
    for name, shape in _plan_layout(plans):
        size = math.prod(shape)
        tables[name] = packed[start : start + size].view(shape)
        start += size
    integers = {k: tables[k].long() for k in ("sources", "order")}
    flags = {k: tables[k].bool() for k in ("visible", "hue_applied")}
    return tables | integers | flags | {"box_index": tables["boxes"].long()}


_CONSTANTS: dict[torch.device, dict[str, Tensor]] = {}


def device_constants(device: torch.device) -> dict[str, Tensor]:
    """Return the constant tables on ``device``, uploaded on first use and kept.

    The HSV -> RGB factors ``hsv`` ``[180, 256, 3]`` (553 KB) and the ImageNet ``mean`` and
    ``std`` ``[3, 1, 1, 1]``: uploading them for every batch would copy (and, from pageable
    memory, wait) every step.
    """
    if device.type == "cuda" and device.index is None:  # as its tensors report it: cuda:N
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _CONSTANTS:
        with torch.inference_mode(False):  # plain tensors, whoever asks first
            _CONSTANTS[device] = {
                "hsv": torch.as_tensor(HSV_FACTORS, device=device),
                "mean": torch.tensor(IMAGENET_MEAN, device=device)[:, None, None, None],
                "std": torch.tensor(IMAGENET_STD, device=device)[:, None, None, None],
            }
    return _CONSTANTS[device]


Axis = tuple[Tensor, Tensor, Tensor]  # lower index, upper index, upper weight: [B, T, S] each


def _source_coords(
    start: Tensor, end: Tensor, source_size: Tensor, side: int
) -> tuple[Axis, Tensor]:
    """OpenCV's bilinear map from a box's pixels back into the source crop, along one axis.

    ``start``, ``end``: ``[B, T]`` box edges; ``source_size``: ``[B]`` crop side. Returns, for
    every pixel ``0..side-1`` of the frame, the source indices and weight (``[B, T, side]``)
    and whether the pixel lies in the box.
    """
    pixels = torch.arange(side, device=start.device, dtype=torch.float32)  # [side]
    size = (end - start).float()[..., None]  # [B, T, 1]
    last = (source_size.float() - 1)[:, None, None]  # [B, 1, 1]
    pos = (pixels - start[..., None] + 0.5) * source_size[:, None, None] / size - 0.5
    pos = torch.minimum(pos.clamp(min=0), last)  # [B, T, side], OpenCV replicates the border
    low = pos.floor()
    high = torch.minimum(low + 1, last)
    inside = (pixels >= start[..., None]) & (pixels < end[..., None])
    return (low.long(), high.long(), pos - low), inside


def _bilinear(image: Tensor, y: Axis, x: Axis) -> Tensor:
    """Sample ``image [B, C, H, W]`` at the rows of ``y``, columns of ``x``: ``[B, T, S, S, C]``."""
    b = torch.arange(len(image), device=image.device)[:, None, None, None]

    def at(rows: Tensor, cols: Tensor) -> Tensor:
        return image[b, :, rows[..., :, None], cols[..., None, :]]  # [B, T, S, S, C]

    fy, fx = y[2][..., :, None, None], x[2][..., None, :, None]
    top = at(y[0], x[0]) * (1 - fx) + at(y[0], x[1]) * fx
    bottom = at(y[1], x[0]) * (1 - fx) + at(y[1], x[1]) * fx
    return top * (1 - fy) + bottom * fy


def _shifted(axis: Axis, offset: Tensor) -> Axis:
    """Move an axis's indices by ``offset [B]`` (crop -> frame coordinates)."""
    return axis[0] + offset[:, None, None], axis[1] + offset[:, None, None], axis[2]


def paste_batch(clips: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    """Blend every clip's patches in, large ones first, as :func:`CtP.patches.paste` (§3.3).

    Parameters
    ----------
    clips
        float32 ``[B, T, 3, S, S]`` with integer values (the cropped clips).
    p
        The batch's plans on the clips' device (:func:`unpack_plans`).

    Returns
    -------
    Tensor
        float32 ``[B, T, 3, S, S]``, integer-valued: the pasted clips.
    """
    height, width = clips.shape[-2:]
    rows = torch.arange(len(clips), device=clips.device)
    shade = p["highlight"][:, None, None, None]  # [B, 1, 1, 1]
    out = clips.clone()
    for rank in range(p["order"].shape[1]):
        i = p["order"][:, rank]  # [B] the patch pasted at this rank
        boxes = p["box_index"][rows, i]  # [B, T, 4]
        source = p["sources"][rows, i]  # [B]
        src = boxes[rows, source]  # [B, 4] the box on the source frame
        x, in_x = _source_coords(boxes[..., 0], boxes[..., 2], src[:, 2] - src[:, 0], width)
        y, in_y = _source_coords(boxes[..., 1], boxes[..., 3], src[:, 3] - src[:, 1], height)
        tint = p["tints"][rows, i][:, :, None, None]  # [B, 3, 1, 1]
        frame = (clips[rows, source] * (1 - shade) + tint * shade).round()  # [B, 3, S, S]
        patch = _bilinear(frame, _shifted(y, src[:, 1]), _shifted(x, src[:, 0])).round()
        alpha = _bilinear(p["alphas"][rows, i][:, None], y, x)[..., 0]  # [B, T, S, S]
        alpha = (alpha * p["opacity"][rows, i][..., None, None])[:, :, None]  # [B, T, 1, S, S]
        visible = p["visible"][rows, i]  # [B, T]
        mask = in_y[..., :, None] & in_x[..., None, :] & visible[..., None, None]  # [B, T, S, S]
        # uint8 truncation of the blended value, as the reference
        blended = (out * (1 - alpha) + patch.permute(0, 1, 4, 2, 3) * alpha).floor()
        out = torch.where(mask[:, :, None], blended, out)
    return out


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """OpenCV's 8-bit RGB -> HSV (hue 0..179), exactly, on integer-valued ``[..., 3, H, W]``."""
    r, g, b = rgb.long().unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    one = 1 << (HSV_SHIFT - 1)
    s_table = torch.where(v > 0, torch.round((255 << HSV_SHIFT) / v.clamp(min=1)), 0).long()
    s = (diff * s_table + one) >> HSV_SHIFT
    h_raw = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h_table = torch.where(
        diff > 0, torch.round((HUE_RANGE << HSV_SHIFT) / (6 * diff.clamp(min=1))), 0
    ).long()
    h = (h_raw * h_table + one) >> HSV_SHIFT
    h = torch.where(h < 0, h + HUE_RANGE, h)
    return torch.stack([h, s, v], dim=-3).float()


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """8-bit HSV (hue 0..179) -> RGB on ``[..., 3, H, W]``, rounded to ``0..255``.

    The CPU path's :func:`CtP.transforms.hsv_to_rgb_8bit`, from the same table of factors of v.
    """
    h, s, v = hsv.unbind(-3)
    factors = device_constants(hsv.device)["hsv"]  # [180, 256, 3]
    rgb = (v / 255.0)[..., None] * factors[h.long(), s.long()]  # [..., H, W, 3]
    return (rgb * 255).round().clamp(0, 255).movedim(-1, -3)


def adjust_hue_saturation(clips: Tensor, hue_sat: Tensor, applied: Tensor) -> Tensor:
    """Shift hue and scale saturation per clip, as :func:`CtP.transforms.adjust_hue_saturation`.

    ``clips``: float ``[B, T, 3, S, S]`` integer-valued; ``hue_sat``: ``[B, 2]`` (shift, factor);
    ``applied``: bool ``[B]``, the clips that change.
    """
    hsv = rgb_to_hsv(clips)
    shift = hue_sat[:, 0, None, None, None]  # [B, 1, 1, 1]
    factor = hue_sat[:, 1, None, None, None]
    h = torch.clamp(torch.round(torch.clamp(hsv[:, :, 0] + shift, 0, 255)), max=HUE_RANGE - 1)
    s = torch.round(torch.clamp(hsv[:, :, 1] * factor, 0, 255))
    changed = hsv_to_rgb(torch.stack([h, s, hsv[:, :, 2]], dim=2))
    return torch.where(applied[:, None, None, None, None], changed, clips)


def augment_batch(
    frames: Sequence[Tensor],
    plans: Sequence[ClipPlan],
    crop_size: int,
    tables: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Carry out a batch of CtP clip plans on the frames' device (§3.2 steps 1-8).

    Parameters
    ----------
    frames
        Per clip, uint8 ``[T, 3, H, W]`` RGB frames (sizes may differ between clips).
    plans
        Per clip, its plan (:meth:`CtP.ctp_augmentation.CtPAugmentation.plan`).
    crop_size
        Side ``S`` of the clips.
    tables
        The plans on the frames' device (:func:`unpack_plans`); None packs and copies them here.

    Returns
    -------
    Tensor
        float32 ``[B, 3, T, S, S]``, normalised with the ImageNet mean and std.
    """
    device = frames[0].device
    if tables is None:
        tables = unpack_plans(pack_plans(plans).to(device), plans)
    pairs = zip(frames, plans, strict=True)
    clips = torch.stack([resize_crop_flip(f, p, crop_size) for f, p in pairs])  # [B, T, 3, S, S]
    clips = paste_batch(clips, tables)  # [B, T, 3, S, S]
    if any(p.hue_sat is not None for p in plans):  # the host knows: no need to ask the device
        clips = adjust_hue_saturation(clips, tables["hue_sat"], tables["hue_applied"])
    offsets = tables["brightness"][:, :, None, None, None]  # [B, T, 1, 1, 1]
    factors = tables["contrast"][:, :, None, None, None]
    clips = ((clips + offsets).clamp(0, 255) * factors).clamp(0, 255)
    constants = device_constants(device)
    return (clips.transpose(1, 2) / 255.0 - constants["mean"]) / constants["std"]  # [B, 3, T, S, S]


class PlannedClips(CtPDataset):
    """CtP samples for the device path: the sampled frames, still encoded, and the clip's plan.

    Built as :class:`CtP.datasets.CtPDataset` is, with a :class:`CtPAugmentation`; the frames
    and plans are those it would draw with the same seed (the same random stream, in the same
    order). A sample is ``{"frames": ..., "plan": ClipPlan, "gt_trajs": [N, T, 4]}``, where
    ``frames`` is the list of the clip's JPEG files (1-D uint8 tensors) for zips of frames, or
    uint8 ``[T, 3, H, W]`` frames for video files. Batch the samples with
    :func:`collate_planned`.
    """

    augmentation: CtPAugmentation

    def _make(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        name, choose = self.annotations[index].name, self.chooser(rng)
        frames: list[Tensor] | Tensor
        if isinstance(self.source, ZipFrameSource):
            jpegs = self.source.read_jpegs(name, choose)
            height, width = _jpeg_size(jpegs[0], name)
            frames = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
        else:
            decoded = self.source.read_clip(name, choose)  # [T, H, W, 3]
            height, width = decoded.shape[1:3]
            frames = torch.from_numpy(decoded).permute(0, 3, 1, 2)  # [T, 3, H, W]
        plan = self.augmentation.plan(len(frames), height, width, rng)
        return {"frames": frames, "plan": plan} | plan.targets()


def _jpeg_size(data: bytes, name: str) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's header, without decoding it."""
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except (OSError, ValueError) as err:
        raise VideoReadError(f"{name}: a frame is not a readable JPEG ({err})") from err
    return height, width


def collate_planned(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`PlannedClips` samples for :class:`DeviceAugmentation`.

    ``plans`` are the clips' plans, ``tables`` the same plans packed into one tensor
    (:func:`pack_plans`), ``gt_trajs`` ``[B, N, T, 4]`` and ``skipped`` ``[B]`` stacked; the
    frames are the clips' lists of JPEG files, or, for decoded video frames, all of them in one
    flat uint8 tensor with ``frame_shapes`` (one copy to the device, not one per clip).
    """
    frames = [s["frames"] for s in samples]
    plans = [s["plan"] for s in samples]
    batch = {
        "frames": frames,
        "plans": plans,
        "tables": pack_plans(plans),
        "gt_trajs": torch.stack([s["gt_trajs"] for s in samples]),  # [B, N, T, 4]
        "skipped": torch.stack([s["skipped"] for s in samples]),  # [B]
    }
    if isinstance(frames[0], Tensor):  # decoded video frames, [T, 3, H, W] each
        batch["frames"] = torch.cat([f.reshape(-1) for f in frames])
        batch["frame_shapes"] = [tuple(f.shape) for f in frames]
    return batch


class DeviceAugmentation:
    """Turn a :func:`collate_planned` batch into the CtP model's inputs on ``device``.

    One copy to the device per batch besides the JPEG files nvJPEG reads (the packed plans, or
    the packed plans and the decoded video frames), none of them blocking, and no host sync.

    Parameters
    ----------
    crop_size
        Side ``S`` of the clips (the plans' crop).
    device
        Where to decode and augment (and train).
    channels_last
        Hand the clips over in the ``channels_last_3d`` layout.
    """

    def __init__(self, crop_size: int, device: torch.device, channels_last: bool = False) -> None:
        self.crop_size, self.device, self.channels_last = crop_size, device, channels_last
        self._decode_stream: Any = None  # nvJPEG's own CUDA stream, made on first use
        device_constants(device)  # uploaded now, before any step

    def __call__(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``{"imgs": [B, 3, T, S, S], "gt_trajs": [B, N, T, 4]}`` on the device."""
        plans = batch["plans"]
        tables = unpack_plans(batch["tables"].to(self.device, non_blocking=True), plans)
        imgs = augment_batch(self._frames(batch), plans, self.crop_size, tables)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last_3d)
        return {"imgs": imgs, "gt_trajs": tables["boxes"]}

    def _frames(self, batch: dict[str, Any]) -> list[Tensor]:
        """Per clip, uint8 ``[T, 3, H, W]`` frames on the device."""
        frames = batch["frames"]
        if isinstance(frames, Tensor):  # decoded video frames, packed by collate_planned
            shapes = batch["frame_shapes"]
            flat = frames.to(self.device, non_blocking=True)
            parts = flat.split([math.prod(shape) for shape in shapes])
            return [part.view(shape) for part, shape in zip(parts, shapes, strict=True)]
        if self.device.type == "cuda" and self._decode_stream is None:
            self._decode_stream = torch.cuda.Stream(self.device)
        return decode_clips(frames, self.device, self._decode_stream)
