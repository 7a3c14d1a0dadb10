"""FedVSSL aggregation: the math against hand-computed numbers, the config aliases, the strategy."""

from __future__ import annotations

import itertools
import math
import random
import time
from typing import cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedvssl.strategy import (
    FedVSSL,
    StrategyConfigError,
    StrategySettings,
    aggregate_fedvssl,
    fedavg_weights,
    loss_weights,
    mixing_weights,
    resolve_strategy,
    sample_partitions,
)

# Two clients used throughout: client 1 has n=1 example and mean loss 0, client 2 has n=3 and
# mean loss ln 3.  FedAvg weights A: [1/4, 3/4].  Loss weights B: exp(-[0, ln 3]) = [1, 1/3],
# normalised [3/4, 1/4].
X1 = np.array([[1, 2], [3, 4]], dtype=np.float32)
X2 = np.array([[5, 6], [7, 8]], dtype=np.float32)
T1, T2 = np.asarray(np.int64(3)), np.asarray(np.int64(10))  # BN num_batches_tracked
EXAMPLES = [1, 3]
LOSSES = [0.0, math.log(3.0)]
PREVIOUS: list[np.ndarray] = [np.full((2, 2), 10.0, dtype=np.float32), np.asarray(np.int64(20))]


def _two_clients() -> list[list[np.ndarray]]:
    return [[X1, T1], [X2, T2]]


# --------------------------------------------------------------------------- pure math


def test_weights_by_hand() -> None:
    np.testing.assert_allclose(fedavg_weights([1, 3]), [0.25, 0.75])
    np.testing.assert_allclose(loss_weights(LOSSES), [0.75, 0.25])
    # Stable for large losses: softmax(-[1000, 1001]) = [1, e^-1] / (1 + e^-1).
    e = math.exp(-1.0)
    np.testing.assert_allclose(loss_weights([1000.0, 1001.0]), [1 / (1 + e), e / (1 + e)])
    # alpha 0.9: 0.9 * [0.75, 0.25] + 0.1 * [0.25, 0.75] = [0.7, 0.3].
    np.testing.assert_allclose(mixing_weights(EXAMPLES, LOSSES, 0.9), [0.7, 0.3])
    np.testing.assert_allclose(mixing_weights(EXAMPLES, LOSSES, 0.0), [0.25, 0.75])
    np.testing.assert_allclose(mixing_weights(EXAMPLES, LOSSES, 1.0), [0.75, 0.25])


@pytest.mark.parametrize(
    ("alpha", "expected", "expected_int"),
    [
        # A = 0.25*X1 + 0.75*X2 = [[4, 5], [6, 7]];  0.25*3 + 0.75*10 = 8.25 -> 8
        (0.0, [[4.0, 5.0], [6.0, 7.0]], 8),
        # B = 0.75*X1 + 0.25*X2 = [[2, 3], [4, 5]];  0.75*3 + 0.25*10 = 4.75 -> 5
        (1.0, [[2.0, 3.0], [4.0, 5.0]], 5),
        # 0.9*B + 0.1*A = [[2.2, 3.2], [4.2, 5.2]];  0.9*4.75 + 0.1*8.25 = 5.1 -> 5
        (0.9, [[2.2, 3.2], [4.2, 5.2]], 5),
    ],
)
def test_aggregate_round_one_by_hand(alpha: float, expected: list, expected_int: int) -> None:
    weights, buffer = aggregate_fedvssl(_two_clients(), EXAMPLES, LOSSES, alpha, 1.0, None)
    assert weights.dtype == np.float32 and weights.shape == (2, 2)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert buffer.dtype == np.int64 and buffer.shape == ()
    assert int(buffer) == expected_int


def test_aggregate_blends_previous_by_hand() -> None:
    # beta 1: (mix + P) / 2 with mix = [[2.2, 3.2], [4.2, 5.2]], P = 10 everywhere
    weights, buffer = aggregate_fedvssl(_two_clients(), EXAMPLES, LOSSES, 0.9, 1.0, PREVIOUS)
    np.testing.assert_allclose(weights, [[6.1, 6.6], [7.1, 7.6]], rtol=1e-6)
    assert weights.dtype == np.float32
    # (5.1 + 20) / 2 = 12.55 -> 13, still int64
    assert buffer.dtype == np.int64 and int(buffer) == 13
    # beta 0 ignores the previous model: global = mix
    weights, buffer = aggregate_fedvssl(_two_clients(), EXAMPLES, LOSSES, 0.9, 0.0, PREVIOUS)
    np.testing.assert_allclose(weights, [[2.2, 3.2], [4.2, 5.2]], rtol=1e-6)
    assert int(buffer) == 5


