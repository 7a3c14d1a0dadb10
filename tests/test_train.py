"""The training loop: one CtP epoch through both frame backends, its log, and batched inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from CtP.ctp import build_ctp
from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import CtPDataset, VideoFileSource, ZipFrameSource, load_annotations
from CtP.train import build_optimizer, make_loader, predict_videos, train_one_epoch

LOG_KEYS = {
    "mode", "epoch", "iter", "lr", "time", "data_time", "loss", "loss_ctr", "loss_size",
    "trivial_loss",
}  # fmt: skip


@pytest.mark.parametrize("source_type", [ZipFrameSource, VideoFileSource])
def test_one_epoch_of_width16_ctp_on_8_frame_clips(
    tiny_video_root: Path, tmp_path: Path, source_type: type
) -> None:
    torch.manual_seed(0)
    annotations = load_annotations(tiny_video_root / "annotations.json")
    augmentation = CtPAugmentation(crop_size=32)
    dataset = CtPDataset(annotations, source_type(tiny_video_root), augmentation, clip_len=8)
    loader = make_loader(dataset, batch_size=1, seed=0)
    model = build_ctp(width=16, clip_len=8)
    log = tmp_path / "20260101_000000.log.json"

    result = train_one_epoch(
        model, loader, build_optimizer(model), device=torch.device("cpu"), log_path=log,
        log_interval=2, progress=False,
    )  # fmt: skip

    assert torch.isfinite(torch.tensor(result.loss)) and result.loss > 0
    assert result.iterations == 3 and result.samples == 3 and result.skipped == 0
    assert set(result.terms) == {"loss_ctr", "loss_size", "trivial_loss"}
    # the trivial loss is measured, not trained on: the training loss is the two terms alone
    assert result.loss == pytest.approx(
        result.terms["loss_ctr"] + result.terms["loss_size"], rel=1e-5
    )
    assert result.terms["trivial_loss"] > 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["iter"] for line in lines] == [2, 3]  # the trailing partial interval is logged too
    assert all(set(line) >= LOG_KEYS and line["mode"] == "train" for line in lines)
    assert lines[0]["lr"] == 0.01


def test_optimizer_follows_the_reference() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 1e-4)


def test_predict_videos_averages_clip_outputs_per_video() -> None:
    # two videos of three clips; the "model" returns each clip's mean pixel as a 1-d output
    imgs = (
        torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3, 1, 1, 1, 1).expand(2, 3, 3, 2, 4, 4)
    )
    batch = {"imgs": imgs, "label": torch.tensor([4, 1]), "valid": torch.tensor([True, False])}
    outputs, labels, valid = predict_videos(
        lambda x: x.mean(dim=(1, 2, 3, 4))[:, None], [batch],  # type: ignore[arg-type]
        device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    torch.testing.assert_close(outputs, torch.tensor([[1.0], [4.0]]))
    assert labels.tolist() == [4, 1] and valid.tolist() == [True, False]
