"""The Rust core against `reference.py` (METHOD.md's definitions in plain numpy) on random inputs.

Counts, merges (orders, bytes, pickle), coverage and detectors (exact n-gram capacity), certified
bounds (small capacity), positional statistics (MI, kinds, strong, intervals) and input errors.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opt_neurons import NeuronStats
from opt_neurons.confidence import frequency_upper
from opt_neurons.tables import build_tables

from reference import Reference, pack

EXACT = 1 << 22  # an n-gram capacity no test reaches: n-gram counts are exact
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck))
SCALE = int(os.environ.get("OPT_NEURONS_REF_SCALE", "1"))  # more examples for a longer search


def examples(n: int) -> int:
    return n * SCALE


# ------------------------------------------------------------------------------------------ data


@dataclass
class Stream:
    """Rows of whole sequences (positions 0, 1, ... within each) with activations of every layer."""

    token_ids: np.ndarray  # (rows,) uint32
    positions: np.ndarray  # (rows,) uint32
    bounds: list[tuple[int, int]]  # row range of each sequence
    acts: np.ndarray  # (layers, rows, neurons) bool
    vocab: int
    max_positions: int
    bos: int | None

    def reference(self) -> Reference:
        return Reference(self.acts, self.token_ids, self.positions, self.bos, self.max_positions)

    def new_stats(self, capacity: int = EXACT) -> NeuronStats:
        return NeuronStats(self.acts.shape[0], self.acts.shape[2], self.vocab, self.max_positions,
                           bos_token_id=self.bos, ngram_capacity=capacity)  # fmt: skip

    def subset(self, seqs: list[int]) -> Stream:
        """The stream of the given sequences only (in that order)."""
        rows = np.concatenate([np.arange(*self.bounds[s]) for s in seqs]) if seqs else np.zeros(0, np.int64)
        bounds, at = [], 0
        for s in seqs:
            n = self.bounds[s][1] - self.bounds[s][0]
            bounds.append((at, at + n))
            at += n
        return Stream(self.token_ids[rows], self.positions[rows], bounds, self.acts[:, rows], self.vocab,
                      self.max_positions, self.bos)  # fmt: skip


def sequences(rng, lengths, vocab, bos, *, sampler=None, bos_first=0.8, bos_inside=0.05):
    """Token ids and positions of sequences of the given lengths; BOS at the start of most of them and
    at random places inside (the document separator)."""
    toks, pos, bounds, at = [], [], [], 0
    for n in lengths:
        t = sampler(n) if sampler is not None else rng.integers(0, vocab, n)
        if bos is not None:
            if rng.random() < bos_first:
                t[0] = bos
            t[rng.random(n) < bos_inside] = bos
        toks.append(t)
        pos.append(np.arange(n))
        bounds.append((at, at + n))
        at += n
    return np.concatenate(toks).astype(np.uint32), np.concatenate(pos).astype(np.uint32), bounds


def feed(stats: NeuronStats, s: Stream, rng, *, layer_major: bool | None = None) -> None:
    """Update `stats` with whole sequences per call: random groups of consecutive sequences."""
    if not s.bounds:
        return
    n_seq = len(s.bounds)
    cuts = sorted(set(rng.integers(1, n_seq, size=rng.integers(0, n_seq)).tolist())) if n_seq > 1 else []
    edges = [0, *cuts, n_seq]
    groups = [(s.bounds[a][0], s.bounds[b - 1][1]) for a, b in zip(edges[:-1], edges[1:])]
    layers = range(s.acts.shape[0])
    if layer_major is None:
        layer_major = bool(rng.integers(2))
    if not layer_major and rng.integers(2):  # every layer of a group in one call, as analyze() does
        for a, b in groups:
            stats.update_layers({l: pack(s.acts[l, a:b]) for l in layers}, s.token_ids[a:b], s.positions[a:b])
        return
    calls = [(l, g) for l in layers for g in groups] if layer_major else [(l, g) for g in groups for l in layers]
    for layer, (a, b) in calls:
        stats.update(layer, pack(s.acts[layer, a:b]), s.token_ids[a:b], s.positions[a:b])


# -------------------------------------------------------------------------------------- checking


def _kinds_etc(row: dict):
    ivs = row["active_intervals"]
    return (
        row["positional_kind"],
        row["positional_strong"],
        None if ivs is None else [(d["start"], d["end"]) for d in ivs],
    )


def check_tokens_and_ngrams(row: dict, ref: Reference, l: int, n: int, capacity: int, seen: dict) -> None:
    """cover_k, token and trigram detectors of one neuron (one row of the `neurons` table)."""
    at = f"layer {l} neuron {n}"
    exact_k = {}
    for k in (1, 2, 3):
        counts = ref.ngram_counts(l, n, k)
        exact = ref.cover(l, n, k)
        lo, hi = row[f"cover_{k}"], row[f"cover_{k}_max"]
        exact_k[k] = len(counts) < capacity
        if exact_k[k]:
            assert lo == exact == hi, (at, k, lo, exact, hi)
        else:
            seen["lossy"] += 1
            assert lo <= exact <= hi, (at, k, lo, exact, hi)
    # Detectors.
    td = ref.token_detector(l, n)
    got_tokens = row["detected_tokens"]
    assert row["token_detector"] == (got_tokens is not None)
    if exact_k[1]:
        assert row["token_detector"] == (td is not None), (at, td)
        assert sorted(got_tokens or []) == sorted(td or []), at
    elif got_tokens is not None:  # a certified claim: the exact statistics agree
        assert td is not None and set(got_tokens) <= set(td), (at, got_tokens, td)
    seen["token_detectors"] += td is not None
    trd = ref.trigram_detector(l, n)
    got = None if row["detected_trigrams"] is None else sorted(tuple(g) for g in row["detected_trigrams"])
    assert row["trigram_detector"] == (got is not None)
    if exact_k[3]:
        assert row["trigram_detector"] == (trd is not None), (at, trd)
        assert got == (None if trd is None else sorted(trd)), at
    elif got is not None:  # a certified claim: the exact statistics agree
        assert trd is not None, (at, got)
        assert set(got) <= set(trd), (at, got, trd)
    seen["trigram_detectors"] += trd is not None


def check_against_reference(stats: NeuronStats, ref: Reference, *, capacity: int = EXACT,
                            smoothing_half_width: int = 0, positional: bool = True, ngrams: bool = True,
                            tables=None) -> dict:  # fmt: skip
    """Every column of the `neurons` table and the raw accumulators against the reference.

    With capacity >= the number of distinct k-grams of a neuron its n-gram statistics must be exact;
    otherwise cover_k <= exact <= cover_k_max and a reported trigram detector must be one exactly.
    Returns a few counts for sanity checks of the test design."""
    t = tables if tables is not None else build_tables(stats, smoothing_half_width=smoothing_half_width)
    nt = t.neurons
    L, N = ref.n_layers, ref.n_neurons
    assert nt.height == L * N
    assert stats.rows == ref.rows
    np.testing.assert_array_equal(stats.position_totals(), ref.position_totals)
    occ = np.zeros(stats.config["vocab_size"], dtype=np.int64)
    for tok, c in ref.token_occurrences.items():
        occ[tok] = c
    np.testing.assert_array_equal(stats.token_occurrences(), occ)
    seen = dict(token_detectors=0, trigram_detectors=0, positional=0, lossy=0)
    for i, row in enumerate(nt.iter_rows(named=True)):
        l, n = divmod(i, N)
        at = f"layer {l} neuron {n}"
        assert (row["layer"], row["neuron"]) == (l, n)
        assert row["n_active"] == ref.n_active[l, n], at
        assert row["frequency"] == ref.frequency[l, n], at
        assert row["dead"] == bool(ref.dead[l, n]), at
        np.testing.assert_array_equal(stats.position_counts(l, n), ref.position_counts[l, n], err_msg=at)
        ids, cnts, slack = stats.token_counts(l, n)
        got, want = dict(zip(ids.tolist(), cnts.tolist())), ref.token_counts(l, n)
        if len(want) < capacity:
            assert slack == 0 and got == want, at
        else:  # certified: stored <= true <= stored + slack; an absent token has at most slack
            assert all(got.get(t, 0) <= c <= got.get(t, 0) + slack for t, c in want.items()), at
            assert set(got) <= set(want), at
        heaviest_first = [(-c, t) for t, c in zip(ids.tolist(), cnts.tolist())]
        assert heaviest_first == sorted(heaviest_first), at
        if ngrams:
            check_tokens_and_ngrams(row, ref, l, n, capacity, seen)
        if positional:
            p = ref.positional(l, n, smoothing_half_width)
            assert math.isclose(row["mi_position"], p.mi, rel_tol=1e-9, abs_tol=1e-12), (at, row["mi_position"], p.mi)
            if not p.borderline():
                assert row["positional"] == p.positional, at
                expected = (p.kind, p.strong, p.intervals) if p.positional else (None, False, None)
                assert _kinds_etc(row) == expected, (at, p.lo, p.hi)
            seen["positional"] += p.positional
    return seen


# ---------------------------------------------------------------------------------------- counts


def random_acts(rng, n_layers: int, rows: int, n_neurons: int) -> np.ndarray:
    dens = rng.choice([0.0, 0.01, 0.3, 1.0], size=(n_layers, 1, n_neurons))
    return rng.random((n_layers, rows, n_neurons)) < dens


def random_stream(rng, *, n_layers, n_neurons, vocab, max_positions, n_seqs, bos, ragged=True) -> Stream:
    lengths = rng.integers(1, max_positions + 1, n_seqs) if ragged else np.full(n_seqs, max_positions)
    toks, pos, bounds = sequences(rng, lengths, vocab, bos)
    acts = random_acts(rng, n_layers, len(toks), n_neurons)
    return Stream(toks, pos, bounds, acts, vocab, max_positions, bos)


@settings(max_examples=examples(40), **SETTINGS)
@given(
    n_layers=st.integers(1, 3),
    n_neurons=st.sampled_from([1, 63, 64, 65, 200]),
    vocab=st.sampled_from([3, 40, 300]),
    max_positions=st.integers(1, 40),
    n_seqs=st.integers(1, 8),
    bos=st.sampled_from([None, 0, 2]),
    ragged=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_counts_match_reference(n_layers, n_neurons, vocab, max_positions, n_seqs, bos, ragged, seed):
    rng = np.random.default_rng(seed)
    s = random_stream(rng, n_layers=n_layers, n_neurons=n_neurons, vocab=vocab, max_positions=max_positions,
                      n_seqs=n_seqs, bos=bos, ragged=ragged)  # fmt: skip
    stats = s.new_stats()
    feed(stats, s, rng)
    np.testing.assert_array_equal(stats._core.layer_rows(), [len(s.token_ids)] * n_layers)
    check_against_reference(stats, s.reference())


def test_padding_bits_past_the_last_neuron_are_ignored():
    rng = np.random.default_rng(7)
    s = random_stream(rng, n_layers=1, n_neurons=65, vocab=20, max_positions=16, n_seqs=5, bos=2)
    stats = s.new_stats()
    bits = pack(s.acts[0])
    bits[:, 1] |= np.uint64(0xFFFF_FFFF_FFFF_FFFE)  # neurons 65..127 do not exist
    stats.update(0, bits, s.token_ids, s.positions)
    check_against_reference(stats, s.reference())


@settings(max_examples=examples(20), **SETTINGS)
@given(n_neurons=st.sampled_from([1, 65, 300]), split=st.integers(0, 8), seed=st.integers(0, 2**32 - 1))
def test_activity_rows_count_only_towards_frequency(n_neurons, split, seed):
    """update() on the first sequences and update_activity() on the rest: n_active / frequency / dead
    of the whole stream, every other statistic of the first sequences alone."""
    rng = np.random.default_rng(seed)
    s = random_stream(rng, n_layers=2, n_neurons=n_neurons, vocab=50, max_positions=20, n_seqs=8, bos=2)
    split = min(split, len(s.bounds))
    head, tail = s.subset(list(range(split))), s.subset(list(range(split, len(s.bounds))))
    stats = s.new_stats()
    feed(stats, head, rng)
    for layer in range(2):
        if len(tail.token_ids):
            stats.update_activity(layer, pack(tail.acts[layer]))
    ref = s.reference()
    assert stats.rows == ref.rows and stats.detail_rows == len(head.token_ids)
    got = build_tables(stats).neurons
    np.testing.assert_array_equal(got["n_active"].to_numpy(), ref.n_active.reshape(-1))
    np.testing.assert_array_equal(got["frequency"].to_numpy(), ref.frequency.reshape(-1))
    np.testing.assert_array_equal(
        got["frequency_upper"].to_numpy(), frequency_upper(ref.n_active.reshape(-1), ref.rows)
    )
    if split:
        only_head = head.new_stats()
        feed(only_head, head, rng)
        rest = [c for c in got.columns if c not in ("n_active", "frequency", "frequency_upper", "dead")]
        assert got.select(rest).equals(build_tables(only_head).neurons.select(rest))


def test_memory_bound_is_what_saturated_accumulators_take():
    """Every neuron firing on every row of random text fills all its summaries: the accumulators then take
    exactly memory_bound() besides the data's n-gram tables; before that, less."""
    rng = np.random.default_rng(3)
    n_layers, n_neurons, T = 2, 300, 40
    toks, pos, bounds = sequences(rng, [4] + [T] * 11, 1000, 2)
    acts = np.ones((n_layers, len(toks), n_neurons), dtype=bool)
    s = Stream(toks, pos, bounds, acts, 1000, T, 2)
    stats, data_only = s.new_stats(capacity=16), s.new_stats(capacity=16)
    no_acts = Stream(toks, pos, bounds, np.zeros_like(acts), 1000, T, 2)

    def data_tables() -> int:  # the data's n-gram tables: data_only less its totals and neuron pointers
        return data_only.memory_bytes() - (1000 + T) * 8 - n_layers * n_neurons * 8

    feed(stats, s.subset([0]), rng)  # 4 rows: fewer distinct k-grams than the capacity
    feed(data_only, no_acts.subset([0]), rng)
    assert stats.memory_bytes() - data_tables() < stats.memory_bound()
    rest = list(range(1, len(bounds)))
    feed(stats, s.subset(rest), rng)
    feed(data_only, no_acts.subset(rest), rng)
    assert stats.memory_bytes() - data_tables() == stats.memory_bound()


