"""The synthetic dataset: UCF-101 layout, determinism, and classes that differ by motion only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedvssl.data.frames import decode_frames
from fedvssl.data.scenes import (
    MOTIONS,
    change_light,
    render_video,
    sample_appearance,
    sample_track,
)
from fedvssl.data.splits import read_ucf_split
from fedvssl.data.synthetic import (
    MANIFEST,
    generate_synthetic_ucf,
    recorded_setting,
    video_plan,
)

SIZE = (128, 96)


def _tiny(root: Path, scale: float = 0.1, seed: int = 0, light: float = 0.0) -> bool:
    """Three classes of 6-8 frames at 64x48."""
    return generate_synthetic_ucf(
        root,
        scale=scale,
        seed=seed,
        num_classes=3,
        frames=(6, 8),
        size=(64, 48),
        light_change=light,
        workers=1,
    )


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_plan_splits_whole_groups_like_ucf() -> None:
    plan = video_plan(num_classes=10, scale=1.0)
    assert len(plan) == 280
    for motion in MOTIONS:
        mine = [s for s in plan if s.motion == motion]
        train = {s.group for s in mine if s.subset == "train"}
        test = {s.group for s in mine if s.subset == "test"}
        assert len([s for s in mine if s.subset == "train"]) == 20
        assert len([s for s in mine if s.subset == "test"]) == 8
        assert test == {1, 2} and train == {3, 4, 5, 6, 7}  # whole groups, test first
        assert all(1 <= s.clip <= 4 for s in mine)
    assert plan[0].file_name == "v_MoveRight_g01_c01.avi"
    tiny = video_plan(num_classes=2, scale=0.01)  # at least one train and one test per class
    assert [(s.subset, s.group) for s in tiny] == [("test", 1), ("train", 2)] * 2


def test_layout_and_split_files_parse(tmp_path: Path) -> None:
    assert _tiny(tmp_path) is True
    lists = tmp_path / "ucfTrainTestlist"
    assert (lists / "classInd.txt").read_bytes() == b"1 MoveRight\r\n2 MoveLeft\r\n3 MoveUp\r\n"
    train_lines = (lists / "trainlist01.txt").read_bytes().split(b"\r\n")
    assert train_lines[0] == b"MoveRight/v_MoveRight_g02_c01.avi 1" and train_lines[-1] == b""
    assert (
        (lists / "testlist01.txt").read_bytes().startswith(b"MoveRight/v_MoveRight_g01_c01.avi\r\n")
    )
    split = read_ucf_split(lists)
    assert split.classes == ["MoveRight", "MoveLeft", "MoveUp"]
    assert len(split.train) == 3 * 2 and len(split.test) == 3 * 1
    raw = sorted(p.name for p in (tmp_path / "UCF101_raw").iterdir())
    assert raw == sorted(e.video_file for e in split.train + split.test)  # flat, nothing else
    entry = split.train[-1]
    assert (entry.name, entry.label) == ("MoveUp/v_MoveUp_g02_c02", 3)
    frames = list(decode_frames(tmp_path / "UCF101_raw" / entry.video_file))
    assert 6 <= len(frames) <= 8
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert _tiny(tmp_path) is False  # already there


def test_same_seed_same_bytes_other_seed_other_videos(tmp_path: Path) -> None:
    _tiny(tmp_path / "a", seed=3)
    _tiny(tmp_path / "b", seed=3)
    _tiny(tmp_path / "c", seed=4)
    a, b, c = (_all_files(tmp_path / x / "UCF101_raw") for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_changed_settings_rewrite_the_dataset(tmp_path: Path) -> None:
    _tiny(tmp_path)
    assert _tiny(tmp_path, scale=0.2) is True
    assert len(list((tmp_path / "UCF101_raw").iterdir())) == 3 * 6
    assert "light_change" not in (tmp_path / MANIFEST).read_text()  # earlier datasets still match
    constant = _all_files(tmp_path / "UCF101_raw")
    assert _tiny(tmp_path, scale=0.2, light=0.3) is True
    assert recorded_setting(tmp_path, "light_change") == 0.3
    assert _tiny(tmp_path, scale=0.2, light=0.3) is False
    changed = _all_files(tmp_path / "UCF101_raw")
    assert changed.keys() == constant.keys() and all(changed[k] != constant[k] for k in changed)
    for bad, message in ((-0.1, "light_change must be at least 0"), (0.0, "scale must be")):
        with pytest.raises(ValueError, match=message):  # refused, and nothing there is lost
            _tiny(tmp_path, scale=0.2 if bad else -1.0, light=bad)
        assert _all_files(tmp_path / "UCF101_raw") == changed


@pytest.mark.parametrize("amount", [0.2, 0.6])
def test_light_changes_steadily_by_the_drawn_amount(amount: float) -> None:
    grey = np.full((12, 8, 8, 3), 100, np.uint8)  # mid-grey: no pixel clips
    brightness = []
    for seed in range(20):
        lit = change_light(grey, np.random.default_rng(seed), amount)
        means = lit.reshape(12, -1).mean(axis=1)  # [T]
        steps = np.diff(means)
        assert np.all(steps >= 0) or np.all(steps <= 0)  # brightens or darkens, never both
        brightness.append(math.log(means[-1] / means[0]))
    change = np.abs(brightness)
    assert np.all(change > 0.95 * amount / 2) and np.all(change < 1.05 * amount)
    assert min(brightness) < 0 < max(brightness)  # both ways occur
    rng = np.random.default_rng(0)
    assert change_light(grey, rng, 0.0) is grey
    assert rng.random() == np.random.default_rng(0).random()  # amount 0 draws nothing


# --- classes differ by motion, not by appearance ---


def _object_track(frames: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid [T, 2] and area [T] of the pixels that differ from the background."""
    mask = np.any(frames != background[None], axis=-1)  # [T, H, W]
    ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
    area = mask.sum(axis=(1, 2))
    cx = (mask * xs).sum(axis=(1, 2)) / area
    cy = (mask * ys).sum(axis=(1, 2)) / area
    return np.stack([cx, cy], axis=1), area.astype(float)


