"""What bigmm may write over or remove: only what it made, only inside its own folders.

Each case was reproduced on an earlier version by an adversarial trial, where it deleted or
overwrote a user's files, or left a run folder that looked finished when it was not. The
command line runs in subprocesses (``bigmm_cli``), so exit status and messages are what a user
sees. The cohort is the small one of tests/test_bad_input.py (60 samples x 200 variants).
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import bigmm
from bigmm.errors import InputError

from test_bad_input import bigmm_cli, cohort, copy_run, write_config  # noqa: F401  (fixture)


def snapshot(root: Path, skip: Path | None = None) -> dict:
    """path -> (size, SHA-256) of every file under ``root`` (``skip`` and what is under it left out)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def refused(res, *fragments):
    assert res.returncode == 2, f"status {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    for f in fragments:
        assert f in res.stderr, res.stderr


@pytest.fixture(scope="module")
def finished(cohort, tmp_path_factory):  # noqa: F811
    """One finished run (exact spectrum, BLUP and SNP effects), copied by the tests that change it."""
    d = tmp_path_factory.mktemp("finished")
    path = write_config(d, cohort, spectrum={"method": "exact"}, predict={"blup": True, "snp_effects": True})
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    return d


# -- 1. ingest --force -------------------------------------------------------------------------

def test_ingest_force_never_replaces_a_folder_that_is_not_a_bigmm_store(tmp_path):
    """``bigmm ingest --bfile d/c --out d --force`` deleted the folder d, with the .bed/.bim/.fam it
    read and the user's other files: --force replaces only a cohort store bigmm made."""
    d = tmp_path / "d"
    bigmm.simulate(20, 30, seed=1, out_plink=d / "c")
    (d / "notes.txt").write_text("mine")
    before = snapshot(d)
    res = bigmm_cli("ingest", "--bfile", d / "c", "--out", d, "--force")
    refused(res, "is not a cohort store bigmm made")
    assert snapshot(d) == before
    # a store bigmm made is replaced, as before
    assert bigmm_cli("ingest", "--bfile", d / "c", "--out", tmp_path / "s.zarr").returncode == 0
    res = bigmm_cli("ingest", "--bfile", d / "c", "--out", tmp_path / "s.zarr", "--force")
    assert res.returncode == 0, res.stderr
    assert snapshot(d) == before


def test_ingest_force_never_replaces_a_store_that_holds_its_input(tmp_path):
    """Even a bigmm store is not replaced when the fileset read lies inside it."""
    d = tmp_path / "d"
    bigmm.simulate(20, 30, seed=1, out_plink=d / "c")
    store = tmp_path / "s.zarr"
    bigmm.ingest_plink(d / "c", store)
    for ext in ("bed", "bim", "fam"):
        shutil.copy(d / f"c.{ext}", store / f"c.{ext}")
    before = snapshot(store)
    res = bigmm_cli("ingest", "--bfile", store / "c", "--out", store, "--force")
    refused(res, "an input of this command")
    assert snapshot(store) == before


def test_simulate_never_replaces_a_folder_that_is_not_a_store(tmp_path):
    """The API's ``out_zarr`` replaced whatever folder was there."""
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a cohort store bigmm made"):
        bigmm.simulate(20, 30, seed=1, out_zarr=folder)
    assert (folder / "keep.txt").read_text() == "mine"


# -- 2. a run.json bigmm did not write ---------------------------------------------------------

