"""Regression test on the bundled demo model: `analyze("demo")` on the start of the bundled corpus must keep
finding what it found when these values were pinned. A change to the analysis (or the data packing, tokenizer,
model loading) that shifts the results fails here; if the shift is intended, recompute and re-pin.

Pinned values: computed once (2026-11-26) with
    opt_neurons.analyze("demo", n_tokens=50_000, progress=False)
on the CPU (float32, torch 2.15, transformers 5.24) with the weights made by scripts/train_demo.py, 1400 steps
(see python/opt_neurons/demo/README.md); it gave dead [0, 93, 77, 24], mean live frequency
[0.4674, 0.1630, 0.1612, 0.1857], 1 token detector and 1 trigram detector (layer 2), no positional neuron.
Tolerances leave room for another BLAS / CPU flipping activations that sit at ~0, not for a change of method.
"""

from __future__ import annotations

import pytest

import opt_neurons
from opt_neurons.model import DEMO_DIR

N_TOKENS = 50_000
DEAD = [0, 93, 77, 24]
MEAN_LIVE_FREQUENCY = [0.4674, 0.1630, 0.1612, 0.1857]


@pytest.fixture(scope="module")
def demo():
    assert (DEMO_DIR / "model.safetensors").is_file(), f"the demo model is missing from {DEMO_DIR}"
    return opt_neurons.analyze("demo", n_tokens=N_TOKENS, progress=False)


def test_shape_and_data(demo):
    m = demo.metadata
    assert (m["n_layers"], m["n_neurons"], m["T"], m["bos_token_id"]) == (4, 1024, 256, 2)
    assert m["n_tokens"] == 50_176  # rounded up to 196 sequences of 256


def test_dead_neurons_pinned(demo):
    dead = demo.layers["n_dead"].to_list()
    assert dead[0] == 0
    for got, pinned in zip(dead, DEAD):
        assert abs(got - pinned) <= 5, (dead, DEAD)


def test_mean_live_frequency_pinned(demo):
    got = demo.layers["mean_frequency_alive"].to_list()
    assert got == pytest.approx(MEAN_LIVE_FREQUENCY, abs=0.005)


def test_detectors_and_positional_pinned(demo):
    L = demo.layers
    assert int(L["n_token_detectors"].sum()) <= 3
    assert 1 <= int(L["n_trigram_detectors"].sum()) <= 3
    assert int(L["n_positional"].sum()) == 0
