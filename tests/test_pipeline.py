"""The config-driven run end to end (CLI in a subprocess, and the API), against references."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from bed_reader import open_bed
from reference import grm_reference, reml_reference

import bigmm
from bigmm.io.tables import read_table

REQUIRED = {"n", "h2", "h2_se", "pve", "mean_diag_K", "sigma2_g", "sigma2_g_se", "sigma2_e",
            "sigma2_e_se", "logl_reml", "logl_ml", "lrt_stat", "lrt_pvalue", "boundary",
            "fixed_effects", "missing_method", "h2_se_method"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    c = bigmm.simulate(300, 1500, h2=[0.6, 0.3], seed=11, out_plink=d / "c", genotype_missing=0.01,
                       phenotype_missing=0.05)
    bigmm.write_tables(c, d / "pheno.tsv", d / "covar.tsv")
    return d


def write_config(path, cohort, output, **over):
    cfg = {
        "genotypes": {"plink": str(cohort / "c"), "chunks": [128, 512]},
        "variants": {"min_maf": 0.01, "max_missing": 0.05, "standardize": "gcta"},
        "phenotypes": {"file": str(cohort / "pheno.tsv"), "columns": ["trait1", "trait2"]},
        "covariates": {"file": str(cohort / "covar.tsv"), "columns": ["age", "sex"],
                       "categorical": ["sex"]},
        "spectrum": {"method": "exact"},
        "grm": {"export_gcta": True, "dtype": "float64"},  # float64: compared with the dense reference at 1e-7
        "output": str(output),
        "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB"},
    }
    for k, v in over.items():
        cfg[k] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_run_matches_dense_reference(cohort, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", cohort, tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(cfg)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "h2=" in proc.stdout and "results:" in proc.stdout
    # stderr is a pipe here (a batch job, a log): plain lines, every progress line, no bar
    assert "\r" not in proc.stderr and "%|" not in proc.stderr
    assert "GRM 300x300 blocks: 3/3 (100%)" in proc.stderr and "run: stage 1 of 7 (ingest)" in proc.stderr
    out = tmp_path / "out"
    doc = json.loads((out / "results.json").read_text())
    for key in ("n_samples", "n_variants", "variants_dropped", "standardize", "spectrum_info",
                "bigmm_version", "config", "logl_convention"):
        assert key in doc
    assert doc["bigmm_version"] == bigmm.__version__
    assert doc["standardize"] == "gcta"
    fits = {p["name"]: p for p in doc["phenotypes"]}
    assert set(fits) == {"trait1", "trait2"}
    for f in fits.values():
        assert REQUIRED <= set(f)
        assert [fe["name"] for fe in f["fixed_effects"]] == ["intercept", "age", "sex=M"]
    rows = (out / "results.tsv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].split("\t")[:3] == ["phenotype", "n", "h2"]
    assert (out / "run.log").stat().st_size > 0
    assert (out / "gcta" / "grm.grm.bin").exists()

    # independent reference: genotypes decoded by bed-reader, dense GRM, Cholesky REML
    G = open_bed(str(cohort / "c.bed")).read(dtype="int8")
    G[G < 0] = -1
    called = (G >= 0).mean(0)
    f = np.array([G[G[:, j] >= 0, j].mean() / 2 for j in range(G.shape[1])])
    keep = (1 - called <= 0.05) & (np.minimum(f, 1 - f) >= 0.01)
    assert doc["n_variants"] == keep.sum()
    K = grm_reference(G, "gcta", keep=keep)
    pheno = read_table(cohort / "pheno.tsv")
    cov = read_table(cohort / "covar.tsv")
    age = cov.numeric("age")
    sex = np.array([1.0 if v == "M" else 0.0 for v in cov.text("sex")])
    for name in ("trait1", "trait2"):
        y = pheno.numeric(name)
        obs = ~np.isnan(y)
        Z = np.column_stack([np.ones(obs.sum()), age[obs], sex[obs]])
        ref = reml_reference(K[np.ix_(obs, obs)], y[obs], Z)
        got = fits[name]
        assert got["n"] == obs.sum()
        assert got["h2"] == pytest.approx(ref["h2"], abs=1e-6)
        assert got["sigma2_g"] == pytest.approx(ref["sigma2_g"], rel=1e-6)
        assert got["logl_reml"] == pytest.approx(ref["logl_reml"], abs=1e-7)


def test_api_run_with_own_client_and_atomic_results(cohort, tmp_path, monkeypatch):
    from conftest import local_cluster
    from distributed import Client

    cfg = bigmm.load_config(write_config(tmp_path / "run.yaml", cohort, tmp_path / "out"))
    with local_cluster(1, 2) as cluster, Client(cluster) as client:
        outcome = bigmm.run(cfg, client=client)
        first = outcome.result["trait1"]
        # a failure while writing the report leaves no results.json behind
        from bigmm.pipeline.stage import report as stages_module  # the report stage's file

        def boom(*a, **k):
            raise RuntimeError("disk full")

        monkeypatch.setattr(stages_module, "write_results", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            bigmm.run(cfg, client=client, from_stage="report")
        assert not (tmp_path / "out" / "results.json").exists()
        manifest = json.loads((tmp_path / "out" / "run.json").read_text())
        assert manifest["status"] == "failed" and manifest["resume_from"] == "report"
        monkeypatch.undo()
        again = bigmm.run(cfg, client=client)
    assert again.stages_run == ("report",)
    assert again.result["trait1"].h2 == pytest.approx(first.h2, abs=1e-12)
    assert (tmp_path / "out" / "results.json").exists()


def test_predictions_report_and_peer_files(cohort, tmp_path):
    """predict: blup.tsv = ĝ of the API; scoring the training cohort with its SNP effects gives ĝ
    back (X β̂ = ĝ); report.html has every section and every image is a PNG; .hsq and .eigenvec."""
    import base64
    import re

    from bigmm.blup import genetic_values
    from bigmm.reml import rotate

    cfg = bigmm.load_config(write_config(tmp_path / "run.yaml", cohort, tmp_path / "out",
                                         predict={"blup": True, "snp_effects": True},
                                         grm={"dtype": "float64"}))
    from conftest import local_cluster
    from distributed import Client

    with local_cluster(1, 2) as cluster, Client(cluster) as client:
        outcome = bigmm.run(cfg, client=client)
    out = tmp_path / "out"
    blup = np.loadtxt(out / "blup.tsv", skiprows=1, usecols=(2, 3))
    # API: the same design rotated on the spectrum of the analysed samples
    from bigmm.pipeline.outputs import load_spectrum
    from bigmm.pipeline.validate import validate

    inp = validate(cfg, force=True)
    spec = load_spectrum(out / "spectrum.zarr")
    a = np.flatnonzero(inp.design.analysed)
    rd = rotate(spec.subset(a) if a.size < spec.n else spec, inp.design.Y[a], inp.design.Z[a],
                phenotype_names=inp.design.phenotype_names, covariate_names=inp.design.covariate_names)
    g = genetic_values(spec, rd, outcome.result, rows=a).genetic_values
    np.testing.assert_allclose(blup, g, rtol=1e-7, atol=1e-9)  # 8 significant digits in the TSV
    # scoring the training genotypes with the SNP effects reproduces ĝ (the identity X β̂ = ĝ);
    # the TSV keeps 8 significant digits of each effect: |Σ_j x_j δβ_j| ≲ 1e-8 · √p · |β|·|x|
    proc = subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", "score", "--run", str(out), "--bfile",
                           str(cohort / "c"), "--out", str(tmp_path / "s.tsv")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # the variants reported used are those in the scores (the training's kept variants), the
    # others counted by reason (tests/test_score_counts.py has a cohort with dropped variants)
    doc = json.loads((out / "results.json").read_text())
    dropped = sum(doc["variants_dropped"].values())
    assert f"(used {doc['n_variants']}, flipped 0, dropped_in_training {dropped}," in proc.stdout, proc.stdout
    scores = np.loadtxt(tmp_path / "s.tsv", skiprows=1, usecols=(2, 3))
    np.testing.assert_allclose(scores, blup, atol=1e-5)
    html = (out / "report.html").read_text()
    for section in ("summary", "estimates", "spectrum", "profiles", "stages"):
        assert f'<section id="{section}">' in html
    imgs = re.findall(r'<img id="fig-([a-z0-9_]+)" src="data:image/png;base64,([^"]+)"', html)
    assert {name for name, _ in imgs} >= {"scree", "pc1_pc2", "pc3_pc4", "reml_profiles"}
    for name, data in imgs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / "report" / f"{name}.png").exists()
    assert "trait1" in html and "95% CI" in html
    hsq = (out / "hsq" / "trait1.hsq").read_text().splitlines()
    assert hsq[0].split("\t") == ["Source", "Variance", "SE"]
    assert float(hsq[4].split("\t")[1]) == pytest.approx(outcome.result["trait1"].h2, rel=1e-9)
    vec = (out / "pca.eigenvec").read_text().splitlines()
    assert vec[0].startswith("#FID\tIID\tPC1") and len(vec) == 301


def test_matrix_free_run_equals_spectral_run(cohort, tmp_path):
    """reml.method: matrix_free through the pipeline (no rotate stage, passes over X on the
    cluster) against the spectral REML of the same config on the exact spectrum:

    * with deflation by all n − 1 exact eigenpairs (rank K ≤ n − 1: K1 = 0) log det H is exact,
      so only the quadrature of the solves is left: tol 1e-8 gives ĥ² to ~1e-6, checked at 1e-5;
      BLUP ĝ (one more pass) equals the spectral one to the same order;
    * without deflation, at the defaults, ĥ² lies within 4 reported Monte Carlo SDs (+1e-3 for
      the quadrature) of the exact estimate, and the SE users read includes the MC part.
    """
    from conftest import local_cluster
    from distributed import Client

    over = dict(predict={"blup": True}, grm={"export_gcta": False, "dtype": "float64"})
    spectral = bigmm.load_config(write_config(tmp_path / "s.yaml", cohort, tmp_path / "s", **over))
    exact_mf = bigmm.load_config(write_config(
        tmp_path / "m.yaml", cohort, tmp_path / "m", **over,
        reml={"method": "matrix_free", "deflate": 299, "tol": 1e-8, "max_steps": 200, "probes": 4,
              "dtype": "float64"}))
    default_mf = bigmm.load_config(write_config(tmp_path / "d.yaml", cohort, tmp_path / "d",
                                                grm={"export_gcta": False}, reml={"method": "matrix_free"}))
    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        ref = bigmm.run(spectral, client=client)
        mf = bigmm.run(exact_mf, client=client)
        dflt = bigmm.run(default_mf, client=client)
    assert "rotate" not in mf.stages_run and "reml" in mf.stages_run
    assert "spectrum" not in dflt.stages_run and "grm" not in dflt.stages_run  # nothing to deflate
    for name in ("trait1", "trait2"):
        r, m, d = ref.result[name], mf.result[name], dflt.result[name]
        assert m.n == r.n
        assert m.h2 == pytest.approx(r.h2, abs=1e-5)
        assert m.sigma2_g == pytest.approx(r.sigma2_g, rel=1e-4)
        assert m.logl_reml == pytest.approx(r.logl_reml, abs=1e-4)
        for fe_m, fe_r in zip(m.fixed_effects, r.fixed_effects):
            assert fe_m.estimate == pytest.approx(fe_r.estimate, rel=1e-4, abs=1e-6)
        assert d.converged and d.h2_se_mc > 0
        assert abs(d.h2 - r.h2) <= 4 * d.h2_se_mc + 1e-3, (d.h2, r.h2, d.h2_se_mc)
        assert d.h2_se == pytest.approx(np.hypot(d.h2_se_stat, d.h2_se_mc), rel=1e-9)
    g_ref = np.loadtxt(tmp_path / "s" / "blup.tsv", skiprows=1, usecols=(2, 3))
    g_mf = np.loadtxt(tmp_path / "m" / "blup.tsv", skiprows=1, usecols=(2, 3))
    np.testing.assert_allclose(g_mf, g_ref, atol=1e-4 * np.abs(g_ref).max())
    doc = json.loads((tmp_path / "d" / "results.json").read_text())
    assert doc["reml_method"] == "matrix_free" and doc["spectrum_info"] is None
    p = doc["phenotypes"][0]
    for key in ("reml_method", "h2_se_mc", "h2_he", "lanczos_steps", "passes_over_X", "converged",
                "delta_h2", "delta_logl"):
        assert key in p, key
    header = (tmp_path / "d" / "results.tsv").read_text().splitlines()[0].split("\t")
    assert {"h2_se_mc", "h2_he", "lanczos_steps", "converged"} <= set(header)
    assert '<section id="matrix-free">' in (tmp_path / "d" / "report.html").read_text()
