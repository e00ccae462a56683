"""What a person sees while ``bigmm run`` works: live bars with an ETA on a terminal, the whole-run
line (stage i of N, elapsed, time left), and plain lines only in run.log (and, tested in
test_pipeline.py, when stderr is a pipe)."""

import os
import pty
import re
import select
import subprocess
import sys
import time

import yaml

import bigmm

# tqdm's bar with its ETA: "GRM 120x120 blocks: 100%|█████| 3/3 [00:00<00:00, 22.1task/s]"
BAR = r"{desc}: +\d+%\|[█▏▎▍▌▋▊▉ ]*\| \d+/\d+ \[\d\d:\d\d<(\d\d:\d\d|\?)"


def test_run_on_a_terminal_shows_bars_and_the_whole_run_line(tmp_path):
    c = bigmm.simulate(120, 600, h2=[0.5], seed=3, out_plink=tmp_path / "c")
    bigmm.write_tables(c, tmp_path / "pheno.tsv", tmp_path / "covar.tsv")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "genotypes": {"plink": str(tmp_path / "c"), "chunks": [64, 200]},  # 3 blocks of variants
        "phenotypes": {"file": str(tmp_path / "pheno.tsv"), "columns": ["trait1"]},
        "covariates": {"file": str(tmp_path / "covar.tsv"), "columns": ["age"]},
        "spectrum": {"method": "exact"}, "output": str(tmp_path / "out"),
        "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"}}))
    # a pseudo-terminal nobody sized (0 x 0), as under job runners and `script`: tqdm hid its
    # bars there before
    master, slave = pty.openpty()
    with open(tmp_path / "stdout", "wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(cfg)],
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=slave)
    os.close(slave)
    raw, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1.0)[0]:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, raw.decode(errors="replace")
    term = raw.decode(errors="replace")

    # live bars, redrawn in place, with the ETA, for each task list
    assert "\r" in term
    for desc in ("ingest c.bed", "variant statistics", "GRM 120x120 blocks"):
        assert re.search(BAR.format(desc=re.escape(desc)), term), (desc, term)
    # the per-task progress lines are left to the bar on the terminal (no duplicates) ...
    assert not re.search(r"GRM 120x120 blocks: 3/3 \(100%\)", term)
    # ... the whole-run line: stage i of N, elapsed, then time left once a pass over X is timed
    n_stages = len(re.findall(r"run: stage \d+ of 7 \(\w+\), \d+ s elapsed", term))
    assert n_stages == 7, term
    assert "run: stage 1 of 7 (ingest)" in term and "time left estimated once the first is timed" in term
    left = re.search(r"run: stage 3 of 7 \(grm\), \d+ s elapsed; about (\d+) s left for 2 more passes over X "
                     r"\(([\d.]+) s per pass so far", term)
    assert left and float(left.group(2)) > 0, term
    assert re.search(r"run complete in \d+ s", term)

    # run.log (a file) has plain lines: every progress line, no bar, no carriage return
    log = (tmp_path / "out" / "run.log").read_text()
    assert "\r" not in log and "%|" not in log
    assert re.search(r"GRM 120x120 blocks: 3/3 \(100%\), [\d.]+ s elapsed, ETA 0 s", log)
    assert re.search(r"ingest c\.bed: 3/3 variant blocks \(100%\)", log)
    assert "run: stage 3 of 7 (grm)" in log


def _cohort_config(tmp_path, **over):
    c = bigmm.simulate(150, 800, h2=[0.5, 0.3], seed=5, out_plink=tmp_path / "c")
    bigmm.write_tables(c, tmp_path / "pheno.tsv", tmp_path / "covar.tsv")
    cfg = {"genotypes": {"plink": str(tmp_path / "c"), "chunks": [64, 400]},
           "variants": {"min_maf": 0.01, "max_missing": 0.05},
           "phenotypes": {"file": str(tmp_path / "pheno.tsv"), "columns": ["trait1", "trait2"]},
           "covariates": {"file": str(tmp_path / "covar.tsv"), "columns": ["age"]},
           "output": str(tmp_path / "out"),
           "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"}, **over}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check(path):
    proc = subprocess.run([sys.executable, "-m", "bigmm.pipeline.cli", "check", "--no-cluster", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _seconds(text):
    """The estimated time ("about 0.0031 s", "about 4.2 min", "about 1.5 h") in seconds."""
    m = re.search(r"estimated time: about ([\d.e+-]+) (s|min|h) of arithmetic \(a rough estimate", text)
    assert m, text
    return float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]


def test_check_prints_the_plan_with_a_time_estimate(tmp_path):
    out = _check(_cohort_config(tmp_path / "exact", spectrum={"method": "exact"}))
    assert "samples: 150 genotyped, 150 analysed; 2 phenotype(s), 2 fixed effects" in out
    assert "variants: 800 in the genotype input; kept: those passing min_maf 0.01, max_missing 0.05" in out
    assert "REML: spectral; spectrum: exact" in out
    # 150 samples on 2 threads: GRM blocks of 75, 2 block rows
    assert ("stages: ingest, variant_stats, grm, spectrum, rotate, reml, report; passes over X: 4 in all "
            "(ingest 1, variant_stats 1, grm 2)") in out, out
    # 60% of 1 GiB less a worker process's own memory, per thread
    from dask.utils import format_bytes
    from bigmm.pipeline.memory import WORKER_BASELINE_BYTES
    assert f"memory per task: {format_bytes(int(0.6 * 2**30) - WORKER_BASELINE_BYTES)} allowed" in out
    assert "workers: local cluster of 2 worker processes x 1 threads, 1GiB each" in out
    assert "driver memory: " in out
    # the plan's arithmetic: GRM n²p, eigendecomposition 5n³
    assert f"grm {150 * 150 * 800:.2g}, spectrum {5 * 150 ** 3:.2g})" in out, out
    assert "GFLOP/s, the rate of a float32 NumPy matrix product measured just now on this machine" in out
    assert _seconds(out) > 0

    out = _check(_cohort_config(tmp_path / "rand", spectrum={"method": "randomized", "rank": 20},
                                reml={"method": "matrix_free", "max_steps": 40}))
    assert "REML: matrix_free; spectrum: none" in out
    assert ("stages: ingest, variant_stats, reml, report; passes over X: at most 42 in all (ingest 1, "
            "variant_stats 1, reml 40; matrix-free REML stops when converged)") in out, out
    assert "randomized spectrum" not in out  # no spectrum is computed
    assert _seconds(out) > 0