@pytest.mark.parametrize("text", ['{"name": "my-tool", "version": 3}\n', "not json at all\n", "[1, 2]\n",
                                  '{"config_fingerprint": null}\n'],
                         ids=["other-json", "not-json", "json-list", "no-fingerprint"])
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_foreign_run_json_does_not_make_a_folder_bigmms(tmp_path, cohort, text, force):  # noqa: F811
    """Another tool's run.json (or none bigmm could have written) made any folder count as a bigmm
    run, and results.tsv, report.html and hsq/ were overwritten, even without --force."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(text)
    (out / "results.tsv").write_text("my results\n")
    (out / "hsq").mkdir()
    (out / "hsq" / "trait.hsq").write_text("mine\n")
    before = snapshot(out)
    path = write_config(tmp_path, cohort)
    res = bigmm_cli("run", path, *(["--force"] if force else []))
    refused(res, "run.json", "not written by bigmm" if text.startswith(("{", "[")) else "not a bigmm manifest")
    assert snapshot(out) == before


def test_a_run_json_of_todays_format_resumes_with_nothing_to_rerun(finished, tmp_path):
    """A run folder whose run.json has no ``format`` key (written before bigmm signed its
    manifests) is still bigmm's: recognised by its keys, it resumes with every stage up to date."""
    path, out = copy_run(finished, tmp_path)
    m = json.loads((out / "run.json").read_text())
    assert m["format"] == "bigmm-run"
    for k in ("format", "format_version"):
        m.pop(k)
    (out / "run.json").write_text(json.dumps(m, indent=2))
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert "0 stages run (none)" in res.stderr, res.stderr


# -- 3. paths in run.json that lead out of the run folder -------------------------------------

def test_recorded_paths_outside_the_run_folder_are_never_removed(finished, tmp_path):
    """Paths recorded in run.json (stages.*.files, writing.files) were removed without a check:
    an absolute path, ``..`` and a linked folder led out of the run folder."""
    path, out = copy_run(finished, tmp_path)
    victims = tmp_path / "victims"
    victims.mkdir()
    for name in ("abs.txt", "up.txt", "linked.txt", "w.txt"):
        (victims / name).write_text("mine")
    (out / "link").symlink_to(victims)
    m = json.loads((out / "run.json").read_text())
    m["stages"]["report"]["files"] += [str(victims / "abs.txt"), "../victims/up.txt", "link/linked.txt", ".", ""]
    m["writing"] = {"stage": "report", "files": ["../victims/w.txt", str(victims)]}
    (out / "run.json").write_text(json.dumps(m, indent=2))
    before = snapshot(victims)
    res = bigmm_cli("run", path, "--from", "report")
    assert res.returncode == 0, res.stderr
    assert "not inside the run folder" in res.stderr and "../victims/up.txt" in res.stderr, res.stderr
    assert snapshot(victims) == before
    # --force from another config (the other run's recorded files are removed) leaves them too
    m = json.loads((out / "run.json").read_text())
    m["stages"]["report"]["files"] += [str(victims / "abs.txt"), "../victims/up.txt", "link/linked.txt"]
    (out / "run.json").write_text(json.dumps(m, indent=2))
    cfg = yaml.safe_load(path.read_text())
    cfg["variants"] = {"min_maf": 0.05}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    res = bigmm_cli("run", other, "--force")
    assert res.returncode == 0, res.stderr
    assert snapshot(victims) == before


def test_inside_run_resolves_links_and_refuses_escapes(tmp_path):
    from bigmm.pipeline.rundir import inside_run

    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "up").symlink_to(tmp_path)
    (out / "self").symlink_to(tmp_path / "elsewhere")
    assert inside_run(out, "a/x.txt") == out / "a" / "x.txt"
    assert inside_run(out, "self") == out / "self"  # the link itself is the run's, not its target
    for bad in ("/etc/passwd", "../x", "a/../../x", "up/x", ".", "", None, 3):
        assert inside_run(out, bad) is None, bad


# -- 4. bigmm reml and OUT/config.yaml ---------------------------------------------------------

def reml_args(cohort, out, *extra):  # noqa: F811
    return ("reml", "--bfile", cohort.prefix, "--pheno", cohort.pheno, "--out", out,
            "--workers", "1", "--threads", "1", *extra)


