"""Every context token's activation, for Neuroscope-style pages: the run keeps only the firing token's value
(only bits leave the device), so with the model at hand the examples' sequences run through it once more,
hooked at each layer's neuron module (OPT's fc1), keeping the wanted neurons' values in the windows shown. Bounded: at most
MAX_TOKENS tokens of forward passes (else the pages shade the firing token only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch

from ..architectures import body, neuron_modules

MAX_TOKENS = 262_144  # the demo's whole run is 200 k tokens; OPT-125m on a CPU runs about 2 k tokens/s
BATCH = 8


def window_activations(model: Any, tokens: Any, examples: pl.DataFrame, context: int, after: int,
                       max_tokens: int = MAX_TOKENS) -> dict | None:  # fmt: skip
    """(layer, neuron, sequence, position) -> the neuron's activations over the example's window
    [position - context, position + after] (within its sequence); None when the examples' sequences hold
    more than `max_tokens` tokens."""
    if model is None or examples.height == 0:
        return None
    seqs = np.unique(examples["sequence"].to_numpy())
    if int(tokens.lengths[seqs].sum()) > max_tokens:
        return None
    wanted = examples.select("layer", "neuron", "sequence", "position").unique()
    modules = neuron_modules(model)
    device = next(model.parameters()).device
    out: dict = {}
    for length in np.unique(tokens.lengths[seqs]):
        same = seqs[tokens.lengths[seqs] == length]
        for b in range(0, len(same), BATCH):
            chunk = same[b : b + BATCH]
            rows = wanted.filter(pl.col("sequence").is_in(chunk.tolist()))
            needed = {int(l): sorted(set(g["neuron"].to_list())) for (l,), g in rows.group_by("layer")}
            got: dict[int, np.ndarray] = {}

            def hook(layer: int, needed: dict = needed, got: dict = got, shape: tuple = (len(chunk), int(length))):
                def keep(module: Any, inputs: Any, output: torch.Tensor) -> None:
                    if layer in needed:
                        got[layer] = output.reshape(*shape, -1)[:, :, needed[layer]].float().cpu().numpy()

                return keep

            handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
            try:
                with torch.inference_mode():
                    ids = torch.from_numpy(tokens.tokens[chunk, :length]).to(device)
                    body(model)(input_ids=ids, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            where = {int(s): i for i, s in enumerate(chunk)}
            for layer, neuron, seq, pos in rows.iter_rows():
                lo, hi = max(0, pos - context), min(int(length), pos + after + 1)
                col = needed[layer].index(neuron)
                out[(layer, neuron, seq, pos)] = got[layer][where[seq], lo:hi, col].tolist()
    return out