# ---------------------------------------------------------------------------------------- merges


def merged(parts: list[NeuronStats], order: str) -> NeuronStats:
    clone = [NeuronStats.from_bytes(p.to_bytes()) for p in parts]  # fresh copies: merge mutates
    if order == "forward":
        out = clone[0]
        for p in clone[1:]:
            out.merge(p)
    elif order == "reverse":
        out = clone[-1]
        for p in reversed(clone[:-1]):
            out.merge(p)
    elif order == "tree":
        while len(clone) > 1:
            nxt = []
            for a, b in zip(clone[::2], clone[1::2]):
                a.merge(b)
                nxt.append(a)
            if len(clone) % 2:
                nxt.append(clone[-1])
            clone = nxt
        out = clone[0]
    elif order == "pickled":
        out = pickle.loads(pickle.dumps(clone[0]))
        for p in clone[1:]:
            out.merge(pickle.loads(pickle.dumps(p)))
            out = pickle.loads(pickle.dumps(out))
    elif order == "files":  # the data-parallel gather: each other shard streamed from its saved file
        out = clone[0]
        with tempfile.TemporaryDirectory() as tmp:
            for k, p in enumerate(clone[1:]):
                p.save(os.path.join(tmp, f"{k}.state"))
                out.merge_file(os.path.join(tmp, f"{k}.state"))
    else:
        raise AssertionError(order)
    return out


