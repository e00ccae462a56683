"""Missing calls: GEMMA -gk 2 and plink2 --make-grm-bin (fixture in tests/data/missing_calls/).

The fixture and the script that made it (scripts/fixtures/make_missing_calls_fixture.py, numpy +
bed_reader only) hold a cohort of 160 samples x 1000 variants with 2.1% missing calls, three
all-heterozygous variants, one monomorphic and one with exactly 5% missing calls; GEMMA's `-gk 2`
kinship and `-lmm 1` null fit on it, and plink2's `--make-grm-bin` on the variants GEMMA analyses.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import bigmm
from bigmm.io.tables import build_design

DATA = Path(__file__).parent / "data" / "missing_calls"
REF = json.loads((DATA / "missing_calls.json").read_text())
# GEMMA's default filters, the ones its analysed variant count is made with
FILTERS = {"min_maf": 0.01, "max_missing": 0.05}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return bigmm.ingest_plink(DATA / "cohort", tmp_path_factory.mktemp("m") / "c.zarr", chunks=(64, 256))


@pytest.fixture(scope="module")
def stats(store):
    return bigmm.variant_stats(store.to_dask())


def test_variant_filters_match_gemma(store, stats):
    std = bigmm.standardization(stats, "sample_sd", **FILTERS)
    assert std.n_kept == REF["gemma"]["n_snps_kinship"] == 947
    assert std.dropped["all_heterozygous"] == len(REF["all_heterozygous"]) == 3
    assert std.dropped["monomorphic"] == 1
    ids = list(store.variant_table()["id"])
    kept = {ids[j] for j in np.flatnonzero(std.keep)}
    assert kept == set((DATA / "analysed_variants.txt").read_text().split())
    # exactly 8 of 160 calls missing is a missing fraction of 0.05, not above max_missing = 0.05
    assert REF["boundary_missing_0.05"] in kept


def test_sample_sd_kinship_equals_gemma_gk2(store, stats):
    std = bigmm.standardization(stats, "sample_sd", **FILTERS)
    K = bigmm.grm(store.genotypes, std)
    with gzip.open(DATA / "kinship_gk2.sXX.txt.gz", "rt") as fh:
        K_gemma = np.loadtxt(fh)
    # GEMMA writes 10 significant digits: entries of size ≤ ~2 are rounded by ≤ 1e-9. Dividing
    # the sum of squares by the calls instead of by n (the old definition) is off by ~0.03 here
    np.testing.assert_allclose(K, K_gemma, rtol=0, atol=1e-9)
    # every kept column of X has Σ x² = n: tr K = n exactly, as the statistics say without a pass
    assert std.trace_K == pytest.approx(store.n_samples, rel=1e-12)
    assert np.trace(K) == pytest.approx(store.n_samples, rel=1e-12)


def test_reml_on_sample_sd_matches_gemma_lmm(store, stats):
    std = bigmm.standardization(stats, "sample_sd", **FILTERS)
    K = bigmm.grm(store.genotypes, std)
    design = build_design(store.sample_ids(), DATA / "pheno.tsv", ["trait"], None, [])
    res = bigmm.fit_reml(bigmm.exact_spectrum(K), design.Y, design.Z, phenotype_names=["trait"],
                         covariate_names=design.covariate_names)
    f, g = res["trait"], REF["gemma"]
    assert f.n == g["n_analyzed"]
    # GEMMA prints 6 significant digits and its optimiser stops ~1e-5 relative from the optimum
    # (tests/data/gemma/README.md): compared at 1e-4 relative
    assert f.sigma2_g == pytest.approx(g["vg"], rel=1e-4)
    assert f.sigma2_e == pytest.approx(g["ve"], rel=1e-4)
    assert f.pve == pytest.approx(g["pve"], rel=1e-4)
    # GEMMA's REML log-likelihood carries +½ log det(ZᵀZ) = ½ log n (intercept only); printed
    # to 6 digits near −229: within 5e-4
    assert f.logl_reml + 0.5 * np.log(f.n) == pytest.approx(g["logl_remle"], abs=1e-3)


def _plink2_lower(suffix: str) -> np.ndarray:
    return np.fromfile(DATA / f"plink2_grm{suffix}", dtype="<f4")


def test_gcta_export_equals_plink2_make_grm_bin(store, stats, tmp_path):
    std = bigmm.standardization(stats, "gcta", **FILTERS)
    K, N = bigmm.grm(store.genotypes, std, counts=True)
    paths = bigmm.write_gcta_grm(tmp_path / "grm", K, store.sample_ids(), std.n_kept, N=N, rows_per_block=50)
    got_A = np.fromfile(paths[0], dtype="<f4")
    got_N = np.fromfile(paths[1], dtype="<f4")
    # per-pair counts of variants called in both samples: integers, equal exactly
    np.testing.assert_array_equal(got_N, _plink2_lower(".grm.N.bin"))
    assert got_N.min() < std.n_kept  # the fixture has pairs with missing calls
    # both files are float32 of a float64 value: |Δ| ≤ 2 float32 half-ulps of entries ≤ ~4
    # (≤ 5e-7); mean-imputation with /p instead (bigmm's K) is off by up to ~1e-2 here
    np.testing.assert_allclose(got_A, _plink2_lower(".grm.bin"), rtol=0, atol=1e-6)
    il = np.tril_indices(K.shape[0])
    assert np.abs(K[il] - _plink2_lower(".grm.bin")).max() > 1e-3
    assert (tmp_path / "grm.grm.id").read_text() == (DATA / "plink2_grm.grm.id").read_text()
