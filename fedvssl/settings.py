"""A pre-training run's typed settings, made once from the composed config.

The config (Hydra's, or a Flower run config composed onto it by :mod:`fedvssl.run_config`)
is a plain dict. Everything downstream takes the small frozen settings defined or built here:
the server's (:class:`ServerSettings`), the clients' (:class:`ClientSettings`) and the
per-round retrieval's (``RoundEvaluation``). Both routes, ``python -m fedvssl.main`` and
``flwr run``, call :func:`pretraining`, so they run the same settings.

This is the package's lowest module: it imports no other module of the pre-training (and no
torch), so the server, the clients and both entry points can all import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedvssl.data.errors import DataError
from fedvssl.guard import config_values as values
from fedvssl.strategy_config import StrategySettings, resolve_strategy

if TYPE_CHECKING:
    from CtP.pretext import Pretext
    from fedvssl.evaluation import RoundEvaluation

logger = logging.getLogger("fedvssl")

AUGMENT_CHOICES = ("auto", "cpu", "device")  # where CtP clips are decoded and augmented


# The server's per-round evaluation of the global model: (round, arrays by key) -> metrics.
EvaluateFn = Callable[[int, dict[str, np.ndarray]], dict[str, float]]


@dataclass(frozen=True)
class ServerSettings:
    """The server's part of the run config."""

    run_dir: str
    rounds: int
    pool_size: int
    clients_per_round: int
    min_fit_clients: int
    seed: int
    width: int
    clip_len: int
    pretext: Pretext  # the pretext task (conf/pretext/, conf/ctp/): builds the initial model
    resume: bool
    evaluate_every: int
    round_timeout: float
    strategy: StrategySettings
    stop_after_failed_rounds: int = 1  # rounds in a row that aggregate nothing before the run stops

    @property
    def results_dir(self) -> Path:
        """``<run dir>/fedvssl_results``, where the original wrote its checkpoints."""
        return Path(self.run_dir) / "fedvssl_results"


def _ctp() -> Pretext:
    from CtP.recipe import CtPRecipe  # torch: only when a client is made without a pretext

    return CtPRecipe()


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs, from the run's config (plain values, picklable for Ray)."""

    results_dir: str  # <run dir>/fedvssl_results
    dataset_root: str
    frames: str  # "zip" or "video"
    zip_template: str
    video_template: str
    partition_template: str  # relative to dataset_root, with {client}
    width: int
    clip_len: int
    crop_size: int
    batch_size: int
    workers: int
    local_epochs: int
    lr: float
    momentum: float
    weight_decay: float
    grad_clip: float
    seed: int
    bf16: bool
    channels_last: bool
    log_interval: int
    progress: bool
    num_threads: int  # torch threads of a CPU client (its Ray num_cpus)
    pretext: Pretext = field(default_factory=_ctp)  # conf/pretext/ (and conf/ctp/ for CtP)
    annotations: str | None = None  # a node's own annotation list, instead of its partition file
    videos: str | None = None  # a node's own folder of video files, read in place (no lists)
    augment: str = "cpu"  # where CtP clips are decoded and augmented: auto, cpu or device
    compile: bool = False  # torch.compile the model

    def client_dir(self, partition_id: int) -> Path:
        """``client{N}``, N = partition id + 1, as the original numbers clients."""
        return Path(self.results_dir) / f"client{partition_id + 1}"

    def partition_file(self, partition_id: int) -> Path:
        """Return the annotation file of a client's videos (the node's own list, if it has one)."""
        if self.annotations:
            return Path(self.annotations)
        name = self.partition_template.format(client=partition_id + 1)
        return Path(self.dataset_root) / name


class RunStateError(RuntimeError):
    """The run folder does not fit the request (e.g. old checkpoints without ``resume``)."""


class RunFailedError(RuntimeError):
    """The run started and failed (rounds that aggregated nothing, a model that is not finite)."""


class DataNotReadyError(RuntimeError):
    """A dataset's folder, list, frames or client partition is missing or malformed."""


