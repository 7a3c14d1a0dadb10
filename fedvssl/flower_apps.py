"""The ServerApp and ClientApp that ``flwr run`` loads (pyproject.toml [tool.flwr.app.components]).

They are the apps of ``python -m fedvssl.main`` (:mod:`fedvssl.server_app`,
:mod:`fedvssl.client_app`), with their settings composed from Flower's run config and each
node's node config (:mod:`fedvssl.run_config`) in the app's own process, instead of being made
once by the Hydra entry point. Nothing in the package imports this module, so the apps and the
settings never import the ``flwr run`` glue.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedvssl.client_app import partition_reply, train_reply
from fedvssl.guard.run_folder import RunFolder
from fedvssl.run_config import node_client_settings, run_dir_of, server_run
from fedvssl.server_app import serve
from fedvssl.settings import RunFailedError, user_errors

logger = logging.getLogger("fedvssl.server_app")

serverapp = ServerApp()
clientapp = ClientApp()


@serverapp.main()
def serve_run(grid: Grid, context: Context) -> None:
    """Compose the config from ``context.run_config`` and serve the run it describes."""
    try:
        with RunFolder(run_dir_of(context)) as folder:
            settings, start, evaluate_fn = server_run(context, folder)
            history = serve(grid, settings, start, evaluate_fn)
    except user_errors() as err:  # one clear line; Flower then marks the run failed
        logger.error("error: %s", err)
        raise
    if history.stopped:  # Flower marks the run failed
        logger.error("error: %s", history.stopped)
        raise RunFailedError(history.stopped)


@clientapp.train()
def train(msg: Message, context: Context) -> Message:
    """Train with the settings of this run on this node."""
    return train_reply(node_client_settings, msg, context)


clientapp.query()(partition_reply)
