"""Real codecs: videos encoded as cameras and web archives encode them survive preparation.

The official UCF-101 files are XVID (MPEG-4 part 2) AVIs, but a user's own videos (``--raw``) come
in H.264, H.265, VP9, Motion JPEG, MPEG-2 or lossless FFV1. Each is written here with PyAV's own
encoders, then prepared like UCF-101 from a local folder, and read back both from the frame zips
and, with the video-file source, straight from the files. The split lists name ``.avi`` files;
H.265 and VP9, which the AVI muxer does not take, are written as Matroska under that name (FFmpeg
reads a file by its content, not its extension).
"""

from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import cv2
import numpy as np
import pytest

from CtP.datasets import VideoFileSource
from fedvssl.data.frames import count_frames
from fedvssl.data.preparation import prepare_dataset

COLOUR = np.array([200, 40, 90])  # RGB of the frames, away from the white moving bar
FRAMES = 12
# codec -> (container, pixel format, extra options); every one is an encoder PyAV ships
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "libx264": ("avi", "yuv420p", {"preset": "ultrafast"}),
    "libx265": ("matroska", "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "libvpx-vp9": ("matroska", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("avi", "yuvj420p", {}),
    "mpeg2video": ("avi", "yuv420p", {}),
    "ffv1": ("avi", "yuv420p", {}),
}


def _clip() -> np.ndarray:
    clip = np.empty((FRAMES, 48, 64, 3), np.uint8)  # [T, H, W, 3]
    clip[:] = COLOUR
    for t in range(FRAMES):
        clip[t, :, 8 + 3 * t : 14 + 3 * t] = 255  # a white bar moving right
    return clip


def _encode(path: Path, codec: str, clip: np.ndarray) -> None:
    container_format, pix_fmt, options = CODECS[codec]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = cast(
            av.VideoStream, container.add_stream(codec, rate=Fraction(25, 1), options=options)
        )
        stream.height, stream.width = clip.shape[1:3]
        stream.pix_fmt = pix_fmt
        for image in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def _bar_column(frame: np.ndarray) -> float:
    """The mean column of the white bar in an RGB frame."""
    columns = np.nonzero((frame.astype(int).sum(axis=-1) > 600).mean(axis=0) > 0.5)[0]
    return float(columns.mean())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UCF-like set with one video per codec (classes named after the codecs), prepared."""
    root = tmp_path_factory.mktemp("codecs")
    raw, lists = root / "raw", root / "lists"
    classes = [codec.replace("-", "") for codec in CODECS]
    for codec, cls in zip(CODECS, classes, strict=True):
        for group in (1, 8):  # group 1 goes to the test list, group 8 to the train list
            _encode(raw / f"v_{cls}_g{group:02d}_c01.avi", codec, _clip())
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    train = [f"{c}/v_{c}_g08_c01.avi {i}" for i, c in enumerate(classes, 1)]
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("".join(f"{c}/v_{c}_g01_c01.avi\n" for c in classes))
    prepare_dataset(
        "ucf101", root / "data", raw=raw, splits=lists, num_clients=2, workers=1, progress=False
    )
    return root


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_is_prepared_frame_for_frame(prepared: Path, codec: str) -> None:
    cls = codec.replace("-", "")
    zip_path = prepared / "data" / "ucf101" / "zips" / cls / f"v_{cls}_g08_c01.zip"
    assert count_frames(zip_path) == FRAMES
    with zipfile.ZipFile(zip_path) as archive:
        first, last = (
            cast(np.ndarray, cv2.imdecode(np.frombuffer(archive.read(name), np.uint8), 1))[
                ..., ::-1
            ]
            for name in ("img_00001.jpg", f"img_{FRAMES:05d}.jpg")
        )  # RGB
    assert first.shape == (48, 64, 3)
    background = first[:, 40:].reshape(-1, 3).mean(axis=0)  # right of the bar's start
    np.testing.assert_allclose(background, COLOUR, atol=12)  # colours and channel order kept
    assert _bar_column(first) == pytest.approx(10.5, abs=1.5)
    assert _bar_column(last) == pytest.approx(10.5 + 3 * (FRAMES - 1), abs=1.5)


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_reads_straight_from_the_file(prepared: Path, codec: str) -> None:
    cls = codec.replace("-", "")
    source = VideoFileSource(prepared / "raw", "{video}.avi")
    frames = source.read_clip(f"{cls}/v_{cls}_g01_c01", lambda n: np.arange(n))
    assert frames.shape == (FRAMES, 48, 64, 3)
    shifts = [_bar_column(frames[t + 1]) - _bar_column(frames[t]) for t in range(FRAMES - 1)]
    assert np.mean(shifts) == pytest.approx(3.0, abs=0.5)  # the bar moves 3 px a frame
