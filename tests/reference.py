"""A plain numpy / Python reference of METHOD.md's definitions, for testing the Rust core.

Written from METHOD.md (and the brief of the reference tests), not from the Rust code: clarity over
speed, no streaming, no summaries. Inputs are unpacked boolean activations ``acts`` of shape
(layers, rows, neurons), ``token_ids`` (rows,), ``positions`` (rows,) and ``bos_id`` (None: no BOS).

Conventions (from METHOD.md):
* frequency = active rows / all rows; dead = never active; position counts use all rows;
* token statistics (token counts, n-gram counts, their totals and occurrences) leave BOS rows out;
* the n-gram ending at row i is (x_{i-k+1}, ..., x_i); it exists only when rows i-k+1..i are
  consecutive positions of one sequence (each position is the previous one + 1): n-grams reaching
  before the sequence start are not counted. An n-gram ending at a non-BOS row may contain BOS;
* cover_k = fewest distinct k-grams whose counts reach >= coverage * the neuron's counted k-gram
  activations (0 when there are none);
* detectors: the top cover_k k-grams (count descending, then key ascending) with the neuron firing
  on >= token_hit_rate of their occurrences (non-BOS rows) are covered; a detector when cover_k <=
  the limit, it has counted activations, and its covered k-grams hold >= detector_share of them;
* positional: MI in nats, smoothing, active intervals, kinds and ``strong`` as METHOD.md says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

COVERAGE = 0.95
TOKEN_HIT_RATE = 0.95
DETECTOR_SHARE = 0.95
MAX_TOKENS = 5
MAX_TRIGRAMS = 50
MI_THRESHOLD = 0.05
ACTIVE_LEVEL = 0.5
LOW, STRONG_LOW = 0.05, 0.01
HIGH, STRONG_HIGH = 0.95, 0.99
MIN_OSCILLATIONS = 3
THIN_SPREAD = 0.02


def pack(acts_layer: np.ndarray) -> np.ndarray:
    """(rows, n) bool -> (rows, ceil(n/64)) uint64 with bit j of word w = neuron 64 w + j."""
    acts = np.asarray(acts_layer, dtype=bool)
    rows, n = acts.shape
    words = max(1, -(-n // 64))
    padded = np.zeros((rows, words * 64), dtype=bool)
    padded[:, :n] = acts
    # packbits (little bit order) puts neuron 8 b + i in bit i of byte b; 8 bytes make a little-endian word.
    as_bytes = np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little"))
    return as_bytes.view("<u8").astype(np.uint64)


def ngram_ends(token_ids: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows i where a k-gram ends, and its tokens (shape (len, k), oldest first): rows i-k+1..i must be
    consecutive positions (each the previous one + 1)."""
    t = np.asarray(token_ids, dtype=np.int64)
    p = np.asarray(positions, dtype=np.int64)
    n = len(t)
    ok = np.zeros(n, dtype=bool)
    ok[k - 1 :] = True
    step = np.zeros(n, dtype=bool)  # step[i]: row i directly follows row i-1 in its sequence
    step[1:] = p[1:] == p[:-1] + 1
    for j in range(k - 1):  # rows i-j-1 -> i-j must be steps
        ok[k - 1 :] &= step[k - 1 - j : n - j] if n >= k else False
    rows = np.flatnonzero(ok)
    grams = np.stack([t[rows - (k - 1) + j] for j in range(k)], axis=1) if rows.size else np.zeros((0, k), np.int64)
    return rows, grams


def layer_coverage(per_layer: list[set]) -> tuple[list[int], list[int], list[int]]:
    """The layers table's coverage columns from each layer's covered set: covered by the layer, new against
    the previous layer, new against every earlier layer."""
    seen: set = set()
    new = []
    for s in per_layer:
        new.append(len(s - seen))
        seen |= s
    vs_previous = [len(per_layer[0])] + [len(per_layer[i] - per_layer[i - 1]) for i in range(1, len(per_layer))]
    return [len(s) for s in per_layer], vs_previous, new


def top_order(counts: dict) -> list:
    """Keys by count descending, then key ascending (tuples compare lexicographically)."""
    return sorted(counts, key=lambda key: (-counts[key], key))


def cover(counts: dict, coverage: float = COVERAGE) -> int:
    total = sum(counts.values())
    if total == 0:
        return 0
    cum = 0
    for j, key in enumerate(top_order(counts)):
        cum += counts[key]
        if cum >= coverage * total:
            return j + 1
    raise AssertionError("unreachable: the counts add up to the total")


