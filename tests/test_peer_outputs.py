"""Outputs in the peers' conventions: GCTA's .hsq (logL, logL0, LRT, the liability row) and
one .hsq per phenotype whatever the names."""

import math

import numpy as np
import pytest
from scipy.special import ndtri

import bigmm
from bigmm.pipeline.outputs import json_safe
from bigmm.pipeline.report import hsq_file_names, write_hsq


@pytest.fixture(scope="module")
def small():
    """n = 150 samples, p = 400 variants, an intercept and two covariates; a second phenotype
    with 20 missing values (the indicator path: its fit is on the 130 observed samples)."""
    rng = np.random.default_rng(5)
    n, p = 150, 400
    f = rng.uniform(0.1, 0.5, p)
    G = rng.binomial(2, f, size=(n, p)).astype(float)
    X = (G - 2 * f) / np.sqrt(2 * f * (1 - f))
    K = X @ X.T / p
    Z = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    y = Z @ [3.0, 0.5, -0.4] + X @ rng.normal(size=p) * np.sqrt(2.0 / p) + 1.3 * rng.normal(size=n)
    Y = np.column_stack([y, 4.0 * y[::-1] + rng.normal(size=n)])
    Y[rng.choice(n, 20, replace=False), 1] = np.nan
    res = bigmm.fit_reml(bigmm.exact_spectrum(K), Y, Z, phenotype_names=["t1", "t2"],
                         covariate_names=["intercept", "age", "sex"])
    return K, Z, Y, res


def read_hsq(path):
    return {ln.split("\t")[0]: ln.split("\t")[1:] for ln in path.read_text().splitlines()
            if ln and not ln.startswith("#")}


def gcta_logl_dense(K, Z, y, sg, se):
    """GCTA's REML logL (est_hsq.cpp reml_iteration): −½ [log det V + log det(ZᵀV⁻¹Z) + yᵀPy],
    V = σ²_g K + σ²_e I, P = V⁻¹ − V⁻¹Z(ZᵀV⁻¹Z)⁻¹ZᵀV⁻¹, all dense."""
    V = sg * K + se * np.eye(len(y))
    Vi = np.linalg.inv(V)
    A = Z.T @ Vi @ Z
    P = Vi - Vi @ Z @ np.linalg.solve(A, Z.T @ Vi)
    return -0.5 * (np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + y @ P @ y)


def test_hsq_logl_is_gctas(small, tmp_path):
    """The .hsq's logL is GCTA's formula at the fitted variances; logL0 its value at the REML
    fit of the model without K (σ̂²_e = yᵀP₀y / (n − c)); LRT = 2 (logL − logL0). Before, the
    file carried bigmm's logl_reml, (n − c)/2 · log 2π below GCTA's."""
    K, Z, Y, res = small
    paths = write_hsq(tmp_path, json_safe(res.to_dict()))
    for j, (fit, path) in enumerate(zip(res.fits, paths)):
        o = ~np.isnan(Y[:, j])
        Ko, Zo, yo = K[np.ix_(o, o)], Z[o], Y[o, j]
        n, c = int(o.sum()), Z.shape[1]
        rows = read_hsq(path)
        ref = gcta_logl_dense(Ko, Zo, yo, fit.sigma2_g, fit.sigma2_e)
        # the spectral and the dense evaluation agree to float64 round-off of an eigendecomposition
        # of a 150 x 150 matrix (~1e-10 relative); the file has 10 significant digits
        assert float(rows["logL"][0]) == pytest.approx(ref, rel=1e-8, abs=1e-8)
        resid = yo - Zo @ np.linalg.lstsq(Zo, yo, rcond=None)[0]
        s0 = resid @ resid / (n - c)
        ref0 = gcta_logl_dense(Ko, Zo, yo, 0.0, s0)
        assert float(rows["logL0"][0]) == pytest.approx(ref0, rel=1e-8, abs=1e-8)
        assert float(rows["LRT"][0]) == pytest.approx(2 * (ref - ref0), rel=1e-6, abs=1e-8)
        # the conversion from results.json's logl_reml is the constant stated in docs/math.md
        assert float(rows["logL"][0]) - fit.logl_reml == pytest.approx(0.5 * (n - c) * math.log(2 * math.pi))
        assert rows["n"][0] == str(n)


def lee_liability(h2, K, P):
    """Lee et al. (2011) eq. 23: h²_l = h²_o K²(1−K)² / (z² P(1−P)), z = φ(Φ⁻¹(1 − K))."""
    t = ndtri(1 - K)
    z = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    return h2 * K ** 2 * (1 - K) ** 2 / (z ** 2 * P * (1 - P))


