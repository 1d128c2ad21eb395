"""Peak accumulator memory of an OPT-125m-shaped analysis (12 layers x 3072 neurons) fed synthetic
bitmask streams with a realistic frequency profile: `NeuronStats.memory_bytes()` and process RSS,
measured as the token count doubles and extrapolated to 5 M tokens; bytes per neuron.

Synthetic profile (an assumption, stated so it can be argued with): per layer a share of dead neurons
shaped like OPT-125m's (the paper: ~41% at layer 3, few at the top); of the live neurons 40% are token
detectors (fire with p = 0.95 on 1-5 trigger tokens drawn from the token law, background 1e-4) and 60%
fire at a log-normal rate (median 1% in the lower half, 5% at the top, sigma 1, at most 50%), half of
them on any token and half on a fixed pseudo-random eighth of the vocabulary only. Tokens: Zipf(1)
over the OPT vocabulary, sequences of 2048 starting with BOS, batches of 8 sequences.

Layout being measured (rust/core/src/stats/, count_table.rs, summary.rs, position_counts.rs): a pointer per neuron (8
bytes, dead ones cost nothing else); per chunk of 256 neurons of a layer with any activation, position
counts of 2 bytes per (position, neuron) (1 MiB at 2048 positions); per live neuron a 224-byte struct
and three Misra-Gries summaries (tokens: 8-byte slots, bigrams and trigrams: 12-byte slots) of fewer
than `ngram_capacity` keys in power-of-two tables at most 3/4 full (512 slots for any capacity from 193
to 384, the default: 16,608 bytes per saturated neuron; 1024 slots up to 768); and the data's own bigram / trigram occurrence tables, one entry per distinct
n-gram of the text (shared, growing with the tokens). The data tables are split off by feeding the
same token stream to a data-only NeuronStats afterwards (to 5 M tokens).

Extrapolation: per-neuron accumulators saturate (chunks are fixed once a neuron of theirs fires,
summaries are full at `ngram_capacity` keys), so their memory grows sublinearly: the last doubling's
growth is assumed to repeat (or shrink) for every further doubling up to 5 M tokens, capped by the
hard bound (every live neuron's summaries full). The data tables are measured at 5 M tokens directly.
`--tokens 5000000` measures everything instead.

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
import opt_neurons  # noqa: E402

from _common import (  # noqa: E402
    BOS,
    CHUNK,
    PTR_BYTES,
    VOCAB,
    T,
    chunk_bytes,
    hashmap_accounted_bytes,
    machine,
    neuron_bytes,
    pack_rows,
    peak_rss_bytes,
    record,
    rss_bytes,
    zipf_tokens,
)

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


def data_bytes(marks: list[int], batch: int, seed: int, capacity: int) -> list[int]:
    """`memory_bytes()` of the data's own statistics (position totals, token occurrences, bigram and
    trigram occurrence tables) after each mark, fed the same token stream as the run."""
    rng = np.random.default_rng(seed)
    data = opt_neurons.NeuronStats(1, 64, VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    zero = np.zeros((batch * T, 1), np.uint64)
    pos = np.tile(np.arange(T, dtype=np.uint32), batch)
    out, done = [], 0
    for mark in marks:
        while done < mark:
            data.update(0, zero, zipf_tokens(batch, rng).reshape(-1).astype(np.uint32), pos)
            done += batch * T
        out.append(data.memory_bytes() - 64 * PTR_BYTES)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--batch", type=int, default=8, help="sequences per update")
    ap.add_argument("--ngram-capacity", type=int, default=opt_neurons._core.DEFAULT_CAPACITY)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    info = machine()
    rng = np.random.default_rng(a.seed)
    token_seed = a.seed + 2  # a stream of its own, replayed for the data-only statistics
    token_rng = np.random.default_rng(token_seed)
    sample = zipf_tokens(64, np.random.default_rng(a.seed + 1)).reshape(-1)
    sample = sample[sample != BOS]
    layers = [Layer(k, rng, sample) for k in range(LAYERS)]
    n_dead = sum(l.n_dead for l in layers)
    n_live = LAYERS * N - n_dead
    # Chunks holding a live neuron: the ones whose position counts get allocated.
    n_chunks = sum(int(l.live.reshape(-1, CHUNK).any(axis=1).sum()) for l in layers)
    positions = n_chunks * chunk_bytes(T)
    pointers = LAYERS * N * PTR_BYTES
    t_start = time.time()
    rss0 = rss_bytes()
    stats = opt_neurons.NeuronStats(LAYERS, N, VOCAB, T, bos_token_id=BOS, ngram_capacity=a.ngram_capacity)
    points = []
    done, next_mark, events = 0, a.batch * T, 0
    t0 = time.time()
    while done < a.tokens:
        tok = zipf_tokens(a.batch, token_rng).reshape(-1).astype(np.uint32)
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
            next_mark *= 2
    density = events / done / LAYERS / N
    peak_rss = peak_rss_bytes()
    del stats
    marks = [p[0] for p in points]
    data = data_bytes(marks + ([TARGET] if done < TARGET else []), a.batch, token_seed, a.ngram_capacity)
    data_target = data[-1]

    # Hard bound at 5 M tokens: every live neuron's summaries full, every chunk with a live neuron
    # allocated, and the data's n-gram tables with one distinct bigram and trigram per token.
    full = int(neuron_bytes(a.ngram_capacity, a.ngram_capacity, a.ngram_capacity, a.ngram_capacity))
    fixed_data = T * 8 + VOCAB * 8  # position totals, token occurrences
    neuron_bound = pointers + positions + n_live * full
    bound = neuron_bound + fixed_data + 2 * hashmap_accounted_bytes(TARGET)

    def row(tokens: str, kind: str, mem: float, rss: str, dat: float) -> list:
        per_live = mem - dat - pointers  # positions + summaries of the live neurons
        return [tokens, kind, f"{mem / 2**20:,.1f}", f"{dat / 2**20:,.1f}", rss, f"{mem / (LAYERS * N):,.0f}",
                f"{per_live / n_live:,.0f}", f"{(per_live - positions) / n_live:,.0f}"]  # fmt: skip

    rows_out = [row(f"{t:,}", "measured", m, f"{r / 2**20:,.1f}", d) for (t, m, r), d in zip(points, data)]
    extrapolated = None
    if done < TARGET and len(points) >= 2:
        (t1, m1, _), (t2, m2, r2) = points[-2], points[-1]
        d1, d2 = data[len(points) - 2], data[len(points) - 1]
        doublings = math.log2(TARGET / t2) / math.log2(t2 / t1)
        neurons = min(neuron_bound, (m2 - d2) + doublings * ((m2 - d2) - (m1 - d1)))
        extrapolated = neurons + data_target
        rss = r2 * extrapolated / m2  # the last measured RSS / accounted ratio
        rows_out.append(row(f"{TARGET:,}", "extrapolated", extrapolated, f"{rss / 2**20:,.1f}", data_target))
    rows_out.append(row(f"{TARGET:,}", "hard bound", bound, "-", fixed_data + 2 * hashmap_accounted_bytes(TARGET)))
    at_target = extrapolated if extrapolated is not None else points[-1][1]
    verdict = "met" if at_target <= 2e9 else "MISSED"
    record("memory",
           ["tokens", "kind", "accumulators MiB", "of which data statistics MiB", "process RSS growth MiB",
            "bytes / neuron", "bytes / live neuron", "of which summaries"],
           rows_out, machine_info=info,
           notes=f"OPT-125m shape ({LAYERS} x {N} neurons, {n_dead} dead = {100 * n_dead / (LAYERS * N):.0f}%, "
                 f"{n_live:,} live), mean density {density * 100:.2f}%, ngram_capacity {a.ngram_capacity}, "
                 f"{a.batch} sequences per update; {n_chunks} position chunks of {chunk_bytes(T) / 2**20:g} MiB "
                 f"({positions / n_live:,.0f} bytes per live neuron), a full neuron's summaries {full:,} bytes. "
                 f"Peak RSS of the process {peak_rss / 2**20:,.0f} MiB; {time.time() - t_start:.0f} s. "
                 f"bytes / live neuron: accumulators less data tables and neuron pointers; 'of which summaries': "
                 f"less the position chunks too; data statistics: position totals, token occurrences and "
                 f"the n-gram occurrence tables (hash-map buckets of 17 bytes, 8/7 per unit of capacity). "
                 f"Extrapolation: the per-neuron part's growth "
                 f"of the last doubling repeated per doubling up to 5 M tokens, capped by the hard bound; data "
                 f"statistics measured at 5 M tokens; RSS scaled by the last RSS / accounted ratio. Target (<= 2 GB at 5 M tokens): "
                 f"{verdict} ({at_target / 1e9:.2f} GB = {at_target / 2**30:.2f} GiB).",
           extra={"points": points, "data_bytes": data, "bound": bound, "n_live": n_live, "n_chunks": n_chunks,
                  "at_target_bytes": at_target})  # fmt: skip


if __name__ == "__main__":
    main()
