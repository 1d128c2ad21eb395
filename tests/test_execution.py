"""Execution modes, resume after a kill, and data-parallel processes all give identical tables."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import opt_neurons
from opt_neurons.weights import safetensors_files

from conftest import save_tiny_opt

TABLES = ("neurons", "layers", "tokens", "positions")


def assert_same(a, b):
    for name in TABLES:
        x, y = getattr(a, name), getattr(b, name)
        assert x.columns == y.columns, name
        differ = [c for c in x.columns if not x.select(c).equals(y.select(c))]
        assert not differ, f"{name} differs in {differ}"
    # Examples too (top k by value, random sample, max / mean activation in `neurons`): issue 18.
    assert a.example_table.height and a.example_table.equals(b.example_table)


@pytest.fixture(scope="module")
def model_and_tokens(tmp_path_factory):
    d = save_tiny_opt(tmp_path_factory.mktemp("exec") / "opt", layers=3, max_positions=32, ffn_dim=130)
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 400, size=(12, 32))
    tokens[:, 0] = 50256
    return d, tokens


@pytest.fixture(scope="module")
def plain(model_and_tokens):
    d, tokens = model_and_tokens
    return opt_neurons.analyze(d, tokens, batch_size=2, progress=False, execution="memory")


def test_layer_major_streamed_from_safetensors_is_identical(model_and_tokens, plain):
    d, tokens = model_and_tokens
    assert safetensors_files(d)
    a = opt_neurons.analyze(d, tokens, batch_size=2, block_size=6, progress=False, execution="layer")
    assert a.metadata["execution"] == "layer"
    assert_same(a, plain)


@pytest.mark.parametrize("execution", ["memory", "layer"])
@pytest.mark.parametrize("block_rows", [1, 96])
def test_counting_in_blocks_of_batches_is_identical(model_and_tokens, plain, monkeypatch, execution, block_rows):
    """Committed batches are counted a block of rows at a time (by default every run here is one block):
    a core call per batch (1) and blocks of 2 batches of 2 sequences (96 rows) give the same tables."""
    import opt_neurons.capture as capture

    d, tokens = model_and_tokens
    calls = []
    original = opt_neurons.NeuronStats.update_layers
    monkeypatch.setattr(opt_neurons.NeuronStats, "update_layers", lambda self, b, t, p: (calls.append(len(t)),
                                                                                      original(self, b, t, p)))  # fmt: skip
    monkeypatch.setattr(capture, "BLOCK_ROWS", block_rows)
    a = opt_neurons.analyze(d, tokens, batch_size=2, block_size=6, progress=False, execution=execution)
    if execution == "memory":  # 6 batches of 64 rows, every layer in each call
        assert calls == ([64] * 6 if block_rows == 1 else [128] * 3)
    else:  # a call per layer; 2 blocks of 3 batches, and a block of rows ends with its layer
        assert calls == ([64] * 18 if block_rows == 1 else [128, 64] * 6)
    assert_same(a, plain)


@pytest.mark.parametrize("execution", ["memory", "layer"])
def test_detail_tokens_counts_dead_over_all_and_the_rest_over_the_first(model_and_tokens, plain, execution):
    """The paper's protocol: dead neurons and frequency over every token, the other statistics over the
    first detail_tokens (rounded up to whole sequences). The boundary falls inside a batch and a block."""
    d, tokens = model_and_tokens
    a = opt_neurons.analyze(d, tokens, batch_size=4, block_size=8, detail_tokens=5 * 32 + 1, progress=False,
                            execution=execution)  # fmt: skip
    first = opt_neurons.analyze(d, tokens[:6], batch_size=2, progress=False, execution="memory")
    assert a.metadata["detail_tokens"] == 6 * 32 and a.metadata["n_tokens"] == 12 * 32
    activity = ["n_active", "frequency", "frequency_upper", "dead", "max_activation", "mean_activation"]  # every token
    assert a.neurons.select(activity).equals(plain.neurons.select(activity))
    assert not a.neurons.select(activity).equals(first.neurons.select(activity))  # the test can tell them apart
    rest = [c for c in a.neurons.columns if c not in activity]
    assert a.neurons.select(rest).equals(first.neurons.select(rest))
    for name in ("tokens", "positions"):
        assert getattr(a, name).equals(getattr(first, name)), name
    by_activity = ["n_dead", "dead_fraction", "mean_frequency_alive"]
    assert a.layers.select(by_activity).equals(plain.layers.select(by_activity))
    others = [c for c in a.layers.columns if c not in by_activity]
    assert a.layers.select(others).equals(first.layers.select(others))


def test_layer_major_from_host_memory_is_identical(model_and_tokens, plain):
    from transformers import OPTForCausalLM

    d, tokens = model_and_tokens
    model = OPTForCausalLM.from_pretrained(d).eval()
    a = opt_neurons.analyze(model, tokens, batch_size=2, block_size=4, progress=False, execution="layer")
    assert_same(a, plain)


@pytest.mark.parametrize(
    "execution", ["memory", "layer", "memory with accelerate hooks", "layer with accelerate hooks"]
)
def test_forward_passes_end_at_the_last_fc1(model_and_tokens, plain, execution):
    """Nothing after the last layer's fc1 feeds a statistic: its fc2 and the final LayerNorm never run,
    and the tables are those of whole forward passes. Not under accelerate's hooks (offload), whose
    post-forward steps must run."""
    from transformers import OPTForCausalLM

    d, tokens = model_and_tokens
    model = OPTForCausalLM.from_pretrained(d).eval()
    decoder = model.model.decoder
    calls = {"fc2 of layer 0": 0, "fc2 of the last layer": 0, "final LayerNorm": 0}
    for name, module in [("fc2 of layer 0", decoder.layers[0].fc2), ("fc2 of the last layer", decoder.layers[-1].fc2),
                         ("final LayerNorm", decoder.final_layer_norm)]:  # fmt: skip
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    hooked = execution.endswith("hooks")
    if hooked:
        decoder.layers[1]._hf_hook = object()  # what accelerate's dispatch leaves on a module
    a = opt_neurons.analyze(model, tokens, batch_size=2, block_size=4, progress=False, execution=execution.split()[0])
    assert calls["fc2 of layer 0"] == 6  # 6 batches
    assert calls["fc2 of the last layer"] == (6 if hooked else 0)
    assert calls["final LayerNorm"] == (6 if hooked and execution.startswith("memory") else 0)  # layer-major: never
    assert_same(a, plain)


def test_offloaded_to_disk_is_identical(model_and_tokens, plain, tmp_path):
    d, tokens = model_and_tokens
    a = opt_neurons.analyze(d, tokens, batch_size=2, progress=False, device_map="auto",
                            max_memory={"cpu": "60KB"}, offload_folder=tmp_path / "offload")  # fmt: skip
    assert a.metadata["execution"] == "offload"
    assert "disk" in set(a.metadata["device_map"].values())
    assert_same(a, plain)


def test_auto_chooses_memory_on_cpu(model_and_tokens):
    d, tokens = model_and_tokens
    a = opt_neurons.analyze(d, tokens[:2], progress=False)
    assert a.metadata["execution"] == "memory" and "no GPU" in a.metadata["execution_reason"]


RUN = """
import sys, numpy as np, opt_neurons
tokens = np.load(sys.argv[2])
opt_neurons.analyze(sys.argv[1], tokens, batch_size=1, progress=False, out=sys.argv[3],
                    checkpoint_every=3, execution=sys.argv[4], block_size=3)
