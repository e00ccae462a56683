"""``phenotypes.missing: auto``: the choice between indicator columns and the subset spectrum on
the regimes measured by scripts/bench/bench_missing.py (docs/benchmarks.md) — not a timing test."""

from types import SimpleNamespace

import numpy as np
import pytest

import bigmm
from bigmm.reml import _choose_missing_method, rotate


def spec(n, k=None):
    """What the choice reads of a spectrum: n, k and the tail size (k < n: a reduced spectrum)."""
    k = n if k is None else k
    return SimpleNamespace(n=n, k=k, n_tail=n - k)


@pytest.mark.parametrize("n, k, n_miss, faster", [
    # the reported case: n ≈ 1,900, exact spectrum, ≈ 9% missing per pattern: the indicator's
    # REML took 24.4 s, the subsets' spectra 21.0 s (the old model picked the indicator)
    (1900, None, 178, "subset_spectrum"),
    # measured (one thread): n = 2,000 exact, 200 missing: indicator 2.29 s, subset 1.75 s;
    # 40 missing: indicator 0.35 s, subset 2.87 s
    (2000, None, 200, "subset_spectrum"),
    (2000, None, 40, "indicator"),
    # n = 1,000 exact, 100 missing: indicator 0.69-1.32 s, subset 0.39-0.45 s (old model: indicator)
    (1000, None, 100, "subset_spectrum"),
    (1000, None, 20, "indicator"),
    # reduced spectrum, k = 200, n = 2,000: 100 missing: indicator 0.58 s, subset 0.16 s
    (2000, 200, 100, "subset_spectrum"),
    (2000, 200, 600, "subset_spectrum"),
    # small patterns stay on the indicator (n = 500 exact, 10 missing: 0.05 s against 0.08 s)
    (500, None, 10, "indicator"),
])
def test_auto_picks_the_measured_faster_method(n, k, n_miss, faster):
    assert _choose_missing_method(spec(n, k), n - n_miss, 3, n_miss, "auto") == faster


def test_explicit_method_is_kept():
    assert _choose_missing_method(spec(1900), 1722, 3, 178, "indicator") == "indicator"
    assert _choose_missing_method(spec(1900), 1890, 3, 10, "subset") == "subset_spectrum"


def test_one_group_per_missingness_pattern(rng):
    """Each pattern is rotated (and fitted) once: two patterns give two groups."""
    n = 60
    G = rng.standard_normal((n, 100))
    s = bigmm.exact_spectrum(G @ G.T / 100)
    Y = rng.standard_normal((n, 3))
    Y[:5, 1] = np.nan
    Y[10:14, 2] = np.nan
    rd = rotate(s, Y)
    assert len(rd.groups) == 3 and sorted(c for g in rd.groups for c in g.cols) == [0, 1, 2]
