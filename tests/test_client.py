"""The client's partial weight update, without Ray: its head persists, its backbone follows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import global_model, settings_for

from CtP.pretext import Pretext
from CtP.recipe import CtPRecipe
from CtP.speed import SpeedRecipe
from CtP.vcop import VCOPRecipe
from fedvssl.local_training import head_files, load_own_head, save_own_head, train_locally


@pytest.mark.parametrize(
    "pretext", [CtPRecipe(), VCOPRecipe(), SpeedRecipe()], ids=["ctp", "vcop", "speed"]
)
def test_client_keeps_its_head_while_its_backbone_follows_the_global_model(
    synthetic_data_dir: Path, tmp_path: Path, pretext: Pretext
) -> None:
    settings = replace(settings_for(synthetic_data_dir, tmp_path / "results"), pretext=pretext)
    first_global, second_global = global_model(1, pretext), global_model(2, pretext)
    head_weight = next(k for k in first_global if k.startswith("head.") and k.endswith("weight"))

    after_first, metrics = train_locally(settings, 0, 1, first_global, partial=True)
    assert metrics["partition-id"] == 0 and int(metrics["num-examples"]) > 0  # type: ignore[arg-type]
    assert torch.isfinite(torch.tensor(metrics["train-loss"]))
    assert float(metrics["trivial-loss"]) > 0  # type: ignore[arg-type]
    # round 1: the client starts from the whole global model, so its head trained away from it
    assert not torch.equal(after_first[head_weight], first_global[head_weight])

    # round 2 with lr 0: the weights the client trained from are exactly what it returns
    frozen = replace(settings, lr=0.0, momentum=0.0, weight_decay=0.0)
    after_second, _ = train_locally(frozen, 0, 2, second_global, partial=True)
    assert list(after_second) == list(second_global)
    for key, value in after_second.items():
        if key.startswith("head."):
            torch.testing.assert_close(value, after_first[key], rtol=0, atol=0, msg=key)
        elif key.endswith("conv.weight") or key.endswith("bn.weight"):
            torch.testing.assert_close(value, second_global[key], rtol=0, atol=0, msg=key)


def test_fedavg_client_takes_the_whole_global_model(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(synthetic_data_dir, tmp_path / "results")
    train_locally(settings, 1, 1, global_model(1), partial=False)
    frozen = replace(settings, lr=0.0, momentum=0.0, weight_decay=0.0)
    second = global_model(2)
    after, _ = train_locally(frozen, 1, 2, second, partial=False)
    torch.testing.assert_close(after["head.fc1.weight"], second["head.fc1.weight"], rtol=0, atol=0)


def test_head_files_keep_the_round_a_resume_needs(tmp_path: Path) -> None:
    for server_round in (1, 3, 4):
        save_own_head(
            tmp_path, server_round, {"head.fc1.bias": torch.full((3,), float(server_round))}
        )
    assert sorted(head_files(tmp_path)) == [3, 4]  # the newest and the one it started from
    restored = load_own_head(tmp_path, 4)  # a resumed round 4 starts from round 3's head
    assert restored is not None and restored["head.fc1.bias"][0] == 3.0
    assert load_own_head(tmp_path, 1) is None
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left


@pytest.mark.parametrize("bad", ["not json", '[{"label": 1}]'])
def test_bad_partition_file_raises_a_clear_error(
    synthetic_data_dir: Path, tmp_path: Path, bad: str
) -> None:
    partition = tmp_path / "client_dist1.json"
    partition.write_text(bad)
    settings = replace(
        settings_for(synthetic_data_dir, tmp_path / "results"), partition_template=str(partition)
    )
    with pytest.raises(ValueError, match=r"client_dist1\.json"):
        train_locally(settings, 0, 1, global_model(1), partial=True)


@pytest.mark.usefixtures("_task_identity")
def test_a_node_without_its_partition_replies_an_error_and_logs_one_line(
    synthetic_data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from fedvssl.client_app import train_reply

    settings = settings_for(synthetic_data_dir, tmp_path / "results")  # 2 partitions prepared
    arrays = ArrayRecord(global_model(1))
    content = RecordDict(
        {"arrays": arrays, "config": ConfigRecord({"server-round": 1, "partial-update": True})}
    )
    msg = Message(content=content, dst_node_id=5, message_type=MessageType.TRAIN)
    node = Context(run_id=1, node_id=5, node_config={"partition-id": 2}, state=RecordDict(),
                   run_config={})  # fmt: skip
    with caplog.at_level("ERROR", logger="fedvssl"):
        reply = train_reply(lambda _: settings, msg, node)
    assert reply.has_error()
    reason = str(reply.error.reason)
    assert reason.startswith("client 3: FileNotFoundError: partition 2 is not on this node")
    assert "client_dist3.json does not exist" in reason and "--node-config" in reason
    assert [r.getMessage() for r in caplog.records] == [f"round 1, {reason}"]

    unnamed = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    reply = train_reply(lambda _: settings, msg, unnamed)
    assert reply.has_error() and "this node has no partition-id" in str(reply.error.reason)


def test_compiled_client_trains_the_model_itself(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import fedvssl.local_training as local_training

    # the eager backend traces the model as inductor would, without a C++ toolchain's minutes
    monkeypatch.setattr(
        local_training.torch, "compile", functools.partial(torch.compile, backend="eager")
    )
    settings = replace(settings_for(synthetic_data_dir, tmp_path / "results"), compile=True)
    start = global_model(1)
    state, metrics = train_locally(settings, 0, 1, start, partial=True)
    assert torch.isfinite(torch.tensor(metrics["train-loss"]))
    assert sorted(state) == sorted(start)  # no "_orig_mod." prefix: the arrays are the model's
    assert any(not torch.equal(state[k], start[k]) for k in start if k.startswith("backbone."))
    compiled = list(local_training._COMPILED.values())
    assert len(compiled) == 1 and isinstance(compiled[0], torch._dynamo.eval_frame.OptimizedModule)
    train_locally(settings, 1, 2, start, partial=True)  # the next client reuses the compiled model
    assert list(local_training._COMPILED.values()) == compiled
