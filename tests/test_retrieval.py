"""Retrieval: R@k on hand-made features, cosine ranking, invalid videos, feature sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from CtP.backbone import r3d_18
from CtP.datasets import MultiClipDataset, ZipFrameSource, load_annotations
from CtP.retrieval import (
    RetrievalModel,
    VideoFeatures,
    build_retrieval_model,
    evaluate_retrieval,
    extract_features,
    recall_at_k,
    retrieval_metrics,
)
from CtP.transforms import EvalTransform


def unit(degrees: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


# Gallery on the unit circle (angles in degrees), with labels; norms differ on purpose.
GALLERY = torch.tensor(
    [unit(0, 0.1), unit(30, 2.0), unit(60, 1.0), unit(90, 100.0), unit(180, 5.0)]
)
GALLERY_LABELS = torch.tensor([0, 1, 0, 2, 1])
# q0 at 10 deg, class 1: nearest by angle g0 (10, class 0), g1 (20, class 1) -> first hit at rank 2.
# q1 at 65 deg, class 0: nearest g2 (5, class 0) -> first hit at rank 1.
# q2 at 170 deg, class 3: no gallery video of class 3 -> never a hit.
QUERIES = torch.tensor([unit(10, 3.0), unit(65, 0.5), unit(170, 1.0)])
QUERY_LABELS = torch.tensor([1, 0, 3])


def test_recall_at_k_hand_made() -> None:
    recall = recall_at_k(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2, 5, 50))
    assert recall[1] == pytest.approx(100 / 3)  # q1 only
    assert recall[2] == pytest.approx(200 / 3)  # q0 and q1
    assert recall[5] == pytest.approx(200 / 3)  # q2 never hits
    assert recall[50] == pytest.approx(200 / 3)  # k beyond the gallery: the whole gallery
    # A raw dot product would put g3 (norm 100, class 2) first for q0 and q1: cosine does not.
    raw_top1 = (QUERIES @ GALLERY.T).argmax(dim=1)
    assert raw_top1.tolist()[:2] == [3, 3]


def test_cosine_is_scale_invariant_and_matches_the_reference_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(20, 16, generator=gen), torch.randn(40, 16, generator=gen)
    q_labels = torch.randint(0, 5, (20,), generator=gen)
    g_labels = torch.randint(0, 5, (40,), generator=gen)
    ks = (1, 5, 10)
    base = recall_at_k(queries, q_labels, gallery, g_labels, ks)
    q_scale = torch.rand(20, 1, generator=gen) * 10 + 0.1
    g_scale = torch.rand(40, 1, generator=gen) * 10 + 0.1
    assert recall_at_k(queries * q_scale, q_labels, gallery * g_scale, g_labels, ks) == base
    # The reference: dot product divided by the gallery norm, ranked per query.
    similarity = (queries @ gallery.T) / gallery.norm(dim=1)[None, :]
    order = similarity.argsort(dim=1, descending=True)
    for k in ks:
        hits = [(g_labels[order[i, :k]] == q_labels[i]).any().item() for i in range(20)]
        assert base[k] == pytest.approx(100 * sum(hits) / 20)


def test_invalid_videos_are_left_out() -> None:
    # An invalid gallery video that would be q2's perfect match, and an invalid query that would
    # be a hit at rank 1: neither may change R@k, and the denominator stays at 3 queries.
    gallery = VideoFeatures(
        torch.cat([GALLERY, torch.tensor([unit(170)])]),
        torch.cat([GALLERY_LABELS, torch.tensor([3])]),
        torch.tensor([True] * 5 + [False]),
    )
    queries = VideoFeatures(
        torch.cat([QUERIES, torch.tensor([unit(60)])]),
        torch.cat([QUERY_LABELS, torch.tensor([0])]),
        torch.tensor([True] * 3 + [False]),
    )
    assert gallery.left_out == 1 and queries.left_out == 1
    metrics = retrieval_metrics(queries, gallery, ks=(1, 5))
    assert metrics == {"R@1": pytest.approx(100 / 3), "R@5": pytest.approx(200 / 3)}
    nothing = VideoFeatures(QUERIES, QUERY_LABELS, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="no readable"):
        retrieval_metrics(nothing, gallery)


def test_feature_dimension_width64_is_9216() -> None:
    torch.manual_seed(0)
    model = build_retrieval_model(None, width=64)
    assert not model.training and model.feature_dim == 9216
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 112, 112)).shape == (1, 9216)


@pytest.mark.parametrize("width", [4, 8])
def test_feature_dimension_is_2x3x3x8w(width: int) -> None:
    model = RetrievalModel(r3d_18(width=width, mode="finetune")).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 2 * 3 * 3 * 8 * width)


def test_loaded_weights_and_eval_mode_batchnorm() -> None:
    torch.manual_seed(1)
    source = r3d_18(width=4, mode="pretrain")  # strides never change a weight shape
    for name, buffer in source.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-0.5, 0.5)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    state = source.state_dict()
    model = build_retrieval_model(state, width=64)  # the width comes from the weights
    assert model.feature_dim == 2 * 3 * 3 * 8 * 4
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():  # running statistics: a clip's feature does not depend on its batch
        assert torch.allclose(model(clips)[:1], model(clips[:1]), atol=1e-5)


def test_extract_and_evaluate_skip_unreadable_videos(tiny_video_root: Path) -> None:
    items = load_annotations(tiny_video_root / "annotations.json")
    (tiny_video_root / "annotations.json").write_text(
        json.dumps(
            [{"name": a.name, "label": a.label} for a in items]
            + [{"name": "Still/gone", "label": 2}]
        )
    )
    items = load_annotations(tiny_video_root / "annotations.json")
    dataset = MultiClipDataset(
        items, ZipFrameSource(tiny_video_root), EvalTransform(crop_size=32),
        clip_len=8, stride=2, num_clips=2, crop_size=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_retrieval_model(None, width=4)
    features = extract_features(
        model, dataset, device=torch.device("cpu"), batch_size=3, progress=False
    )
    assert features.feats.shape == (4, model.feature_dim)
    assert features.valid.tolist() == [True, True, True, False] and features.left_out == 1
    assert features.labels.tolist() == [0, 0, 1, 1]
    assert np.isfinite(features.feats.numpy()).all()
    # Each video queries the gallery it belongs to: its own copy ranks first (cosine 1).
    metrics = evaluate_retrieval(
        model, dataset, dataset, device=torch.device("cpu"), ks=(1, 3), batch_size=2, progress=False
    )
    assert metrics == {"R@1": 100.0, "R@3": 100.0}
