"""Fuzzing NeuronStats (issue 21's fuzz suite, accumulator part).

Random sequences of update / update_layers / update_activity / add_activity_counts / merge / merge_file
calls, each argument well formed or malformed (shapes, dtypes, lengths, out-of-range token ids, positions and
layers, negative or non-integer indices, foreign or damaged states). Every call must either give the correct
result (checked against plain numpy counts of the accepted inputs) or raise an OptNeuronsError subclass with a
one-line message, never another exception, and a refused call must leave the state as it was (to_bytes
before == after). Whether a call is refused is predicted independently (`expect_*`): bad input is never
accepted silently, good input never refused. Saved states with a byte changed, truncated or extended are
always refused.

OPT_NEURONS_FUZZ_SCALE=k runs k times as many examples; each test prints what it tried (pytest -s).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opt_neurons import (
    DataError,
    IncompatibleStateError,
    NeuronStats,
    OptNeuronsError,
    StateFileError,
)

L, N, V, T, BOS = 2, 70, 12, 6, 2  # layers, neurons (2 words, the last partial), vocabulary, positions, BOS
W = 2
SCALE = int(os.environ.get("OPT_NEURONS_FUZZ_SCALE", "1"))
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck)}
TRIED: Counter = Counter()


# ------------------------------------------------------------------------------------------ reference


class Ref:
    """What a NeuronStats of (L, N, V, T, BOS) must hold after the accepted calls, in plain numpy."""

    def __init__(self) -> None:
        self.pos = np.zeros((L, N, T), np.int64)  # activations by position
        self.tok = np.zeros((L, N, V), np.int64)  # activations on non-BOS rows by token
        self.active = np.zeros((L, N), np.int64)
        self.layer_rows = np.zeros(L, np.int64)
        self.rows = 0
        self.position_totals = np.zeros(T, np.int64)

    def update(self, layer: int, acts: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        self.layer_rows[layer] += len(t)
        self.active[layer] += acts.sum(0)
        np.add.at(self.pos[layer], (slice(None), p), acts.T.astype(np.int64))
        keep = t != BOS
        np.add.at(self.tok[layer], (slice(None), t[keep]), acts[keep].T.astype(np.int64))
        if layer == 0:
            self.rows += len(t)
            np.add.at(self.position_totals, p, 1)

    def activity(self, layer: int, counts: np.ndarray, n_rows: int) -> None:
        self.layer_rows[layer] += n_rows
        self.active[layer] += counts
        if layer == 0:
            self.rows += n_rows

    def add(self, other: Ref) -> None:
        for k in ("pos", "tok", "active", "layer_rows", "position_totals"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.rows += other.rows

    def check(self, s: NeuronStats) -> None:
        assert s.rows == self.rows
        np.testing.assert_array_equal(s._core.layer_rows(), self.layer_rows)
        np.testing.assert_array_equal(s.position_totals(), self.position_totals)
        for l in range(L):
            for n in range(N):
                np.testing.assert_array_equal(s.position_counts(l, n), self.pos[l, n])
                toks, counts, slack = s.token_counts(l, n)
                assert slack == 0  # the default capacity (384) exceeds the vocabulary: exact
                got = np.zeros(V, np.int64)
                got[toks] = counts
                np.testing.assert_array_equal(got, self.tok[l, n])


def unpack(bits: np.ndarray) -> np.ndarray:
    """(rows, W) uint64 -> (rows, N) bool."""
    as_bytes = np.ascontiguousarray(bits.astype(np.uint64)).view(np.uint8).reshape(len(bits), 8 * W)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :N].astype(bool)


# ------------------------------------------------------------------------------------------ inputs

rows_st = st.integers(0, 9)


@st.composite
def layer_arg(draw):
    """A layer: mostly valid, else out of range, negative, huge, or not an integer."""
    return draw(st.one_of(st.integers(0, L - 1), st.integers(0, L - 1), st.integers(L, L + 3), st.integers(-3, -1),
                          st.sampled_from([2**64, -(2**70), 1.0, "0", None, np.int64(1), np.uint8(0)])))  # fmt: skip


def is_index(x, limit: int) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= int(x) < limit


@st.composite
def bits_arg(draw, rows: int):
    """Bitmasks for `rows` rows: (rows, W) uint64 or int64, or malformed."""
    raw = np.array([draw(st.integers(0, 2**64 - 1)) for _ in range(rows * W)], dtype=np.uint64).reshape(rows, W)
    kind = draw(st.sampled_from(["ok", "ok", "ok", "int64", "list", "words1", "words3", "1d", "3d", "float", "int32",
                                 "rows+1", "ragged", "noncontig"]))  # fmt: skip
    if kind == "ok":
        return raw
    if kind == "int64":
        return raw.view(np.int64)
    if kind == "list":
        return raw.tolist() if rows else raw
    if kind == "words1":
        return raw[:, :1]
    if kind == "words3":
        return np.concatenate([raw, raw[:, :1]], axis=1)
    if kind == "1d":
        return raw.reshape(-1)
    if kind == "3d":
        return raw[None]
    if kind == "float":
        return raw.astype(np.float64)
    if kind == "int32":
        return raw.astype(np.int32)
    if kind == "rows+1":
        return np.concatenate([raw, raw[:1] if rows else np.zeros((1, W), np.uint64)])
    if kind == "ragged":
        return [[1, 2], [3]]
    return np.asfortranarray(np.concatenate([raw, raw], axis=1))[:, ::2]  # "noncontig": a strided view


def good_bits(b) -> np.ndarray | None:
    """The (rows, W) uint64 words `NeuronStats` must accept `b` as, or None when it must refuse it."""
    if isinstance(b, list):
        try:
            b = np.asarray(b)
        except ValueError:  # ragged
            return None
    if not isinstance(b, np.ndarray) or b.ndim != 2 or b.shape[1] != W or b.dtype not in (np.uint64, np.int64):
        return None
    return np.ascontiguousarray(b).view(np.uint64)


def good_layer_bits(b) -> np.ndarray | None:
    """update_layers: a layer's bits are one array, or a list of arrays (chunks of its rows)."""
    if not isinstance(b, (list, tuple)):
        return good_bits(b)
    chunks = [good_bits(c) if isinstance(c, np.ndarray) else None for c in b]
    if any(c is None for c in chunks):
        return None
    return np.concatenate(chunks) if chunks else np.zeros((0, W), np.uint64)


