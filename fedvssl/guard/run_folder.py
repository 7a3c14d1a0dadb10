"""A run's hold on its folder: one run at a time, and no record written before the run is accepted.

Every entry point (``fedvssl.main``, ``fedvssl.finetune``, ``fedvssl.report``) works in one folder
(``hydra.run.dir``) and keeps its record there: ``.hydra/`` (the exact config), the log
(``main.log``, ...), ``metrics.json`` or ``results.json``. :class:`RunFolder` guards it:

- **a lock** (``.fedvssl.lock``, an exclusive ``flock`` held by the running process): a second run
  in the same folder is refused with one line naming the first (its process, host, start time
  and command). The kernel drops the lock when its process dies, so a lock file left by a killed
  run is noticed (it still names that run, but nobody holds it) and taken over with a warning,
  which lists the processes of the killed run's group that still run (Ray's dashboard and
  runtime-env agents outlive a SIGKILL of their run by a minute or two);
- **the record held back**: Hydra is told not to write ``.hydra/`` (``hydra.output_subdir: null``
  in conf/) and its log file handler opens its file only when a line is written
  (``delay: true``); until :meth:`RunFolder.accept`, that handler is detached, so a run refused
  by its checks (folder in use, settings that do not match the run it would resume, bad input)
  leaves ``.hydra/``, the log and the metrics exactly as they were. ``accept`` writes ``.hydra/``
  (what Hydra would have written) and attaches the log file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from fedvssl.data.atomic import write_bytes_atomic

logger = logging.getLogger("fedvssl")

LOCK_FILE = ".fedvssl.lock"
HYDRA_DIR = ".hydra"  # where Hydra keeps the config of a run (its default output_subdir)


class RunFolderError(ValueError):
    """The run folder cannot be used: another run holds it, or it cannot be written."""


def describe_holder(info: dict[str, Any]) -> str:
    """Name a run from its lock file's content (process, host, start, command)."""
    return (
        f"process {info.get('pid', '?')} on {info.get('host', '?')}, started "
        f"{info.get('started', '?')}: {info.get('command', '?')}"
    )


def _read_info(fd: int) -> dict[str, Any]:
    """Return the JSON a lock file holds ({} when it is empty or unreadable)."""
    data = os.pread(fd, 1 << 16, 0)
    try:
        info = json.loads(data) if data.strip() else {}
    except ValueError:
        return {"command": "unreadable lock file"}
    return info if isinstance(info, dict) else {}


def _open_folder_lock(run_dir: Path) -> int:
    """Open ``run_dir``'s lock file, or fail with one line when the folder cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunFolderError(
            f"cannot write in the run folder {run_dir} ({err.strerror or err}): choose a "
            "writable hydra.run.dir"
        ) from None


def acquire_lock(run_dir: Path) -> int:
    """Lock ``run_dir`` for this process; return the lock file's descriptor.

    Raises
    ------
    RunFolderError
        If another live process holds the folder (naming it), or the folder cannot be written.
    """
    path = run_dir / LOCK_FILE
    while True:
        fd = _open_folder_lock(run_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_info(fd)
            os.close(fd)
            raise RunFolderError(
                f"{run_dir} is in use by another run ({describe_holder(holder)}): wait for it to "
                "end, or choose another hydra.run.dir"
            ) from None
        try:  # the file may have been released (removed) between our open and our lock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _read_info(fd)
    if stale:
        left = survivors(stale)
        logger.warning(
            "%s: taking over the run folder from a run that ended without releasing it (%s)%s",
            run_dir, describe_holder(stale),
            f"; processes of its group still run: {left} (Ray's helpers of a killed run end by "
            "themselves within minutes)" if left else "",
        )  # fmt: skip
    info = {
        "pid": os.getpid(), "pgid": os.getpgid(0), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.orig_argv),
    }  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def survivors(info: dict[str, Any]) -> list[int]:
    """Return the processes still in the process group of a dead run (this host; Linux)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pgid"), int):
        return []
    alive = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(entry.name)) == info["pgid"] and int(entry.name) != os.getpid():
                alive.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return sorted(alive)


def release_lock(run_dir: Path, fd: int) -> None:
    """Remove the lock file (still holding it, so no other run sees it half-gone) and unlock."""
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


class RunFolder:
    """Hold ``run_dir`` for one run; see the module's docstring.

    Use as a context manager: entering locks the folder and detaches the log file, :meth:`accept`
    writes the record and attaches the log file, leaving releases the lock (and drops the log
    file unopened when the run was never accepted).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.accepted = False
        self._fd: int | None = None
        self._held_back: list[logging.Handler] = []

    def __enter__(self) -> RunFolder:
        root = logging.getLogger()
        self._held_back = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        for handler in self._held_back:
            root.removeHandler(handler)
        self._fd = acquire_lock(self.run_dir)
        return self

    def accept(self, record: dict[str, str] | None = None) -> None:
        """Own the folder from now on: write ``record`` (file name -> text) and attach the log.

        Parameters
        ----------
        record : dict of str to str, optional
            The files of ``.hydra/`` (:func:`hydra_record`); None writes none.
        """
        for name, text in (record or {}).items():
            write_bytes_atomic(text.encode(), self.run_dir / HYDRA_DIR / name)
        for handler in self._held_back:
            logging.getLogger().addHandler(handler)
        self._held_back, self.accepted = [], True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for handler in self._held_back:  # never attached: the refused run writes no log
            handler.close()
        self._held_back = []
        if self._fd is not None:
            release_lock(self.run_dir, self._fd)
            self._fd = None


def hydra_record(task_config: Any) -> dict[str, str]:
    """Return what Hydra writes to ``.hydra/`` for the running job: config, hydra, overrides."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    return {
        "config.yaml": OmegaConf.to_yaml(task_config),
        "hydra.yaml": OmegaConf.to_yaml(hydra),
        "overrides.yaml": OmegaConf.to_yaml(HydraConfig.get().overrides.task),
    }
