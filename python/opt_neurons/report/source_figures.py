"""The per-source figure (METHOD.md "Sources"): dead neurons per layer on each named source of the data."""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ..analysis import Analysis
from .figures import _int_xticks
from .format import _figure

COLUMN = "dead_fraction_by_source"


def fig_dead_by_source(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    l = a.layers
    if COLUMN not in l.columns or l.height == 0:
        return None, ("The data names fewer than two sources (the bundled corpus's parts, a folder's files or a "
                      "dataset's source_column name them): no per-source statistics.")  # fmt: skip
    x = l["layer"].to_numpy()
    by = l[COLUMN].struct.unnest()
    tokens = a.metadata.get("source_tokens") or {}
    fig = _figure(10, 3.8)
    ax = fig.subplots()
    markers = "osD^v<>ph*"
    for i, name in enumerate(by.columns):
        n = tokens.get(name)
        label = f"{name} ({n:,} tokens)" if n is not None else name
        ax.plot(x, 100 * by[name].to_numpy(), marker=markers[i % len(markers)], ms=4, lw=1.2, label=label)
    ax.plot(x, 100 * l["dead_fraction"].to_numpy(), "k--", lw=1.2, label="all data")
    top = float(np.nanmax(100 * by.to_numpy().astype(float))) if by.width else 0.0
    ax.set_ylim(0, max(5.0, top * 1.15))
    ax.set(xlabel="layer", ylabel="dead neurons (% of layer)", title=f"{title}\nDead neurons on each source")
    ax.grid(alpha=0.3, axis="y")
    _int_xticks(ax, x)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig, None


def flat_layers(layers: pl.DataFrame) -> pl.DataFrame:
    """The layers table with the per-source dead fractions as columns of their own ("dead_fraction: NAME")."""
    if COLUMN not in layers.columns:
        return layers
    by = layers[COLUMN].struct.unnest()
    return layers.drop(COLUMN).hstack([by[c].alias(f"dead_fraction: {c}") for c in by.columns])
