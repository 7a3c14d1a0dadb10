"""``python -m fedvssl.main``: federated CtP pre-training with FedVSSL, configured by Hydra.

1. compose the config (``conf/base.yaml`` + groups + command-line overrides);
2. check the data (the built-in synthetic dataset is prepared on first use);
3. build the ServerApp and ClientApp and run them over Ray (:mod:`fedvssl.simulation`);
4. leave checkpoints, client logs, ``metrics.json`` and ``metrics.png`` in the run folder.

``pre_train=false pretrained_model_path=PATH`` routes to retrieval + fine-tuning instead (the
original's ``--pre_train=False``). Bad input ends the run with one ``error:`` line and exit code
2, before anything in the run folder changes (:mod:`fedvssl.guard.run_folder`); a run that starts
and then fails (its rounds aggregate nothing, its model is not finite) ends with one and exit
code 1.

The torch and Flower modules are imported when a run needs them, not with this module: the
worker processes that prepare the synthetic dataset import it afresh, and should not wait for them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedvssl import settings
from fedvssl.guard import config_values as values
from fedvssl.guard.command_line import check_command_line
from fedvssl.guard.run_folder import RunFolder, hydra_record

logger = logging.getLogger("fedvssl")


def pretrain(cfg: dict[str, Any], run_dir: str, accept: Callable[[], None]) -> float | None:
    """Run the federated pre-training; returns the last round's mean client loss.

    Every check that can refuse the run comes before ``accept()`` (which makes it the owner of
    its folder's record); a run that then fails raises :class:`settings.RunFailedError`.
    """
    settings.check_config(cfg)  # bad input and missing data end here, in seconds: no torch yet
    settings.ensure_dataset(cfg["dataset"], cfg["data_dir"], int(cfg["pool_size"]))
    from fedvssl.client_app import make_client_app
    from fedvssl.guard.fingerprint import pretraining_fingerprint, write_fingerprint
    from fedvssl.server_app import make_server_app, start_point
    from fedvssl.simulation import check_ray_init_args, simulate

    run = settings.pretraining(cfg, run_dir)
    server = run.server
    start = start_point(server, cfg)  # a run folder that does not fit: one line, before Ray
    evaluate_fn = settings.round_evaluator(run)
    check_ray_init_args(cfg.get("ray_init_args"))  # a cluster out of reach
    accept()
    write_fingerprint(Path(run_dir), pretraining_fingerprint(cfg))
    sink: dict[str, Any] = {}
    resources = cfg["client_resources"]
    settings.announce(run, cfg)
    simulate(
        make_server_app(server, start, evaluate_fn=evaluate_fn, sink=sink),
        make_client_app(run.clients),
        num_clients=server.pool_size,
        num_cpus=float(resources["num_cpus"]),
        num_gpus=float(resources["num_gpus"]),
        ray_init_args=cfg.get("ray_init_args"),
    )
    history = sink.get("history")
    if history is None:
        raise settings.RunFailedError("the server ended without a history; see the log above")
    if history.stopped:
        raise settings.RunFailedError(
            f"{history.stopped}. Rounds without a checkpoint are redone by resume=true; "
            f"metrics: {history.path}"
        )
    logger.info("done: %s", history.summary())
    logger.info("checkpoints and client logs: %s; metrics: %s", server.results_dir, history.path)
    last = history.rounds[-1].train_loss if history.rounds else None
    return last


def fail(err: BaseException, status: int = 2) -> NoReturn:
    """End the run with one clear line (status 2: bad input; 1: the run failed)."""
    logger.error("error: %s", err)
    sys.exit(status)


@hydra.main(config_path="../conf", config_name="base", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Run the Hydra entry point."""
    plain = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        with RunFolder(run_dir) as folder:
            record = hydra_record(cfg)
            if not values.flag(plain, "pre_train"):
                from fedvssl.finetune import run_downstream

                pretrained = plain["pretrained_model_path"]
                run_downstream(plain, run_dir, pretrained, lambda: folder.accept(record))
                return None
            return pretrain(plain, run_dir, lambda: folder.accept(record))
    except settings.user_errors() as err:
        fail(err)
    except settings.RunFailedError as err:
        fail(err, status=1)


if __name__ == "__main__":
    check_command_line("base")
    main()
