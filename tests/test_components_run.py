"""Several variance components in the run layer: the ``components`` section, the ``bigmm reml``
component flags, validation before any pass, the ld_scores / component_grms / reml stages.

The cohort is tests/data/gemma_vc (400 HS1940 mice, 5,067 SNPs, components A/B/C by chromosome,
two phenotypes with missing values, sex as a covariate). Each run's reml.json is compared with
``bigmm.component_grms`` + ``bigmm.fit_components`` called here on the same genotypes: the run must
add nothing to the library's numbers (1e-10: the same float64 sums, only the blocking of the
products differs, ~1e-16 relative, and AI-REML moves its estimate by far less than that tolerance
for such a change of K).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import bigmm
from bigmm.components import greml_ldms, read_components
from bigmm.errors import InputError
from bigmm.io.tables import build_design
from bigmm.pipeline.cli import main
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.stages import run

DATA = Path(__file__).parent / "data" / "gemma_vc"
PHENO, COVAR = DATA / "pheno.tsv", DATA / "covar.tsv"
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
def cohort(tmp_path_factory):
    """The fixture's store, its variant standardization (the run's defaults: gcta, no filters), the
    design and a components file (the fixture's table without its header)."""
    d = tmp_path_factory.mktemp("comprun")
    store = bigmm.ingest_plink(DATA / "cohort", d / "c.zarr", chunks=(200, 2048))
    # the store the flag form makes (its default chunks: the float32 products' sums follow them)
    flag_store = bigmm.ingest_plink(DATA / "cohort", d / "f.zarr")
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()))
    design = build_design(store.sample_ids(), PHENO, ["pheno1", "pheno6"], COVAR, ["sex"])
    with open(DATA / "components.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    (d / "ann.txt").write_text("".join(f"{r['SNP']} {r['component']}\n" for r in rows))
    return {"dir": d, "store": store, "flag_store": flag_store, "std": std, "design": design, "ann": d / "ann.txt",
            "ids": [str(v) for v in store.variant_table()["id"]]}


def direct_fit(c, Ks, n_variants, names, constrain=True):
    """fit_components on the analysed samples, as a user of the library would call it."""
    d = c["design"]
    a = d.analysed
    return bigmm.fit_components([np.asarray(K)[np.ix_(a, a)] for K in Ks], d.Y[a], d.Z[a], component_names=names,
                                phenotype_names=d.phenotype_names, covariate_names=d.covariate_names,
                                n_variants=n_variants, constrain=constrain)


def config(c, out, **components):
    return parse_config({"genotypes": {"plink": str(DATA / "cohort"), "chunks": [200, 2048]},
                         "phenotypes": {"file": str(PHENO)}, "covariates": {"file": str(COVAR), "columns": ["sex"]},
                         "components": components, "output": str(out), "cluster": {"workers": 1},
                         "grm": {"dtype": "float64"}})  # the library's precision (a run's default: float32)


def assert_same(reml_json: Path, direct) -> None:
    """Every estimate of the run's reml.json equals the direct fit's (names, σ², SEs, h², shares,
    enrichments, log-likelihoods, LRTs)."""
    got = json.loads(reml_json.read_text())
    want = json.loads(json.dumps(direct.to_dict()))
    assert got["component_names"] == want["component_names"]
    for g, w in zip(got["phenotypes"], want["phenotypes"], strict=True):
        assert g["name"] == w["name"] and g["n"] == w["n"]
        for key in ("h2", "h2_se", "sigma2_e", "logl_reml", "logl_ml", "lrt_stat"):
            np.testing.assert_allclose(g[key], w[key], rtol=TOL, atol=TOL, err_msg=key)
        for gc, wc in zip(g["components"], w["components"], strict=True):
            assert gc["name"] == wc["name"] and gc["boundary"] == wc["boundary"]
            for key in ("sigma2", "sigma2_se", "h2", "h2_se", "share", "enrichment", "lrt_stat", "n_variants"):
                np.testing.assert_allclose(np.nan if gc[key] is None else gc[key],
                                           np.nan if wc[key] is None else wc[key], rtol=TOL, atol=TOL,
                                           err_msg=f"{gc['name']} {key}")


@pytest.fixture(scope="module")
def annotated(cohort, one_cluster, tmp_path_factory):
    """A config run with components.file (three components A, B, C)."""
    out = tmp_path_factory.mktemp("ann") / "run"
    outcome = run(config(cohort, out, file=str(cohort["ann"])))
    return out, outcome


def test_a_config_run_equals_the_direct_fit(cohort, annotated):
    out, outcome = annotated
    assert outcome.stages_run == ("ingest", "variant_stats", "component_grms", "reml", "report")
    split = read_components(cohort["ann"], cohort["ids"])
    res = bigmm.component_grms(cohort["store"].genotypes, cohort["std"], split)
    assert_same(out / "reml.json", direct_fit(cohort, res.K, res.n_variants, res.names))
    # the report stage made its files from the components' reml.json
    assert (out / "results.json").exists() and (out / "results.tsv").exists()


def test_a_rerun_skips_every_stage(cohort, annotated, one_cluster):
    out, _ = annotated
    again = run(config(cohort, out, file=str(cohort["ann"])))
    assert again.stages_run == ()
    assert again.stages_skipped == ("ingest", "variant_stats", "component_grms", "reml", "report")
    # bigmm status lists the stages a components model can need (ld_scores: not needed here); a
    # spectral run's status does not list them (tests/test_faults.py)
    from bigmm.pipeline.stages import status

    rows = {r["stage"]: r for r in status(out)}
    assert rows["component_grms"]["rerun"] == "no" and rows["reml"]["rerun"] == "no"
    assert "ld_scores" in rows and rows["ld_scores"]["state"] == "not needed"


def test_damaged_component_grms_are_computed_again(cohort, annotated, one_cluster):
    """A flipped byte in the committed K.npy (no checksum of its own) is caught by its recorded
    CRC32C when the reml stage reads it: component_grms runs again and the fit is the same."""
    out, _ = annotated
    before = json.loads((out / "reml.json").read_text())
    path = out / "components" / "K.npy"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    again = run(config(cohort, out, file=str(cohort["ann"])), from_stage="reml")
    assert "component_grms" in again.stages_run and "reml" in again.stages_run
    assert json.loads((out / "reml.json").read_text())["phenotypes"] == before["phenotypes"]


def test_component_grms_committed_with_sha256_still_load_and_damage_is_caught(tmp_path, rng):
    """Component GRMs committed before CRC32C (components.json with a SHA-256 of each K_j) load,
    checked by their SHA-256; new ones record a CRC32C (of the bytes, checked here with
    google_crc32c itself); a flipped byte is refused under either, and so is a record without a
    checksum for each GRM."""
    import google_crc32c

    from bigmm.component_grm import ComponentGrms
    from bigmm.pipeline.stage.component_grms import load_component_grms, save_component_grms
    from bigmm.store import StoreIntegrityError

    K = rng.standard_normal((2, 5, 5))
    res = ComponentGrms(K=K, n_variants=np.array([3.0, 4.0]), names=("A", "B"))
    new = tmp_path / "new"
    save_component_grms(new, res, np.arange(5), "test")
    meta = json.loads((new / "components.json").read_text())
    assert meta["crc32c"] == [f"{google_crc32c.value(k.tobytes()):08x}" for k in K] and "sha256" not in meta
    old = tmp_path / "old"
    old.mkdir()
    np.save(old / "K.npy", K)
    meta["sha256"] = [hashlib.sha256(k.tobytes()).hexdigest() for k in K]
    del meta["crc32c"]
    (old / "components.json").write_text(json.dumps(meta))
    for path in (new, old):
        got, rows = load_component_grms(path)
        np.testing.assert_array_equal(got.K, K)
        assert got.names == ("A", "B") and rows.tolist() == list(range(5))
        raw = bytearray((path / "K.npy").read_bytes())
        raw[-8] ^= 0x01  # a low bit of the last entry of K_B
        (path / "K.npy").write_bytes(bytes(raw))
        with pytest.raises(StoreIntegrityError, match="component B does not match its recorded"):
            load_component_grms(path)
    del meta["sha256"]
    (old / "components.json").write_text(json.dumps(meta))
    with pytest.raises(StoreIntegrityError, match="records no checksum"):
        load_component_grms(old)


def test_the_flag_run_with_component_lists_equals_the_direct_fit(cohort, one_cluster, tmp_path, capsys):
    """``bigmm reml --component-lists A.snplist B.snplist`` (GCTA's one --extract list per GRM;
    C's variants in no component) and --reml-no-constrain: the direct fit of the same lists, with
    the products in float32 as a run's default (grm.dtype) on the flag form's store chunks."""
    lists = []
    for name in ("A", "B"):
        p = tmp_path / f"{name}.snplist"
        p.write_text("".join(f"{ln.split()[0]}\n" for ln in cohort["ann"].read_text().splitlines()
                             if ln.split()[1] == name))
        lists.append(str(p))
    out = tmp_path / "run"
    rc = main(["reml", "--bfile", str(DATA / "cohort"), "--pheno", str(PHENO), "--mpheno", "1",
               "--covar", str(COVAR), "--covar-name", "sex", "--component-lists", *lists, "--reml-no-constrain",
               "--workers", "1", "--out", str(out)])
    assert rc == 0
    d = cohort["design"]
    split = bigmm.read_variant_lists(lists, cohort["ids"])
    res = bigmm.component_grms(cohort["flag_store"].genotypes, cohort["std"], split, dtype=np.float32)
    a = d.analysed
    direct = bigmm.fit_components([K[np.ix_(a, a)] for K in res.K], d.Y[a, :1], d.Z[a], component_names=res.names,
                                  phenotype_names=["pheno1"], covariate_names=d.covariate_names,
                                  n_variants=res.n_variants, constrain=False)
    assert_same(out / "reml.json", direct)
    assert "constrain: false" in (out / "config.yaml").read_text()
    # the printed summary: the total and one line per component with its share and enrichment
    printed = capsys.readouterr().out.splitlines()
    f = direct.fits[0]
    assert any(ln.startswith(f"pheno1\tn={f.n}\th2={f.h2:.4f} (total of 2 components)") for ln in printed), printed
    for c in f.components:
        assert any(ln.startswith(f"pheno1\tcomponent {c.name}\tvariants={c.n_variants:.0f}\th2={c.h2:.4f}\t")
                   and f"share of h2={c.share:.4f}" in ln and f"enrichment={c.enrichment:.3g}" in ln
                   for ln in printed), (c.name, printed)


def test_maf_bins_and_ld_bins_run_equals_greml_ldms(cohort, one_cluster, tmp_path):
    """MAF bins x LD-score halves within each (GREML-LDMS), LD scores in a 300-variant window:
    the run's ld_scores.tsv is bigmm.ld_scores, its fit the direct one on greml_ldms's split."""
    edges = [0.05, 0.25, 0.5]
    out = tmp_path / "run"
    outcome = run(config(cohort, out, maf_bins=edges, ld_bins=2, ld_window_variants=300))
    assert outcome.stages_run == ("ingest", "variant_stats", "ld_scores", "component_grms", "reml", "report")
    table = cohort["store"].variant_table()
    ld = bigmm.ld_scores(cohort["store"].genotypes, cohort["std"], window_variants=300,
                         chromosomes=table["chrom"])  # positions: 793 of the fixture's are -9 (unknown)
    ran = np.genfromtxt(out / "ld_scores.tsv", skip_header=1, usecols=3)
    np.testing.assert_allclose(ran, ld, rtol=1e-12)  # the same windowed products
    split = greml_ldms(cohort["std"], ld, edges, 2)
    res = bigmm.component_grms(cohort["store"].genotypes, cohort["std"], split)
    assert len(res.names) == 4
    assert_same(out / "reml.json", direct_fit(cohort, res.K, res.n_variants, res.names))


def test_mgrm_run_equals_the_direct_fit_on_the_same_files(cohort, tmp_path):
    """``bigmm reml --mgrm list.txt`` on GCTA GRM files written here (float32 entries, as GCTA's):
    the direct fit on the same float32-rounded K_j. No genotypes: the samples are the first GRM's."""
    split = read_components(cohort["ann"], cohort["ids"])
    res = bigmm.component_grms(cohort["store"].genotypes, cohort["std"], split)
    ids = cohort["store"].sample_ids()
    for name, K, p in zip(res.names, res.K, res.n_variants):
        bigmm.write_gcta_grm(tmp_path / f"grm_{name}", K, ids, n_variants=int(p))
    (tmp_path / "mgrm.txt").write_text("".join(f"grm_{n}\n" for n in res.names))
    out = tmp_path / "run"
    rc = main(["reml", "--mgrm", str(tmp_path / "mgrm.txt"), "--pheno", str(PHENO), "--mpheno", "all",
               "--covar", str(COVAR), "--covar-name", "sex", "--out", str(out)])
    assert rc == 0
    K32 = [K.astype(np.float32).astype(np.float64) for K in res.K]
    direct = direct_fit(cohort, K32, None, [f"grm_{n}" for n in res.names])
    assert_same(out / "reml.json", direct)
    run_json = json.loads((out / "run.json").read_text())
    assert "ingest" not in run_json["stages"] and "variant_stats" not in run_json["stages"]


def test_one_component_of_every_variant_is_the_single_component_spectral_fit(cohort, one_cluster, tmp_path):
    """m = 1 with K_1 = K: the same restricted likelihood as the spectral REML, maximised by AI-REML
    here (stopped when max |Δσ²| < 1e-8·Vp between two iterations, vcreml.TOL, after quadratic
    convergence) and by bisecting the score on the spectrum there (to |Δh²| < 1e-14). So ĥ²
    agrees to ~1e-8 (measured on this cohort: 2e-11 and 6e-10) and ℓ_R, flat at the maximum, to
    round-off; 1e-7 leaves a margin for other BLAS."""
    (tmp_path / "all.txt").write_text("".join(f"{v} all\n" for v in cohort["ids"]))
    comp = run(config(cohort, tmp_path / "m1", file=str(tmp_path / "all.txt")))
    cfg = parse_config({"genotypes": {"plink": str(DATA / "cohort"), "chunks": [200, 2048]},
                        "phenotypes": {"file": str(PHENO)}, "covariates": {"file": str(COVAR), "columns": ["sex"]},
                        "output": str(tmp_path / "spectral"), "cluster": {"workers": 1}, "grm": {"dtype": "float64"}})
    spectral = run(cfg)
    assert spectral.result.fits[0].h2 > 0.3  # a fit away from the boundary
    for f1, fs in zip(comp.result.fits, spectral.result.fits, strict=True):
        assert f1.name == fs.name
        assert abs(f1.h2 - fs.h2) < 1e-7, (f1.name, f1.h2, fs.h2)
        assert abs(f1.components[0].h2 - fs.h2) < 1e-7
        assert abs(f1.logl_reml - fs.logl_reml) < 1e-8


# --- refusals before any pass -----------------------------------------------------------------

def _refused(cfg, match):
    with pytest.raises(InputError, match=match):
        run(cfg)
    assert not (Path(cfg.output) / "run.json").exists()  # no stage ran, nothing recorded


@pytest.mark.parametrize("lines, match", [
    (["rs3683945 A", "rs6269442 A", "rs3683945 B"], r"ann\.txt line 3: variant rs3683945 is in component 'B' "
                                                    r"here and in 'A' at line 1"),
    (["rs3683945 A", "rsNOPE A"], r"ann\.txt line 2: variant rsNOPE is not in the genotype store"),
    (["rs3683945 A", "rs3683945 A"], r"ann\.txt line 2: variant rs3683945 is listed again"),
    (["rs3683945 A B"], r"ann\.txt line 1: expected 2 fields"),
])
def test_a_bad_annotation_file_is_refused_before_any_pass_with_file_and_line(cohort, tmp_path, lines, match):
    (tmp_path / "ann.txt").write_text("\n".join(lines) + "\n")
    _refused(config(cohort, tmp_path / "run", file=str(tmp_path / "ann.txt")), match)


def test_an_empty_variant_list_and_a_tiny_component_are_refused_by_name(cohort, tmp_path):
    (tmp_path / "A.snplist").write_text("# nothing here\n")
    (tmp_path / "B.snplist").write_text("rs3683945\n")
    _refused(config(cohort, tmp_path / "r1", lists=[str(tmp_path / "A.snplist"), str(tmp_path / "B.snplist")]),
             r"A\.snplist \(component 'A'\) names no variant")
    (tmp_path / "A.snplist").write_text("rs6269442\n")
    _refused(config(cohort, tmp_path / "r2", lists=[str(tmp_path / "A.snplist"), str(tmp_path / "B.snplist")]),
             r"component 'A' has 1 kept variant\(s\), fewer than the minimum 100")


def test_a_tiny_maf_bin_is_refused_before_the_grm_pass(cohort, one_cluster, tmp_path):
    """MAF bins are known after the variant statistics: the refusal names the bin, and the
    component GRMs are never computed."""
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"component 'maf\[0\.05,0\.0501\)' has \d+ kept variant"):
        run(config(cohort, out, maf_bins=[0.05, 0.0501, 0.5]))
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert stages["variant_stats"]["status"] == "complete"
    assert stages.get("component_grms", {}).get("status") != "complete"
    assert not (out / "components" / "K.npy").exists()


