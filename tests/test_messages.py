"""Crashes and poor messages from the second adversarial trial (issue 20, "crashes and messages"):
each case crashed or misled before its fix.

Configs run through the real command line in a subprocess (``bigmm check --no-cluster`` or
``bigmm run``), so the exit status and the message a user sees are what is tested.
"""

import re
import shutil

import numpy as np
import pytest

from bigmm.errors import InputError
from bigmm.passes import DenseOperator

from test_bad_input import assert_refused, bigmm_cli, cohort, write_config  # noqa: F401  (fixture)


# ---------------------------------------------------------------------------
# memory: the worker's own memory, and the settings that drive a task's share
# ---------------------------------------------------------------------------

def test_a_memory_limit_below_the_workers_own_memory_is_refused_and_the_limit_it_asks_for_runs(tmp_path,
                                                                                              cohort):  # noqa: F811
    """memory_limit 50MiB with GRM blocks of 16 samples: each block task needs 2 MiB, which the
    old rule (60% of the limit per thread) let through, and the worker process, which holds more
    than 50 MiB before any task, was killed by its nanny: a CommClosedError traceback. It is
    refused before compute, naming memory_limit, the worker's baseline and the memory limit the
    run needs; a run with that limit completes."""
    from dask.utils import format_bytes

    from bigmm.pipeline.memory import WORKER_BASELINE_BYTES

    cluster = {"workers": 1, "threads_per_worker": 1, "memory_limit": "50MiB"}
    path = write_config(tmp_path, cohort, grm={"block_size": 16}, cluster=cluster)
    res = bigmm_cli("run", path)
    assert_refused(res, tmp_path / "out", "cluster.memory_limit 50MiB is too small for a Dask worker",
                   f"a worker process holds about {format_bytes(WORKER_BASELINE_BYTES)} before any task",
                   "GRM block task (16 samples", "raise cluster.memory_limit")
    m = re.search(r"needs cluster\.memory_limit of at least (\d+)MiB", res.stderr)
    assert m, res.stderr
    cluster["memory_limit"] = f"{m.group(1)}MiB"
    res = bigmm_cli("run", write_config(tmp_path, cohort, grm={"block_size": 16}, cluster=cluster))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "results.json").exists()


def test_many_threads_per_worker_are_named_in_the_memory_message(tmp_path, cohort):  # noqa: F811
    """threads_per_worker 1000 share one worker's memory: the refusal of a GRM block task used to
    say only "the cluster memory allows 2.46 MiB per task; raise it"; it now names
    threads_per_worker, the threads that would fit, the memory limit these threads need, and
    the workers that keep the parallelism."""
    path = write_config(tmp_path, cohort, cluster={"workers": 1, "threads_per_worker": 1000},
                        grm={"block_size": 60})
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    for frag in ("shared by 1000 threads: cluster.threads_per_worker = 1000",
                 "lower cluster.threads_per_worker to", "more cluster.workers keep the parallelism",
                 "or raise cluster.memory_limit to at least", "or set grm.block_size to"):
        assert frag in res.stderr, res.stderr


def test_the_threads_the_message_allows_fit_and_one_more_does_not(tmp_path, cohort):  # noqa: F811
    """The figures of the message are the rule's: the suggested threads_per_worker fits the task,
    one thread more does not, and the suggested memory_limit fits at the threads asked for."""
    from bigmm.pipeline.config import ClusterConfig
    from bigmm.pipeline.memory import check_task_memory

    need = 5 * 2**20
    tasks = [("a test task", need, "")]
    cc = ClusterConfig(workers=1, threads_per_worker=1000, memory_limit="4GiB")
    with pytest.raises(InputError) as exc:
        check_task_memory(cc, tasks)
    msg = str(exc.value)
    fit = int(re.search(r"lower cluster\.threads_per_worker to (\d+) or fewer", msg).group(1))
    check_task_memory(ClusterConfig(workers=1, threads_per_worker=fit, memory_limit="4GiB"), tasks)
    with pytest.raises(InputError):
        check_task_memory(ClusterConfig(workers=1, threads_per_worker=fit + 1, memory_limit="4GiB"), tasks)
    gib = float(re.search(r"raise cluster\.memory_limit to at least ([\d.]+)GiB", msg).group(1))
    check_task_memory(ClusterConfig(workers=1, threads_per_worker=1000, memory_limit=f"{gib}GiB"), tasks)


