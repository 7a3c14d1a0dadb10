"""VCOP (video clip order prediction; Xu et al., CVPR 2019) on the shared R3D backbone.

A sample is a tuple of ``tuple_len`` clips taken one after another from a video, shuffled by one
of the ``tuple_len!`` permutations; the model classifies which. Each clip goes through the
backbone alone and is average-pooled to a feature; every pair (i < j) of features is concatenated
and mapped by ``head.fc1`` (ReLU); the pair codes are concatenated, dropped out, and
``head.fc2`` scores the permutations. This is the head of the CtP codebase's VCOP, which the
FedVSSL authors pre-trained (state dict: the 120 ``backbone.*`` entries, then ``head.fc1`` and
``head.fc2``: 124 entries), with ``fc1`` Kaiming-initialised and ``fc2`` drawn from N(0, 0.001),
so training starts at the trivial loss ln(tuple_len!).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from CtP.backbone import R3D, r3d_18
from CtP.classifier import pretext_classification_losses
from CtP.datasets import Annotation, FrameSource, SkippingDataset
from CtP.sampling import tuple_clip_indices
from CtP.transforms import FinetuneAugmentation


def permutations(tuple_len: int) -> np.ndarray:
    """All orders of ``tuple_len`` clips, in lexicographic order: ``[tuple_len!, tuple_len]``."""
    return np.array(list(itertools.permutations(range(tuple_len))), dtype=np.int64)


class VCOPHead(nn.Module):
    """Pairwise clip-feature fusion, then a linear classifier over the clip orders.

    Parameters
    ----------
    in_channels : int
        Channels of the backbone features (512 for R3D-18).
    tuple_len : int
        Clips per tuple; the head scores ``tuple_len!`` orders.
    hidden_channels : int
        Width of a pair's code (the reference: 512).
    dropout : float
        Dropout on the concatenated pair codes (the reference: 0.5).
    """

    def __init__(
        self, in_channels: int, tuple_len: int, hidden_channels: int = 512, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if tuple_len < 2 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"need tuple_len >= 2 and dropout in [0, 1), got {tuple_len} and {dropout}"
            )
        self.tuple_len = tuple_len
        self.num_classes = math.factorial(tuple_len)
        pairs = list(itertools.combinations(range(tuple_len), 2))
        self.pairs: Tensor  # [2P]: (i, j) of every pair i < j, flattened
        self.register_buffer("pairs", torch.tensor(pairs).flatten(), persistent=False)
        self.fc1 = nn.Linear(2 * in_channels, hidden_channels)
        self.fc2 = nn.Linear(len(pairs) * hidden_channels, self.num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc2.weight, mean=0.0, std=0.001)
        for bias in (self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(bias)

    def forward(self, feats: Tensor) -> Tensor:
        """Score the orders of B tuples from their clips' features ``[B * N, C, T', H', W']``."""
        clip_feats = feats.flatten(2).mean(dim=2)  # [B*N, C]
        clip_feats = clip_feats.view(-1, self.tuple_len, clip_feats.shape[1])  # [B, N, C]
        pair_feats = clip_feats.index_select(1, self.pairs)  # [B, 2P, C]
        b, c = pair_feats.shape[0], pair_feats.shape[2]
        codes = self.relu(self.fc1(pair_feats.reshape(b, -1, 2 * c)))  # [B, P, hidden]
        return self.fc2(self.dropout(codes.flatten(1)))  # [B, N!]


class VCOP(nn.Module):
    """The VCOP pretext model: ``backbone`` then ``head``; ``forward`` returns losses.

    Parameters
    ----------
    backbone : R3D
        The shared backbone (the reference VCOP uses the fine-tuning strides).
    head : VCOPHead
        The order classifier.
    """

    def __init__(self, backbone: R3D, head: VCOPHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, imgs: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """Compute the order-classification losses of shuffled tuples.

        Parameters
        ----------
        imgs : Tensor
            Shuffled tuples ``[B, N, 3, T, H, W]`` (N = ``tuple_len``).
        gt_labels : Tensor
            ``[B]`` index of each tuple's permutation in :func:`permutations`.

        Returns
        -------
        dict[str, Tensor]
            ``loss_cls``, ``accuracy`` and ``trivial_loss`` (ln N!).
        """
        if imgs.dim() != 6 or imgs.shape[1] != self.head.tuple_len:
            raise ValueError(
                f"VCOP expects tuples [B, {self.head.tuple_len}, 3, T, H, W], "
                f"got {tuple(imgs.shape)}"
            )
        # [B*N, 3, T, H, W], in channels_last_3d: the faster layout on the CPU and on CUDA
        clips = imgs.flatten(0, 1).contiguous(memory_format=torch.channels_last_3d)
        return pretext_classification_losses(self.head(self.backbone(clips)), gt_labels)


class VCOPDataset(SkippingDataset):
    """One shuffled clip tuple per video, labelled by its permutation (drawn uniformly).

    Parameters
    ----------
    annotations, source
        The videos (labels are ignored) and where their frames come from.
    augmentation
        ``(frames, rng) -> [3, T, S, S]``, applied once to all the tuple's frames (same crop).
    clip_len, tuple_len, interval
        See :func:`CtP.sampling.tuple_clip_indices`.
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
        tuple_len: int = 3,
        interval: tuple[int, int] = (8, 8),
        seed: int = 0,
    ) -> None:
        super().__init__(annotations, source, seed)
        self.augmentation = augmentation
        self.clip_len, self.tuple_len, self.interval = clip_len, tuple_len, interval
        self.orders = permutations(tuple_len)

    def _make(self, index: int, rng: np.random.Generator) -> dict[str, Tensor]:
        def choose(n: int) -> np.ndarray:
            indices = tuple_clip_indices(n, self.clip_len, self.tuple_len, self.interval, rng)
            return indices.reshape(-1)

        frames = self.source.read_clip(self.annotations[index].name, choose)  # [N*T, H, W, 3]
        clips = self.augmentation(frames, rng)  # [3, N*T, S, S]
        clips = clips.unflatten(1, (self.tuple_len, self.clip_len)).transpose(0, 1)  # [N,3,T,S,S]
        label = int(rng.integers(len(self.orders)))
        shuffled = clips[torch.from_numpy(self.orders[label])].contiguous()
        return {"imgs": shuffled, "gt_labels": torch.tensor(label)}


