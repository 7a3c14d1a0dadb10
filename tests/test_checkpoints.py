"""Checkpoints: our round files, every published layout, and the restricted unpickler.

Files are built here from the reference's state-dict table (not from the code under test), with
known values: float tensor i holds i + 1, num_batches_tracked i holds 1000 + i.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pickle
import re
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from CtP.backbone import backbone_state_spec, load_backbone
from CtP.ctp import build_ctp
from fedvssl.checkpoints import (
    CheckpointError,
    latest_round_checkpoint,
    load_backbone_state,
    load_global_checkpoint,
    round_checkpoint_path,
    save_global_checkpoint,
)

# --------------------------------------------------------------- the reference's table (§1.2, §1.4)


def reference_backbone_spec(width: int) -> list[tuple[str, tuple[int, ...]]]:
    spec: list[tuple[str, tuple[int, ...]]] = []

    def batch_norm(prefix: str, channels: int) -> None:
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            spec.append((f"{prefix}.{suffix}", (channels,)))
        spec.append((f"{prefix}.num_batches_tracked", ()))

    spec.append(("stem.conv.weight", (width, 3, 3, 7, 7)))
    batch_norm("stem.bn", width)
    in_channels = width
    for layer, channels in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            block_in = in_channels if block == 0 else channels
            spec.append((f"{prefix}.conv1.conv.weight", (channels, block_in, 3, 3, 3)))
            batch_norm(f"{prefix}.bn1", channels)
            spec.append((f"{prefix}.conv2.conv.weight", (channels, channels, 3, 3, 3)))
            batch_norm(f"{prefix}.bn2", channels)
            if block == 0 and layer > 1:
                spec.append((f"{prefix}.downsample.conv.weight", (channels, in_channels, 1, 1, 1)))
                batch_norm(f"{prefix}.downsample_bn", channels)
        in_channels = channels
    return spec


def reference_head_spec(width: int, pred_frames: int = 16) -> list[tuple[str, tuple[int, ...]]]:
    hidden = 8 * width
    return [
        ("head.temporal_conv.weight", (hidden, hidden, 2, 1, 1)),
        ("head.temporal_conv.bias", (hidden,)),
        ("head.fc1.weight", (hidden, hidden * 5 * 5)),
        ("head.fc1.bias", (hidden,)),
        ("head.pred_head.weight", (pred_frames * 4, hidden)),
        ("head.pred_head.bias", (pred_frames * 4,)),
    ]


def known_arrays(width: int, count_dtype: type = np.float64) -> list[np.ndarray]:
    """The 126 CtP arrays in reference order: entry i is i + 1, counts 1000 + i."""
    arrays: list[np.ndarray] = []
    for index, (name, shape) in enumerate(
        reference_backbone_spec(width) + reference_head_spec(width)
    ):
        if name.endswith("num_batches_tracked"):
            arrays.append(np.array(1000 + index, dtype=count_dtype))
        else:
            arrays.append(np.full(shape, index + 1, dtype=np.float32))
    return arrays


def assert_known_backbone(state: dict[str, torch.Tensor], width: int) -> None:
    spec = reference_backbone_spec(width)
    assert list(state) == [name for name, _ in spec]
    for index, (name, shape) in enumerate(spec):
        tensor = state[name]
        assert tuple(tensor.shape) == shape, name
        if name.endswith("num_batches_tracked"):
            assert tensor.dtype == torch.int64 and tensor.item() == 1000 + index, name
        else:
            assert tensor.dtype == torch.float32, name
            assert bool((tensor == index + 1).all()), name


@pytest.fixture(scope="module")
def published() -> list[np.ndarray]:
    return known_arrays(64)  # the published files' width; ~160 MB, built once


def npy_blobs(arrays: list[np.ndarray]) -> list[bytes]:
    blobs = []
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        blobs.append(buffer.getvalue())
    return blobs


def object_list(arrays: Sequence[object]) -> np.ndarray:
    listed = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        listed[index] = array
    return listed


def savez_like_the_original(path: Path, *objects: Any) -> None:
    """``np.savez(path, *objects)``, as the original code called it on Python objects."""
    np.savez(path, *objects)


@pytest.fixture
def old_flwr(monkeypatch: pytest.MonkeyPatch) -> type:
    """A ``Parameters`` class that pickles as ``flwr.common.typing.Parameters`` without flwr."""

    @dataclasses.dataclass
    class Parameters:
        tensors: list[bytes]
        tensor_type: str

    Parameters.__module__ = "flwr.common.typing"
    Parameters.__qualname__ = "Parameters"
    for name in ("flwr", "flwr.common", "flwr.common.typing"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["flwr.common.typing"].Parameters = Parameters  # type: ignore[attr-defined]
    return Parameters


def write_npy_members(path: Path, members: dict[str, np.ndarray], protocol: int) -> None:
    """Write an .npz by hand: object members pickled with ``protocol`` and numpy 1.x names."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in members.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, np.lib.format.header_data_from_array_1_0(array)
            )
            payload = pickle.dumps(array, protocol=protocol)
            if protocol <= 3:  # text GLOBAL opcodes: rename as numpy 1.x wrote them
                payload = payload.replace(b"numpy._core.", b"numpy.core.")
                assert b"numpy.core.multiarray\n_reconstruct" in payload
            zf.writestr(f"{name}.npy", header.getvalue() + payload)


