"""Do token detectors suppress their own triggers? (paper section 4.3)

A neuron's value vector v = column n of its layer's down projection (OPT's fc2.weight[:, n]; GPT-2's
Conv1D row n; architectures.py), through any output projection (OPT-350m's project_out), is scored
against the unembedding: s_t = W_U[t] . v, the final norm's gain not folded in (METHOD.md). Computed
on the device the weights live on, for detectors (and the random baseline neurons) only, in chunks
of columns.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import polars as pl
import torch

from .architectures import decoder_layers, down_weight, output_projection
from .params import Thresholds

CHUNK = 256


@torch.inference_mode()
def value_scores(model: Any, layer: int, neurons: list[int], tokens: torch.Tensor | None = None) -> torch.Tensor:
    """(vocab, len(neurons)) float32 scores of the neurons' value vectors against the unembedding, or
    only the rows of `tokens` (sorted ids): (len(tokens), len(neurons))."""
    down = down_weight(model, layer)  # (d_model, n_neurons)
    w_u = model.get_output_embeddings().weight
    w_u = (w_u if tokens is None else w_u[tokens.to(w_u.device)]).float()  # once per call: the vocabulary is large
    project = output_projection(model)
    proj = project.weight.float().to(down.device) if project is not None else None
    idx = torch.tensor(neurons, device=down.device, dtype=torch.long)
    out = []
    for i in range(0, len(neurons), CHUNK):
        v = down.index_select(1, idx[i : i + CHUNK]).float()
        if proj is not None:
            v = proj @ v
        out.append((w_u @ v.to(w_u.device)).cpu())
    return torch.cat(out, dim=1) if out else torch.empty(w_u.shape[0], 0)


@contextlib.contextmanager
def offloaded_onto_device(model: Any, layer: int) -> Any:
    """The weights value_scores reads, loaded for the time being where accelerate offloaded them (to the
    host or disk under a device_map); nothing to do for weights that are in place."""
    from accelerate.utils import align_module_device, has_offloaded_params

    modules = [decoder_layers(model)[layer], model.get_output_embeddings(), output_projection(model)]
    with contextlib.ExitStack() as stack:
        for m in modules:
            for sub in m.modules() if m is not None else ():
                if has_offloaded_params(sub):
                    stack.enter_context(align_module_device(sub))
        yield


def ranks_below(scores: torch.Tensor, tokens: torch.Tensor) -> list[int]:
    """For each token, how many vocabulary scores lie strictly below its own (0 = most suppressed)."""
    return (scores[None, :] < scores[tokens][:, None]).sum(dim=1).tolist()


def suppression_columns(model: Any, neurons: pl.DataFrame, t: Thresholds, materialize: Any = None) -> pl.DataFrame:
    """Columns suppression_score, suppresses_triggers, detected_token_ranks, suppression_baseline.
    materialize(layer): context manager that puts the layer's weights on a device (streamed models;
    default: load what accelerate offloaded)."""
    materialize = materialize or (lambda layer: offloaded_onto_device(model, layer))
    n = neurons.height
    score = np.full(n, np.nan)
    flag: list = [None] * n
    ranks: list = [None] * n
    baseline = np.full(n, np.nan)
    rng = np.random.default_rng(t.seed)
    layer_col = neurons["layer"].to_numpy()
    neuron_col = neurons["neuron"].to_numpy()
    det = neurons["token_detector"].to_numpy()
    plain_alive = ~neurons["dead"].to_numpy() & ~det
    detected = neurons["detected_tokens"].to_list()
    for layer in np.unique(layer_col[det]).tolist():
        rows = np.flatnonzero(det & (layer_col == layer))
        pool = neuron_col[plain_alive & (layer_col == layer)]
        draws = rng.choice(pool, size=(len(rows), t.baseline_draws)) if len(pool) and t.baseline_draws else None
        toks_of = [torch.tensor(detected[r]) for r in rows]
        with materialize(layer):
            # Ranks need a detector's scores over the whole vocabulary; the baseline only those of the
            # layer's detected tokens, under the drawn neurons.
            scores = value_scores(model, layer, neuron_col[rows].tolist())
            if draws is not None:
                uniq, needed = np.unique(draws), torch.unique(torch.cat(toks_of))
                base_scores = value_scores(model, layer, uniq.tolist(), tokens=needed)
        for j, r in enumerate(rows):
            toks = toks_of[j]
            col = scores[:, j]
            score[r] = float(col[toks].mean())
            flag[r] = score[r] < 0
            ranks[r] = ranks_below(col, toks)
            if draws is not None:
                cols = base_scores[torch.searchsorted(needed, toks)][:, np.searchsorted(uniq, draws[j])]
                baseline[r] = float((cols.mean(dim=0) < 0).float().mean())
    return pl.DataFrame(
        {
            "suppression_score": pl.Series(score, dtype=pl.Float64).fill_nan(None),
            "suppresses_triggers": pl.Series(flag, dtype=pl.Boolean),
            "detected_token_ranks": pl.Series(ranks, dtype=pl.List(pl.UInt32)),
            "suppression_baseline": pl.Series(baseline, dtype=pl.Float64).fill_nan(None),
        }
    )
