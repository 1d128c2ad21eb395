"""`analyze()`: load the model, pack the data, run the forward pass with bit capture, finalize."""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .analysis import Analysis
from .capture import BitCapture
from .data import TokenData, prepare_data
from .errors import OutOfMemoryError
from .model import LoadedModel, decoder_layers, load_model
from .params import Thresholds
from .stats import NeuronStats

DEFAULT_TOKENS = 5_000_000  # the paper's amount for sections 4-5


def batches(data: TokenData, start: int, batch_size: int) -> list[tuple[int, int]]:
    """[begin, end) ranges of consecutive sequences of equal length, at most batch_size each."""
    out = []
    i = start
    n = len(data.lengths)
    while i < n:
        j = i + 1
        while j < n and j - i < batch_size and data.lengths[j] == data.lengths[i]:
            j += 1
        out.append((i, j))
        i = j
    return out


def bos_id_of(lm: LoadedModel) -> int:
    tok_bos = getattr(lm.tokenizer, "bos_token_id", None) if lm.tokenizer is not None else None
    bos = tok_bos if tok_bos is not None else getattr(lm.model.config, "bos_token_id", None)
    return 2 if bos is None else int(bos)


@contextlib.contextmanager
def out_of_memory_hint(batch_size: int):
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise OutOfMemoryError(
            f"the device ran out of memory with batch_size={batch_size}: lower batch_size, or run the model "
            f"offloaded (device_map='auto'). Counts so far are kept in the checkpoint when `out` is set. ({e})"
        ) from e


def run_forward(lm: LoadedModel, data: TokenData, capture: BitCapture, *, start: int, batch_size: int,
                on_batch: Any) -> None:  # fmt: skip
    """Forward every sequence from `start` on through the decoder (no LM head); hooks count bits."""
    decoder = lm.model.model.decoder
    with torch.inference_mode(), out_of_memory_hint(batch_size):
        for begin, end in batches(data, start, batch_size):
            length = int(data.lengths[begin])
            ids = data.tokens[begin:end, :length]
            capture.set_rows(ids.reshape(-1), np.tile(np.arange(length), end - begin))
            x = torch.from_numpy(ids).to(lm.device)
            decoder(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
            capture.commit(end)
            on_batch(end)
    capture.flush()


def analyze(
    model: Any,
    data: Any = None,
    *,
    n_tokens: int = DEFAULT_TOKENS,
    seq_len: int | None = None,
    batch_size: int = 8,
    dtype: Any = None,
    device_map: Any = None,
    out: str | Path | None = None,
    progress: bool = True,
    revision: str | None = None,
    ngram_capacity: int = 1024,
    checkpoint_every: int = 256,
    **thresholds: Any,
) -> Analysis:
    """Find dead, n-gram-detecting and positional neurons of an OPT model (METHOD.md).

    model: hub id (through the Hugging Face cache), local directory, "demo", or a loaded model.
    data: None (bundled corpus), a file or folder of .txt/.jsonl/.parquet, an iterable of strings,
        or a (n_seq, T) array of token ids used exactly as given.
    out: folder for the tables, metadata and checkpoints (an interrupted run resumes from it).
    thresholds: any field of `Thresholds` (coverage, max_tokens, mi_threshold, ...).
    """
    started = time.time()
    t = Thresholds.from_overrides(thresholds)
    lm = load_model(model, dtype=dtype, device_map=device_map, revision=revision)
    cfg = lm.model.config
    max_pos = int(cfg.max_position_embeddings)
    bos = bos_id_of(lm)
    vocab = max(int(cfg.vocab_size), len(lm.tokenizer) if lm.tokenizer is not None else 0)
    tokens = prepare_data(data, lm.tokenizer, seq_len=seq_len or max_pos, max_positions=max_pos,
                          n_tokens=n_tokens, bos_id=bos, vocab_size=vocab)  # fmt: skip
    n_layers = len(decoder_layers(lm.model))
    n_neurons = int(cfg.ffn_dim)
    T = int(tokens.tokens.shape[1])
    fingerprint = {"model": lm.model_id, "revision": lm.revision, "data": tokens.content_hash(), "T": T,
                   "ngram_capacity": ngram_capacity, "dtype": str(next(lm.model.parameters()).dtype)}  # fmt: skip
    out_dir = Path(out) if out is not None else None
    resumed = checkpoint.load(out_dir, fingerprint) if out_dir is not None else None
    stats, start = resumed or (
        NeuronStats(n_layers, n_neurons, vocab, T, bos_token_id=bos, ngram_capacity=ngram_capacity), 0
    )
    bar = _progress_bar(progress, tokens.n_tokens, int(tokens.lengths[:start].sum()), lm.model_id)
    cum_tokens = np.concatenate([[0], np.cumsum(tokens.lengths)])
    saved = [start]  # sequences held by the last checkpoint
    seen = [start]  # sequences whose forward pass has run
    capture = BitCapture([layer.fc1 for layer in decoder_layers(lm.model)], stats)
    capture.counted_upto = start

    def after_batch(done: int) -> None:
        bar.update(int(cum_tokens[done] - cum_tokens[seen[0]]))
        seen[0] = done
        if out_dir is not None and done - saved[0] >= checkpoint_every:
            capture.flush()
            checkpoint.save(out_dir, stats, done, fingerprint)
            saved[0] = done

    try:
        run_forward(lm, tokens, capture, start=start, batch_size=batch_size, on_batch=after_batch)
    except BaseException:
        capture.close()  # counts every committed batch, drops the interrupted one
        if out_dir is not None and capture.error is None and capture.counted_upto > saved[0]:
            checkpoint.save(out_dir, stats, capture.counted_upto, fingerprint)
        raise
    finally:
        capture.close()
        bar.close()
    forward_s = time.time() - started
    tables = stats.finalize(tokenizer=lm.tokenizer, model=lm.model, **t.to_dict())
    metadata = {
        "model_id": lm.model_id,
        "revision": lm.revision,
        "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "device": str(lm.device),
        "device_map": getattr(lm.model, "hf_device_map", None) or (str(device_map) if device_map else None),
        "n_layers": n_layers,
        "n_neurons": n_neurons,
        "vocab_size": vocab,
        "bos_token_id": bos,
        "n_tokens": tokens.n_tokens,
        "n_sequences": int(len(tokens.lengths)),
        "T": T,
        "data_sources": tokens.sources,
        "data_sha256": tokens.content_hash(),
        "thresholds": t.to_dict(),
        "ngram_capacity": ngram_capacity,
        "accumulator_bytes": stats.memory_bytes(),
        "resumed_from_sequence": start,
        "package_version": _version(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "forward_seconds": forward_s,
        "wall_seconds": time.time() - started,
        "position_totals": stats.position_totals().tolist(),
    }
    analysis = Analysis(tables.neurons, tables.layers, tables.tokens, tables.positions, metadata)
    if out_dir is not None:
        metadata["out"] = str(out_dir)
        analysis.save(out_dir)
        checkpoint.clear(out_dir)
    return analysis


def _version() -> str:
    from . import __version__

    return __version__


def _progress_bar(enabled: bool, total: int, initial: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=f"opt-neurons {name}",
                disable=not enabled)  # fmt: skip
