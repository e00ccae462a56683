"""The contract both REML result types share (bigmm.results): spectral REML's RemlResult and
matrix-free REML's MatrixFreeResult have the same table columns for the fields they share, the
documented to_pandas columns, the same reprs, and to_dict / from_dict round-trips."""

import json
import math

import numpy as np
import pytest

import bigmm
from bigmm.mfreml import MatrixFreeFit, MatrixFreeResult, fit_matrix_free
from bigmm.passes import DenseOperator
from bigmm.results import MATRIX_FREE_COLUMNS, TABLE_COLUMNS, FitsResult, PhenotypeFit, RemlResult

COVARIATES = ["intercept", "age"]
NAMES = ["height", "weight"]


@pytest.fixture(scope="module")
def fits():
    """A spectral and a matrix-free fit of the same two phenotypes (one with missing values)."""
    rng = np.random.default_rng(3)
    n = 120
    G = rng.binomial(2, 0.3, size=(n, 400)).astype(np.int8)
    K = bigmm.grm(G, bigmm.standardization(bigmm.variant_stats(G)))
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    Y = rng.normal(size=(n, 2)) + 0.1 * (G[:, :40] - 0.6) @ rng.normal(size=(40, 1))
    Y[:7, 1] = np.nan
    kw = dict(phenotype_names=NAMES, covariate_names=COVARIATES)
    spectral = bigmm.fit_reml(bigmm.exact_spectrum(K), Y, Z, **kw)
    mf = fit_matrix_free(DenseOperator(K), Y, Z, probes=4, max_steps=30, seed=5, **kw)
    return {"spectral": spectral, "matrix_free": mf}


def documented_columns(fit_columns):
    """The fits table as documented: phenotype, the fit type's columns, then beta_/se_ per effect."""
    return ["phenotype", *fit_columns] + [f"{p}_{c}" for c in COVARIATES for p in ("beta", "se")]


def test_both_result_types_derive_from_the_shared_base(fits):
    assert isinstance(fits["spectral"], RemlResult) and isinstance(fits["matrix_free"], MatrixFreeResult)
    for res in fits.values():
        assert isinstance(res, FitsResult)
    assert all(type(f) is PhenotypeFit for f in fits["spectral"].fits)
    assert all(type(f) is MatrixFreeFit for f in fits["matrix_free"].fits)
    # the public names still lead to the same objects
    from bigmm.reml import TABLE_COLUMNS as reml_columns, FixedEffect, PhenotypeFit as reml_fit
    from bigmm.reml import RemlResult as reml_result
    assert bigmm.RemlResult is RemlResult is reml_result and bigmm.PhenotypeFit is PhenotypeFit is reml_fit
    assert reml_columns is TABLE_COLUMNS and FixedEffect is bigmm.results.FixedEffect


def test_to_pandas_has_the_documented_columns_and_the_fits_values(fits):
    expected = {"spectral": TABLE_COLUMNS, "matrix_free": TABLE_COLUMNS + MATRIX_FREE_COLUMNS}
    for kind, res in fits.items():
        df = res.to_pandas()
        assert list(df.columns) == documented_columns(expected[kind]), kind
        assert list(df["phenotype"]) == NAMES
        for row, f in zip(df.to_dict("records"), res.fits):
            for col in expected[kind]:
                v = getattr(f, col)
                assert row[col] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(row[col])), col
            for fe in f.fixed_effects:
                assert (row[f"beta_{fe.name}"], row[f"se_{fe.name}"]) == (fe.estimate, fe.se)
        fixed = res.to_pandas(kind="fixed")
        assert list(fixed.columns) == ["phenotype", "effect", "estimate", "se"]
        assert fixed[["phenotype", "effect"]].values.tolist() == [[p, c] for p in NAMES for c in COVARIATES]
        assert fixed.equals(res.fixed_effects_table())
        with pytest.raises(ValueError, match="'phenotypes' or 'fixed'"):
            res.to_pandas(kind="wide")


