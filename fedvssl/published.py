"""The six published FedVSSL checkpoints by name: a manifest, a download cache, a check.

The authors published six ``round-540.npz`` files, pre-trained with CtP on Kinetics-400 for each
(alpha, beta) of the paper's table, all under the same file name on Google Drive. Here each has a
short name (``fedvssl-a0.9-b1``), and ``pretrained=published:NAME`` in ``fedvssl.finetune`` (or
``pretrained_model_path=published:NAME`` with ``fedvssl.main pre_train=false``) stands for the
file: it is downloaded once into a cache folder, resumably, then checked through the restricted
checkpoint loader (126 arrays of a width-64 CtP model, every one finite) before it is used, and
again on every later use: a download that fails the check is removed, a cached file that fails it
(saved by hand, or damaged since) is moved aside as ``<name>.npz.rejected``. With the file in the
cache nothing touches the network.

Drive serves small files directly and large ones after a confirmation page ("can't scan this
file for viruses"); :func:`download_address` reads that page's form and returns the address of
the file itself.

``python -m fedvssl.published`` lists the manifest and what is cached; ``... fetch NAME|all``
downloads ahead of time.
"""

from __future__ import annotations

import argparse
import html.parser
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedvssl.checkpoints import CheckpointError, load_backbone_state
from fedvssl.data.download import download_file
from fedvssl.data.errors import DataError

log = logging.getLogger(__name__)

PREFIX = "published:"
DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download"
CACHE_ENV = "FEDVSSL_CACHE"  # the cache folder, unless the config key published_cache is set
TIMEOUT_S = 60.0


class PublishedError(CheckpointError):
    """A published checkpoint is unknown, cannot be downloaded, or failed its check."""


@dataclass(frozen=True)
class Published:
    """One published checkpoint, with the numbers the original reports for it (docs/results.md)."""

    alpha: float  # the paper's meaning: weight of the loss-based average
    beta: float
    drive_id: str  # the Google Drive file id of the original README
    ucf101_top1: float  # fine-tuned on UCF-101
    ucf101_r1: float  # retrieval R@1 on UCF-101
    hmdb51_r1: float  # retrieval R@1 on HMDB-51
    width: int = 64  # R3D-18
    name: str = ""  # empty: fedvssl-a{alpha}-b{beta}

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"fedvssl-a{self.alpha:g}-b{self.beta:g}")

    @property
    def file_name(self) -> str:
        """The file's name in the cache."""
        return f"{self.name}.npz"

    @property
    def page(self) -> str:
        """The Drive page a person can download the file from by hand."""
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


# The original README's table (drive ids, UCF-101 R@1) and the paper's table (top-1, HMDB-51 R@1).
MANIFEST: tuple[Published, ...] = (
    Published(0.0, 0.0, "15EEIQay5FRBMloEzt1SQ8l8VjZFzpVNt", 79.91, 34.34, 15.82),
    Published(1.0, 0.0, "1OUj8kb0ahJSKAZEB-ES94pOG5-fB-28-", 79.14, 34.23, 16.73),
    Published(0.0, 1.0, "1N62kXPcLQ_tM45yd2kBYjNOskdHclwLM", 79.43, 35.61, 16.93),
    Published(1.0, 1.0, "1SKb5aXjpVAeWbzTKMFN9rjHW_LQsmUXj", 78.99, 35.66, 16.41),
    Published(0.9, 0.0, "1W1oCnLXX0UJhQ4MlmRw-r7z5DTCeO75b", 80.62, 35.50, 16.27),
    Published(0.9, 1.0, "1BK-bbyunxTWNqs-QyOYiohaNv-t3-hYe", 79.41, 35.34, 16.93),
)


