"""A pre-training run's typed settings, made once from the composed config.

The config (Hydra's, or a Flower run config composed onto it by :mod:`fedvssl.run_config`)
is a plain dict. Everything downstream takes the small frozen settings built here: the
server's (``ServerSettings``), the clients' (``ClientSettings``) and the per-round retrieval's
(``RoundEvaluation``). Both routes, ``python -m fedvssl.main`` and ``flwr run``, call
:func:`pretraining`, so they run the same settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvssl.strategy_config import resolve_strategy

if TYPE_CHECKING:
    from CtP.pretext import Pretext
    from fedvssl.client_data import ClientSettings
    from fedvssl.evaluation import RoundEvaluation
    from fedvssl.server_app import EvaluateFn, ServerSettings

logger = logging.getLogger("fedvssl")

AUGMENT_CHOICES = ("auto", "cpu", "device")  # where CtP clips are decoded and augmented


class RunStateError(RuntimeError):
    """The run folder does not fit the request (e.g. old checkpoints without ``resume``)."""


class DataNotReadyError(RuntimeError):
    """The dataset folder or a client partition is missing."""


def ensure_dataset(dataset: dict[str, Any], data_dir: str, pool_size: int) -> None:
    """Check the dataset and its ``pool_size`` partitions; prepare the synthetic one if allowed."""
    from fedvssl.data.preparation import dataset_is_prepared, prepare_dataset

    root = Path(dataset["root"])
    name = dataset["name"]
    command = (
        f"python dataset_preparation.py --dataset {name} --data-dir {data_dir} "
        f"--num-clients {pool_size}"
    )
    lists = [dataset[key] for key in ("train_annotations", "test_annotations") if dataset.get(key)]
    if dataset_is_prepared(root, pool_size, lists):
        return
    if dataset.get("auto_prepare"):
        logger.info("preparing the %s dataset in %s (first use)", name, root)
        prepare_dataset(name, Path(data_dir), num_clients=pool_size)
        return
    if not root.is_dir():
        raise DataNotReadyError(f"{root} does not exist: prepare it with `{command}`")
    raise DataNotReadyError(
        f"{root} has no annotations or partitions for {pool_size} clients: run `{command}`"
    )


def server_settings(cfg: dict[str, Any], run_dir: str, pretext: Pretext) -> ServerSettings:
    """Read the server's settings from the composed config."""
    from fedvssl.server_app import ServerSettings

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
    )


def client_settings(cfg: dict[str, Any], run_dir: str, pretext: Pretext) -> ClientSettings:
    """Read the clients' settings from the composed config."""
    from fedvssl.client_data import ClientSettings

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


def check_config(cfg: dict[str, Any]) -> None:
    """Refuse settings that would hang or make no sense, with one clear line."""
    pool, per_round = int(cfg["pool_size"]), int(cfg["clients_per_round"])
    if pool < 1 or not 1 <= per_round <= pool:
        raise ValueError(f"clients_per_round must be in [1, pool_size={pool}], got {per_round}")
    if not 1 <= int(cfg["min_fit_clients"]) <= per_round:
        raise ValueError(
            f"min_fit_clients must be in [1, clients_per_round={per_round}], "
            f"got {cfg['min_fit_clients']}"
        )
    if int(cfg["clip_len"]) % 8 or int(cfg["crop_size"]) % 8:
        raise ValueError("clip_len and crop_size must be multiples of 8 (the backbone strides)")
    for key in ("rounds", "local_epochs"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be at least 1, got {cfg[key]}")
    resolve_strategy(cfg["strategy"])  # its aliases and ranges
    if int(cfg["evaluate_every"]) > 0 and not cfg["dataset"].get("test_annotations"):
        raise ValueError(
            f"the {cfg['dataset']['name']} dataset has no labelled test split to evaluate on: "
            "set evaluate_every=0 and evaluate with fedvssl.finetune on ucf101 or hmdb51"
        )
    check_augment(cfg.get("augment", "cpu"), cfg["pretext"]["name"])


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
    from fedvssl.data.errors import DataError

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