@st.composite
def ids_arg(draw, rows: int, limit: int, first_zero: bool = False):
    """Token ids (limit V) or positions (limit T) for `rows` rows, or malformed."""
    if first_zero:  # positions: whole or cut sequences, in order
        start = draw(st.integers(0, limit - 1))
        ok = (start + np.arange(rows)) % limit
    else:
        ok = np.array([draw(st.integers(0, limit - 1)) for _ in range(rows)], dtype=np.int64)
    kind = draw(st.sampled_from(["ok", "ok", "ok", "ok", "uint8", "list", "too_big", "negative", "float", "short",
                                 "2d", "huge"]))  # fmt: skip
    if kind == "ok":
        return ok.astype(np.uint32)
    if kind == "uint8":
        return ok.astype(np.uint8)
    if kind == "list":
        return ok.tolist()
    if kind == "too_big":
        return np.concatenate([ok[:-1], [limit + draw(st.integers(0, 5))]]) if rows else ok
    if kind == "negative":
        return np.concatenate([ok[:-1], [-1]]) if rows else ok
    if kind == "float":
        return ok.astype(np.float64) + (0.5 if rows else 0)
    if kind == "short":
        return ok[:-1] if rows else ok[:0]
    if kind == "2d":
        return ok[None]
    return np.concatenate([ok[:-1], [2**40]]) if rows else ok


def good_ids(a, rows: int, limit: int) -> np.ndarray | None:
    a = np.asarray(a)
    if a.ndim != 1 or len(a) != rows:
        return None
    if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= limit):
        return None
    return a.astype(np.int64)


# ------------------------------------------------------------------------------------------ the calls


def attempt(s: NeuronStats, what: str, call, accept: bool) -> bool:
    """Run `call`: refused with a named one-line error and no change, or accepted; `accept` must predict
    which. Returns whether it was accepted."""
    before = s.to_bytes()
    try:
        call()
    except OptNeuronsError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"{what}: {type(e).__name__} with message {msg!r}"
        assert s.to_bytes() == before, f"{what}: refused ({msg}) but the state changed"
        assert not accept, f"{what}: good input refused: {type(e).__name__}: {msg}"
        TRIED[f"{what}: refused"] += 1
        return False
    except BaseException as e:  # anything else is the bug this suite looks for
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AssertionError(f"{what}: raised {type(e).__name__}: {e}, not an OptNeuronsError") from e
    assert accept, f"{what}: bad input accepted"
    TRIED[f"{what}: accepted"] += 1
    return True