def detector(
    counts: dict,
    occurrences: dict,
    max_top: int,
    *,
    coverage: float = COVERAGE,
    hit_rate: float = TOKEN_HIT_RATE,
    share: float = DETECTOR_SHARE,
) -> list | None:
    """The covered keys of a detector (in top order), or None when the neuron is not one."""
    total = sum(counts.values())
    c = cover(counts, coverage)
    if total == 0 or c > max_top:
        return None
    covered = [key for key in top_order(counts)[:c] if counts[key] >= hit_rate * occurrences[key]]
    held = sum(counts[key] for key in covered)
    return covered if held >= share * total else None


# ----------------------------------------------------------------------------------------- positional


def mutual_information(active: np.ndarray, totals: np.ndarray) -> float:
    """I(act; pos) = sum_p w_p [fr(p) ln(fr(p)/fr) + (1-fr(p)) ln((1-fr(p))/(1-fr))], 0 ln 0 = 0."""
    n = int(np.sum(totals))
    if n == 0:
        return 0.0
    fr = int(np.sum(active)) / n

    def term(x: float, y: float) -> float:
        return 0.0 if x == 0 else x * math.log(x / y)

    mi = 0.0
    for a, t in zip(active.tolist(), totals.tolist()):
        if t == 0:
            continue
        f = a / t
        mi += (t / n) * (term(f, fr) + term(1.0 - f, 1.0 - fr))
    return mi


def frequency_curve(active: np.ndarray, totals: np.ndarray) -> list[float | None]:
    """fr(p) for p = 0 .. last position with a token; None where no token was at p."""
    observed = np.flatnonzero(np.asarray(totals) > 0)
    T = int(observed[-1]) + 1 if observed.size else 0
    return [int(active[p]) / int(totals[p]) if totals[p] > 0 else None for p in range(T)]


