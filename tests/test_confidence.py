"""frequency_upper: one-sided 95% Clopper-Pearson upper bounds on firing rates, against scipy and closed forms."""

from __future__ import annotations

import numpy as np
import pytest

import opt_neurons
from opt_neurons.confidence import betainc, frequency_upper
from opt_neurons.report import _headline_rows, headline

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

# token counts of the demo, OPT-125m and OPT-66b protocols, and small ones
CASES = [(n, k) for n in (1, 2, 7, 1000, 200_192, 5_000_000, 20_000_000)
         for k in (0, 1, 2, 3, 17, 999, n // 3, n // 2, n - 1, n) if k <= n]  # fmt: skip


def test_bounds_equal_scipy():
    for n in sorted({n for n, _ in CASES}):
        k = np.array(sorted({k for m, k in CASES if m == n}))
        ours = frequency_upper(k, n)
        ref = np.where(k < n, stats.beta.ppf(0.95, k + 1, np.maximum(n - k, 1)), 1.0)
        np.testing.assert_allclose(ours, ref, rtol=1e-7, err_msg=f"n = {n}")
        # the definition: P(X <= k | n, p) = 0.05 (scipy's beta.ppf itself is off by up to 4e-6 here at n = 5 M)
        # (k = n - 1: p within 1e-7 of 1, where a float64 p's last bits move the probability; closed form instead)
        np.testing.assert_allclose(stats.binom.cdf(k[k < n - 1], n, ours[k < n - 1]), 0.05, rtol=1e-7)
        assert frequency_upper(np.array([n - 1]), n)[0] == pytest.approx(0.95 ** (1 / n), rel=1e-14)


def test_dead_neurons_closed_form():
    for n in (1, 10, 200_192, 20_000_000):
        assert frequency_upper(np.zeros(3), n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-12)
        if n >= 1000:  # about 3/N
            assert frequency_upper(np.zeros(1), n)[0] * n == pytest.approx(3.0, rel=0.01)
    assert (frequency_upper(np.array([5, 5]), 5) == 1).all()


def test_incomplete_beta_equals_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 1e6, 500), rng.uniform(0.5, 1e6, 500)
    for x in (rng.uniform(1e-6, 1 - 1e-6, 500), np.clip(a / (a + b) + rng.normal(0, 1e-3, 500), 1e-9, 1 - 1e-9)):
        np.testing.assert_allclose(betainc(a, b, x), special.betainc(a, b, x), rtol=1e-7, atol=1e-300)


def test_column_and_headline(tiny_opt, tiny_tokens):
    a = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False)
    n = a.neurons
    total = a.metadata["n_tokens"]
    ref = np.where(n["n_active"] < total, stats.beta.ppf(0.95, n["n_active"] + 1, total - n["n_active"]), 1.0)
    np.testing.assert_allclose(n["frequency_upper"].to_numpy(), ref, rtol=1e-9)
    assert (n["frequency_upper"] >= n["frequency"]).all()
    dead_bound = 1 - 0.05 ** (1 / total)
    row = dict(_headline_rows(headline(a), a.metadata))["Dead neurons"]
    assert (
        f"a dead neuron fires on under {dead_bound:.2g} of tokens (one-sided 95% Clopper-Pearson bound over {total:,}"
        in row
    )
