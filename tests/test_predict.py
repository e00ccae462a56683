"""Predictions (BLUP, SNP effects, scores), VCF Zarr input and peer-compatible files."""

import gzip
import json

import numpy as np
import pytest
from conftest import random_genotypes
from reference import grm_reference, standardize_reference

import bigmm
from bigmm.passes import GrmOperator
from bigmm.blup import genetic_values, match_alleles, score, snp_effects
from bigmm.reml import fit_rotated, rotate


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    rng = np.random.default_rng(21)
    n, p = 240, 700
    G = random_genotypes(rng, n, p, missing=0.02)
    d = tmp_path_factory.mktemp("pred")
    store = bigmm.create_store(d / "g.zarr", G, chunks=(64, 128))
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    X, kept = standardize_reference(G, "gcta")
    K = X @ X.T / X.shape[1]
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = Z @ [1.0, 0.4] + X @ rng.normal(size=X.shape[1]) * np.sqrt(0.6 / X.shape[1]) + 0.6 * rng.normal(size=n)
    Y = np.column_stack([y, y + 0.3 * rng.normal(size=n)])
    Y[rng.choice(n, 30, replace=False), 1] = np.nan
    return G, store, std, X, kept, K, Z, Y


def dense_blup(K, y, Z, sg, se):
    """ĝ = σ²_g K_{·o} V_oo⁻¹ (y_o − Z_o ω̂) for every sample, by dense algebra."""
    o = ~np.isnan(y)
    V = sg * K[np.ix_(o, o)] + se * np.eye(o.sum())
    Vi = np.linalg.inv(V)
    Zo = Z[o]
    om = np.linalg.solve(Zo.T @ Vi @ Zo, Zo.T @ Vi @ y[o])
    w = np.zeros(len(y))
    w[o] = Vi @ (y[o] - Zo @ om)
    return sg * K @ w, w


def test_blup_equals_dense_and_X_beta_equals_g(problem):
    G, store, std, X, kept, K, Z, Y = problem
    spec = bigmm.exact_spectrum(K)
    rd = rotate(spec, Y, Z)
    res = fit_rotated(rd)
    b = genetic_values(spec, rd, res)
    # float64 algebra on a well-conditioned V: round-off ~1e-13 relative to |ĝ| ~ 1
    for j, fit in enumerate(res.fits):
        g_ref, w_ref = dense_blup(K, Y[:, j], Z, fit.sigma2_g, fit.sigma2_e)
        np.testing.assert_allclose(b.genetic_values[:, j], g_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.weights[:, j], w_ref, rtol=0, atol=1e-10)
    beta = snp_effects(GrmOperator(store.genotypes, std), b)
    assert np.all(beta[~std.keep] == 0)
    # the identity X β̂ = ĝ on the exact path (docs/math.md, "Predictions"): round-off
    np.testing.assert_allclose(X @ beta[kept], b.genetic_values, rtol=0, atol=1e-10)
    # β̂ = σ²_g / p Xᵀ w, densely
    np.testing.assert_allclose(beta[kept], X.T @ b.weights * b.sigma2_g / X.shape[1], atol=1e-12)


def test_blup_on_reduced_spectrum_equals_dense_reduced_model(problem):
    G, store, std, X, kept, K, Z, Y = problem
    spec = bigmm.exact_spectrum(K).top(40)
    K1 = (spec.U * spec.s) @ spec.U.T + spec.tail * (np.eye(spec.n) - spec.U @ spec.U.T)
    for missing in ("indicator", "subset"):
        rd = rotate(spec, Y, Z, missing=missing)
        res = fit_rotated(rd)
        b = genetic_values(spec, rd, res)
        for j, fit in enumerate(res.fits):
            g_ref, _ = dense_blup(K1, Y[:, j], Z, fit.sigma2_g, fit.sigma2_e)
            np.testing.assert_allclose(b.genetic_values[:, j], g_ref, rtol=0, atol=1e-9)


