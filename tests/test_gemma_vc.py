"""Several variance components against GEMMA 0.98.5 ``-vc 2 -mk`` on GEMMA's own example mice.

The fixture (tests/data/gemma_vc/, made by scripts/fixtures/make_gemma_vc_fixture.py without
bigmm): 400 HS1940 mice, 5,067 SNPs in three components by chromosome (A: 1-6, B: 7-12, C: 13-19),
GEMMA ``-gk 1`` kinships of each component, and GEMMA ``-vc 2 -mk`` (REML, AI algorithm) with an
intercept and sex for two phenotypes (pheno1: 360 mice analysed, pheno6: 330), with and without
``-noconstrain``. GEMMA prints no log-likelihood, so σ²_j, their SEs and pve are compared.

What GEMMA computes (its src/vc.cpp, recorded in gemma_vc_results.json): the same REML (its kinships
are double-centred over the analysed mice, which REML with an intercept does not see), solved by
GSL's hybridsj root finder on the score with the AI matrix as Jacobian, in log σ² by default, until
Σ|score| < 1e-3; SEs from the inverse AI matrix; pve_j = d_j σ²_j / (Σ d_k σ²_k + σ²_e).
"""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import bigmm
from bigmm.io.tables import build_design

DATA = Path(__file__).parent / "data" / "gemma_vc"
REF = json.loads((DATA / "gemma_vc_results.json").read_text())
COMPONENTS = ["A", "B", "C"]
LOG2PI = math.log(2 * math.pi)


def gemma_fit(phenotype, constrain):
    return next(f for f in REF["fits"] if f["phenotype"] == phenotype and f["constrain"] == constrain)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """bigmm's kinship of each component (standardize: center = GEMMA -gk 1) and its fits."""
    store = bigmm.ingest_plink(DATA / "cohort", tmp_path_factory.mktemp("gvc") / "c.zarr", chunks=(200, 2048))
    with open(DATA / "components.tsv") as fh:
        comp_of = {r["SNP"]: r["component"] for r in csv.DictReader(fh, delimiter="\t")}
    comp = np.array([comp_of[v] for v in store.variant_table()["id"]])
    stats = bigmm.variant_stats(store.to_dask())
    Ks = [np.asarray(bigmm.grm(store.genotypes, bigmm.standardization(stats, "center", drop={"other": comp != c})))
          for c in COMPONENTS]
    design = build_design(store.sample_ids(), DATA / "pheno.tsv", ["pheno1", "pheno6"], DATA / "covar.tsv", ["sex"])
    a = design.analysed
    Ka = [K[np.ix_(a, a)] for K in Ks]
    kw = dict(component_names=COMPONENTS, phenotype_names=design.phenotype_names,
              covariate_names=design.covariate_names, n_variants=[float(np.sum(comp == c)) for c in COMPONENTS])
    fits = {True: bigmm.fit_components(Ka, design.Y[a], design.Z[a], **kw),
            False: bigmm.fit_components(Ka, design.Y[a], design.Z[a], constrain=False, lrt=False, ml=False, **kw)}
    return Ks, Ka, design, fits


def observed(cohort, phenotype):
    """K_j, y, Z over the mice with a value of ``phenotype`` (GEMMA's analysed mice)."""
    _, Ka, design, _ = cohort
    a = design.analysed
    y = design.Y[a, design.phenotype_names.index(phenotype)]
    o = ~np.isnan(y)
    return [K[np.ix_(o, o)] for K in Ka], y[o], design.Z[a][o]


def reml_loglik(theta, Ks, y, Z):
    """Dense ℓ_R(θ), θ = (σ²_A, σ²_B, σ²_C, σ²_e), Harville's form (written here, independent of bigmm)."""
    n, c = Z.shape
    V = theta[-1] * np.eye(n) + sum(t * K for t, K in zip(theta[:-1], Ks))
    L = np.linalg.cholesky(V)
    Li_y, Li_Z = np.linalg.solve(L, y), np.linalg.solve(L, Z)
    A = Li_Z.T @ Li_Z
    b = Li_Z.T @ Li_y
    yPy = Li_y @ Li_y - b @ np.linalg.solve(A, b)
    return -0.5 * ((n - c) * LOG2PI + 2 * np.log(np.diag(L)).sum() + np.linalg.slogdet(A)[1] + yPy)


def gradient_hessian(f, x, h):
    """Central differences of f at x with steps h (gradient and Hessian)."""
    q = x.size
    E = np.diag(h)
    g = np.array([(f(x + E[k]) - f(x - E[k])) / (2 * h[k]) for k in range(q)])
    H = np.empty((q, q))
    for k in range(q):
        for l in range(q):
            H[k, l] = (f(x + E[k] + E[l]) - f(x + E[k] - E[l]) - f(x - E[k] + E[l]) + f(x - E[k] - E[l])) \
                / (4 * h[k] * h[l])
    return g, H


