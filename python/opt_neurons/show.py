"""`opt-neurons show RUN LAYER NEURON`: one neuron's card in the terminal, with its example contexts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from .analysis import Analysis

BUNDLED = "opt_neurons bundled corpus"
ANSI = ("\x1b[1;30;43m", "\x1b[0m")  # bold black on yellow
BRACKETS = ("[[", "]]")


def run_data(meta: dict) -> tuple[Any, str | None]:
    """The data a saved run can be rendered from without being told: (data, None), or (None, why not)."""
    sources = meta.get("data_sources") or []
    names = [s.get("name") for s in sources]
    if names == [BUNDLED]:
        return None, None
    if len(names) == 1 and names[0] and Path(names[0]).is_file():
        return names[0], None
    return None, "pass --data (what the run analysed) to see the examples' contexts"


def kind_of(r: dict) -> str:
    kinds = []
    if r["dead"]:
        return "dead"
    if r["token_detector"]:
        kinds.append("token detector (low support)" if r.get("low_support") else "token detector")
    if r.get("trigram_detector"):
        kinds.append("trigram detector")
    if r.get("positional"):
        kinds.append(f"positional ({r.get('positional_kind')}{', strong' if r.get('positional_strong') else ''})")
    return ", ".join(kinds) or "no detector or positional rule met"


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def card_text(a: Analysis, layer: int, neuron: int, *, model: Any = "auto", data: Any = None, context: int = 12,
              color: bool = False) -> str:  # fmt: skip
    """The card as text: statistics, kind, detected tokens, suppression, top promoted / suppressed tokens
    (when the model's weights are at hand) and the example contexts, firing token highlighted."""
    from .report.cards import _resolve_model, neuron_card, source_frequencies

    model_obj, tok, note = _resolve_model(a, model, None)
    c = neuron_card(a, layer, neuron, model_obj, tok)
    r = a.neurons.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron)).row(0, named=True)
    lines = [f"{a.metadata.get('model_id')} layer {layer} neuron {neuron}: {kind_of(r)}",
             f"  fires on {c['n_active']:,} tokens (frequency {c['frequency']:.4g}); activation when firing: "
             f"max {_fmt(r.get('max_activation'))}, mean {_fmt(r.get('mean_activation'))}",
             f"  coverage (95% of activations): {c['cover_1']} tokens, {c['cover_2']} bigrams, {c['cover_3']} trigrams"]  # fmt: skip
    by_source = source_frequencies(c)
    if by_source:
        lines.append(f"  frequency by source (activations): {by_source}")
    if c["mi_position"] is not None:
        bits = "" if c["mi_position_bits"] is None else f" ({c['mi_position_bits']:.4g} bits)"
        lines.append(f"  I(act; pos): {c['mi_position']:.4g} nats{bits}")
    if c["low_support"]:
        lines.append(f"  low support: a detected token occurs fewer than {c['low_support_count']} times in the data")
    if c["detected"]:
        lines.append("  detected tokens: " + ", ".join(repr(d["string"]) for d in c["detected"]))
    if c["suppression_score"] is not None:
        lines.append(f"  suppression: mean score {c['suppression_score']:.4g} of its tokens "
                     f"({'suppresses' if c['suppresses_triggers'] else 'does not suppress'} them)")  # fmt: skip
    if c["active_intervals"]:
        lines.append("  active positions: " + ", ".join(f"[{i['start']}, {i['end']})" for i in c["active_intervals"]))
    for key, label in (("top_suppressed", "top suppressed"), ("top_promoted", "top promoted")):
        if c[key]:
            lines.append(f"  {label}: " + ", ".join(repr(t["string"]) for t in c[key]))
    if note and not c["top_suppressed"]:
        lines.append(f"  ({note})")
    lines += _examples_text(a, layer, neuron, data, context, ANSI if color else BRACKETS)
    return "\n".join(lines)


def _examples_text(a: Analysis, layer: int, neuron: int, data: Any, context: int, mark: tuple[str, str]) -> list[str]:
    from .contexts import neuron_examples

    if a.example_table is None:
        return ["  (no examples: the run had examples=0)"]
    rows = neuron_examples(a.example_table, layer, neuron)
    if rows.height == 0:
        return ["  (no examples: the neuron never fired on the detail tokens)"]
    why = None
    if data is None and a._data is None:
        data, why = run_data(a.metadata)
    if why:
        return [f"  ({rows.height} examples; {why})"]
    ctx = a.examples(layer, neuron, context=context, data=data)
    out = []
    for kind, label in (("top", "top examples by activation"), ("random", "random examples")):
        sub = ctx.filter(pl.col("kind") == kind)
        if sub.height:
            out.append(f"  {label}:")
        for r in sub.iter_rows(named=True):
            text = (r["left"] + mark[0] + r["token_string"] + mark[1] + r["right"]).replace("\n", "\u21b5")
            out.append(f"    {_fmt(r['value'], '8.3f') if r['value'] is not None else '       -'}  "
                       f"seq {r['sequence']:>6} pos {r['position']:>5}  {text}")  # fmt: skip
    return out
