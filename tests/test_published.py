"""Published checkpoints by name: a loopback server plays Google Drive (direct and confirmation)."""

from __future__ import annotations

import http.server
import io
import urllib.parse
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import Serve

from CtP.ctp import build_ctp
from fedvssl import published as pub
from fedvssl.checkpoints import load_backbone_state

WIDTH = 8
CONFIRM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body><p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-42">
</form></body></html>"""
LEGACY_PAGE = """<html><body>Google Drive - Virus scan warning
<a id="uc-download-link" href="/download?id=legacy&amp;export=download&amp;confirm=AbC1">
Download anyway</a></body></html>"""


def published_bytes(width: int = WIDTH) -> bytes:
    """A small checkpoint in the published layout: one object array of the 126 CtP arrays."""
    arrays = [v.numpy() for v in build_ctp(width=width, clip_len=8).state_dict().values()]
    listed = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        listed[index] = array
    buffer = io.BytesIO()
    np.savez(buffer, listed)
    return buffer.getvalue()


class _Drive(http.server.BaseHTTPRequestHandler):
    """``/download?id=ID``: ``direct`` is sent at once, ``large`` after a confirmation page."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []
    cut_once: ClassVar[bool] = False  # the next file transfer stops half-way

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        type(self).requests.append(self.path)
        body = self.files.get(query.get("id", ""))
        if url.path != "/download" or body is None:
            self.send_error(404)
            return
        if query["id"] in ("large", "legacy") and not query.get("confirm"):
            page = (
                CONFIRM_PAGE.format(action="/download", id="large")
                if query["id"] == "large" else LEGACY_PAGE
            ).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        wanted = self.headers.get("Range")
        start = int(wanted[6:-1]) if wanted else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if type(self).cut_once:
            type(self).cut_once = False
            data = data[: len(data) // 2]
        self.wfile.write(data)


@pytest.fixture
def drive(loopback: Serve) -> tuple[str, type[_Drive]]:
    handler = type(
        "Drive", (_Drive,),
        {"files": dict.fromkeys(("direct", "large", "legacy"), published_bytes()), "requests": []},
    )  # fmt: skip
    return f"{loopback(handler)}/download?id={{id}}&export=download", handler


def entry(drive_id: str) -> pub.Published:
    return pub.Published(0.9, 1.0, drive_id, 1.0, 2.0, 3.0, width=WIDTH, name=f"tiny-{drive_id}")


@pytest.mark.parametrize("drive_id", ["direct", "large", "legacy"])
def test_download_completes_and_loads(
    drive_id: str, drive: tuple[str, type[_Drive]], tmp_path: Path
) -> None:
    url, handler = drive
    path = pub.fetch(entry(drive_id), tmp_path, url=url, progress=False)
    assert path == tmp_path / f"tiny-{drive_id}.npz"
    assert path.read_bytes() == handler.files[drive_id]
    assert load_backbone_state(path)["stem.conv.weight"].shape[0] == WIDTH
    if drive_id == "large":  # the page, then the file through the page's form
        assert "confirm=t" in handler.requests[-1] and "uuid=u-42" in handler.requests[-1]
    if drive_id == "legacy":  # the page's "Download anyway" link
        assert handler.requests[-1].endswith("confirm=AbC1")
    assert not list(tmp_path.glob("*.part"))


def test_killed_download_resumes(drive: tuple[str, type[_Drive]], tmp_path: Path) -> None:
    url, handler = drive
    handler.cut_once = True
    with pytest.raises(pub.PublishedError, match="run the same command again"):
        pub.fetch(entry("large"), tmp_path, url=url, progress=False)
    part = tmp_path / "tiny-large.npz.part"
    half = part.stat().st_size
    assert 0 < half < len(handler.files["large"])
    path = pub.fetch(entry("large"), tmp_path, url=url, progress=False)
    assert path.read_bytes() == handler.files["large"] and not part.exists()


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "wrong width"])
def test_bad_file_is_refused_and_removed(
    damage: str, drive: tuple[str, type[_Drive]], tmp_path: Path
) -> None:
    url, handler = drive
    good = handler.files["direct"]
    if damage == "corrupt":
        handler.files["direct"] = bytes(len(good))
    elif damage == "truncated":
        handler.files["direct"] = good[: len(good) // 3]
    else:
        handler.files["direct"] = published_bytes(WIDTH * 2)
    with pytest.raises(pub.PublishedError, match="not the published checkpoint") as err:
        pub.fetch(entry("direct"), tmp_path, url=url, progress=False)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing kept


@pytest.mark.parametrize("damage", ["wrong width", "non-finite", "truncated"])
def test_a_cached_file_is_checked_on_every_use_and_moved_aside(
    damage: str, drive: tuple[str, type[_Drive]], tmp_path: Path
) -> None:
    url, handler = drive
    cached = pub.fetch(entry("direct"), tmp_path, url=url, progress=False)
    count = len(handler.requests)
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:1000])
    else:  # a file saved by hand under the published name
        arrays = [
            v.numpy()
            for v in build_ctp(width=WIDTH * (2 if damage == "wrong width" else 1), clip_len=8)
            .state_dict()
            .values()
        ]
        if damage == "non-finite":
            arrays[3][0] = np.inf
        listed = np.empty(len(arrays), dtype=object)
        for index, array in enumerate(arrays):
            listed[index] = array
        np.savez(cached, listed)
    with pytest.raises(pub.PublishedError) as refused:
        pub.fetch(entry("direct"), tmp_path, url=url, progress=False)
    message = str(refused.value)
    assert message.startswith("the cached tiny-direct is not the published checkpoint (")
    assert f"moved to {cached}.rejected: run the command again" in message and "\n" not in message
    assert not cached.exists() and Path(f"{cached}.rejected").is_file()
    assert len(handler.requests) == count  # refused without a request
    assert pub.fetch(entry("direct"), tmp_path, url=url, progress=False) == cached  # downloaded