def test_check_prints_the_components_and_their_counts(cohort, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"genotypes: {{plink: {DATA / 'cohort'}}}\nphenotypes: {{file: {PHENO}}}\n"
                    f"components: {{file: {cohort['ann']}, maf_bins: [0.05, 0.25, 0.5]}}\noutput: {tmp_path / 'o'}\n")
    assert main(["check", str(path), "--no-cluster"]) == 0
    text = capsys.readouterr().out
    assert "3 variance components (variants of the genotype input) from components file" in text
    for name, count in (("A", "2,194"), ("B", "1,499"), ("C", "1,374")):
        assert any(ln.split() == [name, count, "variants"] for ln in text.splitlines()), name
    assert "crossed with MAF bins 0.05, 0.25, 0.5: at most 6 components" in text
    assert "REML: components" in text


def test_components_with_a_single_component_method_are_refused():
    with pytest.raises(Exception, match="reml.method: spectral fits one genetic component"):
        parse_config({"genotypes": {"plink": "x"}, "phenotypes": {"file": "p"}, "output": "o",
                      "reml": {"method": "spectral"}, "components": {"file": "a.txt"}})
    with pytest.raises(Exception, match="'mgrm' .* cannot be combined with file"):
        parse_config({"genotypes": {"plink": "x"}, "phenotypes": {"file": "p"}, "output": "o",
                      "components": {"file": "a.txt", "mgrm": "m.txt"}})


