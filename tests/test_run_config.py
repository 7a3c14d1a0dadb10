"""Flower's run config and node config onto the Hydra config (fedvssl.run_config), without Ray."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedvssl.run_config import (
    ConfigValue,
    RunConfigError,
    compose_config,
    hydra_overrides,
    node_client_settings,
    run_dir_of,
)
from fedvssl.settings import pretraining

ROOT = Path(__file__).resolve().parents[1]


def app_config() -> dict[str, ConfigValue]:
    """The [tool.flwr.app.config] of pyproject.toml, flattened with dots as Flower does."""
    from flwr.common.config import flatten_dict

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(flatten_dict(project["tool"]["flwr"]["app"]["config"]))


def context(
    run_config: dict[str, ConfigValue], node_config: dict[str, ConfigValue] | None = None
) -> Context:
    return Context(
        run_id=42, node_id=7, node_config=dict(node_config or {"partition-id": 0}),
        state=RecordDict(), run_config=run_config,
    )  # fmt: skip


def test_the_default_run_config_composes_to_the_hydra_default() -> None:
    assert all(value == "" for value in app_config().values())  # every number stays in conf/
    assert hydra_overrides(app_config()) == []
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    with initialize(config_path="../conf", version_base="1.3"):
        hydra_default = OmegaConf.to_container(compose("base"), resolve=True)
    assert compose_config(app_config()) == hydra_default


def test_keys_are_overrides_of_values_and_groups() -> None:
    run_config = app_config() | {
        "rounds": 3, "strategy.alpha": 0.5, "strategy.fedavg": False, "pretext": "vcop",
        "data_dir": "/data/my videos", "overrides": "local_epochs=2 model.width=8",
    }  # fmt: skip
    assert hydra_overrides(run_config) == [
        "pretext=vcop", "data_dir='/data/my videos'", "rounds=3", "strategy.alpha=0.5",
        "strategy.fedavg=false", "local_epochs=2", "model.width=8",
    ]  # fmt: skip
    cfg = compose_config(run_config)
    assert cfg["rounds"] == 3 and cfg["strategy"]["alpha"] == 0.5
    assert cfg["pretext"]["name"] == "vcop" and cfg["optimizer"]["lr"] == 0.001  # the group's lr
    assert cfg["local_epochs"] == 2 and cfg["model"]["width"] == 8
    assert cfg["dataset"]["root"] == "/data/my videos/synthetic"  # interpolations follow
    cfg["rounds"] = 99  # a fresh dict every call: the cache is not shared
    assert compose_config(run_config)["rounds"] == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [({"pretext": "jigsaw"}, "pretext"), ({"overrides": "no_such_key=1"}, "no_such_key")],
)
def test_a_config_that_does_not_compose_is_one_clear_line(
    change: dict[str, ConfigValue], message: str
) -> None:
    with pytest.raises(RunConfigError) as caught:
        compose_config(app_config() | change)
    text = str(caught.value)
    assert "\n" not in text and message in text and "[tool.flwr.app.config]" in text
    assert "search path" not in text


def test_run_dir_is_the_given_folder_or_one_per_run(tmp_path: Path) -> None:
    assert run_dir_of(context({"run-dir": str(tmp_path / "run")})) == str(tmp_path / "run")
    default = Path(run_dir_of(context({"run-dir": ""})))
    assert default.is_absolute() and default.parts[-3:] == ("outputs", "flwr", "run-42")


def test_a_node_reads_its_own_data_annotations_and_results_folder(tmp_path: Path) -> None:
    run_config = app_config() | {"experiment": "smoke", "run-dir": str(tmp_path / "run")}
    shared = node_client_settings(context(run_config))
    assert shared.results_dir == str(tmp_path / "run" / "fedvssl_results")
    assert shared.partition_file(1).name == "client_dist2.json"
    assert shared.width == 16 and shared.crop_size == 32  # the experiment's values

    node: dict[str, ConfigValue] = {
        "partition-id": 1, "data-dir": str(tmp_path / "node_data"),
        "annotations": str(tmp_path / "mine.json"), "results-dir": str(tmp_path / "node_out"),
    }  # fmt: skip
    own = node_client_settings(context(run_config, node))
    assert own.dataset_root == str(tmp_path / "node_data" / "synthetic")
    assert own.partition_file(1) == tmp_path / "mine.json"
    assert own.client_dir(1) == tmp_path / "node_out" / "client2"


def test_both_routes_build_the_same_settings(tmp_path: Path) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    overrides = ["experiment=smoke", "strategy.alpha=0.5", f"data_dir={tmp_path}"]
    with initialize(config_path="../conf", version_base="1.3"):
        hydra_cfg = OmegaConf.to_container(compose("base", overrides=overrides), resolve=True)
    run_config = app_config() | {"overrides": " ".join(overrides)}
    flwr_cfg = compose_config(run_config)
    assert flwr_cfg == hydra_cfg
    via_hydra = pretraining(hydra_cfg, str(tmp_path))  # type: ignore[arg-type]
    via_flwr = pretraining(flwr_cfg, str(tmp_path))
    assert via_flwr.server == via_hydra.server and via_flwr.clients == via_hydra.clients
