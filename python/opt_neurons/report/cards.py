"""Neuron cards: everything about one neuron from the tables (and its value vector, given the model), and its HTML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

from ..analysis import Analysis
from ..errors import OptNeuronsError
from ..tables import KINDS
from .format import (
    KIND_LABELS,
    _cover_range,
    _data_uri,
    _esc,
    _n_neurons_per_layer,
    _num,
    _pct,
)
from .page import _kv_table, _tok_chip

TOP_K = 10  # top suppressed / promoted tokens on a card
AUTO_LOAD_BYTES = 2 << 30  # write_report(model="auto") loads local weights up to this size (float32)


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
    from ..model import LoadedModel, load_model

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
        "mi_position_bits": _num(r.get("mi_position_bits")),
        "positional_spread": _num(r.get("positional_spread")),
        "low_support": bool(r.get("low_support")),
        "low_support_count": int((analysis.metadata.get("thresholds") or {}).get("low_support_count", 5)),
        # Per named source (METHOD.md "Sources"): {name: activations} and {name: activations / its tokens}
        # (None: the source has no tokens); None when the data names no sources.
        "n_active_by_source": _by_source(r.get("n_active_by_source"), int),
        "frequency_by_source": _by_source(r.get("frequency_by_source"), _num),
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
        from ..suppression import value_scores

        scores = value_scores(model, int(layer), [int(neuron)])[:, 0].float().numpy()
        k = min(top_k, len(scores))
        low = np.argsort(scores, kind="stable")[:k]
        high = np.argsort(-scores, kind="stable")[:k]
        for key, ids in (("top_suppressed", low), ("top_promoted", high)):
            ss = _token_strings(analysis, ids.tolist(), tokenizer)
            card[key] = [{"token": int(t), "string": s, "score": float(scores[t])} for t, s in zip(ids, ss)]
        card["detected_scores"] = [float(scores[t]) for t in detected if t < len(scores)]
    return card


def _by_source(v: dict | None, cast: Any) -> dict | None:
    return None if v is None else {str(k): None if x is None else cast(x) for k, x in v.items()}


def source_frequencies(card: dict) -> str | None:
    """`name frequency (activations), ...` for each named source, or None when the data names none."""
    freq, n = card.get("frequency_by_source"), card.get("n_active_by_source") or {}
    if not freq:
        return None
    parts = []
    for name, f in freq.items():
        count = "" if n.get(name) is None else f" ({n[name]:,})"
        parts.append(f"{name} {'-' if f is None else format(f, '.4g')}{count}")
    return ", ".join(parts)


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
    from ..architectures import decoder_layers, n_neurons
    from ..model import load_tokenizer

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
    import torch

    from ..model import load_model, parameter_bytes, resolve_name

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


def _card_html(card: dict, img: Path | None) -> str:
    badges = []
    if card["dead"]:
        badges.append("dead")
    if card["token_detector"]:
        badges.append("token detector")
    if card.get("low_support"):
        badges.append("low support")
    if card["trigram_detector"]:
        badges.append("trigram detector")
    if card["positional"]:
        kind = KIND_LABELS.get(card["positional_kind"] or "", card["positional_kind"] or "")
        badges.append(f"positional: {'strong ' if card['positional_strong'] else ''}{kind}")
    head = (f'<h3 id="card-L{card["layer"]}-N{card["neuron"]}">Layer {card["layer"]} · neuron {card["neuron"]}'
            + "".join(f'<span class="badge">{_esc(b)}</span>' for b in badges) + "</h3>")  # fmt: skip
    rows = [
        ("activations", f"{card['n_active']:,} (frequency {card['frequency']:.4g})"),
        (
            "k-grams covering 95%",
            ", ".join(
                _cover_range(card[f"cover_{k}"], card[f"cover_{k}_max"]) + f" {name}"
                for k, name in ((1, "tokens"), (2, "bigrams"), (3, "trigrams"))
            ),
        ),
        ("I(act; pos)", "n/a" if card["mi_position"] is None else f"{card['mi_position']:.3f} nats"
         + ("" if card.get("mi_position_bits") is None else f" ({card['mi_position_bits']:.3f} bits)")),
    ]  # fmt: skip
    if card.get("low_support"):
        rows.append(("low support", f"a detected token occurs fewer than {card['low_support_count']} times in the "
                     "data (so few occurrences make the 95% hit rate easy to reach)"))  # fmt: skip
    by_source = source_frequencies(card)
    if by_source:
        rows.append(("frequency by source", f"{by_source} (activations on a source's tokens / its tokens)"))
    if card["positional"] and card.get("positional_spread") is not None:
        rows.append(("curve spread", f"{card['positional_spread']:.3f} (median |fr(p) − smoothed fr(p)|; an "
                     "`other` curve is strong, thin, at most 0.02)"))  # fmt: skip
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
        parts.append('<p class="sub">Not positional: its fr(p) curve is not stored.</p>')
    return '<div class="card">' + "".join(parts) + "</div>"