def test_auto_fits_exactly_up_to_the_exact_limit_and_matrix_free_above(cohort, tmp_path):
    from bigmm.pipeline.plan import reml_method

    def cfg(**more):
        return parse_config({"genotypes": {"plink": str(DATA / "cohort")}, "phenotypes": {"file": str(PHENO)},
                             "components": {"file": str(cohort["ann"])}, "output": str(tmp_path / "run"), **more})

    # a components section without reml.method is auto: exact up to spectrum.exact_max_n samples
    assert cfg().reml.method == "auto"
    assert reml_method(cfg(spectrum={"exact_max_n": 400}), 400) == "components"
    assert reml_method(cfg(spectrum={"exact_max_n": 300}), 400) == "components_matrix_free"
    assert reml_method(cfg(reml={"method": "components"}, spectrum={"exact_max_n": 300}), 400) == "components"
    with pytest.raises(Exception, match="components_matrix_free makes passes over genotypes"):
        parse_config({"genotypes": {"grm": "g"}, "phenotypes": {"file": "p"}, "output": "o",
                      "reml": {"method": "components_matrix_free"}, "components": {"mgrm": "m.txt"}})


def mf_config(c, out, **components):
    return parse_config({"genotypes": {"plink": str(DATA / "cohort"), "chunks": [200, 2048]},
                         "phenotypes": {"file": str(PHENO)}, "covariates": {"file": str(COVAR), "columns": ["sex"]},
                         "components": components, "output": str(out), "cluster": {"workers": 1},
                         # the library's precision; few probes and loose tolerances keep the test short
                         # (the run and the direct call use the same settings)
                         "reml": {"method": "components_matrix_free", "probes": 8, "dtype": "float64"}})


