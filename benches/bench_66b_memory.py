"""Issue 6: host memory of the accumulators for OPT-66b (64 layers x 36,864 neurons) over 20 M tokens,
simulated and extrapolated.

Layout (rust/core/src/stats/, count_table.rs, summary.rs, position_counts.rs; `_common.neuron_bytes` and friends):
- a pointer per neuron, dead or alive (8 bytes);
- per chunk of 256 neurons of a layer, allocated when any of them first fires: position counts, 2 bytes
  per (position, neuron), 1 MiB at 2048 positions. In 66b every chunk of every layer holds live neurons,
  so positions cost 64 x 144 chunks x 1 MiB = 9 GiB whatever the neurons do (2 x T = 4 KiB per neuron);
- per live neuron a 224-byte struct and three Misra-Gries summaries (tokens: 8-byte slots, bigrams and
  trigrams: 12-byte slots) holding fewer than `ngram_capacity` keys, in power-of-two tables at most 3/4
  full. Their size depends on D1, D2, D3, the distinct tokens / bigrams / trigrams the neuron fired on,
  only up to the capacity: past it the summary is full (512 slots for capacities 193-384, the default
  among them: 16,608 bytes per neuron; 1024 slots up to 768: 32,992; 2048 up to 1536: 65,760);
- the data's own bigram and trigram occurrence tables (shared): at most one distinct n-gram per token.

So:
1. the layout formula is checked against the core: neurons that fire on exactly D distinct tokens (D on
   a grid) are fed to it and their bytes (less the data-only statistics and the position chunk) compared
   with neuron_bytes(D1, D2, D3) of the same stream;
2. every neuron of the paper's 66b profile (dead fraction and live frequency per layer, log-normal spread)
   gets A = f x 20 M activations; firing independently of the token on Zipf(1) text (the worst case: real
   neurons are more selective) its expected bytes(A) are estimated by drawing A (previous, previous,
   current) token triples and counting the distinct keys (Monte Carlo on a log grid of A, up to where
   every draw fills all three summaries);
3. a direct simulation checks the model: sampled layers' neurons are fed synthetic bitmask streams at a
   rate that gives each its 20 M-token activation count where that fits in `--rows` rows, and the
   measured bytes are compared with the model for the same neurons (per-neuron part and chunks). At
   20 M tokens nearly every live neuron's summaries are full, so a 'spread' set of neurons with A
   log-uniform from 1 to `--rows` also checks the model where they are not.

4. the examples state (issue 18, `--examples k`, default 16): per neuron k (priority, id) sample slots,
   k top (value, id) pairs, a sum and a maximum; measured on one whole 66b layer whose every neuron has
   fired (all sample chunks allocated, the most it takes) and counted for all 64 layers, plus a second
   copy on rank 0 while it merges another rank's (distributed.gather_to_rank0).

    python benches/bench_66b_memory.py [--rows 65536] [--sample 1024] [--ngram-capacity 256] [--examples 16]
"""

from __future__ import annotations

import argparse
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
    hashmap_heap_bytes,
    neuron_bytes,
    pack_rows,
    record,
    rss_bytes,
    zipf_tokens,
)

LAYERS, NEURONS, TOKENS = 64, 36_864, 20_000_000
TARGET_BYTES = 64e9
GRID = [1, 10, 100, 150, 200, 300, 600, 1000, 3000, 10_000, VOCAB - 3]


def dead_fraction(layer: int) -> float:
    """Paper Figure 1 for 66b: peaks near 73% at layer 3, fully alive past half depth."""
    if layer >= 32:
        return 0.0
    return 0.73 * (0.6 + 0.4 * layer / 3) if layer < 3 else 0.73 * max(0.0, 1 - (layer - 3) / 29) ** 1.5


def mean_live_frequency(layer: int) -> float:
    """Under 0.005 in the first half, rising to 0.05-0.10 near the top."""
    return 0.003 if layer < 32 else 0.003 + (0.08 - 0.003) * ((layer - 32) / 31) ** 2


def layer_frequencies(layer: int, n: int, rng: np.random.Generator) -> np.ndarray:
    f = rng.lognormal(mean=0.0, sigma=1.0, size=n)
    f *= mean_live_frequency(layer) / f.mean()
    f[rng.random(n) < dead_fraction(layer)] = 0.0
    return np.minimum(f, 1.0)


