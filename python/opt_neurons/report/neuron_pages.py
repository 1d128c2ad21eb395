"""A page per neuron (its card and example contexts, the firing token highlighted) and one index page that
filters them by layer, kind and token: `out/neurons/index.html`, `out/neurons/L<layer>_N<neuron>.html`.

Context tokens are shaded by their own activations when the model is at hand and the examples' sequences
hold at most `token_activations.MAX_TOKENS` tokens (one more forward pass over them); else only the
firing token, by its value (random examples: a fixed shade).

Which neurons get a page: every token detector, trigram detector and positional neuron, then a seeded
sample of the other live neurons, at most `max_pages` in all (detectors first, most active first). A page
holds at most 2 k examples of ~17 tokens: 20-40 kB (the demo's: 23 kB, 39 kB with every token shaded), so
the 2,000-page default is 40-80 MB; OPT-66b's 5,351 token detectors alone would be 110-210 MB and an index of
5 k rows, hence the cap (raise it with write_report(max_neuron_pages=...)).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from ..analysis import Analysis
from ..contexts import AFTER, context_table
from .cards import _card_html, neuron_card
from .format import _esc
from .page import _note, _page
from .token_activations import window_activations

MAX_PAGES = 2000
N_OTHERS = 100  # live neurons that are neither detectors nor positional, drawn at random
CONTEXT = 12
FOLDER = "neurons"

CSS = """
.ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;margin:.15em 0;
padding:.2em .4em;border-bottom:1px solid #f0f0f0}.ctx .t{border-radius:2px}.ctx .fire{outline:1px solid #c60}
.val{display:inline-block;width:5.5em;color:#555;text-align:right;margin-right:.8em}
.filters{display:flex;gap:1em;margin:.8em 0}.filters label{font-size:.9em}
"""

FILTER_JS = """
(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('#neurons tbody tr'));
  var layer = document.getElementById('f-layer'), kind = document.getElementById('f-kind'),
      token = document.getElementById('f-token'), count = document.getElementById('f-count');
  function apply(){
    var l = layer.value, k = kind.value, t = token.value.toLowerCase(), shown = 0;
    rows.forEach(function(r){
      var ok = (l === '' || r.dataset.layer === l) && (k === '' || r.dataset.kinds.split(' ').indexOf(k) >= 0) &&
               (t === '' || r.dataset.tokens.toLowerCase().indexOf(t) >= 0);
      r.style.display = ok ? '' : 'none';
      if (ok) shown += 1;
    });
    count.textContent = shown + ' of ' + rows.length + ' neurons';
  }
  [layer, kind, token].forEach(function(e){ e.addEventListener('input', apply); });
  apply();
})();
"""


def page_name(layer: int, neuron: int) -> str:
    return f"L{layer}_N{neuron}.html"


def kinds_of(r: dict) -> list[str]:
    out = [k for k, col in (("token", "token_detector"), ("trigram", "trigram_detector"), ("positional", "positional"))
           if r.get(col)]  # fmt: skip
    return out or (["dead"] if r["dead"] else ["other"])


def select_neurons(a: Analysis, max_pages: int = MAX_PAGES, n_others: int = N_OTHERS, seed: int = 0) -> pl.DataFrame:
    """The neurons that get a page (see the module's docstring)."""
    n = a.neurons
    special = n.filter(pl.col("token_detector") | pl.col("trigram_detector") | pl.col("positional"))
    special = special.sort(["token_detector", "trigram_detector", "n_active"], descending=True)
    others = n.filter(~pl.col("dead") & ~pl.col("token_detector") & ~pl.col("trigram_detector") & ~pl.col("positional"))
    others = others.sample(min(n_others, others.height), seed=seed) if others.height else others
    return pl.concat([special, others]).head(max_pages).sort("layer", "neuron")


def _shade(value: float | None, top: float | None) -> float:
    return 0.6 if value is None or not top else max(0.0, min(1.0, value / top))


def _context_html(r: dict, top: float | None, acts: list[float] | None = None) -> str:
    """One example: its tokens as spans shaded by their activation's share of the neuron's largest
    (`acts`: every token's, from the model; else the firing token's own value, and a fixed shade for
    random examples, whose value the host never sees). The firing token is outlined."""
    spans = []
    for i, s in enumerate(r["tokens"]):
        value = acts[i] if acts is not None else (r["value"] if i == r["firing_index"] else None)
        title = f' title="{value:.3f}"' if value is not None else ""
        if i == r["firing_index"]:
            share = max(0.15, _shade(value, top))
            spans.append(f'<span class="t fire" style="background:rgba(255,120,0,{share:.2f})" '
                         f'title="position {r["position"]}, token {r["token"]}'
                         f'{"" if value is None else f", {value:.3f}"}">{_esc(s)}</span>')  # fmt: skip
        elif value is not None and value > 0:
            spans.append(f'<span class="t" style="background:rgba(255,120,0,{_shade(value, top):.2f})"{title}>'
                         f"{_esc(s)}</span>")  # fmt: skip
        else:
            spans.append(f'<span class="t"{title}>{_esc(s)}</span>')
    value = "" if r["value"] is None else f"{r['value']:.3f}"
    return (f'<div class="ctx"><span class="val" title="sequence {r["sequence"]}, position {r["position"]}">'
            f"{value}</span>{''.join(spans)}</div>")  # fmt: skip


def write_neuron_pages(a: Analysis, out: Path, *, model: Any = None, tokenizer: Any = None, data: Any = None,
                       max_pages: int = MAX_PAGES) -> Path | None:  # fmt: skip
    """Write the pages and the index into `out/neurons/`; returns the index (None: no neuron to show)."""
    chosen = select_neurons(a, max_pages)
    if chosen.height == 0:
        return None
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("L*_N*.html"):
        old.unlink()
    note, tokens = None, None
    if a.example_table is None:
        note = "This run kept no examples (examples=0)."
    else:
        try:
            from ..show import run_data

            if data is None and a._data is None:
                data, why = run_data(a.metadata)
                if why:
                    raise LookupError(why)
            tokens, tokenizer = a.context_data(data, tokenizer)
        except (LookupError, ValueError) as e:  # DataMismatchError and others are ValueErrors
            note = f"Example contexts are not shown: {e}."
    examples = None
    if tokens is not None and a.example_table is not None:
        examples = a.example_table.join(chosen.select("layer", "neuron"), on=["layer", "neuron"], how="semi")
        examples = examples.sort("layer", "neuron", pl.col("kind") == "random", "rank")
    cache: dict = {}
    acts = window_activations(model, tokens, examples, CONTEXT, AFTER) if examples is not None else None
    by_neuron = examples.partition_by("layer", "neuron", as_dict=True) if examples is not None else {}
    rows = []
    for r in chosen.iter_rows(named=True):
        layer, neuron = int(r["layer"]), int(r["neuron"])
        card = neuron_card(a, layer, neuron, model, tokenizer)
        body = ['<p><a href="index.html">All neuron pages</a> · <a href="../report.html">Report</a></p>',
                _card_html(card, None).replace('<div class="card">', '<div class="card" style="max-width:900px">')]  # fmt: skip
        stats = [f"max activation {r['max_activation']:.4g}" if r.get("max_activation") is not None else None,
                 f"mean {r['mean_activation']:.4g}" if r.get("mean_activation") is not None else None]  # fmt: skip
        if any(stats):
            body.append(f"<p>When firing: {_esc(', '.join(s for s in stats if s))}.</p>")
        if note:
            body.append(_note(note))
        ex = by_neuron.get((layer, neuron))
        if ex is not None and tokens is not None:
            ctx = context_table(ex, tokens, tokenizer, CONTEXT, cache=cache)
            for kind, label in (("top", "Top examples by activation"), ("random", "Random examples")):
                sub = ctx.filter(pl.col("kind") == kind)
                if sub.height:
                    body.append(f"<h2>{label}</h2>")
                    body += [_context_html(x, r.get("max_activation"), None if acts is None else
                                           acts.get((layer, neuron, x["sequence"], x["position"])))
                             for x in sub.iter_rows(named=True)]  # fmt: skip
        elif tokens is not None:
            body.append(_note("No examples: the neuron never fired on the detail tokens."))
        title = f"Layer {layer} neuron {neuron}"
        html = _page(title, str(a.metadata.get("model_id", "")), body).replace("</style>", CSS + "</style>")
        (folder / page_name(layer, neuron)).write_text(html, encoding="utf-8")
        detected = [s for s in (r.get("detected_strings") or []) if s is not None]
        rows.append((layer, neuron, kinds_of(r), int(r["n_active"]), r["frequency"], r.get("max_activation"), detected))
    return _write_index(a, folder, rows, note)


def _write_index(a: Analysis, folder: Path, rows: list, note: str | None) -> Path:
    layers = sorted({r[0] for r in rows})
    kinds = ["token", "trigram", "positional", "other"]
    trs = []
    for layer, neuron, kind, n_active, freq, mx, detected in rows:
        toks = " ".join(detected)
        trs.append(f'<tr data-layer="{layer}" data-kinds="{_esc(" ".join(kind))}" data-tokens="{_esc(toks)}">'
                   f'<td><a href="{page_name(layer, neuron)}">L{layer} N{neuron}</a></td><td>{_esc(", ".join(kind))}</td>'
                   f'<td class="n">{n_active:,}</td><td class="n">{freq:.4f}</td>'
                   f'<td class="n">{"" if mx is None else f"{mx:.3f}"}</td>'
                   f'<td>{_esc(json.dumps(detected, ensure_ascii=False)[1:-1])}</td></tr>')  # fmt: skip
    body = [
        f"<p>{len(rows):,} neuron pages: every token detector, trigram detector and positional neuron, and a random "
        f"sample of {N_OTHERS} other live neurons, at most {MAX_PAGES:,} pages. <a href=\"../report.html\">Report</a></p>",
        '<div class="filters"><label>layer <select id="f-layer"><option value="">all</option>'
        + "".join(f'<option value="{l}">{l}</option>' for l in layers) + "</select></label>"
        '<label>kind <select id="f-kind"><option value="">all</option>'
        + "".join(f'<option value="{k}">{k}</option>' for k in kinds) + "</select></label>"
        '<label>token <input id="f-token" type="search" placeholder="detected token"></label>'
        '<span id="f-count"></span></div>',
        '<table id="neurons"><thead><tr><th>neuron</th><th>kind</th><th>activations</th><th>frequency</th>'
        "<th>max activation</th><th>detected tokens</th></tr></thead><tbody>" + "".join(trs) + "</tbody></table>",
        f"<script>{FILTER_JS}</script>",
    ]  # fmt: skip
    if note:
        body.insert(1, _note(note))
    index = folder / "index.html"
    title = f"Neuron pages: {a.metadata.get('model_id', '')}"
    index.write_text(_page(title, "Filter by layer, kind and detected token", body).replace("</style>", CSS + "</style>"),
                     encoding="utf-8")  # fmt: skip
    return index