def half_width(T: int, override: int = 0) -> int:
    return override if override > 0 else max(1, T // 256)


def smooth(curve: list[float | None], w: int) -> list[float | None]:
    """Centred moving average over the positions with tokens in [p-w, p+w] (truncated at the ends)."""
    out: list[float | None] = []
    for p in range(len(curve)):
        vals = [v for v in curve[max(0, p - w) : p + w + 1] if v is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def active_intervals(smoothed: list[float | None], w: int, level: float = ACTIVE_LEVEL) -> list[tuple[int, int]]:
    """Maximal runs with smoothed >= level, end exclusive; runs separated by a gap < w merged."""
    runs: list[tuple[int, int]] = []
    start = None
    for p, v in enumerate(smoothed):
        on = v is not None and v >= level
        if on and start is None:
            start = p
        elif not on and start is not None:
            runs.append((start, p))
            start = None
    if start is not None:
        runs.append((start, len(smoothed)))
    merged: list[tuple[int, int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < w:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


@dataclass
class Positional:
    mi: float
    positional: bool
    kind: str | None = None
    strong: bool = False
    intervals: list[tuple[int, int]] = field(default_factory=list)
    smoothed: list[float | None] = field(default_factory=list)
    lo: float = math.nan
    hi: float = math.nan
    spread: float = math.nan

    def borderline(self, eps: float = 1e-9) -> bool:
        """True when a float comparison of the rule sits within eps of its threshold."""
        if abs(self.mi - MI_THRESHOLD) < eps:
            return True
        if not self.positional:
            return False
        levels = (ACTIVE_LEVEL, LOW, STRONG_LOW, HIGH, STRONG_HIGH)
        return (self.kind == "other" and abs(self.spread - THIN_SPREAD) < eps) or any(
            v is not None and abs(v - x) < eps for v in self.smoothed for x in levels
        )


def positional(active: np.ndarray, totals: np.ndarray, smoothing_half_width: int = 0) -> Positional:
    mi = mutual_information(active, totals)
    if not mi > MI_THRESHOLD:
        return Positional(mi, False)
    curve = frequency_curve(active, totals)
    w = half_width(len(curve), smoothing_half_width)
    sm = smooth(curve, w)
    intervals = active_intervals(sm, w)
    finite = [v for v in sm if v is not None]
    lo, hi = min(finite), max(finite)
    low, high = lo <= LOW, hi >= HIGH
    if len(intervals) >= MIN_OSCILLATIONS:
        kind = "oscillatory"
    elif low and high:
        kind = "two_sided"
    elif low or high:
        kind = "one_sided"
    else:
        kind = "other"
    # "strong when the side(s) reached are <= 0.01 / >= 0.99": every reached side; `other` (reaching
    # neither side) strong when thin: the median of |fr(p) - smoothed(p)| over observed positions <= 0.02.
    spread = float(np.median([abs(c - m) for c, m in zip(curve, sm) if c is not None and m is not None]))
    if kind == "other":
        strong = spread <= THIN_SPREAD
    else:  # an oscillatory curve reaching neither side is never strong
        strong = (low or high) and (not low or lo <= STRONG_LOW) and (not high or hi >= STRONG_HIGH)
    return Positional(mi, True, kind, bool(strong), intervals, sm, lo, hi, spread)


# ---------------------------------------------------------------------------------------- everything


class Reference:
    """Every per-neuron quantity of METHOD.md, computed directly from unpacked activations."""

    def __init__(
        self,
        acts: np.ndarray,
        token_ids: np.ndarray,
        positions: np.ndarray,
        bos_id: int | None,
        max_positions: int,
    ) -> None:
        self.acts = np.asarray(acts, dtype=bool)
        assert self.acts.ndim == 3
        self.n_layers, self.rows, self.n_neurons = self.acts.shape
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.max_positions = max_positions
        self.counted = np.ones(self.rows, dtype=bool) if bos_id is None else self.token_ids != bos_id

        self.n_active = self.acts.sum(axis=1).astype(np.int64)  # (layers, neurons)
        self.frequency = self.n_active / self.rows
        self.dead = self.n_active == 0
        self.position_totals = np.bincount(self.positions, minlength=max_positions)
        # (layers, neurons, positions): activations at each position, all rows (BOS included).
        self.position_counts = np.zeros((self.n_layers, self.n_neurons, max_positions), dtype=np.int64)
        for layer in range(self.n_layers):
            for neuron in range(self.n_neurons):
                on = self.acts[layer, :, neuron]
                self.position_counts[layer, neuron] = np.bincount(self.positions[on], minlength=max_positions)

        # k-grams ending at non-BOS rows (k = 1: the token itself), as integer keys in base V, so that
        # key order is the lexicographic order of the token tuples.
        self.base = int(self.token_ids.max()) + 1 if self.rows else 1
        self.gram_rows: dict[int, np.ndarray] = {}
        self.gram_keys: dict[int, np.ndarray] = {}
        self.occurrences: dict[int, dict] = {}
        self._memo: dict[tuple[int, int, int], dict] = {}
        for k in (1, 2, 3):
            rows, grams = ngram_ends(self.token_ids, self.positions, k)
            keep = self.counted[rows]
            rows, grams = rows[keep], grams[keep]
            keys = np.zeros(len(rows), dtype=np.int64)
            for j in range(k):
                keys = keys * self.base + grams[:, j]
            self.gram_rows[k], self.gram_keys[k] = rows, keys
            self.occurrences[k] = self._count(keys, k)
        self.token_occurrences = {key[0]: c for key, c in self.occurrences[1].items()}

    def _count(self, keys: np.ndarray, k: int) -> dict[tuple[int, ...], int]:
        """{token tuple: count} of integer k-gram keys."""
        uniq, cnt = np.unique(keys, return_counts=True)
        digits, rest = [], uniq
        for _ in range(k):
            rest, d = np.divmod(rest, self.base)
            digits.append(d)
        grams = np.stack(digits[::-1], axis=1).tolist() if len(uniq) else []
        return dict(zip(map(tuple, grams), cnt.tolist()))

    def ngram_counts(self, layer: int, neuron: int, k: int) -> dict[tuple[int, ...], int]:
        """Activations of the neuron per k-gram (ending at non-BOS rows); keys are token tuples."""
        if (layer, neuron, k) not in self._memo:
            on = self.acts[layer, self.gram_rows[k], neuron]
            self._memo[layer, neuron, k] = self._count(self.gram_keys[k][on], k)
        return self._memo[layer, neuron, k]

    def token_counts(self, layer: int, neuron: int) -> dict[int, int]:
        return {key[0]: c for key, c in self.ngram_counts(layer, neuron, 1).items()}

    def cover(self, layer: int, neuron: int, k: int) -> int:
        return cover(self.ngram_counts(layer, neuron, k))

    def token_detector(self, layer: int, neuron: int) -> list[int] | None:
        return detector(self.token_counts(layer, neuron), self.token_occurrences, MAX_TOKENS)

    def trigram_detector(self, layer: int, neuron: int) -> list[tuple[int, int, int]] | None:
        return detector(self.ngram_counts(layer, neuron, 3), self.occurrences[3], MAX_TRIGRAMS)

    def positional(self, layer: int, neuron: int, smoothing_half_width: int = 0) -> Positional:
        return positional(self.position_counts[layer, neuron], self.position_totals, smoothing_half_width)