def test_hsq_has_gctas_liability_row(small, tmp_path):
    """With a prevalence, GCTA's two lines and ``V(G)/Vp_L  value  SE`` follow V(G)/Vp and
    precede logL (GCTA's order); value and SE are Lee et al.'s transform of h² and its SE."""
    K, Z, Y, res = small
    reml = json_safe(res.to_dict())
    fit = reml["phenotypes"][0]
    hl, hl_se = bigmm.reml.liability_h2(fit["h2"], fit["h2_se"], 0.01, 0.4)
    fit.update(prevalence=0.01, case_fraction=0.4, h2_liability=hl, h2_liability_se=hl_se)
    path, plain = write_hsq(tmp_path, reml)
    lines = [ln.split("\t") for ln in path.read_text().splitlines()]
    names = [ln[0] for ln in lines]
    i = names.index("V(G)/Vp_L")
    assert names[i - 3] == "V(G)/Vp" and names[i + 1] == "logL"
    assert names[i - 2] == ("The estimate of variance explained on the observed scale is transformed to that "
                            "on the underlying scale:")
    assert names[i - 1] == "(Proportion of cases in the sample = 0.400000; User-specified disease prevalence = 0.010000)"
    assert float(lines[i][1]) == pytest.approx(lee_liability(res.fits[0].h2, 0.01, 0.4), rel=1e-9)
    assert float(lines[i][2]) == pytest.approx(lee_liability(res.fits[0].h2_se, 0.01, 0.4), rel=1e-9)
    assert "V(G)/Vp_L" not in plain.read_text()  # no prevalence, no liability row


def test_names_that_sanitize_alike_get_their_own_hsq(small, tmp_path):
    """``bmi/adj`` and ``bmi_adj`` (and ``BMI_adj``, the same file on a case-insensitive file
    system) each get their own .hsq with their own numbers; a name that needs no change and
    clashes with none keeps its plain file name. Before, both wrote hsq/bmi_adj.hsq."""
    K, Z, Y, res = small
    names = ["bmi/adj", "bmi_adj", "BMI_adj", "height", "waist hip"]
    files = hsq_file_names(names)
    assert len({f.lower() for f in files.values()}) == len(names)
    assert files["height"] == "height.hsq" and files["waist hip"] == "waist_hip.hsq"
    assert files["bmi/adj"].startswith("bmi_adj-") and files["bmi/adj"].endswith(".hsq")
    assert hsq_file_names(list(reversed(names))) == files  # deterministic, order-independent
    reml = json_safe(res.to_dict())
    fits = []
    for k, nm in enumerate(names[:3]):
        fit = dict(reml["phenotypes"][0], name=nm, h2=0.1 * (k + 1))
        fits.append(fit)
    paths = write_hsq(tmp_path, {**reml, "phenotypes": fits})
    assert len(set(paths)) == 3 and all(p.exists() for p in paths)
    for k, p in enumerate(paths):
        assert float(read_hsq(p)["V(G)/Vp"][0]) == pytest.approx(0.1 * (k + 1))


def test_profile_is_on_the_scale_of_logl_reml(small):
    """``notes.profiles`` (results.json, the report's profile plot) holds ℓ_R(h²) in the
    convention of ``logl_reml``: at each grid point Harville's restricted log-likelihood
    profiled over σ² (dense: V = σ̂² (h²K + (1 − h²) I), σ̂² = yᵀP_H y / (n − c)), and its
    largest grid value is logl_reml to within the grid's step. Before, it was the fit's
    internal unit-scale value, (n − c) log a away (a the phenotype's residual SD)."""
    K, Z, Y, res = small
    n, c = K.shape[0], Z.shape[1]
    y = Y[:, 0]
    prof = res.notes["profiles"]["t1"]
    h = np.asarray(prof["h2"])
    ll = np.asarray(prof["logl_reml"], dtype=float)
    for i in (0, 17, 50, 83):
        H = h[i] * K + (1 - h[i]) * np.eye(n)
        Hi = np.linalg.inv(H)
        PH = Hi - Hi @ Z @ np.linalg.solve(Z.T @ Hi @ Z, Z.T @ Hi)
        s2 = y @ PH @ y / (n - c)
        ref = gcta_logl_dense(K, Z, y, h[i] * s2, (1 - h[i]) * s2) - 0.5 * (n - c) * math.log(2 * math.pi)
        assert ll[i] == pytest.approx(ref, rel=1e-9, abs=1e-8), h[i]
    fit = res.fits[0]
    # the optimum is refined to |Δh²| < 1e-14; a grid point at most half a step (Δ/2) from ĥ²
    # is below the maximum by at most ½ |ℓ''| (Δ/2)², |ℓ''| = 1 / h2_se_curvature² (x 2 for
    # the change of curvature over the step)
    step = h[1] - h[0]
    assert ll.max() <= fit.logl_reml + 1e-9
    assert fit.logl_reml - ll.max() <= (step / 2) ** 2 / fit.h2_se_curvature ** 2