def test_aggregate_three_clients_by_hand() -> None:
    # n = [1, 1, 2] -> A = [0.25, 0.25, 0.5]
    # exp(-[0, ln 2, ln 2]) = [1, .5, .5] -> B = [.5, .25, .25]
    # alpha 0.5 -> mix weights [0.375, 0.25, 0.375]
    x1 = np.array([[0, 4], [8, 12]], dtype=np.float32)
    x2 = np.array([[4, 0], [0, 4]], dtype=np.float32)
    x3 = np.full((2, 2), 8, dtype=np.float32)
    losses = [0.0, math.log(2.0), math.log(2.0)]
    # mix = [[0 + 1 + 3, 1.5 + 0 + 3], [3 + 0 + 3, 4.5 + 1 + 3]] = [[4, 4.5], [6, 8.5]]
    # beta 3, P = 4 everywhere: (mix + 12) / 4 = [[4, 4.125], [4.5, 5.125]]
    previous = [np.full((2, 2), 4, dtype=np.float32)]
    (out,) = aggregate_fedvssl([[x1], [x2], [x3]], [1, 1, 2], losses, 0.5, 3.0, previous)
    np.testing.assert_allclose(out, [[4.0, 4.125], [4.5, 5.125]], rtol=1e-6)
    np.testing.assert_allclose(mixing_weights([1, 1, 2], losses, 0.5), [0.375, 0.25, 0.375])


def test_alpha0_beta0_is_plain_fedavg() -> None:
    rng = np.random.default_rng(0)
    clients = [[rng.standard_normal((3, 4)).astype(np.float32)] for _ in range(3)]
    examples = [5, 2, 9]
    (out,) = aggregate_fedvssl(clients, examples, [0.3, 2.0, 1.1], 0.0, 0.0, [clients[0][0]])
    fedavg = sum(n * c[0].astype(np.float64) for n, c in zip(examples, clients, strict=True)) / 16
    np.testing.assert_allclose(out, fedavg, rtol=1e-6)


@pytest.mark.parametrize(
    ("clients", "examples", "losses", "match"),
    [
        ([], [], [], "non-empty"),
        ([[X1, T1], [X2]], EXAMPLES, LOSSES, "client 2 has 1 arrays"),
        ([[X1], [X2.reshape(4)]], EXAMPLES, LOSSES, "array 0 of client 2"),
        ([[X1], [X2.astype(np.float64)]], EXAMPLES, LOSSES, "same layout"),
        ([[X1], [X2]], [1, -3], LOSSES, "num_examples must be >= 0"),
        ([[X1], [X2]], [0, 0], LOSSES, "sum to 0"),
        ([[X1], [X2]], EXAMPLES, [0.1, float("nan")], "losses must be finite"),
        ([[X1], [X2]], EXAMPLES, [0.1], "2 example counts but 1 losses"),
        ([[X1], [X2]], [1, 2, 3], [0.1, 0.2, 0.3], "2 client models but 3"),
        ([[X1.astype(bool)], [X2.astype(bool)]], EXAMPLES, LOSSES, "only float and int"),
    ],
)
def test_aggregate_rejects_bad_input(
    clients: list, examples: list, losses: list, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        aggregate_fedvssl(clients, examples, losses, 0.5, 1.0, None)


def test_aggregate_rejects_bad_coefficients_and_previous() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        aggregate_fedvssl(_two_clients(), EXAMPLES, LOSSES, 1.5, 1.0, None)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        aggregate_fedvssl(_two_clients(), EXAMPLES, LOSSES, 0.5, -1.0, None)
    with pytest.raises(ValueError, match="previous global model has 1 arrays"):
        aggregate_fedvssl(_two_clients(), EXAMPLES, LOSSES, 0.5, 1.0, PREVIOUS[:1])


def test_sample_partitions_is_deterministic() -> None:
    pool = list(range(10))
    first = sample_partitions(pool, 3, seed=7, server_round=4)
    assert first == sample_partitions(pool[::-1], 3, seed=7, server_round=4)
    assert first == sorted(set(first)) and len(first) == 3 and set(first) <= set(pool)
    rounds = {tuple(sample_partitions(pool, 3, seed=7, server_round=r)) for r in range(1, 9)}
    assert len(rounds) > 1  # rounds differ
    assert sample_partitions(pool, 10, seed=7, server_round=1) == pool
    assert sample_partitions([4, 2, 9], 5, seed=7, server_round=1) == [2, 4, 9]


# --------------------------------------------------------------------------- config


def _cfg(**overrides: object) -> dict[str, object]:
    cfg: dict[str, object] = {"name": "fedvssl", "alpha": 0.9, "beta": 1.0}
    cfg |= {"mix_coeff": None, "swbeta": None, "fedavg": False}
    return cfg | overrides


def test_resolve_strategy_aliases() -> None:
    assert resolve_strategy(_cfg()) == StrategySettings("fedvssl", 0.9, 1.0, True)
    assert resolve_strategy(_cfg(alpha=1, beta=0)) == StrategySettings("fedvssl", 1.0, 0.0, True)
    assert resolve_strategy(_cfg(mix_coeff=0.2)).alpha == 0.2
    assert resolve_strategy(_cfg(swbeta=0)).beta == 0.0
    fedavg = StrategySettings("fedavg", 0.0, 0.0, False)
    assert resolve_strategy(_cfg(fedavg=True)) == fedavg
    assert resolve_strategy(_cfg(name="fedavg", alpha=0.5)) == fedavg
    assert resolve_strategy({"name": "fedavg"}) == fedavg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"alpha": 1.5},
            (
                "strategy.alpha must be in [0, 1], got 1.5 "
                "(alpha=0 is FedAvg, alpha=1 is loss-based averaging)"
            ),
        ),
        ({"alpha": -0.1}, "strategy.alpha must be in [0, 1], got -0.1"),
        ({"mix_coeff": 2}, "strategy.mix_coeff must be in [0, 1], got 2"),
        ({"alpha": "abc"}, "strategy.alpha must be in [0, 1], got 'abc'"),
        ({"beta": -1}, "strategy.beta must be a finite number >= 0, got -1"),
        ({"swbeta": -0.5}, "strategy.swbeta must be a finite number >= 0, got -0.5"),
        ({"name": "fedprox"}, "strategy.name must be 'fedvssl' or 'fedavg', got 'fedprox'"),
        ({"fedavg": "yes"}, "strategy.fedavg must be true or false"),
    ],
)
def test_resolve_strategy_errors(overrides: dict, message: str) -> None:
    with pytest.raises(StrategyConfigError) as info:
        resolve_strategy(_cfg(**overrides))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the Flower strategy

