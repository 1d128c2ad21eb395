"""The figures of one run, after the paper's; each function returns (Figure or None, note or None)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ..analysis import Analysis
from .format import _figure, _layer_values, _show_token

MAX_VALUE_PANELS = 6  # token detectors in the promoted / suppressed tokens figure
VALUE_TOKENS = 8  # promoted and suppressed tokens shown per detector
COVER_BINS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20), (21, 50), (51, 100),
              (101, 500), (501, 1000), (1001, None))  # fmt: skip


def fig_dead_frequency(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    l = a.layers
    if l.height == 0:
        return None, "The run has no layers."
    x = l["layer"].to_numpy()
    dead = 100 * _layer_values(l, "dead_fraction")
    freq = _layer_values(l, "mean_frequency_alive")
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(x, dead, color="#b2182b", width=0.8)
    ax1.set(xlabel="layer", ylabel="dead neurons (% of layer)", title="Dead neurons")
    ax1.set_ylim(0, max(5.0, float(np.nanmax(dead)) * 1.15 if not np.isnan(dead).all() else 5.0))
    if len(x) <= 16:  # value labels while they fit
        for xi, d in zip(x, dead):
            if d >= 0.05:
                ax1.text(xi, d, f"{d:.0f}" if d >= 1 else f"{d:.1f}", ha="center", va="bottom", fontsize=7)
    ok = ~np.isnan(freq)
    if ok.any():
        ax2.plot(x[ok], freq[ok], "o-", color="#2166ac", ms=4)
        if (freq[ok] > 0).all() and freq[ok].max() / freq[ok].min() > 20:
            ax2.set_yscale("log")
        else:
            ax2.set_ylim(0, freq[ok].max() * 1.15 or 1)
    else:
        ax2.text(0.5, 0.5, "no live neurons", ha="center", va="center", transform=ax2.transAxes)
    ax2.set(xlabel="layer", ylabel="activation frequency", title="Mean frequency of live neurons")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
        _int_xticks(ax, x)
    fig.suptitle(title, fontsize=10)
    return fig, None


def _int_xticks(ax: Any, x: np.ndarray) -> None:
    """A tick at every layer for up to 24 layers, else integer ticks."""
    from matplotlib.ticker import MaxNLocator

    if len(x) <= 24:
        ax.set_xticks(x)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(x):
        ax.set_xlim(float(np.min(x)) - 0.6, float(np.max(x)) + 0.6)


def _bin_counts(values: np.ndarray) -> np.ndarray:
    out = []
    for lo, hi in COVER_BINS:
        m = values >= lo if hi is None else (values >= lo) & (values <= hi)
        out.append(int(m.sum()))
    return np.array(out)


def _bin_label(lo: int, hi: int | None) -> str:
    def k(v: int) -> str:
        return f"{v // 1000}k" if v >= 1000 and v % 1000 == 0 else str(v)

    return f">{k(lo - 1)}" if hi is None else (str(lo) if lo == hi else f"{k(lo)}–{k(hi)}")


def first_half(a: Analysis) -> list[int]:
    """The layers of the first half of the network (the paper's coverage figures): 0 .. L // 2 - 1, at least
    layer 0."""
    n_layers = int(a.layers["layer"].cast(pl.Int64).max() or 0) + 1 if a.layers.height else 0  # type: ignore[arg-type]
    return list(range(max(1, n_layers // 2))) if n_layers else []


def fig_coverage(a: Analysis, title: str, layers: Sequence[int] | None = None) -> tuple[Figure | None, str | None]:
    """Unigram, bigram and trigram coverage of the live neurons (paper Figures 2, 12, 13) of `layers` (default
    the first half of the network, as the paper shows; pass every layer for all)."""
    layers = first_half(a) if layers is None else list(layers)
    n_layers = a.layers.height
    alive = a.neurons.filter(~pl.col("dead") & pl.col("layer").is_in(layers))
    if alive.height == 0:
        scope = "" if len(layers) >= n_layers else " in the first half of the network"
        return None, f"Every neuron is dead{scope}: no coverage to show."
    series = {k: alive[f"cover_{k}"].cast(pl.Int64).to_numpy() for k in (1, 2, 3)}
    counts = {k: _bin_counts(v) for k, v in series.items()}
    nonempty = [i for i in range(len(COVER_BINS)) if any(counts[k][i] for k in counts)]
    keep = list(range(0 if nonempty[0] == 0 else 1, nonempty[-1] + 1))  # a contiguous axis from 1 (or 0)
    labels = [_bin_label(*COVER_BINS[i]) for i in keep]
    fig = _figure(10, 3.8)
    ax = fig.subplots()
    width = 0.27
    xs = np.arange(len(keep))
    colors = {1: "#1b9e77", 2: "#d95f02", 3: "#7570b3"}
    names = {1: "unigrams (tokens)", 2: "bigrams", 3: "trigrams"}
    for j, k in enumerate((1, 2, 3)):
        pct = 100 * counts[k][keep] / alive.height
        ax.bar(xs + (j - 1) * width, pct, width, color=colors[k], label=names[k])
    ax.set_xticks(xs, labels, fontsize=8 if len(keep) > 10 else 9)
    scope = (f"layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}") + (
        " (first half)" if len(layers) < n_layers else " (all layers)"
    )
    ax.set(xlabel="k-grams needed to cover 95% of a neuron's activations", ylabel="% of live neurons",
           title=f"{title}\nn-gram coverage of {alive.height:,} live neurons, {scope}")  # fmt: skip
    det_edge = [i for i, b in enumerate(keep) if COVER_BINS[b][0] > 5]
    if det_edge and det_edge[0] > 0:
        ax.axvline(det_edge[0] - 0.5, color="k", ls="--", lw=0.8)
        ax.text(det_edge[0] - 0.55, ax.get_ylim()[1] * 0.97, "≤ 5 tokens: token-detector candidates ",
                ha="right", va="top", fontsize=8)  # fmt: skip
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    note = None
    inexact = 0
    for k in (1, 2, 3):
        if f"cover_{k}_max" in alive.columns:
            inexact += int((alive[f"cover_{k}_max"] != alive[f"cover_{k}"]).sum())
    if inexact:
        note = (f"{inexact:,} coverages are certified bounds (k-gram summaries past capacity); "
                "their lower bounds are plotted.")  # fmt: skip
    return fig, note


def fig_coverage_all_layers(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    return fig_coverage(a, title, a.layers["layer"].to_list())


def fig_token_detectors(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    l = a.layers
    if l.height == 0 or int(l["n_token_detectors"].sum()) + int(l["n_trigram_detectors"].sum()) == 0:
        return None, ("No token or trigram detectors in this run (METHOD.md: at most 5 tokens cover 95% of the "
                      "activations and the neuron fires on at least 95% of each one's occurrences).")  # fmt: skip
    x = l["layer"].to_numpy()
    fig = _figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    w = 0.4
    ax1.bar(x - w / 2, l["n_token_detectors"].to_numpy(), w, color="#1b9e77", label="token detectors")
    ax1.bar(x + w / 2, l["n_trigram_detectors"].to_numpy(), w, color="#7570b3", label="trigram detectors")
    ax1.set(xlabel="layer", ylabel="neurons", title="Detectors per layer (Figure 3)")
    ax1.legend(frameon=False, fontsize=8)
    cols = ("n_tokens_covered", "n_new_tokens_vs_previous", "n_new_tokens_overall")
    _coverage_bars(ax2, l, cols, "#1b9e77", "#66a61e", "tokens", "Tokens covered by token detectors (Figure 4)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
        _int_xticks(ax, x)
    fig.suptitle(title, fontsize=10)
    return fig, None


def _coverage_bars(ax: Any, l: pl.DataFrame, cols: Sequence[str], covered: str, vs_previous: str, what: str,
                   title: str) -> None:  # fmt: skip
    """Per layer: what the layer's detectors cover, new against the previous layer, new overall (columns
    `cols` in that order), side by side."""
    x, w = l["layer"].to_numpy(), 0.27
    labels = ("covered by the layer", "new vs previous layer", "new overall")
    for offset, col, color, label in zip((-w, 0, w), cols, (covered, vs_previous, "#e6ab02"), labels):
        ax.bar(x + offset, l[col].to_numpy(), w, color=color, label=label)
    ax.set(xlabel="layer", ylabel=what, title=title)
    ax.legend(frameon=False, fontsize=8)


TRIGRAM_COLUMNS = ("n_trigrams_covered", "n_new_trigrams_vs_previous", "n_new_trigrams_overall")


def fig_trigram_detectors(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    """Trigram detectors per layer (paper Figure 14) and the trigrams they cover: per layer, new against the
    previous layer and new against every earlier layer (Figure 15)."""
    l = a.layers
    if any(c not in l.columns for c in TRIGRAM_COLUMNS):
        return None, "This run's layers table predates the trigram coverage columns: run `finalize` again."
    if l.height == 0 or int(l["n_trigram_detectors"].sum()) == 0:
        return None, ("No trigram detectors in this run (METHOD.md: at most 50 trigrams cover 95% of the "
                      "activations and the neuron fires on at least 95% of each one's occurrences).")  # fmt: skip
    x = l["layer"].to_numpy()
    fig = _figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(x, l["n_trigram_detectors"].to_numpy(), 0.6, color="#7570b3", label="per layer")
    ax1.plot(x, np.cumsum(l["n_trigram_detectors"].to_numpy()), "o-", color="#444444", ms=3, lw=1,
             label="cumulative")  # fmt: skip
    ax1.set(xlabel="layer", ylabel="neurons", title="Trigram detectors (Figure 14)")
    from matplotlib.ticker import MaxNLocator

    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(frameon=False, fontsize=8)
    _coverage_bars(
        ax2, l, TRIGRAM_COLUMNS, "#7570b3", "#a6761d", "trigrams", "Trigrams covered by trigram detectors (Figure 15)"
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
        _int_xticks(ax, x)
    fig.suptitle(title, fontsize=10)
    return fig, None


def strongest_detectors(a: Analysis, n: int = MAX_VALUE_PANELS) -> pl.DataFrame:
    """The token detectors with the most activations (as the cards take them)."""
    return a.neurons.filter(pl.col("token_detector")).sort(["n_active", "layer", "neuron"],
                                                           descending=[True, False, False]).head(n)  # fmt: skip


def fig_value_tokens(a: Analysis, title: str, model: Any, tokenizer: Any = None,
                     n: int = MAX_VALUE_PANELS, k: int = VALUE_TOKENS) -> tuple[Figure | None, str | None]:  # fmt: skip
    """Top promoted and suppressed tokens of the strongest token detectors (paper Figure 5): the k highest and
    k lowest scores s_t = W_U[t] . v of each one's value vector v; its own detected tokens marked."""
    det = strongest_detectors(a, n)
    if det.height == 0:
        return None, "No token detectors in this run, so no promoted / suppressed tokens to show."
    if model is None:
        return None, None
    from ..suppression import value_scores

    known: dict = {}
    if tokenizer is None and a.tokens.height and "string" in a.tokens.columns:
        known = dict(a.tokens.select("token", "string").iter_rows())
    ncols = min(2, det.height)
    nrows = math.ceil(det.height / ncols)
    fig = _figure(5.2 * ncols, 0.22 * (2 * k) * nrows + 1.0)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, r in zip(axes, det.iter_rows(named=True)):
        scores = value_scores(model, int(r["layer"]), [int(r["neuron"])])[:, 0].float().numpy()
        kk = min(k, len(scores) // 2)
        low = np.argsort(scores, kind="stable")[:kk]
        high = np.argsort(-scores, kind="stable")[:kk][::-1]
        ids = np.concatenate([low, high])  # bottom to top: most suppressed first, most promoted last
        mine = {int(t) for t in r["detected_tokens"] or []}
        labels = [_show_token(tokenizer.decode([int(t)]) if tokenizer is not None else known.get(int(t)), int(t))
                  for t in ids]  # fmt: skip
        vals = scores[ids]
        ys = np.arange(len(ids))
        ax.barh(ys, vals, color=["#b2182b" if v < 0 else "#2166ac" for v in vals], height=0.7)
        ax.set_yticks(ys, [("★ " if int(t) in mine else "") + s for t, s in zip(ids, labels)], fontsize=7)
        ax.axvline(0, color="k", lw=0.6)
        ax.tick_params(axis="x", labelsize=7)
        strings = r.get("detected_strings") or [None] * len(mine)
        shown = ", ".join(_show_token(s, t) for s, t in zip(strings, r["detected_tokens"] or []))
        badge = " (low support)" if r.get("low_support") else ""
        ax.set_title(f"L{r['layer']} N{r['neuron']}: detects {shown}{badge}", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    for ax in axes[det.height :]:
        ax.set_visible(False)
    fig.supxlabel("score W_U[t] · v (red: suppressed, blue: promoted; ★ the neuron's own tokens)", fontsize=8)
    fig.suptitle(f"{title}\nTop {k} promoted and suppressed tokens of the {det.height} token detectors with the "
                 "most activations", fontsize=9)  # fmt: skip
    return fig, None


def fig_suppression(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    l = a.layers
    if l.height == 0 or int(l["n_token_detectors"].sum()) == 0:
        return None, "No token detectors in this run, so no suppression to show."
    frac = _layer_values(l, "suppressing_fraction")
    base = _layer_values(l, "suppressing_fraction_baseline")
    if np.isnan(frac).all():
        return None, ("The suppression columns are empty: the run was finalized without the model's weights "
                      "(pass the model to `NeuronStats.finalize`, as `analyze` does).")  # fmt: skip
    x = l["layer"].to_numpy()
    has = ~np.isnan(frac)
    fig = _figure(10, 3.6)
    ax = fig.subplots()
    w = 0.4
    ax.bar(x[has] - w / 2, 100 * frac[has], w, color="#b2182b", label="token detectors suppressing their triggers")
    okb = has & ~np.isnan(base)
    if okb.any():
        ax.bar(x[okb] + w / 2, 100 * base[okb], w, color="#bababa",
               label="baseline: random live non-detectors, same tokens")  # fmt: skip
    ax.axhline(50, color="k", lw=0.6, ls=":")
    ax.set_ylim(0, 105)
    ax.set(xlabel="layer", ylabel="% of the layer's token detectors", title=f"{title}\nSuppression of trigger tokens")
    ax.text(1.0, 50, " 50%", transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=7)
    fig.legend(loc="outside lower center", ncols=2, frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _int_xticks(ax, x)
    n_det = l["n_token_detectors"].to_numpy()
    if len(x) <= 16:  # detectors per layer, while the labels fit
        for xi, f, nd in zip(x[has], frac[has], n_det[has]):
            ax.text(xi - w / 2, 100 * f + 1, f"n={nd}", ha="center", va="bottom", fontsize=6)
    return fig, None
