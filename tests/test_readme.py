"""The README's Python API examples run as written (the exact and the randomized path), on a
small simulated cohort laid out under the names the README uses (data/cohort.bed/.bim/.fam,
pheno.tsv with a column ``height``, covar.tsv with ``age`` and ``sex``)."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

import bigmm

README = Path(__file__).resolve().parents[1] / "README.md"
#: the blocks run here, by their first line; the third block (a VCF Zarr store and the
#: pipeline on configs/example.yaml) needs files a user has, and is not run
RUN = ("# the exact spectrum", "# big cohorts")
#: run after them, in the same namespace: several components on the first block's cohort
RUN_AFTER = ("# several components",)


def python_blocks() -> dict[str, str]:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return {b.splitlines()[0]: b for b in blocks}


@pytest.fixture
def readme_cohort(tmp_path):
    """n = 400 samples (the randomized block asks for 200 eigenpairs plus oversampling),
    p = 1,500 variants; one trait renamed ``height``."""
    (tmp_path / "data").mkdir()
    sim = bigmm.simulate(400, 1500, h2=0.5, seed=3, out_plink=tmp_path / "data" / "cohort")
    bigmm.write_tables(sim, tmp_path / "pheno.tsv", tmp_path / "covar.tsv")
    text = (tmp_path / "pheno.tsv").read_text()
    (tmp_path / "pheno.tsv").write_text(text.replace("trait1", "height", 1))
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def test_readme_api_examples_run_as_written(readme_cohort):
    blocks = python_blocks()
    missing = [b for b in RUN if not any(k.startswith(b) for k in blocks)]
    assert not missing, f"README has no Python block starting {missing}"
    ns: dict = {}
    checked = {}
    for head in RUN:
        code = next(v for k, v in blocks.items() if k.startswith(head))
        exec(compile(code, f"README.md: {head}", "exec"), ns)  # noqa: S102 - the README's own code
        checked[head] = (ns["fit"], ns["blup"])
    for head in RUN_AFTER:
        code = next(v for k, v in blocks.items() if k.startswith(head))
        exec(compile(code, f"README.md: {head}", "exec"), ns)  # noqa: S102 - the README's own code
    # the components' GRMs weighted by their variant counts are the GRM of the variants they hold
    grms, parts = ns["grms"], ns["parts"]
    w = np.asarray(grms.n_variants, float) / np.sum(grms.n_variants)
    np.testing.assert_allclose(np.tensordot(w, grms.K, axes=1), ns["K"], rtol=1e-9, atol=1e-12)
    assert list(parts.to_pandas()["component"].unique()) == list(grms.names)
    # each path's BLUP covers every genotyped sample, and the analysed samples' ĝ is the
    # dense GBLUP of the model with that path's variances:
    # ĝ = σ²_g K V⁻¹ (y − Z ω̂) on the analysed rows
    rows, K, design = ns["rows"], ns["K"], ns["design"]
    y, Z = design.Y[rows, 0], design.Z[rows]
    for head, (fit, blup) in checked.items():
        assert blup.genetic_values.shape == (400, 1) and blup.snp_effects.shape[1] == 1
        if head.startswith("# the exact"):
            f = fit.fits[0]
            Ka = K[np.ix_(rows, rows)]
            V = f.sigma2_g * Ka + f.sigma2_e * np.eye(rows.size)
            Vi = np.linalg.inv(V)
            om = np.linalg.solve(Z.T @ Vi @ Z, Z.T @ Vi @ y)
            g = f.sigma2_g * K[:, rows] @ Vi @ (y - Z @ om)
            # dense vs spectral algebra on a well-conditioned 400 x 400 problem: round-off
            np.testing.assert_allclose(blup.genetic_values[:, 0], g, rtol=1e-7, atol=1e-9)


def test_predict_refuses_rows_that_do_not_fit_the_spectrum():
    """Before, a fit on the analysed samples' spectrum with rows into all samples raised an
    IndexError deep in blup.py (the README's exact example did this)."""
    rng = np.random.default_rng(0)
    G = rng.binomial(2, 0.3, size=(60, 200)).astype(np.int8)
    K = bigmm.grm(G, bigmm.standardization(bigmm.variant_stats(G)))
    a = np.arange(60) % 4 != 0
    spec = bigmm.exact_spectrum(K[a][:, a])
    fit = bigmm.fit_reml(spec, rng.normal(size=60)[a])
    with pytest.raises(bigmm.errors.InputError, match=r"the fit has 45 samples and the spectrum 45, but 45 rows "
                                                      r"with indices 1\.\.59 given: rows must index"):
        bigmm.predict(fit, spec, rows=np.flatnonzero(a))
    with pytest.raises(bigmm.errors.InputError, match=r"the fit has 45 samples and the spectrum 60, but no rows"):
        bigmm.predict(fit, bigmm.exact_spectrum(K))
    with pytest.raises(bigmm.errors.InputError, match="not a boolean mask"):
        bigmm.predict(fit, bigmm.exact_spectrum(K), rows=a)
    with pytest.raises(bigmm.errors.InputError, match="rows_spectrum has 60 samples, rows 45"):
        bigmm.predict(fit, bigmm.exact_spectrum(K), rows=np.flatnonzero(a), rows_spectrum=bigmm.exact_spectrum(K))
    # the right pairings work: the fit's own spectrum, or all samples with rows
    assert bigmm.predict(fit, spec).genetic_values.shape == (45, 1)
    assert bigmm.predict(fit, bigmm.exact_spectrum(K), rows=np.flatnonzero(a)).genetic_values.shape == (60, 1)