KEYS = ["backbone.conv.weight", "backbone.bn.num_batches_tracked"]


def _metadata(node: int, index: int) -> Metadata:
    return Metadata(
        run_id=0,
        message_id=f"m{index}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )


def _reply(partition: int, arrays: list[np.ndarray], examples: int, loss: float) -> Message:
    record = ArrayRecord({k: Array(np.asarray(a)) for k, a in zip(KEYS, arrays, strict=True)})
    metrics = MetricRecord(
        {"num-examples": examples, "train-loss": loss, "partition-id": partition}
    )
    content = RecordDict({"arrays": record, "metrics": metrics})
    # flwr's overloads omit `metadata`, the documented way to build a reply outside a running app
    return Message(content=content, metadata=_metadata(100 + partition, partition))  # type: ignore[call-overload]


def _error_reply(node: int, reason: str) -> Message:
    error = Error(code=1, reason=reason)
    return Message(error=error, metadata=_metadata(node, 99))  # type: ignore[call-overload]


def _two_replies() -> list[Message]:
    return [_reply(0, [X1, T1], 1, LOSSES[0]), _reply(1, [X2, T2], 3, LOSSES[1])]


def _strategy(**kwargs: object) -> FedVSSL:
    settings: dict = {"alpha": 0.9, "beta": 1.0, "clients_per_round": 3, "min_fit_clients": 2}
    return FedVSSL(**(settings | kwargs))


def test_aggregate_train_arrays_and_metrics() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, iter(_two_replies()))
    assert arrays is not None and metrics is not None
    assert list(arrays.keys()) == KEYS
    np.testing.assert_allclose(arrays[KEYS[0]].numpy(), [[2.2, 3.2], [4.2, 5.2]], rtol=1e-6)
    assert arrays[KEYS[0]].numpy().dtype == np.float32
    buffer = arrays[KEYS[1]].numpy()
    assert buffer.dtype == np.int64 and int(buffer) == 5
    # train-loss: (1*0 + 3*ln 3) / 4
    assert metrics["train-loss"] == pytest.approx(0.75 * math.log(3.0))
    assert metrics["num-clients"] == 2 and metrics["num-failures"] == 0
    assert metrics["client-ids"] == [0, 1]
    assert metrics["client-examples"] == [1, 3]
    assert metrics["client-losses"] == pytest.approx(LOSSES)
    assert metrics["client-weights"] == pytest.approx([0.7, 0.3])
    assert strategy.previous is not None
    np.testing.assert_array_equal(strategy.previous[0], arrays[KEYS[0]].numpy())
    assert strategy.last_round is not None and strategy.last_round.aggregated


