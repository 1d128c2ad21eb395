"""`Analysis`: the tables of one run and its metadata; saved as Parquet + JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import OptNeuronsError

TABLES = ("neurons", "layers", "tokens", "positions")
METADATA = "metadata.json"


@dataclass
class Analysis:
    neurons: pl.DataFrame
    layers: pl.DataFrame
    tokens: pl.DataFrame
    positions: pl.DataFrame
    metadata: dict[str, Any]

    def save(self, out: str | Path) -> Path:
        """Write `<table>.parquet` for each table and `metadata.json` into `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            getattr(self, name).write_parquet(out / f"{name}.parquet")
        (out / METADATA).write_text(json.dumps(self.metadata, indent=2, sort_keys=True, default=str))
        return out

    def report(self, out: str | Path | None = None) -> Path:
        """Write PNG figures and an HTML page (see `opt_neurons.report`)."""
        from .report import write_report

        return write_report(self, out or self.metadata.get("out") or ".")

    def summary(self) -> str:
        l = self.layers
        m = self.metadata
        return (
            f"{m.get('model_id')}: {l.height} layers x {int(l['n_neurons'][0]) if l.height else 0} neurons, "
            f"{m.get('n_tokens'):,} tokens; dead {int(l['n_dead'].sum()):,}, token detectors "
            f"{int(l['n_token_detectors'].sum()):,}, trigram detectors {int(l['n_trigram_detectors'].sum()):,}, "
            f"positional {int(l['n_positional'].sum()):,}"
        )

    def __repr__(self) -> str:
        return f"Analysis({self.summary()})"


def load(path: str | Path) -> Analysis:
    """Read a saved `Analysis` back."""
    path = Path(path)
    missing = [f"{n}.parquet" for n in TABLES if not (path / f"{n}.parquet").exists()]
    if not (path / METADATA).exists():
        missing.append(METADATA)
    if missing:
        raise OptNeuronsError(f"{path} is not a saved analysis: missing {', '.join(missing)}")
    tables = {n: pl.read_parquet(path / f"{n}.parquet") for n in TABLES}
    return Analysis(**tables, metadata=json.loads((path / METADATA).read_text()))
