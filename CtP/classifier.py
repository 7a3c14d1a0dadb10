"""Fine-tuning model for action recognition: R3D backbone, global average pooling, linear head.

This is the TSN recogniser of the CtP code: ``backbone`` (fine-tuning strides), a parameter-free
spatio-temporal average pool, then ``cls_head`` (dropout and ``fc_cls``). Its state dict is the
120 ``backbone.*`` entries followed by ``cls_head.fc_cls.weight`` and ``cls_head.fc_cls.bias``.

The video-level metrics of the test protocol (reference §7.1) live here too: clip logits are
averaged per video, then top-k accuracy and mean class accuracy are read off the video scores.
So does the loss of the classification pretexts (VCOP, Speed): cross-entropy, with the loss of
the trivial prediction (uniform scores: ln of the number of classes) beside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from CtP.backbone import R3D, r3d_18


class ClsHead(nn.Module):
    """Dropout then a linear classifier initialised with N(0, 0.001) weights and zero bias.

    Parameters
    ----------
    in_channels : int
        Feature channels.
    num_classes : int
        Number of action classes.
    dropout : float
        Dropout probability before ``fc_cls``.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map pooled features ``[B, C]`` to logits ``[B, num_classes]``."""
        return self.fc_cls(self.dropout(x))


class Classifier(nn.Module):
    """Clip classifier: backbone, global average pooling over (T, H, W), ``cls_head``.

    Parameters
    ----------
    backbone : R3D
        Backbone, usually with the fine-tuning strides.
    num_classes : int
        Number of action classes.
    dropout : float
        Dropout probability before the final linear layer.
    """

    def __init__(self, backbone: R3D, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool3d(1)  # no parameters: any clip size works
        self.cls_head = ClsHead(backbone.out_channels, num_classes, dropout)

    def forward(self, imgs: Tensor) -> Tensor:
        """Classify clips.

        Parameters
        ----------
        imgs : Tensor
            Clips ``[B, 3, T, H, W]``.

        Returns
        -------
        Tensor
            Logits ``[B, num_classes]``.
        """
        feats = self.backbone(imgs)  # [B, C, T', H', W']
        pooled = self.pool(feats).flatten(1)  # [B, C]
        return self.cls_head(pooled)

    def losses(self, imgs: Tensor, label: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of the clip logits.

        Parameters
        ----------
        imgs : Tensor
            Clips ``[B, 3, T, H, W]``.
        label : Tensor
            0-based class indices ``[B]`` (annotation labels are 1-based: subtract 1).

        Returns
        -------
        dict[str, Tensor]
            ``{"loss_cls": scalar}``.
        """
        logits = self(imgs)  # [B, num_classes]
        if label.shape != logits.shape[:1]:
            raise ValueError(f"label must be [B={logits.shape[0]}], got {tuple(label.shape)}")
        return {"loss_cls": F.cross_entropy(logits.float(), label.long())}


def pretext_classification_losses(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Cross-entropy of a classification pretext, its accuracy and its trivial loss.

    Parameters
    ----------
    logits : Tensor
        ``[B, K]`` scores over the pretext's K classes.
    labels : Tensor
        ``[B]`` 0-based classes, drawn uniformly by the pretext's sampler.

    Returns
    -------
    dict[str, Tensor]
        ``loss_cls`` (trained on), ``accuracy`` and ``trivial_loss`` = ln K, the cross-entropy of
        uniform scores, which is what a model that has learned nothing scores on uniform labels
        (both measurements, without gradient).
    """
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [B={logits.shape[0]}], got {tuple(labels.shape)}")
    logits = logits.float()
    with torch.no_grad():
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        trivial = torch.full((), math.log(logits.shape[1]), device=logits.device)  # no copy
    loss = F.cross_entropy(logits, labels.long())
    return {"loss_cls": loss, "accuracy": accuracy, "trivial_loss": trivial}


def build_classifier(*, width: int = 64, num_classes: int, dropout: float = 0.5) -> Classifier:
    """Build the fine-tuning classifier on an R3D-18 with the fine-tuning strides.

    Parameters
    ----------
    width : int
        Backbone width (64 is R3D-18).
    num_classes : int
        Number of action classes (101 for UCF-101, 51 for HMDB-51).
    dropout : float
        Dropout probability before ``fc_cls``.

    Returns
    -------
    Classifier
        A freshly initialised model; load pre-trained weights with
        :func:`CtP.backbone.load_backbone`.
    """
    return Classifier(r3d_18(width=width, mode="finetune"), num_classes, dropout)


def average_clip_scores(clip_scores: Tensor) -> Tensor:
    """Average the clip logits of every video (reference §7.1: 10 clips per test video).

    Parameters
    ----------
    clip_scores : Tensor
        Logits ``[N, K, C]`` of the ``K`` clips of ``N`` videos.

    Returns
    -------
    Tensor
        Video scores ``[N, C]``. Softmax after averaging, as the original does, changes no
        ranking, so the scores are left as averaged logits.
    """
    if clip_scores.dim() != 3:
        raise ValueError(
            f"clip scores must be [videos, clips, classes], got {tuple(clip_scores.shape)}"
        )
    return clip_scores.float().mean(dim=1)


def _check_scores(scores: Tensor, labels: Tensor) -> None:
    if scores.dim() != 2 or labels.shape != scores.shape[:1] or len(labels) == 0:
        raise ValueError(
            f"need scores [N, C] and labels [N] with N >= 1, got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )


def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Percentage of videos whose label is among their ``k`` highest scores.

    Parameters
    ----------
    scores : Tensor
        Video scores ``[N, C]``.
    labels : Tensor
        0-based labels ``[N]``.
    k : int
        How many of the best classes count (clamped to ``C``).

    Returns
    -------
    float
        Top-k accuracy in percent.
    """
    _check_scores(scores, labels)
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # [N, k]
    hits = (top == labels.long()[:, None]).any(dim=1)
    return 100.0 * hits.double().mean().item()


def mean_class_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of every class that has test videos, averaged over those classes.

    Parameters
    ----------
    scores : Tensor
        Video scores ``[N, C]``.
    labels : Tensor
        0-based labels ``[N]``.

    Returns
    -------
    float
        Mean per-class accuracy in percent (each class weighs the same, whatever its size).
    """
    _check_scores(scores, labels)
    labels = labels.long()
    correct = (scores.argmax(dim=1) == labels).double()  # [N]
    classes = labels.unique()
    per_class = torch.stack([correct[labels == c].mean() for c in classes])
    return 100.0 * per_class.mean().item()


def video_accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """Compute the video-level metrics of the fine-tuning test (reference §7.1).

    Parameters
    ----------
    scores : Tensor
        Video scores ``[N, C]`` (averaged clip logits).
    labels : Tensor
        0-based labels ``[N]``.

    Returns
    -------
    dict[str, float]
        ``{"top1", "top5", "mean_class_accuracy"}``, in percent.
    """
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class_accuracy": mean_class_accuracy(scores, labels),
    }
