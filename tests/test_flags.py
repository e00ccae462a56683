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
from bigmm.pipeline.flags import config_from_flags, flag_config, parse_chr, phenotype_columns


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
    assert cfg.phenotypes.columns == ["PHENO2"] and cfg.predict.blup
    ref = load_config(yml)
    # the same analysis: every key equal but the output directory and --blup (and the column,
    # which the flags name: the YAML's 2 is the same column of the headerless file, PHENO2)
    dump, ref_dump = cfg.model_dump(mode="json"), ref.model_dump(mode="json")
    for doc in (dump, ref_dump):
        doc.pop("output"), doc.pop("predict"), doc["phenotypes"].pop("columns")
    assert dump == ref_dump

    a = json.loads((tmp_path / "yaml_out" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    # a headerless file's phenotypes are named as PLINK 2 names them, in both runs
    assert [p["name"] for p in b["phenotypes"]] == [p["name"] for p in a["phenotypes"]] == ["PHENO2"]
    assert (out / "hsq" / "PHENO2.hsq").exists()
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
    # headerless: named by position as PLINK 2 does
    assert phenotype_columns(str(cohort / "pheno.txt"), [2]) == ["PHENO2"]
    assert phenotype_columns(str(cohort / "pheno.txt"), ["PHENO2", 1]) == ["PHENO2", "PHENO1"]
    assert phenotype_columns(str(cohort / "pheno_headed.tsv"), [2]) == ["trait2"]
    assert phenotype_columns(str(cohort / "pheno_headed.tsv"), ["trait2", 1]) == ["trait2", "trait1"]
    with pytest.raises(InputError, match=r"--mpheno 3: .* has 2 phenotype columns .*trait1, trait2"):
        phenotype_columns(str(cohort / "pheno_headed.tsv"), [3])
    with pytest.raises(InputError, match=r"--pheno-name bmi: .* no column 'bmi'.*trait1, trait2"):
        phenotype_columns(str(cohort / "pheno_headed.tsv"), ["bmi"], flag="--pheno-name")


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


# -- the flags a GCTA, GEMMA, BOLT or PLINK 2 user types (issue 21) --------------------------------

GEMMA_FAM = Path(__file__).parent / "data" / "gemma_fam"  # .fam with 3 phenotypes, GEMMA's -p file


def _flag_cfg(argv):
    """The configuration ``bigmm reml argv`` writes (through the parser's own checks)."""
    parser = build_parser()
    args = parser.parse_args(["reml", *argv])
    from bigmm.pipeline.flags import check_flags
    check_flags(args.flag_parser, args)
    return parse_config(config_from_flags(args))


def _yaml_cfg(tmp_path, raw):
    """A configuration written by hand, read as ``bigmm run`` reads it."""
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def _same(a, b, *skip):
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    for d in (da, db):
        d.pop("output")
        for key in skip:
            d.pop(key)
    assert da == db


@pytest.mark.parametrize("flags, keys", [
    (["--standardize", "sample_sd"], {"variants": {"standardize": "sample_sd"}}),
    (["--standardize", "center"], {"variants": {"standardize": "center"}}),
    (["--mpheno", "1,3"], {"phenotypes": {"columns": [1, 3]}}),
    (["--mpheno", "1", "3"], {"phenotypes": {"columns": [1, 3]}}),
    (["--mpheno", "all"], {"phenotypes": {"columns": "all"}}),
    (["--pheno-layout", "fid_iid"], {"phenotypes": {"layout": "fid_iid"}}),
])
def test_flags_write_their_keys_gemma_fileset(tmp_path, flags, keys):
    """Each flag's configuration equals the one written by hand with its key (GEMMA's fileset,
    phenotypes in GEMMA's -p layout or in the .fam)."""
    gemma = str(GEMMA_FAM / "pheno_gemma.txt")
    base = ["--bfile", str(GEMMA_FAM / "cohort"), "--pheno", gemma, "--pheno-layout", "gemma", "--out", "o"]
    raw = {"genotypes": {"plink": str(GEMMA_FAM / "cohort")},
           "phenotypes": {"file": gemma, "layout": "gemma", "columns": [1]}, "output": "o"}
    for section, values in keys.items():
        raw.setdefault(section, {}).update(values)
    if raw["phenotypes"]["layout"] == "fid_iid":  # --pheno-layout given twice: the last counts
        raw["phenotypes"]["columns"] = ["PHENO1"]
    got = _flag_cfg(base + flags)
    want = _yaml_cfg(tmp_path, raw)
    if got.phenotypes.layout == "gemma" and got.phenotypes.columns != "all":
        # the flags name GEMMA's column N PHENO{N}; by hand it is N: the same column (below)
        assert got.phenotypes.columns == [f"PHENO{c}" for c in raw["phenotypes"]["columns"]]
        _same(got.model_copy(update={"phenotypes": want.phenotypes}), want)
    else:
        _same(got, want)


def test_pheno_fam_takes_several_columns(tmp_path):
    bfile = ["--bfile", str(GEMMA_FAM / "cohort"), "--out", "o"]
    hand = {"genotypes": {"plink": str(GEMMA_FAM / "cohort")}, "output": "o"}
    for flags, fam in ((["1", "3"], [1, 3]), (["1,3"], [1, 3]), (["all"], "all"), (["2"], 2)):
        _same(_flag_cfg(bfile + ["--pheno-fam", *flags]),
              _yaml_cfg(tmp_path, {**hand, "phenotypes": {"fam": fam}}))
    # a single number stays valid in a config file, and lists are checked
    assert _yaml_cfg(tmp_path, {**hand, "phenotypes": {"fam": 2}}).phenotypes.fam == 2
    with pytest.raises(Exception, match="each once"):
        _yaml_cfg(tmp_path, {**hand, "phenotypes": {"fam": [1, 1]}})


def test_gemma_layout_and_fam_columns_read_the_same_phenotypes(tmp_path):
    """--pheno FILE --pheno-layout gemma --mpheno 1,3 reads what --pheno-fam 1,3 reads (the fixture's
    .fam and GEMMA file hold the same values), and --pheno-fam all every column."""
    from bigmm.pipeline.validate import validate

    common = ["--bfile", str(GEMMA_FAM / "cohort"), "--standardize", "center", "--out", str(tmp_path / "o")]
    a = validate(_flag_cfg(common + ["--pheno", str(GEMMA_FAM / "pheno_gemma.txt"), "--pheno-layout",
                                     "gemma", "--mpheno", "1,3"])).design
    b = validate(_flag_cfg(common + ["--pheno-fam", "1,3"])).design
    c = validate(_flag_cfg(common + ["--pheno-fam", "all"])).design
    assert a.phenotype_names == b.phenotype_names == ["PHENO1", "PHENO3"]
    assert c.phenotype_names == ["PHENO1", "PHENO2", "PHENO3"]
    np.testing.assert_array_equal(a.analysed, b.analysed)
    np.testing.assert_array_equal(a.Y, b.Y)
    np.testing.assert_array_equal(c.Y[:, [0, 2]][c.analysed], b.Y[b.analysed])


def test_pheno_name_mpheno_names_and_covar_name_write_their_keys(cohort, tmp_path):
    d = cohort
    base = ["--bfile", str(d / "c"), "--pheno", str(d / "pheno_headed.tsv"), "--out", "o"]
    hand = {"genotypes": {"plink": str(d / "c")}, "output": "o",
            "phenotypes": {"file": str(d / "pheno_headed.tsv"), "columns": ["trait2", "trait1"]}}
    want = _yaml_cfg(tmp_path, hand)
    for flags in (["--pheno-name", "trait2,trait1"], ["--pheno-name", "trait2", "trait1"],
                  ["--mpheno", "trait2,trait1"], ["--mpheno", "trait2", "1"], ["--mpheno", "2,1"]):
        _same(_flag_cfg(base + flags), want)
    # PLINK 2's --covar-name: named columns of a covariate table with a header; a text column
    # (sex: F/M) is a category, as PLINK 2 takes it
    got = _flag_cfg(base + ["--pheno-name", "trait2,trait1", "--covar", str(d / "covar_headed.tsv"),
                            "--covar-name", "sex,age"])
    _same(got, _yaml_cfg(tmp_path, {**hand, "covariates": {"file": str(d / "covar_headed.tsv"),
                                                          "columns": ["sex", "age"], "categorical": ["sex"]}}))
    # a headerless file's columns are PHENO1, PHENO2 (or numbers)
    assert _flag_cfg(["--bfile", str(d / "c"), "--pheno", str(d / "pheno.txt"), "--pheno-name", "PHENO2",
                      "--out", "o"]).phenotypes.columns == ["PHENO2"]


@pytest.mark.parametrize("extra, message", [
    (["--mpheno", "1,1"], "argument --mpheno: 1 given twice"),
    (["--mpheno", "all,2"], "'all' fits every column: give it alone"),
    (["--mpheno", "1", "--pheno-name", "trait1"], "one of --mpheno or --pheno-name"),
    (["--covar-name", "age", "-", "--covar"], "--covar-name picks columns of --covar FILE"),
    (["--standardize", "gemma"], "invalid choice: 'gemma'"),
    (["--pheno-layout", "plink"], "invalid choice: 'plink'"),
])
def test_bad_new_flags_are_argparse_errors(cohort, tmp_path, capsys, extra, message):
    drop = extra[extra.index("-") + 1:] if "-" in extra else []  # after "-": flags to leave out
    argv = _flags(cohort, tmp_path / "o", *extra[:len(extra) - len(drop) - bool(drop)])
    for flag in drop:
        i = argv.index(flag)
        del argv[i:i + 2]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "bigmm reml: error:" in err and message in err
    assert not (tmp_path / "o").exists()


def test_flag_names_standardize_equal_the_yaml_run(cohort, tmp_path, one_cluster):
    """--standardize sample_sd --pheno-name/--mpheno names --covar-name give the numbers of the
    run of variants.standardize, phenotypes.columns and covariates.file/columns/categorical
    written by hand."""
    d = cohort
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump({
        "genotypes": {"plink": str(d / "c")},
        "variants": {"standardize": "sample_sd"},
        "phenotypes": {"file": str(d / "pheno_headed.tsv"), "columns": ["trait2", "trait1"]},
        "covariates": {"file": str(d / "covar_headed.tsv"), "columns": ["age", "sex"], "categorical": ["sex"]},
        "output": str(tmp_path / "yaml_out"), "cluster": {"workers": 1}}))
    assert main(["run", str(yml)]) == 0
    a = json.loads((tmp_path / "yaml_out" / "results.json").read_text())
    common = ["reml", "--bfile", str(d / "c"), "--pheno", str(d / "pheno_headed.tsv"), "--standardize",
              "sample_sd", "--covar", str(d / "covar_headed.tsv"), "--covar-name", "age,sex", "--workers", "1"]
    for i, select in enumerate((["--pheno-name", "trait2,trait1"], ["--mpheno", "trait2", "1"])):
        out = tmp_path / f"flag_out{i}"
        assert main(common + select + ["--out", str(out)]) == 0
        assert load_config(out / "config.yaml").variants.standardize == "sample_sd"
        b = json.loads((out / "results.json").read_text())
        assert [p["name"] for p in b["phenotypes"]] == [p["name"] for p in a["phenotypes"]] == ["trait2", "trait1"]
        for pa, pb in zip(a["phenotypes"], b["phenotypes"]):
            for key in ("n", "h2", "h2_se", "sigma2_g", "sigma2_e", "logl_reml"):
                # the same configuration through the same code: round-off only
                assert pb[key] == pytest.approx(pa[key], rel=1e-10, abs=1e-12), key
            assert [f["name"] for f in pb["fixed_effects"]] == [f["name"] for f in pa["fixed_effects"]]


def test_reml_flags_of_gcta_are_accepted_and_change_nothing(cohort, tmp_path, capsys):
    argv = _flags(cohort, tmp_path / "o")
    plain, _ = flag_config(build_parser().parse_args(argv), argv)
    for extra in (["--reml"], ["--reml", "--reml-no-lrt"]):
        cfg, text = flag_config(build_parser().parse_args(argv + extra), argv + extra)
        assert cfg == plain
        assert " ".join(extra) in text.splitlines()[1]  # the command line is recorded as typed
    with pytest.raises(SystemExit):
        main(["reml", "--help"])
    assert "--reml accepted for GCTA compatibility; bigmm reml always fits REML" in \
        " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, wrong, right", [
    (["reml", "--bfile", "x", "--pheno", "p", "--cov", "c.txt", "--out", "o"], "--cov", "--covar"),
    (["reml", "--bfile", "x", "--pheno", "p", "--covr", "c.txt", "--out", "o"], "--covr", "--covar"),
    (["reml", "--bfile", "x", "--pheno", "p", "--ot", "o"], "--ot", "--out"),  # before "--out is required"
    (["reml", "--bfile", "x", "--pheno", "p", "--pheno_fam", "1", "--out", "o"], "--pheno_fam", "--pheno-fam"),
    (["run", "x.yaml", "--forc"], "--forc", "--force"),
    (["init", "--forc"], "--forc", "--force"),
    (["check", "x.yaml", "--no-clust"], "--no-clust", "--no-cluster"),
    (["submit", "x.yaml", "--subm"], "--subm", "--submit"),
    (["score", "--ru", "r", "--bfile", "x", "--out", "o"], "--ru", "--run"),
    (["ingest", "--bfile", "x", "--out", "o", "--chunk", "1,2"], "--chunk", "--chunks"),
    (["simulate", "--n", "5", "--p", "5", "--out", "o", "--genotype-miss", "0.1"], "--genotype-miss",
     "--genotype-missing"),
    (["--verb", "init"], "--verb", "--verbose"),
])
def test_abbreviations_are_refused_with_a_suggestion(argv, wrong, right, capsys, tmp_path, monkeypatch):
    """A flag is taken by its whole name only (argparse would take --cov for --covar); an unknown
    one is answered with the nearest flags of its command."""
    monkeypatch.chdir(tmp_path)  # a command that were run anyway would write here
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"unrecognized argument {wrong}: did you mean {right}" in err
    assert err.startswith(f"bigmm {argv[0]}: error:" if not argv[0].startswith("-") else "bigmm: error:")


