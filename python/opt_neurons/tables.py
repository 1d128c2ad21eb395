"""Assemble the Rust core's columns into the polars tables of METHOD.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .confidence import frequency_upper
from .params import Thresholds
from .stats import NeuronStats

INTERVAL = pl.Struct({"start": pl.UInt32, "end": pl.UInt32})
KINDS = ("oscillatory", "two_sided", "one_sided", "other")


@dataclass
class Tables:
    neurons: pl.DataFrame
    layers: pl.DataFrame
    tokens: pl.DataFrame
    positions: pl.DataFrame


def ragged(values: np.ndarray, offsets: np.ndarray, present: np.ndarray) -> list:
    """Python lists per row from flat values + offsets; None where `present` is False."""
    out: list = [None] * len(present)
    for i in np.flatnonzero(present):
        out[i] = values[offsets[i] : offsets[i + 1]].tolist()
    return out


def decode_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([t]) for t in ids]


def build_tables(stats: NeuronStats, *, tokenizer: Any = None, model: Any = None, materialize: Any = None,
                 source_names: list[str] | None = None, **thresholds: Any) -> Tables:  # fmt: skip
    """The `neurons`, `layers`, `tokens` and `positions` tables of the counted statistics.

    tokenizer: fills `detected_strings`; model: fills the suppression columns (materialize: a context
    manager factory putting layer i's weights on a device, for streamed models). source_names: the names of
    the sources the statistics count apart (the per-source columns; default "source_0", ...). thresholds: any
    field of `Thresholds`."""
    t = Thresholds.from_overrides(thresholds)
    f = stats.finalize(**thresholds)
    n = len(f["layer"])
    det = f["token_detector"]
    tri = f["trigram_detector"]
    pos = f["positional"]
    detected = ragged(f["detected_tokens"], f["detected_tokens_offsets"], det)
    trigrams_flat = f["detected_trigrams"].reshape(-1, 3)
    trigrams = ragged(trigrams_flat, f["detected_trigrams_offsets"], tri)
    starts = ragged(f["interval_start"], f["intervals_offsets"], pos)
    ends = ragged(f["interval_end"], f["intervals_offsets"], pos)
    intervals = [None if s is None else [{"start": a, "end": b} for a, b in zip(s, e)] for s, e in zip(starts, ends)]
    occ = stats.token_occurrences()
    # A token detector is low-support when one of its covered tokens occurs fewer than low_support_count times.
    low_support = [None if d is None else bool(d) and int(occ[d].min()) < t.low_support_count for d in detected]
    strings: list[list[str] | None] = [None] * n
    if tokenizer is not None:
        strings = [None if d is None else decode_tokens(tokenizer, d) for d in detected]
    neurons = pl.DataFrame(
        {
            "layer": pl.Series(f["layer"], dtype=pl.UInt16),
            "neuron": pl.Series(f["neuron"], dtype=pl.UInt32),
            "n_active": pl.Series(f["n_active"], dtype=pl.UInt64),
            "frequency": f["frequency"],
            "frequency_upper": frequency_upper(f["n_active"], stats.rows),
            "dead": f["dead"],
            "cover_1": pl.Series(f["cover_1"], dtype=pl.UInt32),
            "cover_2": pl.Series(f["cover_2"], dtype=pl.UInt32),
            "cover_3": pl.Series(f["cover_3"], dtype=pl.UInt32),
            "cover_1_max": pl.Series(f["cover_1_max"], dtype=pl.UInt32),
            "cover_2_max": pl.Series(f["cover_2_max"], dtype=pl.UInt32),
            "cover_3_max": pl.Series(f["cover_3_max"], dtype=pl.UInt32),
            "token_detector": det,
            "detected_tokens": pl.Series(detected, dtype=pl.List(pl.UInt32)),
            "detected_strings": pl.Series(strings, dtype=pl.List(pl.String)),
            "low_support": pl.Series(low_support, dtype=pl.Boolean),
            "trigram_detector": tri,
            "detected_trigrams": pl.Series(trigrams, dtype=pl.List(pl.List(pl.UInt32))),
            "mi_position": f["mi_position"],
            "mi_position_bits": f["mi_position"] / np.log(2.0),
            "positional": pos,
            "positional_kind": pl.Series([k or None for k in f["positional_kind"]], dtype=pl.String),
            "positional_strong": f["positional_strong"],
            "positional_spread": pl.Series(f["positional_spread"], dtype=pl.Float64).fill_nan(None),
            "active_intervals": pl.Series(intervals, dtype=pl.List(INTERVAL)),
        }
    )
    if model is not None:
        from .suppression import suppression_columns

        neurons = neurons.hstack(suppression_columns(model, neurons, t, materialize))
    else:
        neurons = neurons.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("suppression_score"),
            pl.lit(None, dtype=pl.Boolean).alias("suppresses_triggers"),
            pl.lit(None, dtype=pl.List(pl.UInt32)).alias("detected_token_ranks"),
            pl.lit(None, dtype=pl.Float64).alias("suppression_baseline"),
        )
    if stats.n_sources:
        neurons = neurons.hstack(source_columns(stats, source_names))
    return Tables(
        neurons=neurons,
        layers=layers_table(neurons),
        tokens=tokens_table(neurons, stats, tokenizer),
        positions=positions_table(neurons, stats),
    )


def layers_table(neurons: pl.DataFrame) -> pl.DataFrame:
    kind = pl.col("positional_kind")
    per_layer = (
        neurons.group_by("layer", maintain_order=True)
        .agg(
            pl.len().cast(pl.UInt32).alias("n_neurons"),
            pl.col("dead").sum().cast(pl.UInt32).alias("n_dead"),
            pl.col("dead").mean().alias("dead_fraction"),
            pl.col("frequency").filter(~pl.col("dead")).mean().alias("mean_frequency_alive"),
            pl.col("token_detector").sum().cast(pl.UInt32).alias("n_token_detectors"),
            pl.col("trigram_detector").sum().cast(pl.UInt32).alias("n_trigram_detectors"),
            pl.col("positional").sum().cast(pl.UInt32).alias("n_positional"),
            (kind == "oscillatory").sum().cast(pl.UInt32).alias("n_oscillatory"),
            (kind == "two_sided").sum().cast(pl.UInt32).alias("n_two_sided"),
            (kind == "one_sided").sum().cast(pl.UInt32).alias("n_one_sided"),
            (kind == "other").sum().cast(pl.UInt32).alias("n_other_positional"),
            pl.col("suppresses_triggers").filter(pl.col("token_detector")).mean().alias("suppressing_fraction"),
            pl.col("suppression_baseline")
            .filter(pl.col("token_detector"))
            .mean()
            .alias("suppressing_fraction_baseline"),
        )
        .sort("layer")
    )
    tokens = neurons.filter(pl.col("token_detector")).select("layer", "detected_tokens").iter_rows()
    trigrams = neurons.filter(pl.col("trigram_detector")).select("layer", "detected_trigrams").iter_rows()
    layers = per_layer["layer"].to_list()
    cols = [
        *_covered_per_layer(layers, ((l, t) for l, t in tokens), "tokens"),
        *_covered_per_layer(layers, ((l, map(tuple, g)) for l, g in trigrams), "trigrams"),
    ]
    order = [
        "layer", "n_neurons", "n_dead", "dead_fraction", "mean_frequency_alive", "n_token_detectors",
        "n_trigram_detectors", "n_tokens_covered", "n_new_tokens_vs_previous", "n_new_tokens_overall",
        "n_trigrams_covered", "n_new_trigrams_vs_previous", "n_new_trigrams_overall",
        "n_positional", "n_oscillatory", "n_two_sided", "n_one_sided", "n_other_positional",
        "suppressing_fraction", "suppressing_fraction_baseline",
    ]  # fmt: skip
    if "n_active_by_source" in neurons.columns:
        cols.append(dead_by_source(neurons))
        order.append("dead_fraction_by_source")
    return per_layer.with_columns(cols).select(order)


def _covered_per_layer(layers: list[int], detected: Any, what: str) -> list[pl.Series]:
    """n_{what}_covered (the union of a layer's detectors' covered k-grams), and how many of those the
    previous layer / every earlier layer does not cover; detected: (layer, covered k-grams) pairs."""
    by_layer: dict[int, set] = {}
    for layer, grams in detected:
        by_layer.setdefault(layer, set()).update(grams)
    covered, new_prev, new_all = [], [], []
    seen: set = set()
    previous: set = set()
    for layer in layers:
        s = by_layer.get(layer, set())
        covered.append(len(s))
        new_prev.append(len(s - previous))
        new_all.append(len(s - seen))
        previous = s
        seen |= s
    return [
        pl.Series(f"n_{what}_covered", covered, dtype=pl.UInt32),
        pl.Series(f"n_new_{what}_vs_previous", new_prev, dtype=pl.UInt32),
        pl.Series(f"n_new_{what}_overall", new_all, dtype=pl.UInt32),
    ]


def source_columns(stats: NeuronStats, names: list[str] | None) -> pl.DataFrame:
    """`n_active_by_source` (struct of UInt64) and `frequency_by_source` (struct of Float64), one field per
    source in the order of `names`: activations of the neuron on that source's tokens, and / its tokens."""
    n = stats.n_sources
    names = list(names) if names else [f"source_{s}" for s in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} source names for the {n} sources the statistics count")
    counts = np.concatenate([stats.source_counts(layer).T for layer in range(stats.config["n_layers"])])
    rows = stats.source_rows().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(rows > 0, counts / rows, np.nan)
    n_active = pl.DataFrame({name: pl.Series(counts[:, s], dtype=pl.UInt64) for s, name in enumerate(names)})
    frequency = pl.DataFrame({name: freq[:, s] for s, name in enumerate(names)})
    return pl.DataFrame([n_active.to_struct("n_active_by_source"), frequency.to_struct("frequency_by_source")])


def dead_by_source(neurons: pl.DataFrame) -> pl.Series:
    """`dead_fraction_by_source` of each layer (in layer order): the share of its neurons that never fire on
    a source's tokens, one struct field per source."""
    names = [f.name for f in neurons.schema["n_active_by_source"].fields]  # type: ignore[attr-defined]
    by = pl.col("n_active_by_source").struct
    per_layer = (
        neurons.group_by("layer", maintain_order=True)
        .agg([(by.field(name) == 0).mean().alias(f"_{i}") for i, name in enumerate(names)])
        .sort("layer")
    )
    fields = [pl.col(f"_{i}").alias(name) for i, name in enumerate(names)]
    return per_layer.select(pl.struct(fields).alias("dead_fraction_by_source")).to_series()


def tokens_table(neurons: pl.DataFrame, stats: NeuronStats, tokenizer: Any) -> pl.DataFrame:
    """One row per token covered by some token detector: who detects it and how common it is."""
    occ = stats.token_occurrences()
    counted = max(int(occ.sum()), 1)
    pairs = (
        neurons.filter(pl.col("token_detector"))
        .select("layer", "neuron", pl.col("detected_tokens").alias("token"))
        .explode("token")
    )
    grouped = (
        pairs.group_by("token")
        .agg(
            pl.col("layer").unique().sort().alias("layers"),
            pl.struct("layer", "neuron").sort_by("layer", "neuron").alias("detectors"),
        )
        .sort("token")
    )
    ids = grouped["token"].to_list()
    return grouped.with_columns(
        pl.Series(
            "string", decode_tokens(tokenizer, ids) if tokenizer is not None else [None] * len(ids), dtype=pl.String
        ),
        pl.Series("n_occurrences", occ[ids] if ids else [], dtype=pl.UInt64),
        pl.Series("frequency", (occ[ids] / counted) if ids else [], dtype=pl.Float64),
        pl.col("detectors").list.len().cast(pl.UInt32).alias("n_detectors"),
    ).select("token", "string", "n_occurrences", "frequency", "n_detectors", "layers", "detectors")


def positions_table(neurons: pl.DataFrame, stats: NeuronStats) -> pl.DataFrame:
    """fr(p) of every positional neuron: `fr[p]` = activations at position p / tokens at p
    (NaN where the data has no token at p), p = 0 .. last position seen."""
    totals = stats.position_totals().astype(np.float64)
    last = int(np.flatnonzero(totals)[-1]) + 1 if totals.any() else 0
    rows = neurons.filter(pl.col("positional")).select("layer", "neuron", "positional_kind")
    counts = np.zeros((rows.height, last), dtype=np.float64)
    for i, (layer, neuron, _) in enumerate(rows.iter_rows()):
        counts[i] = stats.position_counts(layer, neuron)[:last]
    with np.errstate(invalid="ignore", divide="ignore"):
        fr = np.where(totals[:last] > 0, counts / totals[:last], np.nan)
    # A 2-D array becomes a fixed-width column in one step; stored as a list column.
    return rows.with_columns(pl.Series("fr", fr).cast(pl.List(pl.Float64)))
