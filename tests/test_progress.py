"""The package's one progress bar: redrawn on a terminal, whole lines in a log."""

from __future__ import annotations

import io
import re
from pathlib import Path

from CtP.progress import progress_bar

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_the_bar_writes_whole_lines_with_rate_and_time_left() -> None:
    log = io.StringIO()
    with progress_bar(total=4, desc="frames", unit="video", file=log, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("frames:   0%") and lines[-1].startswith("frames: 100%")
    assert len(lines) == 5  # the start, then one line per update at interval 0
    assert re.search(r"2/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+video/s\]", lines[2])  # rate, time left


def test_in_a_log_a_long_interval_gives_the_first_and_the_last_line_only() -> None:
    log = io.StringIO()
    assert sum(progress_bar(range(1000), desc="epoch 1", file=log, interval=3600)) == 499500
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("epoch 1: 100%|")


def test_on_a_terminal_it_is_tqdm_redrawn_in_place_and_off_shows_nothing() -> None:
    terminal = Terminal()
    with progress_bar(total=3, file=terminal, mininterval=0) as bar:
        bar.update(3)
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    with progress_bar(total=3, file=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_every_progress_bar_of_the_package_is_this_one() -> None:
    sources = [*ROOT.glob("CtP/*.py"), *ROOT.glob("fedvssl/**/*.py"), *ROOT.glob("*.py")]
    direct = [p.name for p in sources if "tqdm" in p.read_text() and p.name != "progress.py"]
    assert direct == []
