"""The CtP (Catch-the-Patch) pretext model: R3D backbone, trajectory head, targets and loss.

Given a clip in which patches were pasted along known box trajectories, the model is queried
with each trajectory's frame-0 box and predicts one box delta per frame. Targets are the
centre offset from the query box in raw pixels and the log size ratio, standardised by
``target_means``/``target_stds``; the loss is a weighted smooth-L1 split into a centre part
(``loss_ctr``) and a size part (``loss_size``).

Every forward pass also reports ``trivial_loss``: the same loss for the prediction "nothing moves"
(all-zero standardised deltas) on the same batch. A model that has learned nothing sits at a ratio
``loss / trivial_loss`` of 1; the ratio is what tells whether the pretext task is being learned.

The head can start from the reference's initialisation (``fc1`` and ``pred_head`` drawn from
N(0, 0.001)) or, with ``head_init="live"``, keep PyTorch's default initialisation for ``fc1``
(uniform, scaled by its fan-in), whose ReLU units stay alive long enough for the backbone to
receive a useful gradient (docs/differences.md has the measurement).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from CtP.backbone import R3D, r3d_18

TARGET_MEANS = (0.0, 0.0, 0.0, 0.0)
TARGET_STDS = (0.8, 0.8, 0.04, 0.04)  # (dx, dy, dlogw, dlogh)
HEAD_INITS = ("reference", "live")
HeadInit = Literal["reference", "live"]


def _stats(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)  # a tensor: no copy


def _centres_sizes(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``[..., 4]`` (x1, y1, x2, y2) boxes into centres and sizes clamped to >= 1 pixel."""
    centres = (boxes[..., 0:2] + boxes[..., 2:4]) * 0.5
    sizes = (boxes[..., 2:4] - boxes[..., 0:2]).clamp(min=1.0)
    return centres, sizes


def encode_targets(
    gt_trajs: Tensor, means: Sequence[float] | Tensor, stds: Sequence[float] | Tensor
) -> Tensor:
    """Encode box trajectories as standardised deltas from each trajectory's frame-0 box.

    Parameters
    ----------
    gt_trajs : Tensor
        Boxes ``[B, N, T, 4]`` as (x1, y1, x2, y2) in input pixels.
    means, stds : sequence of four floats, or tensors ``[4]``
        Standardisation of (dx, dy, dlogw, dlogh).

    Returns
    -------
    Tensor
        ``[B, N, T, 4]``: ((c_t - c_0), log(s_t / s_0)) minus ``means``, over ``stds``;
        frame 0 encodes to ``-means / stds`` (zero for the default means).
    """
    centres, sizes = _centres_sizes(gt_trajs)  # [B, N, T, 2] each
    ctr_deltas = centres - centres[:, :, :1]
    size_deltas = sizes.log() - sizes[:, :, :1].log()
    deltas = torch.cat((ctr_deltas, size_deltas), dim=-1)  # [B, N, T, 4]
    return (deltas - _stats(means, deltas)) / _stats(stds, deltas)


def decode_predictions(
    deltas: Tensor,
    query_boxes: Tensor,
    means: Sequence[float] | Tensor,
    stds: Sequence[float] | Tensor,
) -> Tensor:
    """Turn standardised deltas back into boxes (the inverse of :func:`encode_targets`).

    Parameters
    ----------
    deltas : Tensor
        ``[..., T, 4]`` standardised (dx, dy, dlogw, dlogh).
    query_boxes : Tensor
        ``[..., 4]`` frame-0 boxes (x1, y1, x2, y2).
    means, stds : sequence of four floats, or tensors ``[4]``
        The standardisation used for the targets.

    Returns
    -------
    Tensor
        Boxes ``[..., T, 4]`` as (x1, y1, x2, y2).
    """
    deltas = deltas * _stats(stds, deltas) + _stats(means, deltas)
    centres, sizes = _centres_sizes(query_boxes.unsqueeze(-2))  # [..., 1, 2] each
    pred_centres = centres + deltas[..., 0:2]
    pred_sizes = sizes * deltas[..., 2:4].exp()
    return torch.cat((pred_centres - 0.5 * pred_sizes, pred_centres + 0.5 * pred_sizes), dim=-1)


