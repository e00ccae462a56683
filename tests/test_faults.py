"""Faults during a run, with real processes: killed workers and drivers, SIGTERM, changed and
damaged inputs, another scheduler, locks, ``bigmm check`` and ``bigmm status``.

Runs that must be stopped at a chosen place run the real command line in a subprocess with
``BIGMM_TEST_PAUSE_AT`` set (``bigmm.tasks.pause_point``): the driver logs "test pause at ..."
and waits there, and the test then kills it (SIGKILL to its process group: the driver and its
local workers, like a node that dies) or sends it SIGTERM (what SLURM sends at the time limit).
Every test asserts on the manifest ``run.json`` and ``run.log``, not only on exit codes.

One cohort (800 samples x 6000 variants, chunks 100 x 1000) serves all tests; the configs use
a randomized spectrum (4 passes over X) with the GCTA export, so that a run has both a GRM
(36 blocks of 100 samples) and pass checkpoints. Numbers from the randomized spectrum are
compared to round-off only: its passes add the tasks' partial products in the order they
finish, so two undisturbed runs already differ in the last bits.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
import zarr
from conftest import local_cluster

import bigmm
from bigmm.passes import GrmOperator

N, P = 800, 6000
CHUNKS = [100, 1000]
BLOCK = 100  # 8 x 8 GRM blocks: 36 tasks
N_BLOCKS = 36
GRM_DESC = f"GRM {N}x{N} blocks"  # the progress label of the GRM's task list (pause points)
SPECTRUM = {"method": "randomized", "rank": 10, "oversample": 10, "power_iters": 2, "probes": 10,
            "seed": 3}  # 4 passes over X
LIGHT = {"workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"}
#: what results.json numbers are compared on (randomized spectrum: equal to round-off)
NUMBERS = ("n", "h2", "h2_se", "sigma2_g", "sigma2_e", "logl_reml", "logl_ml", "lrt_stat", "pve")


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    sim = bigmm.simulate(N, P, h2=[0.6, 0.3], seed=5, out_plink=d / "c", out_zarr=d / "c.zarr",
                         chunks=tuple(CHUNKS), genotype_missing=0.01)
    bigmm.write_tables(sim, d / "pheno.tsv", d / "covar.tsv")
    return SimpleNamespace(prefix=d / "c", store=d / "c.zarr", pheno=d / "pheno.tsv", covar=d / "covar.tsv")


@pytest.fixture(scope="module")
def client():
    """A real LocalCluster of 2 single-threaded worker processes, shared by the API tests."""
    from distributed import Client

    with local_cluster(2, 1) as cluster, Client(cluster) as c:
        yield c


def write_config(path: Path, cohort, out: Path, pheno: Path | None = None, **sections) -> Path:
    cfg = {
        "genotypes": {"plink": str(cohort.prefix), "chunks": CHUNKS},
        "variants": {"min_maf": 0.01, "max_missing": 0.05},
        "phenotypes": {"file": str(pheno or cohort.pheno), "columns": ["trait1", "trait2"]},
        "covariates": {"file": str(cohort.covar), "columns": ["age", "sex"], "categorical": ["sex"]},
        "spectrum": dict(SPECTRUM),
        "grm": {"export_gcta": True, "block_size": BLOCK},
        "output": str(out),
        "cluster": dict(LIGHT),
        "report": {"figures": False},  # ~2 s less per run; the figures are tests/test_report.py's
    }
    for key, value in sections.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(cohort, client, tmp_path_factory):
    """An undisturbed run (API, on the shared cluster): results.json and the GCTA GRM bytes."""
    d = tmp_path_factory.mktemp("reference")
    cfg = bigmm.load_config(write_config(d / "ref.yaml", cohort, d / "out"))
    bigmm.run(cfg, client=client)
    return SimpleNamespace(results=json.loads((d / "out" / "results.json").read_text()),
                           grm_bin=(d / "out" / "gcta" / "grm.grm.bin").read_bytes())


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "BIGMM_TEST_PAUSE_AT"}


def start_run(cfg: Path, log_dir: Path, pause: str | None = None, resume_when: Path | None = None) -> subprocess.Popen:
    """``bigmm run`` in its own process group (stdout/stderr to files in ``log_dir``); paused at
    ``pause`` until killed, or until the file ``resume_when`` exists."""
    env = clean_env()
    if pause:
        env["BIGMM_TEST_PAUSE_AT"] = pause
    if resume_when:
        env["BIGMM_TEST_RESUME_WHEN"] = str(resume_when)
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("stderr-*")))
    with open(log_dir / f"stdout-{n}", "w") as so, open(log_dir / f"stderr-{n}", "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(cfg)], env=env, stdout=so,
                                stderr=se, start_new_session=True)
    proc.stderr_path = log_dir / f"stderr-{n}"
    return proc


def stderr_of(proc) -> str:
    return proc.stderr_path.read_text()


def finish(proc, timeout=300) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=clean_env())


def wait_for_pause(proc, out: Path, point: str, timeout=240) -> None:
    """Wait until the run logs that it stopped at ``point``."""
    t0 = time.monotonic()
    needle = f"test pause at {point} "
    while time.monotonic() - t0 < timeout:
        log = out / "run.log"
        if log.exists() and needle in log.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before pausing at {point}:\n"
                        f"{stderr_of(proc)}")
        time.sleep(0.05)
    kill_group(proc)
    pytest.fail(f"no pause at {point} within {timeout} s:\n{stderr_of(proc)}")


def kill_group(proc) -> None:
    """SIGKILL the driver and every process it started (its local workers), and reap them."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)
    # the workers are gone too: no process is left writing into the run directory
    assert group_ends(proc.pid), f"processes of group {proc.pid} survived SIGKILL"


