"""Bad input to ``bigmm run``: each case runs the real command line in a subprocess.

Every refusal must exit with status 2, print a message that names what is
wrong and where (file, line, sample ID, key, value) without a Python
traceback, and leave nothing in the output directory that looks like a
finished run. The cohort is simulated once per module (60 samples x 200
variants); the configs use one single-threaded Dask worker. Most bad inputs
are rejected before the cluster starts; the .bed checks and the two valid runs
start it (a few seconds each).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import bigmm

N, P = 60, 200
LIGHT = {"workers": 1, "threads_per_worker": 1}
#: what a refused run may leave in its output directory: the manifest of a run that did not finish
ALLOWED_AFTER_FAILURE = {"run.json", "run.log"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    prefix = d / "cohort"
    sim = bigmm.simulate(N, P, h2=0.5, seed=7, out_plink=prefix)
    bigmm.write_tables(sim, d / "cohort.pheno.tsv", d / "cohort.covar.tsv")
    return SimpleNamespace(dir=d, prefix=prefix, pheno=d / "cohort.pheno.tsv", covar=d / "cohort.covar.tsv",
                           bed=d / "cohort.bed", bim=d / "cohort.bim", fam=d / "cohort.fam")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def write_config(tmp_path: Path, cohort, name: str = "run.yaml", **sections) -> Path:
    """A valid config for the cohort; ``sections`` replace top-level entries (None removes one).
    Its report leaves the figures out (``report.figures: false``: ~2 s less per run, these tests
    look at the run layer, tests/test_report.py at the figures); ``report={}`` draws them."""
    cfg = {
        "genotypes": {"plink": str(cohort.prefix)},
        "phenotypes": {"file": str(cohort.pheno)},
        "covariates": {"file": str(cohort.covar), "columns": ["age", "sex"], "categorical": ["sex"]},
        "output": str(tmp_path / "out"),
        "cluster": dict(LIGHT),
        "report": {"figures": False},
    }
    for key, value in sections.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run in ``run/out`` (modification times kept) at ``tmp_path/out``, its
    config pointing at the copy and recorded in the copy's run.json as the one that made it:
    (config, output folder)."""
    shutil.copytree(run / "out", tmp_path / "out")
    cfg = yaml.safe_load((run / "run.yaml").read_text())
    cfg["output"] = str(tmp_path / "out")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    manifest["config_source"] = str(path)
    (tmp_path / "out" / "run.json").write_text(json.dumps(manifest, indent=2))
    return path, tmp_path / "out"


def bigmm_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def assert_refused(res: subprocess.CompletedProcess, out: Path | None, *fragments: str) -> None:
    err = res.stderr
    assert res.returncode == 2, f"exit status {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    assert "bigmm: error:" in err, err
    for frag in fragments:
        assert frag in err, f"{frag!r} not in the message:\n{err}"
    if out is not None and out.exists():
        left = set(os.listdir(out))
        assert "results.json" not in left
        assert left <= ALLOWED_AFTER_FAILURE, f"a refused run left {sorted(left)} in {out}"
        if "run.json" in left:
            assert '"status": "complete"' not in (out / "run.json").read_text()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, rows) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def set_cell(rows: list[str], line: int, column: int, value: str) -> list[str]:
    """Copy of tab-separated ``rows`` with the cell at 1-based ``line`` and 0-based ``column`` replaced."""
    rows = list(rows)
    fields = rows[line - 1].split("\t")
    fields[column] = value
    rows[line - 1] = "\t".join(fields)
    return rows


def copy_fileset(cohort, dest: Path) -> Path:
    dest.mkdir()
    for ext in ("bed", "bim", "fam"):
        shutil.copy(cohort.dir / f"cohort.{ext}", dest / f"cohort.{ext}")
    return dest / "cohort"


# ---------------------------------------------------------------------------
# samples and tables
# ---------------------------------------------------------------------------

def test_no_sample_overlap(tmp_path, cohort):
    rows = lines(cohort.pheno)
    pheno = write_lines(tmp_path / "other.pheno.tsv", [rows[0]] + ["X" + r[1:] for r in rows[1:]])
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(pheno)}))
    assert_refused(res, tmp_path / "out", "no sample of phenotype file", "other.pheno.tsv",
                   "F1/I1", "X1/I1", "FID and IID")


def test_non_numeric_phenotype(tmp_path, cohort):
    pheno = write_lines(tmp_path / "text.pheno.tsv", set_cell(lines(cohort.pheno), 17, 2, "abc"))
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(pheno)}))
    assert_refused(res, tmp_path / "out", "text.pheno.tsv", "line 17", "F16/I16", "'abc'", "'trait1'",
                   "not a number")


def test_non_numeric_covariate(tmp_path, cohort):
    covar = write_lines(tmp_path / "text.covar.tsv", set_cell(lines(cohort.covar), 5, 2, "old"))
    cfg = write_config(tmp_path, cohort, covariates={"file": str(covar), "columns": ["age", "sex"],
                                                     "categorical": ["sex"]})
    assert_refused(bigmm_cli("run", cfg), tmp_path / "out", "text.covar.tsv", "line 5", "F4/I4", "'old'",
                   "'age'", "not a number")


