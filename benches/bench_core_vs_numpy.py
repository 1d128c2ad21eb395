"""The Rust core vs a careful numpy implementation of the same counting, on the same bitmasks, in one run.

Input: one OPT-125m layer (3072 neurons), blocks of `--rows` rows (whole 2048-token sequences, Zipf(1)
token ids over the OPT vocabulary, BOS first), every neuron active independently with probability
`density` (the accumulators' worst case: see rust/core/benches/core.rs).

numpy reference: per block, unpack the bits (np.unpackbits), list the activations (np.nonzero), and add
per-(neuron, position) counts with np.bincount over flattened indices and per-(neuron, token) counts
(BOS rows left out) into a dense (neurons, vocab) uint32 array; the fastest of np.add.at and
sort-and-count (np.unique) is used, chosen on the first block. The core
(`opt_neurons.NeuronStats.update`) does all of that and also the bigram and trigram summaries, so the
ratio is conservative. Both run over the same blocks in turn, several rounds; the median round counts.
The first quarter of the blocks is not timed for either (the core's accumulators are past their first
allocations and growth, numpy's dense arrays are paged in): steady state, as over a long run.

    python benches/bench_core_vs_numpy.py                # densities 0.5%, 5%, 50%
    python benches/bench_core_vs_numpy.py --densities 0.05 --blocks 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import opt_neurons  # noqa: E402

from _common import BOS, VOCAB, T, Timer, machine, record, uniform_bits, zipf_tokens  # noqa: E402

N = 3072


class NumpyCounts:
    """Per-(neuron, position) and per-(neuron, token) activation counts from packed bits."""

    def __init__(self, n: int, vocab: int, t: int) -> None:
        self.n, self.vocab, self.t = n, vocab, t
        self.pos = np.zeros(n * t, np.int64)
        self.tok = np.zeros(n * vocab, np.uint32)
        self.active = np.zeros(n, np.int64)
        self.method = None

    def _add_tokens(self, flat: np.ndarray, method: str) -> None:
        if method == "add.at":
            np.add.at(self.tok, flat, 1)
        else:
            keys, counts = np.unique(flat, return_counts=True)
            self.tok[keys] += counts.astype(np.uint32)

    def update(self, bits: np.ndarray, tokens: np.ndarray, positions: np.ndarray) -> None:
        acts = np.unpackbits(bits.view(np.uint8), axis=1, count=self.n, bitorder="little")
        r, j = np.nonzero(acts)
        self.active += np.bincount(j, minlength=self.n)
        self.pos += np.bincount(j * self.t + positions[r], minlength=self.n * self.t)
        keep = tokens[r] != BOS
        flat = j[keep] * self.vocab + tokens[r[keep]]
        if self.method is None:  # pick the faster way on the first block (and count it once)
            times = {}
            for m in ("add.at", "unique"):
                saved = self.tok.copy()
                t0 = time.perf_counter()
                self._add_tokens(flat, m)
                times[m] = time.perf_counter() - t0
                self.tok = saved
            self.method = min(times, key=times.get)
        self._add_tokens(flat, self.method)


def run(density: float, rows: int, n_blocks: int, rounds: int, rng: np.random.Generator) -> dict:
    n_seq = rows // T
    blocks = []
    for _ in range(n_blocks):
        toks = zipf_tokens(n_seq, rng).reshape(-1).astype(np.uint32)
        pos = np.tile(np.arange(T, dtype=np.uint32), n_seq)
        blocks.append((uniform_bits(rows, N, density, rng), toks, pos))
    events = sum(int(np.unpackbits(b.view(np.uint8)).sum()) for b, _, _ in blocks)
    core_t, np_t, core_cpu, np_cpu = [], [], [], []
    ref = core = None
    warm = n_blocks // 4  # untimed first blocks: accumulators past their growth (and numpy's pages touched)
    for _ in range(rounds):
        core = opt_neurons.NeuronStats(1, N, VOCAB, T, bos_token_id=BOS)
        for b, toks, pos in blocks[:warm]:
            core.update(0, b, toks, pos)
        with Timer() as tc:
            for b, toks, pos in blocks[warm:]:
                core.update(0, b, toks, pos)
        ref = NumpyCounts(N, VOCAB, T)
        for b, toks, pos in blocks[:warm]:  # the first one also picks numpy's faster token method
            ref.update(b, toks, pos)
        with Timer() as tn:
            for b, toks, pos in blocks[warm:]:
                ref.update(b, toks, pos)
        timed = n_blocks - warm
        core_t.append(tc.wall / timed)
        core_cpu.append(tc.cpu / timed)
        np_t.append(tn.wall / timed)
        np_cpu.append(tn.cpu / timed)
    # Same counts (a few neurons): the reference counted every block once in its last round.
    for neuron in (0, N // 2, N - 1):
        # The core's token summary is exact up to ngram_capacity distinct tokens, then certified:
        # stored <= exact <= stored + slack (absent tokens: exact <= slack).
        ids, cnt, slack = core.token_counts(0, neuron)
        stored = np.zeros(VOCAB, np.int64)
        stored[ids] = cnt
        exact = ref.tok[neuron * VOCAB : (neuron + 1) * VOCAB]
        assert np.all(stored <= exact) and np.all(exact <= stored + slack), neuron
        assert np.array_equal(core.position_counts(0, neuron), ref.pos[neuron * T : (neuron + 1) * T]), neuron
    ev = events / n_blocks
    c, nmp = statistics.median(core_t), statistics.median(np_t)
    return {
        "density": density,
        "events_per_block": ev,
        "core_s": c,
        "numpy_s": nmp,
        "core_eps": ev / c,
        "numpy_eps": ev / nmp,
        "core_eps_cpu": ev / statistics.median(core_cpu),
        "numpy_eps_cpu": ev / statistics.median(np_cpu),
        "ratio": nmp / c,
        "ratio_cpu": statistics.median(np_cpu) / statistics.median(core_cpu),
        "method": ref.method,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", default="0.005,0.05,0.5")
    ap.add_argument("--rows", type=int, default=4096, help="rows per update (multiple of 2048)")
    ap.add_argument(
        "--blocks",
        type=int,
        default=32,
        help="blocks per density, the first quarter untimed (a quarter as many at 50%%)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    info = machine()
    rng = np.random.default_rng(a.seed)
    rows = []
    for d in (float(x) for x in a.densities.split(",")):
        blocks = max(4, a.blocks // 4) if d >= 0.25 else a.blocks
        r = run(d, a.rows, blocks, a.rounds, rng)
        print(r, flush=True)
        rows.append([f"{100 * d:g}%", f"{r['events_per_block']:,.0f}", f"{r['core_s'] * 1e3:.1f}",
                     f"{r['numpy_s'] * 1e3:.1f}", f"{r['core_eps'] / 1e6:.1f}", f"{r['numpy_eps'] / 1e6:.1f}",
                     f"{r['ratio']:.1f}x", f"{r['ratio_cpu']:.1f}x", r["method"]])  # fmt: skip
    record("core_vs_numpy",
           ["density", "events/update", "core ms/update", "numpy ms/update", "core M events/s",
            "numpy M events/s", "speed-up (wall)", "speed-up (CPU time)", "numpy token method"],
           rows, machine_info=info,
           notes=f"OPT-125m layer ({N} neurons), {a.rows} rows per update, uniform random activations, Zipf tokens; "
                 "the core also counts bigrams and trigrams; numpy is single-threaded, the core uses every core "
                 "(CPU-time ratio = work ratio).")  # fmt: skip


if __name__ == "__main__":
    main()