#: matrix-free run against the direct call: the partial products of a pass are summed in the
#: order the tasks finish, which moves each pass's sums by ~1e-16 relative; the CG and AI
#: iterations carry that into the estimates at well below 1e-7 (a wrong input — another
#: phenotype, covariate or split — moves them by more than 1e-3)
MF_TOL = 1e-7
#: three AI iterations (the fit stops unconverged: these 400 related mice need hundreds of CG
#: steps to converge, and the comparison does not need a converged fit, only the same one)
MF_SETTINGS = {"file": None, "tol": 1e-3, "cg_tol": 1e-4, "max_iter": 3}


def assert_same_mf(reml_json: Path, direct) -> None:
    got = json.loads(reml_json.read_text())
    want = json.loads(json.dumps(direct.to_dict()))
    assert got["reml_method"] == "matrix_free_ai_reml" and got["component_names"] == want["component_names"]
    for g, w in zip(got["phenotypes"], want["phenotypes"], strict=True):
        assert g["name"] == w["name"] and g["n"] == w["n"] and g["passes"] == w["passes"]
        for key in ("h2", "h2_se", "h2_se_mc", "sigma2_e"):
            np.testing.assert_allclose(g[key], w[key], rtol=MF_TOL, atol=MF_TOL, err_msg=key)
        for gc, wc in zip(g["components"], w["components"], strict=True):
            for key in ("sigma2", "sigma2_se", "h2", "h2_se", "h2_se_mc", "share", "enrichment"):
                np.testing.assert_allclose(gc[key], wc[key], rtol=MF_TOL, atol=MF_TOL, err_msg=f"{gc['name']} {key}")