def test_duplicate_sample_in_phenotype_file(tmp_path, cohort):
    rows = lines(cohort.pheno)
    assert rows[3].startswith("F3\tI3\t")
    pheno = write_lines(tmp_path / "dup.pheno.tsv", rows + [set_cell(rows, 4, 2, "0.5")[3]])
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(pheno)}))
    assert_refused(res, tmp_path / "out", "dup.pheno.tsv", f"line {N + 2}", "duplicate", "F3/I3",
                   "first on line 4")


def test_duplicate_sample_in_fam(tmp_path, cohort):
    prefix = copy_fileset(cohort, tmp_path / "geno")
    fam = lines(prefix.with_suffix(".fam"))
    fam[9] = fam[2]  # line 10 repeats F3/I3 of line 3
    write_lines(prefix.with_suffix(".fam"), fam)
    res = bigmm_cli("run", write_config(tmp_path, cohort, genotypes={"plink": str(prefix)}))
    assert_refused(res, tmp_path / "out", "cohort.fam line 10", "duplicate", "F3/I3", "line 3")


def test_constant_phenotype(tmp_path, cohort):
    rows = lines(cohort.pheno)
    for i in range(2, len(rows) + 1):
        rows = set_cell(rows, i, 2, "1.5")
    pheno = write_lines(tmp_path / "const.pheno.tsv", rows)
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(pheno)}))
    assert_refused(res, tmp_path / "out", "const.pheno.tsv", "'trait1'", "constant")


def test_all_missing_phenotype(tmp_path, cohort):
    rows = lines(cohort.pheno)
    for i in range(2, len(rows) + 1):
        rows = set_cell(rows, i, 2, "NA")
    pheno = write_lines(tmp_path / "na.pheno.tsv", rows)
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(pheno)}))
    assert_refused(res, tmp_path / "out", "na.pheno.tsv", "'trait1'", "missing")


@pytest.fixture
def extra_covariates(tmp_path, cohort):
    """The covariate file plus cov1, cov2 (random), cov3 = 2 cov1 + 1 and batch = 7 (constant)."""
    rng = np.random.default_rng(3)
    rows = lines(cohort.covar)
    out = [rows[0] + "\tcov1\tcov2\tcov3\tbatch"]
    for r in rows[1:]:
        c1, c2 = rng.normal(size=2).round(3)
        out.append(f"{r}\t{c1}\t{c2}\t{2 * c1 + 1:.3f}\t7")
    return write_lines(tmp_path / "extra.covar.tsv", out)


def test_constant_covariate(tmp_path, cohort, extra_covariates):
    cfg = write_config(tmp_path, cohort, covariates={"file": str(extra_covariates), "columns": ["age", "batch"]})
    assert_refused(bigmm_cli("run", cfg), tmp_path / "out", "covariate 'batch'", "extra.covar.tsv",
                   "constant (collinear with the intercept)")


def test_collinear_covariates(tmp_path, cohort, extra_covariates):
    cfg = write_config(tmp_path, cohort, covariates={"file": str(extra_covariates),
                                                     "columns": ["cov1", "cov2", "cov3"]})
    # cov3 = 2 cov1 + 1: the message names the columns it depends on, not cov2
    assert_refused(bigmm_cli("run", cfg), tmp_path / "out", "covariate 'cov3'", "extra.covar.tsv",
                   "is collinear with intercept, cov1 among")


def test_fewer_samples_than_fixed_effects_plus_two(tmp_path, cohort):
    rows = lines(cohort.pheno)
    for i in range(5, len(rows) + 1):  # 3 values left; intercept + age + sex = 3 fixed effects
        rows = set_cell(rows, i, 2, "NA")
    pheno = write_lines(tmp_path / "few.pheno.tsv", rows)
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(pheno)}))
    assert_refused(res, tmp_path / "out", "few.pheno.tsv", "'trait1'", "3 samples", "3 fixed effects",
                   "at least 5")


def test_phenotype_file_not_text(tmp_path, cohort):
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(cohort.bed)}))
    assert_refused(res, tmp_path / "out", "phenotype file", "cohort.bed")


# ---------------------------------------------------------------------------
# the config
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sections, fragments", [
    ({"colour": "blue"}, ["colour: unknown key"]),
    ({"source": "x.yaml"}, ["source: unknown key"]),  # a RunConfig field, but not a YAML key
    ({"variants": {"min_maf": 0.01, "standardise": "gcta"}},
     ["variants.standardise: unknown key", "did you mean 'standardize'"]),
    ({"variants": {"min_maf": "abc"}}, ["variants.min_maf", "'abc'"]),
    ({"cluster": {"workers": 0, "threads_per_worker": 1}}, ["cluster.workers", "greater than or equal to 1",
                                                           "got 0"]),
    ({"phenotypes": None}, ["phenotypes: required key is missing"]),
], ids=["unknown-top-level", "source-key", "unknown-nested", "wrong-type", "out-of-range", "missing-section"])
def test_bad_config(tmp_path, cohort, sections, fragments):
    cfg = write_config(tmp_path, cohort, name="bad.yaml", **sections)
    assert_refused(bigmm_cli("run", cfg), tmp_path / "out", "invalid configuration", str(cfg), *fragments)
    assert not (tmp_path / "out").exists()


