"""Examples per neuron (issue 18): top k by value against a float-hook reference with the tie rule, a
uniform random sample (chi-square over seeds), exact merges of shards, checkpoints, contexts from the data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

import opt_neurons
from opt_neurons import _core
from opt_neurons.errors import DataMismatchError, ExamplesStateError, OptNeuronsError, ShapeError
from opt_neurons.example_tracker import ExampleTracker
from opt_neurons.topk import EMPTY_ID, batch_topk, merge_topk

from planted import build_planted_opt
from reference import pack

K = 6
BATCH = 8


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted_opt(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def run(planted):
    return opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=BATCH, progress=False, examples=K)


@pytest.fixture(scope="module")
def values(planted):
    """(layers, n_seq, T, F) float32 fc1 outputs from plain forward hooks, batched as the run batches."""
    from transformers import OPTForCausalLM

    model = OPTForCausalLM.from_pretrained(planted.model_dir, dtype="float32").eval()
    dec = model.model.decoder
    n, t = planted.tokens.shape
    out = np.zeros((len(dec.layers), n, t, dec.layers[0].fc1.out_features), np.float32)
    cur = {}
    hooks = [
        lyr.fc1.register_forward_hook(
            lambda m, a, o, l=l: out.__setitem__(
                (l, slice(cur["i"], cur["i"] + cur["n"])), o.reshape(cur["n"], t, -1).numpy()
            )
        )
        for l, lyr in enumerate(dec.layers)
    ]
    with torch.no_grad():
        for i in range(0, n, BATCH):
            ids = torch.as_tensor(planted.tokens[i : i + BATCH])
            cur["i"], cur["n"] = i, len(ids)
            dec(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return out


def of(run, key, kind=None):
    layer, neuron = key
    e = run.example_table.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))
    return e if kind is None else e.filter(pl.col("kind") == kind).sort("rank")


def test_token_detector_examples_fire_on_its_tokens(run, planted):
    assert planted.token_detectors
    for key, ids in planted.token_detectors.items():
        e = of(run, key)
        assert e.height == 2 * K, key
        assert set(e["kind"]) == {"top", "random"}
        assert np.isin(planted.tokens[e["sequence"].to_numpy(), e["position"].to_numpy()], ids).all(), key
        ctx = run.examples(*key, context=3)
        assert ctx["token"].is_in(ids).all() and ctx["context"].str.contains(r"\[\[").all()


def test_positional_examples_lie_in_the_active_intervals(run, planted):
    pure = {k: v for k, v in planted.positional.items() if v["pure"]}
    assert pure
    for key, info in pure.items():
        pos = of(run, key)["position"].to_numpy()
        inside = np.zeros(len(pos), bool)
        for s, e in info["rule"]["intervals"]:
            inside |= (pos >= s) & (pos < e)
        assert len(pos) == 2 * K and inside.all(), key


def test_top_k_equals_the_float_reference_with_the_tie_rule(run, values):
    L, n, t, f = values.shape
    seq, pos = np.meshgrid(np.arange(n), np.arange(t), indexing="ij")
    ties = 0
    neurons = run.neurons.sort("layer", "neuron")
    for layer in range(L):
        for j in range(f):
            v = values[layer, :, :, j]
            on = v > 0
            order = np.lexsort((pos[on], seq[on], -v[on]))[:K]  # value descending, then (sequence, position)
            got = of(run, (layer, j), "top")
            np.testing.assert_array_equal(got["value"].to_numpy(), v[on][order])
            np.testing.assert_array_equal(got["sequence"].to_numpy(), seq[on][order])
            np.testing.assert_array_equal(got["position"].to_numpy(), pos[on][order])
            if on.sum() > K and np.sort(v[on])[::-1][K - 1] == np.sort(v[on])[::-1][K]:
                ties += 1
            r = neurons.row(layer * f + j, named=True)
            if on.any():
                assert r["max_activation"] == float(v[on].max())
                assert r["mean_activation"] == pytest.approx(float(v[on].astype(np.float64).mean()), rel=1e-9)
            else:
                assert r["max_activation"] is None and r["mean_activation"] is None
    assert ties > 0, "the planted model gave no tie at the k-th value: the tie rule went untested here"


def test_the_device_path_gives_the_host_paths_examples(planted, run, monkeypatch):
    """On the CPU the tracker takes its host path; the device path (dense keys, every row) run there on
    the same batches must give the same examples and activation columns, to the bit."""
    monkeypatch.setattr(ExampleTracker, "on_host", staticmethod(lambda x: False))
    dense = opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=BATCH, progress=False, examples=K)
    assert dense.example_table.equals(run.example_table)
    cols = ["max_activation", "mean_activation"]
    assert dense.neurons.select(cols).equals(run.neurons.select(cols))


def host_batch_topk(xb: torch.Tensor, k: int, threshold: float, kth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tracker's CPU path: the Rust core's scan of the firing entries at or above the running k-th value."""
    x = xb.float().numpy()
    v, rows, _, _ = _core.Examples.scan_batch(x, (x > threshold).view(np.uint8), len(x), kth.numpy(), k)
    return torch.from_numpy(v), torch.from_numpy(rows)


