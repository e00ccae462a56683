"""Batch-system paths, checked as text without a batch system: the driver's SLURM script from
``bigmm submit``, and the dask-jobqueue clusters (SLURM, PBS, SGE) built from ``cluster:``.

The external-scheduler backend (``cluster: {address: ...}``) runs for real in
tests/test_faults.py::test_external_scheduler_matches_local_cluster.
"""

import builtins
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

import bigmm
from bigmm.pipeline.cluster import BLAS_ENV, make_jobqueue_cluster
from bigmm.errors import ConfigError

SUBMIT = {"job_name": "h2-height", "queue": "short", "account": "proj42", "walltime": "02:30:00",
          "cores": 4, "memory": "6GiB", "job_extra_directives": ["--qos=low", "--constraint=avx2"],
          "setup": ["module load python/3.11", "source /opt/venvs/bigmm/bin/activate"]}
JOBQUEUE = {"queue": "normal", "account": "myproject", "walltime": "04:00:00", "cores": 8,
            "memory": "32GiB", "processes": 2, "job_extra_directives": ["--constraint=avx2"],
            "job_script_prologue": ["module load python/3.11"]}


def write_config(tmp_path, name="run.yaml", **sections):
    (tmp_path / "pheno.tsv").write_text("FID IID y\nF1 I1 1.0\n")
    cfg = {"genotypes": {"plink": str(tmp_path / "c")}, "phenotypes": {"file": str(tmp_path / "pheno.tsv")},
           "output": str(tmp_path / "results" / "run1"), **sections}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bigmm_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


# ---------------------------------------------------------------------------
# bigmm submit: the driver's job script
# ---------------------------------------------------------------------------

def test_submit_writes_the_job_script_for_the_config(tmp_path):
    cfg = write_config(tmp_path, submit=SUBMIT)
    res = bigmm_cli("submit", cfg)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "results" / "run1"
    script = out / "submit.sbatch"
    assert f"job script: {script} (submit it with: sbatch {script})" in res.stdout
    assert os.access(script, os.X_OK)
    text = script.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    for d in ("--job-name=h2-height", "--time=02:30:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
              "--mem=6144M", f"--output={out}/slurm-%j.out", "--signal=B:TERM@120", "--partition=short",
              "--account=proj42", "--qos=low", "--constraint=avx2"):
        assert f"#SBATCH {d}" in directives, (d, text)
    # sbatch reads directives only before the first command
    first_command = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert all(lines.index(d) < first_command for d in directives), text
    body = lines[first_command:]
    assert body[0] == "set -euo pipefail"
    assert body.index("module load python/3.11") < body.index("source /opt/venvs/bigmm/bin/activate")
    run_line = f"{sys.executable} -m bigmm.pipeline.cli run {cfg.resolve()} &"
    assert run_line in body, text
    assert body.index("source /opt/venvs/bigmm/bin/activate") < body.index(run_line)
    assert body[body.index(run_line):] == [run_line, "pid=$!", "trap 'kill -TERM $pid; wait $pid' TERM",
                                           "wait $pid"]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    # --script elsewhere: the same text, and the directory of the job's log exists (sbatch does
    # not create it: the job would fail before its first line)
    shutil.rmtree(out)
    other = tmp_path / "jobs" / "h2.sbatch"
    res = bigmm_cli("submit", cfg, "--script", other)
    assert res.returncode == 0, res.stderr
    assert other.read_text() == text
    assert out.is_dir()


