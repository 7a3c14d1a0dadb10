"""The ``strategy`` config group resolved into checked settings, aliases included (no Flower).

``strategy.mix_coeff`` (= alpha, paper meaning), ``strategy.swbeta`` (= beta) and
``strategy.fedavg=true`` are the original's names; an alias that is set wins over the canonical
key. :mod:`fedvssl.strategy` re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedvssl.aggregation import check_alpha, check_beta


@dataclass(frozen=True)
class StrategySettings:
    """The resolved `strategy` config group.

    Parameters
    ----------
    name : str
        "fedvssl" or "fedavg".
    alpha : float
        Share of the loss-based average in the mix (paper meaning: 0 is FedAvg).
    beta : float
        Weight of the previous global model in the blend (0 turns it off).
    partial_update : bool
        True: clients take only ``backbone.*`` from the global model and keep their own CtP
        head (FedVSSL); False: clients take the whole model (plain FedAvg).
    """

    name: str
    alpha: float
    beta: float
    partial_update: bool


class StrategyConfigError(ValueError):
    """A `strategy` config group that cannot run; the message says which key to change."""


def resolve_strategy(cfg: Mapping[str, Any]) -> StrategySettings:
    """Resolve the `strategy` config group, aliases included, into checked settings.

    Parameters
    ----------
    cfg : Mapping[str, Any]
        The plain-dict group: ``name``, ``alpha``, ``beta`` and the seed-compatible aliases
        ``mix_coeff`` (= alpha), ``swbeta`` (= beta) and ``fedavg`` (true = plain FedAvg).
        An alias that is not None wins over the canonical key.

    Returns
    -------
    StrategySettings
        The settings; ``name == "fedavg"`` or ``fedavg=true`` gives alpha 0, beta 0 and whole-model
        updates.
    """
    name = cfg.get("name", "fedvssl")
    if name not in ("fedvssl", "fedavg"):
        raise StrategyConfigError(f"strategy.name must be 'fedvssl' or 'fedavg', got {name!r}")
    fedavg = cfg.get("fedavg") or False
    if not isinstance(fedavg, bool):
        raise StrategyConfigError(f"strategy.fedavg must be true or false, got {fedavg!r}")
    if fedavg or name == "fedavg":
        return StrategySettings(name="fedavg", alpha=0.0, beta=0.0, partial_update=False)
    alpha_key = "mix_coeff" if cfg.get("mix_coeff") is not None else "alpha"
    beta_key = "swbeta" if cfg.get("swbeta") is not None else "beta"
    alpha, beta = cfg.get(alpha_key, 0.9), cfg.get(beta_key, 1.0)
    check_alpha(alpha, f"strategy.{alpha_key}", StrategyConfigError)
    check_beta(beta, f"strategy.{beta_key}", StrategyConfigError)
    return StrategySettings(
        name="fedvssl", alpha=float(alpha), beta=float(beta), partial_update=True
    )
