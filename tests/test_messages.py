"""Crashes and poor messages from the second adversarial trial (issue 20, "crashes and messages"):
each case crashed or misled before its fix.

Configs run through the real command line in a subprocess (``bigmm check --no-cluster`` or
``bigmm run``), so the exit status and the message a user sees are what is tested.
"""

import re
import shutil

import pytest

from bigmm.errors import InputError

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

    from bigmm.pipeline.plan import WORKER_BASELINE_BYTES

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
    from bigmm.pipeline.plan import check_task_memory

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
    from bigmm.pipeline.plan import check_task_memory

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
