"""R3D-18 backbone with the CtP state-dict layout, and strict loading of backbone weights.

The network is the 3-D ResNet-18 of Tran et al. (CVPR 2018) as the CtP code builds it: every
convolution is bias-free and wrapped in a one-child ``nn.Sequential`` whose child is named
``conv`` (so keys end in ``.conv.weight``), every BatchNorm has ``eps=1e-3``, the stem has no
max-pool, and the network returns the last stage's 5-D feature map. The 120 state-dict entries
(names, order and shapes) are exactly those of the published checkpoints, so their weights load
by name. Strides never change a weight shape: a pre-training state dict loads into a
fine-tuning backbone and vice versa.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

Downsampling = tuple[bool, bool, bool, bool]

# (spatial, temporal) down-sampling of block 0 in layer1..layer4.
PRETRAIN_DOWNSAMPLING: tuple[Downsampling, Downsampling] = (
    (False, True, True, False),  # layer4 keeps stride 8: a 14x14 map for 112x112 clips
    (False, True, True, True),
)
FINETUNE_DOWNSAMPLING: tuple[Downsampling, Downsampling] = (
    (False, True, True, True),
    (False, True, True, True),
)

BN_EPS = 1e-3
BN_MOMENTUM = 0.1
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def _batch_norm(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvUnit(nn.Sequential):
    """Bias-free Conv3d wrapped so that its weight is stored as ``<name>.conv.weight``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size, stride, padding : tuple[int, int, int]
        (temporal, height, width) geometry of the convolution.
    """

    conv: nn.Conv3d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        stride: tuple[int, int, int],
        padding: tuple[int, int, int],
    ) -> None:
        conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        super().__init__(OrderedDict(conv=conv))


class Stem(nn.Sequential):
    """Conv 3x7x7 (stride 1,2,2), BN, ReLU; no max-pool.

    Parameters
    ----------
    out_channels : int
        Channels of the stem (the backbone width).
    """

    conv: nn.Conv3d
    bn: nn.BatchNorm3d

    def __init__(self, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv3d(3, out_channels, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                bn=_batch_norm(out_channels),
                relu=nn.ReLU(inplace=True),
            )
        )


class BasicBlock(nn.Module):
    """Residual block: two 3x3x3 convolutions, with a 1x1x1 projection shortcut when needed.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels entering and leaving the block.
    stride : tuple[int, int, int]
        (temporal, height, width) stride of ``conv1`` and of the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = ConvUnit(in_channels, out_channels, (3, 3, 3), stride, (1, 1, 1))
        self.bn1 = _batch_norm(out_channels)
        self.conv2 = ConvUnit(out_channels, out_channels, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        self.bn2 = _batch_norm(out_channels)
        projected = stride != (1, 1, 1) or in_channels != out_channels
        # Identity modules hold no state, so blocks without a projection add no keys.
        self.downsample: nn.Module = (
            ConvUnit(in_channels, out_channels, (1, 1, 1), stride, (0, 0, 0))
            if projected
            else nn.Identity()
        )
        self.downsample_bn: nn.Module = _batch_norm(out_channels) if projected else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample_bn(self.downsample(x)))