def test_yaml_python_tag_is_not_executed(tmp_path, cohort):
    sentinel = tmp_path / "executed"
    cfg = write_config(tmp_path, cohort, name="evil.yaml")
    cfg.write_text(cfg.read_text() + f'note: !!python/object/apply:os.system ["touch {sentinel}"]\n')
    res = bigmm_cli("run", cfg, cwd=tmp_path)
    assert_refused(res, tmp_path / "out", "evil.yaml", "not valid YAML", "python/object/apply:os.system")
    assert not sentinel.exists()
    assert not (tmp_path / "out").exists()


def test_config_file_missing(tmp_path):
    assert_refused(bigmm_cli("run", tmp_path / "nope.yaml"), None, "config file", "nope.yaml", "does not exist")


def test_config_file_not_text(tmp_path, cohort):
    assert_refused(bigmm_cli("run", tmp_path), None, "config file", str(tmp_path))
    assert_refused(bigmm_cli("run", cohort.bed), None, "config file", "cohort.bed")


# ---------------------------------------------------------------------------
# missing and broken files
# ---------------------------------------------------------------------------

def test_phenotype_file_missing(tmp_path, cohort):
    res = bigmm_cli("run", write_config(tmp_path, cohort, phenotypes={"file": str(tmp_path / "nope.tsv")}))
    assert_refused(res, tmp_path / "out", "phenotype file", "nope.tsv", "does not exist")


def test_genotype_prefix_missing(tmp_path, cohort):
    res = bigmm_cli("run", write_config(tmp_path, cohort, genotypes={"plink": str(tmp_path / "nope")}))
    assert_refused(res, tmp_path / "out", "PLINK fileset", "nope.bed", "nope.bim", "nope.fam")


def _break_fileset(tmp_path, cohort, how: str) -> Path:
    prefix = copy_fileset(cohort, tmp_path / "geno")
    bed, bim, fam = (prefix.with_suffix(f".{e}") for e in ("bed", "bim", "fam"))
    if how == "truncated":
        bed.write_bytes(bed.read_bytes()[:1000])
    elif how == "magic":
        bed.write_bytes(b"XYZ" + bed.read_bytes()[3:])
    elif how == "bim-short":
        write_lines(bim, lines(bim)[:-1])
    elif how == "fam-short":  # a middle line: the samples after it would silently shift by one
        rows = lines(fam)
        write_lines(fam, rows[:9] + rows[10:])
    return prefix


@pytest.mark.parametrize("how, fragments", [
    ("truncated", ["cohort.bed is truncated", "1000 bytes", f"cohort.fam has {N} samples",
                   f"cohort.bim has {P} variants"]),
    ("magic", ["cohort.bed is not a PLINK .bed file", "wrong magic number"]),
    ("bim-short", ["cohort.bed is longer than expected", f"cohort.bim has {P - 1} variants"]),
    # 59 samples need as many bytes per variant as 60: only the padding bits can show it
    ("fam-short", ["cohort.bed holds genotypes for more samples than the 59 in cohort.fam"]),
])
def test_broken_plink_fileset(tmp_path, cohort, how, fragments):
    prefix = _break_fileset(tmp_path, cohort, how)
    res = bigmm_cli("run", write_config(tmp_path, cohort, genotypes={"plink": str(prefix)}))
    assert_refused(res, tmp_path / "out", *fragments)


# ---------------------------------------------------------------------------
# an output directory that holds another run
# ---------------------------------------------------------------------------

def test_output_of_another_run(tmp_path, cohort):
    out = tmp_path / "out"
    first = write_config(tmp_path, cohort, name="first.yaml", variants={"min_maf": 0.0})
    res = bigmm_cli("run", first)
    assert res.returncode == 0, res.stderr
    results = out / "results.json"
    before = (results.read_bytes(), results.stat().st_mtime_ns, (out / "run.json").read_bytes())

    second = write_config(tmp_path, cohort, name="second.yaml", variants={"min_maf": 0.05})
    res = bigmm_cli("run", second)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    for frag in ("bigmm: error:", f"output directory {out}", "another run", "--force"):
        assert frag in res.stderr, res.stderr
    assert (results.read_bytes(), results.stat().st_mtime_ns, (out / "run.json").read_bytes()) == before

    res = bigmm_cli("run", second, "--force")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert yaml.safe_load(results.read_text())["config"]["variants"]["min_maf"] == 0.05
