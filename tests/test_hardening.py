"""Hardening cases from an adversarial trial of the run layer: each failed (a traceback, a dead
end, a silent wrong value or a long hang) before the fix.

Configs are checked with ``bigmm check --no-cluster`` and ``bigmm run`` in subprocesses, so the
exit status and the message a user sees are what is tested.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bigmm.pipeline.config import MAX_CONFIG_NODES, load_config

from test_bad_input import assert_refused, bigmm_cli, cohort, copy_run, write_config  # noqa: F401  (fixture)

@pytest.fixture(scope="module")
def exact_run(cohort, tmp_path_factory):  # noqa: F811
    """One finished run with an exact spectrum, copied by the tests that damage it."""
    d = tmp_path_factory.mktemp("exact")
    res = bigmm_cli("run", write_config(d, cohort, spectrum={"method": "exact"}))
    assert res.returncode == 0, res.stderr
    return d


YAML_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("command", ["check", "run"])
def test_yaml_alias_bomb_is_refused_quickly(tmp_path, command):
    """A few hundred bytes of nested aliases stand for 9⁹ ≈ 4·10⁸ nodes: refused from the
    composed (shared) node graph, before anything is expanded (it ran 95 s to a MemoryError)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(YAML_BOMB)
    t0 = time.perf_counter()
    res = bigmm_cli(command, *(["--no-cluster"] if command == "check" else []), path)
    assert time.perf_counter() - t0 < 60
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "YAML aliases expand to" in res.stderr and str(MAX_CONFIG_NODES) in res.stderr, res.stderr


def test_a_small_config_with_an_alias_still_loads(tmp_path, cohort):  # noqa: F811
    """Aliases themselves are fine: only their expanded size is bounded."""
    path = write_config(tmp_path, cohort)
    cfg = yaml.safe_load(path.read_text())
    text = yaml.safe_dump(cfg, sort_keys=False).replace("cluster:", "cluster: &light") + "submit: {}\n"
    path.write_text(text)
    assert load_config(path).cluster.workers == 1


@pytest.mark.parametrize("section, fragment", [
    ({"spectrum": {"method": "randomized", "seed": -1}}, "spectrum.seed: Input should be greater than or equal to 0"),
    ({"reml": {"grid_size": 1.0e9}}, "reml.grid_size: Input should be a valid integer"),
    ({"reml": {"grid_size": 1_000_000_000}}, "reml.grid_size: Input should be less than or equal to 100001"),
    ({"spectrum": {"method": "randomized", "rank": True}}, "spectrum.rank: Input should be a valid integer (got True)"),
    ({"cluster": {"memory_limit": "-1GiB"}}, "cluster.memory_limit: Value error, memory_limit '-1GiB' must be a positive size"),
    ({"reml": {"method": "matrix_free", "max_steps": 1}}, "reml.max_steps: Input should be greater than or equal to 2"),
    ({"reml": {"method": "matrix_free", "probes": 1}}, "reml.probes: Input should be greater than or equal to 2"),
], ids=["negative-seed", "float-grid", "huge-grid", "bool-rank", "negative-memory", "steps-1", "probes-1"])
def test_numeric_fields_are_range_checked_before_any_work(tmp_path, cohort, section, fragment):  # noqa: F811
    """Every numeric field's range is checked with the schema: the key is named, nothing runs."""
    key, value = next(iter(section.items()))
    cluster = {"workers": 1, "threads_per_worker": 1, **(value if key == "cluster" else {})}
    kw = {key: value} if key != "cluster" else {}
    path = write_config(tmp_path, cohort, cluster=cluster, **kw)
    res = bigmm_cli("run", path)
    assert_refused(res, tmp_path / "out", fragment)
    assert not (tmp_path / "out").exists()


