"""The `examples` table and the `max_activation` / `mean_activation` columns of `neurons`."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

KINDS = ("top", "random")
SCHEMA = {"layer": pl.UInt16, "neuron": pl.UInt32, "kind": pl.String, "rank": pl.UInt32, "sequence": pl.UInt32,
          "position": pl.UInt32, "value": pl.Float32}  # fmt: skip


def examples_table(state: Any) -> pl.DataFrame:
    """One row per example: (layer, neuron, kind, rank): the top ones by value (rank 0 = largest; equal
    values: earlier sequence / position first), the random ones in their sampling order (value null:
    only their bits reach the host)."""
    if state is None:
        return pl.DataFrame(schema=SCHEMA)
    r = state.rows()
    value = r["value"]
    return pl.DataFrame(
        {
            "layer": pl.Series(r["layer"], dtype=pl.UInt16),
            "neuron": pl.Series(r["neuron"], dtype=pl.UInt32),
            "kind": pl.Series(r["kind"], dtype=pl.UInt8).replace_strict(dict(enumerate(KINDS)), return_dtype=pl.String),
            "rank": pl.Series(r["rank"], dtype=pl.UInt32),
            "sequence": pl.Series(r["sequence"], dtype=pl.UInt32),
            "position": pl.Series(r["position"], dtype=pl.UInt32),
            "value": pl.Series(value, dtype=pl.Float32, nan_to_null=True),
        }
    )


def with_activation_columns(neurons: pl.DataFrame, state: Any) -> pl.DataFrame:
    """`max_activation` and `mean_activation` (sum of the firing values / n_active) per neuron; null for
    dead neurons and when examples are off."""
    if state is None:
        return neurons.with_columns(pl.lit(None, dtype=pl.Float64).alias("max_activation"),
                                    pl.lit(None, dtype=pl.Float64).alias("mean_activation"))  # fmt: skip
    sums, maxima = state.sums_and_maxima()
    n = neurons.sort("layer", "neuron")
    if not n.equals(neurons):
        raise ValueError("neurons must be in (layer, neuron) order")
    active = neurons["n_active"].to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(active > 0, sums / np.maximum(active, 1), np.nan)
    mx = np.where(active > 0, maxima.astype(np.float64), np.nan)
    return neurons.with_columns(pl.Series("max_activation", mx, nan_to_null=True),
                                pl.Series("mean_activation", mean, nan_to_null=True))  # fmt: skip
