"""Every supported family: a tiny random model with planted dead neurons and token detectors
(planted_families.py), saved in a Hugging Face cache layout and analysed by hub id offline. Dead sets are
exact, n_active equals a float forward-hook count of the firing rule, suppression scores equal an
independent value-vector computation, and memory, offload and layer-major execution give identical tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import opt_neurons
from opt_neurons import ModelError, architectures
from test_execution import assert_same

import planted_families as P

NAMES = [f.name for f in P.FAMILIES]


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """All families' models in one HF cache folder, which huggingface_hub resolves hub ids in."""
    import huggingface_hub.constants as constants

    root = tmp_path_factory.mktemp("families-hub")
    models = {}
    for fam in P.FAMILIES:
        models[fam.name] = P.make_model(fam)
        P.save_in_hub_cache(models[fam.name], root, fam.name)
    before = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(root)
    yield root, models
    constants.HF_HUB_CACHE = before


def analyze(name: str, tokens: np.ndarray, **kw):
    return opt_neurons.analyze(f"planted/{name}", tokens, batch_size=4, block_size=8, progress=False, **kw)


@pytest.fixture(scope="session")
def runs(hub):
    """name -> (tokens, memory-mode Analysis)."""
    out = {}
    for fam in P.FAMILIES:
        tokens = P.make_tokens(start=fam.start)
        out[fam.name] = tokens, analyze(fam.name, tokens, execution="memory")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_planted_neurons_are_found_exactly(hub, runs, name):
    fam = P.BY_NAME[name]
    tokens, a = runs[name]
    m = a.metadata
    assert m["model_id"] == f"planted/{name}" and m["n_neurons"] == fam.n_neurons and m["n_layers"] == P.LAYERS
    assert m["bos_token_id"] == fam.start  # the family's start / separator convention
    assert m["activation_threshold"] == 0.0 and "> 0" in m["firing_rule"]
    n = a.neurons
    dead = {(int(r["layer"]), int(r["neuron"])) for r in n.filter(n["dead"]).iter_rows(named=True)}
    assert dead == {(layer, k) for layer, ks in P.DEAD.items() for k in ks}
    det = {(int(r["layer"]), int(r["neuron"])): list(r["detected_tokens"])
           for r in n.filter(n["token_detector"]).iter_rows(named=True)}  # fmt: skip
    assert det == {key: [token] for key, token in P.DETECTORS.items()}
    # n_active: the float forward-hook count of act(pre) > 0, every neuron
    fires = P.float_fires(hub[1][name], fam, tokens)
    assert n["n_active"].to_numpy().reshape(P.LAYERS, -1).tolist() == fires.sum(1).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_suppression_scores_are_value_vectors_against_the_unembedding(hub, runs, name):
    """s_t = W_U[t] . (P v), v = the down projection's column (GPT-2: Conv1D row) of the neuron, P = any
    output projection (OPT-350m's project_out); the final norm's gain is not folded in (METHOD.md)."""
    fam = P.BY_NAME[name]
    model = hub[1][name]
    _, a = runs[name]
    w_u = model.get_output_embeddings().weight.detach().double()
    project = getattr(getattr(getattr(model, "model", None), "decoder", None), "project_out", None)
    for (layer, k), token in P.DETECTORS.items():
        down = P.get(P.get(model, fam.layers)[layer], fam.down).weight.detach().double()
        v = down[k] if fam.transposed else down[:, k]
        if project is not None:
            v = project.weight.detach().double() @ v
        row = a.neurons.filter((a.neurons["layer"] == layer) & (a.neurons["neuron"] == k)).row(0, named=True)
        assert row["suppression_score"] == pytest.approx(float(w_u[token] @ v), rel=1e-5, abs=1e-6)
        scores = w_u @ v
        assert row["detected_token_ranks"] == [int((scores < scores[token]).sum())]


@pytest.mark.parametrize("name", NAMES)
def test_offload_and_layer_major_are_identical(hub, runs, name, tmp_path):
    tokens, plain = runs[name]
    layer = analyze(name, tokens, execution="layer")
    assert layer.metadata["execution"] == "layer"
    assert_same(layer, plain)
    off = analyze(name, tokens, device_map="auto", max_memory={"cpu": "40KB"}, offload_folder=tmp_path / "off")
    assert off.metadata["execution"] == "offload" and "disk" in set(off.metadata["device_map"].values())
    assert_same(off, plain)


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "opt-350m-like"])
def test_layer_major_from_bin_shards_is_identical(hub, runs, name):
    """Only pytorch .bin shards (tied weights stored once; GPT-NeoX's unembedding stored as embed_out): layer-major
    streams them and gives the tables of the same files loaded in memory, and the counts of the safetensors model
    (its suppression scores may differ in the last bits: BLAS results depend on where the tensors lie)."""
    tokens, plain = runs[name]
    P.save_in_hub_cache(hub[1][name], hub[0], f"{name}-bin", bin_shard=40_000)
    layer, memory = (opt_neurons.analyze(f"planted/{name}-bin", tokens, batch_size=4, block_size=8, progress=False,
                                         execution=mode) for mode in ("layer", "memory"))  # fmt: skip
    assert_same(layer, memory)
    counts = ["n_active", "dead", "token_detector", "detected_tokens", "trigram_detector", "mi_position"]
    assert layer.neurons.select(counts).equals(plain.neurons.select(counts))


