"""What a reduced (randomized, rank k) spectrum captures of K, and which PCs are converged:
against a dense NumPy computation on a simulated 3-population cohort."""

import json
import logging

import numpy as np
import pytest
import yaml

import bigmm
from bigmm.passes import GrmOperator
from bigmm.spectrum import RITZ_CONVERGED, randomized_spectrum, unconverged_pcs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("share")
    bigmm.simulate(300, 1500, h2=0.5, seed=3, n_pops=3, fst=0.1, out_zarr=d / "s.zarr", chunks=(128, 512))
    store = bigmm.open_store(d / "s.zarr")
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    K = np.asarray(bigmm.grm(store.genotypes, std))
    return d, store, std, K


def test_captured_shares_equal_dense(cohort):
    _, store, std, K = cohort
    k = 20
    spec = randomized_spectrum(GrmOperator(store.genotypes, std, dtype=np.float64), k, seed=1)
    d = spec.diagnostics
    lam = np.linalg.eigvalsh(K)[::-1]
    frob2 = float(np.sum(K * K))
    # tr K is exact (the diagonal from the first pass): the share of the Ritz values is exact
    assert d["share_trace_K"] == pytest.approx(spec.s.sum() / np.trace(K), rel=1e-12)
    # ... and equals that of the true top-k eigenvalues to the Ritz values' accuracy (bulk-edge
    # eigenvalues at the defaults: relative errors ~1e-4 here, docs/lowrank.md)
    assert d["share_trace_K"] == pytest.approx(lam[:k].sum() / np.trace(K), rel=2e-3)
    # the decomposition tr K² = Σ θ² + 2 Σ ‖P₂ K u‖² + tr K₂² holds exactly with dense parts
    U = spec.U
    P2 = np.eye(K.shape[0]) - U @ U.T
    K2 = P2 @ K @ P2
    cross = np.sum((P2 @ K @ U) ** 2, axis=0)
    np.testing.assert_allclose(spec.ritz_cross, cross, rtol=1e-6, atol=1e-12 * frob2)
    assert np.sum(spec.s ** 2) + 2 * cross.sum() + np.sum(K2 * K2) == pytest.approx(frob2, rel=1e-10)
    # the reported tr K² uses the probes' estimate of tr K₂²: within 4 of its Monte Carlo SEs
    assert d["trace_K2_se"] > 0
    assert abs(d["trace_K2"] - frob2) < 4 * d["trace_K2_se"]
    share2 = np.sum(lam[:k] ** 2) / frob2
    assert abs(d["share_trace_K2"] - share2) < 4 * d["trace_K2_se"] / frob2 + 2e-3


def test_under_iterated_spectrum_flags_unconverged_pcs(cohort):
    _, store, std, K = cohort
    good = randomized_spectrum(GrmOperator(store.genotypes, std, dtype=np.float64), 20, seed=1)
    # the 2 structure PCs of 3 populations converge at the defaults
    assert unconverged_pcs(good, 2) == []
    # one pass, no oversampling: the Ritz pairs are far from eigenpairs
    bad = randomized_spectrum(GrmOperator(store.genotypes, std, dtype=np.float64), 20, seed=1,
                              power_iters=0, oversample=0)
    flagged = unconverged_pcs(bad)
    assert 1 in flagged and 2 in flagged
    # the residuals are the dense ‖K u − θ u‖ / θ
    U, th = bad.U, bad.s
    dense = np.linalg.norm(K @ U - U * th, axis=0) / th
    np.testing.assert_allclose(bad.diagnostics["ritz_residuals"], dense, rtol=1e-6)
    assert flagged == [i + 1 for i in np.flatnonzero(dense > RITZ_CONVERGED)]


def test_run_reports_shares_and_unconverged_pcs(cohort, tmp_path, caplog):
    from distributed import Client, LocalCluster

    from bigmm.pipeline.config import load_config
    from bigmm.pipeline.stages import run

    d, store, _, _ = cohort
    y = np.random.default_rng(0).standard_normal(store.n_samples)
    (tmp_path / "p.tsv").write_text("FID IID y\n" + "".join(
        f"{f} {i} {v}\n" for (f, i), v in zip(store.sample_ids(), y)))
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({
        "genotypes": {"zarr": str(d / "s.zarr")}, "phenotypes": {"file": str(tmp_path / "p.tsv")},
        "spectrum": {"method": "randomized", "rank": 10, "power_iters": 0, "oversample": 0},
        "output": str(tmp_path / "out")}))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client, caplog.at_level(logging.INFO, logger="bigmm"):
        run(load_config(cfg), client=client)
    info = json.loads((tmp_path / "out" / "results.json").read_text())["spectrum_info"]
    assert 0 < info["share_trace_K"] < 0.5 and 0 < info["share_trace_K2"] < 1
    assert info["unconverged_pcs"][:2] == [1, 2] and info["pc_residual_tol"] == RITZ_CONVERGED
    rows = [ln.split("\t") for ln in (tmp_path / "out" / "eigenvalues.tsv").read_text().splitlines()]
    assert rows[0] == ["index", "eigenvalue", "ritz_residual", "converged"]
    assert [r[3] == "false" for r in rows[1:]] == [float(r[2]) > RITZ_CONVERGED for r in rows[1:]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("capture only" in w and "SE is several times" in w and "matrix_free" in w for w in warnings)
    assert any("not converged" in w and "PC1 (" in w for w in warnings)