def test_kinships_equal_gemma(cohort):
    """bigmm's K_j (center, over all 400 mice, the component's SNPs) = GEMMA -gk 1 on those SNPs:
    the diagonal and the first row as GEMMA printed them (10 significant digits: ≤ 5e-10 relative)."""
    Ks, _, _, _ = cohort
    for c, K in zip(COMPONENTS, Ks):
        ref = REF["kinships"][c]
        np.testing.assert_allclose(np.diag(K), ref["diagonal"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(K[0], ref["first_row"], rtol=1e-9, atol=1e-12)


# the fits where GEMMA reached the maximum: pheno1 (default, log σ²) and pheno6 with -noconstrain
CONVERGED = [("pheno1", True), ("pheno6", False)]


@pytest.mark.parametrize("phenotype,gemma_constrain", CONVERGED, ids=["pheno1", "pheno6-noconstrain"])
def test_estimates_and_ses_equal_gemma(cohort, phenotype, gemma_constrain):
    """σ²_j, σ²_e, their SEs, pve_j and the total pve with its SE, to 1e-4 relative: GEMMA stops when
    Σ_j |score_j| < 1e-3 (σ²-weighted in log σ²), which leaves its last iterate up to ~3e-5 relative
    from the maximum here (test_gemma_is_one_newton_step_from_bigmm measures it), and prints 6
    significant digits (≤ 5e-6). Both fits are interior, so bigmm's constrained and unconstrained
    fits are the same maximum; both SEs come from the inverse AI matrix."""
    g = gemma_fit(phenotype, gemma_constrain)
    _, _, _, fits = cohort
    for constrain in (True, False):
        f = fits[constrain][phenotype]
        assert f.n == g["n_analyzed"] and f.converged
        ours = [c.sigma2 for c in f.components] + [f.sigma2_e]
        ours_se = [c.sigma2_se for c in f.components] + [f.sigma2_e_se]
        np.testing.assert_allclose(ours, g["sigma2"], rtol=1e-4)
        np.testing.assert_allclose(ours_se, g["sigma2_se"], rtol=1e-4)
        np.testing.assert_allclose([c.pve for c in f.components], g["pve"], rtol=1e-4)
        np.testing.assert_allclose([c.pve_se for c in f.components], g["pve_se"], rtol=1e-4)
        assert f.pve == pytest.approx(g["pve_total"], rel=1e-4)
        assert f.pve_se == pytest.approx(g["pve_total_se"], rel=1e-4)


@pytest.mark.parametrize("phenotype,gemma_constrain", CONVERGED, ids=["pheno1", "pheno6-noconstrain"])
def test_gemma_is_one_newton_step_from_bigmm(cohort, phenotype, gemma_constrain):
    """GEMMA's printed estimate is bigmm's maximum up to GEMMA's unfinished last step: one Newton step
    of the dense ℓ_R (central differences, step 1e-4 Vp: Hessian error ~1e-8 relative) from GEMMA's
    point lands on bigmm's σ² to 1e-6 relative (Newton converges quadratically from ~3e-5)."""
    g = gemma_fit(phenotype, gemma_constrain)
    Ks, y, Z = observed(cohort, phenotype)
    theta_g = np.array(g["sigma2"])
    grad, H = gradient_hessian(lambda t: reml_loglik(t, Ks, y, Z), theta_g, np.full(4, 1e-4 * theta_g.sum()))
    newton = theta_g - np.linalg.solve(H, grad)
    f = cohort[3][True][phenotype]
    ours = np.array([c.sigma2 for c in f.components] + [f.sigma2_e])
    np.testing.assert_allclose(ours, newton, rtol=1e-6)
    # and bigmm's ℓ_R is the dense likelihood at its estimate
    assert f.logl_reml == pytest.approx(reml_loglik(ours, Ks, y, Z), abs=1e-8)


def test_gemma_default_stops_short_of_the_maximum_on_pheno6(cohort):
    """GEMMA -vc 2 in log σ² on pheno6 drives σ²_C to 5e-6 and stops (its score test is weighted by σ²_C,
    which vanishes): the score of σ²_C there is positive (uphill: not a maximum, constrained or not),
    ℓ_R is > 4 below bigmm's maximum, and GEMMA -noconstrain, bigmm constrained and unconstrained all
    find the same interior maximum (σ²_C ≈ 0.53)."""
    g = gemma_fit("pheno6", True)
    Ks, y, Z = observed(cohort, "pheno6")
    theta_g = np.array(g["sigma2"])
    assert theta_g[2] < 1e-4
    grad, _ = gradient_hessian(lambda t: reml_loglik(t, Ks, y, Z), theta_g, np.full(4, 1e-6))
    assert grad[2] > 1.0
    f = cohort[3][True]["pheno6"]
    assert f.logl_reml - reml_loglik(theta_g, Ks, y, Z) > 4.0
    assert f.components[2].sigma2 == pytest.approx(gemma_fit("pheno6", False)["sigma2"][2], rel=1e-4)
