"""analyze() on an OPT whose neurons are planted by construction (tests/planted.py), loaded by its
hub-style id from an HF cache layout with HF_HUB_OFFLINE=1: every statistic found exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import polars as pl
import pytest

import opt_neurons

from planted import build_planted_opt, float_reference
from reference import layer_coverage

RUN = """
import sys, numpy as np, opt_neurons
opt_neurons.analyze(sys.argv[1], np.load(sys.argv[2]), batch_size=8, progress=False, out=sys.argv[3])
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted_opt(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def run(planted, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    np.save(d / "tokens.npy", planted.tokens)
    # A user's fresh process: the hub id resolves through the cache only (set before transformers loads).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(planted.hub_cache)}
    subprocess.run([sys.executable, "-c", RUN, planted.hub_id, str(d / "tokens.npy"), str(d / "out")], env=env,
                   check=True)  # fmt: skip
    return opt_neurons.load(d / "out")


def row(run, key):
    layer, neuron = key
    return run.neurons.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron)).row(0, named=True)


def test_resolved_by_hub_id(run, planted):
    assert run.metadata["model_id"] == planted.hub_id
    assert run.metadata["revision"] == planted.revision


def test_dead_set_exact(run, planted):
    found = {(r["layer"], r["neuron"]) for r in run.neurons.filter(pl.col("dead")).iter_rows(named=True)}
    assert found == planted.dead
    assert run.layers["n_dead"].to_list() == [
        sum(1 for l, _ in planted.dead if l == i) for i in range(planted.n_layers)
    ]


def test_counts_equal_float_hooks(run, planted):
    ref = float_reference(planted)  # (layers, n_seq, T, F) booleans from plain fc1 hooks
    counts = ref.sum(axis=(1, 2))
    n = run.neurons.sort("layer", "neuron")
    np.testing.assert_array_equal(n["n_active"].to_numpy().reshape(counts.shape), counts)
    np.testing.assert_array_equal(n["frequency"].to_numpy().reshape(counts.shape), counts / planted.tokens.size)


def test_token_detectors_exact(run, planted):
    det = {(r["layer"], r["neuron"]): r for r in run.neurons.filter(pl.col("token_detector")).iter_rows(named=True)}
    assert set(det) == set(planted.token_detectors)
    for key, ids in planted.token_detectors.items():
        assert sorted(det[key]["detected_tokens"]) == sorted(ids), key
        assert det[key]["cover_1"] == len(ids)
        tok = __import__("conftest").gpt2_tokenizer()
        assert det[key]["detected_strings"] == [tok.decode([t]) for t in det[key]["detected_tokens"]]
    for key in planted.ordinary | planted.bos_only | set(planted.positional) | set(planted.trigram_detectors):
        assert not row(run, key)["token_detector"], key


def test_coverage_counts_exact(run, planted):
    exp = planted.expected()
    toks = planted.tokens
    for key, mask in exp.items():
        r = row(run, key)
        for k in (1, 2, 3):
            grams = [
                tuple(toks[s, p - k + 1 : p + 1])
                for s, p in zip(*np.nonzero(mask))
                if p >= k - 1 and toks[s, p] != planted.bos_id
            ]
            counts = sorted(__import__("collections").Counter(grams).values(), reverse=True)
            need, cum, cover = 0.95 * len(grams), 0, 0
            for c in counts:
                if cum >= need:
                    break
                cum, cover = cum + c, cover + 1
            if len(set(grams)) < run.metadata["ngram_capacity"]:  # within capacity: the summary is exact
                assert r[f"cover_{k}"] == cover == r[f"cover_{k}_max"], (key, k)
            else:  # certified range
                assert r[f"cover_{k}"] <= cover <= r[f"cover_{k}_max"], (key, k)


def test_trigram_detectors(run, planted):
    for key, trigram in planted.trigram_detectors.items():
        r = row(run, key)
        assert r["trigram_detector"] and not r["token_detector"]
        assert r["detected_trigrams"] == [list(trigram)]
    for key, expect in planted.method_expect.items():
        r = row(run, key)
        assert r["trigram_detector"] == expect["trigram_detector"], key
        assert r["token_detector"] == expect["token_detector"], key


def test_suppression_flags(run, planted):
    for key, suppresses in planted.suppresses.items():
        if key not in planted.token_detectors:  # suppression is scored for token detectors
            assert row(run, key)["suppresses_triggers"] is None
            continue
        r = row(run, key)
        assert r["suppresses_triggers"] == suppresses, key
        assert (r["suppression_score"] < 0) == suppresses
        assert len(r["detected_token_ranks"]) == len(r["detected_tokens"])
        if suppresses:  # planted to push its own tokens down hardest
            assert max(r["detected_token_ranks"]) < len(r["detected_tokens"]) + 5
        assert 0.0 <= r["suppression_baseline"] <= 1.0
    layers = run.layers.filter(pl.col("n_token_detectors") > 0)
    for l, frac in zip(layers["layer"], layers["suppressing_fraction"]):
        mine = [
            v for (layer, n), v in planted.suppresses.items() if layer == l and (layer, n) in planted.token_detectors
        ]
        assert frac == pytest.approx(sum(mine) / len(mine))