def test_a_batch_job_names_its_cores_and_memory():
    """On a batch system a worker job's threads are its cores: the message names
    cluster.jobqueue.cores and cluster.jobqueue.memory, not the local cluster's keys."""
    from bigmm.pipeline.config import ClusterConfig
    from bigmm.pipeline.memory import check_task_memory

    cc = ClusterConfig(backend="slurm", jobqueue={"cores": 64, "memory": "2GiB"})
    with pytest.raises(InputError) as exc:
        check_task_memory(cc, [("a test task", 64 * 2**20, "")])
    msg = str(exc.value)
    assert "cluster.jobqueue.cores = 64" in msg and "of cluster.jobqueue.memory 2GiB" in msg, msg
    assert "cluster.threads_per_worker" not in msg and "cluster.memory_limit" not in msg, msg


# ---------------------------------------------------------------------------
# variants.chr and --chr: PLINK's numbers for X, Y, XY and MT
# ---------------------------------------------------------------------------

def _fileset_with_chroms(cohort, dest, codes):
    """A copy of the cohort whose .bim puts the last variants on other chromosome codes:
    ``codes`` is a list of (code, how many), the rest stay on chromosome 1."""
    dest.mkdir()
    for ext in ("bed", "fam"):
        shutil.copy(cohort.dir / f"cohort.{ext}", dest / f"cohort.{ext}")
    rows = cohort.bim.read_text().splitlines()
    at = len(rows)
    for code, k in reversed(codes):
        for i in range(at - k, at):
            rows[i] = "\t".join([code] + rows[i].split("\t")[1:])
        at -= k
    (dest / "cohort.bim").write_text("\n".join(rows) + "\n")
    return dest / "cohort"


@pytest.mark.parametrize("bim_codes, chr_setting, kept", [
    ([("23", 50)], ["X"], 50),
    ([("X", 50)], [23], 50),
    ([("chrX", 50)], ["23"], 50),
    ([("23", 20), ("24", 10), ("25", 5), ("26", 5)], ["X", "Y", "XY", "MT"], 40),
    ([("X", 20), ("Y", 10), ("PAR1", 5), ("M", 5)], [23, 24, 25, 26], 40),
    ([("23", 20), ("26", 5)], "autosomes", 175),
], ids=["X-selects-23", "23-selects-X", "23-selects-chrX", "names-select-numbers", "numbers-select-names",
        "autosomes"])
def test_variants_chr_reads_plinks_numbers_for_the_sex_chromosomes(tmp_path, cohort, bim_codes, chr_setting,  # noqa: F811
                                                                   kept):
    """``chr: [X]`` on a .bim whose X is coded 23 dropped every variant ("no variant is left");
    the codes name the same chromosome either way, as in PLINK."""
    prefix = _fileset_with_chroms(cohort, tmp_path / "fs", bim_codes)
    path = write_config(tmp_path, cohort, genotypes={"plink": str(prefix)}, variants={"chr": chr_setting})
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 0, res.stderr
    assert f"variants: 200 in the genotype input, {200 - kept} dropped by chr" in res.stdout, res.stdout


def test_the_chr_flag_reads_plinks_numbers(tmp_path, cohort):  # noqa: F811
    """``--chr 23`` keeps a .bim's X; ``--chr 22-X`` is a range over PLINK's numbers; X and 23
    together are one chromosome named twice."""
    import argparse

    from bigmm.pipeline.cli import build_parser
    from bigmm.pipeline.flags import flag_config, parse_chr

    assert parse_chr("22-X") == ["22", "X"] and parse_chr("23,chrY,M") == ["X", "Y", "MT"]
    with pytest.raises(argparse.ArgumentTypeError, match="repeated"):
        parse_chr("X,23")
    prefix = _fileset_with_chroms(cohort, tmp_path / "fs", [("X", 30)])
    argv = ["reml", "--bfile", str(prefix), "--pheno", str(cohort.pheno), "--chr", "23",
            "--out", str(tmp_path / "out"), "--workers", "1"]
    _, text = flag_config(build_parser().parse_args(argv), argv[1:])
    path = tmp_path / "flags.yaml"
    path.write_text(text)
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 0, res.stderr
    assert "variants: 200 in the genotype input, 170 dropped by chr" in res.stdout, res.stdout


# ---------------------------------------------------------------------------
# covariates: more columns than samples; a one-level categorical
# ---------------------------------------------------------------------------

def _wide_covariates(cohort, path, k, extra=None):
    """The cohort's samples with ``k`` random numeric covariates c0..c{k-1} (and ``extra``:
    name -> value for every sample)."""
    import numpy as np

    rng = np.random.default_rng(5)
    rows = cohort.covar.read_text().splitlines()[1:]
    extra = extra or {}
    head = ["FID", "IID"] + [f"c{j}" for j in range(k)] + list(extra)
    out = ["\t".join(head)]
    for r in rows:
        fid, iid = r.split("\t")[:2]
        out.append("\t".join([fid, iid] + [f"{v:.4f}" for v in rng.standard_normal(k)] + list(extra.values())))
    path.write_text("\n".join(out) + "\n")
    return path


