"""Client partitions: IID, the original K-400 non-IID scheme, Dirichlet, and the K-400 CLI."""

from __future__ import annotations

import importlib.util
import json
import random
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fedvssl.data.errors import DataError
from fedvssl.data.partitions import (
    load_annotation_list,
    partition_dirichlet,
    partition_iid,
    partition_noniid,
    write_client_lists,
    write_partitions,
)

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 110


def _k400_like() -> list[dict[str, Any]]:
    """110 classes with distinct sizes: class l has 2 + (37 l mod 110) videos."""
    items = []
    for label in range(1, NUM_CLASSES + 1):
        for k in range(2 + (37 * label) % NUM_CLASSES):
            items.append({"name": f"class{label:03d}/vid{k:03d}", "label": label})
    return items


def _names(records: list[Any]) -> list[str]:
    return [r["name"] for r in records]


def _load_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k400_cli", REPO / "data_partitioning_k400.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iid_matches_the_original_by_hand() -> None:
    items = [{"name": f"c/v{i}", "label": 1 + i % 3} for i in range(10)]
    shuffled = list(items)
    random.Random(7).shuffle(shuffled)
    clients = partition_iid(items, 3)
    assert clients == [shuffled[0:3], shuffled[3:6], shuffled[6:10]]  # int(i*10/3) bounds
    assert partition_iid(items, 3) == clients
    assert partition_iid(items, 3, seed=8) != clients
    assert items == [{"name": f"c/v{i}", "label": 1 + i % 3} for i in range(10)]  # not mutated
    with pytest.raises(DataError, match="fewer clients"):
        partition_iid(items, 11)


def test_write_partitions_is_complete_disjoint_and_drops_stale_files(tmp_path: Path) -> None:
    items = [{"name": f"c/v{i}", "label": 1} for i in range(23)]
    paths = write_partitions(items, tmp_path, num_clients=5, seed=7)
    assert [p.name for p in paths] == [f"client_dist{n}.json" for n in range(1, 6)]
    parts = [json.loads(p.read_text()) for p in paths]
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 23
    assert sorted(n for p in parts for n in _names(p)) == sorted(_names(items))
    write_partitions(items, tmp_path, num_clients=2, seed=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client_dist1.json", "client_dist2.json"]


def test_noniid_original_scheme_with_100_clients() -> None:
    items = _k400_like()
    clients = partition_noniid(items, num_clients=100)
    assert len(clients) == 100
    by_label: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        by_label.setdefault(item["label"], []).append(item)
    order = sorted(by_label, key=lambda label: len(by_label[label]))  # ascending, sizes distinct
    for i in range(50):
        low, high = order[i : i + 4], order[-i - 5 : -i - 1]
        first, second = clients[i], clients[i + 50]
        assert {r["label"] for r in first} == {r["label"] for r in second} == set(low + high)
        for label, seed in [(c, 1234) for c in low] + [(c, 4321) for c in high]:
            members = list(by_label[label])
            random.Random(seed).shuffle(members)
            half = len(members) // 2
            assert [r for r in first if r["label"] == label] == members[:half]
            assert [r for r in second if r["label"] == label] == members[half:]
    used = {r["label"] for records in clients for r in records}
    assert len(used) == 106  # positions 0..52 and -54..-2 of the sorted classes
    covered = Counter(r["name"] for records in clients for r in records)
    for label in used:  # every video of a used class is in some client
        assert all(covered[r["name"]] >= 1 for r in by_label[label])
    assert partition_noniid(items, num_clients=100) == clients


def test_noniid_generalises_or_refuses() -> None:
    items = _k400_like()
    clients = partition_noniid(items, num_clients=10, classes_per_client=4)
    assert all(len({r["label"] for r in c}) == 4 for c in clients)
    with pytest.raises(DataError, match="must be even"):
        partition_noniid(items, num_clients=99)
    with pytest.raises(DataError, match="at least 107 classes"):
        partition_noniid([r for r in items if r["label"] <= 106], num_clients=100)


def test_dirichlet_covers_everything_and_every_client_has_data() -> None:
    items = [{"name": f"c{label}/v{k}", "label": label} for label in range(1, 9) for k in range(25)]
    skewed = partition_dirichlet(items, num_clients=10, alpha=0.05, seed=3)
    assert all(skewed)
    assert sorted(n for c in skewed for n in _names(c)) == sorted(_names(items))
    assert partition_dirichlet(items, 10, 0.05, seed=3) == skewed
    assert partition_dirichlet(items, 10, 0.05, seed=4) != skewed
    even = partition_dirichlet(items, num_clients=10, alpha=1000.0, seed=3)

    def classes(clients: list[list[Any]]) -> float:
        return sum(len({r["label"] for r in c}) for c in clients) / len(clients)

    assert classes(skewed) < 3 and classes(even) > 7
    with pytest.raises(DataError, match="alpha"):
        partition_dirichlet(items, 10, 0.0)


def test_annotation_lists_text_and_json(tmp_path: Path) -> None:
    text = tmp_path / "train.txt"
    text.write_text("abseiling/a_000001_000011 1\r\nair drumming/b_1 2\n\n")
    assert load_annotation_list(text) == [
        {"name": "abseiling/a_000001_000011", "label": 1},
        {"name": "air drumming/b_1", "label": 2},
    ]
    records = [{"name": "x/y", "label": 3}]
    write_client_lists([records], tmp_path)
    assert load_annotation_list(tmp_path / "client_dist1.json") == records
    text.write_text("ok/a 1\nbroken line\n")
    with pytest.raises(DataError, match=r"train.txt:2"):
        load_annotation_list(text)


@pytest.mark.parametrize("scheme", ["noniid", "iid", "dirichlet"])
def test_k400_cli_writes_partitions_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    listing = tmp_path / "k400_train.txt"
    listing.write_text("".join(f"{r['name']} {r['label']}\n" for r in _k400_like()))
    out, plot = tmp_path / "parts", tmp_path / "dist.png"
    argv = ["--annotations", str(listing), "--output", str(out), "--scheme", scheme]
    assert _load_cli().main([*argv, "--plot", str(plot)]) == 0
    files = sorted(out.iterdir(), key=lambda p: int(p.stem.removeprefix("client_dist")))
    assert [p.name for p in files] == [f"client_dist{n}.json" for n in range(1, 101)]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out.splitlines()
    first = json.loads(files[0].read_text())
    assert printed[0] == (
        f"client_dist1.json: {len(first)} videos, {len({r['label'] for r in first})} classes"
    )
    if scheme == "noniid":
        assert all(len({r["label"] for r in json.loads(p.read_text())}) == 8 for p in files)


def test_k400_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = _load_cli()
    listing = tmp_path / "k.txt"
    listing.write_text("a/b 1\n")
    argv = ["--annotations", str(listing), "--output", str(tmp_path / "o")]
    assert cli.main([*argv, "--seed", "3"]) == 2
    assert cli.main(["--annotations", str(tmp_path / "none.txt"), "--output", "o"]) == 2
    assert cli.main([*argv, "--scheme", "iid", "--num-clients", "2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "noniid" in errors[0] and "not found" in errors[1]
    assert "fewer clients" in errors[2]
    assert not (tmp_path / "o").exists()
