"""Figures and HTML reports: one run (`write_report`) and several runs on relative depth (`compare`).

The figures follow the paper's (Voita, Ferrando & Nalmpantis 2023): dead neurons and mean frequency
of live neurons per layer (Figure 1), n-gram coverage (Figure 2), token detectors and the tokens they
cover (Figures 3-4), suppression of trigger tokens (Figure 6), positional neurons (Figures 7-9). Pages
are self-contained: figures are embedded as base64 PNG data URIs, no scripts, no external assets; the
same PNGs are also written to `figures/`. Drawing uses matplotlib's Agg canvas directly (no pyplot, so
the caller's backend and open figures are left alone).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .analysis import METADATA, Analysis, load
from .errors import OptNeuronsError
from .tables import KINDS

KIND_COLORS = {"oscillatory": "#7b3294", "two_sided": "#2c7bb6", "one_sided": "#e66101", "other": "#8c8c8c"}
KIND_LABELS = {"oscillatory": "oscillatory", "two_sided": "two-sided", "one_sided": "one-sided", "other": "other"}
DPI = 110
MAX_CURVES = 16  # strongest positional neurons drawn in the curve grid
MAX_HEATMAP_LAYERS = 12
MAX_HEATMAP_ROWS = 160
TOP_K = 10  # top suppressed / promoted tokens on a card
AUTO_LOAD_BYTES = 2 << 30  # write_report(model="auto") loads local weights up to this size (float32)
COVER_BINS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20), (21, 50), (51, 100),
              (101, 500), (501, 1000), (1001, None))  # fmt: skip

# Dead-neuron peaks read off the paper's Figure 1 (METHOD.md), shown beside a run of the same model.
PAPER_DEAD = {
    "opt-125m": "~41% (layer 3)",
    "opt-350m": "none",
    "opt-1.3b": "~22% (layer 5)",
    "opt-2.7b": "~35% (layer 1)",
    "opt-13b": "~37% (layer 0)",
    "opt-30b": "~53% (layer 3)",
    "opt-66b": "~73% (layer 3)",
}

FIGURE_FILES = (
    "fig1_dead_frequency.png",
    "fig2_coverage.png",
    "fig3_token_detectors.png",
    "fig6_suppression.png",
    "fig7_positional_per_layer.png",
    "fig8_positional_curves.png",
    "fig9_positional_heatmaps.png",
)
COMPARE_FILES = ("compare_dead.png", "compare_frequency.png", "compare_token_detectors.png", "compare_positional.png")


# ----------------------------------------------------------------------------------------------
# small helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> float | None:
    """A float, or None for null / NaN."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _pct(x: Any, digits: int = 1) -> str:
    x = _num(x)
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _int(x: Any) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def _show_token(s: str | None, token: int | None = None) -> str:
    """A token string made visible: spaces as ␣, newlines as ↵, other control characters escaped."""
    if s is None:
        return f"#{token}" if token is not None else "?"
    out = []
    for ch in s:
        if ch == " ":
            out.append("␣")
        elif ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out) or "∅"


def short_name(model_id: Any) -> str:
    """`facebook/opt-125m` -> `opt-125m`; a path -> its last component."""
    s = str(model_id or "run").rstrip("/")
    return Path(s).name or s


def display_id(model_id: Any) -> str:
    """A hub id as is (`facebook/opt-125m`); a local path by its last component."""
    s = str(model_id or "unknown model")
    looks_like_path = s.startswith(("/", ".", "~")) or s.count("/") > 1 or "\\" in s
    return short_name(s) if looks_like_path else s