def test_more_covariates_than_samples_says_so_with_the_counts(tmp_path, cohort):  # noqa: F811
    """80 covariates for 60 samples: the message named covariate c59 "collinear with intercept,
    c0, c1, ..." (60 names) as if one column were at fault. It now says first that there are more
    fixed effects than samples, with both counts, the fewest samples REML needs and what to do."""
    covar = _wide_covariates(cohort, tmp_path / "wide.covar.tsv", 80)
    path = write_config(tmp_path, cohort, covariates={"file": str(covar), "columns": [f"c{j}" for j in range(80)]})
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 2, res.stderr
    problem = [line for line in res.stderr.splitlines() if line.startswith("  - ")]
    assert len(problem) == 1, res.stderr
    msg = problem[0]
    assert msg.startswith("  - phenotype 'trait1' in ") and "more fixed effects (covariate columns) than samples: " \
        "81 fixed effects (the intercept and 80 covariate columns from " in msg, msg
    assert "wide.covar.tsv" in msg and "for 60 samples with data" in msg and "at least 83 samples" in msg, msg
    assert "use fewer covariates" in msg and "collinear" not in msg, msg
    assert "c0, c1, c2, c3, c4 and 75 more" in msg and "c40" not in msg, msg


def test_more_columns_than_rows_in_the_rank_check_gives_the_counts():
    """The library's rank check, called on its own (bigmm.build_design's users), says the same."""
    import numpy as np

    from bigmm.io.tables import check_full_rank

    Z = np.column_stack([np.ones(10)] + [np.random.default_rng(1).standard_normal(10) for _ in range(12)])
    with pytest.raises(InputError, match=r"more fixed effects \(covariate columns\) than samples: 13 fixed "
                                         r"effects .* for 10 analysed samples"):
        check_full_rank(Z, ["intercept"] + [f"c{j}" for j in range(12)], "cov.tsv")


def test_a_one_level_categorical_is_refused_as_a_constant_numeric_is(tmp_path, cohort):  # noqa: F811
    """A categorical covariate with one level among the analysed samples was dropped without a word,
    while a numeric one that is constant is refused (collinear with the intercept): both are now
    refused the same way, naming the column, the file and its one level."""
    covar = _wide_covariates(cohort, tmp_path / "batch.covar.tsv", 1, {"batch": "plateA", "dose": "7"})
    cfg = write_config(tmp_path, cohort, covariates={"file": str(covar), "columns": ["c0", "batch"],
                                                     "categorical": ["batch"]})
    res = bigmm_cli("check", "--no-cluster", cfg)
    assert res.returncode == 2, res.stderr
    assert ("covariate 'batch' in " in res.stderr and "batch.covar.tsv is constant (collinear with the intercept) "
            "among the analysed samples: a categorical covariate with the one level 'plateA'; drop it"
            in res.stderr), res.stderr
    # the numeric constant: the same words
    cfg = write_config(tmp_path, cohort, covariates={"file": str(covar), "columns": ["c0", "dose"]})
    res = bigmm_cli("check", "--no-cluster", cfg)
    assert res.returncode == 2 and "covariate 'dose' in " in res.stderr, res.stderr
    assert "batch.covar.tsv is constant (collinear with the intercept) among the analysed samples" in res.stderr


def test_a_one_level_discrete_column_of_a_gcta_covar_file_is_refused(tmp_path, cohort):  # noqa: F811
    """The same for GCTA's --covar file (every column discrete)."""
    from bigmm.io.tables import build_design

    ids = [tuple(line.split()[:2]) for line in cohort.fam.read_text().splitlines()]
    dcovar = tmp_path / "d.covar"
    dcovar.write_text("".join(f"{f} {i} site1\n" for f, i in ids))
    with pytest.raises(InputError, match=r"covariate '.*' in .*d\.covar is constant .* one level 'site1'"):
        build_design(ids, cohort.pheno, dcovar_path=dcovar)


# ---------------------------------------------------------------------------
# matrix-free REML at the upper bound h² → 1
# ---------------------------------------------------------------------------

def _expected_information_se(K, y, Z, h):
    """SE of ĥ² from the dense expected REML information ½ tr(P V_a P V_b) (V_g = K, V_e = I)
    at h² = h, σ² profiled: written here, independently of bigmm."""
    n = K.shape[0]
    Hi = np.linalg.inv(h * K + (1 - h) * np.eye(n))
    P = Hi - Hi @ Z @ np.linalg.solve(Z.T @ Hi @ Z, Z.T @ Hi)
    s2 = y @ P @ y / (n - Z.shape[1])
    Ps = P / s2
    info = 0.5 * np.array([[np.trace(Ps @ K @ Ps @ K), np.trace(Ps @ K @ Ps)],
                           [np.trace(Ps @ Ps @ K), np.trace(Ps @ Ps)]])
    grad = np.array([1 - h, -h]) / s2  # ∂h²/∂(σ²_g, σ²_e) at σ²_g + σ²_e = s2
    return float(np.sqrt(grad @ np.linalg.inv(info) @ grad))


