"""The FedVSSL Flower strategy: sampling, replies in, the alpha/beta aggregate out.

The math lives in :mod:`fedvssl.aggregation` (pure functions, no Flower) and the config group's
resolution in :mod:`fedvssl.strategy_config` (no Flower either); :class:`FedVSSL` is the thin
Message-API glue around them.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedvssl.aggregation import (
    aggregate_fedvssl,
    check_alpha,
    check_beta,
    fedavg_weights,
    is_number,
    loss_weights,
    mixing_weights,
)
from fedvssl.strategy_config import StrategyConfigError, StrategySettings, resolve_strategy

__all__ = [  # the aggregation math is re-exported: callers import it from here too
    "FedVSSL",
    "RoundReport",
    "StrategyConfigError",
    "StrategySettings",
    "aggregate_fedvssl",
    "fedavg_weights",
    "loss_weights",
    "mixing_weights",
    "resolve_strategy",
    "sample_partitions",
]

METRICS_KEY = "metrics"  # name of the MetricRecord in every train reply
Layout = tuple[tuple[str, tuple[int, ...], str], ...]  # (key, shape, dtype) of every array


def layout_of(state: dict[str, np.ndarray]) -> Layout:
    """Return the (key, shape, dtype) list of a model's named arrays."""
    return tuple((k, a.shape, a.dtype.str) for k, a in state.items())


def sample_partitions(
    partition_ids: Sequence[int], clients_per_round: int, seed: int, server_round: int
) -> list[int]:
    """Pick the partitions that train in a round, reproducibly from (seed, server_round).

    Parameters
    ----------
    partition_ids : Sequence[int]
        Every partition in the pool.
    clients_per_round : int
        How many partitions train per round; the whole pool when it is at least the pool size.
    seed : int
        Run seed.
    server_round : int
        Current round (1-based).

    Returns
    -------
    list[int]
        The sampled partition ids, sorted.
    """
    pool = sorted(partition_ids)
    if clients_per_round >= len(pool):
        return pool
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(pool, size=clients_per_round, replace=False))


@dataclass
class RoundReport:
    """Per-client details of one ``aggregate_train`` call, for the server's metrics file.

    The client lists are aligned and ordered by partition id. ``client_weights`` are the final
    mixing weights (summing to 1), or all 0 when the round was not aggregated. ``failures`` holds
    one "partition P: reason" (or "node N: reason") line per failed or rejected reply.
    """

    server_round: int
    client_ids: list[int] = field(default_factory=list)
    client_losses: list[float] = field(default_factory=list)
    client_trivial_losses: list[float] = field(default_factory=list)  # NaN where not reported
    client_examples: list[int] = field(default_factory=list)
    client_weights: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    aggregated: bool = False

    @property
    def train_loss(self) -> float | None:
        """Example-weighted mean training loss of the clients that replied (None if none did)."""
        if not self.client_ids:
            return None
        total = sum(self.client_examples)
        return (
            sum(n * loss for n, loss in zip(self.client_examples, self.client_losses, strict=True))
            / total
        )

    def to_metric_record(self) -> MetricRecord:
        """Return the round summary as a Flower ``MetricRecord``."""
        record = MetricRecord(
            {
                "num-clients": len(self.client_ids),
                "num-failures": len(self.failures),
                "client-ids": list(self.client_ids),
                "client-losses": list(self.client_losses),
                "client-trivial-losses": list(self.client_trivial_losses),
                "client-examples": list(self.client_examples),
                "client-weights": list(self.client_weights),
            }
        )
        if self.train_loss is not None:
            record["train-loss"] = self.train_loss
        return record


@dataclass(frozen=True)
class _ClientUpdate:
    partition_id: int
    node_id: int
    num_examples: int
    train_loss: float
    trivial_loss: float  # the loss of the trivial prediction on the same batches (NaN: unknown)
    keys: list[str]
    arrays: list[np.ndarray]  # read-only views into the reply's bytes

    @property
    def layout(self) -> Layout:
        return layout_of(dict(zip(self.keys, self.arrays, strict=True)))


def _as_numpy(array: Array) -> np.ndarray:
    """Return a serialized numpy ``Array`` as a read-only view of its bytes, without a copy."""
    if array.stype != SType.NUMPY:
        raise ValueError(f"array serialized as {array.stype!r}, expected {SType.NUMPY!r}")
    buffer = io.BytesIO(array.data)  # shares the bytes, copies nothing
    version = np.lib.format.read_magic(buffer)
    if version not in ((1, 0), (2, 0)):
        return array.numpy()
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }[version]
    shape, fortran_order, dtype = read_header(buffer)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    flat = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=buffer.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