def test_reml_never_replaces_a_users_config_yaml(tmp_path, cohort):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("# my own notes\nkey: value\n")
    res = bigmm_cli(*reml_args(cohort, out))
    refused(res, "was not written by bigmm reml")
    assert (out / "config.yaml").read_text() == "# my own notes\nkey: value\n"
    assert sorted(os.listdir(out)) == ["config.yaml"]


def test_a_refused_reml_call_leaves_the_config_of_the_run_in_progress(tmp_path, cohort):  # noqa: F811
    """The flag form wrote OUT/config.yaml before taking the run's lock: a second call, refused
    because a run holds the folder, had already rewritten that run's config (its resume then
    switched traits)."""
    from bigmm.pipeline.rundir import run_lock

    out = tmp_path / "out"
    out.mkdir()
    text = "# bigmm run configuration made from the flags of\n#   the run in progress\n"  # bigmm's header
    (out / "config.yaml").write_text(text)
    with run_lock(out):  # the run in progress
        res = bigmm_cli(*reml_args(cohort, out, "--maf", "0.05"))
    refused(res, "is in use by another bigmm run")
    assert (out / "config.yaml").read_text() == text


# -- 5. score --out and simulate --out ---------------------------------------------------------

def test_score_refuses_existing_files_inputs_and_the_runs_own(finished, tmp_path, cohort):  # noqa: F811
    """``bigmm score --out`` overwrote any file: the target's .fam, the run's snp_effects.tsv
    (after which the run still said "up to date" and the next score crashed)."""
    run = tmp_path / "run"
    shutil.copytree(finished / "out", run)
    target = tmp_path / "target"
    target.mkdir()
    for ext in ("bed", "bim", "fam"):
        shutil.copy(f"{cohort.prefix}.{ext}", target / f"c.{ext}")
    mine = tmp_path / "scores.tsv"
    mine.write_text("mine\n")
    before_t, before_r = snapshot(target), snapshot(run)
    refused(bigmm_cli("score", "--run", run, "--bfile", target / "c", "--out", mine), "exists", "--force")
    for out in (target / "c.fam", run / "snp_effects.tsv", run / "new.tsv"):
        refused(bigmm_cli("score", "--run", run, "--bfile", target / "c", "--out", out, "--force"))
    assert snapshot(target) == before_t and snapshot(run) == before_r and mine.read_text() == "mine\n"
    res = bigmm_cli("score", "--run", run, "--bfile", target / "c", "--out", mine, "--force")
    assert res.returncode == 0, res.stderr
    assert mine.read_text().startswith("FID\tIID\t")


def test_simulate_refuses_an_existing_fileset_without_force(tmp_path):
    prefix = tmp_path / "sim"
    assert bigmm_cli("simulate", "--n", "20", "--p", "30", "--out", prefix).returncode == 0
    before = snapshot(tmp_path)
    res = bigmm_cli("simulate", "--n", "20", "--p", "30", "--seed", "2", "--out", prefix)
    refused(res, "exist", "--force")
    assert snapshot(tmp_path) == before
    res = bigmm_cli("simulate", "--n", "20", "--p", "30", "--seed", "2", "--out", prefix, "--force")
    assert res.returncode == 0, res.stderr
    assert snapshot(tmp_path) != before


def test_simulate_force_never_writes_into_a_run_folder(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "out", run)
    (run / "x.bed").write_bytes(b"")
    before = snapshot(run)
    refused(bigmm_cli("simulate", "--n", "20", "--p", "30", "--out", run / "x", "--force"), "run folder")
    assert snapshot(run) == before


# -- 6. a kill between stages of a rerun -------------------------------------------------------

