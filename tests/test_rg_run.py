"""Genetic correlations in the run layer: the ``rg`` section and ``--rg`` flag, the rg stage of the
spectral and matrix-free models, its outputs (rg.tsv, rg/<a>.<b>.hsq, results.json's rg block, the
report's section), resume, and the refusals before any stage.

The cohort is tests/data/gemma_vc (400 HS1940 mice, 5,067 SNPs) with three phenotypes: ``a``
(pheno1, 40 values missing), ``b`` (pheno6 with its missing values filled: complete) and ``c``
(simulated, complete), sex as a covariate. Each run's rg.tsv is compared with the library called
here on the run's own inputs (its spectrum; its matrix-free REML result): the run must add nothing
to the library's numbers. Tolerance 1e-10 relative: the same float64 arithmetic on the same
arrays, rg.tsv written with 15 significant digits.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bigmm.bivariate import fit_bivariate
from bigmm.mf_bivariate import fit_bivariate_matrix_free
from bigmm.errors import InputError
from bigmm.io.tables import build_design
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.config_rg import RgConfig, check_rg, rg_pairs
from bigmm.pipeline.flags import config_from_flags, parse_rg
from bigmm.pipeline.outputs import load_spectrum
from bigmm.pipeline.cli import _print_rg, build_parser
from bigmm.pipeline.stages import run
from bigmm.pipeline.validate import validate

DATA = Path(__file__).parent / "data" / "gemma_vc"
COVAR = DATA / "covar.tsv"
TOL = 1e-10


@pytest.fixture(scope="module")
def one_cluster():
    """Every run on one in-process Dask cluster (starting a cluster per run is what costs time)."""
    from distributed import Client, LocalCluster

    import bigmm.pipeline.stages as stages

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client, pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "dask_client", lambda *args: contextlib.nullcontext(client))
        yield client


@pytest.fixture(scope="module")
def pheno(tmp_path_factory):
    """a (with missing values), b and c (complete), c correlated with b's genetic part by chance only."""
    t = pd.read_csv(DATA / "pheno.tsv", sep="\t")
    rng = np.random.default_rng(7)
    b = t["pheno6"].to_numpy().copy()
    b[np.isnan(b)] = rng.normal(np.nanmean(b), np.nanstd(b), size=int(np.isnan(b).sum()))
    out = pd.DataFrame({"FID": t["FID"], "IID": t["IID"], "a": t["pheno1"], "b": b,
                        "c": 0.5 * b + rng.normal(size=len(b))})
    path = tmp_path_factory.mktemp("rgpheno") / "pheno.tsv"
    out.to_csv(path, sep="\t", index=False, na_rep="NA")
    return path


def config(pheno, out, rg, **more):
    """The run's config, as if read from ``out``'s sibling run.yaml (edited between runs: the
    stages' fingerprints decide what reruns)."""
    return parse_config({"genotypes": {"plink": str(DATA / "cohort"), "chunks": [200, 2048]},
                         "phenotypes": {"file": str(pheno)}, "covariates": {"file": str(COVAR), "columns": ["sex"]},
                         "output": str(out), "cluster": {"workers": 1}, "rg": rg, **more},
                        source=Path(out).parent / "run.yaml")


def design(pheno):
    ids = [tuple(x.split()[:2]) for x in (DATA / "cohort.fam").read_text().splitlines()]
    return build_design(ids, pheno, ["a", "b", "c"], COVAR, ["sex"])


def assert_table(tsv: Path, want) -> None:
    """rg.tsv equals the library's table: names, counts, every estimate, SE and test."""
    got = pd.read_csv(tsv, sep="\t", keep_default_na=False, na_values=["NA"])
    want = want.to_pandas()
    assert list(got.columns) == list(want.columns)
    for col in want.columns:
        if want[col].dtype.kind == "f":
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=TOL, atol=TOL,
                                       err_msg=col)
        else:
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col