@pytest.mark.parametrize("seed", [0, 1])
def test_matrix_free_reml_flags_the_upper_bound_as_the_spectral_fit_does(seed):
    """A cohort simulated with h² = 1 (n = 200, p = 1,000, centred GRM: K 1 = 0): the dense
    reference and the spectral fit put ĥ² at the bound and flag it "upper" with an SE of ~0.16
    from the expected information; the matrix-free fit reported ĥ² = 0.99997, no flag and an
    SE of 0.0015–0.004 (a spurious maximum of its quadrature within 1e-4 of the bound). It now
    reports the bound, flags it, and takes the SE from the expected information too.

    Tolerances: ĥ² equals the bound exactly (both fits use h_max = 1 − 1e-6); the SE within
    15% of the dense expected-information SE at the bound: the matrix-free information carries
    the Monte Carlo error of 30 probes (measured 1–8% on these cohorts)."""
    from conftest import random_genotypes
    from reference import grm_reference, reml_reference

    import bigmm
    from bigmm.mfreml import H2_MAX, fit_matrix_free

    rng = np.random.default_rng(seed)
    n, p = 200, 1000
    K = grm_reference(random_genotypes(rng, n, p, missing=0.0))
    s, U = np.linalg.eigh(K)
    y = U @ (np.sqrt(np.clip(s, 0, None)) * rng.standard_normal(n))  # y ~ N(0, K): h² = 1
    Z = np.column_stack([np.ones(n), rng.standard_normal(n)])
    ref = reml_reference(K, y, Z)
    assert ref["at_upper_bound"], ref["h2"]
    se_ref = _expected_information_se(K, y, Z, H2_MAX)
    spectral = bigmm.fit_reml(bigmm.exact_spectrum(K), y[:, None], Z).fits[0]
    mf = fit_matrix_free(DenseOperator(K), y[:, None], Z, seed=seed).fits[0]
    assert spectral.boundary == "upper" and mf.boundary == "upper", (spectral, mf)
    assert mf.h2 == spectral.h2 == H2_MAX
    assert "at the boundary" in mf.h2_se_method and "at the boundary" in spectral.h2_se_method
    assert abs(mf.h2_se / se_ref - 1) < 0.15, (mf.h2_se, se_ref, spectral.h2_se)
    assert abs(spectral.h2_se / se_ref - 1) < 0.05, (spectral.h2_se, se_ref)


def test_matrix_free_reml_below_the_bound_is_not_flagged():
    """The rule is about the bound: h² = 0.8 on the same kind of cohort gives an interior
    estimate, no flag, the observed information, as before."""
    from conftest import random_genotypes
    from reference import grm_reference

    from bigmm.mfreml import fit_matrix_free

    rng = np.random.default_rng(3)
    n, p = 200, 1000
    K = grm_reference(random_genotypes(rng, n, p, missing=0.0))
    s, U = np.linalg.eigh(K)
    y = U @ (np.sqrt(0.8 * s + 0.2) * rng.standard_normal(n))
    mf = fit_matrix_free(DenseOperator(K), y[:, None], np.ones((n, 1)), seed=3).fits[0]
    assert mf.boundary == "" and mf.h2 < 0.999 and mf.h2_se_method.startswith("observed_information"), mf


# ---------------------------------------------------------------------------
# a run on a given GRM has, by design, no variant statistics
# ---------------------------------------------------------------------------

def test_a_run_on_a_given_grm_does_not_warn_about_variant_statistics(tmp_path):
    """Every run on genotypes.grm warned "report: variant statistics not shown (... variants.zarr
    ...)": there are no genotypes, so there are none to show. The run is quiet about it, its
    report still complete."""
    from pathlib import Path

    import yaml

    data = Path(__file__).parent / "data" / "plink2_grm"
    prefix = tmp_path / "g"
    for suffix in (".grm.bin", ".grm.id", ".grm.N.bin"):
        shutil.copy(data / f"cohort{suffix}", tmp_path / f"g{suffix}")
    cfg = {"genotypes": {"grm": str(prefix)}, "phenotypes": {"file": str(data / "pheno.tsv")},
           "output": str(tmp_path / "out")}
    path = tmp_path / "grm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert "variant statistics" not in res.stderr, res.stderr
    assert "WARNING" not in res.stderr, res.stderr
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "results.json").exists()
