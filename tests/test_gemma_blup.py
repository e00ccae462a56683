"""BLUP cross-check against GEMMA 0.98.5 (fixture in tests/data/gemma_blup/).

The fixture (made by scripts/fixtures/make_gemma_blup_fixture.py, which never imports bigmm)
holds GEMMA's ``-bslmm 2`` (ridge regression / GBLUP) genetic values and SNP effects
and its three ``-predict 1`` predictions for the 30 samples without a phenotype, once
at GEMMA's REML λ = vg/ve and once at λ pinned to 1 (``-lmin 1 -lmax 1``). What
GEMMA's numbers are in bigmm's terms (README.md there; verified with dense numpy and
the GEMMA source), with w = V⁻¹(y − 1μ̂) = ``Blup.weights``, ĝ = ``genetic_values``,
μ̂ the GLS intercept and ȳ the plain mean of the 270 phenotyped samples:

- bv.txt = ĝ_o − mean_o(ĝ_o) (GEMMA double-centres K over the phenotyped samples;
  the REML projection w is unchanged by that, ĝ_o only loses its mean, and
  mean_o(ĝ_o) = ȳ − μ̂);
- param.txt alpha = (σ²_g/p) X_cᵀ w on the allele-count scale: bigmm's ``center``
  β̂ for -gk 1, and sd_j · β̂_j (β̂ from ``sample_sd``) for ``-bslmm 2 -k sXX``;
- -predict with -epm (alpha): ȳ_printed + (μ̂ − ȳ) + ĝ_m = bigmm's μ̂ + ĝ_m;
- -predict with -ebv (bv through K): ȳ_printed + ĝ_m (no μ̂ − ȳ shift);
- -predict with -k only: ȳ + ĝ_m + (μ̂ − ȳ)·σ²_g K_mo V⁻¹ 1 (GEMMA keeps the
  intercept at ȳ, the GLS mean of its centred kinship).

Tolerances (each assert repeats its own reason):
- GEMMA writes bv and alpha with 7 significant digits (``%.6e``): ≤ 5e-7 relative per
  element; predictions and the log with 6 (≤ 5e-6 relative).
- At GEMMA's REML λ, GEMMA's Newton iteration stops when |Δλ| < 1e-5 (absolute; λ ≈
  1–2 here), so its λ may differ from bigmm's exact optimum by ~1e-5 relative; ĝ and
  β̂ move by at most about |Δλ/λ|·max|ĝ|, hence 2e-5 of the vector's largest entry.
  The fixed-λ runs have no optimiser error and are compared to the printed precision.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import bigmm
from bigmm.passes import GrmOperator
from bigmm.blup import genetic_values, snp_effects
from bigmm.io.tables import build_design
from bigmm.reml import RemlResult, fit_rotated, rotate

DATA = Path(__file__).parent / "data" / "gemma_blup"
J = json.loads((DATA / "gemma_blup.json").read_text())
KIND = {"gk1": "center", "gk2": "sample_sd"}
SETTINGS = ("reml", "fixed")
MISSING = ("indicator", "subset")

#: 7 significant digits (bv, alpha): rounding ≤ 5e-7 relative; + 1e-7 for floating-point error
RTOL_7DIGITS = 6e-7
#: 6 significant digits (prdt.txt, log.txt): rounding ≤ 5e-6 relative to the value printed
RTOL_6DIGITS = 5e-6
#: GEMMA's REML λ vs the exact optimum (Newton stop |Δλ| < 1e-5 at λ ≈ 1–2), as a fraction of max|ĝ|
REML_LAMBDA_REL = 2e-5


def _vec(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    store = bigmm.ingest_plink(DATA / "cohort", tmp_path_factory.mktemp("gb") / "c.zarr", chunks=(128, 512))
    design = build_design(store.sample_ids(), DATA / "pheno.tsv", ["trait"])
    G = np.asarray(store.genotypes[:, :])
    return store, design, G


@pytest.fixture(scope="module")
def models(cohort):
    """bigmm's fit and BLUP per (kinship, λ setting, missing-value method)."""
    store, design, _ = cohort
    stats = bigmm.variant_stats(store.to_dask())
    Y, Z = design.Y, design.Z  # all 300 genotyped rows; Y is NaN where the trait is missing
    out = {}
    for gk, kind in KIND.items():
        std = bigmm.standardization(stats, kind)
        K = bigmm.grm(store.genotypes, std)
        spec = bigmm.exact_spectrum(K)
        for missing in MISSING:
            rot = rotate(spec, Y, Z, phenotype_names=["trait"], missing=missing)
            assert rot.groups[0].method == {"indicator": "indicator", "subset": "subset_spectrum"}[missing]
            res = fit_rotated(rot)
            f = res["trait"]
            for setting in SETTINGS:
                if setting == "reml":
                    r, mu = res, f.fixed_effects[0].estimate
                else:  # λ = σ²_g/σ²_e = 1 exactly, as GEMMA's -lmin 1 -lmax 1; σ² profiled at h² = 0.5
                    g0 = rot.groups[0]  # rotated on y less its OLS fit, divided by its residual SD a
                    a = float(g0.scale[0])
                    s2u = float(g0.loglik(0.5, cols=[0])[2][0])  # σ² on that unit scale
                    ff = dataclasses.replace(f, h2=0.5, sigma2_g=0.5 * s2u * a * a, sigma2_e=0.5 * s2u * a * a)
                    r = RemlResult(fits=(ff,), spectrum_method=res.spectrum_method)
                    # GLS at λ = 1, back on y's scale
                    mu = float(a * g0.fixed_and_information(0, 0.5, s2u)[0][0] + g0.shift[0, 0])
                blup = genetic_values(spec, rot, r)
                beta = snp_effects(GrmOperator(store.genotypes, std), blup)
                out[gk, setting, missing] = dict(std=std, K=K, fit=r["trait"], blup=blup, beta=beta[:, 0],
                                                 g=blup.genetic_values[:, 0], w=blup.weights[:, 0], mu=mu)
    return out


