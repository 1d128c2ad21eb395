"""Per-source statistics (issue 19 item 3): with data of two named sources (two files of a folder), the
activations of every (layer, neuron, source) equal a float-hook reference on the planted model, for detail and
activation-only rows alike; data-parallel shards and an interrupted-and-resumed run give the same counts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import opt_neurons
from test_execution import free_port, interrupt_at_update

from conftest import gpt2_tokenizer
from planted import build_planted_opt, float_reference

SOURCE_COLUMNS = ("n_active_by_source", "frequency_by_source")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted_opt(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def folder(planted, tmp_path_factory):
    """The planted rows as text in two files: a quarter in a.jsonl, the rest in b.jsonl."""
    tok = gpt2_tokenizer()
    d = tmp_path_factory.mktemp("two-sources")
    rows = planted.tokens[:, 1:]
    quarter = len(rows) // 4
    for name, part in (("a.jsonl", rows[:quarter]), ("b.jsonl", rows[quarter:])):
        (d / name).write_text("\n".join(json.dumps({"text": tok.decode(r)}) for r in part))
    return d


def options(planted):
    # Half the planted data's tokens: every sequence full (the reference hooks take whole rows), both files read.
    return {"n_tokens": len(planted.tokens) // 2 * planted.seq_len, "seq_len": planted.seq_len, "progress": False}


def per_source(a: opt_neurons.Analysis, layers: int) -> np.ndarray:
    """(layers, sources, neurons) of the table's n_active_by_source."""
    n = a.neurons.sort("layer", "neuron").unnest("n_active_by_source")
    names = a.metadata["source_names"]
    return np.stack([n[name].to_numpy().reshape(layers, -1) for name in names], axis=1)


@pytest.fixture(scope="module")
def run(planted, folder):
    return opt_neurons.analyze(planted.model_dir, folder, batch_size=4, detail_tokens=3 * planted.seq_len,
                               **options(planted))  # fmt: skip


def test_counts_per_source_equal_float_hooks(run, planted):
    data = run._data  # the packed data analyze() ran on, each token with its source
    assert data.source_names == ["a.jsonl", "b.jsonl"]
    assert (data.lengths == planted.seq_len).all()
    ref = float_reference(planted, data.tokens)  # (layers, n_seq, T, F): fc1 output > 0 from plain hooks
    src = data.source_ids
    want = np.stack([ref[:, src == s].sum(axis=1) for s in range(2)], axis=1)  # (layers, sources, F)
    assert want[:, 0].sum() > 0 and want[:, 1].sum() > 0
    np.testing.assert_array_equal(per_source(run, planted.n_layers), want)
    tokens = np.bincount(src.reshape(-1), minlength=2)
    assert run.metadata["source_tokens"] == {"a.jsonl": int(tokens[0]), "b.jsonl": int(tokens[1])}
    assert run.metadata["source_names"] == data.source_names
    assert sum(run.metadata["source_tokens"].values()) == run.metadata["n_tokens"]
    # frequency on a source = activations on it / its tokens; dead on a source = none of its tokens fired it.
    freq = run.neurons.sort("layer", "neuron")["frequency_by_source"].struct.field("a.jsonl").to_numpy()
    np.testing.assert_allclose(freq, want[:, 0].reshape(-1) / tokens[0], rtol=1e-15)
    dead = run.layers.sort("layer")["dead_fraction_by_source"].struct.unnest()
    for s, name in enumerate(data.source_names):
        np.testing.assert_allclose(dead[name].to_numpy(), (want[:, s] == 0).mean(axis=1), rtol=1e-15)


def test_device_counting_counts_the_same_per_source(planted, folder, run):
    """counting="device" (issue 22) splits every row by source as the host path does."""
    a = opt_neurons.analyze(planted.model_dir, folder, batch_size=4, detail_tokens=3 * planted.seq_len,
                            counting="device", **options(planted))  # fmt: skip
    assert a.metadata["counting"] == "device"
    for c in SOURCE_COLUMNS:
        assert a.neurons[c].equals(run.neurons[c]), c
    assert a.layers["dead_fraction_by_source"].equals(run.layers["dead_fraction_by_source"])