@settings(max_examples=examples(20), **SETTINGS)
@given(
    n_neurons=st.sampled_from([63, 65, 130]),
    n_shards=st.integers(2, 4),
    bos=st.sampled_from([None, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_merges_equal_single_stream(n_neurons, n_shards, bos, seed, tmp_path_factory):
    rng = np.random.default_rng(seed)
    s = random_stream(rng, n_layers=2, n_neurons=n_neurons, vocab=30, max_positions=24,
                      n_seqs=int(rng.integers(n_shards, 14)), bos=bos)  # fmt: skip
    single = s.new_stats()
    feed(single, s, rng)
    expected = build_tables(single)
    check_against_reference(single, s.reference(), tables=expected)

    owner = rng.integers(0, n_shards, len(s.bounds))  # whole sequences per shard, some shards may be empty
    parts = []
    for k in range(n_shards):
        part = s.new_stats()
        feed(part, s.subset([i for i in range(len(s.bounds)) if owner[i] == k]), rng)
        parts.append(part)
    for order in ("forward", "reverse", "tree", "pickled", "files"):
        m = merged(parts, order)
        got = build_tables(m)
        for name in ("neurons", "layers", "tokens", "positions"):
            assert getattr(got, name).equals(getattr(expected, name)), (order, name)
        assert m.rows == single.rows
        np.testing.assert_array_equal(m._core.layer_rows(), single._core.layer_rows())
        for l, n in [(0, 0), (1, n_neurons - 1), (int(rng.integers(2)), int(rng.integers(n_neurons)))]:
            np.testing.assert_array_equal(m.position_counts(l, n), single.position_counts(l, n))
            for a, b in zip(m.token_counts(l, n), single.token_counts(l, n)):
                np.testing.assert_array_equal(a, b)
    # Round trip of a merged state through a file (the checkpoint path), then merging into an empty
    # accumulator, changes nothing; the file holds exactly the bytes of to_bytes().
    path = tmp_path_factory.mktemp("state") / "state.bin"
    whole = merged(parts, "forward")
    whole.save(path)
    assert path.read_bytes() == whole.to_bytes()
    m = NeuronStats.load(path)
    empty = s.new_stats()
    empty.merge(m)
    assert build_tables(empty).neurons.equals(expected.neurons)
    # The original objects, merged directly (no copies), last since merging mutates them.
    for p in parts[1:]:
        parts[0].merge(p)
    assert build_tables(parts[0]).neurons.equals(expected.neurons)


# --------------------------------------------------------------------------- coverage & detectors


def zipf_stream(rng, *, vocab: int, n_seqs: int, max_positions: int, n_layers: int, n_neurons: int,
                bos: int | None = 2) -> tuple[Stream, dict]:  # fmt: skip
    """Power-law token stream with a planted trigram, and neurons planted as exact token detectors,
    near detectors, trigram detectors, BOS-only neurons, broad neurons and random ones."""
    ids = rng.permutation(np.array([t for t in range(vocab) if t != bos]))
    p = 1.0 / np.arange(1, len(ids) + 1) ** 1.1
    p /= p.sum()
    lengths = rng.integers(max_positions // 3, max_positions + 1, n_seqs)
    toks, pos, bounds = sequences(rng, lengths, vocab, bos, sampler=lambda n: rng.choice(ids, n, p=p), bos_inside=0.01)
    # Plant a trigram (a, b, c) of mid-frequency tokens at random places inside sequences.
    a, b, c = (int(x) for x in ids[rng.choice(np.arange(10, 60), 3, replace=False)])
    n = len(toks)
    for i in rng.choice(np.flatnonzero(pos >= 3), size=min(40, n // 20), replace=False):
        toks[i - 2 : i + 1] = (a, b, c)
    tri_end = np.zeros(n, dtype=bool)
    tri_end[2:] = (toks[:-2] == a) & (toks[1:-1] == b) & (toks[2:] == c) & (pos[2:] >= 2)
    is_bos = toks == bos if bos is not None else np.zeros(n, dtype=bool)
    acts = np.zeros((n_layers, n, n_neurons), dtype=bool)
    kinds = {}
    for l in range(n_layers):
        for j in range(n_neurons):
            kind = rng.choice(["token", "token_noise", "partial", "trigram", "trigram_c", "bos", "broad", "random"])
            kinds[l, j] = kind
            if kind in ("token", "token_noise", "partial"):
                chosen = ids[rng.choice(np.arange(2, 80), rng.integers(1, 4), replace=False)]
                on = np.isin(toks, chosen)
                if kind == "token_noise":
                    on |= rng.random(n) < 0.002
                if kind == "partial":  # fires on a share of each chosen token's occurrences
                    on &= rng.random(n) < rng.choice([0.9, 0.96, 0.99])
            elif kind == "trigram":
                on = tri_end | (rng.random(n) < rng.choice([0.0, 0.001]))
            elif kind == "trigram_c":  # the trigram, plus half of c's other occurrences
                on = tri_end | ((toks == c) & (rng.random(n) < 0.5))
            elif kind == "bos":
                on = is_bos.copy()
            elif kind == "broad":
                on = np.isin(toks, ids[:8])
            else:
                on = rng.random(n) < rng.choice([0.0, 0.001, 0.02, 0.3])
            acts[l, :, j] = on
    return Stream(toks, pos, bounds, acts, vocab, max_positions, bos), kinds


@settings(max_examples=examples(12), **SETTINGS)
@given(
    vocab=st.sampled_from([300, 1000, 3000]),
    n_neurons=st.sampled_from([40, 97]),
    bos=st.sampled_from([2, None]),
    seed=st.integers(0, 2**32 - 1),
)
def test_coverage_and_detectors_match_reference(vocab, n_neurons, bos, seed):
    rng = np.random.default_rng(seed)
    s, _ = zipf_stream(rng, vocab=vocab, n_seqs=12, max_positions=256, n_layers=2, n_neurons=n_neurons, bos=bos)
    stats = s.new_stats()
    feed(stats, s, rng)
    seen = check_against_reference(stats, s.reference(), positional=False)
    # The planted neurons make both kinds of detector (the rule is exercised, not only "no").
    assert seen["token_detectors"] > 0 and seen["trigram_detectors"] > 0


@settings(max_examples=examples(20), **SETTINGS)
@given(
    capacity=st.sampled_from([4, 16, 64]),
    n_shards=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_certified_bounds_with_small_capacity(capacity, n_shards, seed):
    rng = np.random.default_rng(seed)
    s, _ = zipf_stream(rng, vocab=500, n_seqs=10, max_positions=200, n_layers=1, n_neurons=64)
    owner = rng.integers(0, n_shards, len(s.bounds))
    parts = []
    for k in range(n_shards):
        part = s.new_stats(capacity)
        feed(part, s.subset([i for i in range(len(s.bounds)) if owner[i] == k]), rng)
        parts.append(part)
    stats = parts[0]
    for p in parts[1:]:
        stats.merge(p)
    seen = check_against_reference(stats, s.reference(), capacity=capacity, positional=False)
    assert seen["lossy"] > 0


def test_lossy_summary_claims_no_trigram_detector_the_exact_rule_rejects():
    """Pruning can leave a heavy, uncovered trigram U below lighter covered ones in the stored
    counts. Exactly, U is in the top cover_3 and the covered trigrams then hold < 95%: not a detector.
    A lossy summary must not claim one."""
    U = (10, 11, 12)
    noise = [(20 + i, 300, 301) for i in range(128)]
    K = [(400 + i, 500, 501) for i in range(30)]
    seqs, fire = [], []
    seqs += [U] * 3001
    fire += [True] * 1001 + [False] * 2000  # U: fired on 1001 of 3001 occurrences (not covered)
    seqs += noise
    fire += [True] * len(noise)  # 2 prunes at capacity 64 while U is stored: U loses 2
    for k in K:
        seqs += [k] * 1000
        fire += [True] * 1000  # 30 covered trigrams of 1000 activations each
    toks = np.array(seqs, dtype=np.uint32).reshape(-1)
    pos = np.tile(np.arange(3, dtype=np.uint32), len(seqs))
    acts = np.zeros((1, len(toks), 1), dtype=bool)
    acts[0, 2::3, 0] = fire  # fires on the last token of each 3-token sequence only
    bounds = [(3 * i, 3 * i + 3) for i in range(len(seqs))]
    s = Stream(toks, pos, bounds, acts, 1024, 3, None)
    ref = s.reference()
    assert ref.cover(0, 0, 3) == 30 and ref.trigram_detector(0, 0) is None
    for capacity in (64, EXACT):
        stats = s.new_stats(capacity)
        stats.update(0, pack(acts[0]), toks, pos)
        check_against_reference(stats, ref, capacity=capacity, positional=False)


def test_lossy_summary_still_finds_a_clear_trigram_detector():
    """With many light noise trigrams pruned away, a clean trigram detector is still certified."""
    rng = np.random.default_rng(3)
    det = [(7, 8, 9), (7, 8, 10)]
    noise = [(100 + i, 200 + i % 7, 300 + i % 5) for i in range(60)]
    seqs = [det[i % 2] for i in range(2000)] + noise
    order = rng.permutation(len(seqs))
    seqs = [seqs[i] for i in order]
    toks = np.array(seqs, dtype=np.uint32).reshape(-1)
    pos = np.tile(np.arange(3, dtype=np.uint32), len(seqs))
    acts = np.zeros((1, len(toks), 1), dtype=bool)
    acts[0, 2::3, 0] = True
    s = Stream(toks, pos, [(3 * i, 3 * i + 3) for i in range(len(seqs))], acts, 1024, 3, None)
    ref = s.reference()
    assert ref.trigram_detector(0, 0) is not None
    stats = s.new_stats(16)
    stats.update(0, pack(acts[0]), toks, pos)
    check_against_reference(stats, ref, capacity=16, positional=False)
    assert build_tables(stats).neurons["trigram_detector"][0]


# ------------------------------------------------------------------------------------ positional


def acts_from_levels(rng, levels: np.ndarray, n_seqs: int) -> np.ndarray:
    """(rows, neurons) activations of n_seqs full-length sequences (row = s * T + p) such that exactly
    levels[j, p] of the sequences fire at position p for neuron j."""
    n_neurons, T = levels.shape
    acts = np.zeros((n_seqs, T, n_neurons), dtype=bool)
    for j in range(n_neurons):
        rank = rng.random((n_seqs, T)).argsort(axis=0).argsort(axis=0)
        acts[:, :, j] = rank < levels[j][None, :]
    return acts.reshape(n_seqs * T, n_neurons)


def square(T: int, period: int, a: int, b: int) -> np.ndarray:
    return np.where((np.arange(T) // (period // 2)) % 2 == 0, a, b)


def step(T: int, at: int, a: int, b: int) -> np.ndarray:
    return np.where(np.arange(T) < at, a, b)


N_SEQ = 128  # levels are k / 128: dyadic, so every smoothed value is exact or rounded once


def designed_curves(T: int) -> list[tuple[str, np.ndarray, tuple]]:
    """(name, levels out of 128, (kind, strong, n_intervals)) for T positions (w = T // 256 = 4)."""
    dip = step(T, T // 2, 128, 0)
    dip[100:108] = 52  # 13/32: the smoothed curve dips below 0.5 for 2 positions only (< w): merged
    hole = step(T, T // 2, 128, 0)
    hole[100:120] = 0  # a long gap: two intervals
    spike = np.zeros(T, dtype=np.int64)
    spike[0] = 128
    # the thin `other` step with +-16 / 128 of jitter at alternate positions: spread about 0.11
    thick = step(T, T // 2, 26, 102) + np.where(np.arange(T) % 2 == 0, 16, -16)
    return [
        ("two_sided strong", step(T, T // 2, 128, 0), ("two_sided", True, 1)),
        ("two_sided weak", step(T, T // 2, 124, 4), ("two_sided", False, 1)),
        ("late two_sided", step(T, 3 * T // 4, 0, 128), ("two_sided", True, 1)),
        ("one_sided high strong", step(T, T // 4, 128, 30), ("one_sided", True, 1)),
        ("one_sided high weak", step(T, T // 4, 124, 32), ("one_sided", False, 1)),
        ("one_sided low strong", step(T, T // 4, 0, 80), ("one_sided", True, 1)),
        ("one_sided low weak", step(T, T // 4, 4, 80), ("one_sided", False, 1)),
        ("oscillatory strong", square(T, 128, 128, 0), ("oscillatory", True, T // 128)),
        ("oscillatory weak", square(T, 128, 124, 4), ("oscillatory", False, T // 128)),
        ("oscillatory high side only", square(T, 128, 128, 30), ("oscillatory", True, T // 128)),
        ("oscillatory low side only", square(T, 128, 80, 0), ("oscillatory", True, T // 128)),
        ("oscillatory no side", square(T, 128, 96, 32), ("oscillatory", False, T // 128)),
        ("other thin", step(T, T // 2, 26, 102), ("other", True, 1)),
        ("other thick", thick, ("other", False, 1)),
        ("merged gap", dip, ("two_sided", True, 1)),
        ("two intervals", hole, ("two_sided", True, 2)),
        ("constant", np.full(T, 64), (None, False, None)),
        ("always", np.full(T, 128), (None, False, None)),
        ("dead", np.zeros(T, dtype=np.int64), (None, False, None)),
        ("first position only", spike, (None, False, None)),
    ]


def test_designed_positional_curves():
    T = 1024
    rng = np.random.default_rng(11)
    curves = designed_curves(T)
    levels = np.stack([c for _, c, _ in curves])
    acts = acts_from_levels(rng, levels, N_SEQ)[None]
    toks = rng.integers(0, 8, acts.shape[1]).astype(np.uint32)
    pos = np.tile(np.arange(T, dtype=np.uint32), N_SEQ)
    s = Stream(toks, pos, [(i * T, (i + 1) * T) for i in range(N_SEQ)], acts, 8, T, 2)
    ref = s.reference()
    for j, (name, _, (kind, strong, n_iv)) in enumerate(curves):  # the design does what it says
        p = ref.positional(0, j)
        assert not p.borderline(), name
        assert (p.kind, p.strong, len(p.intervals) if p.positional else None) == (kind, strong, n_iv), (name, p)
    stats = s.new_stats()
    feed(stats, s, rng)
    seen = check_against_reference(stats, ref)
    assert seen["positional"] == sum(k is not None for _, _, (k, _, _) in curves)
    for w in (1, 8, 40):  # an explicit smoothing half-width
        check_against_reference(stats, ref, smoothing_half_width=w, ngrams=False)
    kinds = build_tables(stats).neurons["positional_kind"].to_list()
    assert kinds == [k for _, _, (k, _, _) in curves]


def random_levels(rng, n_neurons: int, T: int) -> np.ndarray:
    """Piecewise-constant activation probabilities: steps, square waves and noise."""
    out = np.zeros((n_neurons, T))
    vals = np.array([0.0, 0.005, 0.03, 0.2, 0.5, 0.8, 0.97, 0.995, 1.0])
    for j in range(n_neurons):
        kind = rng.integers(4)
        if kind == 0:
            cuts = np.sort(rng.integers(1, T, rng.integers(1, 4)))
            seg = np.searchsorted(cuts, np.arange(T), side="right")
            out[j] = rng.choice(vals, len(cuts) + 1)[seg]
        elif kind == 1:
            period = int(rng.integers(8, max(9, T // 2)))
            out[j] = np.where((np.arange(T) // max(1, period // 2)) % 2 == 0, *rng.choice(vals, 2))
        elif kind == 2:
            out[j] = rng.choice(vals)
        else:
            out[j] = rng.random(T) * rng.random()
    return out


@settings(max_examples=examples(12), **SETTINGS)
@given(
    T=st.sampled_from([40, 300, 700]),
    n_seqs=st.integers(5, 40),
    gap=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_positional_on_random_ragged_data(T, n_seqs, gap, seed):
    """MI, kinds, strong and intervals of random position-dependent neurons; sequences of random
    lengths (not all full) and, optionally, a range of positions that no row holds."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, n_seqs)
    lengths[0] = T
    toks, pos, bounds = sequences(rng, lengths, 50, 2)
    keep = np.ones(len(pos), dtype=bool)
    if gap:  # rows at positions [T/3, T/2) are left out: fr(p) undefined there
        keep = (pos < T // 3) | (pos >= T // 2)
    prob = random_levels(rng, 64, T)
    acts = (rng.random((len(pos), 64)) < prob[:, pos].T)[None]
    s = Stream(toks, pos, bounds, acts, 50, T, 2)
    if gap:
        starts = np.concatenate([[0], np.cumsum(keep)])
        s = Stream(
            toks[keep], pos[keep], [(int(starts[a]), int(starts[b])) for a, b in bounds], acts[:, keep], 50, T, 2
        )
    stats = s.new_stats()
    feed(stats, s, rng)
    seen = check_against_reference(stats, s.reference())
    assert seen["positional"] > 0


def test_positions_without_tokens_are_skipped_by_the_smoothing():
    """Positions 300..399 hold no token: the moving average uses the observed positions only."""
    rng = np.random.default_rng(5)
    T = 600
    held = np.r_[0:300, 400:600]
    fr = np.where(held < 150, 128, np.where(held < 300, 0, 128))
    levels = np.zeros((2, T), dtype=np.int64)
    levels[0, held] = fr
    levels[1, held] = np.where(held % 100 < 50, 128, 0)
    acts = acts_from_levels(rng, levels, N_SEQ).reshape(N_SEQ, T, 2)[:, held].reshape(-1, 2)[None]
    pos = np.tile(held, N_SEQ).astype(np.uint32)
    toks = rng.integers(3, 50, len(pos)).astype(np.uint32)
    s = Stream(toks, pos, [(i * 500, (i + 1) * 500) for i in range(N_SEQ)], acts, 50, T, 2)
    ref = s.reference()
    p = ref.positional(0, 0)
    assert p.intervals[-1][0] == 398  # of the window 396..400, only position 400 holds tokens
    stats = s.new_stats()
    feed(stats, s, rng)
    check_against_reference(stats, ref)


# ---------------------------------------------------------------------------------------- errors


@settings(max_examples=examples(20), **SETTINGS)
@given(n_layers=st.integers(1, 4), n_neurons=st.sampled_from([1, 65, 300, 600]), split=st.integers(0, 6),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_multi_layer_updates_equal_one_call_per_layer(n_layers, n_neurons, split, seed):
    """update_layers (one parallel pass over all layers, bits in chunks of rows) and add_activity_counts
    (activation-only rows summed per neuron, as the GPU does) leave exactly the state that one update /
    update_activity call per layer leaves, layer 0 (the data's counts) or not."""
    rng = np.random.default_rng(seed)
    s = random_stream(rng, n_layers=n_layers, n_neurons=n_neurons, vocab=50, max_positions=20, n_seqs=6, bos=2)
    cut = s.bounds[min(split, len(s.bounds) - 1)][0]
    order = rng.permutation(n_layers).tolist()  # any order of layers in one call
    one, many = s.new_stats(), s.new_stats()
    for lo, hi, full in ((0, cut, True), (cut, len(s.token_ids), False)):
        bits = {l: pack(s.acts[l, lo:hi]) for l in order}
        for l in order:
            if full:
                one.update(l, bits[l], s.token_ids[lo:hi], s.positions[lo:hi])
            else:
                one.update_activity(l, bits[l])
        if full:  # each layer's bits in chunks of rows, as a block of batches arrives (some may be empty)
            chunks = {l: np.array_split(b, rng.integers(1, 5)) for l, b in bits.items()}
            many.update_layers(chunks, s.token_ids[lo:hi], s.positions[lo:hi])
        else:
            many.add_activity_counts({l: s.acts[l, lo:hi].sum(0) for l in order}, hi - lo)
    assert many.to_bytes() == one.to_bytes()


def test_multi_layer_update_errors_change_nothing():
    s = tiny(n_layers=3)
    bits, t, p = rows()
    with pytest.raises(ValueError, match=r"layer 1 is given twice"):
        s._core.update_layers([0, 1, 1], [[bits], [bits], [bits]], t, p)
    with pytest.raises(ValueError, match=r"2 layers but 1 bitmask lists"):
        s._core.update_layers([0, 1], [[bits]], t, p)
    with pytest.raises(ValueError, match=r"layer 1 has 3 bitmask rows, layer 0 has 4"):
        s.update_layers({0: bits, 1: bits[:3]}, t, p)
    with pytest.raises(ValueError, match=r"layer 1 has 5 bitmask rows, layer 0 has 4"):
        s.update_layers({0: [bits[:1], bits[1:]], 1: [bits, bits[:1]]}, t, p)
    counts = np.ones(65, np.uint64)
    with pytest.raises(ValueError, match=r"an activation count of 5 exceeds the 4 rows counted"):
        s.add_activity_counts({0: counts, 1: counts * 5}, 4)
    with pytest.raises(ValueError, match=r"64 activation counts for layer 1, which has 65 neurons"):
        s.add_activity_counts({0: counts, 1: counts[:64]}, 4)
    with pytest.raises(ValueError, match=r"layer 0 is given twice"):
        s._core.add_activity_counts([0, 0], [counts, counts], 4)
    with pytest.raises(ValueError, match=r"counts of layer 0 must be 1-D and non-negative"):
        s.add_activity_counts({0: -np.ones(65)}, 4)
    with pytest.raises(ValueError, match=r"layer 3 out of range"):
        s.update_layers({0: bits, 3: bits}, t, p)
    with pytest.raises(ValueError, match=r"bitmask rows \(4\), token_ids \(3\)"):
        s.update_layers({0: bits, 1: bits}, t[:3], p[:3])
    with pytest.raises(ValueError, match=r"bitmasks of 1 and 2 words per row"):
        s.update_layers({0: bits, 1: bits[:, :1]}, t, p)
    with pytest.raises(ValueError, match=r"bitmasks of 1 and 2 words per row"):
        s.update_layers({0: bits, 1: [bits[:2], bits[2:, :1]]}, t, p)
    assert s.rows == 0 and s._core.layer_rows().tolist() == [0, 0, 0]
    s.update_layers({2: bits, 0: bits, 1: bits}, t, p)
    assert s.rows == 4 and s._core.layer_rows().tolist() == [4, 4, 4]


def tiny(n_layers=2, n_neurons=65, vocab=10, max_positions=8, **kw) -> NeuronStats:
    return NeuronStats(n_layers, n_neurons, vocab, max_positions, **kw)


def rows(n=4, words=2):
    return np.zeros((n, words), dtype=np.uint64), np.arange(n, dtype=np.uint32) % 5, np.arange(n, dtype=np.uint32)


def test_errors_name_the_problem():
    s = tiny()
    bits, t, p = rows()
    with pytest.raises(ValueError, match=r"1 words per row but 65 neurons need 2"):
        s.update(0, bits[:, :1], t, p)
    with pytest.raises(ValueError, match=r"3 words per row but 65 neurons need 2"):
        s.update(0, np.zeros((4, 3), np.uint64), t, p)
    with pytest.raises(
        ValueError, match=r"bitmask rows \(4\), token_ids \(3\) and positions \(4\) must have the same length"
    ):
        s.update(0, bits, t[:3], p)
    with pytest.raises(ValueError, match=r"token_ids \(4\) and positions \(3\)"):
        s.update(0, bits, t, p[:3])
    with pytest.raises(ValueError, match=r"bitmask rows \(5\)"):
        s.update(0, np.zeros((5, 2), np.uint64), t, p)
    with pytest.raises(ValueError, match=r"token id 10 is outside the vocabulary of size 10"):
        s.update(0, bits, np.array([1, 10, 2, 3], np.uint32), p)
    with pytest.raises(ValueError, match=r"position 8 is beyond max_positions 8"):
        s.update(0, bits, t, np.array([0, 1, 8, 2], np.uint32))
    with pytest.raises(ValueError, match=r"layer 2 out of range"):
        s.update(2, bits, t, p)
    with pytest.raises(ValueError, match=r"no tokens were counted"):
        build_tables(s)
    assert s.rows == 0 and s._core.layer_rows().tolist() == [0, 0]  # failed updates changed nothing
    for other in (tiny(n_neurons=64), tiny(vocab=11), tiny(max_positions=9), tiny(bos_token_id=None),
                  tiny(ngram_capacity=16), tiny(n_layers=3)):  # fmt: skip
        with pytest.raises(ValueError, match=r"cannot merge NeuronStats with different settings"):
            s.merge(other)
    s.update(0, bits, t, p)
    with pytest.raises(ValueError, match=r"layer 1 was updated with 0 rows but layer 0 with 4"):
        build_tables(s)
    s.update(1, bits[:2], t[:2], p[:2])
    with pytest.raises(ValueError, match=r"layer 1 was updated with 2 rows but layer 0 with 4"):
        build_tables(s)
    s.update(1, bits[2:], t[2:], p[2:])
    assert build_tables(s).neurons.height == 130
    with pytest.raises(ValueError, match=r"not a NeuronStats state"):
        NeuronStats.from_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"corrupt NeuronStats state"):
        NeuronStats.from_bytes(s.to_bytes()[:40])
    with pytest.raises(ValueError, match=r"cannot open .*no-such-dir"):
        NeuronStats.load("/no-such-dir/state.bin")
    with pytest.raises(ValueError, match=r"cannot create .*no-such-dir"):
        s.save("/no-such-dir/state.bin")
    with pytest.raises(ValueError, match=r"cannot open .*no-such-dir"):
        s.merge_file("/no-such-dir/state.bin")
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "other.state")
        tiny(vocab=11).save(f)
        before = s.to_bytes()
        with pytest.raises(ValueError, match=r"cannot merge NeuronStats with different settings"):
            s.merge_file(f)
        assert s.to_bytes() == before  # settings are checked before anything is added
        s.save(f)
        with open(f, "r+b") as fh:
            fh.truncate(60)
        with pytest.raises(ValueError, match=r"corrupt NeuronStats state"):
            tiny().merge_file(f)