# ------------------------------------------------------------------------ the reference's table


def test_reference_table_matches_the_reference_and_the_backbone() -> None:
    spec = reference_backbone_spec(64)
    assert len(spec) == 120
    assert spec[42] == ("layer2.0.downsample.conv.weight", (128, 64, 1, 1, 1))
    assert spec[102] == ("layer4.0.downsample.conv.weight", (512, 256, 1, 1, 1))
    assert spec[119] == ("layer4.1.bn2.num_batches_tracked", ())
    learnable = sum(
        int(np.prod(shape)) for name, shape in spec if name.endswith(("weight", "bias"))
    )
    assert learnable == 33_166_272  # reference §1.2
    head = sum(int(np.prod(shape)) for _, shape in reference_head_spec(64))
    assert head == 7_111_744  # reference §1.4
    assert backbone_state_spec(64) == spec
    assert backbone_state_spec(16) == reference_backbone_spec(16)


# ---------------------------------------------------------------------------- published layouts


def test_parameters_record_written_by_flwr(published: list[np.ndarray], tmp_path: Path) -> None:
    from flwr.common import ndarrays_to_parameters

    path = tmp_path / "round-540.npz"
    savez_like_the_original(path, ndarrays_to_parameters(published))
    assert_known_backbone(load_backbone_state(path), 64)


