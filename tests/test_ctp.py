"""CtP pretext model: state-dict layout, target encoding, hand-computed losses, learning."""

from __future__ import annotations

import math

import pytest
import torch
from test_backbone import EXPECTED_BACKBONE
from torch import Tensor, nn

from CtP.ctp import (
    CtP,
    CtPHead,
    build_ctp,
    decode_predictions,
    encode_targets,
    trivial_loss,
)

STDS = (0.8, 0.8, 0.04, 0.04)
MEANS = (0.0, 0.0, 0.0, 0.0)

# Reference §1.4, idx 120-125.
EXPECTED_HEAD: list[tuple[str, tuple[int, ...]]] = [
    ("head.temporal_conv.weight", (512, 512, 2, 1, 1)),
    ("head.temporal_conv.bias", (512,)),
    ("head.fc1.weight", (512, 12800)),
    ("head.fc1.bias", (512,)),
    ("head.pred_head.weight", (64, 512)),
    ("head.pred_head.bias", (64,)),
]


def _static_trajs(boxes: list[list[float]], t: int) -> Tensor:
    """[1, N, T, 4]: each box held still for t frames."""
    return torch.tensor(boxes, dtype=torch.float32).view(1, len(boxes), 1, 4).repeat(1, 1, t, 1)


def _moving_squares_batch(b: int = 2, t: int = 8, size: int = 48) -> tuple[Tensor, Tensor]:
    """Textured clips with three coloured squares moving (and growing) along integer boxes."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(b, 3, t, size, size, generator=g) * 0.5 + 0.25  # [B, 3, T, H, W]
    trajs = torch.zeros(b, 3, t, 4)  # [B, N, T, 4]
    colours = torch.eye(3)  # red, green, blue

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    for i in range(b):
        for n in range(3):
            x0, y0, s0 = draw(2, 20), draw(2, 20), draw(8, 12)
            vx, vy, grow = draw(-2, 3), draw(-2, 3), draw(0, 2)
            for f in range(t):
                x1 = min(max(x0 + vx * f, 0), size - 16)
                y1 = min(max(y0 + vy * f, 0), size - 16)
                s = s0 + grow * f // 2
                trajs[i, n, f] = torch.tensor([x1, y1, x1 + s, y1 + s], dtype=torch.float32)
                imgs[i, :, f, y1 : y1 + s, x1 : x1 + s] = colours[n].view(3, 1, 1)
    return imgs, trajs


@pytest.fixture(scope="module")
def meta_ctp() -> CtP:
    with torch.device("meta"):
        return build_ctp(width=64, clip_len=16)


def test_full_state_dict_matches_reference(meta_ctp: CtP) -> None:
    state = meta_ctp.state_dict()
    expected = [("backbone." + k, s) for k, s in EXPECTED_BACKBONE] + EXPECTED_HEAD
    assert len(state) == 126
    for idx, ((name, tensor), (exp_name, exp_shape)) in enumerate(
        zip(state.items(), expected, strict=True)
    ):
        assert (name, tuple(tensor.shape)) == (exp_name, exp_shape), f"entry {idx}"
    assert [n for n, _ in meta_ctp.named_children()] == ["backbone", "head"]
    assert state["backbone.stem.bn.num_batches_tracked"].dtype == torch.int64


def test_parameter_counts(meta_ctp: CtP) -> None:
    assert sum(p.numel() for p in meta_ctp.parameters()) == 40_278_016
    assert sum(p.numel() for p in meta_ctp.head.parameters()) == 7_111_744
    assert meta_ctp.head.target_stds == STDS  # plain attributes, not state


def test_head_init_and_config() -> None:
    torch.manual_seed(0)
    head = build_ctp(width=16, clip_len=8).head
    assert head.temporal_conv.kernel_size == (1, 1, 1) and head.temporal_conv.bias is not None
    assert torch.all(head.temporal_conv.bias == 0)
    # kaiming fan_out, ReLU gain: std = sqrt(2 / (128 * 1 * 1 * 1)).
    assert head.temporal_conv.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    for fc in (head.fc1, head.pred_head):
        assert torch.all(fc.bias == 0)
    assert head.fc1.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert head.fc1.in_features == 128 * 25 and head.pred_head.out_features == 8 * 4
    assert build_ctp(width=16, clip_len=16).head.temporal_conv.kernel_size == (2, 1, 1)


def test_live_head_init_keeps_pytorch_default_for_fc1_only() -> None:
    torch.manual_seed(0)
    head = build_ctp(width=16, clip_len=8, head_init="live").head
    bound = 1 / math.sqrt(128 * 25)  # nn.Linear: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert head.fc1.weight.abs().max().item() <= bound
    assert head.fc1.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert head.pred_head.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert all(torch.all(b == 0) for b in (head.fc1.bias, head.pred_head.bias))
    with pytest.raises(ValueError, match="head init"):
        CtPHead(in_channels=8, hidden_channels=8, init="dead")  # type: ignore[arg-type]


def test_encode_targets_by_hand() -> None:
    trajs = _static_trajs([[10, 10, 20, 30], [0, 0, 0, 5]], t=3)
    trajs[0, 0, 1] = torch.tensor([12, 14, 22, 34])  # centre +2, +4; same size
    trajs[0, 0, 2] = torch.tensor([10, 10, 30, 30])  # w 10 -> 20, h 20 -> 20, centre +5, 0
    trajs[0, 1, 1] = torch.tensor([0, 0, 4, 5])  # w clamped 1 -> 4
    targets = encode_targets(trajs, MEANS, STDS)
    assert torch.all(targets[:, :, 0] == 0)
    ln2 = math.log(2.0)
    torch.testing.assert_close(targets[0, 0, 1], torch.tensor([2.5, 5.0, 0.0, 0.0]))
    torch.testing.assert_close(targets[0, 0, 2], torch.tensor([6.25, 0.0, ln2 / 0.04, 0.0]))
    torch.testing.assert_close(targets[0, 1, 1], torch.tensor([2.5, 0.0, 2 * ln2 / 0.04, 0.0]))


def test_encode_decode_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 3, 8, 2, generator=g) * 40
    wh = 1 + torch.rand(2, 3, 8, 2, generator=g) * 20
    trajs = torch.cat((xy, xy + wh), dim=-1)
    targets = encode_targets(trajs, (0.1, -0.2, 0.0, 0.3), STDS)
    decoded = decode_predictions(targets, trajs[:, :, 0], (0.1, -0.2, 0.0, 0.3), STDS)
    torch.testing.assert_close(decoded, trajs, atol=1e-4, rtol=1e-5)


def test_loss_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_ctp(width=16, clip_len=8)
    t = 8
    trajs = _static_trajs([[8, 8, 16, 16], [4, 4, 12, 12]], t)
    trajs[0, 0, 1] = torch.tensor([8.4, 8, 16.4, 16])  # dx 0.4 -> 0.5: 0.5 * 0.5^2 = 0.125
    trajs[0, 0, 2] = torch.tensor([8, 9.6, 16, 17.6])  # dy 1.6 -> 2.0: 2.0 - 0.5 = 1.5
    trajs[0, 1, 3] = torch.tensor([4, 4, 20, 12])  # dx 4 -> 5: 4.5; dlogw ln2/0.04: ln2/0.04 - 0.5
    preds = torch.zeros(2, t, 4)
    preds[0, 5, 0] = 3.0  # target 0: 3 - 0.5 = 2.5
    seen: list[Tensor] = []

    def fake_head(feats: Tensor, rois: Tensor) -> Tensor:
        seen.append(rois)
        return preds

    monkeypatch.setattr(model.head, "forward", fake_head)
    losses = model(torch.zeros(1, 3, t, 32, 32), trajs)
    torch.testing.assert_close(seen[0], torch.tensor([[0, 8, 8, 16, 16], [0, 4, 4, 12, 12.0]]))
    count = 2 * t
    assert losses["loss_ctr"].item() == pytest.approx((0.125 + 1.5 + 4.5 + 2.5) / count)
    assert losses["loss_size"].item() == pytest.approx((math.log(2) / 0.04 - 0.5) / count)
    # predicting zero everywhere: the 3.0 at frame 5 (2.5 of the loss) is gone, the rest stays
    trivial = (0.125 + 1.5 + 4.5 + math.log(2) / 0.04 - 0.5) / count
    assert losses["trivial_loss"].item() == pytest.approx(trivial)
    assert not losses["trivial_loss"].requires_grad

    weights = torch.ones(1, 2, t)
    weights[0, 1, 3] = 0.0  # drops the 4.5 and the size term
    weights[0, 0, 2] = 2.0  # doubles the 1.5; the weights still sum to 16
    losses = model(torch.zeros(1, 3, t, 32, 32), trajs, weights)
    assert losses["loss_ctr"].item() == pytest.approx((0.125 + 3.0 + 2.5) / 16)
    assert losses["loss_size"].item() == 0.0


def test_predict_decodes_head_output(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_ctp(width=16, clip_len=8)
    _, trajs = _moving_squares_batch(b=2, t=8, size=32)
    targets = encode_targets(trajs, MEANS, STDS)  # [2, 3, 8, 4]
    monkeypatch.setattr(model.head, "forward", lambda feats, rois: targets.reshape(6, 8, 4))
    boxes = model.predict(torch.zeros(2, 3, 8, 32, 32), trajs[:, :, 0])
    torch.testing.assert_close(boxes, trajs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("clip_len", "size"), [(8, 48), (16, 32)])
def test_loss_finite_and_gradients_reach_backbone(clip_len: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_ctp(width=16, clip_len=clip_len)
    imgs, trajs = _moving_squares_batch(b=2, t=clip_len, size=size)
    losses = model(imgs, trajs)
    assert set(losses) == {"loss_ctr", "loss_size", "trivial_loss"}
    total = losses["loss_ctr"] + losses["loss_size"]
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    stem_grad = model.backbone.stem.conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_sgd_steps_on_fixed_batch_halve_the_loss() -> None:
    torch.manual_seed(0)
    model = build_ctp(width=16, clip_len=8)
    imgs, trajs = _moving_squares_batch(b=2, t=8, size=48)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(60):
        losses = model(imgs, trajs)
        loss = losses["loss_ctr"] + losses["loss_size"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[0] > 1.0  # the squares really move: there is something to learn
    assert max(history[-5:]) <= 0.5 * history[0], history


def test_trivial_loss_by_hand() -> None:
    # one trajectory, 2 frames: frame 1 moves dx = 4 px (5 units: 4.5) and dy = 0.4 px (0.5
    # units: 0.125), and doubles its width (ln 2 / 0.04 = 17.33 units: 16.83); frame 0 costs 0
    trajs = _static_trajs([[10, 10, 20, 20]], t=2)
    trajs[0, 0, 1] = torch.tensor([9, 10.4, 29, 20.4])
    targets = encode_targets(trajs, MEANS, STDS)
    expected = (4.5 + 0.125 + math.log(2) / 0.04 - 0.5) / 2
    assert trivial_loss(targets, torch.ones(1, 1, 2)).item() == pytest.approx(expected)
    weights = torch.tensor([[[1.0, 0.0]]])  # only frame 0 counts: nothing to predict
    assert trivial_loss(targets, weights).item() == 0.0


def _one_moving_patch(t: int = 8, size: int = 48) -> tuple[Tensor, Tensor]:
    """A batch of 4 clips, each with one white square crossing a grey, lightly textured frame."""
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(4, 3, t, size, size, generator=g) * 0.2 - 0.1  # [B, 3, T, H, W]
    trajs = torch.zeros(4, 1, t, 4)  # [B, 1, T, 4]
    for b, (vx, vy) in enumerate([(2, 0), (-2, 1), (0, -2), (1, 2)]):
        x0, y0 = 16 - 7 * min(vx, 0), 16 - 7 * min(vy, 0)
        for f in range(t):
            x, y = x0 + vx * f - 8, y0 + vy * f - 8
            trajs[b, 0, f] = torch.tensor([x, y, x + 12, y + 12], dtype=torch.float32)
            imgs[b, :, f, y : y + 12, x : x + 12] = 2.5
    return imgs, trajs


def test_ctp_fits_one_moving_patch_well_below_trivial() -> None:
    # The learning guard: the live head and the reference optimiser bring the loss on one fixed
    # batch of moving white patches far below the "nothing moves" loss within a few dozen steps.
    torch.manual_seed(0)
    model = build_ctp(width=16, clip_len=8, head_init="live")
    imgs, trajs = _one_moving_patch()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ratios = []
    for _ in range(40):
        losses = model(imgs, trajs)
        loss = losses["loss_ctr"] + losses["loss_size"]
        ratios.append((loss / losses["trivial_loss"]).item())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert ratios[0] == pytest.approx(1.0, abs=0.01)  # it starts at "nothing moves"
    assert max(ratios[-5:]) < 0.5, ratios


def test_bad_inputs() -> None:
    model = build_ctp(width=8, clip_len=8)
    imgs = torch.zeros(1, 3, 8, 32, 32)
    trajs = _static_trajs([[4, 4, 12, 12]], 8)
    with pytest.raises(ValueError, match="gt_trajs"):
        model(imgs, trajs[:, :, :4])
    with pytest.raises(ValueError, match="gt_weights"):
        model(imgs, trajs, torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match="16 frames"):
        model(torch.zeros(1, 3, 16, 32, 32), _static_trajs([[4, 4, 12, 12]], 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_ctp(width=8, clip_len=12)
    with pytest.raises(ValueError, match="target_stds"):
        CtPHead(target_stds=(1.0, 1.0, 0.0, 1.0))
    assert isinstance(model.head.relu, nn.ReLU)
