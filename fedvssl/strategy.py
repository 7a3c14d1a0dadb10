"""The FedVSSL aggregation strategy: alpha/beta mixing math and its Flower ``Strategy``.

The math is the paper's (as the authors' research code computes it), not the Flower baseline's,
which concatenates the two averages instead of adding them and swaps the meaning of alpha:

* A = FedAvg, clients weighted by their number of training examples n_k;
* B = loss-based average, clients weighted by softmax(-L_k) of their mean local CtP loss;
* mix = alpha * B + (1 - alpha) * A, element-wise over every array (alpha=0 is FedAvg);
* global = (mix + beta * previous) / (1 + beta) once a previous global model exists (beta=1 is
  the paper's 0.5/0.5 "SWA" blend; round 1 has no previous model, so global = mix).

Every step is linear, so it folds into one weight per client (and one for the previous model),
and each array is accumulated in cache-sized blocks without stacking the clients.
The pure functions need no Flower; :class:`FedVSSL` is the thin Message-API glue around them.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, TypeGuard

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

METRICS_KEY = "metrics"  # name of the MetricRecord in every train reply
_BLOCK = 1 << 16  # elements accumulated at a time: 256 KiB of float32 stays in cache


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_alpha(alpha: float, name: str = "alpha", error: type[ValueError] = ValueError) -> None:
    if not (_is_number(alpha) and 0 <= alpha <= 1):
        raise error(
            f"{name} must be in [0, 1], got {alpha!r} "
            "(alpha=0 is FedAvg, alpha=1 is loss-based averaging)"
        )


def _check_beta(beta: float, name: str = "beta", error: type[ValueError] = ValueError) -> None:
    if not (_is_number(beta) and math.isfinite(beta) and beta >= 0):
        raise error(
            f"{name} must be a finite number >= 0, got {beta!r} "
            "(beta=0 turns the blend with the previous global model off, beta=1 is the paper's SWA)"
        )


def _as_vector(values: Sequence[float], what: str) -> np.ndarray:
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a list of numbers, got {values!r}") from err
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"{what} must be a non-empty list with one number per client")
    return vector


def fedavg_weights(num_examples: Sequence[int]) -> np.ndarray:
    """Return the FedAvg client weights n_k / sum(n).

    Parameters
    ----------
    num_examples : Sequence[int]
        Number of training examples of each client (>= 0, at least one > 0).

    Returns
    -------
    np.ndarray
        float64 weights, one per client, summing to 1.
    """
    n = _as_vector(num_examples, "num_examples")
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"num_examples must be >= 0 for every client, got {list(num_examples)}")
    total = n.sum()
    if total <= 0:
        raise ValueError("num_examples sum to 0: at least one client must report training examples")
    return n / total


def loss_weights(losses: Sequence[float]) -> np.ndarray:
    """Return the loss-based client weights softmax(-L_k).

    Parameters
    ----------
    losses : Sequence[float]
        Each client's mean training loss over its local epoch (not exponentiated).

    Returns
    -------
    np.ndarray
        float64 weights, one per client, summing to 1; a lower loss gives a larger weight.
    """
    loss = _as_vector(losses, "losses")
    if not np.all(np.isfinite(loss)):
        raise ValueError(
            f"client losses must be finite, got {list(losses)}: a NaN or infinite loss means "
            "that client's training diverged"
        )
    # Shifting by the minimum keeps every exponent <= 0, so nothing overflows.
    scores = np.exp(-(loss - loss.min()))
    return scores / scores.sum()


def mixing_weights(
    num_examples: Sequence[int], losses: Sequence[float], alpha: float
) -> np.ndarray:
    """Return the per-client weights of mix = alpha * B + (1 - alpha) * A.

    Parameters
    ----------
    num_examples : Sequence[int]
        Number of training examples of each client (weights of A).
    losses : Sequence[float]
        Mean training loss of each client (softmax(-loss) are the weights of B).
    alpha : float
        Share of the loss-based average B, in [0, 1].

    Returns
    -------
    np.ndarray
        float64 weights, one per client, summing to 1.
    """
    _check_alpha(alpha)
    if len(num_examples) != len(losses):
        raise ValueError(
            f"got {len(num_examples)} example counts but {len(losses)} losses: "
            "every client needs one of each"
        )
    return alpha * loss_weights(losses) + (1.0 - alpha) * fedavg_weights(num_examples)


def _check_layout(client_arrays: list[list[np.ndarray]], previous: list[np.ndarray] | None) -> None:
    if not client_arrays:
        raise ValueError("no client arrays to aggregate")
    reference = client_arrays[0]
    models = [(f"client {k + 1}", arrays) for k, arrays in enumerate(client_arrays)]
    if previous is not None:
        models.append(("previous global model", previous))
    for owner, arrays in models[1:]:
        if len(arrays) != len(reference):
            raise ValueError(
                f"{owner} has {len(arrays)} arrays but client 1 has {len(reference)}: "
                "every model must list the same state-dict entries"
            )
        for i, (array, ref) in enumerate(zip(arrays, reference, strict=True)):
            if array.shape != ref.shape or array.dtype != ref.dtype:
                raise ValueError(
                    f"array {i} of {owner} is {array.dtype}{list(array.shape)} but client 1 has "
                    f"{ref.dtype}{list(ref.shape)}: the models do not have the same layout"
                )
    for i, ref in enumerate(reference):
        if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(ref.dtype, np.integer)):
            raise ValueError(f"array {i} has dtype {ref.dtype}; only float and int arrays average")


def _weighted_sum(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Return sum_k weights[k] * arrays[k], keeping the arrays' dtype (ints are rounded)."""
    first = arrays[0]
    if np.issubdtype(first.dtype, np.integer):
        # BN `num_batches_tracked` and friends: tiny, so a float64 mean then rounding is cheap.
        mean = sum(w * a.astype(np.float64) for a, w in zip(arrays, weights, strict=True))
        return np.asarray(np.rint(mean)).astype(first.dtype)
    scalar = first.dtype.type
    scaled = [scalar(w) for w in weights]
    flats = [np.ascontiguousarray(a).reshape(-1) for a in arrays]  # views for contiguous input
    out = np.empty(first.shape, dtype=first.dtype)
    flat_out = out.reshape(-1)
    scratch = np.empty(min(_BLOCK, flat_out.size), dtype=first.dtype)
    for start in range(0, flat_out.size, _BLOCK):
        stop = min(start + _BLOCK, flat_out.size)
        acc, tmp = flat_out[start:stop], scratch[: stop - start]
        np.multiply(flats[0][start:stop], scaled[0], out=acc)
        for flat, w in zip(flats[1:], scaled[1:], strict=True):
            np.multiply(flat[start:stop], w, out=tmp)
            acc += tmp
    return out