def direct_mf(c):
    d = c["design"]
    op = bigmm.ComponentsOperator(c["store"].genotypes, c["std"], read_components(c["ann"], c["ids"]))
    return bigmm.fit_components_matrix_free(op, d.Y, d.Z, phenotype_names=d.phenotype_names,
                                            covariate_names=d.covariate_names, n_probes=8, seed=0, tol=1e-3,
                                            cg_tol=1e-4, max_iter=3)


def test_a_matrix_free_run_equals_the_direct_fit_and_resumes_after_an_interruption(cohort, one_cluster, tmp_path,
                                                                                   monkeypatch):
    import bigmm.pipeline.stage.reml_components_mf as stage

    settings = dict(MF_SETTINGS, file=str(cohort["ann"]))
    direct = direct_mf(cohort)
    out = tmp_path / "run"
    outcome = run(mf_config(cohort, out, **settings))
    assert outcome.stages_run == ("ingest", "variant_stats", "reml", "report")  # no n x n GRM
    assert_same_mf(out / "reml.json", direct)
    assert (out / "reml_state.npz").exists() and not (out / "reml.partial").exists()
    assert run(mf_config(cohort, out, **settings)).stages_run == ()

    # stopped after 7 passes of the fit, the run resumes from its last state
    real, count = stage.ComponentsOperator.apply, {"n": 0}

    def stopping(self, M, **kw):
        count["n"] += 1
        if count["n"] > 7:
            raise KeyboardInterrupt("stopped")
        return real(self, M, **kw)

    out2 = tmp_path / "run2"
    monkeypatch.setattr(stage.ComponentsOperator, "apply", stopping)
    with pytest.raises(KeyboardInterrupt):
        run(mf_config(cohort, out2, **settings))
    assert (out2 / "reml.partial" / "state.npz").exists()
    monkeypatch.setattr(stage.ComponentsOperator, "apply", real)
    run(mf_config(cohort, out2, **settings))
    assert "resuming after pass 7" in (out2 / "run.log").read_text()
    assert_same_mf(out2 / "reml.json", direct)