@pytest.fixture(scope="module")
def spectral(pheno, one_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("rgspec") / "run"
    return out, run(config(pheno, out, {"pairs": "all"}))


def test_spectral_run_equals_fit_bivariate(pheno, spectral):
    out, outcome = spectral
    assert outcome.stages_run == ("ingest", "variant_stats", "grm", "spectrum", "rotate", "reml", "rg", "report")
    d = design(pheno)
    spec = load_spectrum(out / "spectrum.zarr")  # the run's own K (float32 products), as the stage used it
    a = d.analysed
    sub = spec if a.all() else spec.subset(np.flatnonzero(a))
    want = fit_bivariate(sub, d.Y[a], d.Z[a], phenotype_names=d.phenotype_names,
                               covariate_names=d.covariate_names)
    assert [(f.trait_a, f.trait_b) for f in want.fits] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert_table(out / "rg.tsv", want)
    # GCTA's bivariate table per pair, its rows in GCTA's order
    hsq = (out / "rg" / "a.b.hsq").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in hsq[:13]] == [
        "Source", "V(G)_tr1", "V(G)_tr2", "C(G)_tr12", "V(e)_tr1", "V(e)_tr2", "C(e)_tr12", "Vp_tr1", "Vp_tr2",
        "V(G)/Vp_tr1", "V(G)/Vp_tr2", "rG", "logL"]
    assert hsq[11] == f"rG\t{want['a', 'b'].rg:.6f}\t{want['a', 'b'].rg_se:.6f}"
    assert hsq == want["a", "b"].hsq_text().splitlines()
    # results.json's rg block and the report's section (the heat map and the pairs by |r_g|)
    doc = json.loads((out / "results.json").read_text())
    assert [p["hsq_file"] for p in doc["rg"]["pairs"]] == ["rg/a.b.hsq", "rg/a.c.hsq", "rg/b.c.hsq"]
    html = (out / "report.html").read_text()
    assert '<section id="rg"><h2>Genetic correlations</h2>' in html and 'id="fig-rg"' in html
    assert '<a href="#rg">genetic correlations</a>' in html
    order = sorted(want.fits, key=lambda f: -abs(f.rg))
    rows = [html.index(f"<tr><td>{f.trait_a}</td><td>{f.trait_b}</td><td>{f.n}</td>") for f in order]
    assert rows == sorted(rows)  # ordered by |r_g|
    assert f"<td>{order[0].rg:.4f}</td><td>{order[0].rg_se:.4f}</td>" in html
    assert (out / "report" / "rg.png").stat().st_size > 0


def test_rerun_skips_and_a_new_pair_list_reruns_rg_and_report(pheno, spectral):
    """Unchanged: nothing reruns. Other pairs (c with a, without LRTs): the rg stage and the report
    only, equal to the library's fit."""
    out, _ = spectral
    again = run(config(pheno, out, {"pairs": "all"}))
    assert again.stages_run == ()
    fewer = run(config(pheno, out, {"pairs": [["c", "a"]], "lrt": False}))
    assert fewer.stages_run == ("rg", "report")
    d = design(pheno)
    a = d.analysed
    spec = load_spectrum(out / "spectrum.zarr")
    sub = spec if a.all() else spec.subset(np.flatnonzero(a))
    want = fit_bivariate(sub, d.Y[a], d.Z[a], phenotype_names=d.phenotype_names, covariate_names=d.covariate_names,
                         pairs=[("c", "a")], lrt=False)
    assert want.fits[0].n_left_out == 40  # a's missing values: c's 40 extra observations are left out
    assert_table(out / "rg.tsv", want)
    got = pd.read_csv(out / "rg.tsv", sep="\t")
    assert got[["trait_a", "trait_b"]].values.tolist() == [["c", "a"]] and np.isnan(got["lrt_rg0"][0])
    assert (out / "rg" / "c.a.hsq").exists() and not (out / "rg" / "a.b.hsq").exists()  # the old pairs' tables go


def test_matrix_free_run_equals_fit_bivariate_matrix_free(pheno, one_cluster, tmp_path):
    """The rg stage on the run's own REML result (kept in memory by this run) gives the library's
    numbers; the pair shares its missing values: no pass over X beyond the univariate build."""
    out = tmp_path / "run"
    outcome = run(config(pheno, out, {"pairs": [["b", "c"]]}, reml={"method": "matrix_free", "dtype": "float64"}))
    assert outcome.stages_run == ("ingest", "variant_stats", "reml", "rg", "report")
    want = fit_bivariate_matrix_free(outcome.result, [("b", "c")])
    assert_table(out / "rg.tsv", want)
    rec = json.loads((out / "run.json").read_text())["stages"]["rg"]
    assert rec["passes_over_X"] == 0 and rec["pairs"] == 1
    doc = json.loads((out / "results.json").read_text())
    assert doc["rg"]["method"] == "matrix-free" and doc["rg"]["pairs"][0]["hsq_file"] == "rg/b.c.hsq"


def test_matrix_free_pair_across_missing_values_builds_once_and_leaves_no_checkpoint(pheno, one_cluster, tmp_path):
    """A pair with different missing values on the matrix-free path: one more build on the common
    samples (its passes recorded), its per-step state in rg.partial/ while it runs (resumption:
    tests/test_mf_bivariate.py), removed once rg.tsv is written; the pair is fitted on the samples
    observed for both."""
    out = tmp_path / "run"
    run(config(pheno, out, {"pairs": [["a", "c"]]}, reml={"method": "matrix_free", "dtype": "float64"}))
    rec = json.loads((out / "run.json").read_text())["stages"]["rg"]
    assert rec["passes_over_X"] > 0 and rec["pairs"] == 1
    assert not (out / "rg.partial").exists() and (out / "rg.tsv").exists()
    got = pd.read_csv(out / "rg.tsv", sep="\t")
    assert got["n_left_out"][0] == 40
    d = design(pheno)
    assert got["n"][0] == int((~np.isnan(d.Y[:, 0]) & ~np.isnan(d.Y[:, 2])).sum())


