"""Planted OPT fixture: tiny OPT models whose fc1 neurons behave exactly as constructed.

``build_planted_opt(root)`` writes a small HF ``OPTForCausalLM`` (ReLU, pre-LN, learned positions,
float32) plus a GPT-2 BPE tokenizer, both into an HF hub cache layout
(``root/hub/models--planted--opt-tiny/snapshots/<commit>/`` with ``refs/main``) and into a plain
directory ``root/local``, and returns a :class:`Planted` that records which layer-0 / layer-1 fc1
neurons are dead, token detectors, a trigram detector, positional, ... together with a data array
``tokens`` on which all of that holds exactly.

How the planting is exact
-------------------------
The residual stream is split into disjoint groups of dimensions and every feature is stored as a
``(+f, -f)`` pair of dimensions, so every vector has mean exactly 0:

* token part  : 16 "special" pairs (one per planted token, one-hot, value ``S``), 3 class-bit pairs
  (values ``+-V``), 12 "generic" pairs (a random unit vector times ``S`` for ordinary tokens);
* position part: sinusoids ``cos/sin(pi p / 2^m)`` (constant norm), a constant pair ``K`` and 4
  indicator pairs (``+-MI`` = inside / outside a planted set of positions);
* attention part (written by layer 0's attention only): "previous token is b", "token two back is a",
  and 4 generic features of the previous token.

Token and position codes each have a fixed norm, so layer 0's ``self_attn_layer_norm`` is a fixed
scaling. Planted fc1 rows have bias 0 and implement their threshold through the constant pair ``K``;
their sign is therefore independent of the LayerNorm scale, which varies slightly with the attention
output. All decisions have a margin of at least half a feature unit.

Trigram neuron: attention based (not a token-driven fallback)
------------------------------------------------------------
Layer-0 head 0 attends to position ``p-1`` and head 1 to ``p-2`` (at p=0 / p=1 they fall back to the
nearest available earlier position, which is BOS or position 0): the query/key use the position
sinusoids so that the logit is ``A * sum_m cos(pi (j - p + t) / 2^m)``, peaked at ``j = p - t`` with a
gap of ``2A = 16`` to every other ``j`` (bounded logits, so it also holds in fp16/bf16). The values carry
"token is b" (head 0) and "token is a" (head 1). The trigram neuron fires iff
``[x_p == c] + [x_{p-1} == b] + [x_{p-2} == a] > 2.5``. The data contains ``c`` in other contexts
(``x b c``, ``a x c``, ``c`` alone) about as often as inside the trigram, so the neuron is a trigram
detector but *not* a token detector of ``c`` under METHOD.md (it fires on ~50% of ``c``'s occurrences).

Positional neurons and METHOD.md's kind rule
--------------------------------------------
Data rows are built so that at every position p >= 1 exactly fixed numbers of rows hold a token of
each of four "groups" (class bits A/O/I). Pure positional neurons read only an indicator pair, so their
fr(p) is 0/1; under METHOD.md's rule any such neuron reaches both lo <= 0.05 and hi >= 0.95 and is
therefore ``two_sided`` (start, end and middle alike) unless it has >= 3 active intervals
(``oscillatory``). Two extra, mixed neurons give the other kinds: ``one_sided`` (always active on
[0, T/4), elsewhere only on group-0 tokens, fr = n0/n_seq ~ 0.16 there) and ``other`` (fr ~ 0.84 inside
[3T/8, 5T/8), ~0.25 outside, 0 at p = 0). The recorded kind / intervals / MI are computed here with
METHOD.md's rule (checked under two edge conventions of the moving average: truncated window and zero
padding; both agree for the defaults).

Everything is deterministic from the arguments (numpy ``default_rng(seed)``); the default build takes a
few seconds (most of it importing transformers).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEMO_TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "gpt2-bpe"

BOS_ID = 50256  # "<|endoftext|>" in the GPT-2 vocabulary: bos == eos == pad
LN_EPS = 1e-5

# planted tokens (GPT-2 ids, each a single BPE token with a leading space)
SPECIAL_WORDS = {
    "cat": 3797,
    "dog": 3290,
    "river": 7850,
    "piano": 19132,
    "red": 2266,
    "green": 4077,
    "blue": 4171,
    "mouse": 10211,
    "bird": 6512,
    "New": 968,
    "York": 1971,
    "City": 2254,
    "violin": 38283,
}

# residual-stream layout (all features are (+f, -f) pairs; pair k occupies dims 2k, 2k+1)
N_SPECIAL_PAIRS = 16
BIT_NAMES = ("A", "O", "I")
N_GENERIC = 12
N_PREV_GENERIC = 4
S = 4.0  # token feature scale
V = 2.0  # class-bit scale
POS_A = 1.0  # sinusoid amplitude
K_CONST = 2.0  # constant pair
MI_IND = 2.0  # position-indicator amplitude
ATT_GAIN = 8.0  # attention logit amplitude per frequency (gap between best and next key = 2 * ATT_GAIN)
B_IND = 2.0  # amplitude of the "previous token is b" / "two back is a" indicators
FC2_BETA = 0.25  # fc2 suppression / promotion strength of planted detectors
N_HEADS = 4

# group proportions per position (g0: A+O+I+, g1: A-O+I+, g2: A-O-I+, g3: A-O-I-)
GROUP_BITS = {0: (1, 1, 1), 1: (-1, 1, 1), 2: (-1, -1, 1), 3: (-1, -1, -1)}


@dataclass
class Planted:
    """What was planted. Neuron keys are ``(layer, neuron)``; intervals are half-open ``(start, end)``."""

    root: Path
    model_dir: Path  # plain local copy (model + tokenizer)
    hub_id: str
    hub_cache: Path  # pass as HF_HUB_CACHE (with HF_HUB_OFFLINE=1) or as cache_dir=
    revision: str  # the 40-hex commit in refs/main
    seq_len: int
    n_layers: int
    ffn_dim: int
    d_model: int
    n_heads: int
    vocab_size: int
    bos_id: int  # == eos_id == pad_id == 50256
    tokenizer_prepends_bos: bool
    tokens: np.ndarray  # (n_seq, seq_len) int64, row[:, 0] == bos_id
    dead: set = field(default_factory=set)  # {(l, n)}
    token_detectors: dict = field(default_factory=dict)  # (l, n) -> sorted list of token ids
    trigram_detectors: dict = field(default_factory=dict)  # (l, n) -> (a, b, c)
    positional: dict = field(default_factory=dict)  # (l, n) -> dict, see build_planted_opt
    bos_only: set = field(default_factory=set)  # fires exactly at BOS tokens (= position 0 here)
    ordinary: set = field(default_factory=set)  # all other (alive, mixed) neurons
    suppresses: dict = field(default_factory=dict)  # detector (l, n) -> fc2 column suppresses triggers?
    special_tokens: dict = field(default_factory=dict)  # word -> token id (words carry a leading space)
    # what this file's reading of METHOD.md gives for every planted neuron on `tokens`:
    # (l, n) -> dict(n_active, token_detector, trigram_detector, mi, positional). Note that a token
    # detector with few activations (<= 50 distinct trigrams) also passes the trigram criterion, and
    # a BOS-only neuron has no counted (non-BOS) activations at all.
    method_expect: dict = field(default_factory=dict)
    group_tokens: dict = field(default_factory=dict)  # group g -> sorted token ids used in the data

    def expected(self, tokens: np.ndarray | None = None) -> dict:
        """Exact expected activation masks ``(n_seq, T)`` for every planted (non-ordinary) neuron,
        computed from the construction rules (no model involved). Valid for rows that start with BOS
        and are fed with positions 0..T-1."""
        tok = self.tokens if tokens is None else np.asarray(tokens)
        n, t = tok.shape
        pos = np.broadcast_to(np.arange(t), (n, t))
        out: dict = {}
        for key in self.dead:
            out[key] = np.zeros((n, t), bool)
        for key, ids in self.token_detectors.items():
            out[key] = np.isin(tok, ids)
        for key, (a, b, c) in self.trigram_detectors.items():
            m = np.zeros((n, t), bool)
            m[:, 2:] = (tok[:, :-2] == a) & (tok[:, 1:-1] == b) & (tok[:, 2:] == c)
            out[key] = m
        for key in self.bos_only:
            out[key] = tok == self.bos_id
        for key, info in self.positional.items():
            rule = info["rule"]
            inside = np.zeros((n, t), bool)
            for s, e in rule["intervals"]:
                inside |= (pos >= s) & (pos < e)
            tin = rule["tokens_inside"]
            tout = rule["tokens_outside"]
            fire_in = np.ones((n, t), bool) if tin is None else np.isin(tok, tin)
            fire_out = np.zeros((n, t), bool) if not tout else np.isin(tok, tout)
            out[key] = (inside & fire_in) | (~inside & fire_out)
        return out


# ----------------------------------------------------------------------------------------------
# METHOD.md positional rule (used to *record* what the rule says about the planted neurons)


def _smooth(fr: np.ndarray, w: int, mode: str) -> np.ndarray:
    t = len(fr)
    c = np.concatenate([[0.0], np.cumsum(fr)])
    p = np.arange(t)
    lo, hi = np.maximum(0, p - w), np.minimum(t, p + w + 1)
    s = c[hi] - c[lo]
    return s / (hi - lo) if mode == "truncate" else s / (2 * w + 1)


def _xlogy_ratio(x: np.ndarray, y: float) -> np.ndarray:
    out = np.zeros_like(x, dtype=float)
    nz = x > 0
    out[nz] = x[nz] * np.log(x[nz] / y)
    return out


def method_positional(active: np.ndarray, mode: str = "truncate") -> dict:
    """METHOD.md positional statistics for one neuron from its (n_seq, T) activation mask."""
    n, t = active.shape
    frp = active.mean(0)
    fr = active.mean()
    mi = 0.0
    if 0 < fr < 1:  # w_p = 1/T: every position holds n_seq tokens
        mi = float(np.mean(_xlogy_ratio(frp, fr) + _xlogy_ratio(1 - frp, 1 - fr)))
    w = max(1, t // 256)
    sm = _smooth(frp, w, mode)
    runs = []
    p = 0
    while p < t:
        if sm[p] >= 0.5:
            q = p
            while q < t and sm[q] >= 0.5:
                q += 1
            runs.append([p, q])
            p = q
        else:
            p += 1
    merged: list = []
    for r in runs:
        if merged and r[0] - merged[-1][1] < w:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    lo, hi = float(sm.min()), float(sm.max())
    if len(merged) >= 3:
        kind = "oscillatory"
        strong = lo <= 0.01 and hi >= 0.99
    elif lo <= 0.05 and hi >= 0.95:
        kind = "two_sided"
        strong = lo <= 0.01 and hi >= 0.99
    elif lo <= 0.05:
        kind = "one_sided"
        strong = lo <= 0.01
    elif hi >= 0.95:
        kind = "one_sided"
        strong = hi >= 0.99
    else:  # reaching neither side: strong when thin (METHOD.md: median |fr(p) - smoothed(p)| <= 0.02)
        kind = "other"
        strong = float(np.median(np.abs(frp - sm))) <= 0.02
    return dict(
        mi=mi,
        positional=mi > 0.05,
        kind=kind,
        strong=strong,
        intervals=[(int(a), int(b)) for a, b in merged],
        lo=lo,
        hi=hi,
    )


_GRAM_CACHE: dict = {}


def _gram_index(tokens: np.ndarray, k: int):
    key = (tokens.shape, k, hashlib.sha1(tokens.tobytes()).hexdigest())
    if key not in _GRAM_CACHE:
        t = tokens.shape[1]
        cols = np.arange(k - 1, t)
        cols = cols[cols >= 1]
        grams = np.stack([tokens[:, cols - (k - 1 - i)] for i in range(k)], -1).reshape(-1, k)
        _, inv = np.unique(grams, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        _GRAM_CACHE[key] = (cols, inv, np.bincount(inv))
    return _GRAM_CACHE[key]


def method_token_detector(active: np.ndarray, tokens: np.ndarray, k: int = 1) -> bool:
    """METHOD.md detector criterion (k=1 token, k=3 trigram; BOS positions left out)."""
    cols, inv, occ = _gram_index(tokens, k)
    act = active[:, cols].reshape(-1)
    if act.sum() == 0:
        return False
    cnt = np.bincount(inv, weights=act, minlength=len(occ))
    order = np.argsort(-cnt, kind="stable")
    total = cnt.sum()
    cum = np.cumsum(cnt[order])
    cover = int(np.searchsorted(cum, 0.95 * total - 1e-9) + 1)
    if cover > (5 if k == 1 else 50):
        return False
    top = order[:cover]
    covered = top[cnt[top] >= 0.95 * occ[top]]
    return cnt[covered].sum() >= 0.95 * total


# ----------------------------------------------------------------------------------------------
# building blocks


def _pair(vec: np.ndarray, k: int, val) -> None:
    vec[..., 2 * k] = val
    vec[..., 2 * k + 1] = -np.asarray(val)


def _reader(d: int, k: int, scale: float = 1.0) -> np.ndarray:
    """Row vector reading the value of pair k (times scale)."""
    w = np.zeros(d)
    w[2 * k] = 0.5 * scale
    w[2 * k + 1] = -0.5 * scale
    return w


class _Layout:
    def __init__(self, d: int, seq_len: int):
        self.d = d
        self.n_freq = max(1, int(math.ceil(math.log2(seq_len))) - 1 + 1)  # m = 0..M, 2^(M+1) >= T
        k = 0
        self.special = list(range(k, k + N_SPECIAL_PAIRS))
        k += N_SPECIAL_PAIRS
        self.bits = {b: k + i for i, b in enumerate(BIT_NAMES)}
        k += len(BIT_NAMES)
        self.generic = list(range(k, k + N_GENERIC))
        k += N_GENERIC
        self.token_pairs_end = k
        # sinusoids: m=0 has only cos (sin(pi p) == 0)
        self.sin_cos = [(0, "cos", k)]
        k += 1
        for m in range(1, self.n_freq):
            self.sin_cos.append((m, "cos", k))
            k += 1
            self.sin_cos.append((m, "sin", k))
            k += 1
        self.const = k
        k += 1
        self.ind = {name: k + i for i, name in enumerate(("start", "end", "mid", "osc"))}
        k += 4
        self.pos_pairs = (self.token_pairs_end, k)
        self.prev_b = k
        k += 1
        self.prev2_a = k
        k += 1
        self.prev_generic = list(range(k, k + N_PREV_GENERIC))
        k += N_PREV_GENERIC
        self.n_pairs = k
        if 2 * k > d:
            raise ValueError(f"d_model={d} too small for seq_len={seq_len}: need >= {2 * k}")

    def pair_dims(self, pairs) -> np.ndarray:
        return np.array([[2 * p, 2 * p + 1] for p in pairs]).reshape(-1)


def _intervals_for(seq_len: int) -> dict:
    t = seq_len
    start = [(0, t // 4)]
    end = [(3 * t // 4, t)]
    mid = [(3 * t // 8, 5 * t // 8)]
    period, length, off = max(4, 3 * t // 16), max(2, t // 16), t // 32
    osc = []
    s = off
    while s + length <= t:
        osc.append((s, s + length))
        s += period
    if len(osc) < 3:
        raise ValueError("seq_len too small for an oscillatory neuron")
    return dict(start=start, end=end, mid=mid, osc=osc)


def _in_intervals(p: np.ndarray, ivs) -> np.ndarray:
    m = np.zeros(p.shape, bool)
    for s, e in ivs:
        m |= (p >= s) & (p < e)
    return m


def _neuron_plan(n_layers: int, f: int) -> dict:
    if f < 48:
        raise ValueError("ffn_dim must be >= 48")
    plan: dict = {}
    l0 = {
        "dead": [0, 13, f - 1] + ([63, 64] if f > 66 else []),
        "det": {
            5: ["cat"],
            17: ["dog"],
            21: ["river"],
            f - 2: ["piano"],
            25: ["red", "green", "blue"],
            29: ["cat", "mouse", "bird"],
        },
        "promote": {17},  # fc2 column promotes (does not suppress) its trigger
        "trigram": {7: ("New", "York", "City")},
        "bos_only": [3],
        "pos": {10: "start", 11: "end", 31: "mid", f - 3: "osc", 33: "one_sided", 35: "other"},
    }
    plan[0] = l0
    if n_layers > 1:
        plan[1] = {
            "dead": [1, 2, f - 1] + ([64] if f > 66 else []),
            "det": {9: ["violin"], 12: ["piano"]},
            "promote": set(),
            "trigram": {},
            "bos_only": [],
            "pos": {},
        }
    for layer in range(2, n_layers):
        plan[layer] = {"dead": [0, f - 1], "det": {}, "promote": set(), "trigram": {}, "bos_only": [], "pos": {}}
    return plan


# ----------------------------------------------------------------------------------------------
# data


def _make_tokens(rng, n_seq: int, seq_len: int, special: dict) -> tuple[np.ndarray, dict, np.ndarray]:
    t = seq_len
    n_counts = _group_counts(n_seq)
    forbidden = set(special.values()) | {BOS_ID}
    cand = np.array([i for i in range(300, 20000) if i not in forbidden])
    pool_ids = rng.choice(cand, size=320, replace=False)
    sizes = {0: 50, 1: 30, 2: 190, 3: 50}
    pools, k = {}, 0
    for g in range(4):
        pools[g] = np.sort(pool_ids[k : k + sizes[g]])
        k += sizes[g]
    weights = {}
    for g, ids in pools.items():
        wz = 1.0 / (np.arange(len(ids)) + 1.0) ** 0.8
        weights[g] = wz / wz.sum()
        pools[g] = rng.permutation(ids)  # rank order of the zipf weights

    groups = np.full((n_seq, t), 3, np.int64)
    for p in range(1, t):
        perm = rng.permutation(n_seq)
        o = 0
        for g in range(4):
            groups[perm[o : o + n_counts[g]], p] = g
            o += n_counts[g]
    tokens = np.empty((n_seq, t), np.int64)
    tokens[:, 0] = BOS_ID
    for g in range(4):
        m = groups == g
        m[:, 0] = False
        tokens[m] = rng.choice(pools[g], size=int(m.sum()), p=weights[g])

    # planted tokens go only into free group-2 slots (their class bits are those of group 2)
    free = groups == 2
    free[:, 0] = False
    scale = (n_seq * t) / (32 * 256)

    def place(pattern, count):
        """pattern: list of (offset, token id or None=keep ordinary token)."""
        span = max(o for o, _ in pattern) + 1
        done = 0
        tries = 0
        while done < count and tries < 200000:
            tries += 1
            r = int(rng.integers(n_seq))
            p = int(rng.integers(1, t - span + 1))
            cells = [(p + o, tid) for o, tid in pattern if tid is not None]
            if all(free[r, q] for q, _ in cells):
                for q, tid in cells:
                    tokens[r, q] = tid
                    free[r, q] = False
                # keep the neighbours of the pattern ordinary
                for q in (p - 1, p + span):
                    if 1 <= q < t:
                        free[r, q] = False
                for o, tid in pattern:
                    if tid is None:
                        free[r, p + o] = False
                done += 1

    def cnt(x):
        return max(1, int(round(x * scale)))

    a, b, c = special["New"], special["York"], special["City"]
    place([(0, a), (1, b), (2, c)], cnt(40))  # the trigram
    place([(0, a), (1, b), (2, None)], cnt(10))  # a b x
    place([(0, None), (1, b), (2, c)], cnt(10))  # x b c
    place([(0, a), (1, None), (2, c)], cnt(10))  # a x c
    place([(0, None), (1, c)], cnt(20))  # c alone
    place([(0, None), (1, b)], cnt(8))
    place([(0, None), (1, a)], cnt(8))
    for word, n in (
        ("cat", 60),
        ("dog", 25),
        ("river", 8),
        ("piano", 30),
        ("red", 20),
        ("green", 15),
        ("blue", 10),
        ("mouse", 12),
        ("bird", 9),
        ("violin", 20),
    ):
        place([(0, special[word])], cnt(n))
    return tokens, {g: sorted(int(i) for i in pools[g]) for g in pools}, groups


def _group_counts(n_seq: int) -> dict:
    n0 = max(1, round(n_seq * 5 / 32))
    n1 = max(1, round(n_seq * 3 / 32))
    n3 = max(1, round(n_seq * 5 / 32))
    n2 = n_seq - n0 - n1 - n3
    if n2 < 2:
        raise ValueError("n_seq too small")
    return {0: n0, 1: n1, 2: n2, 3: n3}


# ----------------------------------------------------------------------------------------------
# model


def _layer_norm(x: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS)


def _choose_ordinary(
    rng, x: np.ndarray, tokens: np.ndarray, dims: np.ndarray, dim_scale: np.ndarray, d: int, n_seq: int, t: int
):
    """Random fc1 row over `dims` plus a bias giving a moderate, context-dependent firing rate."""
    reasons: dict = {}
    for _ in range(200):
        w = np.zeros(d)
        w[dims] = rng.normal(size=len(dims)) * dim_scale
        pre = x @ w
        n = len(pre)
        target = int(rng.uniform(0.04, 0.35) * n)
        v = np.sort(pre)
        lo_k, hi_k = max(1, int(target * 0.8)), min(n - 1, int(target * 1.2) + 1)
        ks = np.arange(lo_k, hi_k)
        gaps = v[n - ks] - v[n - ks - 1]
        j = int(np.argmax(gaps))
        k = int(ks[j])
        if gaps[j] < 1e-3:
            reasons["margin"] = reasons.get("margin", 0) + 1
            continue
        bias = -0.5 * (v[n - k] + v[n - k - 1])
        act = (pre + bias > 0).reshape(n_seq, t)
        # not exactly token-only: several tokens fire on some occurrences but not others
        cols, inv, occ = _gram_index(tokens, 1)  # cols == 1..T-1 (BOS positions left out)
        fires = np.bincount(inv, weights=act[:, cols].reshape(-1), minlength=len(occ))
        mixed = int(((fires > 0) & (fires < occ)).sum())
        if mixed < 5:
            reasons["token_only"] = reasons.get("token_only", 0) + 1
            continue
        if method_token_detector(act, tokens, 1) or method_token_detector(act, tokens, 3):
            reasons["detector"] = reasons.get("detector", 0) + 1
            continue
        # plug-in MI has a bias of about (T-1) / (2 * tokens); only demand a low MI where it can be low
        if (t - 1) / (2.0 * n) < 0.02 and method_positional(act)["mi"] > 0.035:
            reasons["positional"] = reasons.get("positional", 0) + 1
            continue
        return w, bias
    raise RuntimeError(f"could not draw an ordinary neuron (rejections: {reasons})")


def _commit_hash(args: dict) -> str:
    return hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()


def build_planted_opt(
    root: Path,
    *,
    seq_len: int = 256,
    n_layers: int = 2,
    ffn_dim: int = 200,
    vocab_size: int = 50272,
    seed: int = 0,
    name: str = "planted/opt-tiny",
    n_seq: int = 32,
    d_model: int = 128,
    validate: bool = True,
) -> Planted:
    """Build, save and describe a planted OPT model (see the module docstring).

    ``Planted.positional[(l, n)]`` = dict(kind, strong, intervals, mi, pure, rule) where ``kind`` /
    ``strong`` / ``intervals`` / ``mi`` are what METHOD.md's rule gives on ``Planted.tokens`` and
    ``rule`` = dict(intervals, tokens_inside, tokens_outside) is the exact firing rule: active at p in
    ``rule.intervals`` when the token is in ``tokens_inside`` (None = any token), outside them when the
    token is in ``tokens_outside``. For pure positional neurons ``intervals`` is exactly the set of
    positions where the neuron fires on every row.
    """
    import torch
    from transformers import GPT2TokenizerFast, OPTConfig, OPTForCausalLM

    root = Path(root)
    rng = np.random.default_rng(seed)
    t, f, d, L = seq_len, ffn_dim, d_model, n_layers
    if vocab_size <= BOS_ID:
        raise ValueError("vocab_size must cover the GPT-2 vocabulary (> 50256)")
    lay = _Layout(d, t)
    plan = _neuron_plan(L, f)
    ivs = _intervals_for(t)
    special = {w: i for w, i in SPECIAL_WORDS.items()}
    sp_pair = {tid: lay.special[i] for i, tid in enumerate(list(special.values()) + [BOS_ID])}

    tokens, group_tokens, _groups = _make_tokens(rng, n_seq, t, special)
    token_group = {tid: g for g, ids in group_tokens.items() for tid in ids}

    # ---- token embeddings
    emb = np.zeros((vocab_size, d))
    gen = rng.normal(size=(vocab_size, N_GENERIC))
    gen /= np.linalg.norm(gen, axis=1, keepdims=True)
    for i, k in enumerate(lay.generic):
        _pair(emb, k, S * gen[:, i])
    bits = np.full((vocab_size, 3), -1.0)  # tokens outside the data: group 3
    for tid, g in token_group.items():
        bits[tid] = GROUP_BITS[g]
    for tid, k in sp_pair.items():
        for kk in lay.generic:
            _pair(emb[tid], kk, 0.0)
        _pair(emb[tid], k, S)
        bits[tid] = GROUP_BITS[2] if tid != BOS_ID else GROUP_BITS[3]
    for i, name in enumerate(BIT_NAMES):
        _pair(emb, lay.bits[name], V * bits[:, i])

    # ---- position embeddings (row p + 2 is used at position p)
    p = np.arange(t)
    pos = np.zeros((t, d))
    for m, kind, k in lay.sin_cos:
        th = math.pi / 2.0**m
        _pair(pos, k, POS_A * (np.cos(th * p) if kind == "cos" else np.sin(th * p)))
    _pair(pos, lay.const, K_CONST)
    for nm, k in lay.ind.items():
        _pair(pos, k, np.where(_in_intervals(p, ivs[nm]), MI_IND, -MI_IND))
    pos_table = np.concatenate([pos[:1], pos[:1], pos], 0)

    x0_norm2 = float((emb[special["cat"]] ** 2).sum() + (pos[0] ** 2).sum())
    c0 = 1.0 / math.sqrt(x0_norm2 / d + LN_EPS)  # layer-0 self_attn_layer_norm scale (constant)

    # ---- layer-0 attention
    hd = d // N_HEADS
    sd = {}
    zeros_dd = lambda: np.zeros((d, d))  # noqa: E731
    for layer in range(L):
        sd[f"l{layer}.q.w"], sd[f"l{layer}.k.w"], sd[f"l{layer}.v.w"], sd[f"l{layer}.o.w"] = (
            zeros_dd(),
            zeros_dd(),
            zeros_dd(),
            zeros_dd(),
        )
        for nm in "qkvo":
            sd[f"l{layer}.{nm}.b"] = np.zeros(d)
    qw, kw, vw, ow = sd["l0.q.w"], sd["l0.k.w"], sd["l0.v.w"], sd["l0.o.w"]
    qscale = math.sqrt(hd)  # undo OPT's q * head_dim**-0.5
    for h, target in ((0, 1), (1, 2)):
        base = h * hd
        row = 0
        # pair sinusoid features by frequency
        freqs: dict = {}
        for m, kind, k in lay.sin_cos:
            freqs.setdefault(m, {})[kind] = k
        for m, ks in sorted(freqs.items()):
            th = math.pi / 2.0**m
            ct, st = math.cos(th * target), math.sin(th * target)
            rc = _reader(d, ks["cos"], 1.0 / (c0 * POS_A))
            if "sin" in ks:
                rs = _reader(d, ks["sin"], 1.0 / (c0 * POS_A))
                # key: cos(th j), sin(th j); query: A cos(th(p-t)), A sin(th(p-t))
                kw[base + row] = rc
                kw[base + row + 1] = rs
                qw[base + row] = ATT_GAIN * qscale * (ct * rc + st * rs)
                qw[base + row + 1] = ATT_GAIN * qscale * (ct * rs - st * rc)
                row += 2
            else:
                kw[base + row] = rc
                qw[base + row] = ATT_GAIN * qscale * ct * rc
                row += 1
    # values: head 0 carries [token is b] + 4 generic features; head 1 carries [token is a]
    a_id, b_id = special["New"], special["York"]
    vw[0 * hd + 0] = _reader(d, sp_pair[b_id], 1.0 / (c0 * S))
    for i in range(N_PREV_GENERIC):
        vw[0 * hd + 1 + i] = _reader(d, lay.generic[i], 1.0 / c0)
    vw[1 * hd + 0] = _reader(d, sp_pair[a_id], 1.0 / (c0 * S))
    for tgt_pair, src_col, amp in ((lay.prev_b, 0 * hd + 0, B_IND), (lay.prev2_a, 1 * hd + 0, B_IND)):
        ow[2 * tgt_pair, src_col] = amp
        ow[2 * tgt_pair + 1, src_col] = -amp
    for i in range(N_PREV_GENERIC):
        col = 0 * hd + 1 + i
        ow[2 * lay.prev_generic[i], col] = 0.5
        ow[2 * lay.prev_generic[i] + 1, col] = -0.5

    # ---- fc1 / fc2
    fc1_w = [np.zeros((f, d)) for _ in range(L)]
    fc1_b = [np.zeros(f) for _ in range(L)]
    fc2_w = [np.zeros((d, f)) for _ in range(L)]
    fc2_b = [np.zeros(d) for _ in range(L)]
    noise_dims = lay.pair_dims(list(lay.bits.values()) + lay.generic)
    const_r = _reader(d, lay.const, 1.0 / K_CONST)  # reads 1
    planted = Planted(
        root=root,
        model_dir=root / "local",
        hub_id=name,
        hub_cache=root / "hub",
        revision="",
        seq_len=t,
        n_layers=L,
        ffn_dim=f,
        d_model=d,
        n_heads=N_HEADS,
        vocab_size=vocab_size,
        bos_id=BOS_ID,
        tokenizer_prepends_bos=False,
        tokens=tokens,
        special_tokens={" " + w: i for w, i in special.items()},
        group_tokens=group_tokens,
    )
    bit_r = {nm: _reader(d, lay.bits[nm], 1.0 / V) for nm in BIT_NAMES}  # reads +-1
    ind_r = {nm: _reader(d, k, 1.0 / MI_IND) for nm, k in lay.ind.items()}  # reads +-1

    for layer in range(L):
        pl = plan[layer]
        W, B, W2 = fc1_w[layer], fc1_b[layer], fc2_w[layer]
        # fc2: random small columns over the class-bit and generic token dims for every neuron
        # (non-trivial suppression scores); they never touch the special pairs, so planted layer-1
        # detectors stay exact
        W2[noise_dims, :] = rng.normal(scale=0.02, size=(len(noise_dims), f))
        for n in pl["dead"]:
            W[n] = 0.0
            B[n] = -1.0
            planted.dead.add((layer, n))
        for n, words in pl["det"].items():
            ids = [special[w] for w in words]
            row = sum(_reader(d, sp_pair[i], 1.0 / S) for i in ids) - 0.5 * const_r
            W[n] = 2.0 * row
            planted.token_detectors[(layer, n)] = sorted(ids)
            sign = 1.0 if n in pl["promote"] else -1.0
            W2[:, n] = 0.0
            for j, i in enumerate(ids):  # distinct strengths => distinct ranks
                k = sp_pair[i]
                W2[2 * k, n] = sign * FC2_BETA * (1.0 - 0.1 * j)
                W2[2 * k + 1, n] = -sign * FC2_BETA * (1.0 - 0.1 * j)
            planted.suppresses[(layer, n)] = sign < 0
        for n, (wa, wb, wc) in pl["trigram"].items():
            a, b, c = special[wa], special[wb], special[wc]
            row = (
                _reader(d, sp_pair[c], 1.0 / S)
                + _reader(d, lay.prev_b, 1.0 / B_IND)
                + _reader(d, lay.prev2_a, 1.0 / B_IND)
                - 2.5 * const_r
            )
            W[n] = 2.0 * row
            planted.trigram_detectors[(layer, n)] = (a, b, c)
            W2[:, n] = 0.0
            k = sp_pair[c]
            W2[2 * k, n], W2[2 * k + 1, n] = -FC2_BETA, FC2_BETA
            planted.suppresses[(layer, n)] = True
        for n in pl["bos_only"]:
            W[n] = 2.0 * (_reader(d, sp_pair[BOS_ID], 1.0 / S) - 0.5 * const_r)
            planted.bos_only.add((layer, n))
        for n, kind in pl["pos"].items():
            if kind in ivs:
                W[n] = 2.0 * ind_r[kind]
                rule = dict(intervals=list(ivs[kind]), tokens_inside=None, tokens_outside=[])
            elif kind == "one_sided":  # start interval, or a group-0 token anywhere
                W[n] = 2.0 * (ind_r["start"] + bit_r["A"] + const_r)
                rule = dict(intervals=list(ivs["start"]), tokens_inside=None, tokens_outside=list(group_tokens[0]))
            elif kind == "other":  # inside mid: I-bit tokens; outside: O-bit tokens
                W[n] = 2.0 * (ind_r["mid"] + bit_r["I"] + 2.0 * bit_r["O"] + const_r)
                in_set = sorted(group_tokens[0] + group_tokens[1] + group_tokens[2] + list(special.values()))
                rule = dict(
                    intervals=list(ivs["mid"]),
                    tokens_inside=in_set,
                    tokens_outside=sorted(group_tokens[0] + group_tokens[1]),
                )
            else:
                raise AssertionError(kind)
            planted.positional[(layer, n)] = dict(pure=kind in ivs, design=kind, rule=rule)

    # ---- assemble the HF model
    cfg = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=d,
        num_hidden_layers=L,
        ffn_dim=f,
        num_attention_heads=N_HEADS,
        max_position_embeddings=t,
        word_embed_proj_dim=d,
        do_layer_norm_before=True,
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        layerdrop=0.0,
        enable_bias=True,
        pad_token_id=BOS_ID,
        bos_token_id=BOS_ID,
        eos_token_id=BOS_ID,
        tie_word_embeddings=True,
    )
    cfg.architectures = ["OPTForCausalLM"]
    torch.manual_seed(seed)
    model = OPTForCausalLM(cfg).eval()
    dec = model.model.decoder

    def setp(param, arr):
        with torch.no_grad():
            param.copy_(torch.as_tensor(np.asarray(arr), dtype=torch.float32))

    setp(dec.embed_tokens.weight, emb)
    setp(dec.embed_positions.weight, pos_table)
    setp(dec.final_layer_norm.weight, np.ones(d))
    setp(dec.final_layer_norm.bias, np.zeros(d))
    for layer, lyr in enumerate(dec.layers):
        at = lyr.self_attn
        for nm, mod in (("q", at.q_proj), ("k", at.k_proj), ("v", at.v_proj), ("o", at.out_proj)):
            setp(mod.weight, sd[f"l{layer}.{nm}.w"])
            setp(mod.bias, sd[f"l{layer}.{nm}.b"])
        for ln in (lyr.self_attn_layer_norm, lyr.final_layer_norm):
            setp(ln.weight, np.ones(d))
            setp(ln.bias, np.zeros(d))
        setp(lyr.fc1.weight, fc1_w[layer])
        setp(lyr.fc1.bias, fc1_b[layer])
        setp(lyr.fc2.weight, fc2_w[layer])
        setp(lyr.fc2.bias, fc2_b[layer])

    # ---- ordinary neurons, layer by layer (their fc1 input depends on earlier layers)
    planted_idx = {
        layer: set(plan[layer]["dead"])
        | set(plan[layer]["det"])
        | set(plan[layer]["trigram"])
        | set(plan[layer]["bos_only"])
        | set(plan[layer]["pos"])
        for layer in range(L)
    }
    gen_dims = lay.pair_dims(lay.generic)
    prev_dims = lay.pair_dims(lay.prev_generic)
    dims = np.concatenate([gen_dims, prev_dims])
    dim_scale = np.concatenate([np.full(len(gen_dims), 1.0), np.full(len(prev_dims), 2.0)])
    ids_t = torch.as_tensor(tokens)
    for layer in range(L):
        x = _fc1_inputs(model, ids_t, layer)
        lyr = dec.layers[layer]
        with torch.no_grad():
            for n in range(f):
                if n in planted_idx[layer]:
                    continue
                w, bias = _choose_ordinary(rng, x, tokens, dims, dim_scale, d, n_seq, t)
                lyr.fc1.weight[n] = torch.as_tensor(w, dtype=torch.float32)
                lyr.fc1.bias[n] = float(bias)
                planted.ordinary.add((layer, n))

    # ---- save: local dir, hub snapshot
    tok = GPT2TokenizerFast.from_pretrained(str(DEMO_TOKENIZER_DIR), add_bos_token=True)
    tok.bos_token = tok.eos_token = tok.pad_token = tok.unk_token = "<|endoftext|>"
    assert tok.bos_token_id == BOS_ID
    planted.tokenizer_prepends_bos = tok("hello world")["input_ids"][0] == BOS_ID

    local = root / "local"
    if local.exists():
        shutil.rmtree(local)
    model.save_pretrained(str(local))
    tok.save_pretrained(str(local))
    commit = _commit_hash(
        dict(
            seq_len=t,
            n_layers=L,
            ffn_dim=f,
            vocab_size=vocab_size,
            seed=seed,
            name=name,
            n_seq=n_seq,
            d_model=d,
            v="planted-1",
        )
    )
    planted.revision = commit
    repo_dir = root / "hub" / ("models--" + name.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    if repo_dir.exists():
        shutil.rmtree(repo_dir)
    shutil.copytree(local, snap)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)

    _MODEL_CACHE.pop(str(local.resolve()), None)

    # ---- what METHOD.md's rule says about the positional neurons, then validation
    exp = planted.expected()
    for key, info in planted.positional.items():
        r1 = method_positional(exp[key], "truncate")
        r2 = method_positional(exp[key], "zero_pad")
        if (r1["kind"], r1["intervals"], r1["strong"]) != (r2["kind"], r2["intervals"], r2["strong"]):
            raise AssertionError(f"positional {key}: METHOD rule depends on edge handling {r1} {r2}")
        info.update(kind=r1["kind"], strong=r1["strong"], intervals=r1["intervals"], mi=r1["mi"])
        if info["pure"]:
            assert info["intervals"] == info["rule"]["intervals"], (key, info)
    for key, m in exp.items():
        r = method_positional(m)
        planted.method_expect[key] = dict(
            n_active=int(m.sum()),
            token_detector=method_token_detector(m, tokens, 1),
            trigram_detector=method_token_detector(m, tokens, 3),
            mi=r["mi"],
            positional=r["positional"],
        )
    if validate:
        act = float_reference(planted, tokens)
        for (layer, n), m in exp.items():
            if not np.array_equal(act[layer, :, :, n], m):
                bad = int((act[layer, :, :, n] != m).sum())
                raise AssertionError(f"planted neuron {(layer, n)} deviates on {bad} tokens")
    return planted


def _fc1_inputs(model, ids, layer: int) -> np.ndarray:
    import torch

    captured = []
    lyr = model.model.decoder.layers[layer]
    h = lyr.fc1.register_forward_pre_hook(
        lambda mod, args: captured.append(args[0].detach().reshape(-1, args[0].shape[-1]))
    )
    try:
        with torch.no_grad():
            for i in range(0, ids.shape[0], 16):
                model.model.decoder(input_ids=ids[i : i + 16])
    finally:
        h.remove()
    return torch.cat(captured).double().numpy()


_MODEL_CACHE: dict = {}


def _load_model(model_dir: Path):
    from transformers import OPTForCausalLM

    key = str(Path(model_dir).resolve())
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = OPTForCausalLM.from_pretrained(key, dtype="float32").eval()
    return _MODEL_CACHE[key]


def fc1_active(model, tokens: np.ndarray, batch: int = 16) -> np.ndarray:
    """(layers, n_seq, T, ffn_dim) bool: fc1 output > 0, via plain forward hooks (float)."""
    import torch

    tokens = np.asarray(tokens)
    n, t = tokens.shape
    dec = model.model.decoder
    L = len(dec.layers)
    f = dec.layers[0].fc1.out_features
    out = np.zeros((L, n, t, f), bool)
    cur = {}
    hooks = []
    for layer, lyr in enumerate(dec.layers):

        def hook(mod, args, output, layer=layer):
            b = cur["n"]
            out[layer, cur["i"] : cur["i"] + b] = (output.detach() > 0).reshape(b, t, f).cpu().numpy()

        hooks.append(lyr.fc1.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, n, batch):
                ids = torch.as_tensor(tokens[i : i + batch], dtype=torch.long)
                cur["i"], cur["n"] = i, ids.shape[0]
                dec(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in hooks:
            h.remove()
    return out


def float_reference(planted: Planted, tokens: np.ndarray | None = None) -> np.ndarray:
    """Boolean fc1 activations (fc1 output > 0) of the saved local model, shape
    (layers, n_seq, seq_len, ffn_dim), computed in float32 with forward hooks."""
    return fc1_active(_load_model(planted.model_dir), planted.tokens if tokens is None else tokens)