def trajectory_losses(deltas: Tensor, targets: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """Weighted smooth-L1 (beta 1) between predicted and target deltas.

    Parameters
    ----------
    deltas, targets : Tensor
        ``[B, N, T, 4]`` standardised (dx, dy, dlogw, dlogh).
    weights : Tensor
        ``[B, N, T]`` per trajectory-frame weights (all ones in CtP).

    Returns
    -------
    dict[str, Tensor]
        ``loss_ctr`` (the dx, dy terms) and ``loss_size`` (the dlogw, dlogh terms), each summed
        and divided by the number of weighted trajectory-frames (the sum of ``weights``, at
        least 1), which is ``B * N * T`` for all-ones weights.
    """
    diff = F.smooth_l1_loss(deltas.float(), targets.float(), reduction="none", beta=1.0)
    diff = diff * weights.float().unsqueeze(-1)  # [B, N, T, 4]
    count = weights.detach().float().sum().clamp(min=1.0)
    return {"loss_ctr": diff[..., 0:2].sum() / count, "loss_size": diff[..., 2:4].sum() / count}


def trivial_loss(targets: Tensor, weights: Tensor) -> Tensor:
    """Return the loss of predicting "nothing moves" (all-zero deltas), without gradient.

    Parameters
    ----------
    targets : Tensor
        ``[B, N, T, 4]`` standardised (dx, dy, dlogw, dlogh).
    weights : Tensor
        ``[B, N, T]`` per trajectory-frame weights.

    Returns
    -------
    Tensor
        A scalar: ``loss_ctr + loss_size`` of a zero prediction, in the same units as the
        training loss.
    """
    with torch.no_grad():
        terms = trajectory_losses(torch.zeros_like(targets), targets, weights)
        return terms["loss_ctr"] + terms["loss_size"]


class CtPHead(nn.Module):
    """Trajectory head: temporal collapse, RoIAlign on the query boxes, then a two-layer MLP.

    Parameters
    ----------
    in_channels : int
        Channels of the backbone features.
    in_temporal_size : int
        Temporal size T' of the backbone features (``clip_len // 8``); collapsed to 1.
    hidden_channels : int
        Channels after the temporal convolution and width of the MLP.
    roi_feat_size : int
        RoIAlign output size (square).
    spatial_stride : int
        Total spatial stride of the backbone (8 with the pre-training strides).
    num_pred_frames : int
        Frames predicted per query (the clip length).
    target_means, target_stds : sequence of four floats
        Standardisation of the targets; plain attributes (and the buffers ``target_mean``
        and ``target_std``), not part of the state dict.
    init : {"reference", "live"}
        ``"reference"``: ``fc1`` and ``pred_head`` weights from N(0, 0.001), as the original;
        ``"live"``: ``fc1`` keeps PyTorch's default (uniform, bound ``1 / sqrt(fan_in)``),
        ``pred_head`` is the reference's. Biases start at zero either way.
    """

    target_mean: Tensor  # [4]
    target_std: Tensor  # [4]

    def __init__(
        self,
        *,
        in_channels: int = 512,
        in_temporal_size: int = 2,
        hidden_channels: int = 512,
        roi_feat_size: int = 5,
        spatial_stride: int = 8,
        num_pred_frames: int = 16,
        target_means: Sequence[float] = TARGET_MEANS,
        target_stds: Sequence[float] = TARGET_STDS,
        init: HeadInit = "reference",
    ) -> None:
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"head init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
        if len(target_means) != 4 or len(target_stds) != 4 or min(target_stds) <= 0:
            raise ValueError(
                f"target_means/target_stds need four values (stds > 0), "
                f"got {tuple(target_means)} / {tuple(target_stds)}"
            )
        self.in_temporal_size = in_temporal_size
        self.roi_feat_size = roi_feat_size
        self.spatial_stride = spatial_stride
        self.num_pred_frames = num_pred_frames
        self.target_means = tuple(float(m) for m in target_means)
        self.target_stds = tuple(float(s) for s in target_stds)
        # the same values as tensors that move with the model (not in the state dict): the
        # loss reads them every step, and a tensor made from Python values is a copy each time
        self.register_buffer("target_mean", torch.tensor(self.target_means), persistent=False)
        self.register_buffer("target_std", torch.tensor(self.target_stds), persistent=False)
        self.temporal_conv = nn.Conv3d(
            in_channels, hidden_channels, (in_temporal_size, 1, 1), bias=True
        )
        self.fc1 = nn.Linear(hidden_channels * roi_feat_size**2, hidden_channels)
        self.pred_head = nn.Linear(hidden_channels, num_pred_frames * 4)
        self.relu = nn.ReLU(inplace=True)
        self._init_weights(init)

    def _init_weights(self, init: HeadInit) -> None:
        nn.init.kaiming_normal_(self.temporal_conv.weight, mode="fan_out", nonlinearity="relu")
        # "live" keeps nn.Linear's own init of fc1, drawn when it was built
        fc_layers = (self.fc1, self.pred_head) if init == "reference" else (self.pred_head,)
        for fc in fc_layers:
            nn.init.normal_(fc.weight, mean=0.0, std=0.001)
        for bias in (self.temporal_conv.bias, self.fc1.bias, self.pred_head.bias):
            nn.init.zeros_(cast(Tensor, bias))

    def forward(self, feats: Tensor, rois: Tensor) -> Tensor:
        """Predict one standardised box delta per frame for every query RoI.

        Parameters
        ----------
        feats : Tensor
            Backbone features ``[B, C, T', H', W']``.
        rois : Tensor
            ``[K, 5]`` rows of (batch index, x1, y1, x2, y2) in input pixels.

        Returns
        -------
        Tensor
            ``[K, num_pred_frames, 4]`` standardised (dx, dy, dlogw, dlogh).
        """
        if feats.dim() != 5 or feats.shape[2] != self.in_temporal_size:
            raise ValueError(
                f"CtPHead expects features [B, C, {self.in_temporal_size}, H, W] "
                f"(clip_len = {8 * self.in_temporal_size}), got {tuple(feats.shape)}"
            )
        x = self.relu(self.temporal_conv(feats).squeeze(2))  # [B, hidden, H', W']
        # RoIAlign in fp32: box coordinates lose whole pixels in bf16.
        roi_feats = roi_align(
            x.float(),
            rois.float(),
            output_size=self.roi_feat_size,
            spatial_scale=1.0 / self.spatial_stride,
            sampling_ratio=2,
            aligned=True,
        ).to(x.dtype)  # [K, hidden, roi, roi]
        hidden = self.relu(self.fc1(roi_feats.flatten(1)))  # [K, hidden]
        return self.pred_head(hidden).view(rois.shape[0], self.num_pred_frames, 4)


class CtP(nn.Module):
    """Catch-the-Patch pretext model: ``backbone`` then ``head``; ``forward`` returns losses.

    Parameters
    ----------
    backbone : R3D
        Backbone with the pre-training strides (total spatial stride = ``head.spatial_stride``).
    head : CtPHead
        Trajectory head.
    """

    def __init__(self, backbone: R3D, head: CtPHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def predict_deltas(self, imgs: Tensor, query_boxes: Tensor) -> Tensor:
        """Predict the standardised deltas ``[B, N, T, 4]`` of query boxes ``[B, N, 4]``."""
        b, n = query_boxes.shape[:2]
        batch_idx = torch.arange(b, device=query_boxes.device, dtype=query_boxes.dtype)
        batch_idx = batch_idx.view(b, 1, 1).expand(b, n, 1)
        rois = torch.cat((batch_idx, query_boxes), dim=-1).reshape(b * n, 5)  # [B*N, 5]
        feats = self.backbone(imgs)  # [B, C, T', H', W']
        return self.head(feats, rois).view(b, n, self.head.num_pred_frames, 4)

    def forward(
        self, imgs: Tensor, gt_trajs: Tensor, gt_weights: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Compute the CtP losses for a batch of clips with pasted-patch trajectories.

        Parameters
        ----------
        imgs : Tensor
            Clips ``[B, 3, T, H, W]``.
        gt_trajs : Tensor
            Ground-truth boxes ``[B, N, T, 4]`` (x1, y1, x2, y2) in input pixels.
        gt_weights : Tensor, optional
            ``[B, N, T]`` per trajectory-frame weights; all ones when omitted.

        Returns
        -------
        dict[str, Tensor]
            ``loss_ctr`` and ``loss_size`` (scalars; the training loss is their sum) and
            ``trivial_loss``, the loss of an all-zero prediction on the same batch (no gradient).
        """
        b, _, t = imgs.shape[:3]
        if gt_trajs.dim() != 4 or gt_trajs.shape[0] != b or gt_trajs.shape[2:] != (t, 4):
            raise ValueError(
                f"gt_trajs must be [B={b}, N, T={t}, 4] boxes, got {tuple(gt_trajs.shape)}"
            )
        if t != self.head.num_pred_frames:
            raise ValueError(
                f"clips have {t} frames but the head predicts {self.head.num_pred_frames}"
            )
        if gt_weights is None:
            gt_weights = gt_trajs.new_ones(gt_trajs.shape[:3])
        elif gt_weights.shape != gt_trajs.shape[:3]:
            raise ValueError(
                f"gt_weights must be {tuple(gt_trajs.shape[:3])}, got {tuple(gt_weights.shape)}"
            )
        gt_trajs = gt_trajs.float()
        deltas = self.predict_deltas(imgs, gt_trajs[:, :, 0])  # [B, N, T, 4]
        targets = encode_targets(gt_trajs, self.head.target_mean, self.head.target_std)
        losses = trajectory_losses(deltas, targets, gt_weights)
        return losses | {"trivial_loss": trivial_loss(targets, gt_weights)}

    def predict(self, imgs: Tensor, query_boxes: Tensor) -> Tensor:
        """Predict the trajectories of query boxes through the clip.

        Parameters
        ----------
        imgs : Tensor
            Clips ``[B, 3, T, H, W]``.
        query_boxes : Tensor
            Frame-0 boxes ``[B, N, 4]`` (x1, y1, x2, y2) in input pixels.

        Returns
        -------
        Tensor
            Decoded boxes ``[B, N, T, 4]``.
        """
        query_boxes = query_boxes.float()
        deltas = self.predict_deltas(imgs, query_boxes).float()
        return decode_predictions(deltas, query_boxes, self.head.target_mean, self.head.target_std)


def build_ctp(
    *,
    width: int = 64,
    clip_len: int = 16,
    target_stds: Sequence[float] = TARGET_STDS,
    head_init: HeadInit = "reference",
) -> CtP:
    """Build the CtP pretext model on an R3D-18 with the pre-training strides.

    Parameters
    ----------
    width : int
        Backbone width (64 is R3D-18).
    clip_len : int
        Frames per clip; a positive multiple of 8.
    target_stds : sequence of four floats
        Standardisation of (dx, dy, dlogw, dlogh).
    head_init : {"reference", "live"}
        Initialisation of the head's fully connected layers (see :class:`CtPHead`).

    Returns
    -------
    CtP
        A freshly initialised model (backbone then head).
    """
    if clip_len < 8 or clip_len % 8:
        raise ValueError(f"clip_len must be a positive multiple of 8, got {clip_len}")
    backbone = r3d_18(width=width, mode="pretrain")
    head = CtPHead(
        in_channels=backbone.out_channels,
        in_temporal_size=clip_len // 8,
        hidden_channels=backbone.out_channels,
        num_pred_frames=clip_len,
        target_stds=target_stds,
        init=head_init,
    )
    return CtP(backbone, head)