class R3D(nn.Module):
    """R3D-18 trunk (stem + four residual stages, no pooling, no classifier).

    Parameters
    ----------
    width : int
        Channels of the stem and layer1; the stages have (w, 2w, 4w, 8w) channels. 64 is R3D-18.
    spatial_downsampling, temporal_downsampling : tuple of four bools
        Whether block 0 of layer1..layer4 strides by 2 in space / in time.
    zero_init_residual : bool
        Start every block's last BatchNorm at weight 0, so each block begins as its shortcut
        (Goyal et al., 2017). The original's R3D does not (``zero_init_residual=False``).

    Notes
    -----
    For a ``[B, 3, T, H, W]`` clip the output is ``[B, 8w, T/8, H/8, W/8]`` with the
    pre-training strides and ``[B, 8w, T/8, H/16, W/16]`` with the fine-tuning strides.
    """

    def __init__(
        self,
        *,
        width: int = 64,
        spatial_downsampling: Downsampling = PRETRAIN_DOWNSAMPLING[0],
        temporal_downsampling: Downsampling = PRETRAIN_DOWNSAMPLING[1],
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"R3D width must be a positive integer (64 is R3D-18), got {width!r}")
        for name, flags in (("spatial", spatial_downsampling), ("temporal", temporal_downsampling)):
            if len(flags) != len(BLOCKS_PER_STAGE):
                raise ValueError(f"{name}_downsampling needs one flag per stage (4), got {flags!r}")
        self.out_channels = 8 * width
        self.stem = Stem(width)
        stages = []
        in_channels = width
        for i, num_blocks in enumerate(BLOCKS_PER_STAGE):
            out_channels = width * 2**i
            stride = (
                2 if temporal_downsampling[i] else 1,
                2 if spatial_downsampling[i] else 1,
                2 if spatial_downsampling[i] else 1,
            )
            blocks = [BasicBlock(in_channels, out_channels, stride)]
            blocks += [
                BasicBlock(out_channels, out_channels, (1, 1, 1)) for _ in range(num_blocks - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for block in (m for m in self.modules() if isinstance(m, BasicBlock)):
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Extract the last stage's feature map.

        Parameters
        ----------
        x : Tensor
            Clips ``[B, 3, T, H, W]``.

        Returns
        -------
        Tensor
            Features ``[B, 8w, T', H', W']``.
        """
        x = self.stem(x)  # [B, w, T, H/2, W/2]
        x = self.layer1(x)  # [B, w, T, H/2, W/2]
        x = self.layer2(x)  # [B, 2w, T/2, H/4, W/4]
        x = self.layer3(x)  # [B, 4w, T/4, H/8, W/8]
        return self.layer4(x)  # [B, 8w, T/8, H/8 or H/16, ...]


def r3d_18(
    *,
    width: int = 64,
    mode: Literal["pretrain", "finetune"] = "pretrain",
    zero_init_residual: bool = False,
) -> R3D:
    """Build the R3D-18 backbone with the strides CtP uses for pre-training or fine-tuning.

    Parameters
    ----------
    width : int
        Stem channels (64 is R3D-18; small values make tiny test models).
    mode : {"pretrain", "finetune"}
        ``"pretrain"`` keeps layer4 spatially unstrided (total spatial stride 8);
        ``"finetune"`` strides every stage from layer2 on (total spatial stride 16).
    zero_init_residual : bool
        Start every residual block as its shortcut (see :class:`R3D`).

    Returns
    -------
    R3D
        A freshly initialised backbone.
    """
    strides = {"pretrain": PRETRAIN_DOWNSAMPLING, "finetune": FINETUNE_DOWNSAMPLING}
    if mode not in strides:
        raise ValueError(f"R3D mode must be 'pretrain' or 'finetune', got {mode!r}")
    spatial, temporal = strides[mode]
    return R3D(
        width=width, spatial_downsampling=spatial, temporal_downsampling=temporal,
        zero_init_residual=zero_init_residual,
    )  # fmt: skip


def backbone_state_spec(width: int = 64) -> list[tuple[str, tuple[int, ...]]]:
    """List the backbone's state-dict entries without allocating any weight.

    Parameters
    ----------
    width : int
        Backbone width (64 is R3D-18).

    Returns
    -------
    list of (str, tuple of int)
        The 120 ``(name, shape)`` pairs in state-dict order (names without ``backbone.``);
        ``num_batches_tracked`` entries have shape ``()``.
    """
    with torch.device("meta"):
        model = R3D(width=width)
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def _backbone_of(model: nn.Module) -> R3D:
    if isinstance(model, R3D):
        return model
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, R3D):
        raise TypeError(
            f"{type(model).__name__} has no R3D 'backbone' attribute to load weights into"
        )
    return backbone


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_backbone(model: nn.Module, state: Mapping[str, Tensor | np.ndarray]) -> None:
    """Load backbone weights into ``model`` (an ``R3D`` or a model with a ``backbone``) strictly.

    Parameters
    ----------
    model : nn.Module
        An ``R3D``, or a model (``CtP``, ``Classifier``) whose ``backbone`` attribute is one.
    state : Mapping[str, Tensor | np.ndarray]
        The 120 backbone tensors, named without the ``backbone.`` prefix.

    Raises
    ------
    ValueError
        If names are missing or unexpected, or shapes differ; nothing is loaded then.
    """
    backbone = _backbone_of(model)
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    tensors = {k: torch.as_tensor(v) for k, v in state.items() if k in expected}
    misshaped = [
        f"{k} {tuple(t.shape)} (expected {tuple(expected[k].shape)})"
        for k, t in tensors.items()
        if t.shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
        if misshaped:
            problems.append(f"mis-shaped {len(misshaped)}: {_listing(misshaped)}")
        hint = ""
        if any(k.startswith("backbone.") for k in unexpected):
            hint = " (strip the 'backbone.' prefix from the names first)"
        raise ValueError(
            f"backbone weights do not fit this R3D (width {backbone.out_channels // 8}): "
            + "; ".join(problems)
            + hint
        )
    backbone.load_state_dict(tensors, strict=True)
    logger.debug("loaded %d backbone tensors", len(tensors))