def test_the_memory_rule_of_m_dense_grms():
    """8·m·n² for the GRMs and two n_a × n_a work arrays, plus copies of the analysed rows when
    samples are left out or values missing; refused beyond the memory available, naming m and n."""
    from bigmm.pipeline.memory import check_components_memory, components_driver_bytes

    assert components_driver_bytes(3, 1000) == 8 * 3 * 1000**2 + 8 * 2 * 1000**2
    assert components_driver_bytes(3, 1000, 900, missing=True) == 8 * 3 * 1000**2 + 8 * 5 * 900**2
    with pytest.raises(InputError, match=r"components: 4 components on 20000 samples need about 17\.88 GiB"):
        check_components_memory(4, 20_000, 20_000, False, available=2**30)


# --- precomputed GRMs with genotypes, BLUP, results.json, the auto model -----------------------

@pytest.fixture(scope="module")
def mgrm_bfile(cohort, tmp_path_factory):
    """``bigmm reml --mgrm list --bfile cohort --blup`` on GCTA GRM files written here: the .fam
    names the samples, nothing reads the genotypes (no PCs, no GCTA export). One phenotype."""
    d = tmp_path_factory.mktemp("mgrmbfile")
    split = read_components(cohort["ann"], cohort["ids"])
    res = bigmm.component_grms(cohort["store"].genotypes, cohort["std"], split)
    for name, K, p in zip(res.names, res.K, res.n_variants):
        bigmm.write_gcta_grm(d / f"grm_{name}", K, cohort["store"].sample_ids(), n_variants=int(p))
    (d / "mgrm.txt").write_text("".join(f"grm_{n}\n" for n in res.names))
    out = d / "run"
    rc = main(["reml", "--mgrm", str(d / "mgrm.txt"), "--bfile", str(DATA / "cohort"), "--pheno", str(PHENO),
               "--mpheno", "1", "--covar", str(COVAR), "--covar-name", "sex", "--blup", "--out", str(out)])
    assert rc == 0
    return out, [K.astype(np.float32).astype(np.float64) for K in res.K], [f"grm_{n}" for n in res.names]


