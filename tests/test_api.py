"""The Python API as a user meets it: short reprs, pandas tables, BLUP in one call, xarray
datasets in the VCF Zarr layout, consistent defaults and the walkthrough example."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_genotypes
from reference import grm_reference

import bigmm
from bigmm.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    """n = 150 samples, p = 600 variants, two traits (one with missing values), age + sex."""
    rng = np.random.default_rng(7)
    G = random_genotypes(rng, 150, 600, missing=0.01)
    std = bigmm.standardization(bigmm.variant_stats(G), min_maf=0.01)
    K = bigmm.grm(G, std)
    spec = bigmm.exact_spectrum(K)
    Z = np.column_stack([np.ones(150), rng.normal(size=150), rng.integers(0, 2, 150)])
    X = bigmm.standardized(G, std).compute()
    g = X @ rng.normal(size=X.shape[1]) / np.sqrt(std.n_kept)
    Y = np.column_stack([g + Z @ [1.0, 0.3, -0.5] + rng.normal(size=150),
                         0.5 * g + rng.normal(size=150)])
    Y[rng.random(150) < 0.1, 1] = np.nan
    fit = bigmm.fit_reml(spec, Y, Z, phenotype_names=["t1", "t2"], covariate_names=["intercept", "age", "sex"])
    return G, std, K, spec, Z, Y, fit


def test_reprs_are_short_and_informative(small):
    G, std, K, spec, Z, Y, fit = small
    cases = [
        (bigmm.variant_stats(G), ("n_samples=150", "n_variants=600")),
        (std, ("of 600 variants kept",)),
        (spec, ("n=150", "k=150", "exact")),
        (spec.top(10), ("k=10", "tail eigenvalue")),
        (fit, ("2 phenotypes", "t1: n=150", f"h2={fit['t1'].h2:.4f}", "t2: n=")),
        (fit["t1"], ("'t1'", f"h2={fit['t1'].h2:.4f}", "age=")),
        (bigmm.predict(fit, spec), ("2 phenotypes", "150 samples")),
    ]
    for obj, facts in cases:
        text = repr(obj)
        # the dataclass reprs printed every array (tens of thousands of characters) and the
        # 101-point REML profile; a summary fits in a few lines
        assert len(text) < 600, (type(obj).__name__, len(text))
        for fact in facts:
            assert fact in text, (type(obj).__name__, fact, text)
    html = fit._repr_html_()
    assert html.count("<tr>") == 3 and "t2" in html
    assert "<table>" in spec._repr_html_()


def test_to_pandas_has_the_columns_and_values_of_results_tsv(small, tmp_path):
    pd = pytest.importorskip("pandas")
    from bigmm.pipeline.report import write_results

    fit = small[-1]
    df = fit.to_pandas()
    assert list(df["phenotype"]) == ["t1", "t2"]
    write_results(tmp_path, fit.to_dict(), {})
    tsv = pd.read_csv(tmp_path / "results.tsv", sep="\t")
    assert list(df.columns) == list(tsv.columns)
    num = [c for c in df.columns if pd.api.types.is_numeric_dtype(tsv[c])]
    assert {"h2", "sigma2_g", "beta_age", "se_sex"} <= set(num)
    # results.tsv keeps 10 significant digits
    np.testing.assert_allclose(df[num].to_numpy(float), tsv[num].to_numpy(float), rtol=1e-9)


def test_fixed_effects_table_equals_dense_gls(small):
    """The long table's estimates and SEs are GLS at the REML variances: ω̂ = (ZᵀV⁻¹Z)⁻¹ZᵀV⁻¹y,
    Cov(ω̂) = (ZᵀV⁻¹Z)⁻¹, computed densely here from K (observed samples of each trait)."""
    pytest.importorskip("pandas")
    G, std, K, spec, Z, Y, fit = small
    tab = fit.fixed_effects_table()
    assert list(tab.columns) == ["phenotype", "effect", "estimate", "se"] and len(tab) == 6
    assert tab.equals(fit.to_pandas(kind="fixed"))
    for j, name in enumerate(["t1", "t2"]):
        f = fit[name]
        o = ~np.isnan(Y[:, j])
        V = f.sigma2_g * K[np.ix_(o, o)] + f.sigma2_e * np.eye(o.sum())
        Vi_Z = np.linalg.solve(V, Z[o])
        C = np.linalg.inv(Z[o].T @ Vi_Z)
        omega = C @ (Vi_Z.T @ Y[o, j])
        rows = tab[tab["phenotype"] == name]
        assert list(rows["effect"]) == ["intercept", "age", "sex"]
        # GLS at the same variances, by a Cholesky-free dense solve: round-off of n = 150 solves
        np.testing.assert_allclose(rows["estimate"], omega, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(rows["se"], np.sqrt(np.diag(C)), rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        fit.to_pandas(kind="wide")


def test_predict_gives_blup_and_snp_effects_in_one_call(small):
    """ĝ = σ²_g K V⁻¹ (y − Zω̂) over the observed samples (dense, here), for every sample; and
    X β̂ = ĝ for the SNP effects (the exact GRM)."""
    G, std, K, spec, Z, Y, fit = small
    b = bigmm.predict(fit, spec, genotypes=G, std=std)
    assert b.genetic_values.shape == (150, 2) and b.snp_effects.shape == (600, 2)
    for j, name in enumerate(["t1", "t2"]):
        f = fit[name]
        o = ~np.isnan(Y[:, j])
        V = f.sigma2_g * K[np.ix_(o, o)] + f.sigma2_e * np.eye(o.sum())
        omega = np.array([fe.estimate for fe in f.fixed_effects])
        w = np.linalg.solve(V, Y[o, j] - Z[o] @ omega)
        g_ref = f.sigma2_g * K[:, o] @ w
        # dense solve vs the spectral one: both at float64 round-off for a well-conditioned V
        np.testing.assert_allclose(b.genetic_values[:, j], g_ref, rtol=1e-7, atol=1e-10)
    X = bigmm.standardized(G, std).compute()
    np.testing.assert_allclose(X @ b.snp_effects, b.genetic_values, rtol=1e-8, atol=1e-10)
    same = bigmm.predict(fit, spec)
    np.testing.assert_array_equal(same.genetic_values, b.genetic_values)
    assert same.snp_effects is None
    ids = [(f"F{i}", f"I{i}") for i in range(150)]
    if pytest.importorskip("pandas"):
        df = b.to_pandas(ids)
        assert list(df.columns) == ["FID", "IID", "t1", "t2"] and df["IID"][3] == "I3"
    with pytest.raises(InputError, match="std"):
        bigmm.predict(fit, spec, genotypes=G)


def _vcf_dataset(xr, G, chunks=None, sgkit_contigs=False):
    """G (samples x variants, -1 missing) as a VCF Zarr-layout Dataset; heterozygous calls 0|1."""
    n, p = G.shape
    gt = np.zeros((p, n, 2), np.int8)
    gt[..., 0] = (G.T >= 1)
    gt[..., 1] = (G.T == 2)
    gt[G.T < 0] = -1
    alleles = np.array([["A", "G"]] * p)
    alleles[::7] = ["C", "T"]
    vars_ = {"call_genotype": (("variants", "samples", "ploidy"), gt),
             "sample_id": ("samples", np.array([f"S{i}" for i in range(n)])),
             "variant_contig": ("variants", np.zeros(p, np.int64)),
             "variant_position": ("variants", np.arange(p) * 10 + 1),
             "variant_allele": (("variants", "alleles"), alleles)}
    attrs = {}
    if sgkit_contigs:
        attrs["contigs"] = ["1"]
    else:
        vars_["contig_id"] = ("contigs", np.array(["1"]))
    ds = xr.Dataset(vars_, attrs=attrs)
    return ds.chunk({"variants": chunks[0], "samples": chunks[1]}) if chunks else ds


@pytest.mark.filterwarnings("ignore::UserWarning")  # zarr: string dtypes and consolidated metadata in v3
def test_xarray_dataset_is_taken_directly(small, tmp_path):
    xr = pytest.importorskip("xarray")
    G = small[0]
    std = bigmm.standardization(bigmm.variant_stats(G))
    K_ref = grm_reference(G, "gcta")
    for ds in (_vcf_dataset(xr, G), _vcf_dataset(xr, G, chunks=(128, 64), sgkit_contigs=True)):
        cohort = bigmm.from_xarray(ds)
        assert cohort.n_samples == 150 and cohort.n_variants == 600
        assert cohort.sample_ids()[:2] == [("S0", "S0"), ("S1", "S1")]
        table = cohort.variant_table()
        assert list(table["allele1"][:2]) == ["T", "G"] and table["id"][1] == "1:11:A:G"
        st = bigmm.variant_stats(ds)  # the Dataset itself
        np.testing.assert_array_equal(st.allele_sum, bigmm.variant_stats(G).allele_sum)
        K = bigmm.grm(ds, std)
        # float64 products over a few variant chunks against the dense reference: round-off
        np.testing.assert_allclose(K, K_ref, atol=1e-10)
        op = bigmm.GrmOperator(ds, std)
        np.testing.assert_allclose(op.apply(np.eye(150)[:, :2])[0], K_ref[:, :2], atol=1e-10)
    # a store on disk opened by xarray (Dask-backed) equals bigmm's own VCF Zarr reader
    _vcf_dataset(xr, G, chunks=(256, 100)).to_zarr(tmp_path / "c.vcz", zarr_format=3)
    opened = xr.open_zarr(tmp_path / "c.vcz")
    a = bigmm.from_xarray(opened)
    b = bigmm.open_vcf_zarr(tmp_path / "c.vcz")
    np.testing.assert_array_equal(np.asarray(a.genotypes[:, :]), np.asarray(b.genotypes[:, :]))
    assert "c.vcz" in repr(a)
    with pytest.raises(InputError, match="call_genotype"):
        bigmm.from_xarray(xr.Dataset({"x": ("a", np.zeros(3))}))


def test_overwrite_is_named_and_precision_rule_is_one(tmp_path):
    from bigmm.genotypes import LIBRARY_DTYPE, RUN_DTYPE
    from bigmm.pipeline.config import GrmConfig, RemlConfig, SpectrumConfig

    bigmm.simulate(20, 30, seed=1, out_plink=tmp_path / "c")
    bigmm.ingest_plink(tmp_path / "c", tmp_path / "c.zarr")
    with pytest.raises(InputError, match="overwrite=True"):
        bigmm.ingest_plink(tmp_path / "c", tmp_path / "c.zarr")
    proc = subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", "ingest", "--bfile", str(tmp_path / "c"),
                           "--out", str(tmp_path / "c.zarr")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--force" in proc.stderr and "overwrite=True" not in proc.stderr
    assert GrmConfig().dtype == SpectrumConfig().dtype == RemlConfig().dtype == RUN_DTYPE
    import inspect

    for fn in (bigmm.grm, bigmm.GrmOperator.__init__):
        assert inspect.signature(fn).parameters["dtype"].default == LIBRARY_DTYPE


def test_api_walkthrough_example_runs(tmp_path):
    """examples/api_walkthrough.py end to end (own LocalCluster, small sizes); it leaves nothing in
    the temporary folder (its worker processes import the file too: none makes a folder)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "api_walkthrough.py"), "--small"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fact in ("RemlResult(", "Spectrum(", "fixed effects", "BLUP", "accuracy"):
        assert fact in proc.stdout, fact
    assert not list(tmp_path.glob("bigmm-walkthrough-*"))