def random_state(seed: int, rows: int, ref: Ref, *, config_ok: bool = True) -> NeuronStats:
    """Another state (for merges) fed some valid rows, and what it holds."""
    other = NeuronStats(L, N, V, T, bos_token_id=BOS if config_ok else None)
    rng = np.random.default_rng(seed)
    t = rng.integers(0, V, rows).astype(np.uint32)
    p = (np.arange(rows) % T).astype(np.uint32)
    bits = rng.integers(0, 2**64, size=(rows, W), dtype=np.uint64, endpoint=False)
    other.update_layers({0: bits, 1: bits}, t, p)
    for l in range(L):
        ref.update(l, unpack(bits), t.astype(np.int64), p.astype(np.int64))
    return other


def op_update(data, s: NeuronStats, ref: Ref) -> None:
    rows = data.draw(rows_st)
    layer = data.draw(layer_arg())
    b = data.draw(bits_arg(rows))
    t = data.draw(ids_arg(rows, V))
    p = data.draw(ids_arg(rows, T, first_zero=True))
    gb, gt, gp = good_bits(b), good_ids(t, rows, V), good_ids(p, rows, T)
    ok = is_index(layer, L) and gb is not None and gt is not None and gp is not None and len(gb) == rows
    if attempt(s, "update", lambda: s.update(layer, b, t, p), ok):
        ref.update(int(layer), unpack(gb), gt, gp)