"""


@pytest.mark.parametrize("mode", ["memory", "layer"])
def test_resume_after_kill_is_identical(model_and_tokens, tmp_path, mode):
    d, _ = model_and_tokens
    rng = np.random.default_rng(7)
    tokens = rng.integers(3, 400, size=(120, 32))
    tokens[:, 0] = 50256
    np.save(tmp_path / "t.npy", tokens)
    out = tmp_path / "run"
    args = [sys.executable, "-c", RUN, str(d), str(tmp_path / "t.npy"), str(out), mode]
    p = subprocess.Popen(args)
    progress = out / "checkpoint" / "progress.json"
    deadline = time.time() + 120
    while not progress.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)  # as soon as the first checkpoint is there: mid-run on any machine
    p.wait()
    assert progress.exists(), "no checkpoint was written"
    assert not (out / "neurons.parquet").exists(), "the run finished before it was killed"
    done = json.loads(progress.read_text())["sequences_done"]
    assert 0 < done < len(tokens)
    subprocess.run(args, check=True)
    resumed = opt_neurons.load(out)
    assert resumed.metadata["resumed_sequences"] == done
    uninterrupted = opt_neurons.analyze(d, tokens, batch_size=4, progress=False, execution="memory")
    assert_same(resumed, uninterrupted)
    assert not (out / "checkpoint").exists()


def interrupt_at_update(monkeypatch, k: int) -> list:
    """Ctrl-C at the k-th progress update of the next analyze() (batch k is handed over by then);
    returns the list of progress cursors that checkpoint.save will be called with."""
    import opt_neurons.pipeline as pipeline

    saved: list = []
    original_save, real_bar = pipeline.checkpoint.save, pipeline._progress_bar
    monkeypatch.setattr(pipeline.checkpoint, "save", lambda *a, **kw: (saved.append(a[2]), original_save(*a, **kw)))

    class Interrupting:
        def __init__(self, *a):
            self.bar, self.n = real_bar(*a), 0

        def update(self, n):
            self.n += 1
            if self.n == k:
                monkeypatch.setattr(pipeline, "_progress_bar", real_bar)  # once
                raise KeyboardInterrupt
            self.bar.update(n)

        def close(self):
            self.bar.close()

    monkeypatch.setattr(pipeline, "_progress_bar", Interrupting)
    return saved


def test_interrupt_saves_a_checkpoint_and_resumes(model_and_tokens, plain, tmp_path, monkeypatch):
    d, tokens = model_and_tokens
    out = tmp_path / "run"
    saved = interrupt_at_update(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(d, tokens, batch_size=2, progress=False, out=out, checkpoint_every=100)
    assert [c.total for c in saved] == [6]  # the third batch (sequences 4-5) was handed over before the interrupt
    # As if killed between replacing the state and its progress file: the progress file is older.
    progress = out / "checkpoint" / "progress.json"
    progress.write_text(progress.read_text().replace('"sequences_done": 6', '"sequences_done": 4'))
    resumed = opt_neurons.analyze(d, tokens, batch_size=2, progress=False, out=out)
    assert resumed.metadata["resumed_sequences"] == 6  # what the state holds, nothing counted twice
    assert_same(resumed, plain)


# Capacity above every neuron's distinct k-grams: exact summaries merge to exactly the one-process
# counts (lossy ones merge to certified bounds that may differ; tests/test_core_reference.py). The
# states travel in many small pieces (a last piece shorter than the rest).
DIST = """
import sys, numpy as np, opt_neurons, opt_neurons.distributed
opt_neurons.distributed.CHUNK_BYTES = 4093
a = opt_neurons.analyze(sys.argv[1], np.load(sys.argv[2]), batch_size=2, progress=False, out=sys.argv[3],
                        ngram_capacity=4096, detail_tokens=5 * 32)
