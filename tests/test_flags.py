"""The flag form ``bigmm reml --bfile ... --pheno ... --out DIR``: the configuration it writes,
that its run equals the YAML run of the same analysis, resuming, and its errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import bigmm
from bigmm.errors import InputError
from bigmm.pipeline.cli import build_parser, main
from bigmm.pipeline.config import load_config, parse_config
from bigmm.pipeline.flags import config_from_flags, flag_config, parse_chr, phenotype_column


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small cohort with GCTA-layout (headerless) phenotype, --qcovar and --covar files."""
    d = tmp_path_factory.mktemp("flags")
    c = bigmm.simulate(200, 1000, h2=[0.6, 0.4], seed=5, out_plink=d / "c", genotype_missing=0.01,
                       phenotype_missing=0.05)
    bigmm.write_tables(c, d / "pheno_headed.tsv", d / "covar_headed.tsv")
    ph = [ln.split("\t") for ln in (d / "pheno_headed.tsv").read_text().splitlines()[1:]]
    cv = [ln.split("\t") for ln in (d / "covar_headed.tsv").read_text().splitlines()[1:]]
    (d / "pheno.txt").write_text("".join(" ".join(r) + "\n" for r in ph))   # FID IID trait1 trait2
    (d / "q.txt").write_text("".join(f"{r[0]} {r[1]} {r[2]}\n" for r in cv))  # age
    (d / "c.txt").write_text("".join(f"{r[0]} {r[1]} {r[3]}\n" for r in cv))  # sex
    return d


@pytest.fixture
def one_cluster(monkeypatch):
    """Both runs on one in-process Dask cluster (the CLI would start a cluster per run; its
    start-up, not the run, is what costs time here)."""
    import contextlib

    from distributed import Client, LocalCluster

    import bigmm.pipeline.stages as stages

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        monkeypatch.setattr(stages, "dask_client", lambda *args: contextlib.nullcontext(client))
        yield client


def _flags(d, out, *extra):
    return ["reml", "--bfile", str(d / "c"), "--pheno", str(d / "pheno.txt"), "--mpheno", "2",
            "--covar", str(d / "c.txt"), "--qcovar", str(d / "q.txt"), "--maf", "0.01", "--geno", "0.05",
            "--workers", "1", "--out", str(out), *extra]


def _stage_times(out):
    return {k: v["finished"] for k, v in json.loads((out / "run.json").read_text())["stages"].items()}