def run_date(meta: dict, folder: str | Path | None = None) -> str | None:
    """The run's date from its metadata, else the time its metadata.json was written."""
    for key in ("date", "finished_at", "created", "timestamp"):
        if meta.get(key):
            return str(meta[key])
    for f in (folder, meta.get("out")):
        if f and (Path(f) / METADATA).exists():
            t = (Path(f) / METADATA).stat().st_mtime
            return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def _layer_values(layers: pl.DataFrame, column: str) -> np.ndarray:
    """A layers-table column as float64 with NaN for nulls."""
    if column not in layers.columns:
        return np.full(layers.height, np.nan)
    return layers[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def _n_neurons_per_layer(a: Analysis) -> int:
    if a.layers.height:
        return int(a.layers["n_neurons"].max())
    return int(a.metadata.get("n_neurons") or 0)


# ----------------------------------------------------------------------------------------------
# headline numbers


def headline(a: Analysis, folder: str | Path | None = None) -> dict:
    """The run's headline numbers (one row of `compare`'s summary table)."""
    n, l, m = a.neurons, a.layers, a.metadata
    n_layers = l.height
    dead_frac = _layer_values(l, "dead_fraction")
    worst = int(np.nanargmax(dead_frac)) if n_layers and not np.isnan(dead_frac).all() else None
    det = n.filter(pl.col("token_detector"))
    covered: set[int] = set()
    for toks in det["detected_tokens"].to_list():
        covered.update(toks or [])
    alive = n.filter(~pl.col("dead"))
    kinds = n["positional_kind"].value_counts() if n.height else None
    kind_n = {k: 0 for k in KINDS}
    if kinds is not None:
        for k, c in kinds.iter_rows():
            if k in kind_n:
                kind_n[k] = int(c)

    def mean_of(col: str) -> float | None:
        if col not in det.columns or det.height == 0:
            return None
        return _num(det[col].cast(pl.Float64).mean())

    return {
        "model": short_name(m.get("model_id")),
        "model_id": str(m.get("model_id")),
        "revision": m.get("revision"),
        "date": run_date(m, folder),
        "dir": str(folder) if folder is not None else m.get("out"),
        "layers": n_layers,
        "neurons_per_layer": _n_neurons_per_layer(a),
        "neurons": n.height,
        "tokens": int(m.get("n_tokens") or 0),
        "dead": int(n["dead"].sum()),
        "dead_fraction": n["dead"].mean() if n.height else None,
        "dead_max_layer_fraction": float(dead_frac[worst]) if worst is not None else None,
        "dead_max_layer": int(l["layer"][worst]) if worst is not None else None,
        "mean_frequency_alive": _num(alive["frequency"].mean()) if alive.height else None,
        "token_detectors": det.height,
        "tokens_covered": len(covered),
        "max_tokens_covered_per_layer": int(l["n_tokens_covered"].max() or 0) if n_layers else 0,
        "trigram_detectors": int(n["trigram_detector"].sum()),
        "positional": int(n["positional"].sum()),
        "oscillatory": kind_n["oscillatory"],
        "two_sided": kind_n["two_sided"],
        "one_sided": kind_n["one_sided"],
        "other_positional": kind_n["other"],
        "strong_positional": int(n.filter(pl.col("positional"))["positional_strong"].sum()) if n.height else 0,
        "suppressing_fraction": mean_of("suppresses_triggers"),
        "suppressing_fraction_baseline": mean_of("suppression_baseline"),
    }


SUMMARY_SCHEMA = {
    "model": pl.String, "model_id": pl.String, "revision": pl.String, "date": pl.String, "dir": pl.String,
    "layers": pl.UInt32, "neurons_per_layer": pl.UInt32, "neurons": pl.UInt64, "tokens": pl.UInt64,
    "dead": pl.UInt64, "dead_fraction": pl.Float64, "dead_max_layer_fraction": pl.Float64,
    "dead_max_layer": pl.UInt32, "mean_frequency_alive": pl.Float64, "token_detectors": pl.UInt64,
    "tokens_covered": pl.UInt64, "max_tokens_covered_per_layer": pl.UInt64, "trigram_detectors": pl.UInt64,
    "positional": pl.UInt64, "oscillatory": pl.UInt64, "two_sided": pl.UInt64, "one_sided": pl.UInt64,
    "other_positional": pl.UInt64, "strong_positional": pl.UInt64, "suppressing_fraction": pl.Float64,
    "suppressing_fraction_baseline": pl.Float64,
}  # fmt: skip


def _cover_range(lo: int, hi: int) -> str:
    """cover_k as certified: exact, or the range a lossy summary proves."""
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def run_time(meta: dict) -> str | None:
    """How long the run took, and whether the host's counting set its speed (None: not recorded)."""
    fwd, count, wall = (meta.get(k) for k in ("forward_seconds", "counting_seconds", "wall_seconds"))
    if fwd is None or count is None:
        return None
    text = (f"{wall:,.1f} s in all; " if wall is not None else "") + \
        f"forward passes {fwd:,.1f} s, the host's counting busy {count:,.1f} s of them"  # fmt: skip
    if fwd > 0 and count >= 0.9 * fwd:  # the device waited for the host
        text += " (the counting set the speed: detail_tokens gives every statistic to fewer tokens)"
    return text


def _headline_rows(h: dict, meta: dict) -> list[tuple[str, str]]:
    data = ", ".join(str(s.get("name", s)) if isinstance(s, dict) else str(s) for s in meta.get("data_sources") or [])
    rows = [
        ("Model", f"{h['model_id']}" + (f" @ {h['revision']}" if h["revision"] else "")),
        ("Run date", h["date"] or "not recorded"),
        ("Data", f"{_int(h['tokens'])} tokens"
                 + (f" in {_int(meta['n_sequences'])} sequences" if meta.get("n_sequences") else "")
                 + (f" of up to {_int(meta['T'])} positions" if meta.get("T") else "")
                 + (f" ({data})" if data else "")),
        ("dtype", str(meta.get("dtype") or "n/a")),
        # Runs before the families issue read OPT's fc1 with > 0 and recorded no rule.
        ("Firing rule", f"{meta.get('firing_rule') or 'fc1 output > 0'} (family {meta.get('family') or 'opt'})"),
        *([("Run time", t)] if (t := run_time(meta)) else []),
        *([("Token and position statistics over", f"the first {_int(meta['detail_tokens'])} tokens "
            "(dead neurons and frequencies over all)")]
          if meta.get("detail_tokens") and meta["detail_tokens"] < h["tokens"] else []),
        ("Neurons", f"{h['layers']} layers × {_int(h['neurons_per_layer'])} = {_int(h['neurons'])}"),
        ("Dead neurons", f"{_int(h['dead'])} ({_pct(h['dead_fraction'])}); most in layer "
                         f"{h['dead_max_layer'] if h['dead_max_layer'] is not None else 'n/a'}: "
                         f"{_pct(h['dead_max_layer_fraction'])}"),
        ("Mean frequency of live neurons", "n/a" if h["mean_frequency_alive"] is None
         else f"{h['mean_frequency_alive']:.4f}"),
        ("Token detectors", f"{_int(h['token_detectors'])}, covering {_int(h['tokens_covered'])} tokens "
                            f"(at most {_int(h['max_tokens_covered_per_layer'])} in one layer)"),
        ("Trigram detectors", _int(h["trigram_detectors"])),
        ("Detectors suppressing their triggers", f"{_pct(h['suppressing_fraction'])} "
         f"(baseline, random live neurons of the same layers: {_pct(h['suppressing_fraction_baseline'])})"),
        ("Positional neurons", f"{_int(h['positional'])}: " + ", ".join(
            f"{_int(h[k if k != 'other' else 'other_positional'])} {KIND_LABELS[k]}" for k in KINDS)
         + f"; {_int(h['strong_positional'])} strong"),
    ]  # fmt: skip
    paper = PAPER_DEAD.get(h["model"].lower())
    if paper:
        after = [k for k, _ in rows].index("Dead neurons") + 1
        rows.insert(after, ("Paper: peak dead fraction of this model", paper))
    return rows


# ----------------------------------------------------------------------------------------------
# the figures of one run; each returns (Figure or None, note or None)


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


def fig_coverage(a: Analysis, title: str) -> tuple[Figure | None, str | None]:
    alive = a.neurons.filter(~pl.col("dead"))
    if alive.height == 0:
        return None, "Every neuron is dead: no coverage to show."
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
    ax.set(xlabel="k-grams needed to cover 95% of a neuron's activations",
           ylabel="% of live neurons", title=f"{title}\nn-gram coverage of {alive.height:,} live neurons")  # fmt: skip
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
    w = 0.27
    ax2.bar(x - w, l["n_tokens_covered"].to_numpy(), w, color="#1b9e77", label="covered by the layer")
    ax2.bar(x, l["n_new_tokens_vs_previous"].to_numpy(), w, color="#66a61e", label="new vs previous layer")
    ax2.bar(x + w, l["n_new_tokens_overall"].to_numpy(), w, color="#e6ab02", label="new overall")
    ax2.set(xlabel="layer", ylabel="tokens", title="Tokens covered by token detectors (Figure 4)")
    ax2.legend(frameon=False, fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
        _int_xticks(ax, x)
    fig.suptitle(title, fontsize=10)
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
        ax.set_title(f"L{r['layer']} N{r['neuron']}" + (f"  I={mi:.2f}" if mi is not None else ""), fontsize=8)
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


# ----------------------------------------------------------------------------------------------
# neuron cards


def _token_strings(a: Analysis, ids: Iterable[int], tokenizer: Any = None) -> list[str | None]:
    ids = [int(t) for t in ids]
    if tokenizer is not None:
        return [tokenizer.decode([t]) for t in ids]
    known: dict[int, str | None] = {}
    if a.tokens.height and "string" in a.tokens.columns:
        sub = a.tokens.filter(pl.col("token").is_in(ids)).select("token", "string")
        known = dict(sub.iter_rows())
    return [known.get(t) for t in ids]


def _as_model(model: Any) -> Any:
    """A transformers model from a loaded model, a `LoadedModel`, or a path / hub id (loaded on the CPU)."""
    from .model import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model.model
    if isinstance(model, (str, os.PathLike)):
        import torch

        return load_model(str(model), dtype="float32", device=torch.device("cpu")).model
    return model


def neuron_card(analysis: Analysis, layer: int, neuron: int, model: Any = None, tokenizer: Any = None, *,
                top_k: int = TOP_K) -> dict:  # fmt: skip
    """Everything about one neuron, from the tables, as a JSON-friendly dict.

    With `model` (a loaded OPT, or a path / hub id loaded on the CPU) the card also holds the tokens its
    value vector suppresses and promotes most (`top_suppressed` / `top_promoted`: token, string, score;
    scores s_t = W_U[t] . fc2.weight[:, neuron], see `suppression.value_scores`); `tokenizer` turns ids
    into strings (else the run's `tokens` table where it knows them)."""
    n = analysis.neurons
    hit = n.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))
    if hit.height == 0:
        n_layers = analysis.layers.height
        raise OptNeuronsError(
            f"no neuron (layer {layer}, neuron {neuron}) in this run: it has layers 0..{n_layers - 1} and "
            f"neurons 0..{_n_neurons_per_layer(analysis) - 1} per layer"
        )
    r = hit.row(0, named=True)
    detected = [int(t) for t in (r.get("detected_tokens") or [])]
    strings = r.get("detected_strings")
    if detected and (not strings or any(s is None for s in strings)):
        strings = _token_strings(analysis, detected, tokenizer)
    occurrences: dict[int, int] = {}
    if detected and analysis.tokens.height:
        sub = analysis.tokens.filter(pl.col("token").is_in(detected)).select("token", "n_occurrences")
        occurrences = {int(t): int(c) for t, c in sub.iter_rows()}
    ranks = r.get("detected_token_ranks") or [None] * len(detected)
    card: dict = {
        "layer": int(layer),
        "neuron": int(neuron),
        "n_active": int(r["n_active"]),
        "frequency": float(r["frequency"]),
        "dead": bool(r["dead"]),
        "cover_1": int(r["cover_1"]),
        "cover_2": int(r["cover_2"]),
        "cover_3": int(r["cover_3"]),
        # Certified upper bounds (equal to cover_k when the neuron's k-gram counts are exact).
        **{f"cover_{k}_max": int(r.get(f"cover_{k}_max") or r[f"cover_{k}"]) for k in (1, 2, 3)},
        "token_detector": bool(r["token_detector"]),
        "detected_tokens": detected,
        "detected_strings": list(strings or []),
        "detected": [
            {"token": t, "string": s, "occurrences": occurrences.get(t), "rank": rk}
            for t, s, rk in zip(detected, strings or [None] * len(detected), ranks)
        ],
        "trigram_detector": bool(r.get("trigram_detector")),
        "detected_trigrams": [list(map(int, g)) for g in (r.get("detected_trigrams") or [])],
        "suppression_score": _num(r.get("suppression_score")),
        "suppresses_triggers": r.get("suppresses_triggers"),
        "suppression_baseline": _num(r.get("suppression_baseline")),
        "mi_position": _num(r.get("mi_position")),
        "positional": bool(r.get("positional")),
        "positional_kind": r.get("positional_kind"),
        "positional_strong": bool(r.get("positional_strong")),
        "active_intervals": [dict(iv) for iv in (r.get("active_intervals") or [])],
        "position_curve": None,
        "top_suppressed": None,
        "top_promoted": None,
        "detected_scores": None,
    }
    if card["detected_trigrams"]:
        flat = [t for g in card["detected_trigrams"] for t in g]
        s = _token_strings(analysis, flat, tokenizer)
        card["detected_trigram_strings"] = [s[i : i + 3] for i in range(0, len(s), 3)]
    p = analysis.positions
    if p.height and "fr" in p.columns:
        cur = p.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))
        if cur.height:
            card["position_curve"] = [_num(v) for v in cur["fr"][0]]
    model = _as_model(model)
    if model is not None:
        from .suppression import value_scores

        scores = value_scores(model, int(layer), [int(neuron)])[:, 0].float().numpy()
        k = min(top_k, len(scores))
        low = np.argsort(scores, kind="stable")[:k]
        high = np.argsort(-scores, kind="stable")[:k]
        for key, ids in (("top_suppressed", low), ("top_promoted", high)):
            ss = _token_strings(analysis, ids.tolist(), tokenizer)
            card[key] = [{"token": int(t), "string": s, "score": float(scores[t])} for t, s in zip(ids, ss)]
        card["detected_scores"] = [float(scores[t]) for t in detected if t < len(scores)]
    return card