print("RESULT", a is not None)
"""


def free_port() -> int:
    """A port no one listens on now: fixed ports collide when two test runs share a machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, model: Path, tokens: Path, out: Path) -> list[str]:
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", f"--master-port={port}",
                        "--no-python", sys.executable, "-c", DIST, str(model), str(tokens), str(out)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return sorted(line for line in r.stdout.splitlines() if line.startswith("RESULT"))


def test_two_processes_equal_one(model_and_tokens, tmp_path):
    # Both runs go through torchrun so that they use the same torch thread settings (1 per process). With
    # detail_tokens, each rank gets a share of both parts (rank 1's detail sequences sit mid-data).
    d, tokens = model_and_tokens
    np.save(tmp_path / "t.npy", tokens)
    stale = tmp_path / "two" / "opt-neurons-gather" / "rank1.state"  # as a crashed run would leave it
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 10_000)
    assert torchrun(2, d, tmp_path / "t.npy", tmp_path / "two") == ["RESULT False", "RESULT True"]
    assert torchrun(1, d, tmp_path / "t.npy", tmp_path / "one") == ["RESULT True"]
    merged, single = opt_neurons.load(tmp_path / "two"), opt_neurons.load(tmp_path / "one")
    assert merged.metadata["world_size"] == 2 and single.metadata["world_size"] == 1
    assert merged.metadata["detail_tokens"] == 5 * 32 and merged.metadata["n_tokens"] == tokens.size
    assert not (tmp_path / "two" / "opt-neurons-gather").exists()  # spooled states are removed, stale ones too
    assert_same(merged, single)


def test_checkpoint_holds_what_its_state_counted(tmp_path):
    """The progress comes from the state's rows when progress.json lags behind it (both parts: detail
    sequences and activation-only ones); a state that is no whole number of the run's sequences is
    refused with a message that says what to do."""
    from opt_neurons import checkpoint
    from opt_neurons.data import TokenData
    from opt_neurons.errors import DataError
    from opt_neurons.schedule import Cursor

    data = TokenData(np.zeros((4, 4), np.int64), np.full(4, 4), detail=2)
    stats = opt_neurons.NeuronStats(1, 64, 10, 4)
    stats.update(0, np.zeros((8, 1), np.uint64), np.arange(8) % 10, np.arange(8) % 4)  # detail sequences 0-1
    stats.add_activity_counts({0: np.zeros(64, np.int64)}, 4)  # sequence 2
    fp = {"run": 1}
    checkpoint.save(tmp_path, stats, Cursor(1, 0), fp)  # progress says 1 sequence: the state holds 3
    loaded, done = checkpoint.load(tmp_path, fp, data)
    assert done == Cursor(2, 1) and loaded.rows == 12
    assert checkpoint.load(tmp_path, {"run": 2}, data) is None  # another run's
    with pytest.raises(DataError, match=r"holds 12 tokens \(8 with every statistic\), which is no whole number .* "
                                        r"delete that folder"):  # fmt: skip
        checkpoint.load(tmp_path, fp, TokenData(np.zeros((3, 5), np.int64), np.full(3, 5), detail=2))