class FedVSSL(FedAvg):
    """FedVSSL: a mix of FedAvg and loss-based averaging, blended with the previous global model.

    Parameters
    ----------
    alpha : float (default: 0.9)
        Share of the loss-based average in the mix, in [0, 1] (0 is FedAvg).
    beta : float (default: 1.0)
        Weight of the previous global model, >= 0 (0 turns the blend off).
    clients_per_round : int
        Clients sampled for training each round.
    min_fit_clients : int
        Fewest valid replies a round needs to be aggregated; with fewer the global model stays.
    seed : int (default: 7)
        Seed of the per-round client sampling.
    **fedavg_kwargs
        Passed to ``FedAvg``; ``fraction_evaluate`` defaults to 0.0 (no client evaluation
        round), ``min_train_nodes`` and ``min_available_nodes`` to ``min_fit_clients``.

    Attributes
    ----------
    previous : list[np.ndarray] | None
        The last global model, used by beta; the server sets it when it resumes a run.
    node_partitions : dict[int, int]
        Node id -> partition id, set by the server before round 1 for reproducible sampling.
    layout : Layout | None
        The global model's (key, shape, dtype) list, set by the server: a reply of any other
        layout is a failed client. None: the layout most replies share.
    last_round : RoundReport | None
        Per-client details of the last ``aggregate_train``.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.9,
        beta: float = 1.0,
        clients_per_round: int,
        min_fit_clients: int,
        seed: int = 7,
        **fedavg_kwargs: Any,
    ) -> None:
        check_alpha(alpha)
        check_beta(beta)
        if not 1 <= min_fit_clients <= clients_per_round:
            raise ValueError(
                f"need 1 <= min_fit_clients <= clients_per_round, got min_fit_clients="
                f"{min_fit_clients} and clients_per_round={clients_per_round}"
            )
        fedavg_kwargs.setdefault("fraction_evaluate", 0.0)
        fedavg_kwargs.setdefault("min_train_nodes", min_fit_clients)
        fedavg_kwargs.setdefault("min_available_nodes", min_fit_clients)
        super().__init__(**fedavg_kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.clients_per_round = clients_per_round
        self.min_fit_clients = min_fit_clients
        self.seed = seed
        self.previous: list[np.ndarray] | None = None
        self.node_partitions: dict[int, int] = {}
        self.last_round: RoundReport | None = None
        self.layout: Layout | None = None

    def summary(self) -> None:
        """Log the FedVSSL settings, then FedAvg's."""
        log(INFO, "\t├──> FedVSSL settings:")
        log(INFO, "\t│\t├── alpha (loss-based share): %s", self.alpha)
        log(INFO, "\t│\t├── beta (previous-model weight): %s", self.beta)
        log(
            INFO,
            "\t│\t├── Clients per round: %d (min %d)",
            self.clients_per_round,
            self.min_fit_clients,
        )
        log(INFO, "\t│\t└── Sampling seed: %d", self.seed)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample this round's clients (reproducibly once ``node_partitions`` is set)."""
        if self.fraction_train == 0.0:
            return []
        if self.node_partitions:
            node_ids = self._sample_nodes_by_partition(server_round, grid)
        else:
            node_ids, _ = sample_nodes(grid, self.min_available_nodes, self.clients_per_round)
        log(INFO, "configure_train: sampled nodes %s", node_ids)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def _sample_nodes_by_partition(self, server_round: int, grid: Grid) -> list[int]:
        node_of = {partition: node for node, partition in self.node_partitions.items()}
        if len(node_of) != len(self.node_partitions):
            raise ValueError(
                f"node_partitions maps two nodes to one partition: {self.node_partitions}"
            )
        partitions = sample_partitions(
            list(node_of), self.clients_per_round, self.seed, server_round
        )
        connected = set(grid.get_node_ids())
        missing = [p for p in partitions if node_of[p] not in connected]
        if missing:
            log(WARNING, "round %d: partitions %s have no connected node", server_round, missing)
        return [node_of[p] for p in partitions if p not in missing]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the valid replies (ordered by partition id) with the FedVSSL rule."""
        report = self.last_round = RoundReport(server_round=server_round)
        updates = self._collect_updates(list(replies), report)
        report.client_ids = ids = [u.partition_id for u in updates]
        report.client_losses = losses = [u.train_loss for u in updates]
        report.client_trivial_losses = [u.trivial_loss for u in updates]
        report.client_examples = examples = [u.num_examples for u in updates]
        report.client_weights = [0.0] * len(updates)
        if len(updates) < self.min_fit_clients:
            log(
                WARNING,
                "round %d: %d valid replies, fewer than min_fit_clients=%d; the global "
                "model stays as it was",
                server_round,
                len(updates),
                self.min_fit_clients,
            )
            return None, report.to_metric_record()
        keys = updates[0].keys
        models = [u.arrays for u in updates]
        new_global = aggregate_fedvssl(
            models, examples, losses, self.alpha, self.beta, self.previous
        )
        self.previous = new_global
        weights = mixing_weights(examples, losses, self.alpha)
        report.client_weights = [float(w) for w in weights]
        report.aggregated = True
        log(
            INFO,
            "round %d: clients %s, weights %s",
            server_round,
            ids,
            np.round(weights, 4).tolist(),
        )
        arrays = {k: Array(np.asarray(a)) for k, a in zip(keys, new_global, strict=True)}
        return ArrayRecord(arrays), report.to_metric_record()

    def _collect_updates(self, replies: list[Message], report: RoundReport) -> list[_ClientUpdate]:
        """Parse the replies into updates sorted by partition id; record every failure."""
        updates: list[_ClientUpdate] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            who = f"partition {self.node_partitions[node]}" if node in self.node_partitions else ""
            who = who or f"node {node}"
            if msg.has_error():
                report.failures.append(f"{who}: {msg.error.reason}")
                continue
            try:
                updates.append(self._parse_reply(msg))
            except (ValueError, TypeError) as err:
                report.failures.append(f"{who}: malformed reply: {err}")
        updates.sort(key=lambda u: (u.partition_id, u.node_id))
        kept = _drop_inconsistent(updates, report.failures, self.layout)
        for reason in report.failures:
            log(WARNING, "round %d: client failed: %s", report.server_round, reason)
        return kept

    def _parse_reply(self, msg: Message) -> _ClientUpdate:
        arrays = msg.content.array_records.get(self.arrayrecord_key)
        metrics = msg.content.metric_records.get(METRICS_KEY)
        if arrays is None or metrics is None:
            raise ValueError(
                f"expected an ArrayRecord '{self.arrayrecord_key}' and a MetricRecord "
                f"'{METRICS_KEY}', got {list(msg.content.keys())}"
            )
        examples, loss = metrics.get(self.weighted_by_key), metrics.get("train-loss")
        partition = metrics.get("partition-id")
        if not (isinstance(examples, int) and examples > 0):
            raise ValueError(f"'{self.weighted_by_key}' must be an int > 0, got {examples!r}")
        if not (is_number(loss) and math.isfinite(loss)):
            raise ValueError(f"'train-loss' must be a finite number, got {loss!r}")
        if not isinstance(partition, int):
            raise ValueError(f"'partition-id' must be an int, got {partition!r}")
        trivial = metrics.get("trivial-loss")
        trivial = float(trivial) if is_number(trivial) and math.isfinite(trivial) else math.nan
        keys = list(arrays.keys())
        views = [_as_numpy(arrays[k]) for k in keys]
        for key, view in zip(keys, views, strict=True):
            if view.dtype.kind == "f" and not np.isfinite(view).all():
                raise ValueError(f"{key} holds non-finite values (NaN or inf)")
        node = msg.metadata.src_node_id
        return _ClientUpdate(partition, node, examples, float(loss), trivial, keys, views)


def _drop_inconsistent(
    updates: list[_ClientUpdate], failures: list[str], expected: Layout | None = None
) -> list[_ClientUpdate]:
    """Keep the updates of the ``expected`` layout (else the most common) and a unique partition."""
    layouts = [u.layout for u in updates]
    common = Counter(layouts).most_common(1)[0][0] if layouts else ()
    common = common if expected is None else expected
    kept: list[_ClientUpdate] = []
    for update, layout in zip(updates, layouts, strict=True):
        who = f"partition {update.partition_id}"
        if kept and kept[-1].partition_id == update.partition_id:
            failures.append(f"{who}: duplicate reply for this partition, ignored")
        elif layout != common:
            failures.append(f"{who}: its arrays (keys, shapes or dtypes) differ from the model's")
        else:
            kept.append(update)
    return kept