def default_cards(a: Analysis, n_detectors: int = 4, n_positional: int = 4) -> list[tuple[int, int]]:
    """The token detectors with the most activations, the strongest trigram detector that is not a
    token detector, and the strongest positional neuron of each kind (then the next strongest)."""
    n = a.neurons
    chosen: list[tuple[int, int]] = []

    def add(rows: pl.DataFrame) -> None:
        for l, i in rows.select("layer", "neuron").iter_rows():
            if (int(l), int(i)) not in chosen:
                chosen.append((int(l), int(i)))

    add(n.filter(pl.col("token_detector")).sort("n_active", descending=True).head(n_detectors))
    add(n.filter(pl.col("trigram_detector") & ~pl.col("token_detector")).sort("n_active", descending=True).head(1))
    pos = n.filter(pl.col("positional")).sort("mi_position", descending=True, nulls_last=True)
    picked = pl.concat([pos.filter(pl.col("positional_kind") == k).head(1) for k in KINDS])
    rest = pos.join(picked.select("layer", "neuron"), on=["layer", "neuron"], how="anti")
    add(pl.concat([picked.sort("mi_position", descending=True, nulls_last=True), rest]).head(n_positional))
    return chosen


def _resolve_model(a: Analysis, model: Any, tokenizer: Any) -> tuple[Any, Any, str | None]:
    """(model or None, tokenizer or None, note on where scores come from / why there are none)."""
    from .architectures import decoder_layers, n_neurons
    from .model import load_tokenizer

    if model is None:
        return None, tokenizer, ("Top suppressed / promoted tokens need the model's weights: call "
                                 "`write_report(analysis, out, model=...)`.")  # fmt: skip
    note = None
    if isinstance(model, str) and model == "auto":
        model, note = _auto_model(a.metadata)
        if model is None:
            return None, tokenizer, note
    else:
        model = _as_model(model)
    if tokenizer is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        tokenizer = load_tokenizer(name) if name else None
    expected = (a.layers.height, _n_neurons_per_layer(a))
    got = (len(decoder_layers(model)), n_neurons(model))
    if expected != got:
        return None, tokenizer, (f"The model given has {got[0]} layers × {got[1]} neurons, the run "
                                 f"{expected[0]} × {expected[1]}: no token scores shown.")  # fmt: skip
    return model, tokenizer, note