def test_unknown_flag_without_a_near_one(capsys):
    with pytest.raises(SystemExit):
        main(["reml", "--bfile", "x", "--pheno", "p", "--zzzzzz", "--out", "o"])
    assert "unrecognized argument --zzzzzz (bigmm reml --help lists the flags)" in capsys.readouterr().err


def test_gemma_file_given_as_fid_iid_gets_the_layout_hint(tmp_path, capsys):
    """GEMMA's -p file (NA in the first rows) passed to --pheno: not "duplicate sample NA/NA" but
    the layout to use; also for one- and two-column GEMMA files."""
    rows = (GEMMA_FAM / "pheno_gemma.txt").read_text().splitlines()
    for name, lines in (("na.txt", ["NA NA NA", "NA NA 5.1"] + rows[2:]),
                        ("two.txt", [" ".join(r.split()[:2]) for r in rows]),
                        ("one.txt", [r.split()[0] for r in rows])):
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        out = tmp_path / f"o_{name}"
        code = main(["reml", "--bfile", str(GEMMA_FAM / "cohort"), "--pheno", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "use --pheno-layout gemma (phenotypes.layout: gemma)" in err, (name, err)
        assert not out.exists()
    # integer IDs repeated are a real duplicate: no GEMMA hint
    (tmp_path / "dup.txt").write_text("1 1 2.5\n1 1 3.5\n")
    with pytest.raises(InputError, match="duplicate sample 1/1") as exc:
        __import__("bigmm").read_table(tmp_path / "dup.txt", "phenotype")
    assert "GEMMA" not in str(exc.value)


def test_headerless_phenotypes_are_named_like_plink2(tmp_path):
    """A headerless phenotype file's columns are PHENO1, PHENO2 (PLINK 2's names, as the .fam's),
    not 1, 2 (results "1" and hsq/1.hsq); a number still picks the column, and a headerless
    covariate file keeps its numbered names."""
    from bigmm.io.tables import build_design, read_table

    (tmp_path / "p.txt").write_text("".join(f"F{i} I{i} {i * 1.5} {i % 3}\n" for i in range(1, 9)))
    ids = [(f"F{i}", f"I{i}") for i in range(1, 9)]
    assert read_table(tmp_path / "p.txt", "phenotype").columns == ["PHENO1", "PHENO2"]
    assert read_table(tmp_path / "p.txt", "covariate").columns == ["1", "2"]
    for columns in (["2"], ["PHENO2"], [2]):
        d = build_design(ids, tmp_path / "p.txt", columns)
        assert d.phenotype_names == ["PHENO2"]
        np.testing.assert_array_equal(d.Y[:, 0], [i % 3 for i in range(1, 9)])
    assert build_design(ids, tmp_path / "p.txt").phenotype_names == ["PHENO1", "PHENO2"]
    with pytest.raises(InputError, match=r"no column '3'.*PHENO1, PHENO2 \(no header line"):
        build_design(ids, tmp_path / "p.txt", ["3"])


def test_help_says_what_gcta_users_meet(capsys):
    def help_text(command):  # without the line breaks (and spaces) argparse wraps the help with
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return "".join(capsys.readouterr().out.split())

    text = help_text("reml")
    for said in ("not a file prefix as GCTA's",  # --out is a folder
                 "PLINK 2's PREFIX.rel.bin/.rel.id",  # --grm
                 "gcta (default; GCTA's GRM", "center (GEMMA -gk 1), sample_sd (GEMMA -gk 2; BOLT-REML"):
        assert "".join(said.split()) in text, said
    assert "".join("y = 1 + 0.5 (age - 50)/10 + 0.3 sex + g + e".split()) in help_text("simulate")