def op_update_layers(data, s: NeuronStats, ref: Ref) -> None:
    rows = data.draw(rows_st)
    # A dict: keys equal as numbers (1, 1.0, np.int64(1)) are one layer.
    per_layer = {l: data.draw(bits_arg(rows)) for l in data.draw(st.lists(layer_arg(), max_size=3))}
    t = data.draw(ids_arg(rows, V))
    p = data.draw(ids_arg(rows, T, first_zero=True))
    # Some layers' rows in two chunks.
    split = {l: [b[: len(b) // 2], b[len(b) // 2 :]] if isinstance(b, np.ndarray) and b.ndim == 2 and data.draw(st.booleans())
             else b for l, b in per_layer.items()}  # fmt: skip
    if not per_layer:  # no bits: the rows are as many as the token ids
        rows = len(t) if np.ndim(t) == 1 else -1
    gt, gp = good_ids(t, rows, V), good_ids(p, rows, T)
    goods = {l: good_layer_bits(b) for l, b in split.items()}
    ok = (gt is not None and gp is not None and all(is_index(l, L) for l in per_layer)
          and all(g is not None and len(g) == rows for g in goods.values()))  # fmt: skip
    if attempt(s, "update_layers", lambda: s.update_layers(split, t, p), ok):
        for l, g in goods.items():
            ref.update(int(l), unpack(g), gt, gp)


def op_activity(data, s: NeuronStats, ref: Ref) -> None:
    rows = data.draw(rows_st)
    layer = data.draw(layer_arg())
    if data.draw(st.booleans()):
        b = data.draw(bits_arg(rows))
        g = good_bits(b)
        if attempt(s, "update_activity", lambda: s.update_activity(layer, b), is_index(layer, L) and g is not None):
            ref.activity(int(layer), unpack(g).sum(0), len(g))
        return
    counts = np.array([data.draw(st.integers(0, rows)) for _ in range(N)], dtype=np.int64)
    kind = data.draw(st.sampled_from(["ok", "ok", "over", "negative", "short", "float", "n_rows<0"]))
    n_rows = rows
    if kind == "over":
        counts[data.draw(st.integers(0, N - 1))] = rows + 1
    elif kind == "negative":
        counts[0] = -1
    elif kind == "short":
        counts = counts[:-1]
    elif kind == "float":
        counts = counts + 0.5
    elif kind == "n_rows<0":
        n_rows = -1
    ok = is_index(layer, L) and kind == "ok"
    if attempt(s, "add_activity_counts", lambda: s.add_activity_counts({layer: counts}, n_rows), ok):
        ref.activity(int(layer), counts, n_rows)


def op_merge(data, s: NeuronStats, ref: Ref) -> None:
    kind = data.draw(st.sampled_from(["ok", "ok", "other_settings", "itself", "not_stats"]))
    theirs = Ref()
    seed, rows = data.draw(st.integers(0, 2**32 - 1)), data.draw(rows_st)
    other = {"ok": lambda: random_state(seed, rows, theirs),
             "other_settings": lambda: random_state(seed, rows, theirs, config_ok=False),
             "itself": lambda: s, "not_stats": lambda: theirs}[kind]()  # fmt: skip
    if attempt(s, f"merge ({kind})", lambda: s.merge(other), kind == "ok"):
        ref.add(theirs)


def damage(data, good: bytes) -> tuple[str, bytes]:
    kind = data.draw(st.sampled_from(["intact", "flip", "flip", "flips", "truncate", "extend", "empty", "old_format"]))
    b = bytearray(good)
    if kind == "flip":
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= data.draw(st.integers(1, 255))
    elif kind == "flips":
        for i in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=2, max_size=6, unique=True)):
            b[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    elif kind == "extend":
        b += bytes(data.draw(st.binary(min_size=1, max_size=16)))
    elif kind == "empty":
        b = bytearray()
    elif kind == "old_format":
        b = bytearray(b"OPTNST03") + b[8:-12]
    return kind, bytes(b)


def op_merge_file(data, s: NeuronStats, ref: Ref, tmp) -> None:
    theirs = Ref()
    seed, rows = data.draw(st.integers(0, 2**32 - 1)), data.draw(rows_st)
    other = random_state(seed, rows, theirs, config_ok=data.draw(st.integers(0, 4)) > 0)
    kind, raw = damage(data, other.to_bytes())
    f = tmp / "other.state"
    f.write_bytes(raw)
    settings_ok = other.config == s.config
    what = f"merge_file ({kind}{'' if settings_ok else ', other settings'})"
    if attempt(s, what, lambda: s.merge_file(f), kind == "intact" and settings_ok):
        ref.add(theirs)


# ------------------------------------------------------------------------------------------ tests


def report(name: str) -> None:
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


def test_random_calls_are_correct_or_refused_cleanly(tmp_path_factory):
    TRIED.clear()
    tmp = tmp_path_factory.mktemp("fuzz")
    ops = [op_update, op_update, op_update_layers, op_update_layers, op_activity, op_merge, op_merge_file]

    @settings(max_examples=300 * SCALE, **SETTINGS)
    @given(st.data())
    def run(data):
        TRIED["examples"] += 1
        s, ref = NeuronStats(L, N, V, T, bos_token_id=BOS), Ref()
        for _ in range(data.draw(st.integers(1, 8))):
            op = data.draw(st.sampled_from(ops))
            if op is op_merge_file:
                op(data, s, ref, tmp)
            else:
                op(data, s, ref)
        ref.check(s)
        # A state read back holds the same.
        ref.check(NeuronStats.from_bytes(s.to_bytes()))

    run()
    report("random calls")
    assert TRIED["examples"] >= 300 * SCALE


@pytest.fixture(scope="module")
def saved() -> bytes:
    return random_state(0, 9, Ref()).to_bytes()


def test_damaged_states_are_always_refused(saved, tmp_path):
    TRIED.clear()
    f = tmp_path / "state.bin"
    target = NeuronStats(L, N, V, T, bos_token_id=BOS)
    before = target.to_bytes()

    @settings(max_examples=500 * SCALE, **SETTINGS)
    @given(st.data())
    def run(data):
        kind, raw = damage(data, saved)
        if kind == "intact":
            return
        TRIED[kind] += 1
        with pytest.raises(StateFileError):
            NeuronStats.from_bytes(raw)
        f.write_bytes(raw)
        with pytest.raises(StateFileError) as e:
            NeuronStats.load(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(StateFileError):
            target.merge_file(f)
        assert target.to_bytes() == before

    run()
    report("damaged states")


def test_every_single_byte_change_of_a_state_is_refused(saved):
    """Exhaustive over the byte positions of a small state, a random other value at each (CRC-32
    detects every change within 32 consecutive bits)."""
    rng = np.random.default_rng(0)
    b = bytearray(saved)
    for i in range(len(b)):
        old = b[i]
        b[i] = (old + int(rng.integers(1, 256))) % 256
        with pytest.raises(StateFileError):
            NeuronStats.from_bytes(bytes(b))
        b[i] = old
    print(f"\nevery byte: {len(b)} positions of a {len(b)}-byte state refused")
    assert NeuronStats.from_bytes(bytes(b)).to_bytes() is not None


def test_merge_itself_and_foreign_objects():
    s = NeuronStats(L, N, V, T)
    with pytest.raises(IncompatibleStateError, match="into itself"):
        s.merge(s)
    with pytest.raises(IncompatibleStateError):
        s.merge(s._core)
    with pytest.raises(DataError):
        s.update(0, np.zeros((1, W), np.uint64), [V], [0])