def test_cache_is_reused_without_a_request(drive: tuple[str, type[_Drive]], tmp_path: Path) -> None:
    url, handler = drive
    first = pub.fetch(entry("direct"), tmp_path, url=url, progress=False)
    count = len(handler.requests)
    again = pub.resolve_checkpoint(
        "published:tiny-direct", tmp_path, url=url, manifest=[entry("direct")]
    )
    assert again == str(first) and len(handler.requests) == count


def test_unknown_name_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(pub.PublishedError) as err:
        pub.resolve_checkpoint("published:unknown-name", tmp_path)
    message = str(err.value)
    assert "unknown-name" in message
    assert all(e.name in message for e in pub.MANIFEST)


def test_no_network_says_where_to_put_the_file(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/download?id={id}"  # the discard port: nothing listens there
    with pytest.raises(pub.PublishedError) as err:
        pub.resolve_checkpoint("published:fedvssl-a0.9-b1", tmp_path, url=dead, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "fedvssl-a0.9-b1.npz") in message
    assert "1BK-bbyunxTWNqs-QyOYiohaNv-t3-hYe" in message


def test_page_without_a_file_is_an_error(drive: tuple[str, type[_Drive]], tmp_path: Path) -> None:
    url, handler = drive
    handler.files["quota"] = b""
    original = _Drive.do_GET

    def quota_page(self: _Drive) -> None:
        page = b"<html><body>Too many users have viewed or downloaded this file.</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    handler.do_GET = quota_page  # type: ignore[method-assign]
    try:
        with pytest.raises(pub.PublishedError, match="leads to no file"):
            pub.fetch(entry("quota"), tmp_path, url=url, progress=False)
    finally:
        handler.do_GET = original  # type: ignore[method-assign]
    assert not list(tmp_path.iterdir())


def test_passthrough_and_manifest() -> None:
    assert pub.resolve_checkpoint(None) is None
    assert pub.resolve_checkpoint("outputs/round-3-weights.array.npz") == (
        "outputs/round-3-weights.array.npz"
    )
    names = [e.name for e in pub.MANIFEST]
    assert len(set(names)) == 6 and len({e.drive_id for e in pub.MANIFEST}) == 6
    assert {(e.alpha, e.beta) for e in pub.MANIFEST} == {
        (a, b) for a in (0.0, 0.9, 1.0) for b in (0.0, 1.0)
    }


def test_list_command_shows_what_is_cached(
    drive: tuple[str, type[_Drive]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fedvssl-a0.9-b1.npz").write_bytes(b"x")
    assert pub.main(["list", "--cache", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[0].split()[0] == "name"
    row = next(line for line in lines if line.startswith("fedvssl-a0.9-b1 "))
    assert row.split()[3:] == ["79.41", "35.34", "16.93", str(tmp_path / "fedvssl-a0.9-b1.npz")]
    other = next(line for line in lines if line.startswith("fedvssl-a0-b0 "))
    assert other.split()[-1] == "-"
