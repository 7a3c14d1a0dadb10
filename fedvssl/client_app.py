"""The FedVSSL ClientApp: a train message in, one local pretext epoch, arrays and metrics out.

Each round a sampled client (reference §6.1, minus its bugs):

1. takes ``backbone.*`` from the global model and keeps its own pretext head (every other entry)
   from its last round (partial weight update; with plain FedAvg it takes the whole model). The
   head is stored in ``<results>/client{N}/head-round-{r}.pt``, so it survives a restart;
2. trains ``local_epochs`` of its pretext (CtP, VCOP or Speed: :mod:`CtP.pretext`) on its
   partition ``client_dist{N}.json`` with a fresh SGD optimiser, writing
   ``<results>/client{N}/<timestamp>.log.json``;
3. replies with all arrays, ``num-examples``, its mean training loss (computed in-process), the
   mean loss of the pretext's trivial prediction on the same batches (``trivial-loss``: CtP's
   "nothing moves", ln of the number of classes for VCOP and Speed) and its ``partition-id``.

The model is built once per worker process and reused across rounds and clients (a SuperNode
starts a process per message). A client uses the GPU when it has one (``client_resources.num_gpus``
under Ray).

``make_client_app`` builds the app of ``python -m fedvssl.main`` from settings made once; the
app ``flwr run`` loads, :data:`fedvssl.flower_apps.clientapp`, makes them from the run config and
the node's node config (partition, data, results folder: :mod:`fedvssl.run_config`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedvssl.local_training import train_locally
from fedvssl.settings import ClientSettings
from fedvssl.simulation import quiet_flower_logging

logger = logging.getLogger(__name__)

CLIENT_ERROR = 100  # error code of a client whose local training raised


def partition_of(context: Context) -> int:
    """Read this node's partition id from its node config (``flower-supernode --node-config``)."""
    if "partition-id" not in context.node_config:
        raise ValueError(
            "this node has no partition-id: start it with "
            '--node-config "partition-id=N data-dir=/path/to/data"'
        )
    return int(context.node_config["partition-id"])


SettingsOf = Callable[[Context], ClientSettings]


def train_reply(settings_of: SettingsOf, msg: Message, context: Context) -> Message:
    """Train on this node's partition; reply with the arrays and metrics, or with the error."""
    quiet_flower_logging()  # in this worker process, as in the driver
    config = msg.content.config_records["config"]
    server_round = int(cast(int, config["server-round"]))
    who = f"node {context.node_id}"
    try:
        partition_id = partition_of(context)
        who = f"client {partition_id + 1}"
        global_state = msg.content.array_records["arrays"].to_torch_state_dict()
        arrays, metrics = train_locally(
            settings_of(context), partition_id, server_round, global_state,
            bool(config["partial-update"]),
        )  # fmt: skip
    except Exception as err:  # reported to the server, which aggregates the others
        reason = f"{who}: {type(err).__name__}: {err}"
        logger.error("round %d, %s", server_round, reason)
        return Message(Error(code=CLIENT_ERROR, reason=reason), reply_to=msg)
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def partition_reply(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, for reproducible sampling."""
    try:
        partition_id = partition_of(context)
    except ValueError as err:
        logger.error("%s", err)
        reason = f"node {context.node_id}: {err}"
        return Message(Error(code=CLIENT_ERROR, reason=reason), reply_to=msg)
    content = RecordDict({"metrics": MetricRecord({"partition-id": partition_id})})
    return Message(content=content, reply_to=msg)


def make_client_app(settings: ClientSettings) -> ClientApp:
    """Build the ClientApp of ``python -m fedvssl.main`` around a run's settings."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(lambda _: settings, msg, context)

    app.query()(partition_reply)
    return app