def test_scores_with_flips_missing_and_ambiguous_variants(problem, tmp_path):
    G, store, std, X, kept, K, Z, Y = problem
    rng = np.random.default_rng(5)
    beta = rng.normal(size=(G.shape[1], 2)) * std.keep[:, None]
    train = store.variant_table()
    p = G.shape[1]
    train["allele1"] = np.array(["A"] * p, dtype=object)
    train["allele2"] = np.array(["G"] * p, dtype=object)
    train["allele2"][5] = "T"  # A/T: strand-ambiguous, dropped
    # target cohort: new samples, variants shuffled, some flipped, some absent
    n2 = 50
    G2 = random_genotypes(rng, n2, p, missing=0.05)
    perm = rng.permutation(p)
    absent = perm[:20]
    present = perm[20:]
    flip = rng.random(present.size) < 0.3
    tgt_cols = G2[:, present].copy()
    tgt = {"id": train["id"][present], "allele1": np.where(flip, "G", "A").astype(object),
           "allele2": np.where(flip, "A", "G").astype(object)}
    tgt["allele2"][present == 5] = "T"
    # a flipped target counts the other allele: its stored count is 2 − g
    stored = np.where(flip[None, :] & (tgt_cols >= 0), 2 - tgt_cols, tgt_cols).astype(np.int8)
    tstore = bigmm.create_store(tmp_path / "t.zarr", stored, chunks=(16, 64),
                                variants={"chrom": ["1"] * present.size, "id": list(tgt["id"]),
                                          "pos": np.arange(present.size), "allele1": list(tgt["allele1"]),
                                          "allele2": list(tgt["allele2"])})
    m = match_alleles(train, tstore.variant_table())
    assert m.counts["missing_in_target"] == 20
    assert m.counts["strand_ambiguous"] == int(5 in present)
    assert m.counts["flipped"] == int(flip[present != 5].sum())
    got = score(tstore.genotypes, m, std, beta, variant_block=37)
    # dense reference: training-oriented genotypes of the target, training standardization
    x = np.zeros((n2, p))
    for c, j in enumerate(present):
        if j == 5 or not std.keep[j]:
            continue
        g = tgt_cols[:, c].astype(float)
        xx = (g - std.center[j]) * std.scale[j]
        xx[tgt_cols[:, c] < 0] = 0.0
        x[:, j] = xx
    np.testing.assert_allclose(got, x @ beta, rtol=0, atol=1e-10)


def test_headerless_gcta_tables(tmp_path):
    from bigmm.io.tables import build_design, read_table

    (tmp_path / "t.phen").write_text("F1 I1 1.5 NA\nF2 I2 2.5 3\nF3 I3 -9 4\n")
    t = read_table(tmp_path / "t.phen")
    assert t.columns == ["1", "2"]
    np.testing.assert_array_equal(t.numeric("1"), [1.5, 2.5, np.nan])
    ids = [(f"F{i}", f"I{i}") for i in range(1, 9)]
    (tmp_path / "t8.phen").write_text("".join(f"F{i} I{i} {i * 1.5}\n" for i in range(1, 9)))
    (tmp_path / "q.qcovar").write_text("".join(f"F{i} I{i} {20 + i * i}\n" for i in range(1, 9)))
    (tmp_path / "d.covar").write_text("".join(f"F{i} I{i} {'MF'[i % 2]}\n" for i in range(1, 9)))
    d = build_design(ids, tmp_path / "t8.phen", ["1"], qcovar_path=tmp_path / "q.qcovar",
                     dcovar_path=tmp_path / "d.covar")
    assert d.covariate_names == ["intercept", "q.qcovar:1", "d.covar:1=M"]
    np.testing.assert_array_equal(d.Z[:2], [[1, 21, 0], [1, 24, 1]])
    plink2 = tmp_path / "p.tsv"
    plink2.write_text("#FID\tIID\tbmi\nF1\tI1\t20\n")
    assert read_table(plink2).columns == ["bmi"]


