"""The bundled demo model (python/opt_neurons/demo, made by scripts/train_demo.py): it loads as an OPT with its
tokenizer, and `analyze("demo")` keeps finding what it found when the values below were pinned. A change to the
analysis (or to data packing, the tokenizer or model loading) that shifts the results fails here; if the shift is
intended, recompute the values and re-pin them.

Pinned values: computed once (2400-step demo model, model.safetensors sha256 07121c26...) with
    a = opt_neurons.analyze("demo", n_tokens=50_000, progress=False)
on the CPU (float32; torch 2.15, transformers 5.24) and read off `a.layers`, `a.neurons` and `a.metadata`.
The tolerances leave room for another BLAS / CPU flipping activations that sit at ~0 (a neuron that fires once
or twice in 50k tokens can turn dead, or into a one-token "detector"), not for a change of method.
"""

from __future__ import annotations

import json

import pytest

import opt_neurons
from opt_neurons.model import DEMO_DIR

N_TOKENS = 50_000

# --- pinned (see the module docstring) ---
PACKED_TOKENS = 50_176  # 196 sequences of 256: exact
DATA_SHA256 = "333057caba26b6825ed64629e2a0169c139989c82bef6b4bce5b21cdec9d8ce0"  # packed ids: exact
DEAD_PER_LAYER = [0, 55, 58, 12]  # each +-3
DEAD_TOTAL = 125  # +-6
MEAN_FREQ_ALIVE = [0.34874, 0.11150, 0.12624, 0.14320]  # each +-0.005 (absolute)
TOTAL_ACTIVATIONS = 36_729_900  # sum of n_active over all neurons: relative +-0.2%
TOKEN_DETECTORS = 1  # +-2 (layer 3 neuron 608, one activation, on "Int": rare neurons pass the rule trivially)
TRIGRAM_DETECTORS = 4  # +-3 (all fire <= 6 times in 50k tokens)
POSITIONAL = 0  # exact: the largest I(act; pos) is far below the 0.05 threshold
MAX_MI_POSITION = 0.03763  # nats, +-0.003 (layer 3 neuron 484, more active at early positions)


@pytest.fixture(scope="module")
def demo():
    assert (DEMO_DIR / "model.safetensors").is_file(), f"the demo model is missing from {DEMO_DIR}"
    return opt_neurons.analyze("demo", n_tokens=N_TOKENS, progress=False)


def test_demo_files_load_as_opt():
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    weights = DEMO_DIR / "model.safetensors"
    assert weights.stat().st_size <= 15_000_000
    with safe_open(str(weights), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    cfg = AutoConfig.from_pretrained(DEMO_DIR)
    assert cfg.model_type == "opt" and cfg.activation_function == "relu" and cfg.do_layer_norm_before
    assert cfg.max_position_embeddings == 256
    tok = AutoTokenizer.from_pretrained(DEMO_DIR)
    assert len(tok) == cfg.vocab_size == 8192
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tok.bos_token_id == tok.eos_token_id == 2 and tok.pad_token_id == 1
    ids = tok("def f(x):\n    return x")["input_ids"]
    assert ids[0] == 2 and 2 not in ids[1:]  # OPT-style: BOS prepended
    assert tok.decode(ids[1:]) == "def f(x):\n    return x"  # byte-level: lossless
    assert json.loads((DEMO_DIR / "training.json").read_text())["steps"] > 0


def test_data(demo):
    assert demo.metadata["n_tokens"] == PACKED_TOKENS
    assert demo.metadata["data_sha256"] == DATA_SHA256, "the packed data changed (corpus, tokenizer or packing)"
    assert demo.metadata["dtype"] == "float32" or demo.metadata["device"] != "cpu"


def test_dead_neurons(demo):
    dead = demo.layers.sort("layer")["n_dead"].to_list()
    assert len(dead) == len(DEAD_PER_LAYER)
    for layer, (got, want) in enumerate(zip(dead, DEAD_PER_LAYER)):
        assert abs(got - want) <= 3, f"layer {layer}: {got} dead neurons, pinned {want}"
    assert abs(sum(dead) - DEAD_TOTAL) <= 6
    assert int(demo.neurons["dead"].sum()) == sum(dead)


def test_frequencies(demo):
    freq = demo.layers.sort("layer")["mean_frequency_alive"].to_list()
    assert freq == pytest.approx(MEAN_FREQ_ALIVE, abs=0.005)
    assert int(demo.neurons["n_active"].sum()) == pytest.approx(TOTAL_ACTIVATIONS, rel=0.002)


def test_detectors_and_positional(demo):
    layers = demo.layers
    assert abs(int(layers["n_token_detectors"].sum()) - TOKEN_DETECTORS) <= 2
    assert abs(int(layers["n_trigram_detectors"].sum()) - TRIGRAM_DETECTORS) <= 3
    assert int(layers["n_positional"].sum()) == POSITIONAL
    assert float(demo.neurons["mi_position"].max()) == pytest.approx(MAX_MI_POSITION, abs=0.003)
