#!/usr/bin/env python
"""End to end on the exact path (issue 20): every stage's time at n = 10,000, the report among them.

Data. A cohort of ``--n`` samples x ``--p`` variants with ``--phenotypes`` phenotypes, simulated
with ``bigmm.simulate`` into a Zarr cohort store (cached under ``--cache``, default
``cache/bench/``, shared with the other benchmarks; common.ensure_cohort).

Run. ``python -m bigmm.pipeline.cli run cfg.yaml`` in a fresh output directory with
``spectrum: {method: exact}`` (the GRM written to grm.zarr, then ``eigh``), the phenotypes and
covariates of the simulation and a local cluster (``--workers`` x ``--threads``,
``--memory-limit``) (common.run_e2e). Printed: every stage's wall time from ``run.json`` and its
share of the sum, passes over X, the peak RSS summed over the driver and its Dask processes, and
h². The report stage reads the GRM once (its lower triangle, chunk by chunk) for the relatedness
section: it should be a small share of the run.

Usage::

    python scripts/bench/bench_exact_e2e.py --n 2000 --p 5000                 # smoke (a minute)
    python scripts/bench/bench_exact_e2e.py --write-docs                      # n = 10,000, p = 20,000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, add_docs_args, cluster_section, command_line, ensure_cohort, log,  # noqa: E402
                    machine_info, machine_line, md_table, publish, run_e2e)

SECTION = "End to end on the exact path (n = 10,000)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--p", type=int, default=20_000)
    ap.add_argument("--phenotypes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunks", type=int, nargs=2, default=(2048, 8192), metavar=("SAMPLES", "VARIANTS"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="8GiB")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench")
    ap.add_argument("--timeout", type=float, default=7200)
    add_docs_args(ap)
    args = ap.parse_args(argv)
    machine = machine_info()
    h2 = [0.2 + 0.5 * i / max(1, args.phenotypes - 1) for i in range(args.phenotypes)]
    cohort = ensure_cohort(args.cache, args.n, p=args.p, seed=args.seed, pops=1, fst=0.0, h2=h2,
                           chunks=tuple(args.chunks), sim_block=min(args.n, 4096), need_plink=False)
    r = run_e2e(args.cache, cohort, 0, spectrum={"method": "exact"}, cluster=cluster_section(args),
                variants={"min_maf": 0.01, "max_missing": 0.05}, timeout=args.timeout)
    st = r["stages"]
    total = r["stages_sum_s"]
    rows = [[name, f"{s['seconds']:.1f}", f"{100 * s['seconds'] / total:.1f}%", f"{s['passes_over_X']:g}"]
            for name, s in st.items()]
    rows.append(["all stages", f"{total:.1f}", "100%", f"{r['passes_over_X']:g}"])
    body = (f"`{command_line(__file__, argv if argv is not None else sys.argv[1:])}`\n\n"
            f"{machine_line(machine)}. Run {r['started']}, load average {r['loadavg_1min_start_end'][0]:.1f} at "
            f"the start (a shared machine: other jobs used {r['other_cpu_s']:.0f} CPU-seconds meanwhile).\n\n"
            f"n = {args.n} samples, p = {args.p} simulated variants, {args.phenotypes} phenotypes, "
            f"`spectrum.method: exact`, cluster {args.workers} worker x {args.threads} threads, "
            f"{args.memory_limit}; cohort store chunks {args.chunks[0]} x {args.chunks[1]}. Stage times "
            f"from run.json:\n\n"
            + md_table(["stage", "seconds", "share", "passes over X"], rows, "lrrr")
            + f"\n\nWall time of the command {r['wall_s']:.1f} s; peak RSS summed over the driver and its Dask "
            f"processes {r['peak_rss_sum_mib']:.0f} MiB (in stage {r['peak_stage']}). h²: "
            + ", ".join(f"{f['name']} {f['h2']:.3f} (SE {f['h2_se']:.3f})" for f in r["fits"])
            + ". The report stage reads grm.zarr once (the lower triangle, chunk by chunk) for its relatedness "
            "section.")
    publish(SECTION, body, args.docs if args.write_docs else None)
    out = Path(r["run_dir"]) / "bench_exact_e2e.json"
    out.write_text(json.dumps(r, indent=1, default=str) + "\n")
    log(f"details: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
