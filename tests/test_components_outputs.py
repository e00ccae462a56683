"""The outputs of a several-component fit: results.tsv (one row per phenotype × component),
GCTA's .hsq for several GRMs, the report's "Variance components" section and figure; and the
single-component outputs left as they were."""

import dataclasses
import io
import math
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import chdtrc, ndtri

import bigmm
from bigmm.pipeline.outputs import json_safe
from bigmm.pipeline.report import ReportData, results_document, write_hsq, write_report, write_results
from bigmm.reml import TABLE_COLUMNS

NAMES = ["maf_low", "maf mid", "maf_high"]
SIZES = [120, 200, 160]


@pytest.fixture(scope="module")
def cohort():
    """n = 140 samples, 480 standardized variants in three groups (one GRM each), an intercept
    and a covariate; phenotype t1 with h² in the first group, t2 with 15 missing values."""
    rng = np.random.default_rng(11)
    n = 140
    f = rng.uniform(0.05, 0.5, sum(SIZES))
    G = rng.binomial(2, f, size=(n, f.size)).astype(float)
    X = (G - 2 * f) / np.sqrt(2 * f * (1 - f))
    edges = np.cumsum([0] + SIZES)
    Ks = [X[:, a:b] @ X[:, a:b].T / (b - a) for a, b in zip(edges[:-1], edges[1:])]
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    y1 = Z @ [1.0, 0.3] + X[:, :SIZES[0]] @ rng.normal(0, math.sqrt(0.5 / SIZES[0]), SIZES[0]) \
        + rng.normal(0, math.sqrt(0.5), n)
    y2 = 2.0 + X[:, SIZES[0]:] @ rng.normal(0, math.sqrt(0.3 / 360), 360) + rng.normal(0, math.sqrt(0.7), n)
    y2[rng.choice(n, 15, replace=False)] = np.nan
    Y = np.column_stack([y1, y2])
    res = bigmm.fit_components(Ks, Y, Z, component_names=NAMES, phenotype_names=["t1", "t2"],
                               covariate_names=["intercept", "age"], n_variants=SIZES)
    return Ks, Z, Y, res


def outputs(res, tmp_path, run_info=None):
    """reml.json's dict (JSON-safe, as the reml stage stores it) and the files the report stage
    writes from it."""
    reml = json_safe(res.to_dict())
    (tmp_path / "hsq").mkdir(exist_ok=True)
    tsv, doc = write_results(tmp_path, reml, run_info or {"bigmm_version": "test", "n_variants": 480})
    hsq = write_hsq(tmp_path / "hsq", reml)
    write_report(tmp_path, doc, None, None, None, ReportData())
    return reml, doc, tsv, hsq


def test_results_tsv_is_the_components_table(cohort, tmp_path):
    """results.tsv read back = ComponentsResult.to_pandas() (one row per phenotype × component,
    the same columns in the same order) then each phenotype's fixed effects, to the 10
    significant digits it is written with (relative error ≤ 5e-10); the Monte Carlo SDs, which
    the exact path does not have, are "." (NaN in to_pandas)."""
    *_, res = cohort
    _, _, tsv, _ = outputs(res, tmp_path)
    got = pd.read_csv(tsv, sep="\t", na_values=["."], keep_default_na=False)
    ref = res.to_pandas()
    fe = [f"{k}_{nm}" for nm in res.covariate_names for k in ("beta", "se")]
    assert list(got.columns) == list(ref.columns) + fe
    assert len(got) == 2 * 3
    assert got["phenotype"].tolist() == ["t1"] * 3 + ["t2"] * 3
    assert got["component"].tolist() == NAMES * 2
    for col in ref.columns[2:]:
        a, b = got[col].to_numpy(), ref[col].to_numpy()
        if ref[col].dtype == bool:
            assert a.tolist() == b.tolist(), col
        else:
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=5e-10, atol=1e-300, err_msg=col)
    for f in res.fits:
        rows = got[got["phenotype"] == f.name]
        for e in f.fixed_effects:
            np.testing.assert_allclose(rows[f"beta_{e.name}"], e.estimate, rtol=5e-10)
            np.testing.assert_allclose(rows[f"se_{e.name}"], e.se, rtol=5e-10)
    assert got.loc[got["phenotype"] == "t2", "n"].tolist() == [140 - 15] * 3
    assert got[["h2_se_mc", "sigma2_se_mc", "h2_total_se_mc"]].isna().all().all()


