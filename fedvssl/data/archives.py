"""Safe extraction of the dataset archives (zip through ``zipfile``, RAR through unrar2-cffi).

Every extraction goes through :func:`extract_members`, which reads from any object with
``namelist()`` and ``read(name)``: a :class:`zipfile.ZipFile` or a :class:`RarReader`. All member
names are checked before anything is written, and a member that would land outside the target
folder (an absolute path, a drive letter, a ``..`` component) stops the extraction with one error
naming it. Each file is written atomically. ``unrar.cffi`` is imported only when a RAR archive is
opened.
"""

from __future__ import annotations

import contextlib
import logging
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Protocol

from fedvssl.data.atomic import write_bytes_atomic
from fedvssl.data.errors import DataError

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")
RAR_INSTALL_HINT = 'reading .rar archives needs the unrar2-cffi package: pip install -e ".[data]"'


class ArchiveReader(Protocol):
    """What extraction needs from an archive: its member names and their bytes."""

    def namelist(self) -> list[str]:
        """Return the member names (directories may end in ``/``)."""
        ...

    def read(self, name: str) -> bytes:
        """Return the bytes of one member."""
        ...


def safe_member_path(name: str, *, source: str = "archive") -> PurePosixPath:
    """Check an archive member name and return it as a relative POSIX path.

    Parameters
    ----------
    name : str
        Member name as stored in the archive (forward or backward slashes).
    source : str
        The archive, for the error message.

    Returns
    -------
    PurePosixPath
        The relative path the member may be written to.

    Raises
    ------
    DataError
        If the name is empty, absolute, starts with a drive letter or contains ``..``.
    """
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    unsafe = (
        not parts
        or "\x00" in norm
        or norm.startswith("/")
        or _DRIVE.match(norm) is not None
        or ".." in parts
    )
    if unsafe:
        raise DataError(
            f"refusing member {name!r} of {source}: it would land outside the target folder "
            "(absolute path, drive letter or '..'); the archive is unsafe or damaged, "
            "get a fresh copy from the official address"
        )
    return PurePosixPath(*parts)


def _is_directory(name: str) -> bool:
    return name.endswith(("/", "\\"))


def plan_extraction(
    names: list[str],
    dest: Path,
    *,
    flat: bool = False,
    select: Callable[[str], bool] | None = None,
    source: str = "archive",
) -> list[tuple[str, Path]]:
    """Map the members to extract onto their target files, refusing unsafe names.

    Parameters
    ----------
    names : list[str]
        All member names of the archive (every one is checked, selected or not).
    dest : Path
        Target folder.
    flat : bool
        Drop the folders inside the archive and write every file directly into ``dest``.
    select : Callable[[str], bool] | None
        Keep only members whose name passes this test (all files when ``None``).
    source : str
        The archive, for error messages.

    Returns
    -------
    list[tuple[str, Path]]
        ``(member name, target file)`` pairs, in archive order.

    Raises
    ------
    DataError
        On an unsafe member name, or two members with one target in flat mode.
    """
    root = dest.resolve()
    plan: list[tuple[str, Path]] = []
    seen: dict[Path, str] = {}
    for name in names:
        if name in ("./", ".\\"):  # the archive's own top folder
            continue
        rel = safe_member_path(name, source=source)
        if _is_directory(name) or (select is not None and not select(name)):
            continue
        target = root / (rel.name if flat else Path(*rel.parts))
        if not target.resolve().is_relative_to(root):
            raise DataError(f"refusing member {name!r} of {source}: it resolves outside {dest}")
        if target in seen:
            raise DataError(f"members {seen[target]!r} and {name!r} of {source} collide in {dest}")
        seen[target] = name
        plan.append((name, target))
    return plan