def test_hsq_and_eigenvec_files(tmp_path, problem):
    from bigmm.pipeline.report import write_hsq, write_plink_pca

    G, store, std, X, kept, K, Z, Y = problem
    spec = bigmm.exact_spectrum(K)
    res = bigmm.fit_reml(spec, Y[:, 0], Z, phenotype_names=["trait"])
    (path,) = write_hsq(tmp_path, bigmm.pipeline.outputs.json_safe(res.to_dict()))
    rows = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in path.read_text().splitlines() if not ln.startswith("#")}
    f = res.fits[0]
    assert float(rows["V(G)"][0]) == pytest.approx(f.sigma2_g, rel=1e-9)
    assert float(rows["V(G)/Vp"][0]) == pytest.approx(f.h2, rel=1e-9)
    assert float(rows["V(G)/Vp"][1]) == pytest.approx(f.h2_se, rel=1e-9)
    assert float(rows["Vp"][0]) == pytest.approx(f.sigma2_g + f.sigma2_e, rel=1e-9)
    # SE(Vp) by the delta method from the information: var(σ²_g + σ²_e)
    assert float(rows["Vp"][1]) ** 2 == pytest.approx(
        f.sigma2_g_se ** 2 + f.sigma2_e_se ** 2 + 2 * f.sigma2_g_sigma2_e_cov, rel=1e-8)
    assert rows["n"][0] == str(f.n)
    ids = store.sample_ids()
    vec, val = write_plink_pca(tmp_path / "pca", ids, spec.U, spec.s, 10)
    # read back as PLINK 2 does: header line #FID IID PC1.., eigenvalues one per line
    lines = vec.read_text().splitlines()
    assert lines[0].split("\t") == ["#FID", "IID"] + [f"PC{i}" for i in range(1, 11)]
    U = np.array([[float(x) for x in ln.split("\t")[2:]] for ln in lines[1:]])
    np.testing.assert_allclose(U, spec.U[:, :10], atol=5e-6)  # 6 significant digits, |u| < 1
    np.testing.assert_allclose(np.loadtxt(val), spec.s[:10], rtol=1e-5)


def _write_vcf(path, G, ids, pos, multi_at=()):
    """A VCF whose ALT allele count is G (-1 missing); multi-allelic rows added at ``multi_at``."""
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=1,length=100000000>",
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(ids)]
    code = {0: "0/0", 1: "0/1", 2: "1/1", -1: "./."}
    for j in range(G.shape[1]):
        if j in multi_at:
            lines.append(f"1\t{pos[j] - 1}\tm{j}\tA\tC,T\t.\tPASS\t.\tGT\t" + "\t".join(["1/2"] * len(ids)))
        lines.append(f"1\t{pos[j]}\trs{j}\tA\tG\t.\tPASS\t.\tGT\t" + "\t".join(code[int(g)] for g in G[:, j]))
    path.write_text("\n".join(lines) + "\n")


def test_vcf_zarr_equals_plink_path(tmp_path):
    pytest.importorskip("bio2zarr")
    import subprocess
    import sys
    from pathlib import Path

    from bigmm.io.vcfzarr import open_vcf_zarr

    rng = np.random.default_rng(8)
    n, p = 60, 150
    G = random_genotypes(rng, n, p, missing=0.03)
    ids = [f"S{i}" for i in range(n)]
    pos = np.arange(1, p + 1) * 100
    _write_vcf(tmp_path / "c.vcf", G, ids, pos, multi_at=(3, 40))
    vcf2zarr = Path(sys.executable).parent / "vcf2zarr"
    subprocess.run([str(vcf2zarr), "convert", str(tmp_path / "c.vcf"), str(tmp_path / "c.vcz")],
                   check=True, capture_output=True)
    vs = open_vcf_zarr(tmp_path / "c.vcz")
    assert vs.skipped == {"multiallelic": 2, "no_alt": 0}
    np.testing.assert_array_equal(np.asarray(vs.genotypes[:, :]), G)
    assert vs.variant_table()["allele1"].tolist() == ["G"] * p  # ALT is counted
    std = bigmm.standardization(bigmm.variant_stats(vs.to_dask()), "gcta")
    K = bigmm.grm(vs.genotypes, std)
    np.testing.assert_allclose(K, grm_reference(G, "gcta"), atol=1e-10)
    # the same genotypes through a cohort store (the PLINK path) give the same REML
    ps = bigmm.create_store(tmp_path / "p.zarr", G)
    std2 = bigmm.standardization(bigmm.variant_stats(ps.to_dask()), "gcta")
    K2 = bigmm.grm(ps.genotypes, std2)
    y = rng.normal(size=n) + K @ rng.normal(size=n) * 0.1
    a = bigmm.fit_reml(bigmm.exact_spectrum(K), y).fits[0]
    b = bigmm.fit_reml(bigmm.exact_spectrum(K2), y).fits[0]
    assert a.h2 == pytest.approx(b.h2, abs=1e-12)
