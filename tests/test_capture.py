"""Bit packing of fc1 outputs: the device path (tensor ops) against numpy's packbits, bit for bit; and how
the capture groups committed batches into core calls."""

import os

import numpy as np
import pytest
import torch

from opt_neurons.capture import count_active, pack_bits, pack_bits_tensor


def unpack(words: torch.Tensor, f: int) -> np.ndarray:
    return np.unpackbits(words.numpy().view(np.uint8), axis=1, bitorder="little")[:, :f].astype(bool)


def test_every_byte_pattern() -> None:
    # Row r's 8 neurons are the bits of r: each of the 256 patterns once, with negatives and zeros as "off".
    r = torch.arange(256)
    on = ((r[:, None] >> torch.arange(8)) & 1).bool()
    x = torch.where(on, torch.rand(256, 8) + 0.1, -torch.rand(256, 8) * (torch.arange(8) % 2))
    words = pack_bits_tensor(x > 0)
    assert words.shape == (256, 1) and words.dtype == torch.int64
    assert (words.view(torch.uint8)[:, 0] == r.to(torch.uint8)).all()
    assert (unpack(words, 8) == on.numpy()).all()


@pytest.mark.parametrize("rows,f", [(1, 64), (7, 100), (33, 3072), (5, 8), (300, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensor_path_equals_numpy_path(rows: int, f: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + f)
    x = torch.randn(rows, f, generator=g).to(dtype)
    x[x.abs() < 0.3] = 0  # exact zeros are "off"
    a, b = pack_bits_tensor(x > 0), pack_bits(x.float() > 0)
    assert a.shape == b.shape == (rows, -(-f // 64))
    assert torch.equal(a, b)
    assert (unpack(a, f) == (x > 0).numpy()).all()
    assert not unpack(a, a.shape[1] * 64)[:, f:].any()  # padding bits stay clear


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")


@cuda
@pytest.mark.parametrize("f", [200, 3072])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_packing_equals_numpy(f: int, dtype: torch.dtype) -> None:
    x = torch.randn(4099, f, generator=torch.Generator().manual_seed(f)).to(dtype)
    x[x.abs() < 0.3] = 0
    assert torch.equal(pack_bits(x.cuda() > 0).cpu(), pack_bits(x.float() > 0))


@cuda
@pytest.mark.parametrize("detail_sequences", [None, 3])
def test_analyze_on_cuda_equals_cpu(tmp_path, detail_sequences) -> None:
    """The device path (packing on the GPU, activation-only rows summed there, copies on a side
    stream into pinned memory) counts what the CPU path counts: same planted model in float32, same
    tokens, same tables."""
    import polars as pl
    from transformers import OPTForCausalLM

    import opt_neurons

    from planted import build_planted_opt

    p = build_planted_opt(tmp_path)
    model = OPTForCausalLM.from_pretrained(p.model_dir, dtype=torch.float32).eval()
    detail = None if detail_sequences is None else detail_sequences * p.tokens.shape[1]
    on_cpu = opt_neurons.analyze(model, p.tokens, batch_size=8, progress=False, detail_tokens=detail)
    on_gpu = opt_neurons.analyze(model.to("cuda"), p.tokens, batch_size=8, progress=False, detail_tokens=detail)
    assert on_gpu.metadata["detail_tokens"] == on_cpu.metadata["detail_tokens"] == (detail or p.tokens.size)
    for name in ("neurons", "layers", "tokens", "positions"):
        a, b = getattr(on_cpu, name), getattr(on_gpu, name)
        floats = [c for c, t in a.schema.items() if t in (pl.Float32, pl.Float64)]
        assert a.drop(floats).equals(b.drop(floats)), name  # every count, flag and list exactly
        for c in floats:  # suppression scores come from GPU matmuls: equal up to rounding
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-4, atol=1e-5, err_msg=c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_count_active_counts_rows_above_zero(dtype: torch.dtype) -> None:
    x = torch.randn(513, 200, generator=torch.Generator().manual_seed(3)).to(dtype)
    x[:, 7] = 0  # never "on"
    got = count_active(x > 0)
    assert got.dtype == torch.int64 and got.shape == (200,)
    assert torch.equal(got, (x.float() > 0).sum(0)) and got[7] == 0
    if torch.cuda.is_available():
        assert torch.equal(count_active(x.cuda() > 0).cpu(), got)


def test_capture_counts_batches_of_other_layers_in_blocks_of_their_own() -> None:
    """Commits of one layer, then of another (a layer-major caller that does not send each layer's block
    itself): the capture still counts each layer's rows with its own core call, as direct updates would."""
    from opt_neurons.capture import BitCapture
    from opt_neurons.schedule import Cursor
    from opt_neurons.stats import NeuronStats

    torch.manual_seed(0)
    fc1 = [torch.nn.Linear(8, 70), torch.nn.Linear(8, 70)]
    new = lambda: NeuronStats(2, 70, vocab_size=50, max_positions=16)  # noqa: E731
    via_capture, direct = new(), new()
    capture = BitCapture(fc1, via_capture)
    tokens = np.random.default_rng(0).integers(3, 50, size=32)
    positions = np.tile(np.arange(16), 2)
    x = torch.randn(32, 8)
    try:
        for layer in (0, 1):
            capture.set_rows(tokens, positions)
            with torch.no_grad():
                fc1[layer](x)
            capture.commit(Cursor(2, 0) if layer == 1 else None)
            direct.update(layer, pack_bits(fc1[layer](x).detach() > 0), tokens, positions)
        capture.flush()
    finally:
        capture.close()
    assert via_capture.rows == direct.rows == 32
    assert via_capture.to_bytes() == direct.to_bytes()


def test_release_free_heap_gives_freed_heap_pages_back() -> None:
    """Freed heap memory below a live allocation stays resident (what a CPU forward's temporaries do
    while batches wait for the counting thread); release_free_heap returns it to the OS."""
    import subprocess
    import sys

    code = """
import ctypes, sys
import numpy as np
from opt_neurons.heap import release_free_heap
if not release_free_heap():
    sys.exit(3)  # not glibc
ctypes.CDLL(None).mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: 1 MB arrays from the heap, as glibc does once it raised it
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big, small = [], []
for _ in range(400):  # 400 MB on the heap, touched, each below a small allocation that stays
    big.append(np.ones(1 << 17))
    small.append(np.ones(1000))
del big
before = rss()
release_free_heap()
print(before - rss())
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode == 3 or not os.path.exists("/proc/self/statm"):
        pytest.skip("needs glibc and /proc (Linux)")
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) > 300 << 20


def test_host_work_of_a_cpu_forward_runs_in_one_thread_of_its_own() -> None:
    """run_for: a CPU tensor's host work runs in one other thread (its arrays then come from that thread's
    malloc arena, host_thread.py), with its result and its errors passed back; other devices' here."""
    import threading

    from opt_neurons.errors import ShapeError
    from opt_neurons.host_thread import run_for

    cpu = torch.zeros(2)
    first, second = run_for(cpu, threading.get_ident), run_for(cpu, threading.get_ident)
    assert first == second != threading.get_ident()
    assert run_for(cpu, lambda a, b: a + b, 2, 3) == 5

    def fail() -> None:
        raise ShapeError("bad shape")

    with pytest.raises(ShapeError, match="bad shape"):
        run_for(cpu, fail)
    assert run_for(torch.empty(2, device="meta"), threading.get_ident) == threading.get_ident()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_host_thread_works_in_a_forked_child() -> None:
    """A child forked after the host thread started inherits the pool but not its thread: it must not hang."""
    import multiprocessing

    from opt_neurons.host_thread import run_for

    assert run_for(torch.zeros(1), lambda: 1) == 1
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(run_for, (torch.zeros(1), abs, -2)).get(timeout=60) == 2