def group_ends(pgid: int, timeout=20) -> bool:
    """Whether every process of a process group is gone within ``timeout`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def last_run_log(out: Path) -> str:
    """run.log lines of the most recent run (the file accumulates over runs)."""
    text = (out / "run.log").read_text()
    starts = [m.start() for m in re.finditer(r"^.* INFO bigmm \S+ run, config ", text, re.M)]
    return text[starts[-1]:]


def ledger(path: Path) -> np.ndarray:
    """The GRM block ledger (upper triangle: 1 = block written)."""
    return np.triu(np.asarray(zarr.open_group(str(path), mode="r")["done"][...]))


def assert_same_numbers(doc: dict, ref: dict, rtol=1e-9) -> None:
    got = {p["name"]: p for p in doc["phenotypes"]}
    want = {p["name"]: p for p in ref["phenotypes"]}
    assert set(got) == set(want)
    for name in want:
        for key in NUMBERS:
            assert got[name][key] == pytest.approx(want[name][key], rel=rtol, abs=1e-12), (name, key)
    assert doc["n_variants"] == ref["n_variants"]


def tmp_leftovers(out: Path) -> list:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp-*"))


# ---------------------------------------------------------------------------
# 1. a worker process SIGKILLed mid-GRM and mid-pass: same results
# ---------------------------------------------------------------------------

class WorkerKiller(threading.Thread):
    """Once ``progress()`` returns how far the computation got (None: not far enough), SIGKILL a
    worker process that runs a task whose key contains ``task``."""

    def __init__(self, client, progress, task, timeout=120):
        super().__init__(daemon=True)
        self.client, self.progress, self.task, self.timeout = client, progress, task, timeout
        self.pids = client.run(os.getpid)  # worker address -> PID
        self.killed = None
        self.error = None

    def run(self):
        try:
            t0 = time.monotonic()
            while self.progress() is None:
                if time.monotonic() - t0 > self.timeout:
                    raise TimeoutError("never ready")
                time.sleep(0.005)
            while time.monotonic() - t0 < self.timeout:
                busy = {a: keys for a, keys in self.client.processing().items()
                        if any(self.task in str(k) for k in keys)}
                if busy:
                    addr = next(iter(busy))
                    self.killed = {"address": addr, "pid": self.pids[addr], "when": self.progress()}
                    os.kill(self.pids[addr], signal.SIGKILL)
                    return
                time.sleep(0.002)
            raise TimeoutError(f"no worker ran a {self.task} task")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def worker_pids_after_restart(client, killed_pid, n=2, timeout=60) -> set:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pids = set(client.run(os.getpid).values())
        if len(pids) == n and killed_pid not in pids:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"the nanny did not restart worker {killed_pid}")


@pytest.fixture(scope="module")
def store_std(cohort):
    store = bigmm.open_store(cohort.store)
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta", min_maf=0.01)
    return store, std


@pytest.mark.distributed
def test_worker_killed_mid_grm_gives_the_same_grm(store_std, client, tmp_path):
    from bigmm.grm import create_grm_store

    store, std = store_std

    def grm_into(path):
        create_grm_store(path, N, BLOCK, {})
        return np.asarray(bigmm.grm(store.genotypes, std, block_size=BLOCK, out=path)[...])

    K_ref = grm_into(tmp_path / "ref.zarr")
    path = tmp_path / "killed.zarr"

    def blocks_done():
        try:
            return int(ledger(path).sum()) or None
        except Exception:  # noqa: BLE001 - not created yet
            return None

    killer = WorkerKiller(client, blocks_done, "_block_task")
    killer.start()
    K = grm_into(path)
    killer.join(10)
    assert killer.error is None, killer.error
    assert killer.killed is not None
    # the kill landed in the middle of the GRM: some blocks written, others still to do
    assert 1 <= killer.killed["when"] < N_BLOCKS, killer.killed
    pids = worker_pids_after_restart(client, killer.killed["pid"])
    assert pids != set(killer.pids.values())
    assert ledger(path).sum() == N_BLOCKS
    assert np.array_equal(K, K_ref)  # bitwise: each block is one deterministic task


@pytest.mark.distributed
def test_worker_killed_mid_pass_gives_the_same_spectrum(store_std, client):
    store, std = store_std
    kw = dict(oversample=100, power_iters=2, seed=11, n_probes=10)  # l = 110: passes of ~1 GFlop
    ref = bigmm.randomized_spectrum(GrmOperator(store.genotypes, std), 10, **kw)

    class Checkpoint:  # the pipeline's checkpoint protocol; here only to see pass 1 end
        def __init__(self):
            self.passes = []

        def load(self):
            return None

        def save(self, state):
            self.passes.append(state["pass"])

    ck = Checkpoint()
    killer = WorkerKiller(client, lambda: list(ck.passes) or None, "_apply_task")  # after pass 1
    killer.start()
    spec = bigmm.randomized_spectrum(GrmOperator(store.genotypes, std), 10, checkpoint=ck, **kw)
    killer.join(10)
    assert killer.error is None, killer.error
    assert killer.killed["when"] in ([1], [1, 2]), killer.killed  # during pass 2 (or 3)
    worker_pids_after_restart(client, killer.killed["pid"])
    assert ck.passes == [1, 2]  # block Krylov, power_iters 2: 3 passes, none saved after the last
    # the same seed gives the same Ω and probes: equal to round-off (sums in completion order)
    np.testing.assert_allclose(spec.s, ref.s, rtol=1e-10)
    assert spec.trace_K == pytest.approx(ref.trace_K, rel=1e-12)
    np.testing.assert_allclose(spec.diag_K, ref.diag_K, rtol=1e-12)
    assert spec.tail_trace_K2 == pytest.approx(ref.tail_trace_K2, rel=1e-9)
    # same subspace: the top-k projectors agree
    assert np.linalg.norm(spec.U @ spec.U.T - ref.U @ ref.U.T) < 1e-8


@pytest.mark.distributed
def test_a_pass_whose_scattered_block_died_with_its_only_worker_runs_again(store_std, caplog):
    """One worker: killing it mid-pass loses the block of vectors scattered to it (before, the
    pass failed with FutureCancelledError, "lost scattered data"); the pass runs again with a new
    copy on the restarted worker and gives the same product."""
    from distributed import Client

    store, std = store_std
    rng = np.random.default_rng(0)
    M = rng.normal(size=(N, 60))
    with local_cluster(1, 1) as cluster, Client(cluster) as c:
        ref, _ = GrmOperator(store.genotypes, std).apply(M)
        killer = WorkerKiller(c, lambda: True, "_apply_task")
        killer.start()
        with caplog.at_level("WARNING", logger="bigmm"):
            got, _ = GrmOperator(store.genotypes, std).apply(M)
        killer.join(10)
        assert killer.error is None, killer.error
    assert "was lost with a worker" in caplog.text and "the pass runs again" in caplog.text
    np.testing.assert_allclose(got, ref, rtol=1e-10)  # the same sums, maybe in another order


# ---------------------------------------------------------------------------
# 2. the driver SIGKILLed in three stages: each rerun resumes, nothing committed is redone
# ---------------------------------------------------------------------------

def test_driver_killed_in_three_stages_resumes(cohort, reference, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out)
    logs = tmp_path / "logs"

    # (a) mid-GRM: the driver stops after 2 blocks came back (the running ones still finish)
    proc = start_run(cfg, logs, f"{GRM_DESC}:2")
    wait_for_pause(proc, out, f"{GRM_DESC}:2")
    kill_group(proc)
    m = manifest(out)
    assert m["status"] == "running" and m["resume_from"] == "grm"
    assert list(m["stages"]) == ["ingest", "variant_stats"]
    assert not (out / "grm.zarr").exists()
    done = ledger(out / "grm.zarr.partial")
    n_done = int(done.sum())
    assert 2 <= n_done < N_BLOCKS
    K_dir = out / "grm.zarr.partial" / "K" / "c"
    mtimes = {(i, j): (K_dir / str(i) / str(j)).stat().st_mtime_ns for i, j in zip(*np.nonzero(done))}
    stages_a = m["stages"]
    assert (out / ".bigmm.lock").exists()  # a killed run cannot remove its lock

    # (b) resume; stop mid-spectrum, in pass 2 after the checkpoint of pass 1
    point = "randomized spectrum pass 2/3:1"  # block Krylov, power_iters 2: 3 passes
    proc = start_run(cfg, logs, point)
    wait_for_pause(proc, out, point)
    kill_group(proc)
    assert "removing a stale lock" in stderr_of(proc)
    log = last_run_log(out)
    for stage in ("ingest", "variant_stats"):
        assert re.search(rf"stage {stage}: up to date \(fingerprint \w+\), skipped", log), log
    assert f"GRM: {n_done} of {N_BLOCKS} blocks already done, computing {N_BLOCKS - n_done}" in log
    assert "randomized spectrum: checkpoint after pass 1" in log
    m = manifest(out)
    assert m["resume_from"] == "spectrum" and list(m["stages"]) == ["ingest", "variant_stats", "grm"]
    assert {k: m["stages"][k] for k in stages_a} == stages_a  # earlier entries untouched
    state = zarr.open_group(str(out / "spectrum.partial" / "pass-1.zarr"), mode="r")
    assert state.attrs["pass"] == 1
    assert not (out / "spectrum.partial" / "pass-2.zarr").exists()
    stages_b = m["stages"]

    # (c) resume; stop at the start of reml (rotate committed)
    proc = start_run(cfg, logs, "reml")
    wait_for_pause(proc, out, "reml")
    kill_group(proc)
    log = last_run_log(out)
    for stage in ("ingest", "variant_stats", "grm"):
        assert re.search(rf"stage {stage}: up to date \(fingerprint \w+\), skipped", log), log
    assert "randomized spectrum: resuming after pass 1 of 3 (checkpoint)" in log
    assert "randomized spectrum pass 1/3" not in log  # pass 1 is not recomputed
    m = manifest(out)
    assert m["resume_from"] == "reml" and list(m["stages"]) == ["ingest", "variant_stats", "grm",
                                                                  "spectrum", "rotate"]
    assert {k: m["stages"][k] for k in stages_b} == stages_b
    assert not (out / "spectrum.partial").exists()
    stages_c = m["stages"]

    # (d) resume to the end
    proc = start_run(cfg, logs)
    assert finish(proc) == 0, stderr_of(proc)
    log = last_run_log(out)
    for stage in ("ingest", "variant_stats", "grm", "spectrum", "rotate"):
        assert re.search(rf"stage {stage}: up to date \(fingerprint \w+\), skipped", log), log
    assert re.search(r"run complete in \d+ s: 2 stages run \(reml, report\), 5 up to date", log)
    m = manifest(out)
    assert m["status"] == "complete" and "resume_from" not in m
    assert {k: m["stages"][k] for k in stages_c} == stages_c
    # blocks written before the first kill were never rewritten (the ledger was trusted)
    K_final = out / "grm.zarr" / "K" / "c"
    assert {b: (K_final / str(b[0]) / str(b[1])).stat().st_mtime_ns for b in mtimes} == mtimes
    assert (out / "gcta" / "grm.grm.bin").read_bytes() == reference.grm_bin  # the GRM bit for bit
    assert_same_numbers(json.loads((out / "results.json").read_text()), reference.results)
    assert not tmp_leftovers(out)


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only for every process, root included (a read-only bind mount over it)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root (the CI machines run as root)")
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode:
        pytest.skip("this machine does not allow bind mounts")
    try:
        # the remount failed once with mount's exit status 32 while the run wrote under the
        # folder (a fresh-clone suite run; the same test passed alone just after): tried again
        # for up to 5 s before failing
        for _ in range(50):
            done = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True)
            if done.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"mount -o remount,ro,bind {path}: {done.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.distributed
def test_output_made_read_only_mid_grm(cohort, reference, tmp_path):
    """The run folder turns read-only while GRM blocks are being written: one clear error (no
    chained tracebacks), status tells that no process holds the run, and once the folder is
    writable again the same command resumes to the uninterrupted run's numbers."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out)
    logs, go = tmp_path / "logs", tmp_path / "go"
    out.mkdir()
    proc = start_run(cfg, logs, f"{GRM_DESC}:2", resume_when=go)
    wait_for_pause(proc, out, f"{GRM_DESC}:2")
    with read_only(out):
        go.touch()
        assert finish(proc) == 2, stderr_of(proc)
        err = stderr_of(proc)
        assert "Traceback" not in err and "During handling" not in err, err
        assert err.count("bigmm: error:") == 1, err
        assert re.search(rf"bigmm: error: cannot write {re.escape(str(out))}/\S+ \(Read-only file system\) in "
                         rf"stage grm: make {re.escape(str(out))} writable and run the same command again; the "
                         rf"committed stages are kept and the run resumes from grm", err), err
        assert "could not record the end of the run" in err
        res = run_cli("status", out)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"{out}: run stopped (run.json says running, but no bigmm process holds the run")
    proc = start_run(cfg, logs)
    assert finish(proc) == 0, stderr_of(proc)
    assert (out / "gcta" / "grm.grm.bin").read_bytes() == reference.grm_bin
    assert_same_numbers(json.loads((out / "results.json").read_text()), reference.results)
    assert manifest(out)["status"] == "complete"
    assert not tmp_leftovers(out)


