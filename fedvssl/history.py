"""The run's history: one record per round in ``metrics.json``, a summary and a plot.

A round record holds each client's loss, the loss of the trivial prediction on the same batches,
examples and aggregation weight, the failures, the round's wall time and any server-side
evaluation. The ratio of the two losses is what shows learning: 1 means the model predicts no
better than "nothing moves". The file is rewritten atomically after every
round, so a killed run keeps every complete round, and a resumed run drops what came after the
round it resumes from.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedvssl.data.atomic import atomic_path, write_bytes_atomic

logger = logging.getLogger(__name__)


class HistoryError(ValueError):
    """A ``metrics.json`` that cannot be read back; the message names it."""


@dataclass
class RoundRecord:
    """What happened in one round."""

    round: int
    seconds: float
    train_loss: float | None  # example-weighted mean of the clients' losses; None if none replied
    clients: list[dict[str, float | int]] = field(
        default_factory=list
    )  # id, loss, trivial_loss, examples, weight
    failures: list[str] = field(default_factory=list)
    aggregated: bool = True  # False: too few clients replied, the global model stayed
    evaluation: dict[str, float] = field(default_factory=dict)
    trivial_loss: float | None = None  # the same mean for the prediction "nothing moves"

    @property
    def ratio(self) -> float | None:
        """The mean loss over the mean trivial loss (1: nothing learned); None when unknown."""
        if self.train_loss is None or not self.trivial_loss:
            return None
        return self.train_loss / self.trivial_loss


class History:
    """The rounds of a run, persisted to ``path`` (JSON) after every change."""

    def __init__(self, path: Path, config: dict[str, Any] | None = None) -> None:
        self.path = path
        self.config = config or {}
        self.rounds: list[RoundRecord] = []
        self.initial_evaluation: dict[str, float] = {}
        self.stopped: str | None = None  # why the run stopped before its last round, if it did

    @classmethod
    def resume(cls, path: Path, config: dict[str, Any], last_round: int) -> History:
        """Load an earlier run's history, keeping rounds up to ``last_round``.

        Raises
        ------
        HistoryError
            If the file is there but cannot be read as a history (naming it).
        """
        history = cls(path, config)
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                history.initial_evaluation = dict(data.get("initial_evaluation") or {})
                rounds = [RoundRecord(**r) for r in data.get("rounds", [])]
            except (ValueError, TypeError, AttributeError) as err:
                raise HistoryError(
                    f"{path} cannot be read ({' '.join(str(err).split())}): restore it, or move "
                    "it aside to resume without the earlier rounds' records"
                ) from None
            history.rounds = [r for r in rounds if r.round <= last_round]
        return history

    def add(self, record: RoundRecord) -> None:
        """Append a round and rewrite the file."""
        self.rounds.append(record)
        self.save()

    def stop(self, reason: str) -> None:
        """Record that the run failed, and why; rewrite the file."""
        self.stopped = reason
        self.save()

    def save(self) -> None:
        """Write the history atomically."""
        data = {
            "config": self.config,
            "initial_evaluation": self.initial_evaluation,
            "rounds": [asdict(r) for r in self.rounds],
            "stopped": self.stopped,
        }
        write_bytes_atomic(json.dumps(data, indent=1).encode(), self.path)

    def summary(self) -> str:
        """Describe the whole run in a few lines."""
        done = [r for r in self.rounds if r.train_loss is not None]
        if not done:
            return "no round finished"
        first, last = done[0], done[-1]
        seconds = sum(r.seconds for r in self.rounds)
        trend = f"{first.train_loss:.4f} (round {first.round}) -> {last.train_loss:.4f}"
        if first.ratio is not None and last.ratio is not None:
            trend += f"; of trivial {first.ratio:.2f} -> {last.ratio:.2f}"
        lines = [f"{len(self.rounds)} rounds in {seconds:.1f} s; mean client loss {trend}"]
        failures = sum(len(r.failures) for r in self.rounds)
        if failures:
            lines.append(f"{failures} client failures (see {self.path.name})")
        evaluated = [r for r in self.rounds if r.evaluation]
        if evaluated:
            metrics = ", ".join(f"{k} {v:.2f}" for k, v in evaluated[-1].evaluation.items())
            lines.append(f"evaluation at round {evaluated[-1].round}: {metrics}")
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """Losses, aggregation weights (and evaluation) per round, as a PNG."""
        evaluated = [r for r in self.rounds if r.evaluation]
        panels = 4 if evaluated else 3
        fig = Figure(figsize=(6.5, 2.4 * panels), layout="constrained")
        axes = fig.subplots(panels, 1, sharex=True)
        _plot_losses(axes[0], self.rounds)
        _plot_ratios(axes[1], self.rounds)
        _plot_weights(axes[2], self.rounds)
        if evaluated:
            _plot_evaluation(axes[3], self.initial_evaluation, evaluated)
        axes[-1].set_xlabel("round")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")


def _per_client(
    rounds: list[RoundRecord], value: Callable[[dict[str, float | int]], float]
) -> dict[int, tuple[list[int], list[float]]]:
    """Each client's (rounds, values) series, in client order; non-finite values are left out."""
    series: dict[int, tuple[list[int], list[float]]] = {}
    for record in rounds:
        for client in record.clients:
            y = value(client)
            if math.isfinite(y):
                xs, ys = series.setdefault(int(client["id"]), ([], []))
                xs.append(record.round)
                ys.append(y)
    return dict(sorted(series.items()))


def _client_ratio(client: dict[str, float | int]) -> float:
    trivial = float(client.get("trivial_loss", math.nan))
    return float(client["loss"]) / trivial if trivial > 0 else math.nan


def _plot_losses(ax: Any, rounds: list[RoundRecord]) -> None:
    for cid, (xs, ys) in _per_client(rounds, lambda c: float(c["loss"])).items():
        ax.plot(xs, ys, lw=0.8, alpha=0.6, label=f"client {cid}")
    done = [r for r in rounds if r.train_loss is not None]
    ax.plot([r.round for r in done], [r.train_loss for r in done], "k-", lw=2, label="mean")
    ax.set_ylabel("CtP training loss")
    ax.legend(fontsize="x-small", ncols=3)


def _plot_ratios(ax: Any, rounds: list[RoundRecord]) -> None:
    for xs, ys in _per_client(rounds, _client_ratio).values():
        ax.plot(xs, ys, lw=0.8, alpha=0.6)
    done = [r for r in rounds if r.ratio is not None]
    ax.plot([r.round for r in done], [r.ratio for r in done], "k-", lw=2, label="mean")
    ax.axhline(1.0, color="grey", ls="--", lw=0.8, label='trivial: "nothing moves"')
    ax.set_ylabel("loss / trivial loss")
    ax.legend(fontsize="x-small")


def _plot_weights(ax: Any, rounds: list[RoundRecord]) -> None:
    for cid, (xs, ys) in _per_client(rounds, lambda c: float(c["weight"])).items():
        ax.plot(xs, ys, marker=".", lw=0.8, label=f"client {cid}")
    ax.set_ylabel("aggregation weight")


def _plot_evaluation(ax: Any, initial: dict[str, float], rounds: list[RoundRecord]) -> None:
    points = ([(0, initial)] if initial else []) + [(r.round, r.evaluation) for r in rounds]
    for key in rounds[-1].evaluation:
        ax.plot([x for x, e in points if key in e], [e[key] for _, e in points if key in e], "o-")
        ax.set_ylabel(key)