def test_results_json_holds_the_run_and_the_components(cohort, tmp_path):
    """results.json = the run's information + ComponentsResult.to_dict(): it reads back as the
    same result; the run's variant count, which the components' own n_variants would hide, is
    kept as n_variants_kept."""
    *_, res = cohort
    _, doc, _, _ = outputs(res, tmp_path)
    assert doc["bigmm_version"] == "test" and doc["n_variants_kept"] == 480
    assert doc["n_variants"] == SIZES and doc["component_names"] == NAMES
    back = bigmm.ComponentsResult.from_dict(doc)
    for a, b in zip(back.fits, res.fits):
        assert [c.h2 for c in a.components] == [c.h2 for c in b.components]
        assert a.logl_reml == b.logl_reml


def gcta_logl_dense(Ks, Z, y, sig, se):
    """GCTA's REML logL (est_hsq.cpp, reml_iteration): −½ [log det V + log det(ZᵀV⁻¹Z) + yᵀPy]
    with V = Σ σ²_j K_j + σ²_e I, P = V⁻¹ − V⁻¹Z(ZᵀV⁻¹Z)⁻¹ZᵀV⁻¹, all dense."""
    V = sum(s * K for s, K in zip(sig, Ks)) + se * np.eye(len(y))
    Vi = np.linalg.inv(V)
    A = Z.T @ Vi @ Z
    P = Vi - Vi @ Z @ np.linalg.solve(A, Z.T @ Vi)
    return -0.5 * (np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + y @ P @ y)


#: GCTA's .hsq for m GRMs (``--reml --mgrm`` with ``--reml-lrt 1 .. m``), from its documentation
#: (the example test_bKsK.hsq of "GREML: estimating the variance explained by all SNPs", two GRMs:
#: Source, V(G1), V(G2), V(e), Vp, V(G1)/Vp, V(G2)/Vp, an empty line, Sum of V(G)/Vp, logL, n)
#: and est_hsq.cpp (logL0, LRT, df, Pval after logL when a reduced model is tested)
GCTA_MGRM_LAYOUT = ["Source", "V(G1)", "V(G2)", "V(G3)", "V(e)", "Vp", "V(G1)/Vp", "V(G2)/Vp", "V(G3)/Vp", "",
                    "Sum of V(G)/Vp", "logL", "logL0", "LRT", "df", "Pval", "n"]


