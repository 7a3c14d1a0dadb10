"""The server's rounds in-process, against a fake Grid: what a round that aggregates nothing does.

The clients are functions of (partition, round, global arrays); the model is a tiny backbone +
head with a BatchNorm (so a 0-d ``num_batches_tracked``). Checked: the round rule (a round with
fewer than ``min_fit_clients`` valid replies writes no checkpoint; ``stop_after_failed_rounds``
in a row, or a failed last round, stop the run with the first client error), non-finite replies
and global models, the arrays' shapes on disk, and the refusals of a resumed run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from torch import nn

from CtP.pretext import Pretext
from fedvssl.checkpoints import load_global_checkpoint, round_checkpoint_path
from fedvssl.guard.fingerprint import FingerprintError, pretraining_fingerprint, write_fingerprint
from fedvssl.history import History, HistoryError
from fedvssl.server_app import (
    ServerSettings,
    global_model_problem,
    initial_state,
    run_rounds,
    save_global_checkpoint,
    start_point,
)
from fedvssl.settings import RunStateError
from fedvssl.strategy import FedVSSL, StrategySettings, layout_of

pytestmark = pytest.mark.usefixtures("_task_identity")

State = dict[str, np.ndarray]
# A client: (partition, round, global arrays) -> (arrays, loss), or an error message.
Client = Callable[[int, int, State], tuple[State, float] | str]


@dataclass(frozen=True)
class TinyPretext:
    """A pretext whose model is a 1x1x1 conv and a BatchNorm (backbone) and a linear head."""

    name: ClassVar[str] = "tiny"

    def build_model(self, *, width: int, clip_len: int) -> nn.Module:
        model = nn.Module()
        model.backbone = nn.Sequential(nn.Conv3d(3, width, 1), nn.BatchNorm3d(width))
        model.head = nn.Linear(width, 2)
        return model

    def dataset(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def settings(run_dir: Path, **changes: Any) -> ServerSettings:
    base = ServerSettings(
        run_dir=str(run_dir), rounds=3, pool_size=2, clients_per_round=2, min_fit_clients=1,
        seed=7, width=4, clip_len=8, pretext=cast(Pretext, TinyPretext()), resume=False,
        evaluate_every=0, round_timeout=30.0,
        strategy=StrategySettings("fedvssl", alpha=0.9, beta=0.0, partial_update=True),
        stop_after_failed_rounds=1,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


CONFIG = {"seed": 7, "optimizer": {"lr": 0.01}, "strategy": {"name": "fedvssl", "alpha": 0.9}}


def _metadata(node: int, kind: str) -> Metadata:
    return Metadata(
        run_id=0, message_id=f"{node}-{time.monotonic_ns()}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=3600.0,
        message_type=kind,
    )  # fmt: skip


class FakeGrid:
    """Two nodes (100, 101) holding partitions 0 and 1; train messages go to ``client``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_node_ids(self) -> list[int]:
        return [100, 101]

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        return [self.reply(m) for m in messages]

    def reply(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        kind = msg.metadata.message_type
        if kind == MessageType.QUERY:
            content = RecordDict({"metrics": MetricRecord({"partition-id": node - 100})})
            return Message(content=content, metadata=_metadata(node, kind))  # type: ignore[call-overload]
        server_round = int(cast(int, msg.content["config"]["server-round"]))
        state = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
        result = self.client(node - 100, server_round, state)
        if isinstance(result, str):
            error = Error(code=100, reason=result)
            return Message(error=error, metadata=_metadata(node, kind))  # type: ignore[call-overload]
        arrays, loss = result
        record = ArrayRecord({k: Array(np.asarray(a)) for k, a in arrays.items()})
        metrics = MetricRecord({"num-examples": 4, "train-loss": loss, "partition-id": node - 100})
        content = RecordDict({"arrays": record, "metrics": metrics})
        return Message(content=content, metadata=_metadata(node, kind))  # type: ignore[call-overload]


def nudged(state: State, by: float) -> State:
    """The client's "training": every float array moved by ``by``, the counters advanced."""
    return {k: (v + by).astype(v.dtype) if v.dtype.kind == "f" else v + 1 for k, v in state.items()}


def serve(run_dir: Path, client: Client, **changes: Any) -> History:
    run = settings(run_dir, **changes)
    return run_rounds(cast(Grid, FakeGrid(client)), run, start_point(run, CONFIG), None)


def rounds_on_disk(run_dir: Path) -> list[int]:
    names = (run_dir / "fedvssl_results").glob("round-*-weights.array.npz")
    return sorted(int(p.name.split("-")[1]) for p in names)


def test_a_round_in_which_every_client_fails_stops_the_run_without_a_checkpoint(
    tmp_path: Path,
) -> None:
    history = serve(tmp_path, lambda p, r, s: f"client {p + 1}: ValueError: batch_size is 0")
    assert rounds_on_disk(tmp_path) == []  # not even the untrained start
    assert history.stopped is not None
    assert history.stopped.startswith("round 1 aggregated nothing: 0 valid replies")
    assert "first client error: partition " in history.stopped
    assert "ValueError: batch_size is 0" in history.stopped
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["stopped"] == history.stopped
    assert [(r["round"], r["aggregated"]) for r in saved["rounds"]] == [(1, False)]


def test_failed_rounds_below_the_limit_go_on_and_a_failed_last_round_stops(tmp_path: Path) -> None:
    def client(partition: int, server_round: int, state: State) -> tuple[State, float] | str:
        return "out of memory" if server_round in (1, 3) else (nudged(state, 1.0), 0.5)

    history = serve(tmp_path, client, stop_after_failed_rounds=2)
    assert rounds_on_disk(tmp_path) == [2]  # rounds 1 and 3 aggregated nothing
    assert [r.aggregated for r in history.rounds] == [False, True, False]
    assert history.stopped is not None and history.stopped.startswith("round 3 aggregated nothing")
    assert "(1 such round(s) in a row" in history.stopped


def test_non_finite_or_misshapen_replies_fail_and_arrays_keep_their_model_shapes(
    tmp_path: Path,
) -> None:
    def client(partition: int, server_round: int, state: State) -> tuple[State, float]:
        if partition == 1 and server_round == 1:  # a diverged client with a finite loss
            return {
                k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in state.items()
            }, 0.5
        if partition == 1:  # a client of another model
            return {k: v for k, v in state.items() if "head" not in k}, 0.5
        return nudged(state, 1.0), 0.5

    history = serve(tmp_path, client, rounds=2)
    assert history.stopped is None and rounds_on_disk(tmp_path) == [1, 2]
    assert "holds non-finite values" in history.rounds[0].failures[0]
    assert "differ from the model's" in history.rounds[1].failures[0]
    fresh = initial_state(TinyPretext(), 4, 8, 7)
    saved = load_global_checkpoint(round_checkpoint_path(tmp_path / "fedvssl_results", 2))
    assert layout_of(saved) == layout_of(fresh)  # names, shapes (a 0-d counter too), dtypes
    assert saved["backbone.1.num_batches_tracked"].shape == ()
    np.testing.assert_allclose(saved["head.bias"], fresh["head.bias"] + 2.0, rtol=1e-6)


def test_a_global_model_that_is_not_finite_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aggregate = FedVSSL.aggregate_train

    def overflowing(self: FedVSSL, server_round: int, replies: Any) -> Any:
        arrays, metrics = aggregate(self, server_round, replies)
        if arrays is not None and server_round == 2:
            arrays["head.bias"] = Array(np.full(2, np.inf, dtype=np.float32))
        return arrays, metrics

    monkeypatch.setattr(FedVSSL, "aggregate_train", overflowing)
    history = serve(tmp_path, lambda p, r, s: (nudged(s, 1.0), 0.5))
    assert rounds_on_disk(tmp_path) == [1]
    assert history.stopped == (
        "the global model of round 2 is not usable: head.bias holds non-finite values (NaN or inf)"
    )
    fresh = initial_state(TinyPretext(), 4, 8, 7)
    assert global_model_problem({"x": fresh["head.bias"]}, layout_of(fresh)) is not None


def test_a_resumed_run_is_refused_before_any_work_when_it_does_not_fit(tmp_path: Path) -> None:
    run = settings(tmp_path, resume=True)
    results = run.results_dir
    fresh = initial_state(TinyPretext(), 4, 8, 7)
    for server_round in (1, 2):
        save_global_checkpoint(round_checkpoint_path(results, server_round), fresh)
    write_fingerprint(tmp_path, pretraining_fingerprint(CONFIG))

    with pytest.raises(RunStateError, match="already holds round checkpoints"):
        start_point(dataclasses.replace(run, resume=False), CONFIG)
    other = CONFIG | {"seed": 8, "strategy": {"name": "fedvssl", "mix_coeff": 0.5}}
    with pytest.raises(FingerprintError) as changed:
        start_point(run, other)
    assert "seed (7 -> 8), strategy.alpha (0.9 -> 0.5)" in str(changed.value)
    same = CONFIG | {"strategy": {"name": "fedvssl", "mix_coeff": 0.9}}  # an alias, the same run
    assert start_point(run, same).first_round == 3

    (tmp_path / "metrics.json").write_text('{"rounds": [')
    with pytest.raises(HistoryError, match=r"metrics\.json cannot be read"):
        start_point(run, CONFIG)
    last = round_checkpoint_path(results, 2)
    last.write_bytes(last.read_bytes()[:100])  # truncated
    with pytest.raises(RunStateError) as damaged:
        start_point(run, CONFIG)
    message = str(damaged.value)
    assert "round-2-weights.array.npz: not a readable round checkpoint" in message
    assert "To resume from round 1, move round-2-weights.array.npz out of" in message
    assert "\n" not in message


def test_a_redone_round_sets_the_interrupted_attempts_log_aside(tmp_path: Path) -> None:
    from fedvssl.local_training import set_aside_interrupted_logs

    for name in ("20250101_100000-round1.log.json", "20250101_100100-round2.log.json"):
        (tmp_path / name).write_text("{}\n")
    set_aside_interrupted_logs(tmp_path, 2)  # round 2 is trained again after a kill
    assert sorted(p.name for p in tmp_path.glob("*.log.json")) == [
        "20250101_100000-round1.log.json"
    ]
    assert (tmp_path / "interrupted" / "20250101_100100-round2.log.json").is_file()
