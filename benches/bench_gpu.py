"""Tokens/s of OPT-shaped models on a GPU with and without the analysis (for when an accelerator is lent).

Shapes (random weights, fp16, T = 2048): 125m (12 x 768, ffn 3072), 1.3b (24 x 2048, ffn 8192),
6.7b (32 x 4096, ffn 16384). Every fc1 bias is shifted so that about `--density` of the fc1 outputs
are > 0 (random weights give ~50%; trained OPT layers are far sparser), since the counting work grows
with the number of activations.

For each shape, on the same tokens and batches:
- bare: `model.model.decoder(input_ids=batch, use_cache=False)` under torch.inference_mode, synchronised;
- capture only: the same with the package's fc1 hooks (bit packing on the device, copies to pinned host
  memory) and a counter that counts nothing: what the device side of the analysis costs;
- analyze: `opt_neurons.analyze(model, tokens, batch_size=...)`: the forward phase (bit packing on the
  device, copies of the bits to pinned host memory, counting on the host worker thread) is timed from
  `metadata["forward_seconds"]`, and the whole call (with finalisation) too; `metadata["counting_seconds"]`
  is the host worker's busy time: near the forward phase's time, the host's counting sets the speed;
- analyze, activity past the first sequence: the same with `detail_tokens=T` (every statistic on the first
  sequence, frequency / dead neurons only on the rest, summed per neuron on the device: the paper's extra
  tokens for dead neurons);
- analyze, the paper's protocol: every statistic on the first quarter of the tokens (its 5 M of 20 M),
  activation counts on the rest; once in data order (the device waits whenever the host's counting
  queue is full) and once as `analyze` runs it, with the other batches interleaved while the host
  counts (schedule.py). Same tables either way.
Target (issue 5): forward-phase throughput with analysis >= 90% of the bare forward.

    python benches/bench_gpu.py                       # all three shapes (6.7b: ~27 GB of GPU memory, ~12 GB of host)
    python benches/bench_gpu.py --shapes 125m,1.3b --seqs 16
    python benches/bench_gpu.py --density paper       # per-layer densities like trained OPT's (mean ~2%)
    python benches/bench_gpu.py --smoke               # tiny shapes on whatever device there is (CPU ok)
    python benches/bench_gpu.py --smoke --host-threads 1 --torch-threads 1 --seqs 32  # host-bound, on 2 CPUs

Host memory: at most ~21 kB per live neuron (position counts and three k-gram summaries), about 11 GB
for 6.7b (524 k neurons).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import opt_neurons  # noqa: E402
from opt_neurons.capture import BitCapture  # noqa: E402

from _common import calibrate_density, density_targets, machine, random_opt, record, zipf_tokens  # noqa: E402

SHAPES = {
    "125m": dict(num_hidden_layers=12, hidden_size=768, ffn_dim=3072, num_attention_heads=12, word_embed_proj_dim=768),
    "1.3b": dict(
        num_hidden_layers=24, hidden_size=2048, ffn_dim=8192, num_attention_heads=32, word_embed_proj_dim=2048
    ),
    "6.7b": dict(
        num_hidden_layers=32, hidden_size=4096, ffn_dim=16384, num_attention_heads=32, word_embed_proj_dim=4096
    ),
}
SMOKE = {
    "smoke-a": dict(
        num_hidden_layers=2,
        hidden_size=64,
        ffn_dim=256,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=128,
    ),
    "smoke-b": dict(
        num_hidden_layers=3,
        hidden_size=96,
        ffn_dim=384,
        num_attention_heads=4,
        word_embed_proj_dim=96,
        max_position_embeddings=128,
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(model, tokens: np.ndarray, batch_size: int, device: torch.device) -> float:
    decoder = model.model.decoder
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(tokens), batch_size):
            decoder(input_ids=torch.from_numpy(tokens[b : b + batch_size]).to(device), use_cache=False)
    sync(device)
    return time.perf_counter() - t0


class NullStats:
    """Counts nothing: BitCapture with it costs what the device side of the analysis costs."""

    def update_layers(self, *args: object) -> None:
        pass

    add_activity_counts = update_layers


def capture_only(model, tokens: np.ndarray, batch_size: int, device: torch.device) -> float:
    decoder = model.model.decoder
    capture = BitCapture([layer.fc1 for layer in decoder.layers], NullStats())
    flat_pos = np.tile(np.arange(tokens.shape[1], dtype=np.uint32), batch_size)
    sync(device)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for b in range(0, len(tokens), batch_size):
                chunk = tokens[b : b + batch_size]
                capture.set_rows(chunk.reshape(-1), flat_pos[: chunk.size])
                decoder(input_ids=torch.from_numpy(chunk).to(device), use_cache=False)
                capture.commit(None)
        capture.flush()
    finally:
        capture.close()
    return time.perf_counter() - t0


def paper_protocol(model, tokens: np.ndarray, batch_size: int, interleave: bool) -> float:
    """Forward-phase seconds of analyze() with every statistic on the first quarter of the tokens."""
    original = BitCapture.busy
    if not interleave:
        BitCapture.busy = lambda self: False  # detail batches first: data order
    try:
        a = opt_neurons.analyze(model, tokens, batch_size=batch_size, progress=False, detail_tokens=tokens.size // 4)
    finally:
        BitCapture.busy = original
    return a.metadata["forward_seconds"]


def run_shape(name: str, kwargs: dict, seqs: int, batch_size: int, density: str, dtype: torch.dtype,
              device: torch.device, seed: int) -> list:  # fmt: skip
    model = random_opt(kwargs, dtype=dtype, device=device, seed=seed)
    T = model.config.max_position_embeddings
    tokens = zipf_tokens(seqs, np.random.default_rng(seed), seq_len=T, vocab=model.config.vocab_size)
    target = density_targets(density, kwargs["num_hidden_layers"])
    dens = calibrate_density(model, torch.from_numpy(tokens[:1]).to(device), target)
    bare(model, tokens[:batch_size], batch_size, device)  # warm-up (kernels, allocator)
    b = min(bare(model, tokens, batch_size, device) for _ in range(2))
    cap = min(capture_only(model, tokens, batch_size, device) for _ in range(2))
    t0 = time.perf_counter()
    an = opt_neurons.analyze(model, tokens, batch_size=batch_size, progress=False)
    total = time.perf_counter() - t0
    fwd, busy = an.metadata["forward_seconds"], an.metadata["counting_seconds"]
    events = float(an.neurons["n_active"].sum())  # activations counted with every statistic
    del an
    act = opt_neurons.analyze(model, tokens, batch_size=batch_size, progress=False, detail_tokens=T)
    fwd_act = act.metadata["forward_seconds"]
    in_order, mixed = (paper_protocol(model, tokens, batch_size, interleave) for interleave in (False, True))
    n = tokens.size
    row = [name, str(dtype).replace("torch.", ""), str(device), f"{np.mean(dens):.3f}", n, batch_size,
           f"{n / b:,.0f}", f"{n / cap:,.0f}", f"{100 * b / cap:.0f}%", f"{n / fwd:,.0f}", f"{100 * b / fwd:.0f}%",
           f"{busy:.2f} / {fwd:.2f}", f"{events / busy / 1e6:,.0f} M", f"{n / total:,.0f}",
           f"{n / fwd_act:,.0f}", f"{100 * b / fwd_act:.0f}%", f"{100 * b / in_order:.0f}%", f"{100 * b / mixed:.0f}%",
           f"{act.metadata['accumulator_bytes'] / 2**20:,.0f}"]  # fmt: skip
    print(row, flush=True)
    del model, act
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="125m,1.3b,6.7b")
    ap.add_argument("--seqs", type=int, default=8, help="sequences per shape")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--density", default="0.05", help="target fraction of fc1 outputs > 0; 'paper': per layer, "
                    "shaped like trained OPT's (_common.paper_densities); 'none': as initialised")  # fmt: skip
    ap.add_argument("--dtype", default=None, help="default: float16 on a GPU, float32 on the CPU")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, runs anywhere in seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--examples",
        type=int,
        default=None,
        help="examples= of every analyze() call (default: the package's, 16; 0: off)",
    )
    ap.add_argument("--counting", default=None, help="counting= of every analyze() call (issue 22: device | host)")
    ap.add_argument("--host-threads", type=int, default=None, help="threads of the host's counting (RAYON_NUM_THREADS)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch's CPU threads (a CPU forward's share)")
    a = ap.parse_args()
    if a.examples is not None:  # every analyze() call below: the on / off pair of issue 18
        opt_neurons.analyze = functools.partial(opt_neurons.analyze, examples=a.examples)
    if a.counting is not None:  # every analyze() call below: device against host counting (issue 22)
        opt_neurons.analyze = functools.partial(opt_neurons.analyze, counting=a.counting)
    if a.host_threads:
        os.environ["RAYON_NUM_THREADS"] = str(a.host_threads)  # read when the core first counts
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    info = machine()
    shapes = SMOKE if a.smoke else {k: SHAPES[k] for k in a.shapes.split(",")}
    rows = []
    for name, kw in shapes.items():
        rows.append(run_shape(name, kw, a.seqs, min(a.batch_size, a.seqs), a.density, dtype, device, a.seed))
    record("gpu_smoke" if a.smoke else "gpu",
           ["shape", "dtype", "device", "fc1 density", "tokens", "batch", "bare tok/s", "capture-only tok/s",
            "capture-only / bare", "analyze forward-phase tok/s", "analyze / bare", "counting busy s / forward s",
            "host counting events/s", "analyze total tok/s", "activity-only forward-phase tok/s", "activity-only / bare",
            "paper protocol, data order / bare", "paper protocol, interleaved / bare", "accumulators MiB (activity run)"],
           rows, machine_info=info,
           notes=f"examples={a.examples if a.examples is not None else 'default (16)'}; random weights; 'analyze / bare' = forward-phase throughput with analysis relative to the bare "
                 "forward (target >= 90%); the total includes finalisation (tables, suppression scores).")  # fmt: skip


if __name__ == "__main__":
    main()