CASES = [(gk, s, m) for gk in KIND for s in SETTINGS for m in MISSING]
IDS = [f"{gk}-{s}-{m}" for gk, s, m in CASES]


def _atol(setting, scale):
    """Extra absolute tolerance for GEMMA's REML λ (see module docstring); 0 at fixed λ."""
    return REML_LAMBDA_REL * scale if setting == "reml" else 0.0


def test_fixture_layout(cohort):
    _, design, G = cohort
    obs = ~np.isnan(design.Y[:, 0])
    assert G.shape == (J["n_samples"], J["n_variants"]) and (G >= 0).all()
    assert int(obs.sum()) == J["n_observed"] == 270
    iids = np.array(J["iid"])
    assert sorted(iids[~obs].tolist()) == sorted(J["missing_iids"])
    for s in SETTINGS:
        for gk in KIND:
            r = J["results"][s][gk]
            assert r["n_analyzed"] == 270 and r["n_snps"] == J["n_variants"]
            assert np.array_equal(~np.isnan(_vec(r["bv"])), obs)  # bv: NA for the unphenotyped


@pytest.mark.parametrize("gk", list(KIND))
def test_reml_lambda_matches_gemma(cohort, models, gk):
    """GEMMA's -bslmm 2 λ is its REML λ on the kinship: check it through pve (its only printout)."""
    f = models[gk, "reml", "indicator"]["fit"]
    g = J["results"]["reml"][gk]
    # pve = σ²_g d / (σ²_g d + σ²_e), d = trace(P K_a P)/n_o: 6 printed digits plus GEMMA's
    # optimiser (|Δλ/λ| ≲ 1e-5 moves pve by (1 − pve)·1e-5)
    assert f.pve == pytest.approx(g["pve"], rel=REML_LAMBDA_REL)
    assert models[gk, "reml", "subset"]["fit"].pve == pytest.approx(f.pve, rel=1e-9)
    # fixed λ = 1: GEMMA prints pve = d / (d + 1) (6 digits), d from bigmm's K
    obs = ~np.isnan(cohort[1].Y[:, 0])
    Ka = models[gk, "fixed", "indicator"]["K"][np.ix_(obs, obs)]
    d = np.diag(Ka).mean() - Ka.mean()
    assert d / (d + 1.0) == pytest.approx(J["results"]["fixed"][gk]["pve"], rel=RTOL_6DIGITS)


@pytest.mark.parametrize("setting", SETTINGS)
def test_predict_kinship_variance_components(models, setting):
    """-predict 1 with -k only prints vg, ve (6 digits) of its REML on the centred kinship."""
    f = models["gk1", setting, "indicator"]["fit"]
    g = J["results"][setting]["pred_kin"]
    rel = RTOL_6DIGITS + (REML_LAMBDA_REL if setting == "reml" else 0.0)  # λ: see module docstring
    assert f.sigma2_g == pytest.approx(g["vg"], rel=rel)
    assert f.sigma2_e == pytest.approx(g["ve"], rel=rel)


@pytest.mark.parametrize("gk,setting,missing", CASES, ids=IDS)
def test_genetic_values_match_gemma_bv(cohort, models, gk, setting, missing):
    _, design, _ = cohort
    m = models[gk, setting, missing]
    obs = ~np.isnan(design.Y[:, 0])
    y = design.Y[obs, 0]
    bv = _vec(J["results"][setting][gk]["bv"])[obs]
    g_o = m["g"][obs]
    # GEMMA's bv are bigmm's ĝ of the phenotyped samples minus their mean (K_c = P K_a P);
    # that mean is ȳ − μ̂ (the fitted values ȳ + P ĝ_o and μ̂ + ĝ_o share the residual σ²_e w)
    assert g_o.mean() == pytest.approx(y.mean() - m["mu"], rel=1e-8, abs=1e-12)
    assert np.abs(g_o.mean()) > 100 * RTOL_7DIGITS * np.abs(bv).max()  # the shift is resolvable
    # 7 significant digits per element (+ GEMMA's REML λ offset in the reml setting)
    np.testing.assert_allclose(g_o - g_o.mean(), bv, rtol=RTOL_7DIGITS,
                               atol=_atol(setting, np.abs(bv).max()))
    # w = V⁻¹ r is zero off the phenotyped samples and orthogonal to the intercept
    assert np.all(m["w"][~obs] == 0.0)
    assert abs(m["w"][obs].sum()) < 1e-10 * np.abs(m["w"]).sum()


