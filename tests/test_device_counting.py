"""counting="device" (issue 22): the per-activation counting done in torch where the activations are, run here
on CPU tensors, against the host path and the plain reference: the same tables where the host's are exact,
certified bounds that bracket the exact values where not; mixed with host-counted shards and checkpoints."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import opt_neurons
from opt_neurons import NeuronStats
from opt_neurons.device_counting import (
    REDUCE_CELLS,
    DeviceCapture,
    kgram_codes,
    reduce_detail,
    unpack,
    whole_sequences,
)
from opt_neurons.errors import OptionError
from opt_neurons.tables import build_tables
from test_core_reference import (
    EXACT,
    SETTINGS,
    Stream,
    check_against_reference,
    examples,
    feed,
    random_stream,
    zipf_stream,
)
from test_execution import assert_same, interrupt_at_update, model_and_tokens, plain  # noqa: F401 (fixtures)

from planted import build_planted_opt


def device_feed(stats: NeuronStats, s: Stream, rng, cells: int = REDUCE_CELLS) -> None:
    """What DeviceCapture does with each batch, on CPU tensors: random groups of whole sequences reduced by
    `reduce_detail`, merged by `merge_counted`, the position counters summed and added at the end."""
    n_layers, _, f = s.acts.shape
    T = stats.config["max_positions"]
    counters = np.zeros((n_layers, T, f), np.int64)
    cuts = sorted(set(rng.integers(1, len(s.bounds), size=3).tolist())) if len(s.bounds) > 1 else []
    edges = [0, *cuts, len(s.bounds)]
    for a, b in zip(edges[:-1], edges[1:]):
        lo, hi = s.bounds[a][0], s.bounds[b - 1][1]
        tokens, positions = s.token_ids[lo:hi], s.positions[lo:hi]
        codes = [(torch.from_numpy(k), torch.from_numpy(c)) for k, c in kgram_codes(tokens, positions, s.bos)]
        counted = {}
        for layer in range(n_layers):
            flat, sizes, by_pos = reduce_detail(torch.from_numpy(s.acts[layer, lo:hi]), codes,
                                                torch.from_numpy(positions.astype(np.int64)),
                                                whole_sequences(positions), T, cells)  # fmt: skip
            counters[layer, : len(by_pos)] += by_pos.numpy()
            counted[layer] = unpack(flat.numpy(), sizes, f)
        stats.merge_counted(counted, tokens, positions)
    for layer in range(n_layers):
        stats.add_position_counts(layer, counters[layer])


@settings(max_examples=examples(30), **SETTINGS)
@given(
    n_layers=st.integers(1, 2),
    n_neurons=st.sampled_from([1, 65, 130]),
    vocab=st.sampled_from([3, 40, 300]),
    max_positions=st.integers(1, 24),
    n_seqs=st.integers(1, 8),
    bos=st.sampled_from([None, 0, 2]),
    ragged=st.booleans(),
    cells=st.sampled_from([REDUCE_CELLS, 1, 100]),
    seed=st.integers(0, 2**32 - 1),
)
def test_device_reduction_equals_the_host_path_on_random_streams(n_layers, n_neurons, vocab, max_positions, n_seqs,
                                                                 bos, ragged, cells, seed):  # fmt: skip
    """Ragged sequences take the scatter path of the position counts, whole ones the sum over sequences; small
    `cells` reduce a neuron or a few at a time."""
    rng = np.random.default_rng(seed)
    s = random_stream(rng, n_layers=n_layers, n_neurons=n_neurons, vocab=vocab, max_positions=max_positions,
                      n_seqs=n_seqs, bos=bos, ragged=ragged)  # fmt: skip
    device, host = s.new_stats(), s.new_stats()
    device_feed(device, s, rng, cells)
    feed(host, s, rng)
    check_against_reference(device, s.reference())
    assert device.to_bytes() != b"" and device.rows == host.rows and device.detail_rows == host.detail_rows
    for name in ("neurons", "layers", "tokens", "positions"):
        assert getattr(build_tables(device), name).equals(getattr(build_tables(host), name)), name


@settings(max_examples=examples(20), **SETTINGS)
@given(capacity=st.sampled_from([4, 16, 64]), seed=st.integers(0, 2**32 - 1))
def test_device_reduction_keeps_the_certified_bounds_with_small_capacity(capacity, seed):
    rng = np.random.default_rng(seed)
    s, _ = zipf_stream(rng, vocab=500, n_seqs=10, max_positions=200, n_layers=1, n_neurons=64)
    stats = s.new_stats(capacity)
    device_feed(stats, s, rng, int(rng.choice([REDUCE_CELLS, 300])))
    seen = check_against_reference(stats, s.reference(), capacity=capacity, positional=False)
    assert seen["lossy"] > 0


@settings(max_examples=examples(40), **SETTINGS)
@given(
    capacity=st.integers(1, 24),
    n_keys=st.integers(1, 60),
    n_blocks=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_weighted_merge_against_a_plain_reference(capacity, n_keys, n_blocks, seed):
    """Random blocks of (neuron, token, count) triples merged by the core against exact Python counts: every
    token's true count lies in [stored, stored + slack], an absent one's in [0, slack], totals exact, the
    slack at most total / (capacity // 2 + 1) (Misra-Gries' bound, weighted), and exact counts below capacity."""
    rng = np.random.default_rng(seed)
    f, vocab = 3, 64
    stats = NeuronStats(1, f, vocab, 4, bos_token_id=None, ngram_capacity=capacity)
    truth = [dict() for _ in range(f)]
    for _ in range(n_blocks):
        keys = rng.choice(vocab, size=min(n_keys, vocab), replace=False)
        pairs = sorted({(int(rng.integers(f)), int(k)) for k in rng.choice(keys, size=int(rng.integers(1, 40)))})
        neurons = np.array([n for n, _ in pairs], np.uint32)
        tokens = np.array([k for _, k in pairs], np.uint32)
        counts = (rng.zipf(1.5, len(pairs)) % 1000 + 1).astype(np.uint32)
        active = np.zeros(f, np.uint64)
        np.add.at(active, neurons, counts.astype(np.uint64))
        rows = int(active.max())
        empty = (np.zeros(0, np.uint32), np.zeros(0, np.uint64), np.zeros(0, np.uint32))
        stats.merge_counted({0: (active, (neurons, tokens, counts), empty, empty)}, np.zeros(rows, np.uint32),
                            np.zeros(rows, np.uint32))  # fmt: skip
        for n, k, c in zip(neurons.tolist(), tokens.tolist(), counts.tolist()):
            truth[n][k] = truth[n].get(k, 0) + c
    for n in range(f):
        ids, cnts, slack = stats.token_counts(0, n)
        got = dict(zip(ids.tolist(), cnts.tolist()))
        total = sum(truth[n].values())
        assert slack <= total / (max(capacity // 2, 1) + 1)
        if len(truth[n]) < capacity:
            assert slack == 0 and got == truth[n]
        for k in range(vocab):
            assert got.get(k, 0) <= truth[n].get(k, 0) <= got.get(k, 0) + slack, (n, k)


def test_mixed_device_and_host_shards_merge_to_one_run():
    rng = np.random.default_rng(4)
    s, _ = zipf_stream(rng, vocab=300, n_seqs=12, max_positions=64, n_layers=2, n_neurons=130)
    single = s.new_stats()
    feed(single, s, rng)
    a, b = s.new_stats(), s.new_stats()
    device_feed(a, s.subset(list(range(0, 12, 2))), rng)
    feed(b, s.subset(list(range(1, 12, 2))), rng)
    a.merge(b)
    expected = build_tables(single)
    for name in ("neurons", "layers", "tokens", "positions"):
        assert getattr(build_tables(a), name).equals(getattr(expected, name)), name
    check_against_reference(a, s.reference(), capacity=EXACT)


def test_merge_counted_refuses_bad_counts_and_changes_nothing():
    from opt_neurons.errors import DataError, ShapeError

    stats = NeuronStats(1, 3, 10, 4)
    empty = (np.zeros(0, np.uint32), np.zeros(0, np.uint64), np.zeros(0, np.uint32))
    tokens = (np.array([2], np.uint32), np.array([5], np.uint32), np.array([3], np.uint32))
    with pytest.raises(DataError, match="3 tokens counted but 1 activations"):
        stats.merge_counted({0: (np.array([0, 0, 1]), tokens, empty, empty)}, [5, 6], [0, 1])
    with pytest.raises(ShapeError, match="max_positions x n_neurons"):
        stats.add_position_counts(0, np.zeros((3, 3), np.uint32))
    assert stats.rows == 0 and stats.position_counts(0, 2).sum() == 0


# ------------------------------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted_opt(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def planted_exact(planted):
    """The host path with summaries that never prune: every cover and detector exact."""
    return opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=8, progress=False, ngram_capacity=1 << 14)


def test_planted_model_device_counting_equals_the_exact_host_tables(planted, planted_exact):
    device = opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=8, progress=False,
                                 ngram_capacity=1 << 14, counting="device")  # fmt: skip
    assert device.metadata["counting"] == "device" and planted_exact.metadata["counting"] == "host"
    assert_same(device, planted_exact)


@pytest.mark.parametrize("capacity", [384, 8])
def test_planted_model_device_counting_brackets_the_exact_values(planted, planted_exact, capacity):
    """Lossy summaries (the default capacity loses some of the planted model's bigrams and trigrams, 8 many):
    counts and positional statistics equal the host's, each cover_k range holds the exact cover, detectors
    are claimed only where the exact statistics agree."""
    run = dict(batch_size=8, progress=False, ngram_capacity=capacity)
    host = opt_neurons.analyze(planted.model_dir, planted.tokens, **run)
    device = opt_neurons.analyze(planted.model_dir, planted.tokens, counting="device", **run)
    same = ["n_active", "frequency", "dead", "mi_position", "positional", "positional_kind", "active_intervals"]
    assert device.neurons.select(same).equals(host.neurons.select(same))
    assert device.positions.equals(host.positions)
    d = device.neurons.join(planted_exact.neurons, on=["layer", "neuron"], suffix="_exact")
    lossy = 0
    for k in (1, 2, 3):
        assert d.filter((pl.col(f"cover_{k}") > pl.col(f"cover_{k}_exact"))
                        | (pl.col(f"cover_{k}_max") < pl.col(f"cover_{k}_exact"))).height == 0  # fmt: skip
        lossy += d.filter(pl.col(f"cover_{k}") < pl.col(f"cover_{k}_max")).height
    assert lossy > 0
    claimed = d.filter(pl.col("token_detector"))
    assert claimed["token_detector_exact"].all()
    for got, want in zip(claimed["detected_tokens"].to_list(), claimed["detected_tokens_exact"].to_list()):
        assert set(got) <= set(want)
    assert d.filter(pl.col("trigram_detector") & ~pl.col("trigram_detector_exact")).height == 0


@pytest.mark.parametrize("execution", ["memory", "layer"])
def test_device_counting_equals_host_in_every_execution(model_and_tokens, plain, execution):  # noqa: F811
    d, tokens = model_and_tokens
    a = opt_neurons.analyze(d, tokens, batch_size=2, block_size=6, progress=False, execution=execution,
                            counting="device", detail_tokens=8 * 32)  # fmt: skip
    b = opt_neurons.analyze(d, tokens, batch_size=2, block_size=6, progress=False, execution=execution,
                            detail_tokens=8 * 32)  # fmt: skip
    assert_same(a, b)
    assert_same(opt_neurons.analyze(d, tokens, batch_size=2, progress=False, counting="device"), plain)


def test_layer_major_keeps_one_layers_position_counters_on_the_device(model_and_tokens, monkeypatch):  # noqa: F811
    """A layer's counters go to the host when the next layer's batches start (METHOD.md memory)."""
    d, tokens = model_and_tokens
    held, original = [], DeviceCapture.commit
    monkeypatch.setattr(DeviceCapture, "commit", lambda self, done: (original(self, done),
                                                                    held.append(sorted(self.positions))))  # fmt: skip
    opt_neurons.analyze(d, tokens, batch_size=2, block_size=6, progress=False, execution="layer", counting="device")
    assert max(len(h) for h in held) == 1 and {h[0] for h in held if h} == {0, 1, 2}


@pytest.mark.parametrize(("first", "then"), [("device", "device"), ("device", "host"), ("host", "device")])
def test_interrupted_run_resumes_with_either_counting(model_and_tokens, plain, tmp_path, monkeypatch, first, then):  # noqa: F811
    d, tokens = model_and_tokens
    out = tmp_path / "run"
    saved = interrupt_at_update(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(d, tokens, batch_size=2, progress=False, out=out, checkpoint_every=100, counting=first)
    assert [c.total for c in saved] == [6]
    resumed = opt_neurons.analyze(d, tokens, batch_size=2, progress=False, out=out, counting=then)
    assert resumed.metadata["resumed_sequences"] == 6
    assert_same(resumed, plain)


def test_counting_option_is_checked_and_has_a_flag(model_and_tokens, capsys):  # noqa: F811
    from opt_neurons.cli import main

    with pytest.raises(OptionError, match="unknown counting 'gpu': use one of auto, device, host"):
        opt_neurons.analyze("demo", counting="gpu")
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "--counting {auto,device,host}" in capsys.readouterr().out
    d, tokens = model_and_tokens
    a = opt_neurons.analyze(d, tokens[:2], progress=False)  # auto: the host until a GPU measurement says otherwise
    assert a.metadata["counting"] == "host"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
@pytest.mark.parametrize("detail_sequences", [None, 3])
def test_device_counting_on_cuda_equals_host_counting_on_cpu(planted, detail_sequences):
    """The real device path (reduction on the GPU, position counters there, copies on a side stream) against
    the host path on the CPU: same planted model in float32, exact summaries, every count and flag equal."""
    from transformers import OPTForCausalLM

    model = OPTForCausalLM.from_pretrained(planted.model_dir, dtype=torch.float32).eval()
    detail = None if detail_sequences is None else detail_sequences * planted.tokens.shape[1]
    run = dict(batch_size=8, progress=False, detail_tokens=detail, ngram_capacity=1 << 14)
    on_cpu = opt_neurons.analyze(model, planted.tokens, **run)
    on_gpu = opt_neurons.analyze(model.to("cuda"), planted.tokens, counting="device", **run)
    for name in ("neurons", "layers", "tokens", "positions"):
        a, b = getattr(on_cpu, name), getattr(on_gpu, name)
        floats = [c for c, t in a.schema.items() if t in (pl.Float32, pl.Float64)]
        assert a.drop(floats).equals(b.drop(floats)), name
        for c in floats:  # suppression scores come from GPU matmuls: equal up to rounding
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-4, atol=1e-5, err_msg=c)


def test_position_counts_of_short_whole_sequences_and_of_any_rows_agree():
    """Whole sequences shorter than T take the sum over sequences ((L, F) counts), other rows the scatter."""
    rng = np.random.default_rng(2)
    fired = torch.from_numpy(rng.random((12, 70)) < 0.4)
    positions = np.tile(np.arange(3), 4).astype(np.uint32)
    tokens = rng.integers(0, 9, 12).astype(np.uint32)
    codes = [(torch.from_numpy(k), torch.from_numpy(c)) for k, c in kgram_codes(tokens, positions, 2)]
    pos = torch.from_numpy(positions.astype(np.int64))
    assert whole_sequences(positions) == 3 and whole_sequences(positions[1:]) is None
    flat, sizes, summed = reduce_detail(fired, codes, pos, 3, 5)
    flat2, sizes2, scattered = reduce_detail(fired, codes, pos, None, 5)
    assert summed.shape == (3, 70) and scattered.shape == (5, 70)
    assert torch.equal(summed.to(torch.int32), scattered[:3]) and not scattered[3:].any()
    assert torch.equal(flat, flat2) and sizes == sizes2
    # Slices of a few neurons at a time: the same counts once the padding pairs are dropped.
    for cells in (1, 40):
        flat3, sizes3, scattered3 = reduce_detail(fired, codes, pos, None, 5, cells)
        assert torch.equal(scattered3, scattered)
        for a, b in zip(unpack(flat.numpy(), sizes, 70)[1:], unpack(flat3.numpy(), sizes3, 70)[1:]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


MIXED = """
import os, sys, numpy as np, opt_neurons
counting = "device" if int(os.environ["RANK"]) == 1 else "host"
a = opt_neurons.analyze(sys.argv[1], np.load(sys.argv[2]), batch_size=2, progress=False, out=sys.argv[3],
                        ngram_capacity=4096, detail_tokens=5 * 32, counting=counting)
print("RESULT", counting, a is not None)
"""


def test_two_processes_one_counting_on_the_device_equal_one(model_and_tokens, tmp_path):  # noqa: F811
    """A data-parallel run whose rank 1 counts on the device and rank 0 on the host: rank 0 merges the two
    states into exactly the tables of one process (both through torchrun, as test_two_processes_equal_one)."""
    import subprocess
    import sys

    from test_execution import free_port

    d, tokens = model_and_tokens
    np.save(tmp_path / "t.npy", tokens)
    for n, out in ((2, "two"), (1, "one")):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
                            f"--master-port={free_port()}", "--no-python", sys.executable, "-c", MIXED, str(d),
                            str(tmp_path / "t.npy"), str(tmp_path / out)], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        results = sorted(line for line in r.stdout.splitlines() if line.startswith("RESULT"))
        assert results == (["RESULT device False", "RESULT host True"] if n == 2 else ["RESULT host True"])
    merged, single = opt_neurons.load(tmp_path / "two"), opt_neurons.load(tmp_path / "one")
    assert merged.metadata["world_size"] == 2 and single.metadata["counting"] == "host"
    assert_same(merged, single)