def test_beta_uses_previous_model() -> None:
    strategy = _strategy()
    strategy.previous = [a.copy() for a in PREVIOUS]
    arrays, _ = strategy.aggregate_train(2, _two_replies())
    assert arrays is not None
    np.testing.assert_allclose(arrays[KEYS[0]].numpy(), [[6.1, 6.6], [7.1, 7.6]], rtol=1e-6)
    assert int(arrays[KEYS[1]].numpy()) == 13
    # the next round blends with this round's result
    second, _ = strategy.aggregate_train(3, _two_replies())
    assert second is not None
    # (mix + previous) / 2 = ([[2.2, 3.2], [4.2, 5.2]] + [[6.1, 6.6], [7.1, 7.6]]) / 2
    expected = [[4.15, 4.9], [5.65, 6.4]]
    np.testing.assert_allclose(second[KEYS[0]].numpy(), expected, rtol=1e-6)


def test_alpha0_beta0_matches_flwr_fedavg() -> None:
    ours, _ = _strategy(alpha=0.0, beta=0.0).aggregate_train(1, _two_replies())
    theirs, _ = FedAvg().aggregate_train(1, _two_replies())
    assert ours is not None and theirs is not None
    np.testing.assert_allclose(ours[KEYS[0]].numpy(), [[4.0, 5.0], [6.0, 7.0]], rtol=1e-6)
    np.testing.assert_allclose(ours[KEYS[0]].numpy(), theirs[KEYS[0]].numpy(), rtol=1e-6)
    # flwr turns the int buffer into a float (8.25); ours keeps int64 and rounds it
    assert int(ours[KEYS[1]].numpy()) == round(float(theirs[KEYS[1]].numpy())) == 8


def test_reply_order_does_not_change_the_result() -> None:
    rng = np.random.default_rng(1)
    replies = [
        _reply(
            p,
            [rng.standard_normal((4, 3)).astype(np.float32), np.asarray(np.int64(p * 7))],
            int(rng.integers(1, 50)),
            float(rng.uniform(0.5, 3.0)),
        )
        for p in range(5)
    ]
    results = []
    for order in itertools.islice(itertools.permutations(replies), 0, 120, 40):
        strategy = _strategy(clients_per_round=5)
        strategy.previous = [np.ones((4, 3), np.float32), np.asarray(np.int64(1))]
        results.append(strategy.aggregate_train(1, list(order)))
    shuffled = list(replies)
    random.Random(3).shuffle(shuffled)
    strategy = _strategy(clients_per_round=5)
    strategy.previous = [np.ones((4, 3), np.float32), np.asarray(np.int64(1))]
    results.append(strategy.aggregate_train(1, shuffled))
    first_arrays, first_metrics = results[0]
    assert first_arrays is not None and first_metrics is not None
    assert first_metrics["client-ids"] == [0, 1, 2, 3, 4]
    for arrays, metrics in results[1:]:
        assert arrays is not None and metrics is not None
        for key in KEYS:
            assert arrays[key].numpy().tobytes() == first_arrays[key].numpy().tobytes()
        assert dict(metrics) == dict(first_metrics)


def test_error_and_malformed_replies_are_counted() -> None:
    strategy = _strategy()
    strategy.node_partitions = {100: 0, 101: 1, 102: 2}
    bad = _reply(3, [X1, T1], 2, 0.5)
    del bad.content["metrics"]["train-loss"]
    replies = [_error_reply(102, "CUDA out of memory"), *_two_replies(), bad]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert metrics["num-failures"] == 2 and metrics["num-clients"] == 2
    np.testing.assert_allclose(arrays[KEYS[0]].numpy(), [[2.2, 3.2], [4.2, 5.2]], rtol=1e-6)
    report = strategy.last_round
    assert report is not None
    assert report.failures[0] == "partition 2: CUDA out of memory"
    assert "train-loss" in report.failures[1] and report.failures[1].startswith("node 103")


def test_fortran_order_and_corrupt_arrays() -> None:
    strategy = _strategy(alpha=0.0, beta=0.0)
    fortran = _reply(0, [np.asfortranarray(X1), T1], 1, 0.0)  # same values, column-major
    corrupt = _reply(2, [X1, T1], 1, 0.0)
    garbage = Array(dtype="<f4", shape=(2, 2), stype="numpy.ndarray", data=b"not an npy file")
    corrupt.content.array_records["arrays"][KEYS[0]] = garbage
    arrays, metrics = strategy.aggregate_train(1, [fortran, _two_replies()[1], corrupt])
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays[KEYS[0]].numpy(), [[4.0, 5.0], [6.0, 7.0]], rtol=1e-6)
    assert metrics["client-ids"] == [0, 1] and metrics["num-failures"] == 1
    assert strategy.last_round is not None
    assert strategy.last_round.failures[0].startswith("node 102: malformed reply")


