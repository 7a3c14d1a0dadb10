"""Flower's run config onto the Hydra config: the settings of the apps that ``flwr run`` starts.

``flwr run`` hands every ServerApp and ClientApp the run config: ``[tool.flwr.app.config]`` of
pyproject.toml with ``--run-config`` overrides, flattened with dots. Each of its keys is a Hydra
override of ``conf/base.yaml``, so both routes run the same composed config:

- ``rounds = 3`` or ``strategy.alpha = 0.5`` sets a value; ``pretext = "vcop"`` picks a group's
  option; an empty string keeps conf/'s value (every number lives in conf/);
- ``overrides`` takes any further Hydra overrides, space-separated (``"local_epochs=2 seed=8"``);
- ``run-dir`` is the run folder (default ``outputs/flwr/run-<run id>`` in the app's working
  directory).

A SuperNode's node config (``flower-supernode --node-config``) says where its data is:
``partition-id`` (required), ``data-dir`` (its prepared datasets, as ``data_dir``), and optionally
``annotations`` (its own annotation list instead of the partition file), ``videos`` (its own
folder of video files, decoded in place with no preparation and nothing written there) and
``results-dir`` (where it keeps its logs and pretext heads; default: the run's).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flwr.app import Context

if TYPE_CHECKING:
    from fedvssl.guard.run_folder import RunFolder
    from fedvssl.server_app import StartPoint
    from fedvssl.settings import ClientSettings, EvaluateFn, ServerSettings

logger = logging.getLogger("fedvssl")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LOG = "server.log"  # the ServerApp's log in the run folder (python -m fedvssl.main writes main.log)
OWN_KEYS = ("run-dir", "overrides")  # keys of the run config that are not Hydra overrides
ConfigValue = bool | int | float | str


class RunConfigError(ValueError):
    """A run config or node config that does not compose; the message says which key to change."""


def override(key: str, value: ConfigValue) -> str:
    """Write one run-config entry as a Hydra override (``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    text = str(value)
    plain = text.replace("/", "").replace(".", "").replace("-", "").replace("_", "")
    return f"{key}={text}" if plain.isalnum() else f"{key}='{text}'"


def hydra_overrides(run_config: Mapping[str, ConfigValue]) -> list[str]:
    """Turn a run config into Hydra overrides: its keys first, then its ``overrides`` string."""
    pairs = [override(k, v) for k, v in run_config.items() if k not in OWN_KEYS and v != ""]
    return pairs + shlex.split(str(run_config.get("overrides", "")))


@functools.lru_cache(maxsize=8)
def _compose(overrides: tuple[str, ...]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedvssl.guard.command_line import CommandLineError, check_overrides

    try:
        check_overrides("base", list(overrides), multirun=False)  # unknown keys, with or without +
    except CommandLineError as err:
        raise RunConfigError(
            f"the run config does not compose ({err}): its keys are Hydra overrides of "
            "conf/base.yaml, see [tool.flwr.app.config] in pyproject.toml"
        ) from None
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="fedvssl"):
            cfg = compose(config_name="base", overrides=list(overrides))
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    except Exception as err:  # Hydra's own errors say which override is wrong
        message = " ".join(str(err).split()).split(" Config search path")[0]  # not where it looked
        raise RunConfigError(
            f"the run config does not compose ({message}): its keys are Hydra overrides of "
            "conf/base.yaml, see [tool.flwr.app.config] in pyproject.toml"
        ) from None


def compose_config(
    run_config: Mapping[str, ConfigValue], extra: Iterable[str] = ()
) -> dict[str, Any]:
    """Compose conf/ with the run config's overrides, then ``extra`` ones (a fresh dict)."""
    return copy.deepcopy(_compose((*hydra_overrides(run_config), *extra)))


def run_dir_of(context: Context) -> str:
    """Return the run folder: ``run-dir`` of the run config, or ``outputs/flwr/run-<run id>``."""
    chosen = str(context.run_config.get("run-dir", ""))
    path = Path(chosen) if chosen else Path("outputs") / "flwr" / f"run-{context.run_id}"
    return str(path.resolve())


def log_to(run_dir: str) -> None:
    """Send the run's log lines to the console and ``<run dir>/server.log`` (replacing earlier)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(Path(run_dir) / LOG),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
    for package in ("fedvssl", "CtP"):
        package_logger = logging.getLogger(package)
        for old in package_logger.handlers[:]:
            package_logger.removeHandler(old)
        for handler in handlers:
            package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
        package_logger.propagate = False


def server_run(
    context: Context, folder: RunFolder
) -> tuple[ServerSettings, StartPoint, EvaluateFn | None]:
    """Everything the ServerApp of ``flwr run`` needs: settings, start point, round evaluator.

    The run is checked (config, data, the folder's rounds and fingerprint) before it owns
    ``folder``; then its log goes to ``server.log`` there. The synthetic dataset is prepared here
    on first use, as ``python -m fedvssl.main`` does; a real dataset lives on the nodes, so the
    server does not look for it unless it evaluates.
    """
    from fedvssl.guard.fingerprint import pretraining_fingerprint, write_fingerprint
    from fedvssl.server_app import start_point
    from fedvssl.settings import announce, ensure_dataset, pretraining, round_evaluator

    cfg, run_dir = compose_config(context.run_config), run_dir_of(context)
    run = pretraining(cfg, run_dir)
    if cfg["dataset"].get("auto_prepare") or run.evaluation is not None:
        ensure_dataset(cfg["dataset"], cfg["data_dir"], run.server.pool_size)
    start = start_point(run.server, cfg)
    folder.accept()
    log_to(run_dir)
    write_fingerprint(Path(run_dir), pretraining_fingerprint(cfg))
    announce(run, cfg)
    return run.server, start, round_evaluator(run)


def node_client_settings(context: Context) -> ClientSettings:
    """Build the client settings of this run on this node (its data, annotations, results)."""
    from fedvssl.settings import pretraining

    node = context.node_config
    extra = [override("data_dir", node["data-dir"])] if "data-dir" in node else []
    cfg = compose_config(context.run_config, extra)
    settings = pretraining(cfg, run_dir_of(context)).clients  # the server's checks, on the node
    keys = ("annotations", "results-dir", "videos")
    paths = {k: str(Path(str(node[k])).resolve()) for k in keys if k in node}
    return dataclasses.replace(
        settings,
        annotations=paths.get("annotations", settings.annotations),
        results_dir=paths.get("results-dir", settings.results_dir),
        videos=paths.get("videos", settings.videos),
    )
