"""The package's one progress bar: tqdm in a terminal, a plain line every so often in a log.

Every progress bar of the package (training, retrieval, dataset preparation, downloads) is made
by :func:`progress_bar`. On a terminal it is an ordinary tqdm bar, redrawn in place.
When the output is not a terminal (a log file, a pipe, a batch job's output) redrawing in place
only fills the log with carriage returns, so the bar writes one whole line instead, with the
count, the rate and the time left, at most once per ``interval`` seconds and once at the end.

It imports no torch, so the data preparation uses it too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LINE_INTERVAL_S = 30.0  # seconds between two lines of a bar whose output is not a terminal


class _LineBar(tqdm):
    """A tqdm bar that writes whole lines (for output that is not a terminal)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the bar as one line; an empty message (tqdm clearing its line) writes nothing."""
        text = str(self) if msg is None else msg
        if not text:
            return False  # tqdm then writes no "\r" either
        self.fp.write(text + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        """Write the final line (count, rate and elapsed time), then close."""
        if not self.disable and self.last_print_n != self.n:
            self.display()
        super().close()


def is_terminal(stream: IO[str]) -> bool:
    """Tell whether ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    file: IO[str] | None = None,
    interval: float = LINE_INTERVAL_S,
    **kwargs: Any,
) -> tqdm:
    """Return a progress bar: tqdm on a terminal, one line per ``interval`` seconds elsewhere.

    Parameters
    ----------
    iterable : Iterable | None
        Iterate over it through the bar (as ``tqdm(iterable)``), or None to call ``update``.
    total : float | None
        Expected number of units (``len(iterable)`` when it has one).
    desc, unit : str
        Label and unit ("video", "B", ...).
    enabled : bool
        False gives a bar that shows nothing.
    leave : bool
        On a terminal, keep the finished bar on screen (a log always keeps its last line).
    file : IO[str] | None
        Where to write (default: standard error).
    interval : float
        Seconds between two lines when ``file`` is not a terminal.
    **kwargs
        Any other tqdm option (``initial``, ``unit_scale``, ...).

    Returns
    -------
    tqdm
        The bar; use it as tqdm's (``update``, ``set_postfix``, ``close``, a context manager).
    """
    stream = sys.stderr if file is None else file
    if is_terminal(stream) or not enabled:
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave,
            file=stream, **kwargs,
        )  # fmt: skip
    return _LineBar(
        iterable, total=total, desc=desc, unit=unit, leave=False, file=stream,
        mininterval=interval, maxinterval=max(interval, 1.0), miniters=1, **kwargs,
    )  # fmt: skip