def ensure_dataset(dataset: dict[str, Any], data_dir: str, pool_size: int) -> None:
    """Check the dataset and its ``pool_size`` partitions; prepare the synthetic one if allowed.

    Raises
    ------
    DataNotReadyError
        Naming what is missing or malformed (a file and its record, a video without frames, a
        partition listing a video that is not a train video) and the command that prepares it.
    """
    from fedvssl.data.preparation import dataset_is_prepared, prepare_dataset
    from fedvssl.data.prepared import check_prepared

    root = Path(dataset["root"])
    name = dataset["name"]
    raw = " --raw DIR" if name in ("k400", "videos") else ""  # their videos are the user's
    command = (
        f"python dataset_preparation.py --dataset {name}{raw} --data-dir {data_dir} "
        f"--num-clients {pool_size}"
    )
    lists = [dataset[key] for key in ("train_annotations", "test_annotations") if dataset.get(key)]
    if dataset.get("auto_prepare") and not dataset_is_prepared(root, pool_size, lists):
        logger.info("preparing the %s dataset in %s (first use)", name, root)
        try:
            prepare_dataset(name, Path(data_dir), num_clients=pool_size)
        except OSError as err:
            raise DataNotReadyError(
                f"cannot prepare the {name} dataset in {root} ({err.strerror or err}): choose a "
                "writable data_dir"
            ) from None
    if not root.is_dir():
        raise DataNotReadyError(f"{root} is not a dataset folder: prepare it with `{command}`")
    template = dataset["partition_template"]
    try:
        check_prepared(
            root, lists,
            [template.format(client=n) for n in range(1, pool_size + 1)],
            zip_template=dataset["zip_template"] if dataset["frames"] == "zip" else None,
            num_classes=values.optional_integer(dataset, "num_classes", 1),
        )  # fmt: skip
    except DataError as err:
        raise DataNotReadyError(f"{err}: run `{command}`") from None


def server_settings(cfg: dict[str, Any], run_dir: str, pretext: Pretext) -> ServerSettings:
    """Read the server's settings from the composed config."""
    return ServerSettings(
        run_dir=run_dir,
        rounds=int(cfg["rounds"]),
        pool_size=int(cfg["pool_size"]),
        clients_per_round=int(cfg["clients_per_round"]),
        min_fit_clients=int(cfg["min_fit_clients"]),
        seed=int(cfg["seed"]),
        width=int(cfg["model"]["width"]),
        clip_len=int(cfg["clip_len"]),
        pretext=pretext,
        resume=bool(cfg["resume"]),
        evaluate_every=int(cfg["evaluate_every"]),
        round_timeout=float(cfg["round_timeout"]),
        strategy=resolve_strategy(cfg["strategy"]),
        stop_after_failed_rounds=int(cfg["stop_after_failed_rounds"]),
    )


def client_settings(cfg: dict[str, Any], run_dir: str, pretext: Pretext) -> ClientSettings:
    """Read the clients' settings from the composed config."""
    dataset, optimizer = cfg["dataset"], cfg["optimizer"]
    return ClientSettings(
        results_dir=str(Path(run_dir) / "fedvssl_results"),
        dataset_root=str(Path(dataset["root"]).resolve()),
        frames=dataset["frames"],
        zip_template=dataset["zip_template"],
        video_template=dataset["video_template"],
        partition_template=dataset["partition_template"],
        width=int(cfg["model"]["width"]),
        clip_len=int(cfg["clip_len"]),
        crop_size=int(cfg["crop_size"]),
        batch_size=int(cfg["batch_size"]),
        workers=int(cfg["workers"]),
        local_epochs=int(cfg["local_epochs"]),
        lr=float(optimizer["lr"]),
        momentum=float(optimizer["momentum"]),
        weight_decay=float(optimizer["weight_decay"]),
        grad_clip=float(optimizer["grad_clip"]),
        seed=int(cfg["seed"]),
        bf16=bool(cfg["bf16"]),
        channels_last=bool(cfg["channels_last"]),
        log_interval=int(cfg["log_interval"]),
        progress=bool(cfg["progress"]),
        num_threads=max(1, int(cfg["client_resources"]["num_cpus"])),
        pretext=pretext,
        augment=str(cfg.get("augment", "cpu")),
        compile=bool(cfg.get("compile", False)),
    )


def round_evaluation(cfg: dict[str, Any]) -> RoundEvaluation:
    """Read the server's per-round retrieval settings from the composed config."""
    from fedvssl.evaluation import DatasetFiles, RoundEvaluation

    evaluation = cfg["evaluation"]
    max_videos = evaluation.get("max_videos")
    return RoundEvaluation(
        dataset=DatasetFiles.from_config(cfg["dataset"]), data_dir=str(cfg["data_dir"]),
        clip_len=int(cfg["clip_len"]), stride=int(evaluation.get("frame_stride", 2)),
        crop_size=int(cfg["crop_size"]), num_clips=int(evaluation["num_clips"]),
        batch_size=int(evaluation["batch_size"]),
        max_videos=None if max_videos is None else int(max_videos),
        ks=tuple(int(k) for k in evaluation.get("ks", (1, 5))),
        workers=int(evaluation.get("workers", cfg["workers"])), bf16=bool(cfg["bf16"]),
        channels_last=bool(cfg["channels_last"]),
    )  # fmt: skip


# The bounds of the pre-training config's values: below them a run would hang, crash in every
# client, or train nothing (key: the least value).
_AT_LEAST = {
    "seed": 0, "pool_size": 1, "rounds": 1, "local_epochs": 1, "stop_after_failed_rounds": 1,
    "batch_size": 1, "clip_len": 8, "crop_size": 8, "workers": 0, "model.width": 1,
    "log_interval": 1, "evaluate_every": 0, "evaluation.num_clips": 1,
    "evaluation.batch_size": 1,
}  # fmt: skip
_ABOVE_ZERO = ("round_timeout", "optimizer.lr", "optimizer.grad_clip", "client_resources.num_cpus")
_NOT_NEGATIVE = ("optimizer.momentum", "optimizer.weight_decay", "client_resources.num_gpus")
_FLAGS = ("pre_train", "resume", "bf16", "channels_last", "compile", "progress")


