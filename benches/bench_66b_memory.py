"""Issue 6: host memory of the accumulators for OPT-66b (64 layers x 36,864 neurons) over 20 M tokens,
simulated and extrapolated.

A live neuron's memory is its position counts (fixed), its n-gram summaries (full once it has seen
more than `ngram_capacity` distinct n-grams) and its token counts, whose size depends only on D, the
number of distinct tokens it fired on. So:
1. the core is fed neurons that fire on exactly D distinct tokens (D on a grid) and their bytes are
   measured: bytes(D);
2. every neuron of the paper's 66b profile (dead fraction and live frequency per layer, log-normal
   spread) gets A = f x 20 M activations; firing independently of the token on Zipf(1) text it sees
   D(A) = sum_t 1 - exp(-A p_t) distinct tokens (the worst case: real neurons are more selective);
3. a direct simulation checks the model: sampled layers' neurons are fed synthetic bitmask streams at a
   rate that gives each its 20 M-token activation count where that fits in `--rows` rows, and the
   measured bytes are compared with bytes(D(A)) for the same neurons.

    python benches/bench_66b_memory.py [--rows 65536] [--sample 1024]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import BOS, T, VOCAB, pack_rows, record, rss_bytes, zipf_tokens

import opt_neurons

LAYERS, NEURONS, TOKENS = 64, 36_864, 20_000_000
GRID = [1, 10, 100, 300, 1000, 3000, 10_000, 16_000, 17_000, 25_000, 35_000, VOCAB]


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


def zipf_p() -> np.ndarray:
    p = 1.0 / np.arange(1, VOCAB + 1)
    return p / p.sum()


def distinct_tokens(activations: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Expected distinct tokens among A i.i.d. draws from p (Poisson approximation), interpolated
    from a log-spaced grid of A."""
    grid = np.logspace(0, np.log10(max(activations.max(), 2.0)), 200)
    d = np.array([(-np.expm1(-a * p)).sum() for a in grid])
    return np.interp(activations, grid, d)


def bytes_for_distinct(d: int, capacity: int, rng: np.random.Generator) -> int:
    """Measured bytes of one neuron that fired on exactly d distinct tokens (and, past capacity, on
    more distinct n-grams than its summaries keep)."""
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
    # The data's own n-gram tables are shared by all neurons: not a per-neuron cost.
    return stats.memory_bytes() - data_only.memory_bytes()


def simulate(f: np.ndarray, rows: int, capacity: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Feed neurons with A = f x 20 M <= rows their activations; returns (bytes, which were fed)."""
    activations = f * TOKENS
    fed = (activations > 0) & (activations <= rows)
    rate = np.where(fed, activations / rows, 0.0).astype(np.float32)
    stats = opt_neurons.NeuronStats(1, len(f), VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    data_only = opt_neurons.NeuronStats(1, len(f), VOCAB, T, bos_token_id=BOS, ngram_capacity=capacity)
    n_seq = rows // T
    for s in range(0, n_seq, 2):
        tokens = zipf_tokens(min(2, n_seq - s), rng)
        flat, positions = tokens.reshape(-1), np.tile(np.arange(T), tokens.shape[0])
        acts = rng.random((tokens.size, len(f)), dtype=np.float32) < rate[None, :]
        stats.update(0, pack_rows(acts), flat, positions)
        data_only.update(0, pack_rows(np.zeros_like(acts)), flat, positions)
    return stats.memory_bytes() - data_only.memory_bytes(), fed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=65_536, help="rows of the direct simulation (multiple of 2048)")
    ap.add_argument("--sample", type=int, default=1024, help="neurons directly simulated per sampled layer")
    ap.add_argument("--layers", default="0,3,16,31", help="layers of the direct simulation")
    ap.add_argument("--ngram-capacity", type=int, default=opt_neurons._core.DEFAULT_CAPACITY)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    p = zipf_p()
    grid = np.array(GRID, dtype=np.float64)
    grid_bytes = np.array([bytes_for_distinct(int(d), args.ngram_capacity, rng) for d in GRID], dtype=np.float64)

    def model_bytes(activations: np.ndarray) -> np.ndarray:
        live = activations > 0
        return np.where(live, np.interp(distinct_tokens(activations, p), grid, grid_bytes), 0.0)

    # 1. Check the model against a direct simulation.
    checks = []
    for layer in [int(x) for x in args.layers.split(",")]:
        f = layer_frequencies(layer, args.sample, rng)
        measured, fed = simulate(f, args.rows, args.ngram_capacity, rng)
        predicted = model_bytes(f[fed] * TOKENS).sum()
        checks.append([layer, int(fed.sum()), f"{measured / 2**20:.1f}", f"{predicted / 2**20:.1f}",
                       f"{predicted / max(measured, 1):.2f}"])  # fmt: skip
    # 2. Extrapolate every layer of OPT-66b.
    rows_out, total = [], 0.0
    for layer in range(LAYERS):
        f = layer_frequencies(layer, NEURONS, rng)
        b = model_bytes(f * TOKENS)
        live = int((f > 0).sum())
        total += b.sum() + NEURONS * 8  # + one pointer per neuron, dead or alive
        if layer in (0, 3, 8, 16, 24, 31, 32, 40, 48, 56, 63):
            rows_out.append([layer, f"{dead_fraction(layer):.0%}", f"{mean_live_frequency(layer):.4f}", f"{live:,}",
                             f"{b.sum() / max(live, 1) / 1024:.1f}", f"{b.sum() / 2**30:.2f}"])  # fmt: skip
    # The data's own n-gram occurrence tables (shared): at most one bigram and one trigram per token.
    data_tables = 2 * TOKENS * 16
    total += data_tables
    grid_note = ", ".join(f"{int(d):,}: {b / 1024:.0f}" for d, b in zip(grid, grid_bytes))
    check_note = "; ".join(f"layer {c[0]}: {c[1]} neurons fed, measured {c[2]} MiB, model {c[3]} MiB (x{c[4]})"
                           for c in checks)  # fmt: skip
    record(
        "66b_memory",
        ["layer", "dead", "mean live freq", "live neurons", "KiB / live neuron", "GiB (layer)"],
        rows_out,
        notes=(f"OPT-66b, 20 M tokens, ngram_capacity {args.ngram_capacity}: accumulators {total / 2**30:.1f} GiB "
               f"for all 64 layers (worst case: neurons fire independently of the token), including "
               f"{data_tables / 2**30:.1f} GiB bound for the data's n-gram tables.\n"
               f"Measured bytes per neuron by distinct tokens fired on (KiB): {grid_note}.\n"
               f"Model vs direct simulation ({args.rows:,} rows): {check_note}. RSS now {rss_bytes() / 2**30:.2f} GiB."),
        extra={"total_bytes": total, "grid": GRID, "grid_bytes": grid_bytes.tolist(), "checks": checks},
    )


if __name__ == "__main__":
    main()
