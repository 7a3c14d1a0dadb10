"""Picture of a partition: videos per client and the label distribution across clients.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change), so it
works on machines without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedvssl.data.partitions import label_counts


def plot_label_distribution(
    clients: Sequence[Sequence[Mapping[str, Any]]], path: Path, title: str = ""
) -> Path:
    """Save a two-panel PNG: videos per client (bars) and counts per client and label (heat map).

    Parameters
    ----------
    clients : Sequence[Sequence[Mapping[str, Any]]]
        One list of ``{"name", "label"}`` records per client.
    path : Path
        Destination image (PNG).
    title : str
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    labels, counts = label_counts(clients)  # counts: [clients, labels]
    figure = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(figure)
    sizes, heat = figure.subplots(2, 1, height_ratios=[1, 3])
    client_ids = range(1, len(clients) + 1)
    sizes.bar(client_ids, counts.sum(axis=1), width=0.9)
    sizes.set_ylabel("videos")
    sizes.set_xlim(0.5, len(clients) + 0.5)
    image = heat.imshow(
        counts.T,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        origin="lower",
        extent=(0.5, len(clients) + 0.5, -0.5, len(labels) - 0.5),
    )
    heat.set_xlabel("client")
    heat.set_ylabel(f"class ({len(labels)} labels present, in label order)")
    figure.colorbar(image, ax=heat, label="videos")
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