def test_matrix_free_reml_resumes_by_step(cohort, client, tmp_path):
    """reml.method: matrix_free, the driver SIGKILLed in Lanczos step 3 (after the state of step 2
    was committed): the rerun resumes after step 2 (its log says so, and it makes fewer passes)
    and gives the numbers of an uninterrupted run. Sums over tasks arrive in completion order, so
    "the same" is to round-off propagated through the steps (rtol 1e-7)."""
    reml = {"method": "matrix_free", "probes": 8, "tol": 1e-6}
    ref_out = tmp_path / "ref"
    bigmm.run(bigmm.load_config(write_config(tmp_path / "ref.yaml", cohort, ref_out, reml=reml,
                                             grm={"export_gcta": False})), client=client)
    ref = json.loads((ref_out / "results.json").read_text())
    steps = ref["phenotypes"][0]["lanczos_steps"]
    assert steps > 3
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out, reml=reml, grm={"export_gcta": False})
    logs = tmp_path / "logs"
    point = "matrix-free REML pass 3:1"
    proc = start_run(cfg, logs, point)
    wait_for_pause(proc, out, point)
    kill_group(proc)
    m = manifest(out)
    assert m["resume_from"] == "reml" and "rotate" not in m["stages"]
    assert (out / "reml.partial" / "state.npz").exists() and not (out / "reml.json").exists()
    proc = start_run(cfg, logs)
    assert finish(proc) == 0, stderr_of(proc)
    log = last_run_log(out)
    assert "matrix-free REML: resuming after step 2 (checkpoint)" in log, log
    assert manifest(out)["stages"]["reml"]["passes_over_X"] == steps - 2
    assert not (out / "reml.partial").exists() and (out / "reml_state.npz").exists()
    doc = json.loads((out / "results.json").read_text())
    assert_same_numbers(doc, ref, rtol=1e-7)
    for got, want in zip(doc["phenotypes"], ref["phenotypes"]):
        assert got["lanczos_steps"] == want["lanczos_steps"]
        assert got["h2_se_mc"] == pytest.approx(want["h2_se_mc"], rel=1e-6)