def busy_every(pattern):
    """A stand-in for BitCapture.busy that answers from a repeating pattern (as a slow host would)."""
    answers = itertools.cycle(pattern)
    return lambda self: next(answers)


def test_interleaved_detail_and_activity_batches_give_the_same_tables(model_and_tokens, monkeypatch):
    """Activation-only batches run while the host counts the detail ones: same tables as data order."""
    from opt_neurons.capture import BitCapture

    d, tokens = model_and_tokens
    in_order = opt_neurons.analyze(d, tokens, batch_size=1, detail_tokens=5 * 32, progress=False)
    ran = []
    original = BitCapture.set_rows
    monkeypatch.setattr(
        BitCapture, "set_rows", lambda self, t, p, n=None, **kw: (ran.append(n), original(self, t, p, n, **kw))
    )
    monkeypatch.setattr(BitCapture, "busy", busy_every([False, True, True]))
    mixed = opt_neurons.analyze(d, tokens, batch_size=1, detail_tokens=5 * 32, progress=False)
    assert [n > 0 for n in ran] == [True, False, False] * 3 + [True, False, True]  # 5 detail batches, 7 others
    assert_same(mixed, in_order)


@pytest.mark.parametrize(("execution", "want"), [("memory", [3]), ("layer", [3, 9, 15])])
def test_last_detail_block_is_counted_while_the_other_batches_run(model_and_tokens, monkeypatch, execution, want):
    """Once the detail rows are all committed, their open block goes to the counting thread at once,
    not after the activation-only batches (blocks are larger than this whole run). Layer-major: one block
    of 6 batches (3 detail, 3 others) through each of the 3 layers, 6 commits per layer."""
    from opt_neurons.capture import BitCapture

    d, tokens = model_and_tokens
    commits, sent_after = [0], []
    commit, send = BitCapture.commit, BitCapture.send_block
    monkeypatch.setattr(BitCapture, "commit", lambda self, done: (commits.__setitem__(0, commits[0] + 1),
                                                                  commit(self, done)))  # fmt: skip
    monkeypatch.setattr(BitCapture, "send_block", lambda self: (self.block and sent_after.append(commits[0]),
                                                                send(self)))  # fmt: skip
    monkeypatch.setattr(BitCapture, "busy", lambda self: False)  # data order: 3 detail batches, then 3 others
    a = opt_neurons.analyze(d, tokens, batch_size=2, detail_tokens=6 * 32, progress=False, execution=execution,
                            block_size=12)  # fmt: skip
    assert sent_after == want
    assert a.metadata["execution"] == execution


def test_interrupted_interleaved_run_resumes_to_the_same_tables(model_and_tokens, tmp_path, monkeypatch):
    from opt_neurons.capture import BitCapture
    from opt_neurons.schedule import Cursor

    d, tokens = model_and_tokens
    out = tmp_path / "run"
    monkeypatch.setattr(BitCapture, "busy", busy_every([False, True]))
    saved = interrupt_at_update(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(d, tokens, batch_size=1, detail_tokens=6 * 32, progress=False, out=out,
                            checkpoint_every=100)  # fmt: skip
    assert saved == [Cursor(3, 2)]  # detail, other, detail, other, detail: handed over before the interrupt
    resumed = opt_neurons.analyze(d, tokens, batch_size=1, detail_tokens=6 * 32, progress=False, out=out)
    assert resumed.metadata["resumed_sequences"] == 5
    assert_same(resumed, opt_neurons.analyze(d, tokens, batch_size=1, detail_tokens=6 * 32, progress=False))


def test_interrupt_while_adding_device_sums_never_counts_them_twice(model_and_tokens, tmp_path, monkeypatch):
    """Ctrl-C right after the activation sums went into the state (at a checkpoint): the run stops without a
    checkpoint of that state, and the rerun resumes from the one before to the same tables."""
    d, tokens = model_and_tokens
    out = tmp_path / "run"
    original, calls = opt_neurons.NeuronStats.add_activity_counts, []

    def add_then_interrupt(self, counts, n_rows):
        original(self, counts, n_rows)
        calls.append(n_rows)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(opt_neurons.NeuronStats, "add_activity_counts", add_then_interrupt)
    run = dict(batch_size=2, detail_tokens=4 * 32, progress=False, out=out, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(d, tokens, **run)
    assert len(calls) == 2
    progress = json.loads((out / "checkpoint" / "progress.json").read_text())
    monkeypatch.setattr(opt_neurons.NeuronStats, "add_activity_counts", original)
    resumed = opt_neurons.analyze(d, tokens, **run)
    assert resumed.metadata["resumed_sequences"] == progress["sequences_done"] < len(tokens)
    assert_same(resumed, opt_neurons.analyze(d, tokens, batch_size=2, detail_tokens=4 * 32, progress=False))