def test_inconsistent_reply_is_dropped() -> None:
    odd = _reply(2, [X1, T1], 5, 0.1)
    odd.content["arrays"] = ArrayRecord({"other.key": Array(X1), KEYS[1]: Array(T1)})
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [*_two_replies(), odd])
    assert arrays is not None and metrics is not None
    assert metrics["client-ids"] == [0, 1] and metrics["num-failures"] == 1
    assert strategy.last_round is not None and "differ" in strategy.last_round.failures[0]


def test_too_few_valid_replies_keep_the_global_model() -> None:
    strategy = _strategy()
    strategy.previous = [a.copy() for a in PREVIOUS]
    replies = [_two_replies()[0], _error_reply(7, "killed")]
    arrays, metrics = strategy.aggregate_train(4, replies)
    assert arrays is None and metrics is not None
    assert metrics["num-clients"] == 1 and metrics["num-failures"] == 1
    assert metrics["client-ids"] == [0] and metrics["client-weights"] == [0.0]
    assert strategy.previous[0] is not None
    np.testing.assert_array_equal(strategy.previous[0], PREVIOUS[0])
    assert strategy.last_round is not None and not strategy.last_round.aggregated
    none_arrays, none_metrics = strategy.aggregate_train(5, [])
    assert none_arrays is None and none_metrics is not None
    assert "train-loss" not in none_metrics and none_metrics["num-clients"] == 0


def test_constructor_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="min_fit_clients <= clients_per_round"):
        _strategy(clients_per_round=2, min_fit_clients=3)
    with pytest.raises(ValueError, match="alpha must be in"):
        _strategy(alpha=2.0)
    assert _strategy().fraction_evaluate == 0.0


class _FakeGrid:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def _sampled(strategy: FedVSSL, server_round: int, grid: _FakeGrid) -> list[int]:
    arrays = ArrayRecord({KEYS[0]: Array(X1)})
    messages = list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), cast(Grid, grid))
    )
    for msg in messages:
        assert msg.metadata.message_type == MessageType.TRAIN
        assert msg.content["config"]["server-round"] == server_round
        assert list(msg.content["arrays"].keys()) == [KEYS[0]]
    return [msg.metadata.dst_node_id for msg in messages]


@pytest.mark.usefixtures("_task_identity")
def test_configure_train_samples_deterministically() -> None:
    partitions = {5000 + 37 * p: p for p in range(10)}
    grid = _FakeGrid(list(partitions))

    def sampled(seed: int, server_round: int, per_round: int = 3) -> list[int]:
        strategy = _strategy(clients_per_round=per_round, seed=seed)
        strategy.node_partitions = dict(partitions)
        return _sampled(strategy, server_round, grid)

    first = sampled(7, 2)
    assert first == sampled(7, 2)
    expected = sample_partitions(list(range(10)), 3, seed=7, server_round=2)
    assert [partitions[n] for n in first] == expected
    assert len({tuple(sampled(7, r)) for r in range(1, 7)}) > 1
    assert sampled(7, 1, per_round=10) == list(partitions)  # whole pool, by partition


@pytest.mark.usefixtures("_task_identity")
def test_configure_train_falls_back_to_flwr_sampling() -> None:
    grid = _FakeGrid([11, 22, 33, 44])
    nodes = _sampled(_strategy(clients_per_round=3), 1, grid)
    assert len(nodes) == 3 and set(nodes) <= {11, 22, 33, 44}


@pytest.mark.usefixtures("_task_identity")
def test_a_node_that_stays_silent_is_a_reported_failure() -> None:
    from fedvssl.server_app import report_silent_nodes

    strategy = _strategy(min_fit_clients=1)
    strategy.node_partitions = {100: 0, 101: 1, 102: 2}
    sent = [
        Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
        for node in (100, 101, 102)
    ]
    replies = _two_replies()  # from nodes 100 and 101; node 102 vanished mid-round
    arrays, _ = strategy.aggregate_train(1, iter(replies))
    report_silent_nodes(strategy, sent, replies, timeout=30)
    assert arrays is not None and strategy.last_round is not None
    assert strategy.last_round.failures == [
        "partition 2 (node 102): no reply within round_timeout=30 s"
    ]