def test_token_of_a_source_is_that_of_its_document(run):
    """Every token's source is its document's: separators (BOS inside a sequence) go with the document after
    them, a sequence's first BOS with the token after it; the sources switch once, where b.jsonl begins."""
    data = run._data
    flat = np.concatenate([data.source_ids[i, : data.lengths[i]] for i in range(len(data.lengths))])
    switch = np.flatnonzero(np.diff(flat.astype(int)))
    assert len(switch) == 1
    at = switch[0] + 1
    row, pos = divmod(at, int(data.lengths[0]))
    assert data.tokens[row, pos] == 50256  # the separator before b.jsonl's first document is b's
    assert data.source_ids[row, pos] == 1 and data.source_ids[row, pos - 1 if pos else 0] == (0 if pos else 1)
    assert (data.source_ids[:, 0] == data.source_ids[:, 1]).all()


def test_one_source_or_none_keeps_no_table(planted, folder, tmp_path):
    (tmp_path / "only.jsonl").write_text((folder / "b.jsonl").read_text())
    for data in (tmp_path / "only.jsonl", tmp_path):  # one file; a folder of one file
        a = opt_neurons.analyze(planted.model_dir, data, **options(planted))
        assert not set(SOURCE_COLUMNS) & set(a.neurons.columns)
        assert "dead_fraction_by_source" not in a.layers.columns
        assert a.metadata["source_tokens"] is None and a.metadata["source_names"] is None


def test_interrupted_and_resumed_run_counts_the_same(planted, folder, run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    saved = interrupt_at_update(monkeypatch, 3)
    args = dict(batch_size=2, detail_tokens=3 * planted.seq_len, out=out, checkpoint_every=2, **options(planted))
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(planted.model_dir, folder, **args)
    assert saved, "no checkpoint was written"
    resumed = opt_neurons.analyze(planted.model_dir, folder, **args)
    assert resumed.metadata["resumed_sequences"] > 0
    for c in SOURCE_COLUMNS:
        assert resumed.neurons[c].equals(run.neurons[c]), c
    assert resumed.layers["dead_fraction_by_source"].equals(run.layers["dead_fraction_by_source"])
    assert resumed.metadata["source_tokens"] == run.metadata["source_tokens"]


DIST = """
import json, sys, opt_neurons
a = opt_neurons.analyze(sys.argv[1], sys.argv[2], batch_size=2, out=sys.argv[3], **json.loads(sys.argv[4]))
print("RESULT", a is not None)
"""


def test_two_processes_count_the_same_per_source(planted, folder, run, tmp_path):
    kwargs = json.dumps({"detail_tokens": 3 * planted.seq_len, **options(planted)})
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                        f"--master-port={free_port()}", "--no-python", sys.executable, "-c", DIST,
                        str(planted.model_dir), str(folder), str(tmp_path / "two"), kwargs],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    merged = opt_neurons.load(tmp_path / "two")
    assert merged.metadata["world_size"] == 2
    for c in SOURCE_COLUMNS:
        assert merged.neurons[c].equals(run.neurons[c]), c
    assert merged.layers.select("dead_fraction_by_source").equals(run.layers.select("dead_fraction_by_source"))
    assert merged.metadata["source_tokens"] == run.metadata["source_tokens"]
    assert merged.metadata["source_names"] == run.metadata["source_names"] == ["a.jsonl", "b.jsonl"]
    assert (merged.neurons["n_active"] == run.neurons["n_active"]).all()
    assert pl.Series(list(merged.metadata["source_tokens"].values())).sum() == merged.metadata["n_tokens"]


@pytest.mark.parametrize("order", ["shuffled", "sorted", "one source"])
def test_source_split_counts_on_host_and_with_tensor_ops(order):
    """SourceSplit's numpy path (CPU forwards) and tensor path (GPU forwards, run here on CPU tensors) both give
    each source's fired rows per neuron; a source without rows in the batch counts 0."""
    import torch

    from opt_neurons.source_split import SourceSplit

    rng = np.random.default_rng(3)
    ids = rng.choice([0, 1, 3], size=500)  # source 2 has no rows here
    ids = {"shuffled": ids, "sorted": np.sort(ids), "one source": np.full(500, 3)}[order]
    x = torch.from_numpy(rng.normal(size=(500, 70)).astype(np.float32))
    want = np.stack([(x.numpy()[ids == s] > 0.5).sum(0) for s in range(4)])
    split = SourceSplit(ids, 4)
    assert split.rows.tolist() == np.bincount(ids, minlength=4).tolist()
    assert (split.order is None) == (order != "shuffled")
    np.testing.assert_array_equal(split.count(x > 0.5).numpy(), want)
    out = torch.zeros((4, 70), dtype=torch.int64)
    np.testing.assert_array_equal(split.count_tensor(x > 0.5, out).numpy(), want)
