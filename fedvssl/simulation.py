"""The one place that starts a Flower simulation over Ray.

``flwr.simulation.run_simulation`` is deprecated in favour of ``flwr run`` but is what a Python
entry point (Hydra, sweeps, tests) can call; keeping the call here makes a future change a
one-file change. Ray is started and stopped by every call, so Hydra multiruns restart it cleanly.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import socket
from typing import Any, cast

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

# Flower must not phone home or install packages for a local simulation.
_QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


# Warnings Flower gives for choices made here on purpose: run_simulation's deprecation (see the
# module docstring), no federated evaluation (the original's was a dummy, reference §5.3), and
# Ray ending the client actors at the end of a run.
_EXPECTED_WARNINGS = (
    "DEPRECATED FEATURE",
    "fraction_evaluate is set to 0.0",
    "Manually terminating ClientAppActor",
)


def _unexpected(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _EXPECTED_WARNINGS)


def quiet_flower_logging() -> None:
    """Let Flower's warnings through the root logger once, without INFO chatter."""
    flwr_logger = logging.getLogger("flwr")
    for handler in list(flwr_logger.handlers):
        flwr_logger.removeHandler(handler)
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.propagate = True
    if _unexpected not in flwr_logger.filters:
        flwr_logger.addFilter(_unexpected)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # imported by Flower; INFO at import


class RayClusterError(ValueError):
    """``ray_init_args`` that ``ray.init`` would refuse, or a Ray cluster they cannot join."""


# ray.init refuses these when it joins a running cluster: the cluster's own resources count.
_CLUSTER_OWNED = ("num_cpus", "num_gpus", "resources", "object_store_memory")


def check_ray_cluster(init_args: dict[str, Any]) -> None:
    """Join the cluster at ``init_args["address"]`` once and leave, or fail with one line.

    ``run_simulation`` does not return when ``ray.init`` fails (its ServerApp thread waits for
    clients that never come), so a cluster that cannot be joined is caught here, before it.
    """
    address = init_args["address"]
    refused = [key for key in _CLUSTER_OWNED if key in init_args]
    if refused:
        raise RayClusterError(
            f"ray_init_args.{refused[0]} cannot be set when joining the Ray cluster at {address}: "
            "the cluster's own resources count (set them with `ray start`)"
        )
    import ray

    try:
        _check_reachable(str(address))
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as err:
        reason = " ".join(str(err).split())
        raise RayClusterError(
            f"cannot join the Ray cluster at ray_init_args.address={address} ({reason}): start "
            "one with `ray start --head` or drop ray_init_args.address to start Ray here"
        ) from None
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail within seconds when nothing listens at ``host:port`` (Ray retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host, int(port)), timeout=10).close()


def given_init_args(ray_init_args: dict[str, Any] | None) -> dict[str, Any]:
    """Return the ``ray_init_args`` that are set (null values left out)."""
    return {k: v for k, v in (ray_init_args or {}).items() if v is not None}


def ray_init_keys() -> set[str]:
    """Return the keyword arguments ``ray.init`` takes.

    They are its parameters and the private ``_options`` it reads from ``**kwargs``; any other
    key makes it raise, and ``run_simulation`` then hangs.
    """
    import ray

    source = inspect.getsource(ray.init)
    private = re.findall(r"kwargs\.pop\(\s*[\"'](_\w+)[\"']", source)
    return (set(inspect.signature(ray.init).parameters) - {"kwargs"}) | set(private)


def check_ray_init_args(ray_init_args: dict[str, Any] | None) -> None:
    """Fail with one line, before a run starts, when ``ray_init_args`` will not start Ray.

    That is a key ``ray.init`` does not take, or a cluster address with nothing there.
    """
    given = given_init_args(ray_init_args)
    known = ray_init_keys() if given else set()
    unknown = sorted(set(given) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean ray_init_args.{close[0]}?)" if close else ""
        raise RayClusterError(
            f"ray_init_args.{unknown[0]} is not an argument of ray.init{hint}: drop it, or use "
            "one that ray.init documents"
        )
    if "address" in given:
        check_ray_cluster(given)


def simulate(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_clients: int,
    num_cpus: float,
    num_gpus: float,
    ray_init_args: dict[str, Any] | None = None,
) -> None:
    """Run ``server_app`` against ``num_clients`` virtual clients of ``client_app`` on Ray.

    Parameters
    ----------
    server_app, client_app
        The apps; what they capture must be picklable (clients run in Ray actors).
    num_clients
        Virtual SuperNodes, one per data partition.
    num_cpus, num_gpus
        Ray resources of one client; a fraction of a GPU lets clients share it.
    ray_init_args
        Extra arguments of ``ray.init``; with an ``address``, the clients run on that Ray cluster
        (check it first with :func:`check_ray_init_args`: a cluster that cannot be joined would
        leave ``run_simulation`` waiting).
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    quiet_flower_logging()
    from flwr.simulation import run_simulation  # imports Ray: only when a simulation runs

    quiet_flower_logging()
    init_args = {"logging_level": "ERROR", "log_to_driver": True} | given_init_args(ray_init_args)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_name="ray",
        backend_config=cast(
            Any,
            {
                "client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
                "init_args": init_args,
            },
        ),
    )
    quiet_flower_logging()  # run_simulation re-installs Flower's console handler
