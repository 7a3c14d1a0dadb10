"""Fine-tuning classifier: state-dict layout, logits, loss, and loading a CtP backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backbone import EXPECTED_BACKBONE, conv_at
from torch import nn

from CtP.backbone import load_backbone
from CtP.classifier import Classifier, build_classifier
from CtP.ctp import build_ctp


def test_state_dict_layout_width64() -> None:
    with torch.device("meta"):
        model = build_classifier(width=64, num_classes=101)
    state = model.state_dict()
    expected = [("backbone." + k, s) for k, s in EXPECTED_BACKBONE] + [
        ("cls_head.fc_cls.weight", (101, 512)),
        ("cls_head.fc_cls.bias", (101,)),
    ]
    assert len(state) == 122
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected
    # Fine-tuning strides: layer4 strides in space too.
    assert conv_at(model, "backbone.layer4.0.conv1.conv").stride == (2, 2, 2)


def test_logits_loss_and_init() -> None:
    torch.manual_seed(0)
    model = build_classifier(width=16, num_classes=5, dropout=0.5)
    assert torch.all(model.cls_head.fc_cls.bias == 0)
    assert model.cls_head.fc_cls.weight.std().item() == pytest.approx(0.001, rel=0.3)
    assert model.cls_head.dropout.p == 0.5
    imgs = torch.randn(2, 3, 8, 32, 48)
    label = torch.tensor([0, 4])
    model.train()
    logits = model(imgs)
    assert logits.shape == (2, 5)
    train_loss = model.losses(imgs, label)["loss_cls"]
    assert torch.isfinite(train_loss)
    train_loss.backward()
    assert model.backbone.stem.conv.weight.grad is not None
    # Without dropout, loss_cls is the mean negative log-softmax at the labels.
    model.eval()
    with torch.no_grad():
        logits = model(imgs)
        loss = model.losses(imgs, label)["loss_cls"]
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    assert loss.item() == pytest.approx(-(log_probs[0, 0] + log_probs[1, 4]).item() / 2, rel=1e-5)
    # Small, near-uniform logits at init: the loss is close to log(5).
    assert loss.item() == pytest.approx(np.log(5), abs=0.05)


def test_any_clip_size_pools_to_one_vector() -> None:
    model = build_classifier(width=8, num_classes=3).eval()
    for shape in [(1, 3, 8, 32, 32), (1, 3, 16, 48, 64)]:
        assert model(torch.randn(shape)).shape == (1, 3)


def test_load_ctp_backbone_into_classifier() -> None:
    torch.manual_seed(0)
    ctp = build_ctp(width=16, clip_len=8)
    with torch.no_grad():  # make the running stats and counters differ from a fresh model
        bn = ctp.backbone.stem.bn
        assert bn.running_mean is not None and bn.num_batches_tracked is not None
        bn.running_mean.add_(0.5)
        bn.num_batches_tracked.add_(7)
    model = build_classifier(width=16, num_classes=7)
    source = ctp.backbone.state_dict()
    load_backbone(model, source)
    loaded = model.backbone.state_dict()
    assert list(loaded) == list(source)
    for k, v in source.items():
        assert torch.equal(loaded[k], v), k
    # numpy arrays (as stored in checkpoints) load too
    load_backbone(ctp, {k: v.numpy() for k, v in model.backbone.state_dict().items()})


def test_load_backbone_refuses_bad_states() -> None:
    model = build_classifier(width=16, num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() + 1 for k, v in build_ctp(width=16).backbone.state_dict().items()}
    state["layer2.0.conv1.conv.weight"] = torch.zeros(32, 16, 3, 3, 1)
    with pytest.raises(ValueError, match=r"mis-shaped 1: layer2\.0\.conv1\.conv\.weight"):
        load_backbone(model, state)
    # nothing was half-loaded
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    prefixed = {"backbone." + k: v for k, v in build_ctp(width=16).backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing 120.*unexpected 120.*strip the 'backbone\.'"):
        load_backbone(model, prefixed)

    wider = build_ctp(width=32).backbone.state_dict()
    with pytest.raises(ValueError, match="mis-shaped 100"):
        load_backbone(model, wider)

    with pytest.raises(TypeError, match="no R3D 'backbone'"):
        load_backbone(nn.Linear(2, 2), state)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dropout"):
        build_classifier(width=8, num_classes=3, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier(width=8, num_classes=0)
    model = build_classifier(width=8, num_classes=3)
    with pytest.raises(ValueError, match="label"):
        model.losses(torch.randn(2, 3, 8, 32, 32), torch.tensor([1]))
    assert isinstance(model, Classifier)


# ------------------------------------------------------------------- video-level metrics (§7.1)

# Video scores of 5 videos over 6 classes, and their labels (0-based). The label's rank:
# v0 rank 1, v1 rank 5, v2 rank 6, v3 rank 1, v4 rank 1.
VIDEO_SCORES = [
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],
    [0.0, 8.0, 1.0, 2.0, 3.0, 4.0],
]
VIDEO_LABELS = [0, 4, 0, 1, 1]


def test_topk_and_mean_class_accuracy_by_hand() -> None:
    from CtP.classifier import mean_class_accuracy, topk_accuracy, video_accuracy

    scores, labels = torch.tensor(VIDEO_SCORES), torch.tensor(VIDEO_LABELS)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(60.0)  # v0, v3, v4
    assert topk_accuracy(scores, labels, 5) == pytest.approx(80.0)  # v2 misses (rank 6)
    assert topk_accuracy(scores, labels, 6) == pytest.approx(100.0)
    # class 0: v0 right, v2 wrong -> 1/2; class 4: v1 wrong -> 0; class 1: v3, v4 right -> 1.
    assert mean_class_accuracy(scores, labels) == pytest.approx(100 * (0.5 + 0 + 1) / 3)
    assert video_accuracy(scores, labels) == {
        "top1": pytest.approx(60.0),
        "top5": pytest.approx(80.0),
        "mean_class_accuracy": pytest.approx(50.0),
    }
    with pytest.raises(ValueError, match="scores"):
        topk_accuracy(scores, labels[:3])


def test_clip_logits_are_averaged_per_video() -> None:
    from torch.utils.data import DataLoader

    from CtP.classifier import average_clip_scores, video_accuracy
    from CtP.train import predict_videos

    # 10 clips per video: clips 0-4 add +10 to the class after the label (so their top-1 is
    # wrong), clips 5-9 subtract 10 from it; the mean of the 10 clips is the video score.
    scores = torch.tensor(VIDEO_SCORES)
    clip_logits = scores[:, None, :].repeat(1, 10, 1)  # [5, 10, 6]
    for video, label in enumerate(VIDEO_LABELS):
        clip_logits[video, :5, (label + 1) % 6] += 10.0
        clip_logits[video, 5:, (label + 1) % 6] -= 10.0
    samples = [
        {
            "imgs": clip_logits[i],
            "label": torch.tensor(VIDEO_LABELS[i]),
            "valid": torch.tensor(True),
        }
        for i in range(5)
    ]
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(samples, batch_size=2)  # type: ignore[arg-type]
    averaged, labels, valid = predict_videos(
        nn.Identity(), loader, device=torch.device("cpu"), progress=False
    )
    assert torch.allclose(averaged, scores, atol=1e-5)
    assert torch.allclose(average_clip_scores(clip_logits), scores, atol=1e-5)
    assert labels.tolist() == VIDEO_LABELS and valid.all()
    assert video_accuracy(averaged, labels)["top1"] == pytest.approx(60.0)
    first_clip_top1 = video_accuracy(clip_logits[:, 0], labels)["top1"]
    assert first_clip_top1 != pytest.approx(60.0)
