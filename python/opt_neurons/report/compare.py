"""`compare`: several runs overlaid on relative depth, with a summary table."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ..analysis import Analysis, load
from ..errors import OptNeuronsError
from ..outdir import check_writable
from .format import _esc, _figure, _layer_values, _pct, _save, run_title, short_name
from .headline import SUMMARY_SCHEMA, headline
from .page import _df_table, _figure_html, _note, _page

COMPARE_FILES = ("compare_dead.png", "compare_frequency.png", "compare_token_detectors.png", "compare_positional.png")


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
    check_writable(out)
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