def test_positional_neurons_kinds_and_intervals(run, planted):
    for key, info in planted.positional.items():
        r = row(run, key)
        assert r["positional"], key
        assert r["positional_kind"] == info["kind"], key
        assert r["positional_strong"] == info["strong"], key
        assert [(i["start"], i["end"]) for i in r["active_intervals"]] == [tuple(i) for i in info["intervals"]], key
        assert r["mi_position"] == pytest.approx(info["mi"], rel=1e-9)
        if info["pure"]:
            assert [(i["start"], i["end"]) for i in r["active_intervals"]] == [
                tuple(i) for i in info["rule"]["intervals"]
            ]
    for key in planted.token_detectors:
        assert not row(run, key)["positional"], key
    curves = run.positions
    assert {(a, b) for a, b in curves.select("layer", "neuron").iter_rows()} == {
        (r["layer"], r["neuron"]) for r in run.neurons.filter(pl.col("positional")).iter_rows(named=True)
    }
    exp = planted.expected()
    for key in planted.positional:
        fr = curves.filter((pl.col("layer") == key[0]) & (pl.col("neuron") == key[1]))["fr"][0].to_numpy()
        np.testing.assert_allclose(fr, exp[key].mean(axis=0))


def test_layer_coverage_and_tokens_table(run, planted):
    per_layer = [set() for _ in range(planted.n_layers)]
    for (l, _), ids in planted.token_detectors.items():
        per_layer[l] |= set(ids)
    L = run.layers
    cols = ["n_tokens_covered", "n_new_tokens_vs_previous", "n_new_tokens_overall"]
    assert tuple(L[c].to_list() for c in cols) == layer_coverage(per_layer)
    tokens = run.tokens
    assert set(tokens["token"].to_list()) == set().union(*per_layer)
    occ = {t: int((planted.tokens == t).sum()) for t in tokens["token"].to_list()}
    assert dict(zip(tokens["token"].to_list(), tokens["n_occurrences"].to_list())) == occ


def test_report_from_analyze_reuses_the_loaded_model(planted, tmp_path, monkeypatch):
    """analyze(report=True) gives the neuron cards their top tokens from the model it holds: the report
    loads nothing again (a saved run's report would load the run's model: `cards._auto_model`)."""
    import opt_neurons.report.cards as cards

    def no_second_load(*a, **kw):
        raise AssertionError("the report loaded the model again")

    monkeypatch.setattr(cards, "_auto_model", no_second_load)
    a = opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=8, progress=False, out=tmp_path / "r",
                            report=True)  # fmt: skip
    assert a.neurons["token_detector"].any()
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Most suppressed tokens" in html and "Most promoted tokens" in html
    with pytest.raises(AssertionError, match="loaded the model again"):  # the guard does catch a load
        opt_neurons.write_report(opt_neurons.load(tmp_path / "r"), tmp_path / "again")


def _covered_grams(mask: np.ndarray, toks: np.ndarray, bos: int, k: int, max_top: int) -> set | None:
    """METHOD.md's detector rule for k-grams, from an activation mask (BOS positions left out): the
    covered k-grams of a detector, None for a non-detector."""
    counts: Counter = Counter()
    occ: Counter = Counter()
    n, t = toks.shape
    for s in range(n):
        for p in range(k - 1, t):
            if toks[s, p] == bos:
                continue
            g = tuple(int(x) for x in toks[s, p - k + 1 : p + 1])
            occ[g] += 1
            counts[g] += int(mask[s, p])
    ranked = sorted(((c, g) for g, c in counts.items() if c), key=lambda x: (-x[0], x[1]))
    total = sum(c for c, _ in ranked)
    if total == 0:
        return None
    cum, top = 0, []
    for c, g in ranked:
        if cum >= 0.95 * total:
            break
        cum += c
        top.append((c, g))
    if len(top) > max_top:
        return None
    covered = {g for c, g in top if c >= 0.95 * occ[g]}
    return covered if sum(counts[g] for g in covered) >= 0.95 * total else None


