"""Frame sources and datasets: both backends, skipping bad videos, determinism, workers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import (
    Annotation,
    ClipDataset,
    CtPDataset,
    MultiClipDataset,
    VideoFileSource,
    VideoReadError,
    ZipFrameSource,
    load_annotations,
    open_frame_source,
)
from CtP.train import make_loader
from CtP.transforms import EvalTransform, FinetuneAugmentation


def first_frames(n: int) -> np.ndarray:
    return np.arange(min(n, 8))


def test_zip_and_video_backends_read_the_same_frames(tiny_video_root: Path) -> None:
    name = "MoveRight/v_MoveRight_g01_c01"
    from_zip = ZipFrameSource(tiny_video_root).read_clip(name, first_frames)
    from_video = VideoFileSource(tiny_video_root).read_clip(name, first_frames)
    assert from_zip.shape == from_video.shape == (8, 48, 64, 3)
    assert from_zip.dtype == from_video.dtype == np.uint8
    # both decode the same content (JPEG and MPEG-4 are lossy: compare loosely)
    assert np.abs(from_zip.astype(int) - from_video.astype(int)).mean() < 12


def test_sources_report_every_frame_count(tiny_video_root: Path) -> None:
    seen: list[int] = []

    def choose(n: int) -> np.ndarray:
        seen.append(n)
        return np.array([n - 1])

    for source in (ZipFrameSource(tiny_video_root), VideoFileSource(tiny_video_root)):
        source.read_clip("Still/v_Still_g01_c01", choose)
    assert seen == [24, 24]


@pytest.mark.parametrize("source_type", [ZipFrameSource, VideoFileSource])
def test_missing_and_corrupt_videos_raise_read_errors(
    tiny_video_root: Path, source_type: type
) -> None:
    source = source_type(tiny_video_root)
    with pytest.raises(VideoReadError):
        source.read_clip("Nope/v_Nope_g01_c01", first_frames)
    (tiny_video_root / "zips" / "Bad").mkdir()
    (tiny_video_root / "zips" / "Bad" / "v_Bad_g01_c01.zip").write_bytes(b"garbage")
    (tiny_video_root / "UCF101_raw" / "v_Bad_g01_c01.avi").write_bytes(b"garbage")
    with pytest.raises(VideoReadError):
        source.read_clip("Bad/v_Bad_g01_c01", first_frames)


def ctp_dataset(root: Path, annotations: list[Annotation], seed: int = 0) -> CtPDataset:
    augmentation = CtPAugmentation(crop_size=32)
    return CtPDataset(annotations, ZipFrameSource(root), augmentation, clip_len=8, seed=seed)


def test_ctp_dataset_sample_shapes_and_determinism(tiny_video_root: Path) -> None:
    annotations = load_annotations(tiny_video_root / "annotations.json")
    dataset = ctp_dataset(tiny_video_root, annotations)
    sample = dataset[1]
    assert sample["imgs"].shape == (3, 8, 32, 32) and sample["imgs"].dtype == torch.float32
    assert sample["gt_trajs"].shape == (3, 8, 4)
    assert int(sample["skipped"]) == 0
    again = ctp_dataset(tiny_video_root, annotations)[1]
    assert torch.equal(sample["imgs"], again["imgs"])
    dataset.set_epoch(1)
    assert not torch.equal(sample["imgs"], dataset[1]["imgs"])


def test_unreadable_video_is_skipped_counted_and_warned_once(
    tiny_video_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    annotations = [
        Annotation("Gone/v_Gone_g01_c01", 1),
        *load_annotations(tiny_video_root / "annotations.json"),
    ]
    dataset = ctp_dataset(tiny_video_root, annotations)
    with caplog.at_level(logging.WARNING):
        first, again = dataset[0], dataset[0]
    assert int(first["skipped"]) == 1 and int(again["skipped"]) == 1
    assert torch.equal(first["imgs"], dataset[1]["imgs"])  # the next video served instead
    warnings = [r for r in caplog.records if "Gone/v_Gone_g01_c01" in r.getMessage()]
    assert len(warnings) == 1


def test_loader_workers_give_the_same_batches(tiny_video_root: Path) -> None:
    annotations = load_annotations(tiny_video_root / "annotations.json")
    batches = []
    for workers in (0, 2):
        loader = make_loader(
            ctp_dataset(tiny_video_root, annotations), batch_size=2, workers=workers, seed=3
        )
        batches.append([b["imgs"] for b in loader])
    assert len(batches[0]) == 2
    for single, multi in zip(*batches, strict=True):
        assert torch.equal(single, multi)


def test_clip_dataset_labels_are_zero_based(tiny_video_root: Path) -> None:
    annotations = load_annotations(tiny_video_root / "annotations.json")
    dataset = ClipDataset(
        annotations,
        VideoFileSource(tiny_video_root),
        FinetuneAugmentation(crop_size=32),
        clip_len=8,
    )
    assert [int(dataset[i]["label"]) for i in range(3)] == [0, 0, 1]
    assert dataset[0]["imgs"].shape == (3, 8, 32, 32)


def test_multi_clip_dataset_marks_unreadable_videos(tiny_video_root: Path) -> None:
    annotations = [
        *load_annotations(tiny_video_root / "annotations.json"),
        Annotation("Gone/v_Gone_g01_c01", 2),
    ]
    dataset = MultiClipDataset(
        annotations, ZipFrameSource(tiny_video_root), EvalTransform(crop_size=32),
        clip_len=8, stride=2, num_clips=3, crop_size=32,
    )  # fmt: skip
    good, gone = dataset[0], dataset[3]
    assert good["imgs"].shape == gone["imgs"].shape == (3, 3, 8, 32, 32)
    assert bool(good["valid"]) and not bool(gone["valid"])
    assert int(gone["label"]) == 1 and int(gone["index"]) == 3


@pytest.mark.parametrize("content", [None, "{not json", '[{"name": "a"}]'])
def test_bad_annotation_files_raise_one_clear_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=r"ann\.json"):
        load_annotations(path)


def test_open_frame_source_picks_the_backend_and_refuses_others(tiny_video_root: Path) -> None:
    kwargs = {"zip_template": "zips/{name}.zip", "video_template": "UCF101_raw/{video}.avi"}
    assert isinstance(open_frame_source("zip", tiny_video_root, **kwargs), ZipFrameSource)
    assert isinstance(open_frame_source("video", tiny_video_root, **kwargs), VideoFileSource)
    with pytest.raises(ValueError, match="'zip' or 'video'"):
        open_frame_source("jpeg", tiny_video_root, **kwargs)