KILL_AFTER_COMMIT = """
import os, sys
import bigmm.pipeline.stages as S
commit = S.Runner.commit
def killed_after(self, name, *a, **k):
    commit(self, name, *a, **k)
    if name == sys.argv[1]:
        os._exit(9)  # as SIGKILL: no handler, no finally
S.Runner.commit = killed_after
from bigmm.pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_kill_between_stages_of_a_rerun_never_leaves_complete(finished, tmp_path):
    """Killed after a rerun committed one stage and before the next, run.json said "complete"
    (with finished before started) while results.json was gone."""
    path, out = copy_run(finished, tmp_path)
    res = subprocess.run([sys.executable, "-c", KILL_AFTER_COMMIT, "reml", "run", str(path), "--from", "reml"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 9, res.stderr
    m = json.loads((out / "run.json").read_text())
    assert not (out / "results.json").exists()
    assert m["status"] == "running" and "finished" not in m, m.get("status")
    st = bigmm_cli("status", out)
    assert st.returncode == 0 and "run complete" not in st.stdout and "stopped" in st.stdout, st.stdout
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "complete" and m["finished"] >= m["started"] and (out / "results.json").exists()


def test_status_never_says_complete_without_results(finished, tmp_path):
    path, out = copy_run(finished, tmp_path)
    (out / "results.json").unlink()
    st = bigmm_cli("status", out)
    assert st.returncode == 0 and "run complete" not in st.stdout and "results.json is missing" in st.stdout


# -- 7. a full disk ----------------------------------------------------------------------------

def test_enospc_without_a_file_name_is_one_line(tmp_path):
    """A full disk raised from a flush or inside Zarr carries no file name (and arrives as the
    cause of another error): it gets the one-line message and resume of a read-only folder."""
    from bigmm.pipeline.stages import _unwritable

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("a store write failed") from e
    except RuntimeError as exc:
        msg = _unwritable(exc, tmp_path, "grm")
    assert msg is not None and "free space" in str(msg) and "resumes from grm" in str(msg)
    assert _unwritable(OSError(errno.EIO, "I/O error"), tmp_path, "grm") is None


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs (root only)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(fs)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield fs
    subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def fill(fs: Path) -> Path:
    subprocess.run(f"dd if=/dev/zero of={fs}/fill bs=4k 2>/dev/null", shell=True)
    return fs / "fill"


@pytest.mark.parametrize("stage", ["grm", "reml"])
def test_a_full_disk_in_a_stage_is_one_line_and_resumes(tmp_path, cohort, small_fs, stage):  # noqa: F811
    """A real full disk (a tmpfs filled while the run waits at the stage's start): one line
    (before: a 40-70 line traceback, exit 1); once space is freed the same command resumes (before:
    a GRM checkpoint cut short by the full disk failed to open)."""
    out = small_fs / "out"
    path = write_config(tmp_path, cohort, spectrum={"method": "exact"}, output=str(out))
    go = tmp_path / "go"
    env = dict(os.environ, BIGMM_TEST_PAUSE_AT=stage, BIGMM_TEST_RESUME_WHEN=str(go))
    proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ((out / "run.log").exists() and f"test pause at {stage} " in (out / "run.log").read_text()):
        assert proc.poll() is None and time.monotonic() - t0 < 240, proc.stderr.read() if proc.poll() else "no pause"
        time.sleep(0.1)
    filler = fill(small_fs)
    go.touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("bigmm: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and f"resumes from {stage}" in errors[0]
    filler.unlink()
    res = bigmm_cli("run", path)
    assert res.returncode == 0, res.stderr
    assert (out / "results.json").exists()


def test_the_disk_check_counts_only_what_is_left_to_write(tmp_path, cohort, small_fs):  # noqa: F811
    """The check counted outputs already committed: a finished run could not be rerun (nor
    checked), and a run stopped by a full disk could not resume once space was freed."""
    out = small_fs / "out"
    path = write_config(tmp_path, cohort, spectrum={"method": "exact"}, output=str(out))
    assert bigmm_cli("run", path).returncode == 0
    # less free than the whole run writes (genotypes, GRM, spectrum: 84 kB at most here)
    with open(small_fs / "fill", "wb") as fh:
        fh.write(b"\0" * (shutil.disk_usage(small_fs).free - 40_000))
    assert shutil.disk_usage(small_fs).free < 84_000
    res = bigmm_cli("check", "--no-cluster", path)
    assert res.returncode == 0, res.stderr


# -- 8. bigmm submit's own files ---------------------------------------------------------------

def test_the_job_script_and_slurm_logs_do_not_make_a_folder_foreign(tmp_path, cohort):  # noqa: F811
    """``bigmm submit`` writes OUT/submit.sbatch and SLURM writes OUT/slurm-JOB.out: the job's
    ``bigmm run`` refused its own folder as foreign. Other files still make it foreign."""
    from bigmm.pipeline.config import load_config
    from bigmm.pipeline.rundir import check_output_dir
    from bigmm.pipeline.submit import write_job_script

    out = tmp_path / "out"
    path = write_config(tmp_path, cohort)
    cfg = load_config(path)
    write_job_script(cfg)
    (out / "slurm-1234.out").write_text("log\n")
    assert check_output_dir(out, cfg, force=False) is False
    (out / "submit.sbatch").write_text("#!/bin/bash\necho mine\n")
    with pytest.raises(InputError, match="submit.sbatch"):
        check_output_dir(out, cfg, force=False)
    with pytest.raises(InputError, match="not a job script bigmm wrote"):
        write_job_script(cfg)
    assert (out / "submit.sbatch").read_text() == "#!/bin/bash\necho mine\n"


@pytest.mark.distributed
def test_submit_starts_a_fresh_run_on_slurm(tmp_path, cohort):  # noqa: F811
    """``bigmm submit --submit`` on a real local SLURM: the job finishes the run."""
    if os.geteuid() != 0 or shutil.which("sbatch") is None:
        pytest.skip("no local SLURM (scripts/ci/slurm-local.sh, root)")
    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["bash", str(root / "scripts" / "ci" / "slurm-local.sh")], capture_output=True,
                      timeout=300).returncode != 0:
        pytest.skip("no local SLURM")
    out = tmp_path / "out"
    path = write_config(tmp_path, cohort, submit={"queue": "debug", "walltime": "00:10:00", "cores": 1,
                                                  "memory": "2GiB"})
    res = bigmm_cli("submit", path, "--submit")
    assert res.returncode == 0, res.stderr
    t0 = time.monotonic()
    while time.monotonic() - t0 < 280 and not (out / "results.json").exists():
        time.sleep(1)
    logs = "".join(p.read_text() for p in out.glob("slurm-*.out"))
    assert (out / "results.json").exists(), logs
    assert list(out.glob("slurm-*.out"))


# -- 9. Ctrl-C ---------------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["spectrum"])
def test_ctrl_c_prints_one_line_not_worker_tracebacks(tmp_path, cohort, when):  # noqa: F811
    """Ctrl-C (SIGINT to the terminal's process group: the driver and its worker processes)
    printed 60-86 lines of the workers' KeyboardInterrupt tracebacks."""
    out = tmp_path / "out"
    path = write_config(tmp_path, cohort, spectrum={"method": "randomized", "rank": 10},
                        cluster={"workers": 2, "threads_per_worker": 1})
    env = dict(os.environ)
    if when == "spectrum":
        env["BIGMM_TEST_PAUSE_AT"] = when
    # SIGINT as a terminal's child has it: a pytest-xdist worker ignores SIGINT, and an ignored
    # signal stays ignored in its children (Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    needle = "test pause at spectrum " if when == "spectrum" else when
    t0 = time.monotonic()
    while not ((out / "run.log").exists() and needle in (out / "run.log").read_text()):
        assert proc.poll() is None and time.monotonic() - t0 < 240
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    noise = [line for line in err.splitlines() if " INFO: " not in line and "test pause" not in line]
    assert "Traceback" not in err and len(noise) <= 2, err
    assert noise[-1] == "bigmm: interrupted; run the same command again to resume"
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
