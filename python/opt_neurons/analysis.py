"""`Analysis`: the tables of one run and its metadata; saved as Parquet + JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .errors import RunFolderError
from .outdir import check_writable

TABLES = ("neurons", "layers", "tokens", "positions")
EXAMPLES = "examples.parquet"  # optional: runs with examples=0 (or of earlier versions) have none
METADATA = "metadata.json"
# Columns the report and the API rely on: a folder without them is not a run of this package (or of a
# version whose tables differ), and is refused when loaded rather than failing halfway through a report.
REQUIRED = {
    "neurons": ("layer", "neuron", "n_active", "frequency", "dead", "token_detector", "trigram_detector",
                "positional"),
    "layers": ("layer", "n_neurons", "n_dead", "n_token_detectors", "n_trigram_detectors", "n_positional"),
    "tokens": ("token",),
    "positions": ("layer", "neuron", "fr"),
}  # fmt: skip


@dataclass
class Analysis:
    neurons: pl.DataFrame
    layers: pl.DataFrame
    tokens: pl.DataFrame
    positions: pl.DataFrame
    metadata: dict[str, Any]
    # One row per example position (example_tables.py); None when the run kept none.
    example_table: pl.DataFrame | None = None
    # The run's packed data and tokenizer, to render contexts (kept by analyze(), or given to `examples`).
    _data: Any = field(default=None, repr=False, compare=False)
    _tokenizer: Any = field(default=None, repr=False, compare=False)

    def keep_data(self, data: Any, tokenizer: Any) -> None:
        self._data, self._tokenizer = data, tokenizer

    def examples(self, layer: int, neuron: int, context: int = 12, data: Any = None, *, tokenizer: Any = None,
                 after: int | None = None) -> pl.DataFrame:  # fmt: skip
        """The neuron's example positions (top ones by value, then the random sample) with their contexts:
        `context` tokens before the firing token, a few after, and `context` with the firing token between
        [[ ]]. The text comes from the run's data: kept by analyze(), else packed again from `data` (what
        analyze() was given; None: the bundled corpus) with the run's tokenizer, and refused
        (DataMismatchError) when its hash is not the run's."""
        from . import contexts

        rows = contexts.neuron_examples(self.example_table, layer, neuron)
        tokens, tokenizer = self.context_data(data, tokenizer)
        return contexts.context_table(rows, tokens, tokenizer, context, contexts.AFTER if after is None else after)

    def context_data(self, data: Any = None, tokenizer: Any = None) -> tuple[Any, Any]:
        """(the run's packed data, tokenizer): kept, or packed again from `data` and checked (see `examples`)."""
        from . import contexts

        if data is not None or self._data is None:
            tokenizer = tokenizer or self._tokenizer or _run_tokenizer(self.metadata)
            self.keep_data(contexts.repack(self.metadata, data, tokenizer), tokenizer)
        return self._data, tokenizer or self._tokenizer

    def save(self, out: str | Path) -> Path:
        """Write `<table>.parquet` for each table and `metadata.json` into `out`."""
        out = Path(out)
        check_writable(out)
        for name in TABLES:
            getattr(self, name).write_parquet(out / f"{name}.parquet")
        if self.example_table is not None:
            self.example_table.write_parquet(out / EXAMPLES)
        (out / METADATA).write_text(json.dumps(self.metadata, indent=2, sort_keys=True, default=str))
        return out

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
        raise RunFolderError(f"{path} is not a saved analysis: missing {', '.join(missing)}")
    tables = {}
    for name in TABLES:
        try:
            tables[name] = pl.read_parquet(path / f"{name}.parquet")
        except Exception as e:  # polars raises several kinds for a damaged file
            raise RunFolderError(f"{path / f'{name}.parquet'} cannot be read ({type(e).__name__}): the run folder is "
                                 "damaged; rerun the analysis") from None  # fmt: skip
        lacking = [c for c in REQUIRED[name] if c not in tables[name].columns]
        if lacking:
            raise RunFolderError(f"{path / f'{name}.parquet'} lacks the columns {lacking}: not a table of this "
                                 f"version of opt_neurons; rerun the analysis")  # fmt: skip
    try:
        metadata = json.loads((path / METADATA).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path / METADATA} is not valid JSON ({e}): the run folder is damaged") from None
    if not isinstance(metadata, dict):
        raise RunFolderError(f"{path / METADATA} holds no JSON object: the run folder is damaged")
    example_table = None
    if (path / EXAMPLES).exists():
        try:
            example_table = pl.read_parquet(path / EXAMPLES)
        except Exception as e:  # polars raises several kinds for a damaged file
            raise RunFolderError(f"{path / EXAMPLES} cannot be read ({type(e).__name__}): the run folder is "
                                 "damaged; rerun the analysis") from None  # fmt: skip
    return Analysis(**tables, metadata=metadata, example_table=example_table)


def _run_tokenizer(metadata: dict) -> Any:
    from .model import load_tokenizer, resolve_name

    name = metadata.get("model_id")
    return load_tokenizer(resolve_name(str(name)), revision=metadata.get("revision")) if name else None