def extract_members(
    reader: ArchiveReader,
    dest: Path,
    *,
    flat: bool = False,
    select: Callable[[str], bool] | None = None,
    source: str = "archive",
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Extract the members of an open archive into ``dest``, safely and atomically.

    Parameters
    ----------
    reader : ArchiveReader
        Anything with ``namelist()`` and ``read(name)``.
    dest : Path
        Target folder (created if needed).
    flat : bool
        Write every file directly into ``dest``, without the archive's folders.
    select : Callable[[str], bool] | None
        Keep only members whose name passes this test.
    source : str
        The archive, for error messages.
    progress : Callable[[int], None] | None
        Called with 1 after each file.

    Returns
    -------
    list[Path]
        The files written.
    """
    plan = plan_extraction(reader.namelist(), dest, flat=flat, select=select, source=source)
    written = []
    for name, target in plan:
        write_bytes_atomic(reader.read(name), target)
        written.append(target)
        if progress is not None:
            progress(1)
    return written


def _import_unrarlib() -> Any:
    try:
        from unrar.cffi import unrarlib
    except ImportError as err:
        raise DataError(RAR_INSTALL_HINT) from err
    return unrarlib


class RarReader:
    """Read a RAR archive member by member through unrar2-cffi, in one pass when read in order.

    ``read`` keeps the archive open and moves forward to the requested member, so reading the
    members in archive order decompresses the archive once (a solid archive would otherwise be
    decompressed again for every member). Use it as a context manager.

    Parameters
    ----------
    path : Path
        The ``.rar`` file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = _import_unrarlib()
        self._stack = contextlib.ExitStack()
        self._headers: Iterator[Any] | None = None
        self._names = self._list_names()

    def _list_names(self) -> list[str]:
        names: dict[str, None] = {}
        with self._guard(), self._lib.RarArchive.open_for_metadata(str(self.path)) as rar:
            for header in rar.iterate_headers():
                name = header.FileNameW
                names[name + "/" if header.Flags & self._lib.FLAGS_RHDF_DIRECTORY else name] = None
                header.skip()
        return list(names)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except self._lib.BadRarFile as err:
            raise DataError(
                f"cannot read RAR archive {self.path} ({err}); it is damaged or incomplete, "
                "delete it and download it again"
            ) from err

    def namelist(self) -> list[str]:
        """Return the member names (directories end in ``/``)."""
        return list(self._names)

    def read(self, name: str) -> bytes:
        """Return the bytes of member ``name``.

        Parameters
        ----------
        name : str
            A name from :meth:`namelist`.

        Returns
        -------
        bytes
            The member's content.
        """
        with self._guard():
            for _ in range(2):  # forward from the cursor, then once more from the start
                if self._headers is None:
                    rar = self._stack.enter_context(
                        self._lib.RarArchive.open_for_processing(str(self.path))
                    )
                    self._headers = rar.iterate_headers()
                for header in self._headers:
                    if header.FileNameW == name:
                        chunks: list[bytes] = []
                        header.test(chunks.append)
                        return b"".join(chunks)
                    header.skip()
                self.close()
        raise DataError(f"member {name!r} not found in {self.path}")

    def close(self) -> None:
        """Close the archive handle, if open."""
        self._headers = None
        self._stack.close()

    def __enter__(self) -> RarReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def extract_archive(
    path: Path,
    dest: Path,
    *,
    flat: bool = False,
    select: Callable[[str], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Extract a ``.zip`` or ``.rar`` archive into ``dest``, refusing unsafe members.

    Parameters
    ----------
    path : Path
        The archive; its suffix (``.zip`` or ``.rar``) picks the reader.
    dest : Path
        Target folder.
    flat : bool
        Drop the archive's folders.
    select : Callable[[str], bool] | None
        Keep only members whose name passes this test.
    progress : Callable[[int], None] | None
        Called with 1 after each file.

    Returns
    -------
    list[Path]
        The files written.

    Raises
    ------
    DataError
        If the archive is missing, damaged, of an unknown kind or holds an unsafe member.
    """
    if not path.is_file():
        raise DataError(f"archive not found: {path}")
    kind = path.suffix.lower()
    log.info("extracting %s into %s", path, dest)
    if kind == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                return extract_members(
                    zf, dest, flat=flat, select=select, source=str(path), progress=progress
                )
        except zipfile.BadZipFile as err:
            raise DataError(f"{path} is not a valid zip file ({err}); download it again") from err
    if kind == ".rar":
        with RarReader(path) as rar:
            return extract_members(
                rar, dest, flat=flat, select=select, source=str(path), progress=progress
            )
    raise DataError(f"unknown archive type {path.name!r}: expected a .zip or .rar file")
