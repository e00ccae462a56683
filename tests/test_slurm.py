"""bigmm's SLURM path against a real single-node SLURM on this machine (slurmctld, slurmd and
munge, set up by scripts/ci/slurm-local.sh, which needs root and Debian's slurm-wlm):

- a dask-jobqueue cluster from ``cluster: {backend: slurm}`` starts its workers as SLURM jobs,
  and they join the scheduler by mutual TLS with a key of this cluster; a client without the
  key is refused;
- ``bigmm run`` on that backend gives the numbers of a run on the local cluster.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import bigmm
from bigmm.pipeline.cluster import make_jobqueue_cluster

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("dask_jobqueue")
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (the CI machines run as root)")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "ci" / "slurm-local.sh")], capture_output=True, text=True,
                         timeout=300)
    if res.returncode != 0:
        pytest.skip(f"no local SLURM: {res.stderr.strip() or res.stdout.strip()}")
    assert shutil.which("sbatch")


def jobqueue_section(tmp_path: Path) -> dict:
    return {"queue": "debug", "walltime": "00:10:00", "cores": 1, "memory": "2GiB", "processes": 1,
            "log_directory": str(tmp_path / "slurm-logs"), "local_directory": str(tmp_path / "dask-scratch")}


def test_slurm_workers_join_by_tls_and_a_client_without_the_key_is_refused(slurm, tmp_path):
    from distributed import Client
    from distributed.security import Security

    from bigmm.pipeline.config import ClusterConfig

    cfg = ClusterConfig(backend="slurm", workers=1, jobqueue=jobqueue_section(tmp_path))
    cluster = make_jobqueue_cluster(cfg, scheduler_host="127.0.0.1", shared_dir=tmp_path / "tls")
    try:
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            # the worker runs in a SLURM job
            env = client.run(lambda: {k: v for k, v in os.environ.items() if k.startswith("SLURM_JOB")})
            (worker_env,) = env.values()
            assert worker_env.get("SLURM_JOB_ID"), worker_env
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        # plain TCP, and TLS with a key of the intruder's own (not signed by this cluster's CA)
        marker = tmp_path / "pwned"
        for addr, security in ((address.replace("tls://", "tcp://"), None), (address, Security.temporary())):
            with pytest.raises((OSError, TimeoutError)):
                with Client(addr, timeout="5s", security=security) as c:
                    c.run(lambda: open(marker, "w").write("x"))
        assert not marker.exists()
    finally:
        cluster.close()


def run_config(tmp_path: Path, cohort_dir: Path, out: Path, cluster: dict) -> Path:
    cfg = {"genotypes": {"plink": str(cohort_dir / "c")},
           "phenotypes": {"file": str(cohort_dir / "pheno.tsv"), "columns": ["trait1"]},
           "covariates": {"file": str(cohort_dir / "covar.tsv"), "columns": ["age"]},
           "spectrum": {"method": "exact"}, "output": str(out), "cluster": cluster}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_bigmm_run_on_slurm_equals_the_local_run(slurm, tmp_path):
    sim = bigmm.simulate(200, 1000, h2=0.5, seed=11, out_plink=tmp_path / "c")
    bigmm.write_tables(sim, tmp_path / "pheno.tsv", tmp_path / "covar.tsv")
    results = {}
    for name, cluster in (("local", {"workers": 1, "threads_per_worker": 1}),
                          ("slurm", {"backend": "slurm", "workers": 1, "jobqueue": jobqueue_section(tmp_path)})):
        out = tmp_path / name
        res = subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", "run",
                              str(run_config(tmp_path, tmp_path, out, cluster))],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        results[name] = json.loads((out / "results.json").read_text())
        if name == "slurm":
            assert "cluster: slurm, 1 jobs" in res.stderr and "scheduler tls://" in res.stderr, res.stderr
            assert not (out / ".bigmm-tls").exists()  # the workers' key goes with the cluster
    (local,), (slurm_fit,) = results["local"]["phenotypes"], results["slurm"]["phenotypes"]
    # the same computation in other worker processes with other BLAS threading: K is summed in
    # another order and stored in float32 (relative round-off ~1e-7 per entry), so the estimates
    # agree to about that, far inside any statistical difference (SE(h2) ~ 0.1 here)
    for key in ("h2", "h2_se", "sigma2_g", "sigma2_e", "logl_reml"):
        assert slurm_fit[key] == pytest.approx(local[key], rel=1e-6), key
