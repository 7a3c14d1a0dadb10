"""``python -m fedvssl.main``: federated CtP pre-training with FedVSSL, configured by Hydra.

1. compose the config (``conf/base.yaml`` + groups + command-line overrides);
2. check the data (the built-in synthetic dataset is prepared on first use);
3. build the ServerApp and ClientApp and run them over Ray (:mod:`fedvssl.simulation`);
4. leave checkpoints, client logs, ``metrics.json`` and ``metrics.png`` in the run folder.

``pre_train=false pretrained_model_path=PATH`` routes to retrieval + fine-tuning instead (the
original's ``--pre_train=False``). Bad input ends the run with one ``error:`` line and exit code 2.

The torch and Flower modules are imported when a run needs them, not with this module: the
worker processes that prepare the synthetic dataset import it afresh, and should not wait for them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedvssl import settings

logger = logging.getLogger("fedvssl")


def pretrain(cfg: dict[str, Any], run_dir: str) -> float | None:
    """Run the federated pre-training; returns the last round's mean client loss."""
    settings.check_config(cfg)  # bad input and missing data end here, in seconds: no torch yet
    settings.ensure_dataset(cfg["dataset"], cfg["data_dir"], int(cfg["pool_size"]))
    from fedvssl.client_app import make_client_app
    from fedvssl.server_app import make_server_app, resumable_state
    from fedvssl.simulation import simulate

    run = settings.pretraining(cfg, run_dir)
    server = run.server
    resumable_state(server)  # a run folder that does not fit: one line, before Ray starts
    evaluate_fn = settings.round_evaluator(run)
    sink: dict[str, Any] = {}
    resources = cfg["client_resources"]
    settings.announce(run, cfg)
    simulate(
        make_server_app(server, evaluate_fn=evaluate_fn, history_config=cfg, sink=sink),
        make_client_app(run.clients),
        num_clients=server.pool_size,
        num_cpus=float(resources["num_cpus"]),
        num_gpus=float(resources["num_gpus"]),
        ray_init_args=cfg.get("ray_init_args"),
    )
    history = sink.get("history")
    if history is None:
        raise settings.RunStateError("the server ended without a history; see the log above")
    logger.info("done: %s", history.summary())
    logger.info("checkpoints and client logs: %s; metrics: %s", server.results_dir, history.path)
    last = history.rounds[-1].train_loss if history.rounds else None
    return last


def fail(err: BaseException) -> NoReturn:
    """End the run with one clear line."""
    logger.error("error: %s", err)
    sys.exit(2)


@hydra.main(config_path="../conf", config_name="base", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Run the Hydra entry point."""
    plain = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if not cfg.pre_train:
            from fedvssl.finetune import run_downstream

            run_downstream(plain, run_dir, pretrained=cfg.pretrained_model_path)
            return None
        return pretrain(plain, run_dir)
    except settings.user_errors() as err:
        fail(err)


if __name__ == "__main__":
    main()