def test_hsq_is_gctas_layout_for_several_grms_with_the_fits_numbers(cohort, tmp_path):
    """Line by line GCTA's layout for three GRMs; V(Gj), V(e), V(Gj)/Vp, Sum of V(G)/Vp the fit's;
    Vp and its SE from the inverse AI matrix (1ᵀ C 1); logL GCTA's formula at the fitted
    variances and logL0 at the REML fit without any GRM (σ̂²_e = RSS / (n − c)), both dense;
    LRT = 2 (logL − logL0), df = 3, Pval GCTA's ½ P(χ²₃ > LRT); n the phenotype's observed
    samples; the components named in the comment lines. Tolerances: the file's 10 significant
    digits (5e-10 relative), and 1e-6 on logL, where the fit's own convergence (|Δℓ| < 1e-8)
    and a dense inverse at n = 140 are far below it."""
    Ks, Z, Y, res = cohort
    _, _, _, paths = outputs(res, tmp_path)
    assert [p.name for p in paths] == ["t1.hsq", "t2.hsq"]
    for j, (fit, path) in enumerate(zip(res.fits, paths)):
        lines = path.read_text().splitlines()
        body = [ln for ln in lines if not ln.startswith("#")]
        assert [ln.split("\t")[0] for ln in body] == GCTA_MGRM_LAYOUT
        assert body[0] == "Source\tVariance\tSE" and body[9] == ""
        rows = {ln.split("\t")[0]: [float(x) for x in ln.split("\t")[1:]] for ln in body[1:] if ln}
        assert all(len(rows[k]) == 2 for k in GCTA_MGRM_LAYOUT[1:11] if k)
        assert all(len(rows[k]) == 1 for k in GCTA_MGRM_LAYOUT[11:])
        for g, c in zip(("G1", "G2", "G3"), fit.components):
            np.testing.assert_allclose(rows[f"V({g})"], [c.sigma2, c.sigma2_se], rtol=5e-10, atol=1e-300)
            np.testing.assert_allclose(rows[f"V({g})/Vp"], [c.h2, c.h2_se], rtol=5e-10, atol=1e-300)
        np.testing.assert_allclose(rows["V(e)"], [fit.sigma2_e, fit.sigma2_e_se], rtol=5e-10)
        C = np.array(fit.sigma2_cov)
        vp = sum(c.sigma2 for c in fit.components) + fit.sigma2_e
        np.testing.assert_allclose(rows["Vp"], [vp, math.sqrt(C.sum())], rtol=5e-10)
        np.testing.assert_allclose(rows["Sum of V(G)/Vp"], [fit.h2, fit.h2_se], rtol=5e-10)
        o = ~np.isnan(Y[:, j])
        Ko, Zo, yo = [K[np.ix_(o, o)] for K in Ks], Z[o], Y[o, j]
        n, c = int(o.sum()), Z.shape[1]
        logl = gcta_logl_dense(Ko, Zo, yo, [x.sigma2 for x in fit.components], fit.sigma2_e)
        r = yo - Zo @ np.linalg.lstsq(Zo, yo, rcond=None)[0]
        s2 = r @ r / (n - c)
        logl0 = -0.5 * ((n - c) * math.log(s2) + np.linalg.slogdet(Zo.T @ Zo)[1] + (n - c))
        np.testing.assert_allclose(rows["logL"][0], logl, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rows["logL0"][0], logl0, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rows["LRT"][0], 2 * (logl - logl0), rtol=0, atol=2e-6)
        assert rows["df"] == [3.0] and rows["n"] == [n]
        np.testing.assert_allclose(rows["Pval"][0], 0.5 * chdtrc(3, rows["LRT"][0]), rtol=1e-6)
        comments = [ln for ln in lines if ln.startswith("#")]
        assert comments[:3] == [f"# bigmm: G{i + 1} = component {nm} ({k} variants)"
                                for i, (nm, k) in enumerate(zip(NAMES, SIZES))]
        assert lines.index(comments[0]) == len(body)  # after GCTA's rows