def default_cache() -> Path:
    """``$FEDVSSL_CACHE``, else ``$XDG_CACHE_HOME/fedvssl``, else ``~/.cache/fedvssl``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fedvssl"


def lookup(name: str, manifest: Sequence[Published] = MANIFEST) -> Published:
    """Return the manifest entry called ``name``; an unknown name lists the known ones."""
    for entry in manifest:
        if entry.name == name:
            return entry
    names = ", ".join(entry.name for entry in manifest)
    raise PublishedError(f"no published checkpoint is called {name!r}; the names are: {names}")


class _ConfirmationPage(html.parser.HTMLParser):
    """Collects a Drive confirmation page's download form, or its ``confirm=`` link."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.link: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form" and "download" in values.get("action", ""):
            self.action, self._in_form = values["action"], True
        elif tag == "input" and self._in_form and values.get("type") == "hidden":
            self.fields[values.get("name", "")] = values.get("value", "")
        elif tag == "a" and "confirm=" in values.get("href", "") and self.link is None:
            self.link = values["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False

    def address(self, base: str) -> str | None:
        """Return the file's address, resolved against ``base``; None if the page has none."""
        if self.action is not None:
            query = urllib.parse.urlencode(self.fields)
            return urllib.parse.urljoin(base, self.action) + ("?" + query if query else "")
        return urllib.parse.urljoin(base, self.link) if self.link else None


def download_address(url: str, *, timeout: float = TIMEOUT_S) -> str:
    """Return where the file of ``url`` comes from: ``url`` itself, or past Drive's confirmation.

    Raises
    ------
    DataError
        If the server cannot be reached, or answers with a page that leads to no file (Drive's
        quota or permission pages).
    """
    request = urllib.request.Request(url, headers={"User-Agent": "fedvssl/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if "text/html" not in response.headers.get("Content-Type", ""):
                return url  # the file itself
            page = _ConfirmationPage()
            page.feed(response.read(1 << 20).decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"cannot reach {url} ({getattr(err, 'reason', err)})") from None
    address = page.address(url)
    if address is None:
        raise DataError(f"{url} answered with a web page that leads to no file")
    return address


def fetch(
    entry: Published,
    cache: Path | None = None,
    *,
    url: str = DRIVE_URL,
    progress: bool = True,
) -> Path:
    """Return the checked local file of ``entry``, downloading it into ``cache`` when missing.

    Parameters
    ----------
    entry : Published
        The checkpoint.
    cache : Path or None
        Cache folder (None: :func:`default_cache`); the file is ``<cache>/<name>.npz``.
    url : str
        Download address with an ``{id}`` field for the Drive file id.
    progress : bool
        Show a progress bar.

    Raises
    ------
    PublishedError
        If the download fails (saying where to put the file by hand) or the file fails its check
        (a download is then removed, a cached file moved aside).
    """
    dest = (cache or default_cache()) / entry.file_name
    if dest.is_file():
        check_cached(entry, dest)
        return dest
    try:
        address = download_address(url.format(id=entry.drive_id))
        download_file(address, dest, progress=progress, timeout=TIMEOUT_S)
    except DataError as err:
        raise PublishedError(
            f"could not download {entry.name}: {err}. Without a network, download it by hand "
            f"from {entry.page} and save it as {dest}"
        ) from None
    check(entry, dest)
    log.info("published checkpoint %s cached at %s", entry.name, dest)
    return dest


def _problem(entry: Published, path: Path) -> str | None:
    """Load ``path`` through the restricted loader; say why it is not ``entry``'s model, if so."""
    try:
        state = load_backbone_state(path)
    except CheckpointError as err:
        return str(err)
    width = int(state["stem.conv.weight"].shape[0])
    return f"a width-{width} backbone, expected {entry.width}" if width != entry.width else None


def check(entry: Published, path: Path) -> None:
    """Check a fresh download of ``entry``; remove it unless it is ``entry``'s model."""
    problem = _problem(entry, path)
    if problem is not None:
        path.unlink(missing_ok=True)
        raise PublishedError(
            f"the download of {entry.name} is not the published checkpoint ({problem}); it was "
            "removed, run the command again to download it afresh"
        )


def check_cached(entry: Published, path: Path) -> None:
    """Check a cached file of ``entry`` (it may have been saved by hand, or damaged since).

    A file that fails is moved aside (``<name>.npz.rejected``), never deleted.
    """
    problem = _problem(entry, path)
    if problem is not None:
        aside = path.with_name(f"{path.name}.rejected")
        path.replace(aside)
        raise PublishedError(
            f"the cached {entry.name} is not the published checkpoint ({problem}); it was moved "
            f"to {aside}: run the command again to download it afresh, or save the right file "
            f"(from {entry.page}) as {path}"
        )


def resolve_checkpoint(
    spec: str | None,
    cache: str | Path | None = None,
    *,
    url: str = DRIVE_URL,
    progress: bool = True,
    manifest: Sequence[Published] = MANIFEST,
) -> str | None:
    """Turn ``published:NAME`` into the cached file's path; any other value is returned as is."""
    if not spec or not str(spec).startswith(PREFIX):
        return spec
    entry = lookup(str(spec).removeprefix(PREFIX), manifest)
    return str(fetch(entry, Path(cache) if cache else None, url=url, progress=progress))


def manifest_table(cache: Path, manifest: Sequence[Published] = MANIFEST) -> str:
    """Return the manifest as a text table, with each checkpoint's cached file or ``-``."""
    rows = [("name", "alpha", "beta", "UCF top-1", "UCF R@1", "HMDB R@1", "cached")]
    for e in manifest:
        cached = cache / e.file_name
        rows.append((
            e.name, f"{e.alpha:g}", f"{e.beta:g}", f"{e.ucf101_top1:.2f}", f"{e.ucf101_r1:.2f}",
            f"{e.hmdb51_r1:.2f}", str(cached) if cached.is_file() else "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m fedvssl.published [list | fetch NAME|all] [--cache DIR]``."""
    parser = argparse.ArgumentParser(description="The published FedVSSL checkpoints.")
    parser.add_argument("command", nargs="?", default="list", choices=["list", "fetch"])
    parser.add_argument("name", nargs="?", help="fetch: a checkpoint name, or all")
    parser.add_argument("--cache", type=Path, help=f"cache folder (default: {default_cache()})")
    parser.add_argument("--url", default=DRIVE_URL, help="download address with an {id} field")
    args = parser.parse_args(argv)
    cache = args.cache or default_cache()
    if args.command == "fetch":
        names = [e.name for e in MANIFEST] if args.name == "all" else [args.name or ""]
        try:
            for name in names:
                print(fetch(lookup(name), cache, url=args.url))
        except PublishedError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print(manifest_table(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