def test_mgrm_with_genotypes_reads_no_genotypes(mgrm_bfile):
    """--bfile beside --mgrm only names the samples: no ingest, no variant statistics."""
    out, _, _ = mgrm_bfile
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert "ingest" not in stages and "variant_stats" not in stages, list(stages)
    assert not (out / "genotypes.zarr").exists() and stages["blup"]["status"] == "complete"


def test_the_blup_of_a_components_run_is_the_library_s(cohort, mgrm_bfile):
    """blup.tsv: per phenotype the total ĝ (the single-component layout's column), each component's
    û_j and the residual, = bigmm.blup_components on the same float32-rounded GRMs and the run's
    fit (to the 8 digits blup.tsv keeps); NA for the samples the GRMs do not cover (not analysed)."""
    out, K32, names = mgrm_bfile
    d = build_design(cohort["store"].sample_ids(), PHENO, ["pheno1"], COVAR, ["sex"])  # the run's design
    a = d.analysed
    fit = bigmm.ComponentsResult.from_dict(json.loads((out / "reml.json").read_text()))
    b = bigmm.blup_components([K[np.ix_(a, a)] for K in K32], d.Y[a], d.Z[a], fit)
    header = (out / "blup.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["FID", "IID", "pheno1", *(f"pheno1_{n}" for n in names), "pheno1_residual"]
    got = np.genfromtxt(out / "blup.tsv", skip_header=1, usecols=range(2, len(header)), missing_values="NA",
                        filling_values=np.nan)
    want = np.full(got.shape, np.nan)
    want[a] = b.columns()[1]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert np.isnan(got[~a]).all() and np.isfinite(got[a, :4]).all()
    # the report read ĝ from blup.tsv: its accuracy is in results.json
    doc = json.loads((out / "results.json").read_text())
    assert doc["phenotypes"][0]["blup_accuracy_in_sample"] > 0


def test_results_json_names_the_components_model(mgrm_bfile):
    """results.json's reml_method is the run's model, as run.json and reml.method name it; the
    fit's own name of its algorithm is reml_algorithm."""
    out, _, _ = mgrm_bfile
    doc = json.loads((out / "results.json").read_text())
    assert json.loads((out / "run.json").read_text())["reml_method"] == "components"
    assert doc["reml_method"] == "components" and doc["reml_algorithm"] == "ai_reml"
    assert [(p["reml_method"], p["reml_algorithm"]) for p in doc["phenotypes"]] == [("components", "ai_reml")]


def test_auto_picks_the_exact_path_only_where_the_dense_grms_fit(cohort, tmp_path, capsys):
    """auto: exact when n ≤ spectrum.exact_max_n and the m dense GRMs with the fit's work arrays
    (components_driver_bytes) fit the driver's available memory; matrix-free otherwise, and
    ``bigmm check`` says which and why."""
    from bigmm.pipeline.validate import check_file
    from bigmm.pipeline.memory import components_driver_bytes
    from bigmm.pipeline.plan import components_method

    cfg = parse_config({"genotypes": {"plink": str(DATA / "cohort")}, "phenotypes": {"file": str(PHENO)},
                        "components": {"file": str(cohort["ann"])}, "output": str(tmp_path / "run")})
    need = components_driver_bytes(3, 400)
    assert components_method(cfg, 400, (3, need, need))[0] == "components"
    method, why = components_method(cfg, 400, (3, need, need - 1))
    assert method == "components_matrix_free" and "more than the" in why and "available" in why
    # bigmm check on a driver with too little memory for the dense GRMs (psutil's figure as seen
    # by the validator): matrix-free, and no refusal of the exact path's memory
    path = tmp_path / "c.yaml"
    path.write_text(f"genotypes: {{plink: {DATA / 'cohort'}}}\nphenotypes: {{file: {PHENO}}}\n"
                    f"components: {{file: {cohort['ann']}}}\noutput: {tmp_path / 'o'}\n")

    class Small:
        available = 2 ** 20

    import psutil
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(psutil, "virtual_memory", lambda: Small)
        problems, inputs = check_file(path, contact_cluster=False)
    assert problems == [] and inputs.reml_method == "components_matrix_free"
    assert "REML: components_matrix_free (auto: the 3 dense GRMs" in inputs.describe()
    assert main(["check", str(path), "--no-cluster"]) == 0
    assert "REML: components (auto: 400 samples <= spectrum.exact_max_n = 10,000 and the 3 dense GRMs need" \
        in capsys.readouterr().out
