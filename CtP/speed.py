"""Speed (playback-rate prediction) on the shared R3D backbone.

A sample is one clip played at a signed stride drawn uniformly from ``strides`` (negative: played
backwards; 0: one frame held still); the model classifies which. The model is the CtP codebase's
SpeedNet, a TSN recogniser: the backbone, a global average pool, dropout and one linear layer
(``head.fc_cls``, N(0, 0.001) weights, zero bias: training starts at the trivial loss
ln(len(strides))). Its state dict is the 120 ``backbone.*`` entries then ``head.fc_cls``: 122
entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from CtP.backbone import R3D, r3d_18
from CtP.classifier import ClsHead, pretext_classification_losses
from CtP.datasets import Annotation, FrameSource, SkippingDataset
from CtP.sampling import signed_stride_indices
from CtP.transforms import FinetuneAugmentation


class Speed(nn.Module):
    """The Speed pretext model: ``backbone``, average pool, then ``head``; returns losses.

    Parameters
    ----------
    backbone : R3D
        The shared backbone (the reference uses the fine-tuning strides).
    head : ClsHead
        Dropout and ``fc_cls`` over the strides.
    """

    def __init__(self, backbone: R3D, head: ClsHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, imgs: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """Compute the stride-classification losses.

        Parameters
        ----------
        imgs : Tensor
            Clips ``[B, 3, T, H, W]``.
        gt_labels : Tensor
            ``[B]`` index of each clip's stride in the recipe's ``strides``.

        Returns
        -------
        dict[str, Tensor]
            ``loss_cls``, ``accuracy`` and ``trivial_loss`` (ln of the number of strides).
        """
        feats = self.backbone(imgs).flatten(2).mean(dim=2)  # [B, C]
        return pretext_classification_losses(self.head(feats), gt_labels)


class SpeedDataset(SkippingDataset):
    """One clip per video at a random signed stride, labelled by the stride's index.

    Parameters
    ----------
    annotations, source
        The videos (labels are ignored) and where their frames come from.
    augmentation
        ``(frames, rng) -> [3, T, S, S]``.
    clip_len
        Frames per clip.
    strides
        Candidate signed strides; the label is the drawn one's index.
    seed
        Base seed of the per-sample random streams.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        augmentation: FinetuneAugmentation,
        *,
        clip_len: int,
        strides: Sequence[int],
        seed: int = 0,
    ) -> None:
        super().__init__(annotations, source, seed)
        self.augmentation = augmentation
        self.clip_len = clip_len
        self.strides = tuple(int(s) for s in strides)

    def _make(self, index: int, rng: np.random.Generator) -> dict[str, Tensor]:
        label = int(rng.integers(len(self.strides)))

        def choose(n: int) -> np.ndarray:
            return signed_stride_indices(n, self.clip_len, self.strides[label], rng)

        frames = self.source.read_clip(self.annotations[index].name, choose)  # [T, H, W, 3]
        return {"imgs": self.augmentation(frames, rng), "gt_labels": torch.tensor(label)}


@dataclass(frozen=True)
class SpeedRecipe:
    """How the Speed pretext is set up (conf/pretext/speed.yaml); defaults are the reference's.

    Parameters
    ----------
    strides
        The signed playback strides to tell apart (the reference: -4, -2, -1, 0, 1, 2, 4).
    dropout
        Dropout before ``fc_cls`` (the reference: 0.5).
    sizes
        Candidate ``(width, height)`` before the random crop, at the 112-pixel reference crop
        (the reference scales the short side to 112, 128 or 144).
    flip_prob, colour_prob
        Probability of a horizontal flip (0.5) and of each of the brightness, contrast and
        hue/saturation changes (0.2), as the reference.
    zero_init_residual
        Start every backbone block as its shortcut (the reference: no; see
        :class:`CtP.backbone.R3D`).
    """

    name: ClassVar[str] = "speed"
    strides: tuple[int, ...] = (-4, -2, -1, 0, 1, 2, 4)
    dropout: float = 0.5
    sizes: tuple[tuple[int, int], ...] = ((149, 112), (171, 128), (192, 144))
    flip_prob: float = 0.5
    colour_prob: float = 0.2
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if len(set(self.strides)) < 2 or len(set(self.strides)) != len(self.strides):
            raise ValueError(f"speed needs at least two distinct strides, got {self.strides}")

    def build_model(self, *, width: int, clip_len: int) -> Speed:
        """Build a freshly initialised Speed model (any ``clip_len``: features are pooled)."""
        backbone = r3d_18(width=width, mode="finetune", zero_init_residual=self.zero_init_residual)
        return Speed(backbone, ClsHead(backbone.out_channels, len(self.strides), self.dropout))

    def dataset(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        *,
        clip_len: int,
        crop_size: int,
        seed: int,
    ) -> SpeedDataset:
        """Build the Speed dataset of ``crop_size`` clips over ``annotations``."""
        augmentation = FinetuneAugmentation(
            crop_size=crop_size, sizes=self.sizes, flip_prob=self.flip_prob,
            brightness_prob=self.colour_prob, contrast_prob=self.colour_prob,
            hue_sat_prob=self.colour_prob,
        )  # fmt: skip
        return SpeedDataset(
            annotations, source, augmentation, clip_len=clip_len, strides=self.strides, seed=seed
        )