@pytest.mark.parametrize("gk,setting,missing", CASES, ids=IDS)
def test_snp_effects_match_gemma_alpha(cohort, models, gk, setting, missing):
    _, _, G = cohort
    m = models[gk, setting, missing]
    std = m["std"]
    alpha = np.array(J["results"][setting][gk]["alpha"])
    # GEMMA's alpha = (σ²_g/p) X_cᵀ w on the allele-count scale of allele_1 (not standardised,
    # whatever kinship -k gives): bigmm's β̂ per standardized genotype divided by std.scale,
    # i.e. β̂ itself for "center" (scale 1) and sd_j · β̂_j for "sample_sd"
    assert np.all(std.keep)
    if gk == "gk1":
        assert np.all(std.scale == 1.0)
    gemma_scale = m["beta"] / std.scale
    np.testing.assert_allclose(gemma_scale, alpha, rtol=RTOL_7DIGITS,
                               atol=_atol(setting, np.abs(alpha).max()))
    # X β̂ = ĝ for the exact K (standardized X over all samples)
    X = (G - std.center) * std.scale
    np.testing.assert_allclose(X @ m["beta"], m["g"], rtol=0, atol=1e-10 * np.abs(m["g"]).max())


@pytest.mark.parametrize("setting,missing", [(s, m) for s in SETTINGS for m in MISSING],
                         ids=[f"{s}-{m}" for s in SETTINGS for m in MISSING])
def test_predictions_of_unphenotyped_match_gemma(cohort, models, setting, missing):
    """GEMMA's three -predict routes (all on -gk 1) for the 30 samples without a phenotype."""
    _, design, _ = cohort
    m = models["gk1", setting, missing]
    obs = ~np.isnan(design.Y[:, 0])
    ybar = design.Y[obs, 0].mean()
    mu, g, K, f = m["mu"], m["g"], m["K"], m["fit"]
    g_m = g[~obs]
    res = J["results"][setting]
    emu = res["gk1"]["estimated_mean"]  # ȳ as printed in the log (6 digits), read back by -emu
    assert emu == pytest.approx(ybar, rel=RTOL_6DIGITS)

    def check(route, expected):
        pred = _vec(res[f"pred_{route}"]["prediction"])
        assert np.all(np.isnan(pred[obs])) and not np.any(np.isnan(pred[~obs]))
        pred = pred[~obs]
        # prdt.txt has 6 significant digits (≤ 5e-6 relative per element); its inputs bv and
        # alpha 7 (≤ 5e-7 of max|ĝ| after the sums); plus GEMMA's REML λ offset (reml setting)
        atol = 5e-7 * np.abs(g_m).max() + _atol(setting, np.abs(g_m).max())
        np.testing.assert_allclose(expected, pred, rtol=RTOL_6DIGITS, atol=atol, err_msg=route)
        return pred

    # -epm alpha -emu log: ȳ_printed + (X_m − x̄_o) α = ȳ_printed + (μ̂ − ȳ) + ĝ_m: bigmm's BLUP
    # phenotype μ̂ + ĝ_m up to GEMMA's printed mean
    check("alpha", emu + (mu - ybar) + g_m)
    # -epm -emu -ebv bv -k cXX: ȳ_printed + K'_mo K_c⁺ bv = ȳ_printed + ĝ_m (GEMMA's weighted
    # centring of K leaves K_mo w unchanged, so the μ̂ − ȳ shift of the alpha route is absent)
    pb = check("bv", emu + g_m)
    assert np.abs(pb - (emu + (mu - ybar) + g_m)).max() > 50 * RTOL_6DIGITS * np.abs(pb).max()
    # -predict 1 -k cXX (no -epm): ȳ + σ²_g K_mo V⁻¹ (y_o − ȳ)
    #   = ȳ + ĝ_m + (μ̂ − ȳ) σ²_g K_mo V⁻¹ 1, V = σ²_g K_oo + σ²_e I (dense numpy on bigmm's K)
    Koo, Kmo = K[np.ix_(obs, obs)], K[np.ix_(~obs, obs)]
    V = f.sigma2_g * Koo + f.sigma2_e * np.eye(int(obs.sum()))
    c = f.sigma2_g * Kmo @ np.linalg.solve(V, np.ones(int(obs.sum())))
    check("kin", ybar + g_m + (mu - ybar) * c)
