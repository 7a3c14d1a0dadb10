"""Worker processes for the per-video jobs of dataset preparation (synthesis, frame extraction).

Jobs run in a ``concurrent.futures`` process pool started with ``forkserver`` (``spawn`` where
that is missing), never ``fork``: the parent may hold threads (a progress bar's, a data
loader's) that a forked child would inherit in a broken state. One worker, or one job, runs in
the calling process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from CtP.progress import progress_bar

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")


def default_workers() -> int:
    """Return min(4, the number of CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def run_jobs(
    fn: Callable[[JobT], ResultT],
    jobs: Sequence[JobT],
    *,
    workers: int | None = None,
    desc: str = "",
    unit: str = "video",
    progress: bool = True,
) -> Iterator[ResultT]:
    """Run ``fn`` on every job, in worker processes, yielding results as they finish.

    Parameters
    ----------
    fn : Callable[[JobT], ResultT]
        A module-level function (it is pickled by name); it should catch its own errors and
        return them in its result, so one bad job never stops the others.
    jobs : Sequence[JobT]
        Picklable job descriptions.
    workers : int | None
        Number of processes; ``None`` means :func:`default_workers`.
    desc, unit : str
        Progress bar label and unit.
    progress : bool
        Show a progress bar (:func:`CtP.progress.progress_bar`).

    Yields
    ------
    ResultT
        One result per job, in completion order.
    """
    workers = default_workers() if workers is None else max(1, workers)
    with progress_bar(total=len(jobs), desc=desc, unit=unit, enabled=progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(job)
                bar.update(1)
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context)
        try:
            futures = [pool.submit(fn, job) for job in jobs]
            for future in as_completed(futures):
                yield future.result()
                bar.update(1)
        finally:  # on an error or Ctrl-C, drop the jobs not started yet
            pool.shutdown(wait=True, cancel_futures=True)