def aggregate_fedvssl(
    client_arrays: list[list[np.ndarray]],
    num_examples: list[int],
    losses: list[float],
    alpha: float,
    beta: float,
    previous: list[np.ndarray] | None,
) -> list[np.ndarray]:
    """Aggregate client models into the new FedVSSL global model.

    Parameters
    ----------
    client_arrays : list[list[np.ndarray]]
        One list of arrays per client, all in the same state-dict order and shapes.
    num_examples : list[int]
        Number of training examples of each client.
    losses : list[float]
        Mean training loss of each client.
    alpha : float
        Share of the loss-based average in the mix, in [0, 1] (0 is FedAvg).
    beta : float
        Weight of the previous global model, >= 0 (0 turns the blend off).
    previous : list[np.ndarray] | None
        The last global model, or None in round 1.

    Returns
    -------
    list[np.ndarray]
        The global model: (mix + beta * previous) / (1 + beta), or mix when previous is None.
        Float arrays keep their dtype; integer arrays get the rounded weighted mean.
    """
    _check_beta(beta)
    if len(client_arrays) != len(num_examples):
        raise ValueError(
            f"got {len(client_arrays)} client models but {len(num_examples)} example counts"
        )
    weights = mixing_weights(num_examples, losses, alpha)
    _check_layout(client_arrays, previous)
    models = list(client_arrays)
    if previous is not None and beta > 0:
        weights = np.append(weights, beta) / (1.0 + beta)
        models.append(previous)
    weight_list = [float(w) for w in weights]
    return [
        _weighted_sum([model[i] for model in models], weight_list)
        for i in range(len(client_arrays[0]))
    ]


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


