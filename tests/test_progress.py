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