# ---------------------------------------------------------------------------
# 3. SIGTERM: a clean stop that says how to resume
# ---------------------------------------------------------------------------

def test_sigterm_stops_cleanly_then_resumes(cohort, reference, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out)
    proc = start_run(cfg, tmp_path / "logs", f"{GRM_DESC}:3")
    wait_for_pause(proc, out, f"{GRM_DESC}:3")
    os.kill(proc.pid, signal.SIGTERM)  # to the driver only, as SLURM's batch shell forwards it
    assert finish(proc, 120) == 143, stderr_of(proc)
    err = stderr_of(proc)
    assert "stopped by signal 15; run the same command again to resume" in err
    assert "Traceback" not in err
    m = manifest(out)
    assert m["status"] == "interrupted" and m["resume_from"] == "grm"
    assert "grm" not in m["stages"]
    assert "interrupted during stage grm" in last_run_log(out)
    assert not (out / "results.json").exists()
    assert not (out / "grm.zarr").exists()  # the stage in flight committed nothing ...
    n_done = int(ledger(out / "grm.zarr.partial").sum())  # ... but its finished blocks are kept
    assert 3 <= n_done < N_BLOCKS
    assert not tmp_leftovers(out)
    assert not (out / ".bigmm.lock").exists()
    assert group_ends(proc.pid), "processes of the stopped run are still running"

    proc = start_run(cfg, tmp_path / "logs")
    assert finish(proc) == 0, stderr_of(proc)
    assert "removing a stale lock" not in stderr_of(proc)
    assert f"GRM: {n_done} of {N_BLOCKS} blocks already done" in last_run_log(out)
    assert manifest(out)["status"] == "complete"
    assert (out / "gcta" / "grm.grm.bin").read_bytes() == reference.grm_bin
    assert_same_numbers(json.loads((out / "results.json").read_text()), reference.results)