def test_smooth_gate_threshold(hub):
    """A SiLU gate fires where silu(gate) > activation_threshold: counted as the float hooks count it, recorded
    in the metadata, and part of the checkpoint's fingerprint."""
    fam = P.BY_NAME["llama"]
    tokens = P.make_tokens(start=fam.start)
    a = analyze("llama", tokens, activation_threshold=0.05)
    fires = P.float_fires(hub[1]["llama"], fam, tokens, threshold=0.05)
    assert a.neurons["n_active"].to_numpy().reshape(P.LAYERS, -1).tolist() == fires.sum(1).tolist()
    assert fires.sum() < P.float_fires(hub[1]["llama"], fam, tokens).sum()  # the threshold changes the counts
    assert a.metadata["activation_threshold"] == 0.05 and "silu(gate) > 0.05" in a.metadata["firing_rule"]


@pytest.mark.parametrize("name", ["gpt_neox", "gemma2"])
def test_interrupted_run_resumes_only_with_the_same_threshold(hub, runs, name, tmp_path, monkeypatch):
    """A checkpoint of another family resumes to the uninterrupted tables; one counted with another
    activation_threshold is not used (the threshold is part of its fingerprint)."""
    import shutil

    from test_execution import interrupt_at_update

    fam = P.BY_NAME[name]
    tokens, plain = runs[name]
    interrupt_at_update(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        analyze(name, tokens, out=tmp_path / "a", checkpoint_every=100)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    other = analyze(name, tokens, out=tmp_path / "a", activation_threshold=0.01)
    assert other.metadata["resumed_sequences"] == 0
    fires = P.float_fires(hub[1][name], fam, tokens, threshold=0.01)
    assert other.neurons["n_active"].to_numpy().reshape(P.LAYERS, -1).tolist() == fires.sum(1).tolist()
    resumed = analyze(name, tokens, out=tmp_path / "b")
    assert resumed.metadata["resumed_sequences"] == 4  # the first batch
    assert_same(resumed, plain)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.1", True])
def test_bad_activation_threshold(hub, bad):
    from opt_neurons.errors import OptionError

    with pytest.raises(OptionError, match="activation_threshold must be (finite|a number)"):
        analyze("llama", P.make_tokens(), activation_threshold=bad)


def test_cli_activation_threshold(hub, tmp_path, capsys):
    from opt_neurons.cli import main

    args = ["analyze", "planted/llama", "--activation-threshold", "nan", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "activation_threshold must be finite" in err[0]


def test_negative_threshold_on_relu_input_is_refused(hub):
    with pytest.raises(ModelError, match=">= 0"):
        analyze("opt", P.make_tokens(), activation_threshold=-0.1)


def test_unknown_family_names_the_supported_ones_and_register_architecture(tmp_path):
    from transformers import BertConfig, BertLMHeadModel

    BertLMHeadModel(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                               vocab_size=100, is_decoder=True)).save_pretrained(tmp_path / "bert")  # fmt: skip
    with pytest.raises(ModelError, match=r"'bert' model.*supported: .*gpt2.*llama.*register_architecture"):
        opt_neurons.analyze(tmp_path / "bert", P.make_tokens(), progress=False)


def test_register_architecture_adds_a_family(hub):
    """A user's entry for a family opt_neurons lacks (here Llama's layout under another model_type)."""
    assert "registered-llama" not in architectures.supported()
    model = P.make_model(P.BY_NAME["llama"])
    model.config.model_type = "registered-llama"
    with pytest.raises(ModelError, match="register_architecture"):
        opt_neurons.analyze(model, P.make_tokens(), progress=False)
    entry = opt_neurons.register_architecture("registered-llama", layers="model.layers", neurons="mlp.act_fn",
                                              down="mlp.down_proj", body="model", final_norm="model.norm", gated=True)  # fmt: skip
    try:
        a = opt_neurons.analyze(model, P.make_tokens(), batch_size=4, progress=False)
        assert a.metadata["family"] == entry.name == "registered-llama"
        plain = analyze("llama", P.make_tokens())
        assert a.neurons["n_active"].equals(plain.neurons["n_active"])
    finally:
        for t in entry.model_types:
            architectures.REGISTRY.pop(t)


def test_start_token_convention():
    """GPT-2 / Pythia start and separate with end-of-text (they prepend nothing); Llama-family with BOS,
    or end-of-text where the tokenizer has no BOS (Qwen)."""

    class Tok:
        def __init__(self, bos, eos):
            self.bos_token_id, self.eos_token_id = bos, eos

    class Cfg:
        def __init__(self, model_type):
            self.model_type, self.bos_token_id, self.eos_token_id = model_type, None, None

    assert architectures.start_token_id(Cfg("gpt_neox"), Tok(0, 0)) == 0
    assert architectures.start_token_id(Cfg("gpt2"), Tok(None, 50256)) == 50256
    assert architectures.start_token_id(Cfg("llama"), Tok(1, 2)) == 1
    assert architectures.start_token_id(Cfg("qwen2"), Tok(None, 151643)) == 151643
    assert architectures.start_token_id(Cfg("opt"), Tok(2, 2)) == 2


def test_default_sequence_length_is_capped_at_2048(hub, tmp_path):
    from transformers import LlamaConfig

    assert architectures.default_seq_len(LlamaConfig(max_position_embeddings=131072)) == 2048
    assert architectures.default_seq_len(LlamaConfig(max_position_embeddings=64)) == 64
    from transformers import BloomConfig

    assert architectures.max_positions(BloomConfig()) is None and architectures.default_seq_len(BloomConfig()) == 2048


def test_gpt2_text_starts_and_separates_with_end_of_text(hub, tmp_path):
    """Text is packed with the family's start token: GPT-2's <|endoftext|>, as it was trained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import gpt2_tokenizer

    tok = gpt2_tokenizer()
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_inner=32, n_layer=1, n_head=2, n_positions=32, vocab_size=len(tok),
                               bos_token_id=50256, eos_token_id=50256)).save_pretrained(tmp_path / "g")  # fmt: skip
    tok.save_pretrained(tmp_path / "g")
    a = opt_neurons.analyze(tmp_path / "g", ["one document", "another one"], n_tokens=40, progress=False)
    assert a.metadata["bos_token_id"] == 50256 and a.metadata["T"] == 32
    assert a.metadata["T_source"] == "min(max positions, 2048)" and a.metadata["family"] == "gpt2"


RSS = """
import sys, numpy as np, opt_neurons, huggingface_hub.constants as c
import polars, safetensors, transformers
from transformers import AutoModelForCausalLM, LlamaForCausalLM
c.HF_HUB_CACHE = sys.argv[1]
tokens = np.random.default_rng(0).integers(3, 512, size=(2, 16)); tokens[:, 0] = 1
status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts here (ru_maxrss is the parent's)
before = status("VmRSS:")
opt_neurons.analyze("planted/big-bin", tokens, execution="layer", batch_size=2, progress=False)
print(before, status("VmHWM:"))
"""


def test_bin_shards_stream_in_layer_major_without_the_whole_model_in_memory(tmp_path):
    """A checkpoint with only sharded pytorch .bin files: layer-major reads one layer at a time
    (torch.load(mmap=True) per shard), so the process's peak memory stays well under the model's size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # Attention-heavy (d_model 1536, 256 neurons a layer): the weights, not the statistics, dominate memory.
    cfg = LlamaConfig(vocab_size=512, hidden_size=1536, intermediate_size=256, num_hidden_layers=10,
                      num_attention_heads=12, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)  # fmt: skip
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg)
    size = sum(p.numel() * 4 for p in model.parameters())  # ~430 MB
    P.save_in_hub_cache(model, tmp_path, "big-bin", bin_shard=45 << 20)
    del model
    folder = next((tmp_path / "models--planted--big-bin" / "snapshots").iterdir())
    assert not list(folder.glob("*.safetensors")) and len(list(folder.glob("*.bin"))) >= 10
    out = subprocess.run([sys.executable, "-c", RSS, str(tmp_path)], capture_output=True, text=True, check=True)
    before, peak = (int(x) for x in out.stdout.split()[-2:])
    assert size > 400e6
    assert peak - before < 0.4 * size, (peak - before, size)


def test_report_and_compare_across_families(hub, runs, tmp_path):
    """A report of a GPT-2 run (its neuron cards score value vectors through the family's Conv1D), and a
    comparison of runs of different families and depths on relative depth."""
    from opt_neurons.report import compare, write_report

    dirs = []
    for name in ("gpt2", "llama", "opt-350m-like"):
        _, a = runs[name]
        a.save(tmp_path / name)
        dirs.append(tmp_path / name)
    page = write_report(runs["gpt2"][1], tmp_path / "gpt2")
    html = page.read_text()
    assert "Firing rule" in html and "mlp.act output = gelu_new(x) &gt; 0" in html and "family gpt2" in html
    assert "Most suppressed tokens" in html  # the cards scored the model loaded by hub id
    out = compare(dirs, tmp_path / "cmp")
    import polars as pl

    summary = pl.read_parquet(tmp_path / "cmp" / "summary.parquet")
    assert sorted(summary["model"].to_list()) == ["gpt2", "llama", "opt-350m-like"]
    assert summary["token_detectors"].to_list() == [3, 3, 3] and out.exists()
