"""Start-up time of ``bigmm run``: from process start to the first stage line, and where it goes.

Runs ``python -m bigmm.pipeline.cli run --force CONFIG`` on a tiny simulated cohort (300 x 1500,
PLINK input, exact spectrum, a local cluster of 2 workers) REPEATS times and reads its stderr
line by line with its own clock: seconds from the process start to the first line, to the
cluster starting, to the cluster ready, to the first stage line and to the end. Prints one row
per run and the medians; also ``import bigmm.pipeline.cli`` alone (a fresh interpreter each).

    PYTHONPATH=$PWD python scripts/bench/bench_startup.py [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

MARKS = (("first line", lambda s: True),
         ("cluster starting", lambda s: "cluster: starting" in s),
         ("cluster ready", lambda s: "cluster: local," in s),
         ("first stage", lambda s: "stage " in s and ": start" in s),
         ("end", None))


def make_cohort(d: Path) -> Path:
    import bigmm

    c = bigmm.simulate(300, 1500, h2=[0.5], seed=1, out_plink=d / "c")
    bigmm.write_tables(c, d / "pheno.tsv", d / "covar.tsv")
    cfg = {"genotypes": {"plink": str(d / "c"), "chunks": [128, 512]},
           "phenotypes": {"file": str(d / "pheno.tsv"), "columns": ["trait1"]},
           "covariates": {"file": str(d / "covar.tsv"), "columns": ["age"]},
           "spectrum": {"method": "exact"}, "output": str(d / "out"),
           "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB"}}
    path = d / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_run(cfg: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", "--force", str(cfg)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    got: dict = {}
    for line in proc.stderr:
        now = time.perf_counter() - t0
        for name, test in MARKS:
            if test is not None and name not in got and test(line):
                got[name] = now
    proc.wait()
    got["end"] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bigmm run failed ({proc.returncode})")
    return got


def import_time() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bigmm.pipeline.cli"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    d = args.workdir or Path(tempfile.mkdtemp(prefix="bigmm-startup-"))
    d.mkdir(parents=True, exist_ok=True)
    cfg = make_cohort(d)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}")
    imports = [import_time() for _ in range(args.repeats)]
    print(f"import bigmm.pipeline.cli: median {statistics.median(imports):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in imports)})")
    rows = [one_run(cfg) for _ in range(args.repeats)]
    names = [m for m, _ in MARKS]
    print("seconds from process start: " + " | ".join(names))
    for r in rows:
        print("  run: " + " | ".join(f"{r[m]:.2f}" if m in r else "-" for m in names))
    print("  median: " + " | ".join(
        f"{statistics.median(r[m] for r in rows):.2f}" if all(m in r for r in rows) else "-" for m in names))


if __name__ == "__main__":
    main()