def test_parameters_record_named_as_old_flwr_loads_without_flwr(
    published: list[np.ndarray], tmp_path: Path, old_flwr: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "round-540.npz"
    savez_like_the_original(
        path, old_flwr(tensors=npy_blobs(published), tensor_type="numpy.ndarray")
    )
    with zipfile.ZipFile(path) as zf:
        assert b"flwr.common.typing" in zf.read("arr_0.npy")[:4096]
    for name in ("flwr", "flwr.common", "flwr.common.typing", "flwr.compat.common.typing"):
        monkeypatch.setitem(sys.modules, name, None)  # importing flwr would now fail
    assert_known_backbone(load_backbone_state(str(path)), 64)


def test_object_array_of_126(published: list[np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "round-540.npz"
    np.savez(path, object_list(published))
    assert_known_backbone(load_backbone_state(path), 64)


def test_research_fedavg_layout_with_metrics(
    published: list[np.ndarray], tmp_path: Path, old_flwr: type
) -> None:
    path = tmp_path / "round-540-weights.npy.npz"
    record = old_flwr(tensors=npy_blobs(published), tensor_type="numpy.ndarray")
    savez_like_the_original(path, record, {"loss": 0.25, "accuracy": np.float64(0.5)})
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["arr_0.npy", "arr_1.npy"]
    assert_known_backbone(load_backbone_state(path), 64)


def test_flower_252_layout_takes_the_first_half_and_warns(
    published: list[np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flwr.common import ndarrays_to_parameters

    path = tmp_path / "round-3-weights.array.npz"
    second_half = [np.full_like(array, -7) for array in published]
    savez_like_the_original(path, ndarrays_to_parameters(published + second_half))
    with caplog.at_level(logging.WARNING, logger="fedvssl.checkpoints"):
        state = load_backbone_state(path)
    assert_known_backbone(state, 64)
    assert any("252" in r.getMessage() and "alpha" in r.getMessage() for r in caplog.records)


def test_mmcv_pth_with_meta_optimizer_and_cls_head(
    published: list[np.ndarray], tmp_path: Path
) -> None:
    spec = reference_backbone_spec(64)
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (name, _), array in zip(spec, published, strict=False):
        tensor = torch.from_numpy(array)
        state_dict[f"backbone.{name}"] = tensor.long() if tensor.ndim == 0 else tensor
    state_dict["cls_head.fc_cls.weight"] = torch.from_numpy(published[120])  # wrong shape: ignored
    state_dict["cls_head.fc_cls.bias"] = torch.from_numpy(published[121])
    checkpoint = {
        "meta": {"mmcv_version": "1.7.1", "time": "Mon Jan  1 00:00:00 2024", "epoch": 5,
                 "iter": 100, "hook_msgs": {}, "config": "model = dict(type='TSN')"},
        "state_dict": state_dict,
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                      "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]},
    }  # fmt: skip
    path = tmp_path / "epoch_5.pth"
    torch.save(checkpoint, path)
    assert_known_backbone(load_backbone_state(path), 64)


def test_bare_state_dict_with_module_prefix(tmp_path: Path) -> None:
    arrays = known_arrays(16, count_dtype=np.int64)
    spec = reference_backbone_spec(16)
    tensors = [torch.from_numpy(a) for a in arrays[:120]]
    path = tmp_path / "model_pretrained.pth"
    torch.save({f"module.backbone.{n}": t for (n, _), t in zip(spec, tensors, strict=True)}, path)
    assert_known_backbone(load_backbone_state(path), 16)
    torch.save({name: t for (name, _), t in zip(spec, tensors, strict=True)}, path)  # backbone only
    assert_known_backbone(load_backbone_state(path), 16)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("layout", ["parameters", "object_list"])
def test_pickle_protocols_and_numpy1_names(
    protocol: int, layout: str, tmp_path: Path, old_flwr: type
) -> None:
    arrays = known_arrays(16)
    if layout == "parameters":
        record = np.empty((), dtype=object)
        record[()] = old_flwr(tensors=npy_blobs(arrays), tensor_type="numpy.ndarray")
    else:  # the research mixed script: counts may come out as numpy float64 scalars
        record = object_list([a[()] if a.ndim == 0 else a for a in arrays])
    path = tmp_path / "round-540.npz"
    write_npy_members(path, {"arr_0": record}, protocol)
    assert_known_backbone(load_backbone_state(path), 16)


# ----------------------------------------------------------------------------- our own format


def our_state(width: int) -> dict[str, np.ndarray]:
    spec = [(f"backbone.{n}", s) for n, s in reference_backbone_spec(width)]
    spec += reference_head_spec(width, pred_frames=8)
    arrays = known_arrays(width, count_dtype=np.int64)
    return {name: array for (name, _), array in zip(spec, arrays, strict=True)}


def test_round_checkpoint_round_trip(tmp_path: Path) -> None:
    state = our_state(16)
    path = round_checkpoint_path(tmp_path / "fedvssl_results", 3)
    assert path == tmp_path / "fedvssl_results" / "round-3-weights.array.npz"
    save_global_checkpoint(path, state)
    loaded = load_global_checkpoint(path)
    assert list(loaded) == list(state)
    for key, array in state.items():
        assert loaded[key].dtype == array.dtype and loaded[key].shape == array.shape, key
        np.testing.assert_array_equal(loaded[key], array)
    with zipfile.ZipFile(path) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
        assert b"pickle" not in zf.read("backbone.stem.conv.weight.npy")[:128]
    assert_known_backbone(load_backbone_state(path), 16)


def test_round_checkpoint_of_a_real_model_loads_into_the_backbone(tmp_path: Path) -> None:
    source, target = build_ctp(width=16, clip_len=8), build_ctp(width=16, clip_len=8)
    path = tmp_path / "round-1-weights.array.npz"
    save_global_checkpoint(path, {k: v.numpy() for k, v in source.state_dict().items()})
    load_backbone(target, load_backbone_state(path))
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "round-2-weights.array.npz"
    save_global_checkpoint(path, {"backbone.a": np.zeros(3, np.float32)})
    real_write = np.lib.format.write_array
    calls = []

    def write_then_fail(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_global_checkpoint(path, our_state(16))
    calls.clear()
    with pytest.raises(RuntimeError, match="disk full"):
        save_global_checkpoint(tmp_path / "round-3-weights.array.npz", our_state(16))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp, no round 3
    np.testing.assert_array_equal(load_global_checkpoint(path)["backbone.a"], np.zeros(3))
    assert latest_round_checkpoint(tmp_path) == (2, path)


def test_latest_round_checkpoint_ignores_temp_files(tmp_path: Path) -> None:
    assert latest_round_checkpoint(tmp_path / "absent") is None
    assert latest_round_checkpoint(tmp_path) is None
    for name in ("round-1-weights.array.npz", "round-10-weights.array.npz",
                 "round-2-weights.array.npz", ".round-11-weights.array.npz.x1.tmp",
                 "round-12-weights.array.npz.tmp", "round-13.npz", "notes.txt"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    assert latest_round_checkpoint(tmp_path) == (10, tmp_path / "round-10-weights.array.npz")


def test_save_refuses_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "round-1-weights.array.npz"
    with pytest.raises(CheckpointError, match=r"backbone\.x has dtype object"):
        save_global_checkpoint(path, {"backbone.x": object_list([np.zeros(2), np.zeros(3)])})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- security


class RunsCommand:
    """Pickles as a call to ``function(*args)``: what a hostile checkpoint would carry."""

    def __init__(self, function: object, *args: object) -> None:
        self.call = (function, args)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.call


def hostile_payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    return {
        "os.system": RunsCommand(os.system, touch),
        "builtins.eval": RunsCommand(eval, f"__import__('os').system({touch!r})"),
        "subprocess.Popen": RunsCommand(subprocess.Popen, ["touch", str(marker)]),
    }


def test_hostile_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(
        pickle.dumps(hostile_payloads(marker)["os.system"])
    )  # what np.load(allow_pickle) would do
    assert marker.exists()


@pytest.mark.parametrize("where", ["arr_0", "inside_parameters", "inside_object_list"])
@pytest.mark.parametrize("refused", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_hostile_pickles_are_refused_before_running(
    where: str, refused: str, tmp_path: Path, old_flwr: type
) -> None:
    marker = tmp_path / "ran"
    payload = hostile_payloads(marker)[refused]
    if where == "arr_0":
        content = np.empty((), dtype=object)
        content[()] = payload
    elif where == "inside_parameters":
        content = np.empty((), dtype=object)
        content[()] = old_flwr(tensors=[payload], tensor_type="numpy.ndarray")
    else:
        content = object_list([np.zeros(3), payload])
    path = tmp_path / "round-540.npz"
    np.savez(path, content)
    function = payload.call[0]  # type: ignore[attr-defined]
    pickled_name = f"{function.__module__}.{function.__qualname__}"  # os.system is posix.system
    assert pickled_name.endswith(refused.split(".")[1])
    with pytest.raises(CheckpointError, match=re.escape(f"refused global {pickled_name}")) as error:
        load_backbone_state(path)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_getattr_chain_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    chain = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR"
        + f"(S'touch {marker}'\ntR.".encode()
    )
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|O", "fortran_order": False, "shape": ()}
    )
    path = tmp_path / "round-540.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arr_0.npy", header.getvalue() + chain)
    with pytest.raises(CheckpointError, match=r"refused global builtins\.getattr"):
        load_backbone_state(path)
    assert not marker.exists()


def test_hostile_metrics_in_arr_1_are_never_read(tmp_path: Path, old_flwr: type) -> None:
    marker = tmp_path / "ran"
    record = old_flwr(tensors=npy_blobs(known_arrays(16)), tensor_type="numpy.ndarray")
    savez_like_the_original(tmp_path / "r.npz", record, hostile_payloads(marker)["os.system"])
    assert_known_backbone(load_backbone_state(tmp_path / "r.npz"), 16)
    assert not marker.exists()


def test_hostile_pth_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "model_pretrained.pth"
    torch.save({"state_dict": hostile_payloads(marker)["os.system"]}, path)
    refused = f"refused: the torch file asks for {os.system.__module__}.system"
    with pytest.raises(CheckpointError, match=re.escape(refused)):
        load_backbone_state(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------- bad input


def test_wrong_shape_names_the_first_offending_entry(tmp_path: Path) -> None:
    arrays = known_arrays(16)
    arrays[30] = np.zeros((32, 16, 3, 3, 1), np.float32)  # layer2.0.conv1.conv.weight
    arrays[60] = np.zeros(1, np.float32)
    path = tmp_path / "round-540.npz"
    np.savez(path, object_list(arrays))
    with pytest.raises(
        CheckpointError,
        match=r"layer2\.0\.conv1\.conv\.weight has shape \(32, 16, 3, 3, 1\), expected "
        r"\(32, 16, 3, 3, 3\)",
    ):
        load_backbone_state(path)
    state = our_state(16)
    state["backbone.layer1.0.bn1.running_var"] = np.zeros(15, np.float32)
    save_global_checkpoint(tmp_path / "round-1-weights.array.npz", state)
    with pytest.raises(CheckpointError, match=r"layer1\.0\.bn1\.running_var has shape \(15,\)"):
        load_backbone_state(tmp_path / "round-1-weights.array.npz")


@pytest.mark.parametrize(
    ("head", "pretext"),
    [
        ([(512, 1024), (512,), (6, 1536), (6,)], "vcop"),  # head.fc1, head.fc2: 124 arrays
        ([(7, 512), (7,)], "speed"),  # head.fc_cls: 122 arrays
    ],
)
def test_other_pretexts_published_lists_give_their_backbone(
    published: list[np.ndarray],
    head: list[tuple[int, ...]],
    pretext: str,
    tmp_path: Path,
    old_flwr: type,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The authors' VCOP and Speed FL models, in the research code's layout (with metrics)."""
    arrays = published[:120] + [np.full(shape, -1.0, dtype=np.float32) for shape in head]
    path = tmp_path / "round-540-weights.npy.npz"
    record = old_flwr(tensors=npy_blobs(arrays), tensor_type="numpy.ndarray")
    savez_like_the_original(path, record, {"loss": 0.5})
    with caplog.at_level(logging.INFO, logger="fedvssl.checkpoints"):
        assert_known_backbone(load_backbone_state(path), 64)
    assert any(f"a {pretext} model" in r.getMessage() for r in caplog.records)


def test_wrong_count_and_missing_entries(tmp_path: Path) -> None:
    np.savez(tmp_path / "short.npz", object_list(known_arrays(16)[:125]))
    with pytest.raises(CheckpointError, match=r"holds 125 arrays, expected 126 \(CtP"):
        load_backbone_state(tmp_path / "short.npz")
    state = our_state(16)
    del state["backbone.layer3.1.bn1.bias"]
    save_global_checkpoint(tmp_path / "round-1-weights.array.npz", state)
    with pytest.raises(CheckpointError, match=r"missing backbone entry layer3\.1\.bn1\.bias"):
        load_backbone_state(tmp_path / "round-1-weights.array.npz")


def test_not_a_checkpoint_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.md", "not weights")
    np.savez(tmp_path / "unrelated.npz", images=np.zeros(3))
    np.savez(tmp_path / "numeric_arr0.npz", np.zeros(126))
    cases = {
        "notes.txt": "neither an .npz checkpoint nor a torch file of tensors",
        "other.zip": "neither an .npz checkpoint nor a torch file of tensors",
        "unrelated.npz": "neither backbone.* arrays nor arr_0",
        "numeric_arr0.npz": "arr_0 .* is neither a Parameters record",
        "absent.npz": "no such checkpoint file",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as error:
            load_backbone_state(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_global_checkpoint(tmp_path / "absent.npz")
    np.savez(tmp_path / "published.npz", object_list(known_arrays(16)))
    with pytest.raises(CheckpointError, match="not a readable round checkpoint"):
        load_global_checkpoint(tmp_path / "published.npz")


def test_non_finite_arrays_are_refused_by_every_loader(tmp_path: Path) -> None:
    """Our round files, published lists, .pth files, a client's head and fine-tuning's last.pt."""
    state = our_state(16)
    state["backbone.layer2.0.bn1.running_var"][3] = np.nan
    ours = tmp_path / "round-1-weights.array.npz"
    save_global_checkpoint(ours, state)
    listed = tmp_path / "round-540.npz"
    savez_like_the_original(listed, object_list(list(state.values())))
    pth = tmp_path / "model.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, pth)
    expected = "layer2.0.bn1.running_var holds non-finite values (NaN or inf); the model diverged"
    for load, path in ((load_global_checkpoint, ours), (load_backbone_state, listed),
                       (load_backbone_state, pth)):  # fmt: skip
        with pytest.raises(CheckpointError, match=re.escape(expected)) as refused:
            load(path)
        assert str(refused.value).startswith(str(path)) and "\n" not in str(refused.value)
    from fedvssl.finetune import DownstreamError, resume_point
    from fedvssl.local_training import load_own_head

    torch.save({"head.fc1.bias": torch.tensor([1.0, np.inf])}, tmp_path / "head-round-2.pt")
    with pytest.raises(CheckpointError, match=r"head-round-2\.pt: head\.fc1\.bias holds non-fin"):
        load_own_head(tmp_path, 3)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [5])
    weights = {"weight": torch.full((1, 2), np.nan), "bias": torch.zeros(1)}
    torch.save({"model": weights, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": 1}, tmp_path / "last.pt")  # fmt: skip
    with pytest.raises(DownstreamError, match=r"last\.pt: weight holds non-finite values"):
        resume_point(tmp_path, True, cast(Any, model), optimizer, scheduler)
