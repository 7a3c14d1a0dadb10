"""Client partitions of an annotation list: IID, the original K-400 non-IID scheme, Dirichlet.

All partition functions are pure: they take the records (``{"name", "label"}`` dicts, labels
1-based) and return one list of records per client, without touching the disk.
:func:`write_client_lists` writes them as ``client_dist{N}.json`` (N from 1), atomically, and
removes the files of clients beyond the new count.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvssl.data.annotations import client_dist_path, read_annotations, write_annotations
from fedvssl.data.errors import DataError

log = logging.getLogger(__name__)

Record = Mapping[str, Any]
NONIID_LOW_SEED = 1234  # seeds of the original scheme for the low- and high-count classes
NONIID_HIGH_SEED = 4321
_CLIENT_FILE = re.compile(r"^client_dist(\d+)\.json$")


def _check_clients(items: Sequence[Record], num_clients: int) -> None:
    if num_clients < 1:
        raise DataError(f"the number of clients must be at least 1, got {num_clients}")
    if len(items) < num_clients:
        raise DataError(
            f"cannot give {num_clients} clients one video each from {len(items)} videos; "
            "use fewer clients"
        )


def partition_iid(items: Sequence[Record], num_clients: int, seed: int = 7) -> list[list[Record]]:
    """Shuffle the records and cut them into contiguous, near-equal slices (the original's IID).

    Client i (0-based) gets ``shuffled[int(i*N/K):int((i+1)*N/K)]`` after
    ``random.Random(seed).shuffle``.

    Parameters
    ----------
    items : Sequence[Record]
        Annotation records.
    num_clients : int
        Number of clients K.
    seed : int
        Seed of Python's ``random`` shuffle.

    Returns
    -------
    list[list[Record]]
        K disjoint lists covering all records; sizes differ by at most one.
    """
    _check_clients(items, num_clients)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    return [
        shuffled[int(i * n / num_clients) : int((i + 1) * n / num_clients)]
        for i in range(num_clients)
    ]


def _by_label(items: Sequence[Record]) -> dict[int, list[Record]]:
    groups: dict[int, list[Record]] = defaultdict(list)
    for item in items:
        groups[int(item["label"])].append(item)
    return dict(groups)


def partition_noniid(
    items: Sequence[Record], num_clients: int = 100, classes_per_client: int = 8
) -> list[list[Record]]:
    """Partition by the original Kinetics-400 non-IID scheme: client pairs share class windows.

    Classes are sorted by sample count, ascending (ties by label). With h = classes_per_client/2
    and P = num_clients/2, for i in 0..P-1 clients i+1 and i+1+P share the h classes at sorted
    positions [i, i+h) and the h classes at [-i-h-1, -i-1). Each class's records are shuffled
    (seed 1234 for the low-count window, 4321 for the high-count one) and split in halves: the
    first half goes to client i+1, the second to client i+1+P. Windows overlap, so a video may
    belong to several clients and most classes are never used (the original's behaviour: for
    400 classes and 100 clients, 106 classes).

    Parameters
    ----------
    items : Sequence[Record]
        Annotation records.
    num_clients : int
        Even number of clients (100 in the original).
    classes_per_client : int
        Even number of classes per client (8 in the original).

    Returns
    -------
    list[list[Record]]
        One list per client.

    Raises
    ------
    DataError
        If the counts are odd or there are fewer than num_clients + classes_per_client - 1
        classes (the two windows of a pair would overlap).
    """
    if num_clients < 2 or num_clients % 2 or classes_per_client < 2 or classes_per_client % 2:
        raise DataError(
            "the non-IID scheme pairs clients and splits their classes in two windows: "
            f"--num-clients ({num_clients}) and classes per client ({classes_per_client}) "
            "must be even and at least 2"
        )
    groups = _by_label(items)
    needed = num_clients + classes_per_client - 1
    if len(groups) < needed:
        raise DataError(
            f"the non-IID scheme with {num_clients} clients and {classes_per_client} classes "
            f"each needs at least {needed} classes, the list has {len(groups)}"
        )
    order = sorted(groups, key=lambda label: (len(groups[label]), label))
    half, pairs = classes_per_client // 2, num_clients // 2
    clients: list[list[Record]] = [[] for _ in range(num_clients)]
    for i in range(pairs):
        windows = (
            (order[i : i + half], NONIID_LOW_SEED),
            (order[-i - half - 1 : -i - 1], NONIID_HIGH_SEED),
        )
        for labels, seed in windows:
            for label in labels:
                members = list(groups[label])
                random.Random(seed).shuffle(members)
                mid = len(members) // 2
                clients[i].extend(members[:mid])
                clients[i + pairs].extend(members[mid:])
    return clients


def partition_dirichlet(
    items: Sequence[Record], num_clients: int, alpha: float, seed: int = 7
) -> list[list[Record]]:
    """Split every class among the clients in Dirichlet(alpha) proportions.

    Smaller alpha gives more skewed label distributions. A client left empty receives one
    record from the largest client, so every client has data.

    Parameters
    ----------
    items : Sequence[Record]
        Annotation records.
    num_clients : int
        Number of clients K.
    alpha : float
        Concentration of the symmetric Dirichlet, > 0.
    seed : int
        Seed of the numpy generator.

    Returns
    -------
    list[list[Record]]
        K disjoint, non-empty lists covering all records.
    """
    _check_clients(items, num_clients)
    if not alpha > 0:
        raise DataError(f"--alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    clients: list[list[Record]] = [[] for _ in range(num_clients)]
    groups = _by_label(items)
    for label in sorted(groups):
        members = groups[label]
        order = rng.permutation(len(members))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, part in enumerate(np.split(order, cuts)):
            clients[client].extend(members[j] for j in part)
    for records in clients:
        if not records:
            records.append(max(clients, key=len).pop())
    return clients


def write_client_lists(clients: Sequence[Sequence[Record]], out_dir: Path) -> list[Path]:
    """Write ``client_dist{N}.json`` for N = 1..K atomically and remove those beyond K.

    Parameters
    ----------
    clients : Sequence[Sequence[Record]]
        One record list per client.
    out_dir : Path
        Destination folder.

    Returns
    -------
    list[Path]
        The written files, in client order.

    Raises
    ------
    DataError
        If ``out_dir`` is a file or cannot be written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file: the partitions go into a folder, choose one")
    try:
        paths = [
            write_annotations(records, client_dist_path(out_dir, n))
            for n, records in enumerate(clients, start=1)
        ]
        for stale in out_dir.glob("client_dist*.json"):
            match = _CLIENT_FILE.match(stale.name)
            if match is not None and int(match.group(1)) > len(clients):
                stale.unlink()
    except OSError as err:
        raise DataError(
            f"cannot write the partitions to {out_dir} ({err.strerror or err}): choose a "
            "writable folder"
        ) from None
    return paths


def check_client_lists(
    train: Sequence[Record], paths: Sequence[Path], num_classes: int | None = None
) -> None:
    """Check that the client lists at ``paths`` exist, are well formed and list train videos.

    A list need not cover the train list (the original non-IID scheme leaves most classes out)
    and a video may be in two lists (its windows overlap), but every listed video must be one
    of the train list, with its label.

    Raises
    ------
    DataError
        Naming a missing, malformed or empty file (and its record), or a listed video that is
        not a train video. An empty list is refused because its client would fail every round
        while the others carry the run.
    """
    labels = {r["name"]: r["label"] for r in train}
    for number, path in enumerate(paths, start=1):
        if not path.is_file():
            raise DataError(f"the partition of client {number}, {path}, does not exist")
        records = read_annotations(path, num_classes)
        if not records:
            raise DataError(
                f"the partition of client {number}, {path}, lists no videos (every client needs "
                "at least one)"
            )
        for index, record in enumerate(records):
            if labels.get(record["name"]) != record["label"]:
                raise DataError(
                    f"{path}: record {index} ({record['name']}, label {record['label']}) is "
                    "not a video of the train list with that label"
                )


def write_partitions(
    train: Sequence[Record], out_dir: Path, num_clients: int, seed: int = 7
) -> list[Path]:
    """Write the IID client partitions of a training list (UCF-101, HMDB-51, synthetic).

    Parameters
    ----------
    train : Sequence[Record]
        Training annotation records.
    out_dir : Path
        The ``annotations/client_distribution`` folder.
    num_clients : int
        Number of clients.
    seed : int
        Shuffle seed (7 in the original).

    Returns
    -------
    list[Path]
        ``client_dist1.json`` .. ``client_dist{num_clients}.json``.
    """
    return write_client_lists(partition_iid(train, num_clients, seed), out_dir)


@dataclass(frozen=True)
class ClientSummary:
    """Size and label coverage of one client's list."""

    client: int  # 1-based
    videos: int
    classes: int


def summarise(clients: Sequence[Sequence[Record]]) -> list[ClientSummary]:
    """Count the videos and distinct labels of every client (numbered from 1)."""
    return [
        ClientSummary(n, len(records), len({int(r["label"]) for r in records}))
        for n, records in enumerate(clients, start=1)
    ]


def label_counts(clients: Sequence[Sequence[Record]]) -> tuple[list[int], np.ndarray]:
    """Return the sorted labels and a [clients, labels] matrix of record counts."""
    labels = sorted({int(r["label"]) for records in clients for r in records})
    column = {label: j for j, label in enumerate(labels)}
    counts = np.zeros((len(clients), len(labels)), dtype=np.int64)
    for i, records in enumerate(clients):
        for label, count in Counter(int(r["label"]) for r in records).items():
            counts[i, column[label]] = count
    return labels, counts


def load_annotation_list(path: Path) -> list[dict[str, Any]]:
    """Read an annotation list: the JSON format, or text lines "name label" (labels 1-based).

    Parameters
    ----------
    path : Path
        ``.json`` file, or a text file with one "name label" per line.

    Returns
    -------
    list[dict[str, Any]]
        Records ``{"name": str, "label": int}``.
    """
    if path.suffix.lower() == ".json":
        return read_annotations(path)
    if not path.is_file():
        raise DataError(f"annotation list not found: {path}")
    records = []
    first: dict[str, tuple[int, int]] = {}  # name -> (label, line)
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise DataError(f"{path}:{number}: expected 'name label' with label >= 1, got {line!r}")
        name, label = parts[0], int(parts[1])
        earlier = first.setdefault(name, (label, number))
        if earlier[0] != label:
            raise DataError(
                f"{path}:{number}: {name} has label {label}, but label {earlier[0]} on line "
                f"{earlier[1]}: a video has one label"
            )
        records.append({"name": name, "label": label})
    if not records:
        raise DataError(f"{path} holds no 'name label' lines")
    return records