def test_job_script_forwards_sigterm_to_bigmm(tmp_path):
    """SLURM signals the batch shell (B:TERM); the trap must pass it on to the run and wait."""
    fake = tmp_path / "fake-python"
    seen = tmp_path / "seen"
    fake.write_text(f"#!/bin/bash\ntrap 'echo TERM > {seen}; exit 143' TERM\necho started > {seen}\n"
                    "while true; do sleep 0.1; done\n")
    fake.chmod(0o755)
    cfg = bigmm.load_config(write_config(tmp_path, submit={"setup": ["export BIGMM_JOB=1"]}))
    from bigmm.pipeline.submit import job_script

    script = tmp_path / "job.sh"
    script.write_text(job_script(cfg, python=str(fake)))
    proc = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        t0 = time.monotonic()
        while not (seen.exists() and seen.read_text() == "started\n" and catches_sigterm(proc.pid)):
            assert time.monotonic() - t0 < 30 and proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # to the shell only, as SLURM does with B:
        assert proc.wait(30) == 143
        assert seen.read_text() == "TERM\n"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler installed (here: the script's trap)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_submit_without_sbatch_is_a_clear_error(tmp_path):
    if shutil.which("sbatch"):
        pytest.skip("this machine has sbatch")
    cfg = write_config(tmp_path, submit=SUBMIT)
    res = bigmm_cli("submit", cfg, "--submit")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    script = tmp_path / "results" / "run1" / "submit.sbatch"
    assert f"sbatch not found: this machine has no SLURM; the script is in {script}" in res.stderr
    assert script.exists()


# ---------------------------------------------------------------------------
# dask-jobqueue clusters from cluster:
# ---------------------------------------------------------------------------

def jobqueue_cluster(tmp_path, backend, **jobqueue):
    cfg = bigmm.load_config(write_config(tmp_path, cluster={"backend": backend, "workers": 3,
                                                            "jobqueue": {**JOBQUEUE, **jobqueue}}))
    return cfg, make_jobqueue_cluster(cfg.cluster, scheduler_host="127.0.0.1", shared_dir=tmp_path / "tls")


@pytest.mark.distributed
def test_slurm_cluster_has_the_configured_resources(tmp_path):
    pytest.importorskip("dask_jobqueue")
    cfg, cluster = jobqueue_cluster(tmp_path, "slurm")
    try:
        # workers authenticate with a key made for this cluster (mutual TLS), read from a private folder
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
        keys = sorted((tmp_path / "tls").iterdir())
        assert keys and all(k.stat().st_mode & 0o777 == 0o600 for k in keys), keys
        # dashboard: false keeps the scheduler's HTTP server on localhost (not :8787 on every interface)
        assert cluster.dashboard_link.startswith("http://127.0.0.1:") and ":8787/" not in cluster.dashboard_link
        text = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -J bigmm-slurm", "#SBATCH -p normal", "#SBATCH -A myproject", "#SBATCH -n 1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH -t 04:00:00",
                 "#SBATCH --constraint=avx2", "module load python/3.11"):
        assert line in text.splitlines(), (line, text)
    for var in BLAS_ENV:
        assert f"export {var}=1" in text.splitlines(), text
    # 2 worker processes of 4 threads, sharing the job's memory
    assert "--nworkers 2" in text and "--nthreads 4" in text and "--memory-limit 16.00GiB" in text, text
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        assert f"{flag} {tmp_path / 'tls'}/" in text, text
    assert cfg.cluster.jobqueue.cores == 8


@pytest.mark.distributed
@pytest.mark.parametrize("backend, lines", [
    ("pbs", ["#PBS -N bigmm-pbs", "#PBS -q normal", "#PBS -A myproject", "#PBS -l walltime=04:00:00",
             "#PBS -l select=1:ncpus=8:mem=32GB", "#PBS --constraint=avx2"]),
    ("sge", ["#$ -N bigmm-sge", "#$ -q normal", "#$ -P myproject", "#$ -l h_rt=04:00:00",
             "#$ --constraint=avx2"]),
])
def test_pbs_and_sge_clusters_build(tmp_path, backend, lines):
    pytest.importorskip("dask_jobqueue")
    _, cluster = jobqueue_cluster(tmp_path, backend)
    try:
        text = cluster.job_script()
    finally:
        cluster.close()
    for line in lines:
        assert line in text.splitlines(), (line, text)
    for var in BLAS_ENV:
        assert f"export {var}=1" in text


def test_missing_dask_jobqueue_gives_the_install_hint(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_jobqueue(name, *args, **kwargs):
        if name == "dask_jobqueue" or name.startswith("dask_jobqueue."):
            raise ImportError("No module named 'dask_jobqueue'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "dask_jobqueue", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_jobqueue)
    cfg = bigmm.load_config(write_config(tmp_path, cluster={"backend": "slurm"}))
    hint = "cluster.backend 'slurm' needs dask-jobqueue: pip install 'bigmm[jobqueue]'"
    with pytest.raises(ConfigError) as exc:
        make_jobqueue_cluster(cfg.cluster)
    assert str(exc.value) == hint
    from bigmm.pipeline.validate import check_config

    assert hint in check_config(cfg, contact_cluster=True)
