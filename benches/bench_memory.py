"""Peak accumulator memory of an OPT-125m-shaped analysis (12 layers x 3072 neurons) fed synthetic
bitmask streams with a realistic frequency profile: `NeuronStats.memory_bytes()` and process RSS,
measured as the token count doubles and extrapolated to 5 M tokens; bytes per neuron.

Synthetic profile (an assumption, stated so it can be argued with): per layer a share of dead neurons
shaped like OPT-125m's (the paper: ~41% at layer 3, few at the top); of the live neurons 40% are token
detectors (fire with p = 0.95 on 1-5 trigger tokens drawn from the token law, background 1e-4) and 60%
fire at a log-normal rate (median 1% in the lower half, 5% at the top, sigma 1, at most 50%), half of
them on any token and half on a fixed pseudo-random eighth of the vocabulary only. Tokens: Zipf(1)
over the OPT vocabulary, sequences of 2048 starting with BOS, batches of 8 sequences.

Extrapolation: accumulators saturate (position counts are fixed once a neuron is live, n-gram summaries
hold at most `ngram_capacity` entries, token counts at most the vocabulary), so memory grows
sublinearly. The last doubling's growth is assumed to repeat (or shrink) for every further doubling
up to 5 M tokens, capped by the hard bound (every live neuron with dense token counts and full
summaries); `--tokens 5000000` measures it instead (about 15 minutes on 2 cores).

    python benches/bench_memory.py                     # up to 262,144 tokens, then extrapolated
    python benches/bench_memory.py --tokens 5000000    # the real thing
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BOS, T, VOCAB, machine, pack_rows, peak_rss_bytes, record, rss_bytes, zipf_tokens  # noqa: E402

import opt_neurons  # noqa: E402

LAYERS, N = 12, 3072
DEAD = [0.02, 0.15, 0.30, 0.41, 0.30, 0.20, 0.10, 0.05, 0.02, 0.01, 0.01, 0.01]
TARGET = 5_000_000


class Layer:
    def __init__(self, layer: int, rng: np.random.Generator, token_sample: np.ndarray) -> None:
        kind = rng.random(N)
        dead = kind < DEAD[layer]
        live = ~dead
        detector = live & (rng.random(N) < 0.4)
        diffuse = live & ~detector
        median = 0.01 if layer < LAYERS // 2 else 0.05
        rate = np.minimum(0.5, median * np.exp(rng.normal(0.0, 1.0, N)))
        self.subset = diffuse & (rng.random(N) < 0.5)  # fires on an eighth of the vocabulary only
        # Diffuse neurons: candidates drawn at 8 x rate for the subset ones, then filtered by the hash.
        eff = np.where(self.subset, np.minimum(1.0, 8 * rate), rate) * diffuse
        self.total_rate = eff.sum()
        self.p = eff / self.total_rate
        # Detectors: token -> neurons (CSR).
        pairs = [(int(t), j) for j in np.flatnonzero(detector)
                 for t in rng.choice(token_sample, size=rng.integers(1, 6))]  # fmt: skip
        pairs.sort()
        toks = np.array([p[0] for p in pairs], np.int64)
        self.det_neurons = np.array([p[1] for p in pairs], np.int64)
        self.det_ptr = np.searchsorted(toks, np.arange(VOCAB + 1))
        self.n_dead = int(dead.sum())
        self.live = live

    def bits(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = len(tokens)
        on = np.zeros((rows, N), bool)
        # diffuse
        k = rng.poisson(self.total_rate * rows)
        r = rng.integers(0, rows, k)
        j = rng.choice(N, size=k, p=self.p)
        h = ((j.astype(np.uint64) * np.uint64(0x9E3779B9) + tokens[r].astype(np.uint64))
             * np.uint64(0xD6E8FEB86659FD93)) >> np.uint64(61)  # fmt: skip
        ok = ~self.subset[j] | (h == 0)
        on[r[ok], j[ok]] = True
        # detectors
        cnt = self.det_ptr[tokens + 1] - self.det_ptr[tokens]
        rr = np.repeat(np.arange(rows), cnt)
        starts = np.repeat(self.det_ptr[tokens], cnt)
        offs = np.arange(len(rr)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        jj = self.det_neurons[starts + offs]
        hit = rng.random(len(rr)) < 0.95
        on[rr[hit], jj[hit]] = True
        # background activations of every neuron (dead ones included would make them live: skip them)
        k = rng.poisson(1e-4 * rows * N)
        r, j = rng.integers(0, rows, k), rng.integers(0, N, k)
        keep = self.live[j]
        on[r[keep], j[keep]] = True
        return pack_rows(on)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--batch", type=int, default=8, help="sequences per update")
    ap.add_argument("--ngram-capacity", type=int, default=opt_neurons._core.DEFAULT_CAPACITY)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    info = machine()
    rng = np.random.default_rng(a.seed)
    sample = zipf_tokens(64, np.random.default_rng(a.seed + 1)).reshape(-1)
    sample = sample[sample != BOS]
    layers = [Layer(k, rng, sample) for k in range(LAYERS)]
    n_dead = sum(l.n_dead for l in layers)
    rss0 = rss_bytes()
    stats = opt_neurons.NeuronStats(LAYERS, N, VOCAB, T, bos_token_id=BOS, ngram_capacity=a.ngram_capacity)
    rows_out = []
    points = []
    done, next_mark, events = 0, a.batch * T, 0
    t0 = time.time()
    while done < a.tokens:
        tok = zipf_tokens(a.batch, rng).reshape(-1).astype(np.uint32)
        pos = np.tile(np.arange(T, dtype=np.uint32), a.batch)
        for k, layer in enumerate(layers):
            b = layer.bits(tok.astype(np.int64), rng)
            events += int(np.unpackbits(b.view(np.uint8)).sum())
            stats.update(k, b, tok, pos)
        done += len(tok)
        if done >= next_mark or done >= a.tokens:
            mem, rss = stats.memory_bytes(), rss_bytes() - rss0
            points.append((done, mem, rss))
            print(f"{done:>9,} tokens: accumulators {mem / 2**20:8.1f} MiB, RSS +{rss / 2**20:8.1f} MiB, "
                  f"{events / done / LAYERS / N * 100:.2f}% density, {time.time() - t0:.0f} s", flush=True)  # fmt: skip
            rows_out.append([f"{done:,}", "measured", f"{mem / 2**20:,.1f}", f"{rss / 2**20:,.1f}",
                             f"{mem / (LAYERS * N):,.0f}", f"{mem / max(1, LAYERS * N - n_dead):,.0f}"])  # fmt: skip
            next_mark *= 2
    # Hard bound per live neuron: positions + dense token counts + two full summaries (12-byte slots,
    # table of the next power of two above (capacity + 1) / 0.75) + the struct.
    slots = 1 << math.ceil(math.log2((a.ngram_capacity + 2) * 4 / 3))
    bound = (LAYERS * N - n_dead) * (T * 4 + VOCAB * 4 + 2 * slots * 12 + 112) + LAYERS * N * 8
    if done < TARGET and len(points) >= 2:
        (t1, m1, r1), (t2, m2, r2) = points[-2], points[-1]
        doublings = math.log2(TARGET / t2) / math.log2(t2 / t1)
        m = min(bound, m2 + doublings * (m2 - m1))
        r = r2 + doublings * (r2 - r1)
        rows_out.append([f"{TARGET:,}", "extrapolated", f"{m / 2**20:,.1f}", f"{r / 2**20:,.1f}",
                         f"{m / (LAYERS * N):,.0f}", f"{m / max(1, LAYERS * N - n_dead):,.0f}"])  # fmt: skip
    rows_out.append(["any", "hard bound", f"{bound / 2**20:,.1f}", "-", f"{bound / (LAYERS * N):,.0f}",
                     f"{bound / max(1, LAYERS * N - n_dead):,.0f}"])  # fmt: skip
    record("memory",
           ["tokens", "kind", "accumulators MiB", "process RSS growth MiB", "bytes / neuron", "bytes / live neuron"],
           rows_out, machine_info=info,
           notes=f"OPT-125m shape ({LAYERS} x {N} neurons, {n_dead} dead = {100 * n_dead / (LAYERS * N):.0f}%), "
                 f"mean density {events / done / LAYERS / N * 100:.2f}%, ngram_capacity {a.ngram_capacity}, "
                 f"{a.batch} sequences per update; peak RSS of the process {peak_rss_bytes() / 2**20:,.0f} MiB. "
                 "Extrapolation: the growth of the last doubling repeated per doubling up to 5 M tokens, capped "
                 "by the hard bound.")  # fmt: skip


if __name__ == "__main__":
    main()
