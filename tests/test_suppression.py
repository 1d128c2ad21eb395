"""Suppression scores and their random-neuron baseline against a direct float64 computation of the
METHOD.md definitions, on random OPTs with and without project_out (OPT-350m's layout)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from opt_neurons.params import Thresholds
from opt_neurons.suppression import suppression_columns

LAYERS, NEURONS, VOCAB = 3, 40, 300


def random_model(project_out: bool) -> OPTForCausalLM:
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, ffn_dim=NEURONS,
                    num_attention_heads=4, max_position_embeddings=16,
                    word_embed_proj_dim=16 if project_out else 32)  # fmt: skip
    return OPTForCausalLM(cfg).eval()


def neurons_frame(rng: np.random.Generator) -> pl.DataFrame:
    """Some detectors per layer (1-6 detected tokens each), some dead neurons, the rest plain."""
    kind = rng.choice(["detector", "dead", "plain"], size=LAYERS * NEURONS, p=[0.2, 0.2, 0.6])
    kind[NEURONS : 2 * NEURONS] = np.where(
        kind[NEURONS : 2 * NEURONS] == "detector", "plain", kind[NEURONS : 2 * NEURONS]
    )
    return pl.DataFrame({
        "layer": np.repeat(np.arange(LAYERS), NEURONS).astype(np.uint16),
        "neuron": np.tile(np.arange(NEURONS), LAYERS).astype(np.uint32),
        "dead": kind == "dead",
        "token_detector": kind == "detector",
        "detected_tokens": pl.Series([sorted(rng.choice(VOCAB, rng.integers(1, 7), replace=False).tolist())
                                      if k == "detector" else None for k in kind], dtype=pl.List(pl.UInt32)),
    })  # fmt: skip


def reference(model: OPTForCausalLM, neurons: pl.DataFrame, t: Thresholds) -> dict:
    """The definitions, directly: s = W_U (P v) over the whole vocabulary, in float64."""
    w_u = model.get_output_embeddings().weight.detach().double().numpy()
    out = model.model.decoder.project_out
    proj = out.weight.detach().double().numpy() if out is not None else np.eye(w_u.shape[1])
    rng = np.random.default_rng(t.seed)
    rows = neurons.with_row_index("row").to_dicts()
    got: dict = {}
    for layer in sorted({r["layer"] for r in rows if r["token_detector"]}):
        fc2 = model.model.decoder.layers[layer].fc2.weight.detach().double().numpy()
        scores = lambda n, fc2=fc2: w_u @ (proj @ fc2[:, n])  # noqa: E731
        det = [r for r in rows if r["layer"] == layer and r["token_detector"]]
        pool = np.array(
            [r["neuron"] for r in rows if r["layer"] == layer and not r["dead"] and not r["token_detector"]]
        )
        draws = rng.choice(pool, size=(len(det), t.baseline_draws))
        for r, drawn in zip(det, draws):
            toks = r["detected_tokens"]
            s = scores(r["neuron"])
            got[r["row"]] = (s[toks].mean(), [int((s < s[k]).sum()) for k in toks],
                             np.mean([scores(d)[toks].mean() < 0 for d in drawn]))  # fmt: skip
    return got


@pytest.mark.parametrize("project_out", [False, True])
def test_scores_ranks_and_baseline_follow_the_definitions(project_out: bool) -> None:
    model = random_model(project_out)
    neurons = neurons_frame(np.random.default_rng(1))
    t = Thresholds()
    cols = suppression_columns(model, neurons, t)
    want = reference(model, neurons, t)
    assert want and set(np.flatnonzero(cols["suppression_score"].is_not_null().to_numpy())) == set(want)
    for row, (score, ranks, baseline) in want.items():
        assert cols["suppression_score"][row] == pytest.approx(score, rel=1e-5, abs=1e-7)
        assert cols["suppresses_triggers"][row] == (score < 0)
        # float32 against float64: a near-tie among the vocabulary's scores may swap by one place.
        assert np.abs(np.array(cols["detected_token_ranks"][row].to_list()) - ranks).max() <= 1
        assert cols["suppression_baseline"][row] == pytest.approx(baseline)
    assert cols["suppression_baseline"].drop_nulls().n_unique() > 1  # the baseline is not a constant