def _auto_model(meta: dict) -> tuple[Any, str | None]:
    """The run's model loaded on the CPU when its weights are on this machine and small."""
    from .model import load_model, parameter_bytes, resolve_name

    import torch

    mid = meta.get("model_id")
    if not mid:
        return None, "The run's metadata names no model, so no token scores are shown."
    name = resolve_name(str(mid))
    folder: Path | None = Path(name) if Path(name).is_dir() else None
    if folder is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json", revision=meta.get("revision") or None)
            folder = Path(hit).parent if isinstance(hit, str) else None
        except Exception:
            folder = None
    if folder is None or not (folder / "config.json").exists():
        return None, (f"The weights of {mid} are not on this machine: pass `model=` to `write_report` for the "
                      "top suppressed / promoted tokens.")  # fmt: skip
    try:
        from transformers import AutoConfig

        size = parameter_bytes(AutoConfig.from_pretrained(folder), torch.float32)
        if size > AUTO_LOAD_BYTES:
            return None, (f"{mid} takes {size / 2**30:.1f} GiB in float32, more than the report loads by itself: "
                          "pass `model=` to `write_report` for the top suppressed / promoted tokens.")  # fmt: skip
        return load_model(str(folder), dtype="float32", device=torch.device("cpu")).model, None
    except Exception as e:  # a report must not fail over optional token scores
        return None, f"Could not load {mid} for token scores ({type(e).__name__}: {e})."


# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:0 auto;padding:1em 1.5em;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:.2em 0 .5em}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;
margin:.6em 0}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
.card{border:1px solid #ccc;border-radius:6px;padding:.7em 1em}.card img{max-width:100%}
.badge{display:inline-block;font-size:.75em;padding:.05em .5em;border-radius:1em;background:#eee;margin-left:.4em}
code.tok{background:#f0f0f0;padding:0 .25em;border-radius:3px;white-space:pre}.tk{white-space:nowrap;margin-right:.5em}
td.name{white-space:nowrap}
.scroll{overflow-x:auto}details{margin:.6em 0}
"""


def _page(title: str, subtitle: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n<p class=\"sub\">{_esc(subtitle)}</p>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _figure_html(path: Path | None, alt: str, caption: str, note: str | None) -> str:
    parts = []
    if path is not None:
        parts.append(f'<figure><img src="{_data_uri(path)}" alt="{_esc(alt)}">'
                     f"<figcaption>{_esc(caption)}</figcaption></figure>")  # fmt: skip
    if note:
        parts.append(_note(note))
    return "\n".join(parts)


def _kv_table(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _format_cell(v: Any) -> tuple[str, bool]:
    if v is None:
        return "", False
    if isinstance(v, bool):
        return ("yes" if v else "no"), False
    if isinstance(v, int):
        return f"{v:,}", True
    if isinstance(v, float):
        if math.isnan(v):
            return "", True
        return (f"{v:.4f}" if abs(v) < 1 else f"{v:,.2f}"), True
    return str(v), False


def _df_table(df: pl.DataFrame, headers: Sequence[str] | None = None, percent: Iterable[str] = ()) -> str:
    heads = headers or df.columns
    pct_at = {df.columns.index(c) for c in percent}
    out = ["<div class=\"scroll\"><table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in heads) + "</tr>"]
    for row in df.iter_rows():
        cells = []
        for i, v in enumerate(row):
            s, numeric = (_pct(v) if v is not None else "", True) if i in pct_at else _format_cell(v)
            if i == 0:
                cells.append(f'<td class="name">{_esc(s)}</td>')
            else:
                cells.append(f'<td class="n">{_esc(s)}</td>' if numeric else f"<td>{_esc(s)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _tok_chip(t: int, s: str | None, extra: str = "") -> str:
    chip = f'<code class="tok" title="id {t}">{_esc(_show_token(s, t))}</code>'
    return f'<span class="tk">{chip}{_esc(extra)}</span>'


def _card_html(card: dict, img: Path | None) -> str:
    badges = []
    if card["dead"]:
        badges.append("dead")
    if card["token_detector"]:
        badges.append("token detector")
    if card["trigram_detector"]:
        badges.append("trigram detector")
    if card["positional"]:
        kind = KIND_LABELS.get(card["positional_kind"] or "", card["positional_kind"] or "")
        badges.append(f"positional: {'strong ' if card['positional_strong'] else ''}{kind}")
    head = (f'<h3 id="card-L{card["layer"]}-N{card["neuron"]}">Layer {card["layer"]} · neuron {card["neuron"]}'
            + "".join(f'<span class="badge">{_esc(b)}</span>' for b in badges) + "</h3>")  # fmt: skip
    rows = [
        ("activations", f"{card['n_active']:,} (frequency {card['frequency']:.4g})"),
        ("k-grams covering 95%", ", ".join(
            _cover_range(card[f"cover_{k}"], card[f"cover_{k}_max"]) + f" {name}"
            for k, name in ((1, "tokens"), (2, "bigrams"), (3, "trigrams")))),
        ("I(act; pos)", "n/a" if card["mi_position"] is None else f"{card['mi_position']:.3f} nats"),
    ]
    if card["token_detector"]:
        if card["suppression_score"] is not None:
            verdict = "suppresses" if card["suppresses_triggers"] else "does not suppress"
            rows.append(("suppression",
                         f"mean score of its tokens {card['suppression_score']:+.3f}: {verdict} them; "
                         f"baseline {_pct(card['suppression_baseline'], 0)} of random live neurons do"))  # fmt: skip
        else:
            rows.append(("suppression", "not computed for this run"))
    if card["active_intervals"]:
        rows.append(("active intervals", ", ".join(f"[{iv['start']}, {iv['end']})" for iv in card["active_intervals"])))
    parts = [head, _kv_table(rows)]
    if card["detected"]:
        ranks_known = any(d["rank"] is not None for d in card["detected"])
        chips = []
        for d in card["detected"]:
            extra = []
            if d["occurrences"] is not None:
                extra.append(f"{d['occurrences']:,}×")
            if d["rank"] is not None:
                extra.append(f"rank {d['rank']:,}")
            chips.append(_tok_chip(d["token"], d["string"], f" ({', '.join(extra)})" if extra else ""))
        hint = " (occurrences, rank of its score: 0 = most suppressed)" if ranks_known else ""
        parts.append(f"<p><b>Detected tokens</b>{_esc(hint)}: " + " ".join(chips) + "</p>")
    if card["detected_trigrams"]:
        strs = card.get("detected_trigram_strings") or [[None] * 3] * len(card["detected_trigrams"])
        shown = []
        for g, s in list(zip(card["detected_trigrams"], strs))[:12]:
            shown.append("".join(_tok_chip(t, x) for t, x in zip(g, s)))
        more = len(card["detected_trigrams"]) - len(shown)
        tail = f" … and {more} more" if more > 0 else ""
        parts.append("<p><b>Detected trigrams:</b> " + " · ".join(shown) + tail + "</p>")
    if card["top_suppressed"] is not None:
        for key, label in (("top_suppressed", "Most suppressed tokens"), ("top_promoted", "Most promoted tokens")):
            chips = [_tok_chip(d["token"], d["string"], f" {d['score']:+.3f}") for d in card[key]]
            parts.append(f"<p><b>{label}:</b> " + " ".join(chips) + "</p>")
    if img is not None:
        parts.append(f'<img src="{_data_uri(img)}" alt="fr(p) of layer {card["layer"]} neuron {card["neuron"]}">')
    elif not card["positional"]:
        parts.append("<p class=\"sub\">Not positional: its fr(p) curve is not stored.</p>")
    return '<div class="card">' + "".join(parts) + "</div>"


# ----------------------------------------------------------------------------------------------
# write_report


@dataclass
class _Section:
    heading: str
    file: str
    caption: str
    draw: Any


SECTIONS = (
    _Section("Dead neurons and activation frequency (paper Figure 1)", "fig1_dead_frequency.png",
             "Left: share of each layer's neurons that never fire on the data. Right: mean activation frequency "
             "of the live neurons (fraction of tokens on which a neuron fires: the firing rule above).", fig_dead_frequency),
    _Section("n-gram coverage (Figure 2)", "fig2_coverage.png",
             "How many distinct unigrams / bigrams / trigrams it takes to cover 95% of a live neuron's activations "
             "(BOS positions left out). Neurons with 0 fire only at BOS.", fig_coverage),
    _Section("Token detectors and the tokens they cover (Figures 3-4)", "fig3_token_detectors.png",
             "Left: token and trigram detectors per layer. Right: tokens covered by each layer's token detectors, "
             "of those how many no detector of the previous layer covers, and how many no earlier layer covers.",
             fig_token_detectors),
    _Section("Do detectors suppress their triggers? (Figure 6)", "fig6_suppression.png",
             "Share of each layer's token detectors whose value vector scores their own tokens negatively against "
             "the unembedding, beside the same share for random live non-detector neurons of the layer scored on "
             "the same tokens. The paper finds over 80% of detectors suppress their triggers.", fig_suppression),
    _Section("Positional neurons per layer (Figure 7)", "fig7_positional_per_layer.png",
             "Neurons whose activation carries more than 0.05 nats of information about the position, stacked by "
             "kind (METHOD.md's rule on the smoothed fr(p)).", fig_positional_per_layer),
    _Section("Position curves of the strongest positional neurons (Figure 8)", "fig8_positional_curves.png",
             "fr(p): activations at position p / tokens at position p, coloured by kind.", fig_positional_curves),
    _Section("All positional neurons by layer (Figure 9)", "fig9_positional_heatmaps.png",
             "Each row one positional neuron's fr(p), sorted by where it peaks: oscillatory neurons that tile the "
             "positions show as a staircase (grey: no token at that position).", fig_positional_heatmaps),
)  # fmt: skip


def run_title(meta: dict, folder: str | Path | None = None) -> str:
    date = run_date(meta, folder)
    tokens = meta.get("n_tokens")
    parts = [display_id(meta.get("model_id"))]
    if tokens:
        parts.append(f"{int(tokens):,} tokens")
    if date:
        parts.append(date[:10])
    return " · ".join(parts)


def _clean(figdir: Path, names: Iterable[str]) -> None:
    """Remove the figures an earlier report wrote, so none are left stale."""
    for name in names:
        (figdir / name).unlink(missing_ok=True)
    for f in figdir.glob("card_L*_N*.png"):
        f.unlink()


def write_report(analysis: Analysis, out: str | Path, *, cards: Sequence[tuple[int, int]] | None = None,
                 model: Any = "auto", tokenizer: Any = None) -> Path:  # fmt: skip
    """Write `out/figures/*.png` and the self-contained page `out/report.html`; return the page's path.

    cards: the (layer, neuron)s to describe (default `default_cards`).
    model: for the cards' top suppressed / promoted tokens: a loaded OPT model, a path / hub id, None,
        or "auto" (the run's model when its weights are on this machine and take at most 2 GiB).
    """
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    _clean(figdir, FIGURE_FILES)
    meta = analysis.metadata
    title = run_title(meta)
    h = headline(analysis)
    body = ["<h2>Headline numbers</h2>", _kv_table(_headline_rows(h, meta))]
    for s in SECTIONS:
        fig, note = s.draw(analysis, title)
        path = _save(fig, figdir / s.file) if fig is not None else None
        body += [f"<h2>{_esc(s.heading)}</h2>", _figure_html(path, s.heading, s.caption, note)]

    body.append("<h2>Neuron cards</h2>")
    selected = list(cards) if cards is not None else default_cards(analysis)
    if not selected:
        body.append(_note("No token detectors or positional neurons to describe."))
    else:
        model_obj, tok, note = _resolve_model(analysis, model, tokenizer)
        if note:
            body.append(_note(note))
        html_cards = []
        for layer, neuron in selected:
            card = neuron_card(analysis, layer, neuron, model_obj, tok)
            fig = fig_card_curve(card)
            img = _save(fig, figdir / f"card_L{layer}_N{neuron}.png") if fig is not None else None
            html_cards.append(_card_html(card, img))
        body.append('<div class="cards">' + "\n".join(html_cards) + "</div>")

    body.append("<h2>Per layer</h2>")
    body.append(_df_table(analysis.layers) if analysis.layers.height else _note("The run has no layers."))
    body.append("<details><summary>Thresholds and run metadata</summary>")
    shown_meta = {k: v for k, v in meta.items() if k not in ("position_totals",)}
    body.append(f"<pre>{_esc(json.dumps(shown_meta, indent=2, sort_keys=True, default=str))}</pre></details>")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from . import __version__

    ran = meta.get("package_version")
    versions = f"run with opt_neurons {ran}, " if ran and ran != __version__ else ""
    subtitle = (f"Dead, n-gram and positional neurons (Voita et al. 2023); {versions}report written {now} "
                f"by opt_neurons {__version__}")  # fmt: skip
    page = out / "report.html"
    page.write_text(_page(f"opt_neurons report: {title}", subtitle, body), encoding="utf-8")
    return page


# ----------------------------------------------------------------------------------------------
# compare


def _label_runs(runs: list[tuple[Path, Analysis]]) -> list[str]:
    labels = [short_name(a.metadata.get("model_id")) for _, a in runs]
    seen: dict[str, int] = {}
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
    return [lab if seen[lab] == 1 else f"{lab} ({d.name})" for lab, (d, _) in zip(labels, runs)]


def _colors(n: int) -> list:
    import matplotlib as mpl

    if n <= 10:
        return [mpl.colormaps["tab10"](i) for i in range(n)]
    return [mpl.colormaps["viridis"](i / max(1, n - 1)) for i in range(n)]


def _relative_depth(a: Analysis) -> np.ndarray:
    n_layers = max(1, int(a.metadata.get("n_layers") or a.layers.height))
    return a.layers["layer"].to_numpy().astype(float) / n_layers


def _overlay(runs: list[tuple[Path, Analysis]], labels: list[str], columns: list[tuple[str, str, float]],
             title: str, ylabel: str, *, log: bool = False, counts: bool = False) -> Figure:  # fmt: skip
    """One panel per (column, panel title, scale); a line per run over relative depth."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(max(7.0, 5.2 * len(columns)), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(columns), squeeze=False)).ravel()
    colors = _colors(len(runs))
    for ax, (col, panel, scale) in zip(axes, columns):
        all_pos = []
        for (_, a), lab, c in zip(runs, labels, colors):
            y = _layer_values(a.layers, col) * scale
            x = _relative_depth(a)
            ok = ~np.isnan(y)
            ax.plot(x[ok], y[ok], "o-", ms=3, lw=1.4, color=c, label=lab)
            all_pos += [v for v in y[ok] if v > 0]
        if log and all_pos and max(all_pos) / min(all_pos) > 20:
            ax.set_yscale("log")
        else:
            top = ax.get_ylim()[1]
            ax.set_ylim(-0.03 * top, top)
            if counts:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="relative depth (layer / layers)", ylabel=ylabel, title=panel)
        ax.set_xlim(-0.03, 1.0)
        ax.grid(alpha=0.3)
    if len(columns) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False, fontsize=8)
        fig.suptitle(title, fontsize=10)
    else:
        axes[0].legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes[0].set_title(title, fontsize=10)
    return fig


def _summary_markdown(summary: pl.DataFrame) -> str:
    heads = ["model", "layers", "neurons", "tokens", "dead", "max dead (layer)", "token detectors",
             "tokens covered", "trigram detectors", "positional", "oscillatory", "suppressing (baseline)"]  # fmt: skip
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(heads) - 1)) + "|"]
    for r in summary.iter_rows(named=True):
        worst = ("n/a" if r["dead_max_layer"] is None
                 else f"{_pct(r['dead_max_layer_fraction'])} ({r['dead_max_layer']})")  # fmt: skip
        cells = [
            r["model"].replace("|", "\\|"),
            str(r["layers"]),
            f"{r['neurons']:,}",
            f"{r['tokens']:,}",
            f"{r['dead']:,} ({_pct(r['dead_fraction'])})",
            worst,
            f"{r['token_detectors']:,}",
            f"{r['tokens_covered']:,}",
            f"{r['trigram_detectors']:,}",
            f"{r['positional']:,}",
            f"{r['oscillatory']:,}",
            f"{_pct(r['suppressing_fraction'])} ({_pct(r['suppressing_fraction_baseline'])})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Overlay saved runs on relative depth; write `out/figures/compare_*.png`, `out/compare.html`,
    `out/summary.md` and `out/summary.parquet` (one row per run, see `headline`). Returns the page."""
    if not dirs:
        raise OptNeuronsError("compare needs at least one saved run folder")
    runs = [(Path(d), load(d)) for d in dirs]
    runs.sort(key=lambda r: (r[1].neurons.height, r[1].layers.height))  # smallest model first, as the paper
    labels = _label_runs(runs)
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for name in COMPARE_FILES:
        (figdir / name).unlink(missing_ok=True)
    rows = [headline(a, d) for d, a in runs]
    for r, lab in zip(rows, labels):
        r["model"] = lab
    summary = pl.DataFrame(rows, schema=SUMMARY_SCHEMA, orient="row") if rows else pl.DataFrame(schema=SUMMARY_SCHEMA)
    summary.write_parquet(out / "summary.parquet")
    (out / "summary.md").write_text(_summary_markdown(summary), encoding="utf-8")

    names = ", ".join(labels)
    figures = [
        ("compare_dead.png", "Dead neurons (paper Figure 1, left)",
         _overlay(runs, labels, [("dead_fraction", "", 100.0)], "Dead neurons per layer",
                  "dead neurons (% of layer)")),
        ("compare_frequency.png", "Mean frequency of live neurons (Figure 1, right)",
         _overlay(runs, labels, [("mean_frequency_alive", "", 1.0)], "Mean activation frequency of live neurons",
                  "activation frequency", log=True)),
        ("compare_token_detectors.png", "Token detectors and tokens covered per layer (Figures 3-4)",
         _overlay(runs, labels, [("n_token_detectors", "token detectors", 1.0),
                                 ("n_tokens_covered", "tokens covered by the layer's detectors", 1.0)],
                  "Token detectors per layer", "count", log=True, counts=True)),
        ("compare_positional.png", "Positional neurons per layer (Figure 7)",
         _overlay(runs, labels, [("n_positional", "positional neurons", 1.0),
                                 ("n_oscillatory", "oscillatory positional neurons", 1.0)],
                  "Positional neurons per layer", "neurons", counts=True)),
    ]  # fmt: skip
    body = ["<h2>Summary</h2>", _df_table(
        summary.select("model", "layers", "neurons", "tokens", "dead", "dead_fraction", "dead_max_layer_fraction",
                       "dead_max_layer", "token_detectors", "tokens_covered", "trigram_detectors", "positional",
                       "oscillatory", "suppressing_fraction", "suppressing_fraction_baseline"),
        ["model", "layers", "neurons", "tokens", "dead", "dead fraction", "max layer dead fraction", "at layer",
         "token detectors", "tokens covered", "trigram detectors", "positional", "oscillatory",
         "detectors suppressing triggers", "baseline"],
        percent=("dead_fraction", "dead_max_layer_fraction", "suppressing_fraction",
                 "suppressing_fraction_baseline"))]  # fmt: skip
    if summary["token_detectors"].sum() == 0:
        body.append(_note("None of these runs has token detectors."))
    if summary["positional"].sum() == 0:
        body.append(_note("None of these runs has positional neurons."))
    for file, heading, fig in figures:
        path = _save(fig, figdir / file)
        body += [f"<h2>{_esc(heading)}</h2>",
                 _figure_html(path, heading, "x: layer / number of layers, so models of different depth line up.",
                              None)]  # fmt: skip
    body.append("<h2>Runs</h2>")
    items = []
    for (d, a), lab in zip(runs, labels):
        link = ""
        if (d / "report.html").exists():
            rel = os.path.relpath(d / "report.html", out)
            link = f' — <a href="{_esc(Path(rel).as_posix())}">report</a>'
        items.append(f"<li><b>{_esc(lab)}</b>: {_esc(run_title(a.metadata, d))} — {_esc(d)}{link}</li>")
    body.append("<ul>" + "".join(items) + "</ul>")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = out / "compare.html"
    page.write_text(_page(f"opt_neurons comparison: {names}", f"{len(runs)} runs on relative depth; written {now}",
                          body), encoding="utf-8")  # fmt: skip
    return page