def test_an_unknown_name_is_refused_before_any_stage(pheno, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"rg.pairs: no phenotype named 'bmi' in the pair \[a, bmi\] "
                                         r"\(the run's phenotypes: a, b, c\)"):
        run(config(pheno, out, {"pairs": [["a", "bmi"]]}))
    assert not (out / "run.json").exists()
    # bigmm check's line: the pairs and the driver time to expect
    text = validate(config(pheno, out, {"pairs": "all"})).describe()
    assert "genetic correlations: 3 pair(s) by bivariate REML on the univariate spectrum, no pass over X" in text
    assert "2 pair(s) with different missing values fitted on their common samples" in text
    text = validate(config(pheno, out, {"pairs": "all"}, reml={"method": "matrix_free"})).describe()
    assert "about 0.015-0.036 CPU s (5-12 ms per pair measured by scripts/bench/bench_rg_driver.py" in text
    assert ("2 pair(s) have different missing values: fitted on their common samples from one more matrix-free "
            "build (at most reml.max_steps passes over X)") in text


def test_the_cli_prints_few_pairs_or_their_count(capsys):
    pairs = [{"trait_a": f"t{i}", "trait_b": "u", "n": 10, "rg": r, "rg_se": 0.1, "re": 0.0, "p_rg0": 0.5}
             for i, r in enumerate([0.2, -0.9, None, 0.5])]
    _print_rg(pairs[:2])
    assert capsys.readouterr().out.splitlines()[1] == "rg t1 x u\tn=10\trg=-0.9000\tSE=0.1000\tre=0.0000\tp(rg=0)=0.5"
    _print_rg(pairs, shown=3)
    assert capsys.readouterr().out.startswith("genetic correlations: 4 pairs (rg.tsv); the largest |r_g|: rg t1 x u")


def test_pairs_resolution_and_the_flag():
    names = ["a", "b", "c"]
    assert rg_pairs(RgConfig(), names, "spectral") == []  # the default: none
    assert rg_pairs(RgConfig(pairs="auto"), ["a"], "spectral") == []
    assert rg_pairs(RgConfig(pairs="auto"), names, "matrix_free") == [("a", "b"), ("a", "c"), ("b", "c")]
    assert rg_pairs(RgConfig(pairs="auto"), names, "components") == []  # several components: auto skips
    with pytest.raises(InputError, match="not with several variance components"):
        rg_pairs(RgConfig(pairs="all"), names, "components_matrix_free")
    with pytest.raises(InputError, match="all needs two or more phenotypes"):
        rg_pairs(RgConfig(pairs="all"), ["a"], "spectral")
    with pytest.raises(InputError, match="given twice"):
        rg_pairs(RgConfig(pairs=[["a", "b"], ["b", "a"]]), names, "spectral")
    assert RgConfig(pairs=[[1, 2]]).pairs == [("1", "2")]  # YAML numbers are names
    # GCTA's union of samples: spectral REML on an exact spectrum only
    d = SimpleNamespace(phenotype_names=names, Y=np.ones((4, 3)), analysed=np.ones(4, bool))
    assert check_rg(RgConfig(pairs="all", samples="union"), d, "spectral", "exact").startswith("genetic correlations")
    for model, method in (("matrix_free", "exact"), ("spectral", "randomized")):
        with pytest.raises(InputError, match="rg.samples: union .* needs reml.method spectral on an exact spectrum"):
            check_rg(RgConfig(pairs="all", samples="union"), d, model, method)
    assert parse_rg("all") == "all" and parse_rg("a:b,b:c") == [["a", "b"], ["b", "c"]]
    with pytest.raises(Exception, match="not a pair A:B"):
        parse_rg("a,b")
    flags = ["reml", "--bfile", "x", "--pheno-fam", "1", "--out", "o"]
    assert config_from_flags(build_parser().parse_args(flags + ["--rg", "a:b,a:c"]))["rg"] == \
        {"pairs": [["a", "b"], ["a", "c"]]}
    assert "rg" not in config_from_flags(build_parser().parse_args(flags))  # no flag: the section's default
    # a config without an rg section hashes as before the section existed (old run folders resume)
    base = {"genotypes": {"zarr": "x.zarr"}, "phenotypes": {"file": "p.tsv"}, "output": "o"}
    assert parse_config(base).fingerprint() == parse_config({**base, "rg": {"pairs": "none"}}).fingerprint()
    assert parse_config(base).fingerprint() != parse_config({**base, "rg": {"pairs": "all"}}).fingerprint()