def check_config(cfg: dict[str, Any]) -> None:
    """Refuse settings that would hang or make no sense, with one clear line naming the key."""
    for key, least in _AT_LEAST.items():
        values.integer(cfg, key, least)
    for key in _ABOVE_ZERO:
        values.number(cfg, key, above=0)
    for key in _NOT_NEGATIVE:
        values.number(cfg, key, at_least=0)
    for key in _FLAGS:
        values.flag(cfg, key)
    values.optional_integer(cfg, "evaluation.max_videos", 1)
    values.integers(cfg, "evaluation.ks", 1)
    pool, per_round = int(cfg["pool_size"]), values.integer(cfg, "clients_per_round")
    if not 1 <= per_round <= pool:
        raise ValueError(f"clients_per_round must be in [1, pool_size={pool}], got {per_round}")
    if not 1 <= values.integer(cfg, "min_fit_clients") <= per_round:
        raise ValueError(
            f"min_fit_clients must be in [1, clients_per_round={per_round}], "
            f"got {cfg['min_fit_clients']}"
        )
    if int(cfg["clip_len"]) % 8 or int(cfg["crop_size"]) % 8:
        raise ValueError("clip_len and crop_size must be multiples of 8 (the backbone strides)")
    resolve_strategy(cfg["strategy"])  # its aliases and ranges
    if int(cfg["evaluate_every"]) > 0 and not cfg["dataset"].get("test_annotations"):
        raise ValueError(
            f"the {cfg['dataset']['name']} dataset has no labelled test split to evaluate on: "
            "set evaluate_every=0 and evaluate with fedvssl.finetune on ucf101 or hmdb51"
        )
    check_augment(cfg.get("augment", "cpu"), cfg["pretext"]["name"])
    check_data_dir(str(cfg["data_dir"]))


def check_data_dir(data_dir: str) -> None:
    """Refuse a ``data_dir`` that is a file: prepared datasets are folders inside it."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise ValueError(f"data_dir={data_dir} is a file: point data_dir at a folder")


def check_augment(augment: str, pretext: str) -> None:
    """Refuse an unknown ``augment``, and ``augment=device`` for a pretext other than CtP."""
    if augment not in AUGMENT_CHOICES:
        raise ValueError(f"augment must be one of {list(AUGMENT_CHOICES)}, got {augment!r}")
    if augment == "device" and pretext != "ctp":
        raise ValueError(
            f"augment=device supports the ctp pretext only, not {pretext}: "
            "use augment=cpu or augment=auto"
        )


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message tells the user what to do; anything else is a bug (traceback kept).

    It imports no torch, so that bad input ends at once. The config and checkpoint errors
    (``StrategyConfigError``, ``CheckpointError``, ``RunConfigError``, ...) are ValueErrors.
    """
    return DataError, DataNotReadyError, RunStateError, ValueError, FileNotFoundError


@dataclass(frozen=True)
class Pretraining:
    """The settings of one federated pre-training run."""

    server: ServerSettings
    clients: ClientSettings
    evaluation: RoundEvaluation | None  # None: no retrieval during pre-training


def pretraining(cfg: dict[str, Any], run_dir: str) -> Pretraining:
    """Check the composed config and build the run's settings (one clear error when it is bad)."""
    from CtP.pretext import pretext_from_mapping

    check_config(cfg)
    pretext = pretext_from_mapping(cfg["pretext"], cfg["ctp"])
    server = server_settings(cfg, run_dir, pretext)
    evaluation = round_evaluation(cfg) if server.evaluate_every > 0 else None
    return Pretraining(server, client_settings(cfg, run_dir, pretext), evaluation)


def round_evaluator(run: Pretraining) -> EvaluateFn | None:
    """Build the server's per-round retrieval once (None when ``evaluate_every`` is 0)."""
    if run.evaluation is None:
        return None
    from fedvssl.evaluation import make_round_evaluator  # torch-heavy: only when asked for

    return make_round_evaluator(run.evaluation)


def announce(run: Pretraining, cfg: dict[str, Any]) -> None:
    """Log the run's one-line summary, before any round."""
    server = run.server
    logger.info(
        "FedVSSL (%s pretext, %s, alpha %.2f, beta %.2f): %d clients, %d rounds, %s data in %s",
        server.pretext.name, server.strategy.name, server.strategy.alpha, server.strategy.beta,
        server.pool_size, server.rounds, cfg["dataset"]["name"], cfg["dataset"]["root"],
    )  # fmt: skip
