"""Clips per second of the CtP pre-training data pipeline: zip-of-JPEG decode + CtP augmentation.

One sample is what a DataLoader worker does for the client: sample the clip's frame indices,
decode its JPEGs from the video's zip (:class:`CtP.datasets.ZipFrameSource`) and run
:class:`CtP.ctp_augmentation.CtPAugmentation` (resize, crop, flip, patches, colour, normalise).
``--workers 0`` times that in this process, with one OpenCV and one torch thread as in a worker,
and splits it into decoding and augmentation; every other count times ``make_loader`` batches
from that many worker processes (steady rate after the first wave of batches, and the wait for
the first batch).

The input is a UCF-like set written here with OpenCV only: textured 320x240 frames panned like a
moving camera, JPEG quality 95, one zip per video (``--data`` keeps it between runs), or a
prepared dataset (``--dataset-root data/synthetic``).

    python -m benchmarks.pipeline [--videos 40] [--frames 100] [--size 320 240] [--data DIR]
        [--dataset-root DIR [--annotations FILE]] [--crop-size 112] [--clip-len 16]
        [--workers 0 1 2] [--clips 64] [--batch 8] [--batches 8] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks import machine_info, write_report
from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import (
    Annotation,
    CtPDataset,
    VideoReadError,
    ZipFrameSource,
    load_annotations,
)
from CtP.sampling import random_clip_indices
from CtP.train import make_loader

JPEG_QUALITY = 95  # as the real frame extraction (fedvssl/data/frames.py)
UCF_LIKE_SPEC = "ucf_like.json"  # written last: a folder that has it holds a complete set
UCF_LIKE_ANNOTATIONS = "annotations/ucf_like.json"
CLASSES = 10
PAN_MARGIN = 48  # pixels of texture around the frame for the camera to pan over


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Draw a smooth random scene with fine grain (JPEG sizes near real UCF-101 frames at q95)."""
    size = (width + 2 * PAN_MARGIN, height + 2 * PAN_MARGIN)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    medium = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size[1], size[0], 3)).astype(np.float32), (0, 0), 1)
    scene = 0.6 * cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    scene += 0.4 * cv2.resize(medium, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    scene += 10.0 * grain
    return np.clip(scene, 0, 255).astype(np.uint8)  # [H + 2m, W + 2m, 3] BGR


def _write_video_zip(path: Path, scene: np.ndarray, frames: int, width: int, height: int) -> None:
    """Store ``frames`` panned views of ``scene`` as ``img_00001.jpg``... in a zip, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    phase = float(scene[0, 0, 0]) / 40.0  # each video pans along its own path
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for i in range(frames):
                x = PAN_MARGIN + round(PAN_MARGIN * 0.9 * np.sin(i / 15.0 + phase))
                y = PAN_MARGIN + round(PAN_MARGIN * 0.9 * np.cos(i / 21.0 + phase))
                view = scene[y : y + height, x : x + width]
                ok, jpeg = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise RuntimeError(f"OpenCV could not encode a frame of {path}")
                archive.writestr(f"img_{i + 1:05d}.jpg", jpeg.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_ucf_like(
    root: Path, *, videos: int, frames: int, width: int = 320, height: int = 240, seed: int = 0
) -> Path:
    """Write (or reuse) a UCF-like set of frame zips under ``root``; return its annotation file.

    Parameters
    ----------
    root
        Dataset folder: ``zips/<Class>/<video>.zip`` and ``annotations/ucf_like.json`` are written
        there, then ``ucf_like.json`` describing the set. A folder holding a complete set of the
        same description is reused as it is.
    videos, frames
        Number of videos and frames per video.
    width, height
        Frame size in pixels.
    seed
        Seed of the random scenes.

    Returns
    -------
    Path
        The annotation file (a JSON list of ``{"name", "label"}``).
    """
    if videos < 1 or frames < 2 or min(width, height) < 16:
        raise SystemExit("the UCF-like set needs videos >= 1, frames >= 2 and 16x16 frames or more")
    spec = {"videos": videos, "frames": frames, "size": [width, height], "seed": seed}
    spec |= {"jpeg_quality": JPEG_QUALITY}
    marker, annotation_file = root / UCF_LIKE_SPEC, root / UCF_LIKE_ANNOTATIONS
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return annotation_file
        raise SystemExit(f"{root} holds a UCF-like set made with other options; use another --data")
    rng = np.random.default_rng(seed)
    items = []
    for v in range(videos):
        cls = f"Texture{v % CLASSES:02d}"
        name = f"{cls}/v_{cls}_g{v // CLASSES + 1:03d}_c01"
        _write_video_zip(
            root / "zips" / f"{name}.zip", _texture(rng, width, height), frames, width, height
        )
        items.append({"name": name, "label": v % CLASSES + 1})
    write_report(items, annotation_file)
    write_report(spec, marker)
    return annotation_file


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose the input videos (a generated set or a prepared dataset)."""
    group = parser.add_argument_group("input")
    group.add_argument("--videos", type=int, default=40, help="videos to generate")
    group.add_argument("--frames", type=int, default=100, help="frames per generated video")
    group.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    group.add_argument("--data", type=Path, help="folder for the generated set (default: temp)")
    group.add_argument("--dataset-root", type=Path, help="use this prepared dataset instead")
    group.add_argument(
        "--annotations",
        default="annotations/train_split_1.json",
        help="annotation file of --dataset-root, relative to it",
    )


def open_input(
    args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[Path, list[Annotation], dict[str, Any]]:
    """Return the dataset root, its videos and a description, generating the set if needed.

    Parameters
    ----------
    args
        Parsed options of :func:`add_input_arguments`.
    stack
        Owns the temporary folder of a generated set (removed when the stack closes).

    Returns
    -------
    tuple
        The root (``zips/`` below it), the annotations and a JSON-ready description.
    """
    if args.dataset_root is not None:
        root = args.dataset_root
        try:
            annotations = load_annotations(root / args.annotations)
        except ValueError as err:  # missing or malformed: say which file and stop
            raise SystemExit(f"--dataset-root/--annotations: {err}") from err
        described = {"kind": "dataset", "root": str(root), "annotations": args.annotations}
    else:
        if args.data is not None:
            root = args.data
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ucf_like_")))
        width, height = args.size
        started = time.perf_counter()
        file = make_ucf_like(
            root, videos=args.videos, frames=args.frames, width=width, height=height
        )
        annotations = load_annotations(file)
        described = {"kind": "ucf_like", "generate_s": round(time.perf_counter() - started, 2)}
    return root, annotations, described | describe_frames(root, annotations[0].name)


def describe_frames(root: Path, name: str) -> dict[str, Any]:
    """Describe one video's zip: frame count, frame size and mean JPEG size."""
    try:
        first = ZipFrameSource(root).read_clip(name, lambda n: np.zeros(1, dtype=np.int64))
        with zipfile.ZipFile(root / "zips" / f"{name}.zip") as archive:
            infos = [i for i in archive.infolist() if i.filename.endswith(".jpg")]
    except (VideoReadError, OSError, zipfile.BadZipFile) as err:
        raise SystemExit(f"cannot read the frames of {name} under {root}/zips: {err}") from err
    return {
        "frames_per_video": len(infos),
        "frame_size": [int(first.shape[2]), int(first.shape[1])],
        "jpeg_kib_mean": round(sum(i.file_size for i in infos) / len(infos) / 1024, 1),
    }


def repeat_to(annotations: Sequence[Annotation], count: int) -> list[Annotation]:
    """Repeat the videos in order up to ``count`` of them (each sample still draws its own clip)."""
    return [annotations[i % len(annotations)] for i in range(count)]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run with one torch and one OpenCV thread, as a DataLoader worker does."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


def time_in_process(dataset: CtPDataset, clips: int, warmup: int = 2) -> dict[str, Any]:
    """Time decode and augmentation of ``clips`` samples here, as one worker makes them.

    Parameters
    ----------
    dataset
        Gives the frame source, the augmentation and the temporal sampling.
    clips, warmup
        Timed samples, after ``warmup`` untimed ones.

    Returns
    -------
    dict
        Mean milliseconds per clip for decoding, augmentation and both, and clips per second.
    """
    decode, augment = [], []
    with one_thread():
        for i in range(warmup + clips):
            rng = np.random.default_rng((dataset.seed, 0, i))

            def choose(n: int, rng: np.random.Generator = rng) -> np.ndarray:
                return random_clip_indices(
                    n, dataset.clip_len, dataset.strides, dataset.temporal_jitter, rng
                )

            name = dataset.annotations[i % len(dataset)].name
            start = time.perf_counter()
            frames = dataset.source.read_clip(name, choose)  # [T, H, W, 3]
            decoded = time.perf_counter()
            dataset.augmentation(frames, rng)
            if i >= warmup:
                decode.append(decoded - start)
                augment.append(time.perf_counter() - decoded)
    decode_ms, augment_ms = 1e3 * float(np.mean(decode)), 1e3 * float(np.mean(augment))
    return {
        "clips": clips,
        "decode_ms": round(decode_ms, 3),
        "augment_ms": round(augment_ms, 3),
        "ms_per_clip": round(decode_ms + augment_ms, 3),
        "clips_per_s": round(1e3 / (decode_ms + augment_ms), 2),
        "decode_share": round(decode_ms / (decode_ms + augment_ms), 3),
    }


def time_loader(dataset: CtPDataset, workers: int, batch: int) -> dict[str, Any]:
    """Time ``make_loader`` batches from ``workers`` processes over the whole dataset.

    The first wave of batches (one per worker) pays for starting the workers; the steady rate
    counts the clips after it over the time after it.

    Parameters
    ----------
    dataset
        At least ``2 * workers`` batches of samples.
    workers, batch
        Worker processes (at least 1) and clips per batch.

    Returns
    -------
    dict
        Steady clips per second (overall and per worker), the wait for the first batch and the
        wall time of the whole pass.
    """
    loader = make_loader(dataset, batch_size=batch, workers=workers, drop_last=True)
    arrivals = []
    start = time.perf_counter()
    for _ in loader:
        arrivals.append(time.perf_counter())
    wave = min(workers, len(arrivals) - 1)
    steady = (len(arrivals) - wave) * batch / (arrivals[-1] - arrivals[wave - 1])
    return {
        "workers": workers,
        "batch": batch,
        "batches": len(arrivals),
        "clips_per_s": round(steady, 2),
        "clips_per_s_per_worker": round(steady / workers, 2),
        "ms_per_clip_per_worker": round(1e3 * workers / steady, 3),
        "first_batch_s": round(arrivals[0] - start, 3),
        "seconds": round(arrivals[-1] - start, 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.add_argument("--crop-size", type=int, default=112, help="output crop side")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2], help="0: here")
    parser.add_argument("--clips", type=int, default=64, help="timed clips with --workers 0")
    parser.add_argument("--batch", type=int, default=8, help="clips per loader batch")
    parser.add_argument("--batches", type=int, default=8, help="batches per worker count (>=)")
    parser.add_argument("--generate-only", action="store_true", help="write --data and stop")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    if min(args.workers, default=0) < 0 or min(args.clips, args.batch, args.batches) < 1:
        parser.error("--workers must be >= 0 and --clips, --batch, --batches >= 1")
    if args.generate_only and args.data is None:
        parser.error("--generate-only needs --data (the folder to keep the set in)")

    with contextlib.ExitStack() as stack:
        root, annotations, described = open_input(args, stack)
        if args.generate_only:
            return
        report = {
            "benchmark": "pipeline",
            "machine": machine_info(),
            "input": described | {"videos": len(annotations)},
            "crop_size": args.crop_size,
            "clip_len": args.clip_len,
            "in_process": None,
            "loader": [],
        }
        augmentation = CtPAugmentation(crop_size=args.crop_size)

        def dataset(count: int) -> CtPDataset:
            return CtPDataset(
                repeat_to(annotations, count),
                ZipFrameSource(root),
                augmentation,
                clip_len=args.clip_len,
            )

        for workers in args.workers:
            if workers == 0:
                report["in_process"] = time_in_process(dataset(len(annotations)), args.clips)
            else:
                batches = max(args.batches, 3 * workers)
                result = time_loader(dataset(batches * args.batch), workers, args.batch)
                report["loader"].append(result)
            if args.output is not None:  # a run cut short keeps what it measured
                write_report(report, args.output)
        if args.output is None:
            write_report(report, None)


if __name__ == "__main__":
    main()