def _take_lock(out: str, start: float, hold: float, queue) -> None:
    import time as _time

    from bigmm.errors import InputError
    from bigmm.pipeline.rundir import run_lock

    while _time.time() < start:
        pass
    try:
        with run_lock(Path(out)):
            queue.put(("held", _time.time()))
            _time.sleep(hold)
    except InputError:
        queue.put(("refused", _time.time()))


@pytest.mark.parametrize("trial", range(3))
def test_stale_lock_takeover_admits_exactly_one_of_many(tmp_path, trial):
    """16 processes start at the same instant on a directory whose lock file was left by a dead
    process: exactly one holds the run (the read-unlink-create takeover let two or more through
    in 18 of 100 trials). The lock is a kernel flock, released by the death of its holder."""
    import json
    import multiprocessing as mp

    out = tmp_path / "out"
    out.mkdir()
    (out / ".bigmm.lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone", "started": "then"}))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 1.0
    procs = [ctx.Process(target=_take_lock, args=(str(out), start, 1.5, queue)) for _ in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    results = [queue.get(timeout=5) for _ in procs]
    held = [t for what, t in results if what == "held"]
    assert len(held) == 1, results
    assert not (out / ".bigmm.lock").exists()  # released and removed by its holder


def test_lock_of_a_live_run_names_it_and_an_empty_lock_is_not_a_run(tmp_path):
    """A live holder is named (PID, host); a lock file nobody holds (empty, or of a dead or reused
    PID) is taken over with a warning, never reported as "process None on None"."""
    from bigmm.errors import InputError
    from bigmm.pipeline.rundir import run_lock

    out = tmp_path / "out"
    out.mkdir()
    (out / ".bigmm.lock").write_text("")
    with run_lock(out):
        with pytest.raises(InputError, match=r"in use by another bigmm run \(process \d+ on "):
            with run_lock(out):
                pass
    (out / ".bigmm.lock").write_text('{"pid": 1, "host": "x", "started": "y"}')  # PID 1 is alive
    with run_lock(out):
        pass


def test_a_different_bed_of_the_same_size_and_mtime_is_ingested_again(tmp_path, cohort):  # noqa: F811
    """The .bed is fingerprinted by size, mtime, inode change time and a sampled hash: another
    .bed with the same size and mtime (a copy made with ``cp -p``, or ``touch -d``) reruns ingest
    and everything after it (size + mtime alone reused the old store and results)."""
    import json
    import os
    import shutil

    import bigmm

    d = tmp_path / "data"
    d.mkdir()
    for ext in ("bed", "bim", "fam"):
        shutil.copy2(f"{cohort.prefix}.{ext}", d / f"c.{ext}")
    path = write_config(tmp_path, cohort, genotypes={"plink": str(d / "c")})
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    first = json.loads((tmp_path / "out" / "results.json").read_text())["phenotypes"][0]["h2"]
    other = bigmm.simulate(60, 200, h2=0.5, seed=99, out_plink=tmp_path / "other")
    assert other is not None
    st = (d / "c.bed").stat()
    assert (tmp_path / "other.bed").stat().st_size == st.st_size
    shutil.copyfile(tmp_path / "other.bed", d / "c.bed")
    os.utime(d / "c.bed", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (d / "c.bed").stat().st_mtime_ns == st.st_mtime_ns
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    log = (tmp_path / "out" / "run.log").read_text().split("run, config ")[-1]
    assert "stage ingest: start" in log and "stage ingest: up to date" not in log, log
    again = json.loads((tmp_path / "out" / "results.json").read_text())["phenotypes"][0]["h2"]
    assert again != first


# ---------------------------------------------------------------------------
# the run directory holds only this run's outputs, and nothing of the user's is touched
# ---------------------------------------------------------------------------

def listing(root: Path) -> dict:
    """Every file under ``root`` with its size and mtime (what "untouched" is checked against)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_output_folder_with_the_users_files_is_refused(tmp_path, cohort):  # noqa: F811
    """``output:`` naming a folder of the user's: check and run refuse it, nothing is written
    or removed there (before, the run wrote into it and check said OK)."""
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "report" / "figure.png").write_bytes(b"mine too")
    before = listing(out)
    path = write_config(tmp_path, cohort)
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 2 and "holds 2 entries that are not a bigmm run's (notes.txt, report)" in res.stderr, res.stderr
    for args in (("run", path), ("run", path, "--force")):
        res = bigmm_cli(*args)
        assert res.returncode == 2, res.stderr
        assert "choose another output" in res.stderr and "Traceback" not in res.stderr
    assert listing(out) == before


def test_force_removes_only_what_the_other_run_recorded(tmp_path, cohort):  # noqa: F811
    """--force over another config's run removes that run's recorded outputs, not a file the user
    put in its report/ and hsq/ folders (before, whole folders went)."""
    import json

    out = tmp_path / "out"
    first = write_config(tmp_path, cohort, name="first.yaml", variants={"min_maf": 0.0}, report={})  # figures
    assert bigmm_cli("run", first).returncode == 0
    (out / "report" / "my_plot.png").write_bytes(b"user")
    (out / "hsq" / "README").write_text("user")
    second = write_config(tmp_path, cohort, name="second.yaml", variants={"min_maf": 0.05}, report={})
    res = bigmm_cli("run", second, "--force")
    assert res.returncode == 0, res.stderr
    assert (out / "report" / "my_plot.png").read_bytes() == b"user"
    assert (out / "hsq" / "README").read_text() == "user"
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["variants"]["min_maf"] == 0.05


def test_a_failed_rerun_leaves_no_stale_result_and_dropped_phenotypes_leave_no_hsq(tmp_path, cohort):  # noqa: F811
    """A later run with fewer phenotypes leaves no .hsq of the dropped ones; after a completed run,
    a rerun that fails (its reml stage raises) leaves none of the old results.json, results.tsv,
    .hsq, report.html or reml.json looking current (before, all but results.json
    stayed, holding the previous numbers)."""
    import json

    out = tmp_path / "out"
    two = tmp_path / "two.tsv"
    lines = cohort.pheno.read_text().splitlines()
    two.write_text("\n".join(f"{ln}\t{ln.split()[2]}" if i else f"{ln}\tcopy" for i, ln in enumerate(lines)) + "\n")
    path = write_config(tmp_path, cohort, phenotypes={"file": str(two), "columns": "all"}, report={})  # figures
    assert bigmm_cli("run", path).returncode == 0
    names = {p["name"] for p in json.loads((out / "results.json").read_text())["phenotypes"]}
    assert len(names) == 2 and (out / "hsq" / "copy.hsq").exists()
    # rerun with one phenotype: the .hsq of the other goes
    path = write_config(tmp_path, cohort, phenotypes={"file": str(two), "columns": [sorted(names - {"copy"})[0]]},
                        report={})
    assert bigmm_cli("run", path).returncode == 0
    assert not (out / "hsq" / "copy.hsq").exists()
    # a rerun (two phenotypes again) whose reml stage fails
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "complete"
    env_path = write_config(tmp_path, cohort, phenotypes={"file": str(two), "columns": "all"}, report={})
    assert any(f.startswith("report/") for f in listing(out))  # figures the failed rerun must take away
    res = bigmm_cli_env("run", env_path, env={"BIGMM_TEST_FAIL_AT": "reml"})
    assert res.returncode != 0
    left = set(listing(out))
    for stale in ("results.json", "results.tsv", "report.html", "reml.json"):
        assert stale not in left, (stale, sorted(left))
    assert not any(f.startswith("hsq/") or f.startswith("report/") for f in left), sorted(left)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def bigmm_cli_env(*args, env: dict) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def test_a_crash_in_the_report_stage_leaves_no_results_json(tmp_path, cohort):  # noqa: F811
    """results.json is the last file of a run, written after run.json says complete: a failure
    while the report is written leaves none, and run.json says failed (before, results.json was
    written first and survived a crash in the .hsq, PCA or HTML writers)."""
    import json

    out = tmp_path / "out"
    path = write_config(tmp_path, cohort)
    res = bigmm_cli_env("run", path, env={"BIGMM_TEST_FAIL_AT": "report-html"})
    assert res.returncode != 0
    assert not (out / "results.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert bigmm_cli("run", path).returncode == 0
    assert (out / "results.json").exists()


def test_an_unauthenticated_client_cannot_use_the_runs_cluster(tmp_path, cohort):  # noqa: F811
    """The default local cluster speaks mutual TLS with a key made for the run: a process that
    reaches the scheduler's port without it cannot connect, so cannot run code in the workers
    (before, ``Client("tcp://127.0.0.1:<port>").run(...)`` wrote a file from both workers)."""
    import os
    import re
    import signal

    from distributed import Client
    from distributed.security import Security

    path = write_config(tmp_path, cohort)
    out = tmp_path / "out"
    env = {**os.environ, "BIGMM_TEST_PAUSE_AT": "variant_stats"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and address is None:
            log = out / "run.log"
            text = log.read_text() if log.exists() else ""
            if "test pause at variant_stats" in text:
                address = re.search(r"scheduler (\w+://127\.0\.0\.1:\d+)", text).group(1).replace("tcp:", "tls:")
            time.sleep(0.1)
        assert address, "the run did not reach variant_stats"
        marker = tmp_path / "pwned"
        # plain TCP, and TLS with a key of the intruder's own (not signed by the run's CA)
        attempts = [(address.replace("tls://", "tcp://"), None), (address, Security.temporary())]
        for addr, security in attempts:
            with pytest.raises((OSError, TimeoutError)):
                with Client(addr, timeout="5s", security=security) as c:
                    c.run(lambda: open(marker, "w").write("x"))
        assert not marker.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


# ---------------------------------------------------------------------------
# degenerate fits: scale, and a phenotype the covariates explain completely
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_problem():
    import numpy as np

    rng = np.random.default_rng(17)
    n, p = 150, 400
    X = rng.standard_normal((n, p))
    K = X @ X.T / p
    Z = np.column_stack([np.ones(n), rng.standard_normal(n)])
    L = np.linalg.cholesky(0.5 * K + 0.5 * np.eye(n))
    y = Z @ [1.0, 0.3] + L @ rng.standard_normal(n)
    return K, Z, y


@pytest.mark.parametrize("factor", [1e-70, 1e-150, 1e-200, 1e70, 1e150])
def test_reml_is_scale_equivariant_at_extreme_scales(small_problem, factor):
    """REML is scale-equivariant: y → a y leaves ĥ², its SE and the LRT unchanged, multiplies σ²
    by a² and ω̂ by a, and moves ℓ_R by −(n − c) log a. The fit runs on a unit residual scale, so
    this holds to round-off at a = 1e±150 (before: a = 1e-70 gave SE NaN, 1e-200 gave h² = 0 and
    σ² = 0). σ² itself is checked where a²σ² is representable in float64."""
    import math

    import numpy as np

    import bigmm

    K, Z, y = small_problem
    spec = bigmm.exact_spectrum(K)
    ref = bigmm.fit_reml(spec, y, Z).fits[0]
    got = bigmm.fit_reml(spec, y * factor, Z).fits[0]
    assert got.h2 == pytest.approx(ref.h2, abs=1e-10)
    assert got.h2_se == pytest.approx(ref.h2_se, rel=1e-8)
    assert got.lrt_stat == pytest.approx(ref.lrt_stat, rel=1e-8, abs=1e-8)
    n, c = Z.shape
    assert got.logl_reml == pytest.approx(ref.logl_reml - (n - c) * math.log(factor), rel=1e-12)
    assert got.fixed_effects[1].estimate == pytest.approx(ref.fixed_effects[1].estimate * factor, rel=1e-8)
    if 1e-300 < factor ** 2 * ref.sigma2_g < 1e300:
        assert got.sigma2_g == pytest.approx(ref.sigma2_g * factor ** 2, rel=1e-8)
        assert got.sigma2_g_se == pytest.approx(ref.sigma2_g_se * factor ** 2, rel=1e-6)
    assert np.isfinite(got.h2_se)


def test_a_phenotype_the_covariates_explain_is_refused(small_problem):
    """y identical to a covariate: nothing is left after the fixed effects, and REML is refused
    with the phenotype named (before: h² = 0, σ²_e ~ 1e-27, exit 0)."""
    import numpy as np

    import bigmm
    from bigmm.errors import InputError

    K, Z, y = small_problem
    spec = bigmm.exact_spectrum(K)
    with pytest.raises(InputError, match="'dup' is explained completely by the fixed effects"):
        bigmm.fit_reml(spec, np.column_stack([y, Z[:, 1] * 3.0 + 2.0]), Z, phenotype_names=["y", "dup"])


def test_a_huge_phenotype_value_gives_a_report_not_a_traceback(tmp_path, cohort):  # noqa: F811
    """One value of 1e160 in the phenotype file: the run ends with results and a report (σ² may be
    beyond float64 and is then written NA), no OverflowError from the .hsq or the report."""
    lines = cohort.pheno.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[2] = "1e160"
    lines[1] = "\t".join(fields)
    pheno = tmp_path / "huge.tsv"
    pheno.write_text("\n".join(lines) + "\n")
    path = write_config(tmp_path, cohort, phenotypes={"file": str(pheno)})
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "out" / "report.html").exists() and list((tmp_path / "out" / "hsq").glob("*.hsq"))


@pytest.mark.parametrize("reml, cluster, fragments", [
    ({"method": "matrix_free", "deflate": 60}, {}, ["reml.deflate = 60 must be below the number of genotyped samples n = 60"]),
    # 1000 threads share 60% of 1 GiB less the worker's own memory: about 0.4 MiB per task
    ({"method": "matrix_free", "probes": 2000}, {"memory_limit": "1GiB", "threads_per_worker": 1000},
     ["matrix-free REML: a pass carries", "probes per missing-value pattern) does not fit",
      "fewer reml.probes"]),
], ids=["deflate-n", "block-too-wide"])
def test_matrix_free_settings_that_cannot_run_are_refused_by_check_and_run(tmp_path, cohort, reml, cluster,  # noqa: F811
                                                                           fragments):
    """Deflation rank ≥ n, and a pass block wider than the memory per task allows: check and run
    both refuse with the numbers and the way out, before any compute."""
    path = write_config(tmp_path, cohort, reml=reml, cluster={"workers": 1, "threads_per_worker": 1, **cluster})
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 2, res.stderr
    for frag in fragments:
        assert frag in res.stderr, res.stderr
    res = bigmm_cli("run", path)
    assert_refused(res, tmp_path / "out", *fragments)


def test_a_categorical_covariate_with_1000_levels_is_checked_by_one_qr(monkeypatch):
    """The full-rank check of Z is one QR whatever the number of columns (it was one SVD per
    column: a 1,000-level factor ran for over 600 s); a level that duplicates another column is
    still named. The decompositions are counted, not timed: a count cannot be flaky on a busy
    machine, and one SVD per column would make it 1,000."""
    import numpy as np

    from bigmm.errors import InputError
    from bigmm.io.tables import check_full_rank

    calls = {"qr": 0, "svd": 0, "lstsq": 0}
    for name in calls:
        real = getattr(np.linalg, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(np.linalg, name, counted)
    rng = np.random.default_rng(1)
    n, levels = 3000, 1000
    lab = rng.integers(0, levels, n)
    lab[:levels] = np.arange(levels)
    Z = np.column_stack([np.ones(n), rng.standard_normal(n)] + [(lab == k).astype(float) for k in range(1, levels)])
    names = ["intercept", "age"] + [f"batch={k}" for k in range(1, levels)]
    check_full_rank(Z, names)
    assert calls == {"qr": 1, "svd": 0, "lstsq": 0}
    bad = np.column_stack([Z, 2.0 * Z[:, 5]])
    with pytest.raises(InputError, match=r"'dup' .* is collinear with batch=4"):
        check_full_rank(bad, names + ["dup"], "covar.tsv")
    assert calls["svd"] == 0 and calls["qr"] <= 3  # the failing case: a QR, then one lstsq to name the partners


def test_a_truncated_run_json_is_rebuilt_and_the_grm_kept(tmp_path, exact_run):
    """A truncated run.json is no dead end (before: run, check, status and run --force all
    refused, and the message pointed to --force): the run rebuilds its record from the committed
    outputs that name their plan, keeps the GRM store untouched and finishes with the same numbers."""
    import json

    out = tmp_path / "out"
    path, _ = copy_run(exact_run, tmp_path)
    first = json.loads((out / "results.json").read_text())["phenotypes"][0]
    k_files = sorted((out / "grm.zarr").rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in k_files if p.is_file() and p.name != "bigmm-stage.json"}
    text = (out / "run.json").read_text()
    (out / "run.json").write_text(text[: len(text) // 2])
    res = bigmm_cli("status", out)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert "run.json was damaged: the committed output of stage grm" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the GRM was not recomputed
    again = json.loads((out / "results.json").read_text())["phenotypes"][0]
    assert again["h2"] == pytest.approx(first["h2"], abs=1e-12)


@pytest.mark.parametrize("factor", [1e-70, 1e-200, 1e150])
def test_matrix_free_reml_is_scale_equivariant_at_extreme_scales(small_problem, factor):
    """The matrix-free fit also runs on a unit scale per phenotype: same probes, y → a y gives the
    same ĥ², SE and Monte Carlo SD, σ² × a², ω̂ × a, ℓ_R − (n − c) log a, BLUP weights / a (before:
    a = 1e-70 changed the SE by 10%, 1e-200 was refused as collinear, 1e150 overflowed)."""
    import math

    import numpy as np

    import bigmm
    from bigmm.mfreml import fit_matrix_free

    K, Z, y = small_problem
    op = bigmm.DenseOperator(K)
    ref = fit_matrix_free(op, y, Z, probes=10, seed=1)
    got = fit_matrix_free(op, y * factor, Z, probes=10, seed=1)
    r, g = ref.fits[0], got.fits[0]
    assert g.h2 == pytest.approx(r.h2, abs=1e-10)
    assert g.h2_se == pytest.approx(r.h2_se, rel=1e-7) and g.h2_se_mc == pytest.approx(r.h2_se_mc, rel=1e-6)
    n, c = Z.shape
    assert g.logl_reml == pytest.approx(r.logl_reml - (n - c) * math.log(factor), rel=1e-11)
    assert g.fixed_effects[1].estimate == pytest.approx(r.fixed_effects[1].estimate * factor, rel=1e-7)
    if 1e-300 < factor ** 2:
        assert g.sigma2_g == pytest.approx(r.sigma2_g * factor ** 2, rel=1e-7)
    np.testing.assert_allclose(got.blup_weights() * factor, ref.blup_weights(), rtol=1e-6, atol=1e-12)


def test_temporaries_left_by_killed_processes_are_removed_under_the_lock(tmp_path):
    """A killed ingest leaves ``.genotypes.zarr.tmp-<pid>-<hex>`` (the size of the store): the next
    run removes such leftovers of atomic writes once it holds the lock, and nothing else (before,
    they survived every later completed run)."""
    from bigmm.pipeline.rundir import run_lock

    out = tmp_path / "out"
    (out / "hsq").mkdir(parents=True)
    left = out / ".genotypes.zarr.tmp-4242-0a1b2c3d"
    (left / "genotypes").mkdir(parents=True)
    (left / "genotypes" / "c0").write_bytes(b"x" * 1000)
    (out / ".results.json.tmp-4242-deadbeef").write_text("{")
    (out / "hsq" / ".trait.hsq.tmp-17-00ff00ff").write_text("partial")
    (out / ".grm.zarr.old-12345678").mkdir()
    (out / ".bigmm-tls").mkdir(mode=0o700)  # a killed driver's batch-cluster worker key
    (out / ".bigmm-tls" / ".dask-jobqueue.worker.key.abc").write_text("-----BEGIN PRIVATE KEY-----")
    keep = [out / ".my.tmp-notes", out / "notes.tmp-1-2", out / "hsq" / "trait.hsq"]
    for p in keep:
        p.write_text("keep")
    with run_lock(out):
        pass
    assert not left.exists() and not (out / ".results.json.tmp-4242-deadbeef").exists()
    assert not (out / "hsq" / ".trait.hsq.tmp-17-00ff00ff").exists() and not (out / ".grm.zarr.old-12345678").exists()
    assert not (out / ".bigmm-tls").exists()
    assert all(p.read_text() == "keep" for p in keep)


@pytest.mark.parametrize("damage", ["reml.json", "rotated.npz", "spectrum.zarr/zarr.json"])
def test_a_damaged_stage_output_is_recomputed(tmp_path, exact_run, damage):
    """A truncated reml.json, rotated.npz or a store's zarr.json: the next run names the damaged
    output and reruns its stage (before: a JSONDecodeError / BadZipFile traceback on every rerun)."""
    import json

    out = tmp_path / "out"
    path, _ = copy_run(exact_run, tmp_path)
    first = json.loads((out / "results.json").read_text())["phenotypes"][0]["h2"]
    target = out / damage
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    stage = {"reml.json": "reml", "rotated.npz": "rotate", "spectrum.zarr/zarr.json": "spectrum"}[damage]
    assert f"stage {stage}: its output" in res.stderr and "is damaged" in res.stderr, res.stderr
    again = json.loads((out / "results.json").read_text())["phenotypes"][0]["h2"]
    assert again == pytest.approx(first, abs=1e-10)


def test_a_store_made_by_an_earlier_run_and_read_by_this_one_is_not_removed(tmp_path, cohort):  # noqa: F811
    """A PLINK run leaves out/genotypes.zarr; a later config that reads that store directly
    (genotypes: {zarr: out/genotypes.zarr}) no longer plans an ingest stage, and the clean-up of
    the earlier run's outputs must not delete its own input."""
    out = tmp_path / "out"
    path = write_config(tmp_path, cohort)
    assert bigmm_cli("run", path).returncode == 0
    path = write_config(tmp_path, cohort, genotypes={"zarr": str(out / "genotypes.zarr")})
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert (out / "genotypes.zarr").is_dir() and (out / "results.json").exists()


def test_a_symlink_loop_is_named_as_one(tmp_path, cohort):  # noqa: F811
    """A phenotype file, a fileset and a config that are symbolic-link loops: each message says
    so (it said "does not exist", or a RuntimeError traceback from resolving the path)."""
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    for ext in ("bed", "bim", "fam"):
        (tmp_path / f"geno.{ext}").symlink_to(tmp_path / f"geno.{ext}")
    path = write_config(tmp_path, cohort, genotypes={"plink": str(tmp_path / "geno")},
                        phenotypes={"file": str(tmp_path / "loop-a")})
    loop = "is a symbolic link that loops"
    fragments = (f"phenotype file {tmp_path / 'loop-a'} {loop}", f"{tmp_path / 'geno.bed'} (it {loop}")
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert all(f in res.stderr for f in fragments), res.stderr
    assert_refused(bigmm_cli("run", path), tmp_path / "out", *fragments)
    res = bigmm_cli("run", tmp_path / "loop-b")
    assert_refused(res, None, f"config file {tmp_path / 'loop-b'} {loop}")