@given(
    rows=st.integers(1, 70),
    n=st.integers(1, 40),
    k=st.integers(1, 9),
    detail=st.floats(0, 1),
    threshold=st.sampled_from([0.0, -1.0, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_the_host_scan_equals_a_numpy_reference(rows, n, k, detail, threshold, seed):
    """scan_batch against the plain definition: per neuron the float64 sum and maximum of the firing values
    over all rows, and the first k firing detail rows at or above the floor sorted by (value desc, row)."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-4, 5, size=(rows, n)) / 2).astype(np.float32)  # many ties
    x[rng.random((rows, n)) < 0.1] = -0.0
    floor = np.where(rng.random(n) < 0.3, 0.5, -np.inf).astype(np.float32)
    n_detail = int(rows * detail)
    fired = x > threshold
    v, r, sums, maxima = _core.Examples.scan_batch(x, fired.view(np.uint8), n_detail, floor, k)
    for j in range(n):
        on = fired[:, j]
        vals = x[on, j] + np.float32(0.0)
        assert sums[j] == vals.astype(np.float64).sum()
        assert maxima[j] == (vals.max() if on.any() else -np.inf)
        cand = np.flatnonzero(on[:n_detail] & (x[:n_detail, j] >= floor[j]))
        order = cand[np.lexsort((cand, -x[cand, j]))][:k]
        want = np.full(k, -np.inf, np.float32)
        want[: len(order)] = x[order, j] + np.float32(0.0)
        np.testing.assert_array_equal(v[:, j], want)
        np.testing.assert_array_equal(r[: len(order), j], order)


def test_a_strided_neuron_tensor_gives_the_contiguous_ones_examples():
    """A hooked neuron tensor may be a view (a slice of a fused output): the host path reads it as it is."""
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((64, 20), dtype=np.float32))[:, ::2]
    states = []
    for t in (x, x.contiguous()):
        tracker = ExampleTracker(1, 10, 3, 0)
        tracker.set_rows(np.arange(64, dtype=np.uint32), first_sequence=0)
        tracker.observe(0, t, 64)
        tracker.commit(64)
        states.append(tracker.device[0])
    assert all(torch.equal(a, b) for a, b in zip(*states))


def test_the_host_scan_names_mismatched_shapes():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ShapeError, match="mask of shape"):
        _core.Examples.scan_batch(x, np.zeros((4, 2), np.uint8), 4, np.zeros(3, np.float32), 2)
    with pytest.raises(ShapeError, match="floors"):
        _core.Examples.scan_batch(x, np.zeros((4, 3), np.uint8), 4, np.zeros(2, np.float32), 2)


@pytest.mark.parametrize("path", ["device", "host"])
@pytest.mark.parametrize("threshold", [0.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_batch_top_k_and_merge_follow_the_tie_rule(dtype, threshold, path):
    rng = np.random.default_rng(3)
    k, f, rows = 5, 40, 300
    x = rng.integers(-3, 4, size=(rows, f)).astype(np.float32) / 2  # many equal values, negatives, zeros
    x[:, 0] = -1  # a neuron that never fires
    x[:7, 1], x[7:, 1] = 1, -1  # one that fires fewer than k times in a batch... and more in the next
    x[100:200:3, 2] = -0.0  # equal to +0.0: ordered by row like any other tie (when 0 fires)
    ids = np.arange(rows, dtype=np.int64) * 10
    values = torch.full((k, f), float("-inf"))
    kept = torch.full((k, f), EMPTY_ID, dtype=torch.int64)
    for lo in range(0, rows, 64):  # batches of 64 rows, the last shorter
        xb = torch.from_numpy(x[lo : lo + 64]).to(dtype)
        v, r = batch_topk(xb, k, threshold) if path == "device" else host_batch_topk(xb, k, threshold, values[-1])
        i = torch.from_numpy(ids[lo : lo + 64])[r].masked_fill(v == float("-inf"), EMPTY_ID)
        values, kept = merge_topk(values, kept, v, i, k)
    for j in range(f):
        on = x[:, j] > threshold
        order = np.lexsort((ids[on], -x[on, j]))[:k]
        want_v = np.full(k, -np.inf, np.float32)
        want_i = np.full(k, EMPTY_ID, np.int64)
        want_v[: len(order)], want_i[: len(order)] = x[on, j][order], ids[on][order]
        np.testing.assert_array_equal(values[:, j].numpy(), want_v)
        np.testing.assert_array_equal(kept[:, j].numpy(), want_i)


def test_random_examples_give_every_firing_position_equal_probability(values):
    # A live planted neuron's firing positions; the sampler over 3,000 seeds (k = 4).
    on = values[0, :, :, :] > 0
    j = int(np.argmin(np.abs(on.sum((0, 1)) - 60)))  # a neuron firing about 60 times
    bits = pack(on[:, :, j].reshape(-1, 1))
    n, t = on.shape[:2]
    seqs = np.repeat(np.arange(n, dtype=np.uint32), t)
    pos = np.tile(np.arange(t, dtype=np.uint32), n)
    firing = np.flatnonzero(on[:, :, j].reshape(-1))
    hits = dict.fromkeys(firing.tolist(), 0)
    seeds, k = 3000, 4
    for seed in range(seeds):
        e = _core.Examples(1, 1, k, seed)
        e.update_layers([0], [[bits]], seqs, pos)
        for i in e.sample(0, 0):
            hits[int(i >> 32) * t + int(i & 0xFFFFFFFF)] += 1
    counts = np.array(list(hits.values()), float)
    assert counts.sum() == seeds * k
    expect = seeds * k / len(counts)
    stat = ((counts - expect) ** 2 / expect).sum()
    assert stat < chi2.ppf(0.999, len(counts) - 1), stat


def test_two_shards_merge_to_one_stream_exactly(planted, values):
    L, n, t, f = values.shape
    x = torch.from_numpy(values.reshape(L, n * t, f))
    positions = np.tile(np.arange(t, dtype=np.uint32), n)

    def feed(tr: ExampleTracker, seqs: range) -> None:
        for s in seqs:  # a batch per sequence, in the order given
            rows = slice(s * t, (s + 1) * t)
            tr.set_rows(positions[rows], s)
            for layer in range(L):
                tr.observe(layer, x[layer, rows], t)
            tr.commit(t)
            tr.count({layer: [pack(values[layer, s] > 0)] for layer in range(L)}, tr.sequences, positions[rows])

    one, a, b = (ExampleTracker(L, f, K, 5) for _ in range(3))
    feed(one, range(n))
    feed(a, range(n // 3, n))  # shards of any size, each in data order, merged in any order
    feed(b, range(n // 3))
    merged = a.sync()
    merged.merge(b.sync())
    want = one.sync()
    from opt_neurons.example_tables import examples_table

    assert examples_table(merged).equals(examples_table(want))
    sm, mm = merged.sums_and_maxima()
    so, mo = want.sums_and_maxima()
    np.testing.assert_array_equal(mm, mo)
    np.testing.assert_allclose(sm, so, rtol=1e-12)


def test_interrupted_run_resumes_to_the_same_examples(planted, run, tmp_path, monkeypatch):
    from test_execution import interrupt_at_update

    out = tmp_path / "run"
    interrupt_at_update(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=BATCH, progress=False, out=out,
                            examples=K, checkpoint_every=1000)  # fmt: skip
    assert (out / "checkpoint" / "examples.bin").exists()
    resumed = opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=BATCH, progress=False, out=out,
                                  examples=K)  # fmt: skip
    assert resumed.metadata["resumed_sequences"] == 2 * BATCH
    assert resumed.example_table.equals(run.example_table)
    assert resumed.neurons.equals(run.neurons)
    assert opt_neurons.load(out).example_table.equals(run.example_table)


def test_a_damaged_examples_state_is_refused_in_one_line(planted, tmp_path, monkeypatch):
    from test_execution import interrupt_at_update

    out = tmp_path / "run"
    interrupt_at_update(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=BATCH, progress=False, out=out, examples=K)
    f = out / "checkpoint" / "examples.bin"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ExamplesStateError, match="checksum") as e:
        opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=BATCH, progress=False, out=out, examples=K)
    assert "\n" not in str(e.value) and "delete the folder" in str(e.value)


def test_contexts_need_the_runs_data(planted, run, tmp_path):
    run.save(tmp_path / "saved")
    saved = opt_neurons.load(tmp_path / "saved")
    key = next(iter(planted.token_detectors))
    with pytest.raises(DataMismatchError, match="not the data this run analysed"):
        saved.examples(*key, data=planted.tokens[:, ::-1].copy())
    got = saved.examples(*key, data=planted.tokens)
    assert got.select("sequence", "position", "token").equals(
        run.examples(*key).select("sequence", "position", "token")
    )
    with pytest.raises(OptNeuronsError, match="examples=16"):
        opt_neurons.Analysis(run.neurons, run.layers, run.tokens, run.positions, run.metadata).examples(0, 0)


def test_examples_off(planted):
    a = opt_neurons.analyze(planted.model_dir, planted.tokens[:8], batch_size=BATCH, progress=False, examples=0)
    assert a.example_table.height == 0
    assert a.neurons["max_activation"].null_count() == a.neurons.height
    assert a.metadata["examples"]["seconds"] == 0


def test_the_examples_time_is_recorded(run):
    """The forward thread's time in the examples (benches/bench_overhead.py reports its share)."""
    assert 0 < run.metadata["examples"]["seconds"] < run.metadata["forward_seconds"]


def test_cli_show_prints_the_card_and_contexts(planted, tmp_path, capsys):
    from opt_neurons.cli import main

    text = tmp_path / "data.txt"
    text.write_text(" cat sat on the mat near a dog and a river. " * 200)
    out = tmp_path / "run"
    a = opt_neurons.analyze(planted.model_dir, text, n_tokens=2000, progress=False, out=out, examples=3)
    key = next(k for k in planted.token_detectors if a.neurons["n_active"][k[0] * planted.ffn_dim + k[1]] > 0)
    assert main(["show", str(out), str(key[0]), str(key[1])]) == 0
    shown = capsys.readouterr().out
    assert f"layer {key[0]} neuron {key[1]}: token detector" in shown and "top examples by activation" in shown
    assert (
        shown.count("[[") == a.example_table.filter((pl.col("layer") == key[0]) & (pl.col("neuron") == key[1])).height
    )
    row = a.neurons.filter((pl.col("layer") == key[0]) & (pl.col("neuron") == key[1])).row(0, named=True)
    bits = row["mi_position"] / np.log(2)  # the table's bits column is nats / ln 2, and the card shows both
    assert row["mi_position_bits"] == pytest.approx(bits) and row["low_support"] is False
    assert f"  I(act; pos): {row['mi_position']:.4g} nats ({bits:.4g} bits)\n" in shown
    assert "low support" not in shown and "by source" not in shown  # every token occurs 200 times; no sources
    other = tmp_path / "other.txt"
    other.write_text(" dog " * 2000)
    assert main(["show", str(out), str(key[0]), str(key[1]), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' weight-loading bar)
    assert err.startswith("opt-neurons: error: the data given is not the data this run analysed")


def test_a_run_killed_between_the_examples_and_the_state_resumes_exactly(planted, run, tmp_path, monkeypatch):
    """examples.bin is written before state.bin, the previous one kept: a state older than the examples (a
    kill between the two replacements) resumes from the previous examples, nothing counted twice."""
    import shutil

    from test_execution import interrupt_at_update

    out, kw = tmp_path / "run", dict(batch_size=BATCH, progress=False, examples=K, checkpoint_every=BATCH)
    ck = out / "checkpoint"
    interrupt_at_update(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(planted.model_dir, planted.tokens, out=out, **kw)
    older = tmp_path / "older"
    shutil.copytree(ck, older)
    interrupt_at_update(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(planted.model_dir, planted.tokens, out=out, **kw)  # two more checkpoints
    for name in ("state.bin", "progress.json"):  # the statistics as the older checkpoint left them
        shutil.copy(older / name, ck / name)
    (ck / "examples.prev.bin").unlink()
    shutil.copy(older / "examples.bin", ck / "examples.prev.bin")
    resumed = opt_neurons.analyze(planted.model_dir, planted.tokens, out=out, **kw)
    assert resumed.metadata["resumed_sequences"] == 2 * BATCH
    assert resumed.example_table.equals(run.example_table) and resumed.neurons.equals(run.neurons)


def test_the_counting_thread_and_the_forward_share_the_tracker_safely():
    """The counting thread's sample update runs with the GIL released while the forward pass fetches a
    layer's device state: both at once must wait for each other, not fail (CI once raised
    "Already mutably borrowed" here)."""
    import threading

    n_layers, n_neurons = 4, 4096
    tracker = ExampleTracker(n_layers, n_neurons, 16, 0)
    rng = np.random.default_rng(0)
    rows = 4096
    bits = {layer: [pack(rng.random((rows, n_neurons)) < 0.3)] for layer in range(n_layers)}
    sequences = np.repeat(np.arange(rows // 512, dtype=np.uint32), 512)
    positions = np.tile(np.arange(512, dtype=np.uint32), rows // 512)
    errors: list[BaseException] = []
    counted = [0]
    stop = threading.Event()

    # A fixed number of fetches against counts that go on until they are done, so that neither side's
    # scheduling (Python's lock is not fair) can make the test pass vacuously or fail on timing.
    def count() -> None:
        try:
            while True:
                tracker.count(bits, sequences, positions)
                counted[0] += 1
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        for fetched in range(40):
            tracker.device.clear()
            tracker._state(fetched % n_layers, torch.device("cpu"))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert counted[0] >= 1 and tracker.core.sampled_rows == counted[0] * rows


def test_mismatched_sample_updates_are_named_shape_errors():
    from opt_neurons.errors import ShapeError

    ex = _core.Examples(2, 128, 4, 0)
    rows = np.zeros((3, 2), np.uint64)
    seq, pos = np.zeros(3, np.uint32), np.arange(3, dtype=np.uint32)
    with pytest.raises(ShapeError, match="one bitmask list per layer"):
        ex.update_layers([0, 1], [[rows]], seq, pos)
    with pytest.raises(ShapeError, match="different widths"):
        ex.update_layers([0, 1], [[rows], [np.zeros((3, 3), np.uint64)]], seq, pos)
    ex.update_layers([0, 1], [[rows], [rows]], seq, pos)  # well-formed: accepted
    assert ex.sampled_rows == 3