def test_shared_fields_give_the_same_table_columns(fits):
    s, m = (list(fits[k].to_pandas().columns) for k in ("spectral", "matrix_free"))
    shared = len(TABLE_COLUMNS) + 1
    assert m[:shared] == s[:shared]  # phenotype and the common columns, in the same order
    assert m[-2 * len(COVARIATES):] == s[-2 * len(COVARIATES):]  # then the fixed effects
    assert m[shared:-2 * len(COVARIATES)] == list(MATRIX_FREE_COLUMNS)  # the matrix-free ones between


def _same(a, b):
    """Equal, with NaN equal to NaN (dataclass equality says NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("kind", ["spectral", "matrix_free"])
def test_from_dict_round_trips_through_json(fits, kind):
    res = fits[kind]
    text = json.dumps(res.to_dict())  # as reml.json stores it (NaN written as NaN)
    back = type(res).from_dict(json.loads(text))
    assert type(back) is type(res)
    assert json.dumps(back.to_dict()) == text
    for f, g in zip(res.fits, back.fits):
        assert type(g) is type(f)
        for name in f.__dataclass_fields__:
            assert _same(getattr(g, name), getattr(f, name)), name
    assert back["weight"].n == res["weight"].n == 113
    assert repr(back) == repr(res) and back._repr_html_() == res._repr_html_()
    assert back.to_pandas().equals(res.to_pandas())
    if kind == "matrix_free":
        assert back.phenotype_names == res.phenotype_names == tuple(NAMES)
        assert back.covariate_names == tuple(COVARIATES)
        assert (back.n, back.probes, back.seed, back.lanczos_steps) == (res.n, 4, 5, res.lanczos_steps)
        assert back.models == ()  # the quadrature models are not stored


@pytest.mark.parametrize("kind", ["spectral", "matrix_free"])
def test_from_dict_reads_json_null_as_nan(fits, kind):
    d = json.loads(json.dumps(fits[kind].to_dict()))
    d["phenotypes"][0]["pve_se"] = None  # a writer that stores NaN as null
    assert math.isnan(type(fits[kind]).from_dict(d).fits[0].pve_se)


def test_reprs_list_each_phenotype_the_same_way(fits):
    for res in fits.values():
        lines = repr(res).splitlines()
        assert lines[0].startswith(f"{type(res).__name__}(2 phenotypes; ")
        for line, f in zip(lines[1:], res.fits):
            assert line.startswith(f"  {f.name}: n={f.n}, h2={f.h2:.4f} (SE {f.h2_se:.4f}), ")
        assert res._repr_html_().startswith(f"<div><b>{type(res).__name__}</b>: 2 phenotypes; ")
        assert repr(res["height"]).startswith(f"{type(res.fits[0]).__name__}('height', n=120, ")
        with pytest.raises(KeyError):
            res["bmi"]


def test_every_fit_names_its_columns_by_one_rule():
    """fit_reml and fit_components take the default names pheno1…, intercept, covar1…, and both
    refuse names that do not match the columns or a phenotype name given twice."""
    import bigmm
    from bigmm.errors import InputError

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 60))
    K = X @ X.T / 60
    Y = rng.standard_normal((40, 2))
    Z = np.column_stack([np.ones(40), rng.standard_normal(40)])
    spec = bigmm.exact_spectrum(K)
    assert bigmm.fit_reml(spec, Y, Z).phenotype_names == ["pheno1", "pheno2"]
    fit = bigmm.fit_components([K], Y, Z, lrt=False, ml=False)
    assert [f.name for f in fit.fits] == ["pheno1", "pheno2"]
    assert [fe.name for fe in fit.fits[0].fixed_effects] == ["intercept", "covar1"]
    for call in (lambda n: bigmm.fit_reml(spec, Y, Z, phenotype_names=n),
                 lambda n: bigmm.fit_components([K], Y, Z, phenotype_names=n, lrt=False, ml=False)):
        with pytest.raises(InputError, match="must be unique"):
            call(["a", "a"])
        with pytest.raises(InputError, match=r"phenotype_names \(1\) / covariate_names \(2\) do not match"):
            call(["a"])
