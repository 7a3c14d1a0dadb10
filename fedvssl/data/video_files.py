"""The video files of a folder tree: which files are videos, in which order, under which names.

Used to prepare a folder of one's own videos (:mod:`fedvssl.data.own_videos`) and by a SuperNode
that reads its own folder in place (:mod:`fedvssl.client_data`); it imports no decoder, so a
client that never prepares anything does not need one to list its videos.
"""

from __future__ import annotations

from pathlib import Path

from fedvssl.data.errors import DataError

VIDEO_SUFFIXES = (  # what FFmpeg (PyAV) reads that cameras and phones write
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv",
    ".flv", ".3gp",
)  # fmt: skip


def find_videos(folder: Path) -> list[Path]:
    """Return every video file under ``folder``, in sorted order (hidden files left out).

    Raises
    ------
    DataError
        If ``folder`` is not a folder or holds no video file.
    """
    if not folder.is_dir():
        raise DataError(f"not a folder of video files: {folder}")
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    if not found:
        raise DataError(
            f"{folder} holds no video files ({' '.join(VIDEO_SUFFIXES)}): point at the folder "
            "of your videos"
        )
    return found


def video_file_names(folder: Path) -> list[str]:
    """Return the path of every video under ``folder``, relative to it (for reading in place)."""
    return [p.relative_to(folder).as_posix() for p in find_videos(folder)]
