"""Example contexts rendered from the run's data on demand: the data is packed again exactly as the run
packed it and checked against the run's data hash, so a context can never come from other text."""

from __future__ import annotations

from typing import Any

import polars as pl

from .data import TokenData, prepare_data
from .errors import DataMismatchError, OptNeuronsError

MARK = ("[[", "]]")  # around the firing token in `context`
AFTER = 4  # tokens shown after the firing one


def repack(metadata: dict, data: Any, tokenizer: Any) -> TokenData:
    """The run's sequences from `data` (what was passed to analyze(): None for the bundled corpus, a
    path, strings or a token array), checked against the run's data hash."""
    T = int(metadata["T"])
    tokens = prepare_data(data, tokenizer, seq_len=T, max_positions=T, n_tokens=int(metadata["n_tokens"]),
                          bos_id=int(metadata["bos_token_id"]), vocab_size=int(metadata["vocab_size"]))  # fmt: skip
    check_hash(metadata, tokens)
    return tokens


def check_hash(metadata: dict, tokens: TokenData) -> None:
    want = metadata.get("data_sha256")
    got = tokens.content_hash()
    if want != got:
        raise DataMismatchError(f"the data given is not the data this run analysed (its tokens hash to {got[:12]}..., "
                                f"the run's to {str(want)[:12]}...): pass the same data (and tokenizer) as to "
                                "analyze()")  # fmt: skip


def decode(tokenizer: Any, ids: list[int], cache: dict | None = None) -> list[str]:
    """Each token's string (`cache`: id -> string, filled as it goes; decoding one at a time is slow)."""
    if tokenizer is None:
        return [f"<{t}>" for t in ids]
    cache = {} if cache is None else cache
    for t in ids:
        if t not in cache:
            cache[t] = tokenizer.decode([t])
    return [cache[t] for t in ids]


def context_table(rows: pl.DataFrame, tokens: TokenData, tokenizer: Any, context: int, after: int = AFTER,
                  cache: dict | None = None) -> pl.DataFrame:  # fmt: skip
    """`rows` (examples of one neuron) with their contexts: `context` tokens before the firing one (within
    its sequence) and `after` tokens after it. Columns added: token (id), token_string, left, right,
    context (the firing token between [[ ]]), tokens (the window's strings) and firing_index (its place
    in `tokens`)."""
    if context < 0 or after < 0:
        raise OptNeuronsError(f"context and after must be >= 0, got {context} and {after}")
    out: dict[str, list] = {
        k: [] for k in ("token", "token_string", "left", "right", "context", "tokens", "firing_index")
    }
    for seq, pos in rows.select("sequence", "position").iter_rows():
        if seq >= len(tokens.lengths) or pos >= tokens.lengths[seq]:
            raise DataMismatchError(f"example (sequence {seq}, position {pos}) is outside the data given: pass the "
                                    "run's data")  # fmt: skip
        lo, hi = max(0, pos - context), min(int(tokens.lengths[seq]), pos + after + 1)
        window = [int(t) for t in tokens.tokens[seq, lo:hi]]
        strings = decode(tokenizer, window, cache)
        i = pos - lo
        left, tok, right = "".join(strings[:i]), strings[i], "".join(strings[i + 1 :])
        for k, v in (("token", window[i]), ("token_string", tok), ("left", left), ("right", right),
                     ("context", f"{left}{MARK[0]}{tok}{MARK[1]}{right}"), ("tokens", strings), ("firing_index", i)):  # fmt: skip
            out[k].append(v)
    return rows.with_columns(
        pl.Series("token", out["token"], dtype=pl.UInt32),
        pl.Series("token_string", out["token_string"], dtype=pl.String),
        pl.Series("left", out["left"], dtype=pl.String),
        pl.Series("right", out["right"], dtype=pl.String),
        pl.Series("context", out["context"], dtype=pl.String),
        pl.Series("tokens", out["tokens"], dtype=pl.List(pl.String)),
        pl.Series("firing_index", out["firing_index"], dtype=pl.UInt32),
    )


def neuron_examples(table: pl.DataFrame | None, layer: int, neuron: int) -> pl.DataFrame:
    if table is None:
        raise OptNeuronsError("this run kept no examples (examples=0, or a run of an earlier version): rerun "
                              "analyze() with examples=16")  # fmt: skip
    return table.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron)).sort(
        pl.col("kind").replace_strict({"top": 0, "random": 1}, return_dtype=pl.UInt8), "rank"
    )
