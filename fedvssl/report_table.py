"""The report's table: rows of per-seed cell results, summarised into Markdown, JSON and a plot.

One row per setting. Columns: the pretext (when the report pre-trains with more than CtP), the
pre-training's last-round loss over the trivial loss (rows pre-trained here), then per downstream
dataset R@1, R@5, fine-tuned top-1 and top-5 (mean ± std over seeds), and the row's wall time (its
cells' seconds, summed). For published checkpoints on UCF-101 and HMDB-51 the numbers the original
reports for that checkpoint (or, for a setting pre-trained here, for the published checkpoint of
the same alpha and beta) stand beside ours, with the difference. A failed cell shows as
``failed`` and its reason is listed under the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvssl.data.atomic import atomic_path, write_bytes_atomic
from fedvssl.published import Published

METRICS = ("R@1", "R@5", "top1", "top5")
# What the original reports, per downstream dataset: our metric -> the manifest's field.
REPORTED = {"ucf101": {"R@1": "ucf101_r1", "top1": "ucf101_top1"}, "hmdb51": {"R@1": "hmdb51_r1"}}


@dataclass
class Row:
    """One setting's per-seed results (``pretraining`` and ``evaluation`` cells of each seed)."""

    label: str
    alpha: float | None
    beta: float | None
    published: Published | None
    seeds: list[dict[str, Any]]
    pretext: str | None = None  # the pre-training's pretext (None: not pre-trained here)

    def values(self, dataset: str, metric: str) -> list[float]:
        """Return the metric's value for every seed whose cell finished."""
        cells = [s.get("evaluation", {}).get(dataset, {}) for s in self.seeds]
        return [float(c[metric]) for c in cells if metric in c]

    def ratios(self) -> list[float]:
        """Return the pre-trainings' last-round ratios to the trivial loss."""
        cells = [s.get("pretraining", {}) for s in self.seeds]
        return [float(c["ratio"]) for c in cells if c.get("ratio") is not None]

    def cells(self) -> list[tuple[str, dict[str, Any]]]:
        """Return every cell of the row, named."""
        out = []
        for s in self.seeds:
            if "pretraining" in s:
                out.append((f"pre-training, seed {s['seed']}", s["pretraining"]))
            for dataset, cell in s.get("evaluation", {}).items():
                out.append((f"{dataset}, seed {s['seed']}", cell))
        return out

    def seconds(self) -> float:
        """Return the wall time of the row's cells, summed."""
        return sum(float(cell.get("seconds", 0.0)) for _, cell in self.cells())

    def errors(self) -> list[str]:
        """``where: reason`` of every failed cell."""
        return [f"{name}: {cell['error']}" for name, cell in self.cells() if "error" in cell]


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Return the mean and population standard deviation, or None without values."""
    return (float(np.mean(values)), float(np.std(values))) if values else None


def _fmt(stats: tuple[float, float] | None, seeds: int, digits: int = 2) -> str:
    if stats is None:
        return "failed" if seeds else "-"
    mean, std = stats
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if seeds > 1 else "")


def summarise(row: Row, downstream: list[str]) -> dict[str, Any]:
    """Summarise a row: mean and std of every column, reported numbers and differences."""
    out: dict[str, Any] = {"ratio": mean_std(row.ratios()), "seconds": row.seconds()}
    for dataset in downstream:
        for metric in METRICS:
            stats = mean_std(row.values(dataset, metric))
            out[f"{dataset} {metric}"] = stats
            field = REPORTED.get(dataset, {}).get(metric)
            if row.published is not None and field is not None:
                reported = float(getattr(row.published, field))
                out[f"{dataset} {metric} reported"] = reported
                out[f"{dataset} {metric} difference"] = stats[0] - reported if stats else None
    return out


def markdown(rows: list[Row], downstream: list[str]) -> str:
    """Return the table in Markdown, failures listed under it."""
    metrics = {d: [m for m in METRICS if any(r.values(d, m) for r in rows)] or ["R@1"]
               for d in downstream}  # fmt: skip
    with_pretext = any(r.pretext not in (None, "ctp") for r in rows)
    header = ["setting", *(["pretext"] * with_pretext), "ratio to trivial"]
    header += [f"{d} {m}" for d in downstream for m in metrics[d]] + ["wall time"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for row in rows:
        pretrained = any("pretraining" in s for s in row.seeds)
        cells = [row.label, *([row.pretext or "-"] * with_pretext)]
        cells.append(_fmt(mean_std(row.ratios()), len(row.seeds) * pretrained))
        for d in downstream:
            for m in metrics[d]:
                text = _fmt(mean_std(row.values(d, m)), len(row.seeds))
                field = REPORTED.get(d, {}).get(m)
                if row.published is not None and field is not None and text != "failed":
                    reported = float(getattr(row.published, field))
                    text += f" (reported {reported:.2f}, {float(text.split()[0]) - reported:+.2f})"
                cells.append(text)
        cells.append(f"{row.seconds() / 60:.1f} min")
        lines.append("| " + " | ".join(cells) + " |")
    failures = [f"- {row.label}, {e}" for row in rows for e in row.errors()]
    if failures:
        lines += ["", "Failed cells:", *failures]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], downstream: list[str], path: Path) -> None:
    """Plot R@1 and top-1 of every row, per downstream dataset, with the std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(d, m) for d in downstream for m in ("R@1", "top1")
               if any(r.values(d, m) for r in rows)] or [(downstream[0], "R@1")]  # fmt: skip
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 + 2.5 * len(metrics), 4), squeeze=False)
    x = np.arange(len(rows))
    for ax, (dataset, metric) in zip(axes[0], metrics, strict=True):
        stats = [mean_std(r.values(dataset, metric)) or (np.nan, 0.0) for r in rows]
        ax.bar(x, [s[0] for s in stats], yerr=[s[1] for s in stats], color="tab:blue", alpha=0.8)
        ax.set_xticks(x, [r.label for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{dataset} {metric}")
        ax.set_ylabel("%")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_report(rows: list[Row], downstream: list[str], work: Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``report.png`` into ``work``; return the JSON."""
    data = {
        "downstream": downstream,
        "computed": sum(c.get("computed", False) for r in rows for _, c in r.cells()),
        "rows": [
            {"label": r.label, "pretext": r.pretext, "alpha": r.alpha, "beta": r.beta,
             "compared_with": r.published.name if r.published else None,
             "summary": summarise(r, downstream), "seeds": r.seeds, "errors": r.errors()}
            for r in rows
        ],
    }  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(json.dumps(data, indent=2).encode(), work / "report.json")
    write_bytes_atomic(markdown(rows, downstream).encode(), work / "report.md")
    plot(rows, downstream, work / "report.png")
    return data