def _reversals(path: np.ndarray) -> int:
    steps = np.diff(path)
    signs = np.sign(steps[np.abs(steps) > 0.3])
    return int(np.sum(signs[1:] != signs[:-1]))


def _classify(center: np.ndarray, area: np.ndarray) -> str:
    """Name the motion from the object's centroid and area alone."""
    x, y = center[:, 0], center[:, 1]
    if area[-1] / area[0] > 2.5 or area[-1] / area[0] < 0.4:
        return "ZoomIn" if area[-1] > area[0] else "ZoomOut"
    if np.ptp(x) < 2 and np.ptp(y) < 2:
        return "Spin"
    if np.ptp(x) < 2 and _reversals(y) >= 2:
        return "Bounce"
    if _reversals(x) == 0 and np.ptp(y) < 2:
        return "MoveRight" if x[-1] > x[0] else "MoveLeft"
    if _reversals(y) == 0 and np.ptp(x) < 2:
        return "MoveDown" if y[-1] > y[0] else "MoveUp"
    rel = center - center.mean(axis=0)
    turn = np.diff(np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))).sum()
    if abs(turn) > 1.3 * math.pi:  # image y points down: a growing angle is clockwise
        return "CircleClockwise" if turn > 0 else "CircleAnticlockwise"
    return "unknown"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_class_is_recognised_from_motion_alone(seed: int) -> None:
    look = sample_appearance(np.random.default_rng(seed), *SIZE)
    background = (np.clip(look.background * 255 + 0.5, 0, 255)).astype(np.uint8)
    for motion in MOTIONS:
        track = sample_track(motion, np.random.default_rng(100 + seed), 40, SIZE, look.radius)
        frames = render_video(look, track)
        center, area = _object_track(frames, background)
        assert _classify(center, area) == motion
        if motion == "Spin":  # the object stays put, but turns
            moved = np.any(frames[0] != frames[10], axis=-1).mean()
            assert moved > 0.002


def test_mean_colour_does_not_depend_on_the_class() -> None:
    means = []  # [appearance, motion, 3]
    for seed in range(6):
        look = sample_appearance(np.random.default_rng(seed), *SIZE)
        row = []
        for motion in MOTIONS:
            track = sample_track(motion, np.random.default_rng(50 + seed), 40, SIZE, look.radius)
            row.append(render_video(look, track).reshape(-1, 3).mean(axis=0))
        means.append(row)
    colours = np.array(means)
    across_looks = colours.mean(axis=1).std(axis=0).mean()  # appearance changes the colour...
    across_motions = np.abs(colours - colours.mean(axis=1, keepdims=True)).max()  # ...motion not
    assert across_looks > 20
    assert across_motions < 0.25 * across_looks


def test_written_videos_move_the_right_way(tmp_path: Path) -> None:
    generate_synthetic_ucf(tmp_path, scale=0.01, num_classes=4, frames=(16, 16), workers=1)
    for entry in read_ucf_split(tmp_path / "ucfTrainTestlist").train:
        frames = np.stack(list(decode_frames(tmp_path / "UCF101_raw" / entry.video_file)))
        early = np.abs(frames[4].astype(int) - frames[0]).sum(axis=-1) > 60  # [H, W]
        late = np.abs(frames[-1].astype(int) - frames[-5]).sum(axis=-1) > 60
        ys, xs = np.nonzero(early)  # the object's old and new places: centred between them
        y1, x1 = np.nonzero(late)
        shift = {"x": x1.mean() - xs.mean(), "y": y1.mean() - ys.mean()}
        axis, sign = {"MoveRight": ("x", 1), "MoveLeft": ("x", -1), "MoveUp": ("y", -1)}.get(
            entry.class_name, ("y", 1)
        )
        assert sign * shift[axis] > 10, (entry.name, shift)
