"""Turn user data into sequences of token ids (METHOD.md "Data"): each sequence starts with BOS,
documents are packed back to back with the BOS/EOS separator, T tokens per sequence."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets_input
from .errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
# Most named sources counted apart (each costs a counter per neuron of every layer); more: warned, not split.
MAX_SOURCES = 64


@dataclass
class TokenData:
    """Sequences (rows of `tokens`, each `lengths[i]` long, positions 0..len-1) and where they came from."""

    tokens: np.ndarray  # (n_seq, T) int64, padded with BOS past each length
    lengths: np.ndarray  # (n_seq,) int64
    sources: list[dict] = field(default_factory=list)
    # The first `detail` sequences get every statistic, the rest activation counts only (None: all).
    detail: int | None = None
    requested: int | None = None  # the tokens asked for (None: a token array, used as given)
    # Named sources (METHOD.md "Sources"): the source of each token, an index into `source_names`, laid out
    # like `tokens` (None: the data names fewer than two sources, or more than MAX_SOURCES).
    source_ids: np.ndarray | None = None
    source_names: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens_before(self) -> np.ndarray:
        """tokens_before()[k]: the tokens (rows) of the first k sequences, k = 0 .. n_sequences."""
        return np.concatenate([[0], np.cumsum(self.lengths)])

    @property
    def exhausted(self) -> bool:
        """The data ran out before the tokens asked for."""
        return self.requested is not None and self.n_tokens < self.requested

    @property
    def n_detail(self) -> int:
        """How many sequences (the first ones) get every statistic."""
        return len(self.lengths) if self.detail is None else self.detail

    def detail_rows(self, begin: int, end: int) -> int:
        """Rows of sequences [begin, end) that get every statistic (a prefix of their rows)."""
        return int(self.lengths[begin : min(end, max(begin, self.n_detail))].sum())

    def with_detail_tokens(self, detail_tokens: int | None) -> TokenData:
        """Every statistic over the first sequences holding at least `detail_tokens` tokens (None or
        more than there are: all); activation counts (frequency, dead) over all of them."""
        if detail_tokens is None:
            return self
        if detail_tokens <= 0:
            raise DataError(f"detail_tokens must be positive, got {detail_tokens}")
        n = int(np.searchsorted(self.tokens_before(), detail_tokens))
        return dataclasses.replace(self, detail=min(n, len(self.lengths)))

    @property
    def n_sources(self) -> int:
        """Sources whose activations are counted apart (0: none)."""
        return len(self.source_names) if self.source_ids is not None else 0

    def source_ids_of(self, begin: int, end: int) -> np.ndarray | None:
        """The source of each row of sequences [begin, end) (of one length), row-major; None without sources."""
        if self.source_ids is None:
            return None
        return self.source_ids[begin:end, : int(self.lengths[begin])].reshape(-1)

    def source_tokens(self) -> np.ndarray:
        """Tokens of each named source."""
        if self.source_ids is None:
            return np.zeros(len(self.source_names), dtype=np.int64)
        valid = np.arange(self.tokens.shape[1]) < self.lengths[:, None]
        return np.bincount(self.source_ids[valid], minlength=len(self.source_names)).astype(np.int64)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for row, n in zip(self.tokens, self.lengths):
            h.update(np.ascontiguousarray(row[:n], dtype=np.int64).tobytes())
        return h.hexdigest()


def read_text_file(path: Path) -> Iterator[str]:
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{path}:{i + 1}: not valid JSON ({e}): fix or remove that line") from None
                    if not isinstance(obj, dict) or "text" not in obj:
                        raise DataError(f"{path}:{i + 1}: each JSONL line must be an object with a 'text' field")
                    if not isinstance(obj["text"], str):
                        raise DataError(f"{path}:{i + 1}: the 'text' field must be a string, got "
                                        f"{type(obj['text']).__name__}")  # fmt: skip
                    yield obj["text"]
    elif path.suffix == ".parquet":
        import polars as pl

        try:
            df = pl.read_parquet(path)
        except Exception as e:  # polars raises several kinds for a file that is not Parquet
            raise DataError(
                f"{path} cannot be read as Parquet ({type(e).__name__}): pass a valid .parquet file"
            ) from None
        if "text" not in df.columns:
            raise DataError(f"{path} has no 'text' column (columns: {df.columns})")
        if df.schema["text"] != pl.String:
            raise DataError(f"{path}: the 'text' column must hold strings, it holds {df.schema['text']}")
        yield from df["text"].drop_nulls().to_list()
    else:
        raise DataError(f"{path}: unsupported file type; use .txt, .jsonl (field 'text') or .parquet (column 'text')")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_documents(data: Any, text_column: str = "text", source_column: str | None = None
                   ) -> tuple[Iterator[tuple[str, str | None]], list[dict]]:  # fmt: skip
    """(document, source name or None) pairs and source descriptions for: None (bundled corpus: its parts), a
    file, a folder (its files, by path inside it), strings, or a Hugging Face dataset (a Dataset, an
    IterableDataset, or "hf:NAME[:CONFIG][:SPLIT]"; `source_column` names the sources)."""
    if datasets_input.is_dataset(data) or datasets_input.is_hf_spec(data):
        return datasets_input.dataset_documents(data, text_column=text_column, source_column=source_column)
    if (text_column, source_column) != ("text", None):
        raise DataError("text_column and source_column name a Hugging Face dataset's columns; files are read "
                        "from their 'text' field or column")  # fmt: skip
    if data is None:
        from . import corpus

        return ((text, name) for name, text in corpus.iter_documents()), [
            {"name": "opt_neurons bundled corpus", "sha256": corpus.content_hash()}
        ]
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not files:
                raise DataError(f"folder {path} holds no .txt, .jsonl or .parquet files")
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"data path {str(path)!r} does not exist; pass a file, a folder, or an iterable of strings")
        sources = [{"name": str(p), "sha256": file_sha256(p)} for p in files]
        named = path.is_dir()
        return ((doc, p.relative_to(path).as_posix() if named else None) for p in files
                for doc in read_text_file(p)), sources  # fmt: skip
    if isinstance(data, Iterable):
        h = hashlib.sha256()

        def docs() -> Iterator[tuple[str, str | None]]:
            for d in data:
                if not isinstance(d, str):
                    raise DataError(f"data iterables must yield strings, got {type(d).__name__}")
                h.update(d.encode())
                yield d, None

        return docs(), [{"name": "iterable of strings", "sha256": None, "hash": h}]
    raise DataError(
        f"unsupported data of type {type(data).__name__}: pass a path, strings, or a (n_seq, T) array of ids"
    )


def check_data_kind(data: Any) -> None:
    """Refuse, before any model is loaded, data of a kind `prepare_data` cannot use (or would misread)."""
    if data is None or is_token_array(data) or datasets_input.is_dataset(data) or datasets_input.is_hf_spec(data):
        return
    if isinstance(data, (str, Path)):
        if not Path(data).exists():
            raise DataError(f"data path {str(data)!r} does not exist; pass a file, a folder, or an iterable of strings")
        return
    if isinstance(data, (dict, bytes, bytearray)) or (hasattr(data, "keys") and callable(data.keys)):
        raise DataError(f"data of type {type(data).__name__} is not supported (its keys would be read as documents): "
                        "pass a path, a list of strings, or a (n_seq, T) array of token ids")  # fmt: skip
    ndim = getattr(data, "ndim", None)
    if ndim is not None:
        raise DataError(f"token id arrays must be 2-D (n_seq, T), got {ndim}-D with shape {tuple(data.shape)}: "
                        "reshape a single sequence to (1, T)")  # fmt: skip
    if not isinstance(data, Iterable):
        raise DataError(f"unsupported data of type {type(data).__name__}: pass a path, strings, or a (n_seq, T) "
                        "array of ids")  # fmt: skip


def pack_documents(docs: Iterable[str | tuple[str, str | None]], tokenizer: Any, *, seq_len: int, n_tokens: int,
                   bos_id: int) -> TokenData:  # fmt: skip
    """Pack documents back to back with the BOS/EOS separator into sequences of `seq_len` tokens,
    each starting with BOS, until `n_tokens` tokens; a shorter last sequence is kept. Documents given as
    (text, source name) pairs also give each token its source (`TokenData.source_ids`): the document's, for
    the separator before it too, and for a sequence's first BOS the source of the token after it."""
    if tokenizer is None:
        raise DataError(
            "the model has no tokenizer to turn text into tokens: pass data as a (n_seq, T) array of token ids"
        )
    n_seq = max(1, -(-n_tokens // seq_len))
    body = seq_len - 1
    need = n_seq * body
    stream: list[int] = []
    names: dict[str, int] = {}
    runs: list[tuple[int, int]] = []  # (first stream index, source) of each named document
    all_named = True
    for item in docs:
        doc, name = (item, None) if isinstance(item, str) else item
        if not doc.strip():  # blank documents would only add separators
            continue
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        all_named = all_named and name is not None
        if name is not None and ids:
            runs.append((len(stream), names.setdefault(name, len(names))))
        if stream:
            stream.append(bos_id)
        stream.extend(ids)
        if len(stream) >= need:
            break
    if not stream:
        raise DataError("the data is empty: no tokens after tokenization; pass non-empty text")
    stream = stream[:need]
    rows = [stream[i : i + body] for i in range(0, len(stream), body)]
    tokens = np.full((len(rows), seq_len), bos_id, dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        tokens[i, 1 : 1 + len(r)] = r
        lengths[i] = 1 + len(r)
    packed = TokenData(tokens, lengths, requested=n_tokens)
    if runs and all_named:
        _set_sources(packed, runs, list(names), len(stream), body)
    return packed


def _set_sources(packed: TokenData, runs: list[tuple[int, int]], names: list[str], n_stream: int, body: int) -> None:
    """Per-token source ids from the documents' runs of the token stream (see pack_documents)."""
    starts = np.array([a for a, _ in runs] + [n_stream])
    stream_ids = np.repeat(np.array([s for _, s in runs]), np.diff(starts))
    used = np.unique(stream_ids)  # sources of documents cut off by n_tokens have no tokens: not named
    if len(used) < 2:
        return
    if len(used) > MAX_SOURCES:
        warnings.warn(f"opt-neurons: the data names {len(used)} sources, more than the {MAX_SOURCES} counted apart: "
                      f"no per-source statistics (pass the data with fewer sources)", RuntimeWarning, stacklevel=4)  # fmt: skip
        return
    first = np.array([np.flatnonzero(stream_ids == u)[0] for u in used])
    used = used[np.argsort(first)]  # in order of first appearance
    remap = np.zeros(len(names), dtype=np.uint16)
    remap[used] = np.arange(len(used), dtype=np.uint16)
    stream_ids = remap[stream_ids]
    ids = np.zeros(packed.tokens.shape, dtype=np.uint16)
    for i, n in enumerate(packed.lengths):
        row = stream_ids[i * body : i * body + int(n) - 1]
        ids[i, 1:n] = row
        ids[i, 0] = row[0] if len(row) else 0
    packed.source_ids, packed.source_names = ids, [names[u] for u in used]


def token_array(data: Any, *, max_positions: int, vocab_size: int) -> TokenData:
    """A ready (n_seq, T) array of token ids, used exactly as given."""
    arr = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"token id arrays must be non-empty 2-D (n_seq, T), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"token id arrays must hold integers, got {arr.dtype}")
    if arr.shape[1] > max_positions:
        raise DataError(
            f"sequences of {arr.shape[1]} tokens are longer than the model allows ({max_positions} positions): "
            f"cut them to at most {max_positions}"
        )
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise DataError(f"token ids must lie in [0, {vocab_size}) (the model's embedding rows), got "
                        f"[{arr.min()}, {arr.max()}]")  # fmt: skip
    h = hashlib.sha256(np.ascontiguousarray(arr, dtype=np.int64).tobytes()).hexdigest()
    return TokenData(arr.astype(np.int64), np.full(arr.shape[0], arr.shape[1], dtype=np.int64),
                     [{"name": f"token array {arr.shape}", "sha256": h}])  # fmt: skip


def is_token_array(data: Any) -> bool:
    return hasattr(data, "ndim") and getattr(data, "ndim", 0) == 2 and not isinstance(data, (str, Path))


def prepare_data(data: Any, tokenizer: Any, *, seq_len: int, max_positions: int, n_tokens: int, bos_id: int,
                 vocab_size: int, text_column: str = "text", source_column: str | None = None) -> TokenData:  # fmt: skip
    check_data_kind(data)
    if seq_len > max_positions:
        raise DataError(
            f"seq_len {seq_len} is beyond the model's {max_positions} positions: use seq_len <= {max_positions}"
        )
    if n_tokens <= 0:
        raise DataError(f"n_tokens must be positive, got {n_tokens}")
    if is_token_array(data):
        return token_array(data, max_positions=max_positions, vocab_size=vocab_size)
    docs, sources = text_documents(data, text_column, source_column)
    packed = pack_documents(docs, tokenizer, seq_len=seq_len, n_tokens=n_tokens, bos_id=bos_id)
    for s in sources:
        if "hash" in s:
            s["sha256"] = s.pop("hash").hexdigest()
    packed.sources = sources
    top = int(packed.tokens.max())
    if top >= vocab_size:
        raise DataError(f"the tokenizer gives token id {top}, but the model embeds only {vocab_size} ids: the "
                        "tokenizer does not match the model; load the model's own tokenizer")  # fmt: skip
    return packed


def warn_if_exhausted(tokens: TokenData) -> None:
    if tokens.exhausted:
        warnings.warn(f"opt-neurons: the data ran out after {tokens.n_tokens:,} of the {tokens.requested:,} tokens "
                      f"asked for: the statistics rest on {tokens.n_tokens:,} tokens (metadata: data_exhausted). "
                      f"Pass more data for more tokens.", RuntimeWarning, stacklevel=3)  # fmt: skip
