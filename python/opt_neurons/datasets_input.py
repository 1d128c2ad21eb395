"""Hugging Face `datasets` as data: a Dataset, an IterableDataset (streaming), or "hf:NAME[:CONFIG][:SPLIT]"
loaded through `datasets` (from its cache when offline). `datasets` is optional: imported only here, when asked."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from .errors import DataError

PREFIX = "hf:"
BATCH = 1000  # rows read per batch: columns come out of Arrow as lists, much faster than row dicts


def is_hf_spec(data: Any) -> bool:
    return isinstance(data, str) and data.startswith(PREFIX)


def is_dataset(data: Any) -> bool:
    """A datasets Dataset, IterableDataset or DatasetDict, recognised without importing `datasets`."""
    return any(c.__module__.split(".")[0] == "datasets" for c in type(data).__mro__)


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError("Hugging Face datasets as data need the `datasets` package: pip install datasets "
                        "(or pip install 'opt_neurons[datasets]')") from e  # fmt: skip
    return datasets


def load_spec(spec: str) -> Any:
    """The Dataset that "hf:NAME[:CONFIG][:SPLIT]" names (empty fields: the default config, the only split)."""
    parts = spec[len(PREFIX) :].split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(f"{spec!r}: write hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT (hf:NAME::SPLIT for the "
                        f"default config)")  # fmt: skip
    name, config, split = (parts + ["", ""])[:3]
    datasets = import_datasets()
    try:
        ds = datasets.load_dataset(name, config or None, split=split or None)
    except Exception as e:  # not cached offline, no such config or split, ...: datasets raises many kinds
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot load {spec!r} through `datasets`: {why} (offline, the dataset must be in the "
                        f"datasets cache: load it once online)") from e  # fmt: skip
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if len(ds) != 1:
            raise DataError(f"{spec!r} has splits {sorted(ds)}: name one, e.g. hf:{name}:{config}:{min(ds)}")
        ds = next(iter(ds.values()))
    return ds


def _field(value: Any, path: list[str], source_column: str | None) -> Any:
    """`value` followed down nested dicts, e.g. the Pile's meta.pile_set_name."""
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"source_column {source_column!r}: a document's value {value!r:.80} has no field {key!r}")
        value = value[key]
    return value


def _check_columns(columns: list[str], present: Any) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"the dataset has no column {missing[0]!r} (columns: {list(present)}): name the text with "
                        f"text_column= (and the source with source_column=)")  # fmt: skip


def dataset_documents(data: Any, *, text_column: str = "text", source_column: str | None = None
                      ) -> tuple[Iterator[tuple[str, str | None]], list[dict]]:  # fmt: skip
    """Documents (the text column's strings, nulls skipped, each with its source's name: the value of
    `source_column` as a string, or None without one) and a source description that fills in as they are
    read: a content hash (the "hash" entry, finished by data.prepare_data) and, with `source_column` (a column,
    or a dotted path into a struct column like "meta.pile_set_name"), the documents read per source."""
    name = data if isinstance(data, str) else None
    ds = load_spec(data) if name else data
    if isinstance(ds, dict):  # DatasetDict, IterableDatasetDict
        raise DataError(f"a {type(ds).__name__} holds several splits: pass one of them, e.g. data=ds['train']")
    source_path = source_column.split(".") if source_column else []
    columns = list(dict.fromkeys([text_column] + source_path[:1]))
    if ds.column_names is not None:  # None: a stream whose columns are known only once read
        _check_columns(columns, ds.column_names)
        ds = ds.select_columns(columns)  # decode only these
    h = hashlib.sha256()
    info = getattr(ds, "info", None)
    source: dict = {"name": name or f"datasets.{type(ds).__name__} {getattr(info, 'dataset_name', None) or ''}".strip(),
                    "sha256": None, "hash": h, "text_column": text_column}  # fmt: skip
    per_source: dict[str, int] = {}
    if source_column:
        source.update(source_column=source_column, documents_per_source=per_source)

    def docs() -> Iterator[tuple[str, str | None]]:
        for batch in ds.iter(batch_size=BATCH):
            _check_columns(columns, batch)
            labels = batch[source_path[0]] if source_path else [None] * len(batch[text_column])
            for text, label in zip(batch[text_column], labels):
                if text is None:
                    continue
                if not isinstance(text, str):
                    raise DataError(f"column {text_column!r} must hold strings, got {type(text).__name__}")
                key = None
                if source_path:
                    key = str(_field(label, source_path[1:], source_column))
                    per_source[key] = per_source.get(key, 0) + 1
                h.update(text.encode())
                yield text, key

    return docs(), [source]