def test_flag_run_equals_yaml_run_and_resumes(cohort, tmp_path, capsys, one_cluster):
    d = cohort
    # the YAML run of the same analysis, written by hand (not by the flag code)
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump({
        "genotypes": {"plink": str(d / "c")},
        "variants": {"min_maf": 0.01, "max_missing": 0.05},
        "phenotypes": {"file": str(d / "pheno.txt"), "columns": [2]},
        "covariates": {"covar": str(d / "c.txt"), "qcovar": str(d / "q.txt")},
        "output": str(tmp_path / "yaml_out"),
        "cluster": {"workers": 1}}))
    assert main(["run", str(yml)]) == 0
    out = tmp_path / "flag_out"
    argv = _flags(d, out, "--blup")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"bigmm run {out / 'config.yaml'}" in printed

    # the written config: a header naming the command line, and the keys of the flags
    text = (out / "config.yaml").read_text()
    assert text.startswith("# bigmm run configuration made from the flags of")
    assert "--mpheno 2" in text.splitlines()[1]
    cfg = load_config(out / "config.yaml")
    assert cfg.phenotypes.columns == ["2"] and cfg.predict.blup
    ref = load_config(yml)
    # the same analysis: every key equal but the output directory and --blup
    dump, ref_dump = cfg.model_dump(mode="json"), ref.model_dump(mode="json")
    for doc in (dump, ref_dump):
        doc.pop("output"), doc.pop("predict")
    assert dump == ref_dump

    a = json.loads((tmp_path / "yaml_out" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in b["phenotypes"]] == ["2"]
    assert b["n_variants"] == a["n_variants"] and b["n_samples"] == a["n_samples"]
    for pa, pb in zip(a["phenotypes"], b["phenotypes"]):
        for key in ("n", "h2", "h2_se", "sigma2_g", "sigma2_e", "logl_reml", "lrt_pvalue"):
            # the same configuration through the same code: only the order of floating-point
            # sums in Dask tasks may differ, so equal to round-off
            assert pb[key] == pytest.approx(pa[key], rel=1e-10, abs=1e-12), key
        assert [f["name"] for f in pb["fixed_effects"]] == [f["name"] for f in pa["fixed_effects"]]
        assert len(pb["fixed_effects"]) == 3  # intercept, the --qcovar column, the --covar column
        np.testing.assert_allclose([f["estimate"] for f in pb["fixed_effects"]],
                                   [f["estimate"] for f in pa["fixed_effects"]], rtol=1e-10)
    assert (out / "blup.tsv").exists()

    # the same flags resume (nothing reruns); so does bigmm run OUT/config.yaml
    before = _stage_times(out)
    assert main(argv) == 0
    assert main(["run", str(out / "config.yaml")]) == 0
    assert _stage_times(out) == before


def test_mpheno_names_the_column(cohort):
    assert phenotype_column(str(cohort / "pheno.txt"), 2) == "2"  # headerless: named by position
    assert phenotype_column(str(cohort / "pheno_headed.tsv"), 2) == "trait2"
    with pytest.raises(InputError, match=r"--mpheno 3: .* has 2 phenotype columns .*trait1, trait2"):
        phenotype_column(str(cohort / "pheno_headed.tsv"), 3)


def _args(*argv):
    parser = build_parser()
    args = parser.parse_args(["reml", *argv])
    return args


def test_every_flag_maps_to_its_key(cohort, tmp_path):
    d = cohort
    argv = ["--bfile", str(d / "c.bed"), "--pheno-fam", "6", "--keep", "k.txt",
            "--remove", "r.txt", "--extract", "e.txt", "--exclude", "x.txt", "--chr", "1-3,X",
            "--maf", "0.05", "--geno", "0.1", "--prevalence", "0.1", "--spectrum", "randomized",
            "--rank", "50", "--method", "matrix_free", "--blup", "--workers", "3", "--threads", "2",
            "--memory", "3GiB", "--covar", "c.txt", "--qcovar", "q.txt", "--out", str(tmp_path / "o")]
    cfg = parse_config(config_from_flags(_args(*argv)))
    cwd = Path.cwd()
    assert cfg.genotypes.plink == d / "c" and cfg.genotypes.grm is None
    assert cfg.phenotypes.fam == 6 and cfg.phenotypes.file is None and cfg.phenotypes.prevalence == 0.1
    assert (cfg.samples.keep, cfg.samples.remove) == (cwd / "k.txt", cwd / "r.txt")
    v = cfg.variants
    assert (v.extract, v.exclude, v.chr) == (cwd / "e.txt", cwd / "x.txt", ["1", "2", "3", "X"])
    assert (v.min_maf, v.max_missing) == (0.05, 0.1)
    assert (cfg.covariates.covar, cfg.covariates.qcovar) == (cwd / "c.txt", cwd / "q.txt")
    assert (cfg.spectrum.method, cfg.spectrum.rank, cfg.reml.method) == ("randomized", 50, "matrix_free")
    assert cfg.predict.blup and (cfg.cluster.workers, cfg.cluster.threads_per_worker) == (3, 2)
    assert cfg.cluster.memory_limit == "3GiB" and cfg.output == tmp_path / "o"
    assert parse_config(config_from_flags(_args("--bfile", "x", "--pheno-fam", "6", "--chr", "autosomes",
                                                 "--out", "o"))).variants.chr == "autosomes"
    # a precomputed GRM stands instead of the genotypes
    g = parse_config(config_from_flags(_args("--grm", str(d / "g"), "--pheno", str(d / "pheno.txt"), "--out", "o"))).genotypes
    assert g.grm == d / "g" and g.plink is None


def test_flag_config_round_trips(cohort, tmp_path):
    argv = _flags(cohort, tmp_path / "o", "--spectrum", "randomized", "--rank", "20", "--method", "auto")
    cfg, text = flag_config(build_parser().parse_args(argv), argv)
    path = tmp_path / "o" / "config.yaml"
    path.parent.mkdir()
    path.write_text(text)
    assert load_config(path) == cfg and cfg.source == path


@pytest.mark.parametrize("extra, message", [
    (["--maf", "0.7"], "--maf must be ≥ 0.0 and ≤ 0.5"),
    (["--prevalence", "1"], "--prevalence must be > 0.0 and < 1.0"),
    (["--mpheno", "0"], "--mpheno must be ≥ 1"),
    (["--chr", "5-2"], "range '5-2' must go up"),
    (["--spectrum", "fast"], "invalid choice: 'fast'"),
    (["--rank", "20"], "--rank is the rank of a randomized spectrum"),
    (["--pheno-fam", "6"], "one of --pheno FILE or --pheno-fam N"),
])
def test_bad_flags_are_argparse_errors(cohort, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(_flags(cohort, tmp_path / "o", *extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "bigmm reml: error:" in err and message in err
    assert not (tmp_path / "o").exists()


def test_no_genotypes_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["reml", "--pheno", "p.txt", "--out", "o"])
    assert "--bfile PREFIX" in capsys.readouterr().err


def test_selection_flags_equal_their_config_keys(cohort, tmp_path, one_cluster):
    """--keep/--remove/--extract/--exclude/--chr give the run of samples.keep/remove and
    variants.extract/exclude/chr written by hand."""
    d = cohort
    fam = [ln.split()[:2] for ln in (d / "c.fam").read_text().splitlines()]
    bim = [ln.split()[1] for ln in (d / "c.bim").read_text().splitlines()]
    (tmp_path / "keep.txt").write_text("".join(f"{f} {i}\n" for f, i in fam[:150]))
    (tmp_path / "remove.txt").write_text("".join(f"{f} {i}\n" for f, i in fam[:10]))
    (tmp_path / "extract.txt").write_text("\n".join(bim[:800]) + "\n")
    (tmp_path / "exclude.txt").write_text("\n".join(bim[:50]) + "\n")
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump({
        "genotypes": {"plink": str(d / "c")},
        "samples": {"keep": str(tmp_path / "keep.txt"), "remove": str(tmp_path / "remove.txt")},
        "variants": {"min_maf": 0.01, "max_missing": 0.05, "extract": str(tmp_path / "extract.txt"),
                     "exclude": str(tmp_path / "exclude.txt"), "chr": "autosomes"},
        "phenotypes": {"file": str(d / "pheno.txt"), "columns": [2]},
        "covariates": {"covar": str(d / "c.txt"), "qcovar": str(d / "q.txt")},
        "output": str(tmp_path / "yaml_out"), "cluster": {"workers": 1}}))
    assert main(["run", str(yml)]) == 0
    out = tmp_path / "flag_out"
    assert main(_flags(d, out, "--keep", str(tmp_path / "keep.txt"), "--remove", str(tmp_path / "remove.txt"),
                       "--extract", str(tmp_path / "extract.txt"), "--exclude", str(tmp_path / "exclude.txt"),
                       "--chr", "autosomes")) == 0
    a = json.loads((tmp_path / "yaml_out" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["n_samples"] == a["n_samples"] and b["n_variants"] == a["n_variants"] <= 750
    (pa,), (pb,) = a["phenotypes"], b["phenotypes"]
    assert pb["n"] == pa["n"] <= 140
    for key in ("h2", "h2_se", "sigma2_g", "sigma2_e", "logl_reml"):
        assert pb[key] == pytest.approx(pa[key], rel=1e-10, abs=1e-12), key  # same config: round-off


def test_invalid_inputs_write_nothing(cohort, tmp_path, capsys):
    out = tmp_path / "o"
    argv = _flags(cohort, out)
    argv[argv.index("--covar") + 1] = str(cohort / "missing.txt")
    assert main(argv) == 2
    assert "missing.txt does not exist" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()


def test_parse_chr():
    assert parse_chr("1-22") == [str(i) for i in range(1, 23)]
    assert parse_chr("autosomes") == "autosomes"
    assert parse_chr("2,X,MT") == ["2", "X", "MT"]


def test_main_called_again_keeps_one_terminal_handler(tmp_path, capsys):
    """The CLI's stderr handler is replaced, not added again, when main() runs twice in one process
    (before, the first call's handler wrote to a closed stream in later runs of a test session)."""
    import logging

    for _ in range(3):
        assert main(["init", str(tmp_path / "t.yaml"), "--force"]) == 0
    handlers = [h for h in logging.getLogger("bigmm").handlers if getattr(h, "bigmm_cli", False)]
    assert len(handlers) == 1