def test_layer_trigram_coverage(run, planted):
    """n_trigrams_covered and the new ones against the previous / every earlier layer (paper Figures 14-15),
    from the trigram detectors' covered trigrams found independently from the planted masks."""
    exp = planted.expected()
    per_layer: list[set] = [set() for _ in range(planted.n_layers)]
    detectors = set()
    for key, mask in exp.items():
        covered = _covered_grams(mask, planted.tokens, planted.bos_id, 3, 50)
        if covered is not None:
            detectors.add(key)
            per_layer[key[0]] |= covered
            assert {tuple(g) for g in row(run, key)["detected_trigrams"]} == covered, key
    found = {(r["layer"], r["neuron"]) for r in run.neurons.filter(pl.col("trigram_detector")).iter_rows(named=True)}
    assert found == detectors and set(planted.trigram_detectors) <= detectors
    L = run.layers
    assert L["n_trigram_detectors"].to_list() == [
        sum(1 for l, _ in detectors if l == i) for i in range(planted.n_layers)
    ]
    covered, vs_previous, new = layer_coverage(per_layer)
    assert L["n_trigrams_covered"].to_list() == covered
    assert L["n_new_trigrams_vs_previous"].to_list() == vs_previous
    assert L["n_new_trigrams_overall"].to_list() == new
    assert sum(new) > 0


def test_bos_counts_everywhere_but_in_ngrams(run, planted):
    """METHOD.md: BOS is left out of the n-gram statistics only. A neuron firing only at BOS (position 0)
    is alive, counts in the frequency and in the position statistics, and holds no n-grams."""
    n_seq, t = planted.tokens.shape
    assert planted.bos_only and (planted.tokens == planted.bos_id).sum() == n_seq  # BOS only at position 0
    for key in planted.bos_only:
        r = row(run, key)
        assert not r["dead"] and r["n_active"] == n_seq and r["frequency"] == n_seq / (n_seq * t)
        assert (r["cover_1"], r["cover_2"], r["cover_3"]) == (0, 0, 0)
        assert not r["token_detector"] and not r["trigram_detector"]
        # I(act; pos) of a neuron on exactly at p = 0 (so position 0 was counted): the entropy of its
        # firing, h(1 / T), in nats; 0 had position 0 been left out.
        f = 1 / t
        assert r["mi_position"] == pytest.approx(-(f * np.log(f) + (1 - f) * np.log(1 - f)), rel=1e-9)
        assert r["mi_position_bits"] == pytest.approx(r["mi_position"] / np.log(2), rel=1e-12)
        assert r["positional"] == (r["mi_position"] > 0.05)  # h(1 / 256) is about 0.026 nats: not positional
    assert planted.bos_id not in run.tokens["token"].to_list()
    n = run.neurons
    np.testing.assert_allclose(n["mi_position_bits"].to_numpy(), n["mi_position"].to_numpy() / np.log(2), rtol=1e-12)


def test_thin_and_thick_other_positional(run, planted):
    """The `other` kind is strong when thin: positional_spread (median |fr(p) - smoothed fr(p)|) <= 0.02. The
    planted `other` neuron's fr(p) is a clean step (group counts are fixed per position): spread 0, strong."""
    exp = planted.expected()
    others = [k for k, info in planted.positional.items() if info["kind"] == "other"]
    assert others
    for key in others:
        r = row(run, key)
        frp = exp[key].mean(axis=0)
        w = max(1, len(frp) // 256)
        sm = np.array([frp[max(0, p - w) : p + w + 1].mean() for p in range(len(frp))])
        assert r["positional_spread"] == pytest.approx(float(np.median(np.abs(frp - sm))), abs=1e-12)
        assert r["positional_spread"] <= 0.02 and r["positional_strong"], key
    spread = run.neurons.filter(pl.col("positional"))["positional_spread"]
    assert spread.null_count() == 0
    assert (
        run.neurons.filter(~pl.col("positional"))["positional_spread"].null_count()
        == run.neurons.filter(~pl.col("positional")).height
    )


def test_min_count_and_low_support(run, planted, tmp_path):
    """min_count (off by default) drops detectors whose covered tokens are rarer; low_support marks them."""
    occ = {key: min(int((planted.tokens == t).sum()) for t in ids) for key, ids in planted.token_detectors.items()}
    rare = {key for key, c in occ.items() if c < 9}
    assert rare and rare != set(occ), occ  # the planted river detector: 8 occurrences
    n = run.neurons.filter(pl.col("token_detector"))
    assert not n["low_support"].any() and min(occ.values()) >= 5  # the default: fewer than 5 occurrences
    assert run.neurons.filter(~pl.col("token_detector"))["low_support"].null_count() == run.neurons.height - n.height
    marked = opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=8, progress=False, low_support_count=9)
    got = {(l, i) for l, i in marked.neurons.filter(pl.col("low_support")).select("layer", "neuron").iter_rows()}
    assert got == rare
    strict = opt_neurons.analyze(planted.model_dir, planted.tokens, batch_size=8, progress=False, min_count=9)
    dets = {(l, i) for l, i in strict.neurons.filter(pl.col("token_detector")).select("layer", "neuron").iter_rows()}
    assert dets == set(planted.token_detectors) - rare
    assert strict.metadata["thresholds"]["min_count"] == 9
