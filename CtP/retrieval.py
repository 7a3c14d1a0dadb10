"""Video retrieval with frozen features: the R@k protocol of the reference (§7.2).

A :class:`RetrievalModel` is the backbone with the fine-tuning strides followed by an adaptive
average pool to ``(2, 3, 3)`` and a flatten: ``8w * 18`` features per clip (9,216 at width 64).
It runs in eval mode, so BatchNorm uses the checkpoint's running statistics. A video's feature is
the mean over its uniformly spaced clips (:class:`CtP.datasets.MultiClipDataset`); each test video
(query) ranks the train videos (gallery) by cosine similarity, and it counts as a hit at ``k`` when
one of its ``k`` nearest gallery videos has its class. The reference divides the dot product by
the gallery norm only; the query norm is the same for all of a query's candidates, so both rank
alike. Videos marked invalid (unreadable) are left out of both sides, and counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from CtP.backbone import R3D, load_backbone, r3d_18
from CtP.train import make_loader, predict_videos

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 20, 50)  # reference §7.2
POOL_SIZE = (2, 3, 3)  # reference §7.2: (T, H, W) of the adaptive pool
QUERY_CHUNK = 1024  # queries ranked at a time: bounds the similarity matrix's memory


class RetrievalModel(nn.Module):
    """Clip features for retrieval: backbone, adaptive average pool, flatten.

    Parameters
    ----------
    backbone : R3D
        The backbone, normally with the fine-tuning strides (``r3d_18(mode="finetune")``).
    pool_size : tuple[int, int, int]
        Output ``(T, H, W)`` of the adaptive average pool.
    """

    def __init__(self, backbone: R3D, pool_size: tuple[int, int, int] = POOL_SIZE) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool3d(pool_size)
        self.feature_dim = backbone.out_channels * math.prod(pool_size)
        self.eval()

    def forward(self, imgs: Tensor) -> Tensor:
        """Extract clip features.

        Parameters
        ----------
        imgs : Tensor
            Clips ``[B, 3, T, H, W]``.

        Returns
        -------
        Tensor
            Features ``[B, 8w * 2 * 3 * 3]``.
        """
        feats = self.backbone(imgs)  # [B, 8w, T', H', W']
        return self.pool(feats).flatten(1)  # [B, 8w * 18]


def build_retrieval_model(
    state: Mapping[str, Tensor | np.ndarray] | None, *, width: int = 64
) -> RetrievalModel:
    """Build a retrieval model with the fine-tuning strides, loaded with backbone weights.

    Parameters
    ----------
    state : Mapping[str, Tensor | np.ndarray] or None
        The 120 backbone tensors (names without ``backbone.``); None keeps a random backbone.
    width : int
        Backbone width; with a ``state`` it is read off ``stem.conv.weight`` instead.

    Returns
    -------
    RetrievalModel
        The model, in eval mode, on the CPU.
    """
    if state is not None and "stem.conv.weight" in state:
        width = int(state["stem.conv.weight"].shape[0])
    model = RetrievalModel(r3d_18(width=width, mode="finetune"))
    if state is not None:
        load_backbone(model, state)
    return model


@dataclass
class VideoFeatures:
    """Per-video features in dataset order, with the mask of videos that could be read."""

    feats: Tensor  # [N, D] float32, mean over the video's clips
    labels: Tensor  # [N] 0-based
    valid: Tensor  # [N] bool

    @property
    def left_out(self) -> int:
        """Number of videos marked invalid (unreadable)."""
        return int((~self.valid.bool()).sum())

    def kept(self) -> tuple[Tensor, Tensor]:
        """Features ``[M, D]`` and labels ``[M]`` of the valid videos only."""
        mask = self.valid.bool()
        return self.feats[mask], self.labels[mask]


def extract_features(
    model: nn.Module,
    dataset: Dataset[dict[str, Tensor]],
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> VideoFeatures:
    """Compute every video's feature: the mean of its clip features.

    Parameters
    ----------
    model : nn.Module
        ``[B, 3, T, S, S] -> [B, D]``, e.g. a :class:`RetrievalModel`; it is put in eval mode
        and moved to ``device``.
    dataset : Dataset
        A :class:`CtP.datasets.MultiClipDataset` (samples ``imgs [K, 3, T, S, S]``, ``label``,
        ``valid``).
    device : torch.device
        Where to run the model.
    batch_size : int
        Videos per batch (each brings its ``K`` clips).
    workers : int
        DataLoader worker processes.
    bf16, channels_last : bool
        bf16 autocast (on CUDA only) and the channels_last_3d layout (any device).
    progress : bool
        Show a progress bar.
    desc : str
        Label of the progress bar.

    Returns
    -------
    VideoFeatures
        Features ``[N, D]``, labels and validity, in dataset order.
    """
    on_cuda = device.type == "cuda"
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    loader = make_loader(
        dataset, batch_size=batch_size, workers=workers, shuffle=False, pin_memory=on_cuda
    )
    feats, labels, valid = predict_videos(
        model, loader, device=device, bf16=bf16, channels_last=channels_last,
        progress=progress, desc=desc,
    )  # fmt: skip
    return VideoFeatures(feats=feats, labels=labels, valid=valid)


def recall_at_k(
    query_feats: Tensor,
    query_labels: Tensor,
    gallery_feats: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[int, float]:
    """Recall at k: the share of queries with a same-class video among their k nearest.

    Parameters
    ----------
    query_feats : Tensor
        Query features ``[Q, D]``.
    query_labels : Tensor
        Query labels ``[Q]``.
    gallery_feats : Tensor
        Gallery features ``[G, D]``.
    gallery_labels : Tensor
        Gallery labels ``[G]``.
    ks : Sequence[int]
        The cut-offs; a ``k`` above ``G`` looks at the whole gallery.

    Returns
    -------
    dict[int, float]
        ``{k: R@k}`` in percent. Neighbours are ranked by cosine similarity.
    """
    if query_feats.dim() != 2 or gallery_feats.dim() != 2:
        raise ValueError("query and gallery features must be [N, D] matrices")
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"query features have {query_feats.shape[1]} dimensions, "
            f"gallery features {gallery_feats.shape[1]}"
        )
    if len(query_labels) != len(query_feats) or len(gallery_labels) != len(gallery_feats):
        raise ValueError("every feature needs exactly one label")
    if len(query_feats) == 0 or len(gallery_feats) == 0 or not ks or min(ks) < 1:
        raise ValueError("recall needs at least one query, one gallery video and positive ks")
    depth = min(max(ks), len(gallery_feats))
    gallery = F.normalize(gallery_feats.float(), dim=1)  # [G, D]
    gallery_labels = gallery_labels.to(gallery.device)
    first_hit = []  # rank (0-based) of each query's first same-class neighbour; max(ks) if none
    for start in range(0, len(query_feats), QUERY_CHUNK):
        queries = F.normalize(query_feats[start : start + QUERY_CHUNK].float(), dim=1)
        queries = queries.to(gallery.device)  # [q, D]
        nearest = (queries @ gallery.T).topk(depth, dim=1).indices  # [q, depth]
        labels = query_labels[start : start + QUERY_CHUNK].to(gallery.device)
        same = gallery_labels[nearest] == labels[:, None]  # [q, depth]
        ranks = torch.where(same.any(dim=1), same.int().argmax(dim=1), max(ks))
        first_hit.append(ranks.cpu())
    ranks = torch.cat(first_hit)  # [Q]
    return {k: 100.0 * (ranks < k).double().mean().item() for k in ks}


def retrieval_metrics(
    queries: VideoFeatures,
    gallery: VideoFeatures,
    ks: Sequence[int] = RECALL_KS,
    device: torch.device | None = None,
) -> dict[str, float]:
    """R@k of the valid queries against the valid gallery videos.

    Parameters
    ----------
    queries, gallery : VideoFeatures
        Test-split and train-split features; invalid videos are left out and logged.
    ks : Sequence[int]
        The cut-offs.
    device : torch.device or None
        Where to rank (the GPU for large splits); None ranks where the features are.

    Returns
    -------
    dict[str, float]
        ``{"R@1": ..., "R@5": ..., ...}`` in percent.
    """
    if queries.left_out or gallery.left_out:
        logger.warning(
            "retrieval leaves out %d unreadable query and %d unreadable gallery videos",
            queries.left_out,
            gallery.left_out,
        )
    query_feats, query_labels = queries.kept()
    gallery_feats, gallery_labels = gallery.kept()
    if len(query_feats) == 0 or len(gallery_feats) == 0:
        raise ValueError("no readable query or gallery video is left for retrieval")
    if device is not None:
        gallery_feats, gallery_labels = gallery_feats.to(device), gallery_labels.to(device)
    recall = recall_at_k(query_feats, query_labels, gallery_feats, gallery_labels, ks)
    return {f"R@{k}": value for k, value in recall.items()}


def evaluate_retrieval(
    model: nn.Module,
    queries: Dataset[dict[str, Tensor]],
    gallery: Dataset[dict[str, Tensor]],
    *,
    device: torch.device,
    ks: Sequence[int] = RECALL_KS,
    batch_size: int = 8,
    workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Extract query and gallery features, then compute R@k (reference §7.2).

    Parameters
    ----------
    model : nn.Module
        A :class:`RetrievalModel`.
    queries, gallery : Dataset
        :class:`CtP.datasets.MultiClipDataset` of the test split and of the train split.
    device : torch.device
        Where to run the model.
    ks : Sequence[int]
        The cut-offs.
    batch_size, workers, bf16, channels_last, progress
        As for :func:`extract_features`.

    Returns
    -------
    dict[str, float]
        ``{"R@1": ..., "R@5": ..., ...}`` in percent.
    """
    features = [
        extract_features(
            model,
            dataset,
            device=device,
            batch_size=batch_size,
            workers=workers,
            bf16=bf16,
            channels_last=channels_last,
            progress=progress,
            desc=f"retrieval: {role}",
        )
        for role, dataset in (("queries", queries), ("gallery", gallery))
    ]
    return retrieval_metrics(features[0], features[1], ks, device)
