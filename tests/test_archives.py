"""Archive extraction (zip, RAR, nested HMDB RARs) and resumable downloads, all offline."""

from __future__ import annotations

import hashlib
import http.server
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import Serve

from fedvssl.data import archives
from fedvssl.data.archives import (
    RAR_INSTALL_HINT,
    RarReader,
    extract_archive,
    extract_members,
    safe_member_path,
)
from fedvssl.data.download import download_file
from fedvssl.data.errors import DataError
from fedvssl.data.frames import count_frames
from fedvssl.data.preparation import prepare_dataset
from fedvssl.data.synthetic import write_video

MALICIOUS = ["../x", "/etc/x", "a/../../x", "..\\x", "C:\\x", "c:x"]


# --- a minimal RAR 5 writer (stored members, no compression), from the RAR 5.0 format notes ---


def _vint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _block(body: bytes) -> bytes:
    size = _vint(len(body))
    return struct.pack("<I", zlib.crc32(size + body)) + size + body


def make_rar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Write a RAR 5 archive holding ``members`` uncompressed."""
    out = bytearray(b"Rar!\x1a\x07\x01\x00")
    out += _block(_vint(1) + _vint(0) + _vint(0))  # main header
    for name, data in members:
        encoded = name.encode()
        header = (
            _vint(2)  # file header
            + _vint(0x0002)  # a data area follows
            + _vint(len(data))
            + _vint(0x0004)  # file flags: data CRC32 present
            + _vint(len(data))  # unpacked size
            + _vint(0)  # attributes
            + struct.pack("<I", zlib.crc32(data))
            + _vint(0)  # compression: version 0, method 0 (store)
            + _vint(1)  # host OS: Unix
            + _vint(len(encoded))
            + encoded
        )
        out += _block(header) + data
    out += _block(_vint(5) + _vint(0) + _vint(0))  # end of archive
    path.write_bytes(bytes(out))
    return path


class FakeReader:
    """Anything with namelist() and read(): the interface extraction relies on."""

    def __init__(self, members: dict[str, bytes]) -> None:
        self.members = members
        self.reads: list[str] = []

    def namelist(self) -> list[str]:
        return list(self.members)

    def read(self, name: str) -> bytes:
        self.reads.append(name)
        return self.members[name]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --- member names ---


@pytest.mark.parametrize("name", MALICIOUS)
def test_safe_member_path_refuses_escapes(name: str) -> None:
    with pytest.raises(DataError, match="refusing member"):
        safe_member_path(name)


def test_safe_member_path_keeps_relative_names() -> None:
    assert safe_member_path("UCF-101/Class/v_a.avi").as_posix() == "UCF-101/Class/v_a.avi"
    assert safe_member_path("./a\\b.txt").as_posix() == "a/b.txt"


# --- the shared extraction path, through a fake reader ---


def test_extract_members_from_fake_reader(tmp_path: Path) -> None:
    reader = FakeReader({"top/": b"", "top/A/x.avi": b"xx", "top/B/y.avi": b"yyy", "n.txt": b"n"})
    written = extract_members(reader, tmp_path / "tree")
    assert _files(tmp_path / "tree") == ["n.txt", "top/A/x.avi", "top/B/y.avi"]
    assert (tmp_path / "tree/top/B/y.avi").read_bytes() == b"yyy"
    assert len(written) == 3
    flat = extract_members(
        reader, tmp_path / "flat", flat=True, select=lambda n: n.endswith(".avi")
    )
    assert _files(tmp_path / "flat") == ["x.avi", "y.avi"]
    assert [p.name for p in flat] == ["x.avi", "y.avi"]


@pytest.mark.parametrize("name", MALICIOUS)
def test_fake_rar_with_malicious_member_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    reader = FakeReader({"ok/first.avi": b"1", name: b"evil"})

    class FakeRar:
        def __init__(self, path: Path) -> None:
            self.path = path

        def __enter__(self) -> FakeReader:
            return reader

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(archives, "RarReader", FakeRar)
    archive = tmp_path / "videos.rar"
    archive.write_bytes(b"not read: the fake reader stands in")
    with pytest.raises(DataError, match="refusing member") as err:
        extract_archive(archive, tmp_path / "out")
    assert repr(name) in str(err.value)
    assert reader.reads == []  # refused before the first byte was read
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []
    assert not (tmp_path / "x").exists()


def test_flat_extraction_refuses_colliding_names(tmp_path: Path) -> None:
    reader = FakeReader({"a/v.avi": b"1", "b/v.avi": b"2"})
    with pytest.raises(DataError, match="collide"):
        extract_members(reader, tmp_path, flat=True)


# --- zip ---


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x"])
def test_zip_with_malicious_member_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "splits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("list/classInd.txt", "1 A\r\n")
        zf.writestr(zipfile.ZipInfo(name), b"evil")  # ZipInfo keeps the name as given
    with pytest.raises(DataError, match="refusing member"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []


def test_zip_extraction_and_bad_zip(tmp_path: Path) -> None:
    archive = tmp_path / "lists.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ucfTrainTestlist/classInd.txt", "1 A\r\n")
        zf.writestr("ucfTrainTestlist/", b"")
    extract_archive(archive, tmp_path / "flat", flat=True)
    assert (tmp_path / "flat/classInd.txt").read_bytes() == b"1 A\r\n"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a valid zip"):
        extract_archive(broken, tmp_path / "x")
    with pytest.raises(DataError, match="unknown archive type"):
        extract_archive(tmp_path / "flat/classInd.txt", tmp_path / "x")


# --- real RAR archives through unrar2-cffi ---


def test_rar_reader_reads_generated_archive(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    archive = make_rar(tmp_path / "t.rar", [("a/x.txt", b"hello"), ("b.bin", payload)])
    with RarReader(archive) as rar:
        assert rar.namelist() == ["a/x.txt", "b.bin"]
        assert rar.read("b.bin") == payload
        assert rar.read("a/x.txt") == b"hello"  # behind the cursor: reopened from the start
        with pytest.raises(DataError, match="not found"):
            rar.read("nope")
    extract_archive(archive, tmp_path / "out")
    assert _files(tmp_path / "out") == ["a/x.txt", "b.bin"]


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x"])
def test_real_rar_with_malicious_member_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_rar(tmp_path / "evil.rar", [("ok.txt", b"ok"), (name, b"evil")])
    with RarReader(archive) as rar:  # the library hands the stored name through unchanged
        assert rar.namelist()[1].replace("\\", "/") == name
    with pytest.raises(DataError, match="refusing member"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []


def test_damaged_rar_gives_one_clear_error(tmp_path: Path) -> None:
    archive = make_rar(tmp_path / "cut.rar", [("a.txt", b"a" * 100), ("b.txt", b"b" * 100)])
    archive.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(DataError, match="damaged or incomplete"):
        extract_archive(archive, tmp_path / "out")


def test_missing_unrar_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "unrar.cffi", None)  # import now raises ImportError
    archive = make_rar(tmp_path / "t.rar", [("a.txt", b"a")])
    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "out")
    assert str(err.value) == RAR_INSTALL_HINT
    assert 'pip install -e ".[data]"' in str(err.value)


def _video_bytes(path: Path, num_frames: int, colour: int) -> bytes:
    frames = np.full((num_frames, 32, 48, 3), colour, np.uint8)
    frames[:, :, : 8 + 4 * colour % 30] = 255 - colour
    return write_video(path, frames).read_bytes()


def test_hmdb_nested_rars_prepare_end_to_end(tmp_path: Path) -> None:
    lengths = {"brush_hair": {"a#1&(x);'y'_0.avi": 5, "b_1.avi": 4}, "cartwheel": {"c_2.avi": 6}}
    inner = []
    for cls, videos in lengths.items():
        members = [
            (f"{cls}/{v}", _video_bytes(tmp_path / "v.avi", n, 20 + 30 * i))
            for i, (v, n) in enumerate(videos.items())
        ]
        inner.append((f"{cls}.rar", make_rar(tmp_path / f"{cls}.rar", members).read_bytes()))
    outer = make_rar(tmp_path / "hmdb51_org.rar", inner)
    split_files = [
        (
            "testTrainMulti_7030_splits/brush_hair_test_split1.txt",
            b"a#1&(x);'y'_0.avi 1 \r\nb_1.avi 2 \r\n",
        ),
        ("testTrainMulti_7030_splits/cartwheel_test_split1.txt", b"c_2.avi 1 \n"),
    ]
    lists = make_rar(tmp_path / "test_train_splits.rar", split_files)
    data = tmp_path / "data"
    report = prepare_dataset(
        "hmdb51", data, raw=outer, splits=lists, num_clients=2, workers=1, progress=False
    )
    raw = data / "hmdb51/hmdb51_raw"
    assert _files(raw) == [
        ".extracted.json",
        "brush_hair/a#1&(x);'y'_0.avi",
        "brush_hair/b_1.avi",
        "cartwheel/c_2.avi",
    ]
    assert (report.train, report.test, report.failed, report.missing) == (2, 1, {}, [])
    assert count_frames(data / "hmdb51/zips/brush_hair/a#1&(x);'y'_0.zip") == 5
    assert count_frames(data / "hmdb51/zips/cartwheel/c_2.zip") == 6
    before = (raw / "cartwheel/c_2.avi").stat().st_mtime_ns
    prepare_dataset(
        "hmdb51", data, raw=outer, splits=lists, num_clients=2, workers=1, progress=False
    )
    assert (raw / "cartwheel/c_2.avi").stat().st_mtime_ns == before  # not extracted again


# --- downloads from a local server ---


class _Server(http.server.BaseHTTPRequestHandler):
    body = b""
    mode = "range"  # "range", "norange" (ignores Range) or "truncate" (stops half-way)
    ranges: ClassVar[list[str | None]] = []

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        if self.path != "/file.bin":
            self.send_error(404)
            return
        wanted = self.headers.get("Range")
        type(self).ranges.append(wanted)
        start = int(wanted[6:-1]) if wanted and self.mode != "norange" else 0
        size = len(self.body)
        if start >= size and wanted:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        data = self.body[start:]
        self.wfile.write(data[: len(data) // 2] if self.mode == "truncate" else data)


@pytest.fixture
def server(loopback: Serve) -> tuple[str, type[_Server]]:
    handler = type("Handler", (_Server,), {"body": bytes(range(256)) * 2000, "ranges": []})
    return f"{loopback(handler)}/file.bin", handler


def test_download_complete_and_checked(tmp_path: Path, server: tuple[str, type[_Server]]) -> None:
    url, handler = server
    digest = hashlib.sha256(handler.body).hexdigest()
    dest = download_file(
        url, tmp_path / "f.bin", expected_size=len(handler.body), sha256=digest, progress=False
    )
    assert dest.read_bytes() == handler.body
    assert not (tmp_path / "f.bin.part").exists()
    download_file(url, dest, sha256=digest, progress=False)  # already there: no request
    assert handler.ranges == [None]


def test_download_resumes_with_range(tmp_path: Path, server: tuple[str, type[_Server]]) -> None:
    url, handler = server
    part = tmp_path / "f.bin.part"
    part.write_bytes(handler.body[:1234])
    download_file(url, tmp_path / "f.bin", progress=False)
    assert handler.ranges == ["bytes=1234-"]
    assert (tmp_path / "f.bin").read_bytes() == handler.body


def test_truncated_download_is_refused_then_resumed(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    handler.mode = "truncate"
    with pytest.raises(DataError, match="run the same command again"):
        download_file(url, tmp_path / "f.bin", progress=False)
    assert not (tmp_path / "f.bin").exists()
    got = (tmp_path / "f.bin.part").stat().st_size
    assert got == len(handler.body) // 2
    handler.mode = "range"
    download_file(url, tmp_path / "f.bin", progress=False)
    assert handler.ranges == [None, f"bytes={got}-"]
    assert (tmp_path / "f.bin").read_bytes() == handler.body


def test_download_restarts_when_server_ignores_range(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    handler.mode = "norange"
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes")
    download_file(url, tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == handler.body


def test_download_finishes_a_complete_part_file(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    (tmp_path / "f.bin.part").write_bytes(handler.body)  # server answers 416: nothing left
    download_file(url, tmp_path / "f.bin", expected_size=len(handler.body), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == handler.body


def test_download_size_and_checksum_mismatch(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    with pytest.raises(DataError, match=f"expected {len(handler.body) + 1}"):
        download_file(url, tmp_path / "a.bin", expected_size=len(handler.body) + 1, progress=False)
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    with pytest.raises(DataError, match="SHA-256"):
        download_file(url, tmp_path / "b.bin", sha256="0" * 64, progress=False)
    with pytest.raises(DataError, match="HTTP 404"):
        download_file(url.replace("file.bin", "none"), tmp_path / "c.bin", progress=False)
