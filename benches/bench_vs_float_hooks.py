"""`opt_neurons.analyze()` vs the way users count activations today: forward hooks that copy the float
fc1 activations of every layer to the host (what TransformerLens `run_with_cache` or nnsight `.save()`
hand you), then counting in numpy. Ratio of time and of peak host memory.

Each variant runs in its own subprocess (so peak RSS is its own); both build the same random
OPT-125m-shaped model (float32, fc1 biases shifted to `--density` as in bench_overhead.py) and process
the same tokens with the same batches:

- `float_hooks`: a hook on every fc1 stores `output.detach().to("cpu", copy=True)` for the batch (a
  cache of all layers, like run_with_cache); after the forward pass, per layer: (acts > 0), activations
  per neuron, per (neuron, position) (sum over the batch) and per (neuron, token) (BOS left out; sparse:
  np.unique of flattened (neuron, token) keys merged into running sorted arrays; a dense
  (neurons x vocab) table would need 7.4 GB for 12 layers). No n-grams and no tables: it does less than
  analyze().
- `opt_neurons`: `opt_neurons.analyze(model, tokens, batch_size=...)`: bits packed in the hooks, counts
  (with bigram / trigram summaries) on the worker thread, finalisation into tables.

Reported: wall time of the run (model construction excluded), peak RSS of the process and peak RSS
above the RSS measured just before the run (what the method itself adds).

    python benches/bench_vs_float_hooks.py               # 4 sequences of 2048 tokens, batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import BOS, VOCAB, T, Timer, machine, peak_rss_bytes, record, rss_bytes  # noqa: E402


class FloatHookCounts:
    """What a user writes around a float activation cache."""

    def __init__(self, n_layers: int, n: int) -> None:
        self.n = n
        self.active = np.zeros((n_layers, n), np.int64)
        self.pos = np.zeros((n_layers, T, n), np.int64)
        self.tok_keys = [np.zeros(0, np.int64) for _ in range(n_layers)]
        self.tok_counts = [np.zeros(0, np.int64) for _ in range(n_layers)]

    def add(self, layer: int, acts: np.ndarray, tokens: np.ndarray) -> None:
        b, t, n = tokens.shape[0], tokens.shape[1], self.n
        on = acts.reshape(b, t, n) > 0
        self.active[layer] += on.sum(axis=(0, 1))
        self.pos[layer, :t] += on.sum(axis=0)
        flat = on.reshape(b * t, n)
        r, j = np.nonzero(flat)
        tok = tokens.reshape(-1)[r]
        keep = tok != BOS
        k, c = np.unique(j[keep] * VOCAB + tok[keep], return_counts=True)
        allk = np.concatenate([self.tok_keys[layer], k])
        allc = np.concatenate([self.tok_counts[layer], c])
        u, inv = np.unique(allk, return_inverse=True)
        self.tok_keys[layer] = u
        self.tok_counts[layer] = np.bincount(inv, weights=allc).astype(np.int64)


def child(variant: str, seqs: int, batch_size: int, density: str, seed: int) -> dict:
    import torch

    from _common import calibrate_density, density_targets, random_opt, zipf_tokens

    model = random_opt(seed=seed)
    tokens = zipf_tokens(seqs, np.random.default_rng(seed))
    calibrate_density(model, torch.from_numpy(tokens[:1]), density_targets(density, model.config.num_hidden_layers))
    before = rss_bytes()
    with Timer() as tm:
        if variant == "opt_neurons":
            import opt_neurons

            opt_neurons.analyze(model, tokens, batch_size=batch_size, progress=False)
        else:
            layers = model.model.decoder.layers
            cache: dict[int, torch.Tensor] = {}
            hooks = [layer.fc1.register_forward_hook(
                         lambda m, i, o, k=k: cache.__setitem__(k, o.detach().to("cpu", copy=True)))
                     for k, layer in enumerate(layers)]  # fmt: skip
            counts = FloatHookCounts(len(layers), model.config.ffn_dim)
            with torch.inference_mode():
                for b in range(0, seqs, batch_size):
                    ids = tokens[b : b + batch_size]
                    model.model.decoder(input_ids=torch.from_numpy(ids), use_cache=False)
                    for k in range(len(layers)):
                        counts.add(k, cache.pop(k).numpy(), ids)
            for h in hooks:
                h.remove()
    return {"variant": variant, "seconds": tm.wall, "cpu_seconds": tm.cpu, "peak_rss": peak_rss_bytes(),
            "rss_before": before}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--density", default="0.05", help="as in bench_overhead.py: a fraction, 'paper' or 'none'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["opt_neurons", "float_hooks"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.seqs, a.batch_size, a.density, a.seed)))
        return
    info = machine()
    res = {}
    for v in ("float_hooks", "opt_neurons"):
        cmd = [sys.executable, __file__, "--child", v, "--seqs", str(a.seqs), "--batch-size", str(a.batch_size),
               "--density", a.density, "--seed", str(a.seed)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[v] = json.loads(out.strip().splitlines()[-1])
        print(res[v], flush=True)
    f, o = res["float_hooks"], res["opt_neurons"]
    mb = 1 / 2**20
    rows = [[v, f"{r['seconds']:.2f}", f"{r['cpu_seconds']:.2f}", f"{r['peak_rss'] * mb:,.0f}",
             f"{(r['peak_rss'] - r['rss_before']) * mb:,.0f}"] for v, r in res.items()]  # fmt: skip
    rows.append(["float_hooks / opt_neurons", f"{f['seconds'] / o['seconds']:.2f}x",
                 f"{f['cpu_seconds'] / o['cpu_seconds']:.2f}x", f"{f['peak_rss'] / o['peak_rss']:.2f}x",
                 f"{(f['peak_rss'] - f['rss_before']) / max(1, o['peak_rss'] - o['rss_before']):.1f}x"])  # fmt: skip
    record("vs_float_hooks",
           ["variant", "wall s", "CPU s", "peak RSS MiB", "peak RSS above start MiB"], rows, machine_info=info,
           notes=f"OPT-125m shape, random weights, fc1 density {a.density}, {a.seqs} x {T} tokens, batch "
                 f"{a.batch_size}, float32 on the CPU; float_hooks counts no n-grams and builds no tables.",
           extra={"raw": res})  # fmt: skip


if __name__ == "__main__":
    main()