@dataclass(frozen=True)
class StrategySettings:
    """The resolved `strategy` config group.

    Parameters
    ----------
    name : str
        "fedvssl" or "fedavg".
    alpha : float
        Share of the loss-based average in the mix (paper meaning: 0 is FedAvg).
    beta : float
        Weight of the previous global model in the blend (0 turns it off).
    partial_update : bool
        True: clients take only ``backbone.*`` from the global model and keep their own CtP
        head (FedVSSL); False: clients take the whole model (plain FedAvg).
    """

    name: str
    alpha: float
    beta: float
    partial_update: bool


class StrategyConfigError(ValueError):
    """A `strategy` config group that cannot run; the message says which key to change."""


def resolve_strategy(cfg: Mapping[str, Any]) -> StrategySettings:
    """Resolve the `strategy` config group, aliases included, into checked settings.

    Parameters
    ----------
    cfg : Mapping[str, Any]
        The plain-dict group: ``name``, ``alpha``, ``beta`` and the seed-compatible aliases
        ``mix_coeff`` (= alpha), ``swbeta`` (= beta) and ``fedavg`` (true = plain FedAvg).
        An alias that is not None wins over the canonical key.

    Returns
    -------
    StrategySettings
        The settings; ``name == "fedavg"`` or ``fedavg=true`` gives alpha 0, beta 0 and whole-model
        updates.
    """
    name = cfg.get("name", "fedvssl")
    if name not in ("fedvssl", "fedavg"):
        raise StrategyConfigError(f"strategy.name must be 'fedvssl' or 'fedavg', got {name!r}")
    fedavg = cfg.get("fedavg") or False
    if not isinstance(fedavg, bool):
        raise StrategyConfigError(f"strategy.fedavg must be true or false, got {fedavg!r}")
    if fedavg or name == "fedavg":
        return StrategySettings(name="fedavg", alpha=0.0, beta=0.0, partial_update=False)
    alpha_key = "mix_coeff" if cfg.get("mix_coeff") is not None else "alpha"
    beta_key = "swbeta" if cfg.get("swbeta") is not None else "beta"
    alpha, beta = cfg.get(alpha_key, 0.9), cfg.get(beta_key, 1.0)
    _check_alpha(alpha, f"strategy.{alpha_key}", StrategyConfigError)
    _check_beta(beta, f"strategy.{beta_key}", StrategyConfigError)
    return StrategySettings(
        name="fedvssl", alpha=float(alpha), beta=float(beta), partial_update=True
    )


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
    keys: list[str]
    arrays: list[np.ndarray]  # read-only views into the reply's bytes

    @property
    def layout(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        return tuple((k, a.shape, a.dtype.str) for k, a in zip(self.keys, self.arrays, strict=True))


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
        _check_alpha(alpha)
        _check_beta(beta)
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
        kept = _drop_inconsistent(updates, report.failures)
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
        if not (_is_number(loss) and math.isfinite(loss)):
            raise ValueError(f"'train-loss' must be a finite number, got {loss!r}")
        if not isinstance(partition, int):
            raise ValueError(f"'partition-id' must be an int, got {partition!r}")
        keys = list(arrays.keys())
        views = [_as_numpy(arrays[k]) for k in keys]
        node = msg.metadata.src_node_id
        return _ClientUpdate(partition, node, examples, float(loss), keys, views)


def _drop_inconsistent(updates: list[_ClientUpdate], failures: list[str]) -> list[_ClientUpdate]:
    """Keep the updates sharing the most common array layout and a unique partition id."""
    layouts = [u.layout for u in updates]
    common = Counter(layouts).most_common(1)[0][0] if layouts else ()
    kept: list[_ClientUpdate] = []
    for update, layout in zip(updates, layouts, strict=True):
        who = f"partition {update.partition_id}"
        if kept and kept[-1].partition_id == update.partition_id:
            failures.append(f"{who}: duplicate reply for this partition, ignored")
        elif layout != common:
            failures.append(f"{who}: its arrays (keys, shapes or dtypes) differ from the others'")
        else:
            kept.append(update)
    return kept
