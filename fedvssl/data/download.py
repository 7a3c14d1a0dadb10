"""Resumable, checked downloads over HTTP(S) with the standard library.

A download goes to ``<dest>.part``; when it is interrupted, the next call asks the server for the
remaining bytes (HTTP ``Range``) and appends them. The finished file is checked against the size
the server announced (and an expected size and SHA-256, when known) before it is renamed to
``dest``, so ``dest`` only ever holds a complete file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from CtP.progress import progress_bar
from fedvssl.data.errors import DataError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_complete(path: Path, expected_size: int | None, sha256: str | None) -> None:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DataError(
            f"{path} has {size} bytes, expected {expected_size}; delete it and download it again"
        )
    if sha256 is not None and sha256_of(path).lower() != sha256.lower():
        raise DataError(f"{path} does not match its SHA-256 checksum; delete it and download again")


def _open(url: str, offset: int, timeout: float, verify_tls: bool) -> http.client.HTTPResponse:
    """Open ``url`` from byte ``offset``; HTTP 416 (nothing left) is passed on as HTTPError."""
    request = urllib.request.Request(url, headers={"User-Agent": "fedvssl-data/0.1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    context = ssl.create_default_context()
    if not verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(
            request, timeout=timeout, context=context
        )
        return response
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            raise
        raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        hint = ""
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = " (the server's TLS certificate did not verify: see --no-check-certificate)"
        raise DataError(
            f"cannot download {url}: {reason}{hint}; check the network, or download the "
            "file yourself and pass it with --raw/--splits"
        ) from err


def _range_total(header: str | None) -> int | None:
    """Return the full size from a ``Content-Range`` header (``bytes a-b/total``)."""
    match = _CONTENT_RANGE.match(header or "")
    if match is None or match.group(3) == "*":
        return None
    return int(match.group(3))


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    if response.status == 206:
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.match(header)
        if match is None or int(match.group(1)) != offset:
            raise DataError(f"the server answered a resumed download with a bad range {header!r}")
        return _range_total(header)
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def _fetch(url: str, part: Path, *, progress: bool, timeout: float, verify_tls: bool) -> None:
    """Bring ``part`` up to the full file, resuming from its current size."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, timeout, verify_tls)
    except urllib.error.HTTPError as err:  # 416: the part file is as long as the file, or longer
        if _range_total(err.headers.get("Content-Range")) != offset:
            log.warning("%s does not fit the file on the server; downloading it again", part)
            part.unlink()
            _fetch(url, part, progress=progress, timeout=timeout, verify_tls=verify_tls)
        return
    with response:
        if response.status != 206:
            offset = 0  # the server sent the whole file: start again
        total = _total_size(response, offset)
        with (
            part.open("ab" if offset else "wb") as out,
            progress_bar(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                enabled=progress,
            ) as bar,
        ):
            try:
                _copy(response, out, bar)
            except (http.client.IncompleteRead, OSError) as err:
                raise DataError(
                    f"download of {url} was interrupted ({err}); "
                    f"run the same command again to resume from {part}"
                ) from err
    got = part.stat().st_size
    if total is not None and got != total:
        raise DataError(
            f"download of {url} is incomplete ({got} of {total} bytes); "
            f"run the same command again to resume from {part}"
        )


def _copy(response: IO[bytes], out: IO[bytes], bar: Any) -> None:
    while True:
        block = response.read(CHUNK_BYTES)
        if not block:
            return
        out.write(block)
        bar.update(len(block))


def download_file(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    verify_tls: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Parameters
    ----------
    url : str
        HTTP or HTTPS address.
    dest : Path
        Final file; an existing complete file is kept (checked, not downloaded again).
    expected_size : int | None
        Size in bytes the file must have, when known.
    sha256 : str | None
        Hex SHA-256 the file must have, when known.
    progress : bool
        Show a progress bar (:func:`CtP.progress.progress_bar`).
    timeout : float
        Socket timeout in seconds.
    verify_tls : bool
        Check the server's TLS certificate (turn off only for servers with a broken chain).

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DataError
        If the server cannot be reached, the transfer stops early (run again to resume) or the
        file fails its size or checksum test (the partial file is then deleted).
    """
    if dest.is_file():
        _check_complete(dest, expected_size, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s to %s", url, dest)
    _fetch(url, part, progress=progress, timeout=timeout, verify_tls=verify_tls)
    try:
        _check_complete(part, expected_size, sha256)
    except DataError:
        part.unlink()
        raise
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest
