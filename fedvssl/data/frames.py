"""Frame extraction: one video file -> one zip of JPEG frames (the CtP storage layout).

A video is decoded with PyAV (every frame, native rate, in the BGR order OpenCV encodes; in a
worker process on one thread), optionally resized so its short side has a given length (OpenCV
bilinear), JPEG-encoded by OpenCV at quality 95 and stored uncompressed (``ZIP_STORED``) as
``img_00001.jpg``, ``img_00002.jpg``, ... in ``zips/<Class>/<video>.zip``. The zip is written
to a temporary file and renamed, so a zip that exists is complete; a video that fails is
reported, never fatal.
"""

from __future__ import annotations

import logging
import multiprocessing
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from fedvssl.data.atomic import atomic_path

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same video gives the same zip


class UnreadableVideo(ValueError):
    """No frame of a video could be decoded."""


@dataclass(frozen=True)
class FrameJob:
    """Extract the frames of ``video`` into ``zip_path``; ``name`` is "Class/video"."""

    name: str
    video: Path
    zip_path: Path
    short_side: int | None = None


@dataclass(frozen=True)
class FrameResult:
    """Outcome of a :class:`FrameJob`: the number of frames stored, or why none were."""

    name: str
    num_frames: int
    error: str | None = None  # set when the video could not be (fully) decoded


def frame_name(index: int) -> str:
    """Return the zip member name of 0-based frame ``index`` (``img_00001.jpg`` for 0)."""
    return f"img_{index + 1:05d}.jpg"


