"""End-to-end analyze(): tables against a float-hook reference, save/load, CLI, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import opt_neurons
from opt_neurons import DataError, ModelError, NeuronStats, _core
from opt_neurons.params import RunOptions
from opt_neurons.report import run_time
from opt_neurons.tables import build_tables

from conftest import save_tiny_opt


def float_counts(model_dir: Path, tokens: np.ndarray) -> np.ndarray:
    """Reference: fc1 outputs > 0 from plain float hooks, counted over all rows. (layers, neurons)."""
    from transformers import OPTForCausalLM

    model = OPTForCausalLM.from_pretrained(model_dir).eval()
    acts: list = []
    hooks = [l.fc1.register_forward_hook(lambda m, i, o: acts.append((o.reshape(-1, o.shape[-1]) > 0).float()))
             for l in model.model.decoder.layers]  # fmt: skip
    with torch.no_grad():
        model(torch.from_numpy(tokens))
    for h in hooks:
        h.remove()
    return torch.stack([a.sum(0) for a in acts]).numpy().astype(np.int64)


def test_frequencies_match_float_hooks(tiny_opt, tiny_tokens):
    a = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False)
    ref = float_counts(tiny_opt, tiny_tokens)
    n = a.neurons.sort("layer", "neuron")
    np.testing.assert_array_equal(n["n_active"].to_numpy().reshape(ref.shape), ref)
    np.testing.assert_array_equal(n["frequency"].to_numpy().reshape(ref.shape), ref / tiny_tokens.size)
    assert a.neurons["dead"].to_list() == (ref.reshape(-1) == 0).tolist()
    assert a.metadata["n_tokens"] == tiny_tokens.size
    assert a.layers["n_neurons"].to_list() == [100, 100]


def test_save_load_round_trip(tiny_opt, tiny_tokens, tmp_path):
    a = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False, out=tmp_path / "run")
    b = opt_neurons.load(tmp_path / "run")
    for name in ("neurons", "layers", "tokens", "positions"):
        assert getattr(a, name).equals(getattr(b, name)), name
    assert b.metadata["model_id"] == str(tiny_opt)
    assert b.metadata["thresholds"]["coverage"] == 0.95
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_text_data_is_packed_with_bos(tiny_opt, tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"Document number {i} says hello world."}) for i in range(40)))
    a = opt_neurons.analyze(tiny_opt, f, n_tokens=150, progress=False)
    m = a.metadata
    # n_tokens is rounded up to whole sequences of T = 64 tokens.
    assert m["T"] == 64 and m["n_tokens"] == 192 and m["n_sequences"] == 3
    assert m["position_totals"] == [3] * 64
    assert m["data_sources"][0]["sha256"]


def test_short_data_keeps_a_shorter_last_sequence(tiny_opt):
    from conftest import gpt2_tokenizer

    docs = ["one two three four five six seven eight nine ten"] * 8
    per_doc = len(gpt2_tokenizer()(docs[0])["input_ids"])
    stream = 8 * per_doc + 7  # documents joined by the separator
    a = opt_neurons.analyze(tiny_opt, docs, n_tokens=10_000, progress=False)
    m = a.metadata
    assert m["n_tokens"] == stream + m["n_sequences"]  # plus one BOS per sequence
    assert m["n_sequences"] == -(-stream // 63)
    assert m["position_totals"][0] == m["n_sequences"] and m["position_totals"][-1] == stream // 63


def test_cli_analyze_and_errors(tiny_opt, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "opt_neurons.cli", "analyze", str(tiny_opt), "--data", str(f),
                        "--tokens", "128", "--detail-tokens", "40", "--out", str(out), "--no-progress",
                        "--max-tokens", "3"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    b = opt_neurons.load(out)
    assert f"run time: {run_time(b.metadata)}\n" in r.stdout
    assert b.metadata["n_tokens"] == 128 and b.metadata["thresholds"]["max_tokens"] == 3
    assert b.metadata["detail_tokens"] == 64  # rounded up to a whole sequence of T = 64
    r = subprocess.run([sys.executable, "-m", "opt_neurons.cli", "analyze", "no-such-org/no-such-model",
                        "--out", str(tmp_path / "x"), "--no-progress"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    assert "cannot find model 'no-such-org/no-such-model'" in r.stderr


def test_unknown_model():
    with pytest.raises(ModelError, match="cannot find model"):
        opt_neurons.analyze("surely/not-a-model", ["text"], progress=False)


def test_model_without_relu(tmp_path, tiny_tokens):
    d = save_tiny_opt(tmp_path / "gelu", activation="gelu")
    with pytest.raises(ModelError, match="not 'relu'"):
        opt_neurons.analyze(d, tiny_tokens, progress=False)


def test_model_of_an_unsupported_family(tmp_path):
    """Since the families issue GPT-2 is supported; a family without an adapter (a BERT decoder) is refused."""
    from transformers import BertConfig, BertLMHeadModel

    cfg = BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, vocab_size=100, is_decoder=True)
    BertLMHeadModel(cfg).save_pretrained(tmp_path / "g")
    with pytest.raises(ModelError, match="no architecture adapter"):
        opt_neurons.analyze(tmp_path / "g", progress=False)
    with pytest.raises(ModelError, match="register_architecture"):
        opt_neurons.analyze(BertLMHeadModel(cfg), progress=False)


@pytest.mark.parametrize("data", [[], [""], ["   "]])
def test_empty_data(tiny_opt, data):
    with pytest.raises(DataError, match="empty"):
        opt_neurons.analyze(tiny_opt, data, progress=False)


def test_empty_folder_and_missing_path(tiny_opt, tmp_path):
    with pytest.raises(DataError, match="no .txt"):
        opt_neurons.analyze(tiny_opt, tmp_path, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        opt_neurons.analyze(tiny_opt, tmp_path / "nope.txt", progress=False)


def test_sequences_longer_than_the_model(tiny_opt):
    with pytest.raises(DataError, match="beyond the model's 64 positions"):
        opt_neurons.analyze(tiny_opt, ["hello"], seq_len=65, progress=False)
    with pytest.raises(DataError, match="longer than the model allows"):
        opt_neurons.analyze(tiny_opt, np.zeros((2, 65), dtype=np.int64), progress=False)


def test_warns_when_the_statistics_may_not_fit_in_host_memory(tiny_opt, tiny_tokens, monkeypatch):
    from opt_neurons import host_memory

    a = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False)
    bound = a.metadata["accumulator_bound_bytes"]
    assert a.metadata["accumulator_bytes"] <= bound  # 2 x 100 neurons: a few MB at most
    monkeypatch.setattr(host_memory, "available_bytes", lambda: bound - 1)
    with pytest.warns(RuntimeWarning, match=r"may need up to .* GB of host memory.*Lower ngram_capacity"):
        opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False)
    monkeypatch.setattr(host_memory, "available_bytes", lambda: bound)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False)
    # the example sample's state counts in the bound: without it the bound is lower by its own bound
    off = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False, examples=0)
    examples_bound = _core.Examples(2, 100, RunOptions().examples, 0).memory_bound()
    assert bound - off.metadata["accumulator_bound_bytes"] == examples_bound > 0


def test_unknown_threshold(tiny_opt, tiny_tokens):
    with pytest.raises(opt_neurons.OptNeuronsError, match="unknown threshold"):
        opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False, covrage=0.9)


def test_bitmask_shape_errors():
    s = NeuronStats(1, 100, 50, 8)
    with pytest.raises(ValueError, match="100 neurons need 2"):
        s.update(0, np.zeros((4, 1), np.uint64), np.zeros(4, np.uint32), np.arange(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="same length"):
        s.update(0, np.zeros((4, 2), np.uint64), np.zeros(3, np.uint32), np.arange(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="2-D"):
        s.update(0, np.zeros(8, np.uint64), np.zeros(4, np.uint32), np.arange(4, dtype=np.uint32))


def test_public_stats_accepts_torch_and_int64(tiny_tokens):
    s = NeuronStats(1, 64, 10, 4, bos_token_id=None)
    bits = torch.tensor([[1], [3], [0], [-1]], dtype=torch.int64)  # -1: all 64 neurons on
    s.update(0, bits, torch.tensor([1, 2, 3, 4]), torch.arange(4))
    t = build_tables(s)
    assert t.neurons["n_active"].to_list()[:3] == [3, 2, 1] and t.neurons["n_active"][63] == 1
    assert isinstance(t.layers, pl.DataFrame)


@pytest.mark.parametrize("detail_tokens", [None, 64])
def test_says_when_the_hosts_counting_set_the_speed(tiny_opt, tiny_tokens, monkeypatch, capsys, detail_tokens):
    import opt_neurons.pipeline as pipeline

    a = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=True)
    assert "set the speed" not in capsys.readouterr().out  # a CPU forward is far slower than the counting
    m = a.metadata  # the timings behind that judgement
    assert 0 < m["counting_seconds"] < m["forward_seconds"] < m["wall_seconds"] and m["forward_cpu_seconds"] > 0
    real = pipeline.count_forward
    monkeypatch.setattr(pipeline, "count_forward", lambda *a, **k: real(*a, **k) + 1000.0)  # as on a fast GPU
    opt_neurons.analyze(tiny_opt, tiny_tokens, progress=True, detail_tokens=detail_tokens)
    out = capsys.readouterr().out
    assert "counting, not the device, set the speed" in out
    assert ("detail_tokens" in out) == (detail_tokens is None)  # the advice, where it applies


def test_says_when_page_faults_slowed_a_cpu_forward(tiny_opt, tiny_tokens, monkeypatch, capsys):
    """The forward phase's page faults and system time are recorded; a CPU forward whose system time passes
    FAULTS_HINT_SHARE of its wall time gets the allocator hint, and one below it does not."""
    import opt_neurons.pipeline as pipeline

    m = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False).metadata
    assert m["forward_page_faults"] >= 0 and 0 <= m["forward_system_seconds"] <= m["forward_cpu_seconds"] + 0.01
    for system_seconds, hinted in [(1000.0, True), (0.0, False)]:
        counters = iter([(0, 0.0), (10**6, system_seconds)])
        monkeypatch.setattr(pipeline, "page_faults", lambda counters=counters: next(counters))
        m = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=True).metadata
        assert m["forward_page_faults"] == 10**6 and m["forward_system_seconds"] == system_seconds
        out = capsys.readouterr().out
        assert ("MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1" in out) == hinted, out
