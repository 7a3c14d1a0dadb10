"""The FedVSSL ServerApp: rounds of sampling, local pretext training, aggregation, checkpoints.

Every round: the strategy samples clients (reproducibly, by partition), sends the global arrays,
aggregates the replies (FedVSSL: alpha/beta mix; see :mod:`fedvssl.strategy`), then the server

- writes the global model to ``fedvssl_results/round-{r}-weights.array.npz`` (atomically);
- appends the round (each client's loss, the loss of the trivial prediction "nothing moves" on
  the same batches, examples and weight, failures, wall time) to ``metrics.json`` and logs one
  line, with the loss as a fraction of the trivial loss (1 means nothing has been learned);
- every ``evaluate_every`` rounds, evaluates the global model with the hook it was given
  (retrieval R@1 of the backbone; also before round 1).

With ``resume`` the run continues after the last complete round of its results folder, with the
same result as an uninterrupted run. A sampled client that fails, or does not answer within
``round_timeout``, is reported and the round aggregates the others.

A round in which fewer than ``min_fit_clients`` clients replied validly (finite loss and arrays
of the model's layout) aggregates nothing: it writes no checkpoint and the global model stays.
After ``stop_after_failed_rounds`` such rounds in a row, or when the last round is one, the run
stops and its history says why (:attr:`History.stopped`, the first client error included); so
does a round whose aggregate is not finite. ``python -m fedvssl.main`` then exits with status 1.

``make_server_app`` builds the app of ``python -m fedvssl.main``; the app ``flwr run`` loads is
:data:`fedvssl.flower_apps.serverapp`, configured from its run config (:mod:`fedvssl.run_config`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from CtP.pretext import Pretext
from fedvssl.checkpoints import (
    CheckpointError,
    latest_round_checkpoint,
    load_global_checkpoint,
    round_checkpoint_path,
    save_global_checkpoint,
)
from fedvssl.guard.fingerprint import check_fingerprint, pretraining_fingerprint
from fedvssl.history import History, RoundRecord
from fedvssl.settings import EvaluateFn, RunStateError, ServerSettings
from fedvssl.strategy import FedVSSL, Layout, layout_of

logger = logging.getLogger(__name__)


def initial_state(pretext: Pretext, width: int, clip_len: int, seed: int) -> dict[str, np.ndarray]:
    """Build the seeded random pretext model every run starts from (reference §5.3.9: seed 7)."""
    torch.manual_seed(seed)
    model = pretext.build_model(width=width, clip_len=clip_len)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def check_resumed_state(
    path: Path, state: dict[str, np.ndarray], expected: dict[str, np.ndarray], pretext: str
) -> None:
    """Refuse a checkpoint whose entries are not those of this run's pretext model."""
    mismatch = [
        k for k in expected.keys() | state.keys()
        if k not in state or k not in expected or state[k].shape != expected[k].shape
    ]  # fmt: skip
    if mismatch:
        head = sorted(k for k in state if not k.startswith("backbone."))
        raise RunStateError(
            f"{path} does not hold this run's {pretext} model (first mismatch: {min(mismatch)}; "
            f"its head: {', '.join(head[:2]) or 'none'}): resume with the pretext and model.width "
            "it was made with, or choose another hydra.run.dir"
        )


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Turn global arrays into a Flower record, names, order and shapes (0-d too) kept."""
    return ArrayRecord(
        {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in state.items()}
    )


def to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Turn a Flower record into named numpy arrays."""
    return {k: record[k].numpy() for k in record}


