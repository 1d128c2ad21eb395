"""A run's headline numbers: the report's first table and one row of `compare`'s summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ..analysis import Analysis
from ..confidence import frequency_upper
from ..tables import KINDS
from .format import (
    KIND_LABELS,
    _int,
    _layer_values,
    _n_neurons_per_layer,
    _num,
    _pct,
    run_date,
    run_time,
    short_name,
)

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
        "low_support_detectors": int(det["low_support"].sum()) if "low_support" in det.columns else None,
        "tokens_covered": len(covered),
        "max_tokens_covered_per_layer": int(l["n_tokens_covered"].max() or 0) if n_layers else 0,  # type: ignore[arg-type]
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
    "low_support_detectors": pl.UInt64,
    "tokens_covered": pl.UInt64, "max_tokens_covered_per_layer": pl.UInt64, "trigram_detectors": pl.UInt64,
    "positional": pl.UInt64, "oscillatory": pl.UInt64, "two_sided": pl.UInt64, "one_sided": pl.UInt64,
    "other_positional": pl.UInt64, "strong_positional": pl.UInt64, "suppressing_fraction": pl.Float64,
    "suppressing_fraction_baseline": pl.Float64,
}  # fmt: skip


def _headline_rows(h: dict, meta: dict) -> list[tuple[str, str]]:
    data = ", ".join(str(s.get("name", s)) if isinstance(s, dict) else str(s) for s in meta.get("data_sources") or [])
    rows = [
        ("Model", f"{h['model_id']}" + (f" @ {h['revision']}" if h["revision"] else "")),
        ("Run date", h["date"] or "not recorded"),
        ("Data", f"{_int(h['tokens'])} tokens"
                 + (f" in {_int(meta['n_sequences'])} sequences" if meta.get("n_sequences") else "")
                 + (f" of up to {_int(meta['T'])} positions" if meta.get("T") else "")
                 + (f" ({data})" if data else "")
                 + (f"; the data ran out: {_int(meta['requested_tokens'])} tokens asked for"
                    if meta.get("data_exhausted") else "")),
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
                         f"{_pct(h['dead_max_layer_fraction'])}"
                         + (f"; a dead neuron fires on under {frequency_upper(np.zeros(1), h['tokens'])[0]:.2g} of "
                            f"tokens (one-sided 95% Clopper-Pearson bound over {_int(h['tokens'])} tokens)"
                            if h["tokens"] else "")),
        ("Mean frequency of live neurons", "n/a" if h["mean_frequency_alive"] is None
         else f"{h['mean_frequency_alive']:.4f}"),
        ("Token detectors", f"{_int(h['token_detectors'])}, covering {_int(h['tokens_covered'])} tokens "
                            f"(at most {_int(h['max_tokens_covered_per_layer'])} in one layer)"),
        *([("Low-support token detectors", f"{_int(h['low_support_detectors'])} (a detected token occurs fewer than "
            f"{(meta.get('thresholds') or {}).get('low_support_count', 5)} times; `low_support` in the neurons table; "
            "`min_count` drops them)")] if h.get("low_support_detectors") else []),
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
