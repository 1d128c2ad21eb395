"""The report's figures of positional neurons: kinds per layer, fr(p) curves, per-layer heatmaps, a card's curve."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ..analysis import Analysis
from ..tables import KINDS
from .figures import _int_xticks
from .format import KIND_COLORS, KIND_LABELS, _figure

MAX_CURVES = 16  # strongest positional neurons drawn in the curve grid
MAX_HEATMAP_LAYERS = 12
MAX_HEATMAP_ROWS = 160


def fig_positional_per_layer(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    l = a.layers
    if l.height == 0 or int(l["n_positional"].sum()) == 0:
        return None, "No positional neurons in this run (I(act; pos) > 0.05 nats)."
    x = l["layer"].to_numpy()
    cols = {"oscillatory": "n_oscillatory", "two_sided": "n_two_sided", "one_sided": "n_one_sided",
            "other": "n_other_positional"}  # fmt: skip
    fig = _figure(10, 3.6)
    ax = fig.subplots()
    bottom = np.zeros(len(x))
    for k in KINDS:
        v = l[cols[k]].to_numpy().astype(float)
        ax.bar(x, v, 0.8, bottom=bottom, color=KIND_COLORS[k], label=KIND_LABELS[k])
        bottom += v
    ax.set(xlabel="layer", ylabel="positional neurons", title=f"{title}\nPositional neurons per layer, by kind")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _int_xticks(ax, x)
    return fig, None


def _positional_rows(a: Analysis) -> pl.DataFrame:
    """Positional neurons with their fr(p) curve, MI, frequency and kind, strongest first."""
    p = a.positions
    if p.height == 0 or "fr" not in p.columns:
        return pl.DataFrame()
    info = a.neurons.select("layer", "neuron", "mi_position", "frequency", "positional_strong")
    cols = [c for c in ("layer", "neuron", "positional_kind", "fr") if c in p.columns]
    return p.select(cols).join(info, on=["layer", "neuron"], how="left").sort("mi_position", descending=True,
                                                                              nulls_last=True)  # fmt: skip


def _curve(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def fig_positional_curves(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    rows = _positional_rows(a)
    if rows.height == 0:
        return None, "No positional neurons, so no fr(p) curves."
    top = rows.head(MAX_CURVES)
    n = top.height
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(2.6 * ncols + 0.4, 1.9 * nrows + 0.9)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, r in zip(axes, top.iter_rows(named=True)):
        fr = _curve(r["fr"])
        kind = r.get("positional_kind") or "other"
        ax.plot(np.arange(len(fr)), fr, color=KIND_COLORS.get(kind, "k"), lw=1)
        if r.get("frequency") is not None:
            ax.axhline(r["frequency"], color="k", lw=0.6, ls=":")
        mi = r.get("mi_position")
        ax.set_title(f"L{r['layer']} N{r['neuron']}" + (f"  I={mi:.2f} nats" if mi is not None else ""), fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:n]):
        if i + ncols >= n:  # nothing drawn below it
            ax.set_xlabel("position p", fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
        if i % ncols == 0:
            ax.set_ylabel("fr(p)", fontsize=8)
    handles = [_patch(KIND_COLORS[k], KIND_LABELS[k]) for k in KINDS]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    shown = f"the {n} strongest" if rows.height > n else f"all {n}"
    fig.suptitle(f"{title}\nfr(p) of {shown} positional neurons (by I(act; pos)); dotted: overall frequency",
                 fontsize=9)  # fmt: skip
    return fig, None


def _patch(color: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _peak_order(curves: np.ndarray) -> np.ndarray:
    """Row order by the position where each (lightly smoothed) curve first reaches its maximum."""
    k = max(1, curves.shape[1] // 128)
    filled = np.nan_to_num(curves, nan=0.0)
    if k > 1:
        kernel = np.ones(2 * k + 1) / (2 * k + 1)
        filled = np.array([np.convolve(c, kernel, mode="same") for c in filled])
    return np.lexsort((-filled.max(axis=1), filled.argmax(axis=1)))


def fig_positional_heatmaps(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    rows = _positional_rows(a)
    if rows.height == 0:
        return None, "No positional neurons, so no heatmaps."
    counts = rows.group_by("layer").len().sort(["len", "layer"], descending=[True, False])
    layers = sorted(counts["layer"].head(MAX_HEATMAP_LAYERS).to_list())
    ncols = min(3, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = _figure(3.6 * ncols + 0.8, 2.5 * nrows + 0.8)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = None
    for ax, layer in zip(axes, layers):
        sub = rows.filter(pl.col("layer") == layer).head(MAX_HEATMAP_ROWS)
        width = max(len(c) for c in sub["fr"].to_list())
        curves = np.full((sub.height, width), np.nan)
        for i, c in enumerate(sub["fr"].to_list()):
            curves[i, : len(c)] = _curve(c)
        order = _peak_order(curves)
        curves = curves[order]
        image = ax.imshow(curves, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1,
                          extent=(-0.5, width - 0.5, sub.height - 0.5, -0.5))  # fmt: skip
        total = int(counts.filter(pl.col("layer") == layer)["len"][0])
        shown = f"{sub.height} strongest of {total}" if total > sub.height else f"{total}"
        ax.set_title(f"layer {layer}: {shown} positional", fontsize=8)
        if sub.height <= 20:
            ids = sub["neuron"].to_numpy()[order]
            ax.set_yticks(np.arange(sub.height), [f"N{i}" for i in ids])
            ax.set_ylabel("neuron", fontsize=7)
        else:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("neurons, sorted by peak position", fontsize=7)
        ax.set_xlabel("position p", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[: len(layers)].tolist(), label="fr(p)", shrink=min(0.8, 3 / (nrows + 1)))
    fig.suptitle(f"{title}\nfr(p) of positional neurons, one row each, sorted by where they peak", fontsize=9)
    return fig, None


def fig_card_curve(card: dict) -> Figure | None:
    fr = card.get("position_curve")
    if not fr:
        return None
    fr = _curve(fr)
    kind = card.get("positional_kind") or "other"
    fig = _figure(5.2, 1.9)
    ax = fig.subplots()
    ax.plot(np.arange(len(fr)), fr, color=KIND_COLORS.get(kind, "k"), lw=1)
    ax.axhline(card["frequency"], color="k", lw=0.6, ls=":")
    for iv in card.get("active_intervals") or []:
        ax.axvspan(iv["start"] - 0.5, iv["end"] - 0.5, color=KIND_COLORS.get(kind, "k"), alpha=0.12, lw=0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("position p", fontsize=8)
    ax.set_ylabel("fr(p)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f"L{card['layer']} N{card['neuron']}: {KIND_LABELS.get(kind, kind)}; shaded: active intervals",
                 fontsize=8)  # fmt: skip
    return fig
