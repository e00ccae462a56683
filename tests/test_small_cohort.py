"""A randomized spectrum on a cohort smaller than its Krylov space: (power_iters + 1)·(rank +
oversample) > n crashed with LinAlgError (n = 379, rank 50) while `bigmm check` said OK."""

import json

import numpy as np
import pytest
from conftest import random_genotypes

import bigmm

from test_bad_input import N, assert_refused, bigmm_cli, cohort, write_config  # noqa: F401  (fixture)


@pytest.mark.parametrize("algorithm", ["krylov", "subspace"])
def test_randomized_spectrum_wider_than_n_works_and_matches_exact(rng, algorithm):
    G = random_genotypes(rng, 150, 600, missing=0.01)
    std = bigmm.standardization(bigmm.variant_stats(G))
    exact = bigmm.exact_spectrum(bigmm.grm(G, std))
    # defaults: oversample 50, power_iters 3 (krylov: 4 · 100 = 400 > 150 columns) or 4 (subspace)
    spec = bigmm.randomized_spectrum(bigmm.GrmOperator(G, std), 50, algorithm=algorithm)
    assert spec.k == 50
    if algorithm == "krylov":
        # the Krylov space is capped at n = 150, the whole space: Rayleigh–Ritz is exact up to
        # round-off (eigenvalues ~1, ‖K‖ ε n ~ 1e-13)
        assert spec.diagnostics["subspace_dim"] <= 150
        np.testing.assert_allclose(spec.s, exact.s[:50], rtol=0, atol=1e-10)
    else:
        # subspace iteration on 100 of 150 dimensions with 4 power iterations: the top
        # eigenvalues of an unstructured K (a flat bulk, gaps ~1%) are resolved to ~1e-3
        np.testing.assert_allclose(spec.s[:10], exact.s[:10], rtol=5e-3)
    assert spec.diagnostics["orthonormality_error"] < 1e-8


def test_check_and_run_agree_on_a_small_cohort(tmp_path, cohort):  # noqa: F811
    # n = 60: rank 20 + oversample 50 = 70 > n, a Krylov space of 4 · 60 columns capped at n
    spectrum = {"method": "randomized", "rank": 20}
    path = write_config(tmp_path, cohort, spectrum=spectrum)
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 0, res.stderr
    assert f"is wider than n = {N} samples: capped at n" in res.stdout, res.stdout
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["spectrum_info"]["k"] == 20


@pytest.mark.parametrize("command", ["check", "run"])
def test_rank_at_least_n_refused_by_check_and_run(tmp_path, cohort, command):  # noqa: F811
    path = write_config(tmp_path, cohort, spectrum={"method": "randomized", "rank": N})
    message = f"spectrum.rank must be between 1 and n − 1 = {N - 1} genotyped samples (got {N})"
    if command == "run":
        assert_refused(bigmm_cli("run", path), tmp_path / "out", message)
    else:
        res = bigmm_cli("check", "--no-cluster", path)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