def resize_short_side(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize an [H, W, C] frame so that min(H, W) == ``short_side`` (bilinear, no antialias).

    Parameters
    ----------
    frame : numpy.ndarray
        Image [H, W, C].
    short_side : int | None
        Target length of the shorter side; ``None`` keeps the frame as it is.

    Returns
    -------
    numpy.ndarray
        The resized image, aspect ratio kept (the long side is rounded).
    """
    height, width = frame.shape[:2]
    size = stored_size(width, height, short_side)  # (W, H) for OpenCV
    if size == (width, height):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


def decoded_video(video: Path, threads: int = 0) -> Iterator[av.VideoFrame]:
    """Yield every frame of a video file as PyAV decodes it (see :func:`decode_frames`)."""
    with video.open("rb") as f, av.open(f, "r") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
        stream.thread_count = threads
        yield from container.decode(stream)


def decode_frames(
    video: Path, pixel_format: str = "rgb24", threads: int = 0
) -> Iterator[np.ndarray]:
    """Yield every frame of a video file as a uint8 array [H, W, 3] (RGB, or ``bgr24``).

    The file is opened by Python and handed to PyAV as a file object, so any character in its
    name is safe (FFmpeg would parse ``:`` or ``?`` in a path as a protocol or an option).

    Parameters
    ----------
    video : Path
        Video file.
    pixel_format : str
        ``rgb24`` or ``bgr24`` (what OpenCV encodes, with no copy to swap the channels).
    threads : int
        Decoding threads: 0 lets FFmpeg choose (frame and slice threads, the fastest for one
        video); 1 decodes in this thread, which costs less CPU per frame
        (``benchmarks/preparation.py``) and is the better choice when every core already runs a
        process of its own.

    Yields
    ------
    numpy.ndarray
        Frames in presentation order.
    """
    for frame in decoded_video(video, threads):
        yield frame.to_ndarray(format=pixel_format)


def stored_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Return the (W, H) a frame is stored at: short side ``short_side``, long side rounded."""
    if short_side is None or min(height, width) == short_side:
        return width, height
    ratio = short_side / min(height, width)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def stored_frame(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """Return a decoded frame as stored: BGR [H', W', 3] at short side ``short_side``.

    A YUV 4:2:0 frame that shrinks is resized plane by plane before the conversion to BGR, so
    the conversion runs on the small frame (a 720p frame to short side 144 costs about half):
    Y at the stored size, U and V at half of it, as the 4:2:0 JPEG keeps them anyway; then
    OpenCV's BT.601 conversion. Any other frame is converted first and resized with
    :func:`resize_short_side`. Both resizes are OpenCV's bilinear.
    """
    width, height = stored_size(frame.width, frame.height, short_side)
    even = frame.width % 2 == 0 and frame.height % 2 == 0
    if frame.format.name != "yuv420p" or not even or width >= frame.width:
        return resize_short_side(frame.to_ndarray(format="bgr24"), short_side)
    planes = frame.to_ndarray(format="yuv420p")  # [H*3/2, W]: Y, then U and V at half size
    h, w = frame.height, frame.width
    chroma = planes[h:].reshape(2, h // 2, w // 2)  # [2, H/2, W/2]
    out_w, out_h = width + width % 2, height + height % 2  # I420 needs even sides
    out = np.empty((out_h * 3 // 2, out_w), np.uint8)
    luma = cv2.resize(planes[:h], (width, height), interpolation=cv2.INTER_LINEAR)
    out[:height, :width] = luma
    out[height:out_h, :width] = luma[-1:]  # an odd side: repeat the last row and column
    out[:out_h, width:out_w] = out[:out_h, width - 1 : width]
    for i in range(2):
        small = cv2.resize(chroma[i], (out_w // 2, out_h // 2), interpolation=cv2.INTER_LINEAR)
        start = out_h + i * out_h // 4
        out[start : start + out_h // 4] = small.reshape(out_h // 4, out_w)
    return cv2.cvtColor(out, cv2.COLOR_YUV2BGR_I420)[:height, :width]


def _encode_jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def write_frame_zip(
    video: Path, zip_path: Path, short_side: int | None = None, threads: int = 0
) -> tuple[int, str | None]:
    """Decode ``video`` and store its frames as JPEGs in ``zip_path``, atomically.

    Parameters
    ----------
    video : Path
        Source video file.
    zip_path : Path
        Destination zip (written only if at least one frame was decoded).
    short_side : int | None
        Resize frames so their short side has this length.
    threads : int
        Decoding threads (:func:`decode_frames`).

    Returns
    -------
    tuple[int, str | None]
        Number of frames stored, and the decoding error when decoding stopped early (the
        frames before it are kept, as OpenCV's reader would keep them), else ``None``.

    Raises
    ------
    UnreadableVideo
        If no frame could be decoded (the message says why).
    """
    count, error = 0, None
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            try:
                for count, frame in enumerate(decoded_video(video, threads), start=1):
                    info = zipfile.ZipInfo(frame_name(count - 1), _ZIP_TIME)
                    zf.writestr(info, _encode_jpeg(stored_frame(frame, short_side)))
            except (av.FFmpegError, OSError, ValueError) as err:
                error = f"{type(err).__name__}: {err}"
        if count == 0:
            raise UnreadableVideo(error or "the video has no frames")
    return count, error


def extract_frames(job: FrameJob) -> FrameResult:
    """Run one :class:`FrameJob`, turning any failure into a :class:`FrameResult` error.

    Parameters
    ----------
    job : FrameJob
        The video and its destination.

    Returns
    -------
    FrameResult
        ``num_frames > 0`` when the zip was written (``error`` then notes a partial decode);
        ``num_frames == 0`` with ``error`` when the video could not be used.
    """
    in_worker = multiprocessing.parent_process() is not None
    if in_worker:
        cv2.setNumThreads(1)  # in a worker: one process per video already fills the cores
    try:
        count, error = write_frame_zip(job.video, job.zip_path, job.short_side, int(in_worker))
    except UnreadableVideo as err:
        return FrameResult(job.name, 0, str(err))
    except Exception as err:  # a bad video is reported, never fatal
        return FrameResult(job.name, 0, f"{type(err).__name__}: {err}")
    return FrameResult(job.name, count, error)


def count_frames(zip_path: Path) -> int:
    """Return the number of ``.jpg`` members of a frame zip (the video's frame count)."""
    with zipfile.ZipFile(zip_path) as zf:
        return sum(name.endswith(".jpg") for name in zf.namelist())
