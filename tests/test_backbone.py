"""R3D-18 backbone: the reference state-dict table, init, strides and output shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from CtP.backbone import (
    FINETUNE_DOWNSAMPLING,
    PRETRAIN_DOWNSAMPLING,
    R3D,
    backbone_state_spec,
    r3d_18,
)


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _conv(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.conv.weight", shape)]


# Reference §1.2, row by row (idx 0-119).
EXPECTED_BACKBONE: list[tuple[str, tuple[int, ...]]] = [
    ("stem.conv.weight", (64, 3, 3, 7, 7)),  # 0
    *_bn("stem.bn", 64),  # 1-5
    *_conv("layer1.0.conv1", (64, 64, 3, 3, 3)),  # 6
    *_bn("layer1.0.bn1", 64),  # 7-11
    *_conv("layer1.0.conv2", (64, 64, 3, 3, 3)),  # 12
    *_bn("layer1.0.bn2", 64),  # 13-17
    *_conv("layer1.1.conv1", (64, 64, 3, 3, 3)),  # 18
    *_bn("layer1.1.bn1", 64),  # 19-23
    *_conv("layer1.1.conv2", (64, 64, 3, 3, 3)),  # 24
    *_bn("layer1.1.bn2", 64),  # 25-29
    *_conv("layer2.0.conv1", (128, 64, 3, 3, 3)),  # 30
    *_bn("layer2.0.bn1", 128),  # 31-35
    *_conv("layer2.0.conv2", (128, 128, 3, 3, 3)),  # 36
    *_bn("layer2.0.bn2", 128),  # 37-41
    *_conv("layer2.0.downsample", (128, 64, 1, 1, 1)),  # 42
    *_bn("layer2.0.downsample_bn", 128),  # 43-47
    *_conv("layer2.1.conv1", (128, 128, 3, 3, 3)),  # 48
    *_bn("layer2.1.bn1", 128),  # 49-53
    *_conv("layer2.1.conv2", (128, 128, 3, 3, 3)),  # 54
    *_bn("layer2.1.bn2", 128),  # 55-59
    *_conv("layer3.0.conv1", (256, 128, 3, 3, 3)),  # 60
    *_bn("layer3.0.bn1", 256),  # 61-65
    *_conv("layer3.0.conv2", (256, 256, 3, 3, 3)),  # 66
    *_bn("layer3.0.bn2", 256),  # 67-71
    *_conv("layer3.0.downsample", (256, 128, 1, 1, 1)),  # 72
    *_bn("layer3.0.downsample_bn", 256),  # 73-77
    *_conv("layer3.1.conv1", (256, 256, 3, 3, 3)),  # 78
    *_bn("layer3.1.bn1", 256),  # 79-83
    *_conv("layer3.1.conv2", (256, 256, 3, 3, 3)),  # 84
    *_bn("layer3.1.bn2", 256),  # 85-89
    *_conv("layer4.0.conv1", (512, 256, 3, 3, 3)),  # 90
    *_bn("layer4.0.bn1", 512),  # 91-95
    *_conv("layer4.0.conv2", (512, 512, 3, 3, 3)),  # 96
    *_bn("layer4.0.bn2", 512),  # 97-101
    *_conv("layer4.0.downsample", (512, 256, 1, 1, 1)),  # 102
    *_bn("layer4.0.downsample_bn", 512),  # 103-107
    *_conv("layer4.1.conv1", (512, 512, 3, 3, 3)),  # 108
    *_bn("layer4.1.bn1", 512),  # 109-113
    *_conv("layer4.1.conv2", (512, 512, 3, 3, 3)),  # 114
    *_bn("layer4.1.bn2", 512),  # 115-119
]


def conv_at(model: nn.Module, path: str) -> nn.Conv3d:
    conv = model.get_submodule(path)
    assert isinstance(conv, nn.Conv3d), path
    return conv


@pytest.fixture(scope="module")
def meta_r3d18() -> R3D:
    with torch.device("meta"):
        return r3d_18(width=64, mode="pretrain")


def test_expected_table_is_the_reference_one() -> None:
    # Guards the hand-written table itself: 120 rows, anchor indices of reference §1.2.
    assert len(EXPECTED_BACKBONE) == 120
    assert EXPECTED_BACKBONE[42] == ("layer2.0.downsample.conv.weight", (128, 64, 1, 1, 1))
    assert EXPECTED_BACKBONE[90] == ("layer4.0.conv1.conv.weight", (512, 256, 3, 3, 3))
    assert EXPECTED_BACKBONE[119] == ("layer4.1.bn2.num_batches_tracked", ())


def test_state_dict_matches_reference_key_by_key(meta_r3d18: R3D) -> None:
    state = meta_r3d18.state_dict()
    assert len(state) == 120
    for idx, ((name, tensor), (exp_name, exp_shape)) in enumerate(
        zip(state.items(), EXPECTED_BACKBONE, strict=True)
    ):
        assert name == exp_name, f"entry {idx}"
        assert tuple(tensor.shape) == exp_shape, f"entry {idx} {name}"
        if name.endswith("num_batches_tracked"):
            assert tensor.dtype == torch.int64 and tensor.dim() == 0
        else:
            assert tensor.dtype == torch.float32


def test_state_spec_matches_reference() -> None:
    assert backbone_state_spec(64) == EXPECTED_BACKBONE
    # Width w scales every channel count: (w, 2w, 4w, 8w).
    spec16 = dict(backbone_state_spec(16))
    assert len(spec16) == 120
    assert spec16["stem.conv.weight"] == (16, 3, 3, 7, 7)
    assert spec16["layer4.1.conv2.conv.weight"] == (128, 128, 3, 3, 3)
    assert spec16["layer3.0.downsample.conv.weight"] == (64, 32, 1, 1, 1)


def test_parameter_count(meta_r3d18: R3D) -> None:
    learnable = sum(p.numel() for p in meta_r3d18.parameters() if p.requires_grad)
    assert learnable == 33_166_272
    assert meta_r3d18.out_channels == 512


def test_bn_conv_and_no_pool(meta_r3d18: R3D) -> None:
    bns = [m for m in meta_r3d18.modules() if isinstance(m, nn.BatchNorm3d)]
    convs = [m for m in meta_r3d18.modules() if isinstance(m, nn.Conv3d)]
    assert len(bns) == 20 and len(convs) == 20
    assert all(m.eps == 1e-3 and m.momentum == 0.1 and m.affine for m in bns)
    assert all(m.bias is None for m in convs)
    assert not any(isinstance(m, nn.MaxPool3d | nn.AvgPool3d) for m in meta_r3d18.modules())
    stem = meta_r3d18.stem.conv
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 7, 7), (1, 2, 2), (1, 3, 3))


def test_init() -> None:
    torch.manual_seed(0)
    model = r3d_18(width=16)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * 27)).
    w = conv_at(model, "layer4.1.conv2.conv").weight  # [128, 128, 3, 3, 3], 442k samples
    expected_std = math.sqrt(2.0 / (128 * 27))
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    assert w.mean().abs().item() < 0.05 * expected_std


def test_zero_init_residual_starts_every_block_as_its_shortcut() -> None:
    torch.manual_seed(0)
    model = r3d_18(width=16, mode="finetune", zero_init_residual=True)
    zeroed = [m for n, m in model.named_modules() if n.endswith("bn2")]
    assert len(zeroed) == 8
    assert all(isinstance(m, nn.BatchNorm3d) and torch.all(m.weight == 0) for m in zeroed)
    others = [m for n, m in model.named_modules()
              if isinstance(m, nn.BatchNorm3d) and not n.endswith("bn2")]  # fmt: skip
    assert all(torch.all(m.weight == 1) for m in others)
    # layer1.0 has no projection: at init it passes its (non-negative) input through unchanged
    x = torch.rand(2, 16, 4, 8, 8)  # [B, w, T, H, W]
    assert torch.equal(model.layer1[0](x), x)
    assert list(model.state_dict()) == list(r3d_18(width=16).state_dict())


@pytest.mark.parametrize(
    ("mode", "strides"), [("pretrain", PRETRAIN_DOWNSAMPLING), ("finetune", FINETUNE_DOWNSAMPLING)]
)
def test_stride_settings(mode: str, strides: tuple) -> None:
    with torch.device("meta"):
        model = r3d_18(width=64, mode=mode)  # type: ignore[arg-type]
    spatial, temporal = strides
    assert spatial == (
        (False, True, True, False) if mode == "pretrain" else (False, True, True, True)
    )
    assert temporal == (False, True, True, True)
    got = [conv_at(model, f"layer{i}.0.conv1.conv").stride for i in (1, 2, 3)]
    assert got == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]
    expected4 = (2, 1, 1) if mode == "pretrain" else (2, 2, 2)
    assert conv_at(model, "layer4.0.conv1.conv").stride == expected4
    assert conv_at(model, "layer4.0.downsample.conv").stride == expected4


def test_full_size_shapes_on_meta() -> None:
    # The reference's 3x16x112x112 arithmetic, shape-only (no memory, no compute).
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        pre = r3d_18(width=64, mode="pretrain")
        for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
            getattr(pre, name).register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
            )
        clip = torch.empty(2, 3, 16, 112, 112)
        assert pre(clip).shape == (2, 512, 2, 14, 14)
        assert r3d_18(width=64, mode="finetune")(clip).shape == (2, 512, 2, 7, 7)
    assert shapes == {
        "stem": (64, 16, 56, 56),
        "layer1": (64, 16, 56, 56),
        "layer2": (128, 8, 28, 28),
        "layer3": (256, 4, 14, 14),
        "layer4": (512, 2, 14, 14),
    }


def test_small_real_shapes_width16() -> None:
    torch.manual_seed(0)
    pre = r3d_18(width=16, mode="pretrain")
    fine = r3d_18(width=16, mode="finetune")
    assert pre.out_channels == 128
    clip = torch.randn(2, 3, 8, 32, 48)
    out_pre = pre(clip)
    assert out_pre.shape == (2, 128, 1, 4, 6)  # T/8, H/8, W/8
    assert torch.isfinite(out_pre).all()
    # Strides do not change weights: the pre-training state dict loads into the fine-tune model.
    fine.load_state_dict(pre.state_dict(), strict=True)
    assert fine(clip).shape == (2, 128, 1, 2, 3)  # T/8, H/16, W/16


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        r3d_18(width=16, mode="train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        R3D(width=0)
    with pytest.raises(ValueError, match="one flag per stage"):
        R3D(width=8, spatial_downsampling=(True, True))  # type: ignore[arg-type]