def test_grm_resumes_on_a_cluster_of_another_size(cohort, tmp_path):
    """The default GRM block size follows the cluster; a resumed GRM keeps its checkpoint's blocks."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out, grm={"export_gcta": True})
    proc = start_run(cfg, tmp_path / "logs", f"{GRM_DESC}:1")
    wait_for_pause(proc, out, f"{GRM_DESC}:1")
    kill_group(proc)
    block = zarr.open_group(str(out / "grm.zarr.partial"), mode="r").attrs["block_size"]
    nb = -(-N // block)
    n_done = int(ledger(out / "grm.zarr.partial").sum())
    # the same config file, resumed with 3 threads instead of 2 (another default block size)
    write_config(cfg, cohort, out, grm={"export_gcta": True},
                 cluster={**LIGHT, "workers": 1, "threads_per_worker": 3})
    res = run_cli("run", cfg)
    assert res.returncode == 0, res.stderr
    log = last_run_log(out)
    assert "cluster: local, 1 workers x 3 threads" in log
    assert f"GRM: {n_done} of {nb * (nb + 1) // 2} blocks already done" in log
    assert zarr.open_group(str(out / "grm.zarr"), mode="r").attrs["block_size"] == block
    assert manifest(out)["status"] == "complete"


# ---------------------------------------------------------------------------
# 4. changed inputs rerun only the stages that read them
# ---------------------------------------------------------------------------

def scale_trait(pheno: Path, name: str, factor: float) -> None:
    rows = pheno.read_text().splitlines()
    col = rows[0].split("\t").index(name)
    new = [rows[0]]
    for line in rows[1:]:
        f = line.split("\t")
        f[col] = f[col] if f[col] == "NA" else repr(factor * float(f[col]))
        new.append("\t".join(f))
    pheno.write_text("\n".join(new) + "\n")


def test_changed_inputs_rerun_only_their_stages(cohort, client, tmp_path):
    pheno = tmp_path / "pheno.tsv"
    shutil.copy(cohort.pheno, pheno)
    path = write_config(tmp_path / "run.yaml", cohort, tmp_path / "out", pheno=pheno)
    first = bigmm.run(bigmm.load_config(path), client=client)
    assert first.stages_run == ("ingest", "variant_stats", "grm", "spectrum", "rotate", "reml", "report")

    # trait1 scaled by 2: σ² x 4 and h² unchanged show that the fit reran on the new file
    scale_trait(pheno, "trait1", 2.0)
    again = bigmm.run(bigmm.load_config(path), client=client)
    assert again.stages_run == ("rotate", "reml", "report")
    assert again.stages_skipped == ("ingest", "variant_stats", "grm", "spectrum")
    assert again.result["trait1"].h2 == pytest.approx(first.result["trait1"].h2, abs=1e-8)
    assert again.result["trait1"].sigma2_g == pytest.approx(4 * first.result["trait1"].sigma2_g, rel=1e-6)
    assert again.result["trait2"].h2 == pytest.approx(first.result["trait2"].h2, abs=1e-12)

    # a stricter variant filter in the same config file: everything from variant_stats on
    write_config(path, cohort, tmp_path / "out", pheno=pheno, variants={"min_maf": 0.2, "max_missing": 0.05})
    third = bigmm.run(bigmm.load_config(path), client=client)
    assert third.stages_skipped == ("ingest",)
    assert third.stages_run == ("variant_stats", "grm", "spectrum", "rotate", "reml", "report")
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["variants_dropped"]["min_maf"] > 0 and doc["config"]["variants"]["min_maf"] == 0.2
    m = manifest(tmp_path / "out")
    assert m["status"] == "complete" and set(m["stages"]) == set(first.stages_run)


# ---------------------------------------------------------------------------
# 5. damaged chunks: named, never read silently
# ---------------------------------------------------------------------------

def damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
    return data


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_cohort_store_chunk_is_named(cohort, tmp_path, how):
    store = tmp_path / "c.zarr"
    shutil.copytree(cohort.store, store)
    damage(store / "genotypes" / "c" / "1" / "2", how)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out, genotypes={"zarr": str(store)},
                       cluster={**LIGHT, "workers": 1})
    res = run_cli("run", cfg)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"{store}/genotypes: chunk (1, 2)" in res.stderr, res.stderr
    assert "truncated or corrupted" in res.stderr
    m = manifest(out)
    assert m["status"] == "failed" and m["resume_from"] == "variant_stats"
    assert "genotypes: chunk (1, 2)" in m["error"]
    assert not (out / "results.json").exists() and not (out / "variants.zarr").exists()


@pytest.fixture(scope="module")
def finished_run(cohort, client, tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    cfg = write_config(d / "run.yaml", cohort, d / "out")
    bigmm.run(bigmm.load_config(cfg), client=client)
    return SimpleNamespace(cfg=cfg, out=d / "out")


@pytest.mark.parametrize("array, chunk, from_stage, writer, how", [
    ("spectrum.zarr/U", "(0, 0)", "rotate", "spectrum", "flip"),      # rotate reads the eigenvectors
    ("variants.zarr/scale", "(0,)", "report", "variant_stats", "truncate"),  # report reads the standardization
])
def test_damaged_run_output_reruns_the_stage_that_wrote_it(finished_run, reference, how, array, chunk,
                                                           from_stage, writer):
    """A damaged chunk of a committed output is named, and the stage that wrote it runs again
    (with everything after it): the rerun completes with the uninterrupted run's numbers, instead
    of failing the same way on every rerun while status says "complete"."""
    out = finished_run.out
    chunk_file = out / array / "c" / "/".join(re.findall(r"\d+", chunk))
    original = damage(chunk_file, how)
    try:
        res = run_cli("run", finished_run.cfg, "--from", from_stage)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        assert f"{out}/{array}: chunk {chunk}" in res.stderr, res.stderr
        assert f"it is an output of stage {writer}: that stage runs again" in res.stderr
        assert re.search(rf"stage {writer}: committed", res.stderr), res.stderr
        m = manifest(out)
        assert m["status"] == "complete"
        # the stage recomputed in another process (same seed): equal up to round-off
        assert_same_numbers(json.loads((out / "results.json").read_text()), reference.results, rtol=1e-6)
        rows, text = status_rows(out)
        assert all(r["rerun"] == "no" for r in rows.values()), text
    finally:
        chunk_file.write_bytes(original)


# ---------------------------------------------------------------------------
# 6. an external scheduler and worker started with the dask command line
# ---------------------------------------------------------------------------

@pytest.fixture
def external_cluster(tmp_path):
    dask_cli = Path(sys.executable).parent / "dask"
    env = {**os.environ, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    sched_file = tmp_path / "scheduler.json"
    procs = []
    try:
        with open(tmp_path / "scheduler.log", "w") as err:
            procs.append(subprocess.Popen(
                [str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(sched_file)], env=env, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True))
        t0 = time.monotonic()
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            assert time.monotonic() - t0 < 60, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        with open(tmp_path / "worker.log", "w") as err:
            procs.append(subprocess.Popen(
                [str(dask_cli), "worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads",
                 "1", "--memory-limit", "1GiB", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="30s", set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            except ProcessLookupError:
                pass


@pytest.mark.distributed
def test_external_scheduler_matches_local_cluster(cohort, reference, external_cluster, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out, cluster={"address": external_cluster})
    res = run_cli("run", cfg)
    assert res.returncode == 0, res.stderr
    log = last_run_log(out)
    assert f"cluster: joined scheduler {external_cluster} (1 workers)" in log
    assert manifest(out)["config"]["cluster"]["backend"] == "address"
    doc = json.loads((out / "results.json").read_text())
    # one worker here, two in the reference: the passes cut the variants into tasks differently,
    # and the tile kernel's float32 sums over a variant chunk split between two tasks differ at
    # float32 round-off (~1e-7 of each product); measured effect on the estimates 2e-10 (relative),
    # so 1e-8 leaves a margin of 50 and is still 10⁵x below what one sample or variant more or
    # less, or another setting, would change (~1e-3)
    assert_same_numbers(doc, reference.results, rtol=1e-8)
    assert (out / "gcta" / "grm.grm.bin").read_bytes() == reference.grm_bin


# ---------------------------------------------------------------------------
# 8. bigmm check: every problem at once
# ---------------------------------------------------------------------------

def test_check_reports_every_problem(cohort, tmp_path):
    good = write_config(tmp_path / "good.yaml", cohort, tmp_path / "out")
    res = run_cli("check", good)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"{good}: OK"
    # the plan it checked: samples, variants, method, memory
    plan = "\n".join(lines[1:])
    assert "samples: 800 genotyped, 800 analysed" in plan and "spectrum: randomized" in plan, plan
    assert "passes over X: " in plan, plan
    assert "variants: 6000 in the genotype input" in plan and "memory per task" in plan, plan

    bad = write_config(
        tmp_path / "bad.yaml", cohort, tmp_path / "out",
        pheno=tmp_path / "missing.tsv",                                        # 1. no such file
        covariates={"file": str(cohort.covar), "columns": ["age", "height"]},  # 2. no such column
        variants={"min_maf": "high"},                                          # 3. wrong type
        cluster={"address": "tcp://127.0.0.1:1"},                              # 4. nobody listens
        colour="blue",                                                         # 5. unknown key
    )
    res = run_cli("check", bad)
    assert res.returncode == 2, res.stderr
    err = res.stderr
    assert "Traceback" not in err
    assert f"{bad}: 5 problems" in err, err
    for fragment in (f"{tmp_path / 'missing.tsv'}", "height", "variants.min_maf", "'high'",
                     "cluster.address: cannot reach the Dask scheduler at tcp://127.0.0.1:1",
                     "colour: unknown key"):
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# 9. config safety: nothing is written outside the run directory
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["../../elsewhere/grm", "/tmp/elsewhere/grm", "."])
def test_export_outside_the_run_directory_is_refused(cohort, tmp_path, prefix):
    # (YAML tags that would run code: tests/test_bad_input.py::test_yaml_python_tag_is_not_executed)
    out = tmp_path / "a" / "b" / "out"
    cfg = write_config(tmp_path / "run.yaml", cohort, out, grm={"export_gcta": prefix})
    with pytest.raises(bigmm.ConfigError, match=r"grm.export_gcta .* outside the output directory"):
        bigmm.load_config(cfg)
    if prefix.startswith(".."):
        res = run_cli("run", cfg)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        assert f"grm.export_gcta '{prefix}' writes outside the output directory {out}" in res.stderr
        assert not out.exists() and not (tmp_path / "a" / "elsewhere").exists()


# ---------------------------------------------------------------------------
# 10. one run per directory; stale locks; bigmm status
# ---------------------------------------------------------------------------

def status_rows(out: Path) -> dict:
    res = run_cli("status", out)
    assert res.returncode == 0, res.stderr
    rows = {}
    for line in res.stdout.splitlines()[2:]:
        if line.startswith("genotype store "):  # the store the run reads, after the stages
            continue
        m = re.match(r"^(\w+)\s+(.+?)\s+(\d+\.\d|-)\s\s(.+)$", line)
        assert m, line
        rows[m[1]] = {"state": m[2], "seconds": m[3], "rerun": m[4]}
    return rows, res.stdout


def test_one_run_per_directory_stale_lock_and_status(cohort, tmp_path):
    out = tmp_path / "out"
    pheno = tmp_path / "pheno.tsv"
    shutil.copy(cohort.pheno, pheno)
    cfg = write_config(tmp_path / "run.yaml", cohort, out, pheno=pheno)
    first = start_run(cfg, tmp_path / "logs", "variant_stats")
    try:
        wait_for_pause(first, out, "variant_stats")
        lock = out / ".bigmm.lock"
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        before = (out / "run.json").read_bytes()

        second = run_cli("run", cfg)
        assert second.returncode == 2, second.stderr
        for fragment in ("is in use by another bigmm run", f"process {first.pid} on {socket.gethostname()}",
                         str(lock)):
            assert fragment in second.stderr, second.stderr
        # another config with --force must not clear the directory of a run in progress
        other = write_config(tmp_path / "other.yaml", cohort, out, pheno=pheno,
                             variants={"min_maf": 0.05, "max_missing": 0.05})
        forced = run_cli("run", other, "--force")
        assert forced.returncode == 2, forced.stderr
        assert "is in use by another bigmm run" in forced.stderr
        assert (out / "run.json").read_bytes() == before
        assert (out / "genotypes.zarr").exists() and lock.exists()
        assert first.poll() is None
    finally:
        kill_group(first)

    # the killed run left its lock: taken over with a warning, since its process is gone
    assert lock.exists() and json.loads(lock.read_text())["pid"] == first.pid
    res = run_cli("run", cfg)
    assert res.returncode == 0, res.stderr
    assert f"removing a stale lock {lock} left by process {first.pid} (no longer running)" in res.stderr
    assert not lock.exists()
    assert re.search(r"stage ingest: up to date", last_run_log(out))

    rows, text = status_rows(out)
    assert text.splitlines()[0] == f"{out}: run complete"
    assert text.splitlines()[-1].startswith(f"genotype store {out / 'genotypes.zarr'}: ")
    assert text.splitlines()[-1].endswith("layout 2bit: four genotypes per byte (bigmm.2bit codec), zstd level 1, CRC32C")
    assert list(rows) == ["ingest", "variant_stats", "grm", "spectrum", "rotate", "reml", "blup", "rg", "report"]
    assert rows.pop("blup")["state"] == "not needed"  # predict.blup is off in this config
    assert rows.pop("rg")["state"] == "not needed"  # and rg.pairs is none (the default)
    for stage, row in rows.items():
        assert row["state"] == "complete" and row["seconds"] != "-" and row["rerun"] == "no", (stage, row)

    scale_trait(pheno, "trait2", 3.0)
    rows, text = status_rows(out)
    rerun = {s: r["rerun"].split(" (")[0] for s, r in rows.items()}
    assert rerun == {"ingest": "no", "variant_stats": "no", "grm": "no", "spectrum": "no",
                     "rotate": "yes", "reml": "yes", "blup": "no", "rg": "no", "report": "yes"}, text
    assert rows["rotate"]["rerun"] == "yes (inputs or config changed)"