def discover_partitions(grid: Grid, pool_size: int, timeout: float) -> dict[int, int]:
    """Ask every client for its partition id, once all ``pool_size`` are connected."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < pool_size:
        if time.monotonic() > deadline:
            raise RunStateError(f"only {len(node_ids)} of {pool_size} clients connected")
        time.sleep(0.2)
    queries = [
        Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    for failed in (r for r in replies if r.has_error()):
        logger.warning("node %d: %s", failed.metadata.src_node_id, failed.error.reason)
    ids = {
        r.metadata.src_node_id: r.content.metric_records["metrics"]
        for r in replies
        if not r.has_error()
    }
    return {node: int(cast(int, metrics["partition-id"])) for node, metrics in ids.items()}


def resumable_state(
    settings: ServerSettings, fingerprint: dict[str, Any]
) -> tuple[int, dict[str, np.ndarray]] | None:
    """Return the last complete round and its global model, or None to start afresh.

    Raises
    ------
    RunStateError
        If the folder holds rounds but ``resume`` is off, its last checkpoint cannot be read, or
        its model is not this run's (another pretext or width).
    FingerprintError
        If the folder's run was made with other deciding settings (``fingerprint``).
    """
    latest = latest_round_checkpoint(settings.results_dir)
    if latest is not None and not settings.resume:
        raise RunStateError(
            f"{settings.results_dir} already holds round checkpoints: pass resume=true to "
            "continue that run, or choose another hydra.run.dir"
        )
    if latest is None:
        return None
    check_fingerprint(Path(settings.run_dir), fingerprint)
    last_round, path = latest
    try:
        state = load_global_checkpoint(path)
    except CheckpointError as err:
        raise RunStateError(
            f"{err}. To resume from round {last_round - 1}, move {path.name} out of "
            f"{path.parent}; or choose another hydra.run.dir"
        ) from None
    fresh = initial_state(settings.pretext, settings.width, settings.clip_len, settings.seed)
    check_resumed_state(path, state, fresh, settings.pretext.name)
    return last_round, state


@dataclass
class StartPoint:
    """Where a run starts: its first round, the global model before it, and its history."""

    first_round: int
    state: dict[str, np.ndarray]
    history: History


def start_point(settings: ServerSettings, history_config: dict[str, Any]) -> StartPoint:
    """Find where the run starts, round 1 or after the last complete one, before any work.

    Every refusal (see :func:`resumable_state`, and a ``metrics.json`` that cannot be read) comes
    from here, so both entry points call it before starting any client.
    """
    metrics_path = Path(settings.run_dir) / "metrics.json"
    resumed = resumable_state(settings, pretraining_fingerprint(history_config))
    if resumed is None:
        if settings.resume:
            logger.warning(
                "resume=true but %s holds no complete round: starting at round 1",
                settings.results_dir,
            )
        state = initial_state(settings.pretext, settings.width, settings.clip_len, settings.seed)
        return StartPoint(1, state, History(metrics_path, history_config))
    last_round, state = resumed
    logger.info("resuming after round %d from %s", last_round, settings.results_dir)
    history = History.resume(metrics_path, history_config, last_round)
    return StartPoint(last_round + 1, state, history)


def round_record(
    strategy: FedVSSL, server_round: int, seconds: float, aggregated: bool
) -> RoundRecord:
    """Build the round's record from the strategy's report of its last aggregation."""
    report = strategy.last_round
    if report is None:
        return RoundRecord(round=server_round, seconds=seconds, train_loss=None, aggregated=False)
    clients = [
        {"id": cid + 1, "loss": loss, "trivial_loss": trivial, "examples": n, "weight": w}
        for cid, loss, trivial, n, w in zip(
            report.client_ids,
            report.client_losses,
            report.client_trivial_losses,
            report.client_examples,
            report.client_weights,
            strict=True,
        )
    ]
    return RoundRecord(
        round=server_round, seconds=seconds, train_loss=weighted_mean(clients, "loss"),
        trivial_loss=weighted_mean(clients, "trivial_loss"), clients=clients,
        failures=list(report.failures), aggregated=aggregated,
    )  # fmt: skip


def weighted_mean(clients: list[dict[str, float | int]], key: str) -> float | None:
    """Example-weighted mean of ``key`` over the clients (None: no client, or a value missing)."""
    total = sum(c["examples"] for c in clients)
    values = [float(c[key]) for c in clients]
    if not total or not all(math.isfinite(v) for v in values):
        return None
    return sum(v * c["examples"] for v, c in zip(values, clients, strict=True)) / total


def round_line(record: RoundRecord, rounds: int) -> str:
    """Format one concise progress line."""
    if record.train_loss is None:
        first = f"; first failure: {record.failures[0]}" if record.failures else ""
        return (
            f"round {record.round}/{rounds}: aggregated nothing, no valid reply "
            f"({len(record.failures)} failed){first}"
        )
    weights = " ".join(f"{c['weight']:.2f}" for c in record.clients)
    ratio = f" ({record.ratio:.2f} of trivial)" if record.ratio is not None else ""
    parts = [
        f"round {record.round}/{rounds}: loss {record.train_loss:.4f}{ratio}",
        f"clients {len(record.clients)}/{len(record.clients) + len(record.failures)}",
        f"weights {weights}",
    ]
    parts += [f"{k} {v:.2f}" for k, v in record.evaluation.items()]
    if not record.aggregated:
        parts.append("too few valid replies: aggregated nothing, global model kept")
    return " | ".join(parts) + f" | {record.seconds:.1f} s"


def global_model_problem(state: dict[str, np.ndarray], layout: Layout) -> str | None:
    """Say what is wrong with an aggregated global model (None: it fits the model and is finite)."""
    if layout_of(state) != layout:
        return "its arrays (keys, shapes or dtypes) differ from the model's"
    bad = [k for k, a in state.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    return f"{bad[0]} holds non-finite values (NaN or inf)" if bad else None


def stop_reason(record: RoundRecord, settings: ServerSettings, failed_in_a_row: int) -> str:
    """Say why the run stops after ``record``, a round that aggregated nothing."""
    first = record.failures[0] if record.failures else "none reported"
    return (
        f"round {record.round} aggregated nothing: {len(record.clients)} valid replies, "
        f"min_fit_clients={settings.min_fit_clients} ({failed_in_a_row} such round(s) in a row, "
        f"stop_after_failed_rounds={settings.stop_after_failed_rounds}); first client error: "
        f"{first}"
    )


def run_rounds(
    grid: Grid, settings: ServerSettings, start: StartPoint, evaluate_fn: EvaluateFn | None
) -> History:
    """Run the federated pre-training from ``start``; return its history (``stopped``: failed)."""
    first_round, state, history = start.first_round, start.state, start.history
    layout = layout_of(state)
    strategy = FedVSSL(
        alpha=settings.strategy.alpha,
        beta=settings.strategy.beta,
        clients_per_round=settings.clients_per_round,
        min_fit_clients=settings.min_fit_clients,
        seed=settings.seed,
        min_available_nodes=settings.pool_size,
    )
    strategy.layout = layout
    strategy.previous = list(state.values()) if first_round > 1 else None
    strategy.node_partitions = discover_partitions(grid, settings.pool_size, settings.round_timeout)
    arrays = to_record(state)
    evaluate_now = evaluate_fn is not None and settings.evaluate_every > 0
    if evaluate_now and first_round == 1 and evaluate_fn is not None:
        history.initial_evaluation = evaluate_fn(0, state)
        logger.info("round 0 (initial model): %s", _format(history.initial_evaluation))
    failed_in_a_row = 0
    for server_round in range(first_round, settings.rounds + 1):
        started = time.perf_counter()
        config = ConfigRecord({"partial-update": settings.strategy.partial_update})
        messages = list(strategy.configure_train(server_round, arrays, config, grid))
        replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        report_silent_nodes(strategy, messages, replies, settings.round_timeout)
        record = round_record(strategy, server_round, 0.0, new_arrays is not None)
        new_state = to_state(new_arrays) if new_arrays is not None else None
        problem = global_model_problem(new_state, layout) if new_state is not None else None
        if new_arrays is None or new_state is None or problem is not None:
            record.aggregated, failed_in_a_row = False, failed_in_a_row + 1
        else:
            arrays, state, failed_in_a_row = new_arrays, new_state, 0
            save_global_checkpoint(round_checkpoint_path(settings.results_dir, server_round), state)
            if evaluate_now and evaluate_fn and server_round % settings.evaluate_every == 0:
                record.evaluation = evaluate_fn(server_round, state)
        record.seconds = time.perf_counter() - started
        history.add(record)
        logger.info(round_line(record, settings.rounds))
        if problem is not None:
            history.stop(f"the global model of round {server_round} is not usable: {problem}")
            break
        if failed_in_a_row and (
            failed_in_a_row >= settings.stop_after_failed_rounds or server_round == settings.rounds
        ):
            history.stop(stop_reason(record, settings, failed_in_a_row))
            break
    return history


def report_silent_nodes(
    strategy: FedVSSL, messages: list[Message], replies: list[Message], timeout: float
) -> None:
    """Count a sampled node that did not answer within the round timeout as a failed client."""
    report = strategy.last_round
    if report is None:
        return
    answered = {r.metadata.src_node_id for r in replies}
    for node in (m.metadata.dst_node_id for m in messages):
        if node not in answered:
            who = f"partition {strategy.node_partitions.get(node, '?')} (node {node})"
            report.failures.append(f"{who}: no reply within round_timeout={timeout:g} s")
            logger.warning("round %d: %s sent no reply", report.server_round, who)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def serve(
    grid: Grid, settings: ServerSettings, start: StartPoint, evaluate_fn: EvaluateFn | None
) -> History:
    """Run the rounds, then plot them: the body of every FedVSSL ServerApp."""
    history = run_rounds(grid, settings, start, evaluate_fn)
    if history.rounds:
        history.plot(Path(settings.run_dir) / "metrics.png")
    return history


def make_server_app(
    settings: ServerSettings,
    start: StartPoint,
    *,
    evaluate_fn: EvaluateFn | None = None,
    sink: dict[str, Any] | None = None,
) -> ServerApp:
    """Build the ServerApp of ``python -m fedvssl.main``; its history goes to ``sink``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        history = serve(grid, settings, start, evaluate_fn)
        if sink is not None:
            sink["history"] = history

    return app