def test_run_outputs_in_peer_conventions(tmp_path, caplog):
    """One run (exact path, a binary trait with a prevalence, two names that sanitize alike,
    an all-heterozygous variant, an extract list):
    - each phenotype has its own .hsq, named in results.json (``hsq_file``); before, one was lost;
    - the .hsq's V(G)/Vp_L is Lee et al.'s transform of results.json's h² at the case fraction
      of the analysed samples, and logL is GCTA's (logl_reml + (n − c)/2 log 2π);
    - ``variant_filters`` has the all-heterozygous entry the log counts; ``variants_dropped``
      names the extract selection once (``not_in_extract``), as the log does."""
    import json
    import logging

    from bed_reader import to_bed

    from bigmm.pipeline.config import parse_config

    rng = np.random.default_rng(11)
    n, p = 120, 300
    f = rng.uniform(0.1, 0.5, p)
    G = rng.binomial(2, f, size=(n, p)).astype(np.int8)
    G[:, 7] = 1  # every call heterozygous
    fid, iid, vid = [f"F{i}" for i in range(n)], [f"I{i}" for i in range(n)], [f"v{j}" for j in range(p)]
    to_bed(tmp_path / "g.bed", G, properties={"fid": fid, "iid": iid, "chromosome": ["1"] * p, "sid": vid,
                                              "bp_position": list(range(1, p + 1))}, count_A1=True)
    (tmp_path / "extract.txt").write_text("".join(f"v{j}\n" for j in range(p) if j % 10))  # 30 not extracted
    Xs = (G[:, 8:] - G[:, 8:].mean(0)) / G[:, 8:].std(0)
    liab = Xs @ rng.normal(size=p - 8) / math.sqrt(p - 8) + rng.normal(size=n)
    y1 = np.where(liab > np.quantile(liab, 0.7), 1, 0)
    y2 = np.where(liab + rng.normal(size=n) > 0.5, 1, 0)
    (tmp_path / "pheno.tsv").write_text("FID\tIID\tbmi/adj\tbmi_adj\n" + "".join(
        f"{a}\t{b}\t{u}\t{v}\n" for a, b, u, v in zip(fid, iid, y1, y2)))
    cfg = parse_config({"genotypes": {"plink": "g"}, "phenotypes": {"file": "pheno.tsv", "prevalence": 0.05},
                        "variants": {"extract": "extract.txt"}, "output": "out",
                        "cluster": {"workers": 1, "threads_per_worker": 1}}, base=tmp_path)
    with caplog.at_level(logging.INFO, logger="bigmm"):
        out = bigmm.pipeline.run(cfg).results_json.parent
    doc = json.loads((out / "results.json").read_text())
    files = [ph["hsq_file"] for ph in doc["phenotypes"]]
    assert len(set(files)) == 2 and sorted(files) == sorted(f"hsq/{p.name}" for p in (out / "hsq").glob("*.hsq"))
    for ph, col in zip(doc["phenotypes"], (y1, y2)):
        rows = read_hsq(out / ph["hsq_file"])
        assert float(rows["V(G)/Vp"][0]) == pytest.approx(ph["h2"], rel=1e-9)
        P = float(np.mean(col))
        assert float(rows["V(G)/Vp_L"][0]) == pytest.approx(lee_liability(ph["h2"], 0.05, P), rel=1e-9)
        assert float(rows["V(G)/Vp_L"][1]) == pytest.approx(lee_liability(ph["h2_se"], 0.05, P), rel=1e-9)
        c = len(ph["fixed_effects"])
        assert float(rows["logL"][0]) == pytest.approx(ph["logl_reml"] + 0.5 * (n - c) * math.log(2 * math.pi),
                                                       rel=1e-9)
    vf, dropped = doc["variant_filters"], doc["variants_dropped"]
    assert vf["all_heterozygous"]["dropped"] == dropped["all_heterozygous"] == 1
    assert vf["extract"]["dropped"] == dropped["not_in_extract"] == 30
    assert "not_in_variant_list" not in dropped
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("variant filters:")]
    assert logged and "all_heterozygous always (every call heterozygous: zero variance): 1 dropped" in logged[0]