def zipf_cdf() -> np.ndarray:
    p = 1.0 / np.arange(1, VOCAB + 1)
    return np.cumsum(p / p.sum())


def distinct_ngrams(tokens: np.ndarray, fire: np.ndarray) -> tuple[int, int, int]:
    """Distinct tokens, bigrams and trigrams a neuron firing on `fire` (n_seq, T) of `tokens` (n_seq, T,
    BOS at position 0) counts: non-BOS rows; n-grams inside the sequence (BOS may open them)."""
    on = fire & (tokens != BOS)
    bi = tokens[:, :-1] * VOCAB + tokens[:, 1:]
    tri = (tokens[:, :-2] * VOCAB + tokens[:, 1:-1]) * VOCAB + tokens[:, 2:]
    return (np.unique(tokens[on]).size, np.unique(bi[on[:, 1:]]).size, np.unique(tri[on[:, 2:]]).size)


def check_formula(d: int, capacity: int, rng: np.random.Generator) -> tuple[int, int]:
    """(measured, formula) bytes of one neuron that fired on every row of a stream cycling through d
    distinct tokens (4 x capacity rows at least), position chunk excluded."""
    stats = opt_neurons.NeuronStats(1, 64, VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    data_only = opt_neurons.NeuronStats(1, 64, VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    ids = rng.permutation(VOCAB - 3)[:d] + 3
    n_rows = max(d, 4 * capacity)
    n_seq = -(-n_rows // (T - 1))
    body = np.resize(ids, n_seq * (T - 1)).reshape(n_seq, T - 1)
    tokens = np.concatenate([np.full((n_seq, 1), BOS), body], axis=1)
    acts = np.zeros((tokens.size, 64), bool)
    positions = np.tile(np.arange(T), n_seq)
    data_only.update(0, pack_rows(acts), tokens.reshape(-1), positions)
    acts[:, 0] = True
    stats.update(0, pack_rows(acts), tokens.reshape(-1), positions)
    # The data's own n-gram tables are shared by all neurons: not a per-neuron cost; the chunk is per 256.
    measured = stats.memory_bytes() - data_only.memory_bytes() - chunk_bytes(T)
    d1, d2, d3 = distinct_ngrams(tokens, np.ones(tokens.shape, bool))
    return measured, int(neuron_bytes(d1, d2, d3, capacity))


def bytes_by_activations(capacity: int, cdf: np.ndarray, rng: np.random.Generator, reps: int = 8
                         ) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """Expected bytes of a live neuron (chunk excluded) after A activations on i.i.d. Zipf(1) text,
    token-independent firing: a log grid of A up to where every draw fills all three summaries,
    and the full size beyond."""
    full = float(neuron_bytes(capacity, capacity, capacity, capacity))
    grid, values, a = [], [], 1.0
    while True:
        b = []
        n = int(round(a))
        for _ in range(reps):
            t = np.searchsorted(cdf, rng.random((3, n))).astype(np.int64)
            b.append(neuron_bytes(np.unique(t[2]).size, np.unique(t[1] * VOCAB + t[2]).size,
                                  np.unique((t[0] * VOCAB + t[1]) * VOCAB + t[2]).size, capacity))  # fmt: skip
        grid.append(n)
        values.append(float(np.mean(b)))
        if min(b) >= full:
            break
        a *= 1.15
    return np.array(grid, np.float64), np.array(values), full


def simulate(f: np.ndarray, rows: int, capacity: int, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
    """Feed neurons with A = f x 20 M <= rows their activations; returns (bytes, chunks allocated,
    which neurons were fed)."""
    activations = f * TOKENS
    fed = (activations > 0) & (activations <= rows)
    rate = np.where(fed, activations / rows, 0.0).astype(np.float32)
    stats = opt_neurons.NeuronStats(1, len(f), VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    data_only = opt_neurons.NeuronStats(1, len(f), VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    fired = np.zeros(len(f), bool)
    n_seq = rows // T
    for s in range(0, n_seq, 2):
        tokens = zipf_tokens(min(2, n_seq - s), rng)
        flat, positions = tokens.reshape(-1), np.tile(np.arange(T), tokens.shape[0])
        acts = rng.random((tokens.size, len(f)), dtype=np.float32) < rate[None, :]
        fired |= acts.any(axis=0)
        stats.update(0, pack_rows(acts), flat, positions)
        data_only.update(0, pack_rows(np.zeros_like(acts)), flat, positions)
    chunks = int(np.pad(fired, (0, -len(f) % CHUNK)).reshape(-1, CHUNK).any(axis=1).sum())
    return stats.memory_bytes() - data_only.memory_bytes(), chunks, fed


def examples_bytes(k: int) -> int:
    """Bytes of one 66b layer's examples state at its largest: every neuron fired (so every sample chunk
    is allocated) k times; checked against the core's bound and the process's RSS."""
    if k == 0:
        return 0
    before = rss_bytes()
    e = opt_neurons._core.Examples(1, NEURONS, k, 0)
    words = -(-NEURONS // 64)
    bits = np.full((k, words), np.iinfo(np.uint64).max, np.uint64)
    e.update_layers([0], [[bits]], np.arange(k, dtype=np.uint32), np.zeros(k, np.uint32))
    measured, bound = int(e.memory_bytes()), int(e.memory_bound())
    grown = rss_bytes() - before
    assert measured <= bound, (measured, bound)
    print(f"examples, one 66b layer at k={k}: {measured:,} bytes accounted (bound {bound:,}), RSS grew {grown:,}")
    return max(measured, grown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=65_536, help="rows of the direct simulation (multiple of 2048)")
    ap.add_argument("--sample", type=int, default=1024, help="neurons directly simulated per sampled layer")
    ap.add_argument(
        "--layers",
        default="0,3,16,31,spread",
        help="layers of the direct simulation; 'spread': neurons with A log-uniform from 1 to --rows",
    )
    ap.add_argument("--ngram-capacity", type=int, default=opt_neurons._core.DEFAULT_CAPACITY)
    ap.add_argument("--examples", type=int, default=16, help="examples per neuron and kind (0: none)")
    args = ap.parse_args()
    cap = args.ngram_capacity
    t_start = time.time()
    rng = np.random.default_rng(0)
    cdf = zipf_cdf()
    # 1. The layout formula against the core.
    formula_checks = [(d, *check_formula(d, cap, rng)) for d in GRID]
    # 2. Expected bytes by activation count.
    a_grid, a_bytes, full = bytes_by_activations(cap, cdf, rng)

    def model_bytes(activations: np.ndarray) -> np.ndarray:
        return np.where(activations > 0, np.interp(activations, a_grid, a_bytes, right=full), 0.0)

    # 3. The model against a direct simulation.
    checks = []
    for layer in args.layers.split(","):
        if layer == "spread":  # A from 1 to --rows, log-uniform: exercises the unsaturated summaries
            f = np.logspace(0, np.log10(args.rows), args.sample) / TOKENS
        else:
            f = layer_frequencies(int(layer), args.sample, rng)
        measured, chunks, fed = simulate(f, args.rows, cap, rng)
        neurons = measured - chunks * chunk_bytes(T)
        predicted = model_bytes(f[fed] * TOKENS).sum()
        model_chunks = int(np.pad(fed, (0, -len(f) % CHUNK)).reshape(-1, CHUNK).any(axis=1).sum())
        checks.append({"layer": layer, "fed": int(fed.sum()), "measured_bytes": measured, "chunks": chunks,
                       "model_chunks": model_chunks, "measured_neuron_bytes": neurons,
                       "model_neuron_bytes": float(predicted),
                       "model_bytes": float(predicted + model_chunks * chunk_bytes(T))})  # fmt: skip
    # 4. Every layer of OPT-66b.
    rows_out = []
    summaries = positions = pointers = 0.0
    n_live = n_chunks = 0
    for layer in range(LAYERS):
        f = layer_frequencies(layer, NEURONS, rng)
        b = model_bytes(f * TOKENS).sum()
        live = f > 0
        chunks = int(live.reshape(-1, CHUNK).any(axis=1).sum())
        pos = chunks * chunk_bytes(T)
        summaries += b
        positions += pos
        pointers += NEURONS * PTR_BYTES
        n_live += int(live.sum())
        n_chunks += chunks
        if layer in (0, 3, 8, 16, 24, 31, 32, 40, 48, 56, 63):
            rows_out.append([layer, f"{dead_fraction(layer):.0%}", f"{mean_live_frequency(layer):.4f}",
                             f"{int(live.sum()):,}", f"{b / max(int(live.sum()), 1) / 1024:.1f}", chunks,
                             f"{(b + pos + NEURONS * PTR_BYTES) / 2**30:.2f}"])  # fmt: skip
    # The data's own statistics (shared): position totals, token occurrences, and the bigram and trigram
    # occurrence tables with at most one distinct n-gram per token (their real heap; memory_bytes()
    # counts them as hashbrown buckets of 17 bytes).
    data_tables = T * 8 + VOCAB * 8 + 2 * hashmap_heap_bytes(TOKENS)
    data_accounted = T * 8 + VOCAB * 8 + 2 * hashmap_accounted_bytes(TOKENS)
    examples_layer = examples_bytes(args.examples)
    examples = LAYERS * examples_layer * 2  # rank 0 holds a second state while it merges another rank's
    total = summaries + positions + pointers + data_tables + examples
    verdict = "met" if total <= TARGET_BYTES else "MISSED"
    grid_note = ", ".join(f"{d:,}: {m / 1024:.1f}" + ("" if m == fm else f" (formula {fm / 1024:.1f})")
                          for d, m, fm in formula_checks)  # fmt: skip
    exact = all(m == fm for _, m, fm in formula_checks)
    check_note = "; ".join(
        f"layer {c['layer']}: {c['fed']} neurons fed, measured {c['measured_bytes'] / 2**20:.2f} MiB "
        f"({c['chunks']} chunks + {c['measured_neuron_bytes'] / 2**20:.2f} MiB of neurons), model "
        f"{c['model_bytes'] / 2**20:.2f} MiB ({c['model_chunks']} chunks + {c['model_neuron_bytes'] / 2**20:.2f} MiB, "
        f"x{c['model_neuron_bytes'] / max(c['measured_neuron_bytes'], 1):.4f} on the neurons)"
        for c in checks)  # fmt: skip
    record(
        "66b_memory",
        [
            "layer",
            "dead",
            "mean live freq",
            "live neurons",
            "KiB / live neuron (summaries)",
            "position chunks",
            "GiB (layer)",
        ],
        rows_out,
        notes=(
            f"OPT-66b, 20 M tokens, ngram_capacity {cap}: accumulators {total / 2**30:.1f} GiB "
            f"({total / 1e9:.1f} GB) for all 64 layers (worst case: neurons fire independently of the token); "
            f"target <= 64 GB {verdict}. Of which: {n_live:,} live neurons' summaries "
            f"{summaries / 2**30:.1f} GiB ({summaries / max(n_live, 1):,.0f} bytes per live neuron, full: "
            f"{full:,.0f}), position counts {positions / 2**30:.1f} GiB ({n_chunks:,} chunks of "
            f"{chunk_bytes(T) / 2**20:g} MiB, {2 * T:,} bytes per neuron), neuron pointers "
            f"{pointers / 2**30:.2f} GiB, data tables {data_tables / 2**30:.2f} GiB (bound; memory_bytes() "
            f"would report {data_accounted / 2**30:.2f}), examples (k = {args.examples}) {examples / 2**30:.2f} GiB "
            f"({examples_layer / NEURONS:,.0f} bytes per neuron, twice: rank 0 merging another rank's). "
            f"Per live neuron all in: "
            f"{(summaries + positions + pointers) / max(n_live, 1):,.0f} bytes.\n"
            f"Layout formula vs core, bytes per neuron by distinct tokens fired on (KiB): {grid_note}"
            f"{' (all exact)' if exact else ''}.\n"
            f"Model vs direct simulation ({args.rows:,} rows): {check_note}. "
            f"RSS now {rss_bytes() / 2**30:.2f} GiB; {time.time() - t_start:.0f} s."
        ),
        extra={
            "total_bytes": total,
            "summaries_bytes": summaries,
            "positions_bytes": positions,
            "pointer_bytes": pointers,
            "data_bytes": data_tables,
            "examples_bytes": examples,
            "examples_k": args.examples,
            "live_neurons": n_live,
            "chunks": n_chunks,
            "full_neuron_bytes": full,
            "formula_checks": formula_checks,
            "checks": checks,
            "a_grid": a_grid.tolist(),
            "a_bytes": a_bytes.tolist(),
        },  # fmt: skip
    )


if __name__ == "__main__":
    main()
