"""One-sided Clopper-Pearson upper bounds on firing rates (METHOD.md "frequency_upper"), vectorised in numpy
without scipy: the beta quantile found by safeguarded Newton steps on the regularized incomplete beta function,
evaluated by its continued fraction (which converges in about 100 terms at the quantile even for 10^7 firings)."""

from __future__ import annotations

import numpy as np
import torch

CONFIDENCE = 0.95
_TINY = 1e-300
_EPS = 1e-15


def _lbeta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lg = [torch.special.gammaln(torch.from_numpy(v)).numpy() for v in (a, b, a + b)]
    return lg[0] + lg[1] - lg[2]


def _betacf(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b) (modified Lentz), iterated until every entry has converged."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    live = np.arange(len(x))
    for m in range(1, 100_000):  # a cap only: about 100 terms at the quantiles asked for
        a_, b_, x_, qab_, qap_, qam_ = a[live], b[live], x[live], qab[live], qap[live], qam[live]
        m2 = 2 * m
        de = np.ones(len(live))
        even = m * (b_ - m) * x_ / ((qam_ + m2) * (a_ + m2))
        odd = -(a_ + m) * (qab_ + m) * x_ / ((a_ + m2) * (qap_ + m2))
        for aa in (even, odd):
            dd = 1.0 + aa * d[live]
            dd = 1.0 / np.where(np.abs(dd) < _TINY, _TINY, dd)
            cc = 1.0 + aa / c[live]
            cc = np.where(np.abs(cc) < _TINY, _TINY, cc)
            d[live], c[live], de = dd, cc, dd * cc
            h[live] *= de
        live = live[np.abs(de - 1.0) > _EPS]
        if not len(live):
            break
    return h


def betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 < x < 1 (float64 arrays of one shape)."""
    a, b, x = (np.asarray(v, dtype=np.float64) for v in (a, b, x))
    front = np.exp(a * np.log(x) + b * np.log1p(-x) - _lbeta(a, b))
    direct = x < (a + 1.0) / (a + b + 2.0)  # where the fraction converges fast; 1 - I_{1-x}(b, a) elsewhere
    out = np.empty_like(x)
    out[direct] = front[direct] * _betacf(a[direct], b[direct], x[direct]) / a[direct]
    r = ~direct
    out[r] = 1.0 - front[r] * _betacf(b[r], a[r], 1.0 - x[r]) / b[r]
    return out


def frequency_upper(n_active: np.ndarray, n: int, confidence: float = CONFIDENCE) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on the firing rate of neurons that fired `n_active` times in `n`
    tokens: the p at which P(X <= k | n, p) = 1 - confidence, i.e. the `confidence` quantile of Beta(k+1, n-k);
    1 - (1 - confidence)^(1/n) (about 3/n) for k = 0, and 1 for k = n."""
    k = np.asarray(n_active, dtype=np.float64)
    if n <= 0:
        return np.full(k.shape, np.nan)
    alpha = 1.0 - confidence
    out = np.ones(k.shape)
    out[k == 0] = -np.expm1(np.log(alpha) / n)
    mid = (k > 0) & (k < n)
    ks, where = np.unique(k[mid], return_inverse=True)  # neurons with one count share one bound
    out[mid] = _beta_quantile(ks + 1.0, n - ks, confidence)[where]
    return out


def _beta_quantile(a: np.ndarray, b: np.ndarray, q: float) -> np.ndarray:
    """The q quantile of Beta(a, b): Newton steps from a normal guess, bisection wherever a step leaves the
    bracket, until the bracket or the step is below 1e-14 of the value."""
    lo, hi = np.zeros_like(a), np.ones_like(a)
    mean, sd = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    z = float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))
    p = np.clip(mean + z * sd, 1e-300, 1.0 - 1e-16)
    lb = _lbeta(a, b)
    live = np.arange(len(a))
    for _ in range(200):
        a_, b_, p_ = a[live], b[live], p[live]
        f = betainc(a_, b_, p_) - q
        below = f < 0
        lo[live] = np.where(below, p_, lo[live])
        hi[live] = np.where(below, hi[live], p_)
        pdf = np.exp((a_ - 1.0) * np.log(p_) + (b_ - 1.0) * np.log1p(-p_) - lb[live])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = p_ - f / pdf
        inside = np.isfinite(step) & (step > lo[live]) & (step < hi[live])
        new = np.where(inside, step, 0.5 * (lo[live] + hi[live]))
        p[live] = new
        done = (np.abs(new - p_) <= 1e-14 * new) | (hi[live] - lo[live] <= 1e-14 * new)
        live = live[~done]
        if not len(live):
            break
    return p