def test_hsq_of_one_component_is_gctas_single_grm_layout(cohort, tmp_path):
    """With one GRM GCTA names it V(G) and writes no "Sum of V(G)/Vp" (nor the empty line)."""
    Ks, Z, Y, _ = cohort
    res = bigmm.fit_components(Ks[:1], Y[:, 0], Z, component_names=["all"], n_variants=[120])
    (path,) = write_hsq(tmp_path, json_safe(res.to_dict()))
    body = [ln.split("\t")[0] for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert body == ["Source", "V(G)", "V(e)", "Vp", "V(G)/Vp", "logL", "logL0", "LRT", "df", "Pval", "n"]
    assert "# bigmm: G = component all (120 variants)" in path.read_text()


def test_hsq_on_the_liability_scale_per_component(cohort, tmp_path):
    """With a prevalence (the run layer adds prevalence, case_fraction, h2_liability to the fit),
    GCTA's V(Gj)/Vp_L lines and Sum of V(G)_L/Vp: each h²_j and its SE times
    K²(1 − K)² / (z² P(1 − P)) (Lee et al. 2011), computed here from scipy's normal quantile."""
    *_, res = cohort
    reml = json_safe(res.to_dict())
    k, p = 0.05, 0.4
    z = math.exp(-0.5 * ndtri(1 - k) ** 2) / math.sqrt(2 * math.pi)
    factor = k * k * (1 - k) ** 2 / (z * z * p * (1 - p))
    for fit in reml["phenotypes"]:
        fit.update(prevalence=k, case_fraction=p, h2_liability=fit["h2"] * factor,
                   h2_liability_se=fit["h2_se"] * factor)
    path = write_hsq(tmp_path, reml)[0]
    body = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    i = body.index("Sum of V(G)/Vp\t" + body[10].split("\t", 1)[1])
    assert body[i + 1].startswith("The estimate of variance explained on the observed scale")
    assert body[i + 2] == "(Proportion of cases in the sample = 0.400000; User-specified disease prevalence = 0.050000)"
    assert [ln.split("\t")[0] for ln in body[i + 3:i + 8]] == ["V(G1)/Vp_L", "V(G2)/Vp_L", "V(G3)/Vp_L", "",
                                                                "Sum of V(G)_L/Vp"]
    for ln, c in zip(body[i + 3:i + 6], res.fits[0].components):
        np.testing.assert_allclose([float(x) for x in ln.split("\t")[1:]], [c.h2 * factor, c.h2_se * factor],
                                   rtol=1e-9, atol=1e-300)
    assert body[i + 8].startswith("logL\t")


def _section(page, sid):
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    return m.group(1) if m else None


def test_report_has_the_components_section_and_figure(cohort, tmp_path):
    """report.html: the section (linked from the navigation bar) with one table per phenotype
    holding each component's h²_j ± SE, share ± SE, enrichment ± SE and LRT p as the fit has
    them, the total h² in the run summary; report/components.png a valid PNG, inline on the page;
    no spectrum, PC or relatedness section (the fit has none)."""
    *_, res = cohort
    outputs(res, tmp_path)
    page = (tmp_path / "report.html").read_text()
    sec = _section(page, "components")
    assert sec is not None and '<a href="#components">variance components</a>' in page
    for f in res.fits:
        assert f"<h3>{f.name} (n = {f.n})</h3>" in sec
        for c in f.components:
            cells = (f"<td>{c.name}</td><td>{c.n_variants:.0f}</td><td>{c.sigma2:.4g} ± {c.sigma2_se:.4g}</td>"
                     f"<td>{c.h2:.4f} ± {c.h2_se:.4f}</td><td>{c.share:.4f} ± {c.share_se:.4f}</td>"
                     f"<td>{c.enrichment:.3f} ± {c.enrichment_se:.3f}</td><td>{c.lrt_pvalue:.3g}</td>")
            assert cells in sec, cells
    summary = _section(page, "summary")
    assert f"t1 {res.fits[0].h2:.4f} ± {res.fits[0].h2_se:.4f}; t2 {res.fits[1].h2:.4f}" in summary
    assert "3: maf_low (120), maf mid (200), maf_high (160)" in summary
    png = (tmp_path / "report" / "components.png").read_bytes()
    im = Image.open(io.BytesIO(png))
    im.verify()
    assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 100
    assert 'id="fig-components" src="data:image/png;base64,' in sec
    for sid in ("spectrum", "relatedness", "profiles", "matrix-free"):
        assert f'<section id="{sid}">' not in page
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["components.png"]


def test_missing_numbers_render_as_a_dash(cohort, tmp_path):
    """A NaN SE (null in reml.json) and enrichments without variant counts show as "—" in the
    section, never "nan" or "None"; results.tsv writes them as ".", the figure is still drawn."""
    *_, res = cohort
    fits = tuple(dataclasses.replace(f, components=tuple(
        dataclasses.replace(c, h2_se=float("nan"), share_se=float("nan"), enrichment=float("nan"),
                            enrichment_se=float("nan"), n_variants=float("nan")) for c in f.components))
        for f in res.fits)
    odd = dataclasses.replace(res, fits=fits, n_variants=None)
    _, _, tsv, _ = outputs(odd, tmp_path)
    sec = _section((tmp_path / "report.html").read_text(), "components")
    c = fits[0].components[0]
    assert f"<td>{c.name}</td><td>—</td><td>{c.sigma2:.4g} ± {c.sigma2_se:.4g}</td><td>{c.h2:.4f} ± —</td>" in sec
    assert "<td>—</td><td>" in sec
    assert not re.search(r"\bnan\b|\bNone\b|\bNA\b", sec, re.I)
    got = pd.read_csv(tsv, sep="\t", na_values=["."], keep_default_na=False)
    assert got["h2_se"].isna().all() and got["enrichment"].isna().all()
    assert Image.open(tmp_path / "report" / "components.png").format == "PNG"


def test_monte_carlo_columns_where_the_fits_have_them(cohort, tmp_path):
    """A matrix-free fit's estimates carry h2_se_mc and sigma2_se_mc, its fits h2_se_mc (the
    total's): results.tsv has them after the component's columns and after the phenotype's
    (h2_total_se_mc), the report a Monte Carlo column. An exact fit: the same columns, all ".",
    and no such column in the report."""
    *_, res = cohort
    reml = json_safe(res.to_dict())
    for i, fit in enumerate(reml["phenotypes"]):
        fit["h2_se_mc"] = 0.001 * (i + 1)
        for j, c in enumerate(fit["components"]):
            c.update(h2_se_mc=0.01 * (j + 1), sigma2_se_mc=None if j == 2 else 0.02 * (j + 1))
    tsv, doc = write_results(tmp_path, reml, {})
    got = pd.read_csv(tsv, sep="\t", na_values=["."], keep_default_na=False)
    cols = list(got.columns)
    assert cols[cols.index("logl_reml_without") + 1:][:2] == ["h2_se_mc", "sigma2_se_mc"]
    assert cols[cols.index("iterations") + 1] == "h2_total_se_mc"
    np.testing.assert_allclose(got["h2_se_mc"], [0.01, 0.02, 0.03] * 2)
    assert got["sigma2_se_mc"].isna().tolist() == [False, False, True] * 2
    np.testing.assert_allclose(got["h2_total_se_mc"], [0.001] * 3 + [0.002] * 3)
    write_report(tmp_path, doc, None, None, None, ReportData())
    sec = _section((tmp_path / "report.html").read_text(), "components")
    assert "SD (Monte Carlo)" in sec and "<td>0.0300</td></tr>" in sec
    exact_reml = json_safe(res.to_dict())
    tsv, doc = write_results(tmp_path, exact_reml, {})
    exact = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    assert list(exact.columns) == cols
    assert (exact[["h2_se_mc", "sigma2_se_mc", "h2_total_se_mc"]] == ".").all().all()
    write_report(tmp_path, doc, None, None, None, ReportData())
    assert "Monte Carlo" not in _section((tmp_path / "report.html").read_text(), "components")


def test_single_component_outputs_have_no_components_parts(tmp_path):
    """A single-component fit keeps its outputs: results.tsv one row per phenotype with the fits
    table's columns, the .hsq's V(G) rows, no components section, figure or summary rows, and the
    run's n_variants in results.json."""
    rng = np.random.default_rng(3)
    n, p = 100, 300
    X = rng.normal(size=(n, p))
    y = X @ rng.normal(0, math.sqrt(0.5 / p), p) + rng.normal(0, 0.7, n)
    fit = bigmm.fit_reml(bigmm.exact_spectrum(X @ X.T / p), y)
    reml = json_safe(fit.to_dict())
    tsv, doc = write_results(tmp_path, reml, {"n_variants": 300})
    assert doc["n_variants"] == 300 and "n_variants_kept" not in doc
    assert doc == results_document(reml, {"n_variants": 300})
    header = tsv.read_text().splitlines()[0].split("\t")
    assert header == ["phenotype", *TABLE_COLUMNS, "beta_intercept", "se_intercept"]
    (path,) = write_hsq(tmp_path, reml)
    assert [ln.split("\t")[0] for ln in path.read_text().splitlines()[:5]] == ["Source", "V(G)", "V(e)", "Vp",
                                                                              "V(G)/Vp"]
    write_report(tmp_path, doc, None, None, None, ReportData())
    page = (tmp_path / "report.html").read_text()
    assert 'id="components"' not in page and "variance components" not in page
    assert not (tmp_path / "report" / "components.png").exists()


def test_hsq_without_a_log_likelihood_says_na(cohort, tmp_path):
    """A fit that does not evaluate ℓ_R (the matrix-free one: logl_reml, lrt_stat, lrt_pvalue
    null) writes NA for logL, LRT and Pval, as R reads a missing value, and says why; its other
    rows keep the fit's numbers."""
    *_, res = cohort
    reml = json_safe(res.to_dict())
    for fit in reml["phenotypes"]:
        fit.update(logl_reml=None, lrt_stat=None, lrt_pvalue=None, reml_method="matrix_free_ai_reml")
    text = write_hsq(tmp_path, reml)[0].read_text()
    rows = dict(ln.split("\t", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert rows["logL"] == "NA" and rows["LRT"] == "NA" and rows["Pval"] == "NA" and rows["df"] == "3"
    assert float(rows["V(G1)"].split("\t")[0]) == pytest.approx(res.fits[0].components[0].sigma2, rel=5e-10)
    assert "# bigmm: logL, LRT and Pval NA: this fit (matrix_free_ai_reml) does not evaluate the log-likelihood" in text


def test_hsq_of_a_matrix_free_fit_gives_the_monte_carlo_sds_of_logl_and_lrt(cohort, tmp_path):
    """A matrix-free fit's logL and LRT (stochastic log det V) come with their Monte Carlo SDs in a
    comment, results.tsv with the columns logl_reml_se_mc, logl_ml_se_mc, lrt_all_stat_se_mc and,
    per component, lrt_stat_se_mc; an exact fit has neither the comment nor numbers there."""
    *_, res = cohort
    reml = json_safe(res.to_dict())
    exact_text = write_hsq(tmp_path, reml)[0].read_text()
    assert "Monte Carlo" not in exact_text
    for fit in reml["phenotypes"]:
        fit.update(reml_method="matrix_free_ai_reml", logl_reml_se_mc=0.25, logl_ml_se_mc=0.3, lrt_stat_se_mc=0.5)
        for c in fit["components"]:
            c["lrt_stat_se_mc"] = 0.75
    text = write_hsq(tmp_path, reml)[0].read_text()
    rows = dict(ln.split("\t", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert math.isfinite(float(rows["logL"])) and math.isfinite(float(rows["LRT"]))
    assert "# bigmm: logL and LRT are Monte Carlo estimates (log det V by stochastic Lanczos quadrature with " \
           "random probes): SD 0.25 for logL, 0.5 for LRT; logL0 is exact" in text
    tsv, _ = write_results(tmp_path, reml, {})
    got = pd.read_csv(tsv, sep="\t", na_values=["."], keep_default_na=False)
    assert (got["lrt_stat_se_mc"] == 0.75).all() and (got["logl_reml_se_mc"] == 0.25).all()
    assert (got["logl_ml_se_mc"] == 0.3).all() and (got["lrt_all_stat_se_mc"] == 0.5).all()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (scripts/test.sh "
                                                             "installs it as root: apt-get install -y chromium)")
def test_components_page_renders_in_chromium(cohort, tmp_path):
    """The page of a several-component run in a real browser: the components figure loads (the
    page's own script marks each image once loaded, naturalWidth > 0) and the section is there."""
    *_, res = cohort
    outputs(res, tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([shutil.which("chromium"), *flags, f"--user-data-dir={profile}", "--dump-dom",
                              (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    imgs = re.findall(r'<img id="fig-([a-z0-9_]+)"[^>]*?data-loaded="(yes|no)"', dom)
    assert imgs == [("components", "yes")]
    assert '<section id="components">' in dom