@dataclass(frozen=True)
class VCOPRecipe:
    """How the VCOP pretext is set up (conf/pretext/vcop.yaml); defaults are the reference's.

    Parameters
    ----------
    tuple_len
        Clips per tuple (the reference: 3, so 6 orders).
    interval
        Smallest and largest gap between clips, in frames (the reference: 8 and 8).
    dropout
        Dropout of the head (the reference: 0.5).
    size
        ``(width, height)`` the frames are resized to before the random crop, at the 112-pixel
        reference crop (the reference: 171 x 128; no flip, no colour change).
    zero_init_residual
        Start every backbone block as its shortcut (the reference: no; see
        :class:`CtP.backbone.R3D`).
    """

    name: ClassVar[str] = "vcop"
    tuple_len: int = 3
    interval: tuple[int, int] = (8, 8)
    dropout: float = 0.5
    size: tuple[int, int] = (171, 128)
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if self.tuple_len < 2 or not 0 <= self.interval[0] <= self.interval[1]:
            raise ValueError(
                f"vcop needs tuple_len >= 2 and 0 <= interval[0] <= interval[1], "
                f"got {self.tuple_len} and {self.interval}"
            )

    def build_model(self, *, width: int, clip_len: int) -> VCOP:
        """Build a freshly initialised VCOP model (any ``clip_len``: features are pooled)."""
        backbone = r3d_18(width=width, mode="finetune", zero_init_residual=self.zero_init_residual)
        channels = backbone.out_channels
        return VCOP(backbone, VCOPHead(channels, self.tuple_len, channels, self.dropout))

    def dataset(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        *,
        clip_len: int,
        crop_size: int,
        seed: int,
    ) -> VCOPDataset:
        """Build the VCOP dataset of ``crop_size`` clips over ``annotations``."""
        augmentation = FinetuneAugmentation(
            crop_size=crop_size, sizes=(self.size,), flip_prob=0.0,
            brightness_prob=0.0, contrast_prob=0.0, hue_sat_prob=0.0,
        )  # fmt: skip
        return VCOPDataset(
            annotations, source, augmentation, clip_len=clip_len, tuple_len=self.tuple_len,
            interval=self.interval, seed=seed,
        )  # fmt: skip
