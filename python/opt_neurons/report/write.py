"""`write_report`: one run's figures and page."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..analysis import Analysis
from ..outdir import check_writable
from .cards import _card_html, _resolve_model, default_cards, neuron_card
from .figures import (
    fig_coverage,
    fig_coverage_all_layers,
    fig_dead_frequency,
    fig_suppression,
    fig_token_detectors,
    fig_trigram_detectors,
    fig_value_tokens,
)
from .format import _esc, _save, run_title
from .headline import _headline_rows, headline
from .neuron_pages import FOLDER, MAX_PAGES, page_name, select_neurons, write_neuron_pages
from .page import _df_table, _figure_html, _kv_table, _note, _page
from .positional_figures import fig_card_curve, fig_positional_curves, fig_positional_heatmaps, fig_positional_per_layer
from .source_figures import fig_dead_by_source, flat_layers

FIGURE_FILES = (
    "fig1_dead_frequency.png",
    "fig2_coverage.png",
    "fig2_coverage_all_layers.png",
    "fig3_token_detectors.png",
    "fig5_value_tokens.png",
    "fig6_suppression.png",
    "fig7_positional_per_layer.png",
    "fig8_positional_curves.png",
    "fig9_positional_heatmaps.png",
    "fig14_trigram_detectors.png",
    "fig_dead_by_source.png",
)


@dataclass
class _Section:
    heading: str
    file: str
    caption: str
    draw: Any
    fold: str | None = None  # drawn folded (a <details> block with this summary) under the previous section
    model: bool = False  # draw(analysis, title, model, tokenizer)


SECTIONS = (
    _Section("Dead neurons and activation frequency (paper Figure 1)", "fig1_dead_frequency.png",
             "Left: share of each layer's neurons that never fire on the data. Right: mean activation frequency "
             "of the live neurons (fraction of tokens on which a neuron fires: the firing rule above).",
             fig_dead_frequency),
    _Section("n-gram coverage, first half of the network (Figures 2, 12, 13)", "fig2_coverage.png",
             "How many distinct unigrams / bigrams / trigrams it takes to cover 95% of a live neuron's activations "
             "(BOS positions left out), over the live neurons of the first half of the layers, as the paper shows "
             "them. Neurons with 0 fire only at BOS.", fig_coverage),
    _Section("n-gram coverage, all layers", "fig2_coverage_all_layers.png",
             "The same over the live neurons of every layer.", fig_coverage_all_layers,
             fold="All layers (click to show)"),
    _Section("Token detectors and the tokens they cover (Figures 3-4)", "fig3_token_detectors.png",
             "Left: token and trigram detectors per layer. Right: tokens covered by each layer's token detectors, "
             "of those how many no detector of the previous layer covers, and how many no earlier layer covers.",
             fig_token_detectors),
    _Section("Top promoted and suppressed tokens of token detectors (Figure 5)", "fig5_value_tokens.png",
             "For the token detectors with the most activations: the tokens their value vector promotes most "
             "(blue) and suppresses most (red) against the unembedding, s_t = W_U[t] · v; ★ marks the neuron's "
             "own detected tokens.", fig_value_tokens, model=True),
    _Section("Do detectors suppress their triggers? (Figure 6)", "fig6_suppression.png",
             "Share of each layer's token detectors whose value vector scores their own tokens negatively against "
             "the unembedding, beside the same share for random live non-detector neurons of the layer scored on "
             "the same tokens. The paper finds over 80% of detectors suppress their triggers.", fig_suppression),
    _Section("Trigram detectors and the trigrams they cover (Figures 14-15)", "fig14_trigram_detectors.png",
             "Left: trigram detectors per layer and cumulative. Right: trigrams covered by each layer's trigram "
             "detectors, of those how many no detector of the previous layer covers, and how many no earlier "
             "layer covers.", fig_trigram_detectors),
    _Section("Positional neurons per layer (Figure 7)", "fig7_positional_per_layer.png",
             "Neurons whose activation carries more than 0.05 nats (0.072 bits) of information about the "
             "position, stacked by kind (METHOD.md's rule on the smoothed fr(p)).", fig_positional_per_layer),
    _Section("Position curves of the strongest positional neurons (Figure 8)", "fig8_positional_curves.png",
             "fr(p): activations at position p / tokens at position p, coloured by kind.", fig_positional_curves),
    _Section("All positional neurons by layer (Figure 9)", "fig9_positional_heatmaps.png",
             "Each row one positional neuron's fr(p), sorted by where it peaks: oscillatory neurons that tile the "
             "positions show as a staircase (grey: no token at that position).", fig_positional_heatmaps),
    _Section("Dead neurons per source (issue 19)", "fig_dead_by_source.png",
             "Share of each layer's neurons that never fire on the tokens of one named source of the data (the "
             "bundled corpus's parts, a folder's files, a dataset's source column), beside the share dead on all "
             "of it. A source with fewer tokens leaves more neurons unfired by chance alone.", fig_dead_by_source),
)  # fmt: skip


def _clean(figdir: Path, names: Iterable[str]) -> None:
    """Remove the figures an earlier report wrote, so none are left stale."""
    for name in names:
        (figdir / name).unlink(missing_ok=True)
    for f in figdir.glob("card_L*_N*.png"):
        f.unlink()


def write_report(analysis: Analysis, out: str | Path, *, cards: Sequence[tuple[int, int]] | None = None,
                 model: Any = "auto", tokenizer: Any = None, data: Any = None,
                 max_neuron_pages: int = MAX_PAGES) -> Path:  # fmt: skip
    """Write `out/figures/*.png` and the self-contained page `out/report.html`; return the page's path.

    cards: the (layer, neuron)s to describe (default `default_cards`).
    model: for the cards' top suppressed / promoted tokens: a loaded OPT model, a path / hub id, None,
        or "auto" (the run's model when its weights are on this machine and take at most 2 GiB).
    data: the run's data, for the neuron pages' example contexts (default: kept by analyze(), or the
        bundled corpus / the run's one file); max_neuron_pages: at most this many neuron pages (0: none).
    """
    out = Path(out)
    check_writable(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    _clean(figdir, FIGURE_FILES)
    meta = analysis.metadata
    title = run_title(meta)
    h = headline(analysis)
    body = ["<h2>Headline numbers</h2>", _kv_table(_headline_rows(h, meta))]
    selected = list(cards) if cards is not None else default_cards(analysis)
    model_obj, tok, note = None, tokenizer, None
    if selected or max_neuron_pages or analysis.neurons["token_detector"].any():
        model_obj, tok, note = _resolve_model(analysis, model, tokenizer)
    for s in SECTIONS:
        fig, fig_note = s.draw(analysis, title, model_obj, tok) if s.model else s.draw(analysis, title)
        if s.model and fig is None and fig_note is None:
            fig_note = note
        path = _save(fig, figdir / s.file) if fig is not None else None
        html = _figure_html(path, s.heading, s.caption, fig_note)
        if s.fold:
            body.append(f"<details><summary>{_esc(s.fold)}</summary>{html}</details>")
        else:
            body += [f"<h2>{_esc(s.heading)}</h2>", html]

    body.append("<h2>Neuron cards</h2>")
    paged: set = set()
    if max_neuron_pages:
        index = write_neuron_pages(analysis, out, model=model_obj, tokenizer=tok, data=data, max_pages=max_neuron_pages)
        if index is not None:
            paged = set(select_neurons(analysis, max_neuron_pages).select("layer", "neuron").iter_rows())
            body.append(f'<p>A page per neuron with its example contexts: <a href="{FOLDER}/index.html">neuron '
                        f"pages</a> ({len(paged):,}; filter by layer, kind and token).</p>")  # fmt: skip
    if not selected:
        body.append(_note("No token detectors or positional neurons to describe."))
    else:
        if note:
            body.append(_note(note))
        html_cards = []
        for layer, neuron in selected:
            card = neuron_card(analysis, layer, neuron, model_obj, tok)
            fig = fig_card_curve(card)
            img = _save(fig, figdir / f"card_L{layer}_N{neuron}.png") if fig is not None else None
            html = _card_html(card, img)
            if (layer, neuron) in paged:
                html = html.replace("</h3>", f' <a href="{FOLDER}/{page_name(layer, neuron)}">page</a></h3>', 1)
            html_cards.append(html)
        body.append('<div class="cards">' + "\n".join(html_cards) + "</div>")

    body.append("<h2>Per layer</h2>")
    body.append(_df_table(flat_layers(analysis.layers)) if analysis.layers.height else _note("The run has no layers."))
    body.append("<details><summary>Thresholds and run metadata</summary>")
    shown_meta = {k: v for k, v in meta.items() if k not in ("position_totals",)}
    body.append(f"<pre>{_esc(json.dumps(shown_meta, indent=2, sort_keys=True, default=str))}</pre></details>")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from .._core import __version__

    ran = meta.get("package_version")
    versions = f"run with opt_neurons {ran}, " if ran and ran != __version__ else ""
    subtitle = (f"Dead, n-gram and positional neurons (Voita et al. 2023); {versions}report written {now} "
                f"by opt_neurons {__version__}")  # fmt: skip
    page = out / "report.html"
    page.write_text(_page(f"opt_neurons report: {title}", subtitle, body), encoding="utf-8")
    return page
