#!/usr/bin/env python
"""Benchmark: bigmm's matrix-free REML against BOLT-REML, and end to end at scale.

Workloads (``python scripts/bench/bench_reml.py WORKLOAD ...``; default ``all`` = both):

``bolt``   For each n in --bolt-n, p = --bolt-p, an unrelated cohort simulated once with
           ``bigmm.simulate`` into a Zarr store and a PLINK fileset of the same genotypes (one call;
           common.ensure_cohort, cached in --cache). One phenotype, trait1 (true h² = 0.5), with the
           simulated covariates (age quantitative, sex categorical) given to both tools (or none
           with --no-covariates: intercept only). Side by side, in turn, --repeats times (median):

           ``bolt``         ``bolt --bfile ... --phenoCol trait1 --reml --numThreads T`` under
                            ``/usr/bin/time -v``: wall, user + sys CPU, max RSS; ĥ² and SE parsed
                            from its log (the ``h2g (1,1): H (SE)`` line).
           ``bigmm_mf``     ``python -m bigmm.pipeline.cli run cfg.yaml`` on the Zarr store (no
                            ingest), ``reml: {method: matrix_free}`` at its defaults, a local cluster
                            of --workers x --threads (--memory-limit each): wall, CPU of the whole
                            process tree (getrusage of the reaped children: driver, nannies,
                            workers), peak of the RSS summed over all of them (sampled every 0.2 s;
                            the sum of the per-process high-water marks is an upper bound), ĥ², SE,
                            its Monte Carlo part, h²_HE, Lanczos steps and passes over X.
           ``bigmm_exact``  for n <= --exact-max-n the exact REML on the same store
                            (``spectrum: {method: exact}``, ``reml: {method: spectral}``: GRM +
                            eigh), the truth the others are compared with (also timed).

``scale``  For each n in --scale-n, p = --scale-p, an unrelated cohort simulated straight into Zarr
           (cached), one end-to-end matrix-free run per --scale-repeats: wall, CPU, peak RSS summed
           over all processes, passes over X (variant statistics + Lanczos steps), seconds per
           pass (from run.log) and the cost per sample (linear in n?). Goals at n = 100,000:
           under 15 minutes and under 6 GiB.

``report`` Only render the tables from the results file.

Every run is appended to --results (default cache/bench/bench_reml.json) as soon as it finishes, so
a long run that dies keeps what it did; ``--resume`` skips the sizes that a previous run with the
same settings completed. ``--write-docs`` writes the section of docs/benchmarks.md.

Usage::

    python scripts/bench/bench_reml.py bolt --bolt-n 2000 --bolt-p 5000 --exact-max-n 2000   # smoke
    python scripts/bench/bench_reml.py scale --scale-n 3000 6000 --scale-p 5000               # smoke
    python scripts/bench/bench_reml.py all --write-docs                                       # full
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MIB, REPO, add_docs_args, alternate, cluster_section,  # noqa: E402
                    command_line, ensure_cohort, log, machine_info, machine_line, md_table, parse_run,
                    publish, run_measured, run_peer, time_v)

SECTION = "Matrix-free REML (scripts/bench/bench_reml.py)"
#: the simulated traits (as bench.py's cohorts, so unrelated cohorts are shared); trait1 is analysed
H2 = [0.5, 0.3]
TRAIT = "trait1"
METHODS = {"bolt": "BOLT-REML", "bigmm_mf": "bigmm matrix-free", "bigmm_exact": "bigmm exact (GRM + eigh)"}
BOLT_H2 = re.compile(r"^\s*h2g \(1,1\): (\S+) \((\S+)\)", re.M)
BOLT_TOTAL = re.compile(r"Total elapsed time for analysis = (\S+) sec")
BOLT_VERSION = re.compile(r"BOLT-LMM, (v\S+)")
MF_PASS = re.compile(r"INFO matrix-free REML pass \d+: \d+/\d+ \(100%\), ([\d.]+) s elapsed")
#: settings whose change makes earlier results of a workload unusable for --resume
SAME = {"bolt": ("bolt_p", "seed", "chunks", "no_covariates", "workers", "threads", "memory_limit",
                 "bolt_threads", "repeats", "exact_max_n"),
        "scale": ("scale_p", "seed", "chunks", "no_covariates", "workers", "threads", "memory_limit",
                  "scale_repeats", "layout")}


# --------------------------------------------------------------------------- runs

def cohort(args, n: int, p: int, plink: bool) -> dict:
    c = ensure_cohort(args.cache, n, p=p, seed=args.seed, pops=1, fst=0.0, h2=H2, chunks=args.chunks,
                      sim_block=args.sim_block, need_plink=plink, layout=getattr(args, "layout", "int8"))
    keep = ("n", "p", "tag", "paths", "simulate_s", "created", "zarr_bytes", "plink_bed_bytes", "reused")
    return {k: c.get(k) for k in keep}


def bigmm_config(args, c: dict, reml: dict, spectrum: dict | None = None) -> dict:
    """A run config on the cohort's Zarr store (no ingest stage), trait1, the covariates."""
    p = c["paths"]
    cfg = {"genotypes": {"zarr": p["zarr"]}, "phenotypes": {"file": p["pheno"], "columns": [TRAIT]}}
    if not args.no_covariates:
        cfg["covariates"] = {"file": p["covar"], "columns": ["age", "sex"], "categorical": ["sex"]}
    if spectrum:
        cfg["spectrum"] = spectrum
    return {**cfg, "reml": reml, "cluster": cluster_section(args)}


def run_bigmm(rdir: Path, cfg: dict, timeout: float) -> dict:
    """``bigmm run`` of ``cfg`` in a fresh ``rdir``: wall, CPU of the process tree, peak summed RSS,
    stages (run.json), the fit of trait1 (results.json) and the matrix-free pass times (run.log).

    (common.run_e2e writes a fixed config: every phenotype and no ``reml`` section.)"""
    import yaml

    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    out = rdir / "out"
    (rdir / "cfg.yaml").write_text(yaml.safe_dump({**cfg, "output": str(out)}, sort_keys=False))
    cmd = [sys.executable, "-m", "bigmm.pipeline.cli", "run", str(rdir / "cfg.yaml")]
    log(f"  {shlex.join(cmd)}")
    rc, measured = run_measured(cmd, rdir, timeout)
    if rc != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({rc}); see {rdir / 'stdout.log'}")
    wall = measured["wall_s"]
    info = parse_run(out)
    fit = json.loads((out / "results.json").read_text())["phenotypes"][0]
    pass_s = [float(m.group(1)) for m in MF_PASS.finditer((out / "run.log").read_text())]
    stages = {k: v["seconds"] for k, v in info["stages"].items()}
    r = {**{k: measured[k] for k in ("run_dir", "started", "loadavg_1min_start_end", "wall_s", "cpu_s", "peak_rss_mib",
                                     "sum_of_process_peaks_mib", "max_processes")},
         "stages_s": stages, "outside_stages_s": wall - sum(stages.values()),
         "passes_over_X": sum(v["passes_over_X"] for v in info["stages"].values()),
         "pass_s": pass_s, "pass_s_mean": statistics.mean(pass_s) if pass_s else None}
    r.update({k: fit.get(k) for k in ("n", "h2", "h2_se", "h2_se_mc", "h2_he", "lanczos_steps", "converged")})
    log(f"  wall {wall:.1f} s, CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, {r['passes_over_X']} "
        f"passes, h2 {r['h2']:.4f} (SE {r['h2_se']:.4f})")
    return r


def run_bolt(args, exe: str, c: dict, rdir: Path) -> dict:
    """BOLT-REML under /usr/bin/time -v (common.run_peer: wall and exact peak RSS as well)."""
    rdir.mkdir(parents=True, exist_ok=True)
    p, tv = c["paths"], rdir / "time_v.txt"
    cmd = [exe, "--bfile", p["plink"], "--phenoFile", p["pheno"], "--phenoCol", TRAIT, "--reml",
           "--numThreads", str(args.bolt_threads)]
    if not args.no_covariates:
        cmd += ["--covarFile", p["covar"], "--qCovarCol", "age", "--covarCol", "sex"]
    timer = ["/usr/bin/time", "-v", "-o", str(tv)] if os.access("/usr/bin/time", os.X_OK) else []
    try:
        r = run_peer(timer + cmd, rdir / "bolt.log", f"BOLT-REML n={c['n']}")
    except RuntimeError:
        tail = [ln.strip() for ln in (rdir / "bolt.log").read_text().splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"{' / '.join(tail) or 'non-zero exit, no output'} (log: {rdir / 'bolt.log'})") from None
    # run_peer's ru_maxrss keeps the high-water mark of the forked Python before exec: an upper
    # bound only; /usr/bin/time's is BOLT's own
    r["ru_maxrss_mib"] = r["peak_rss_mib"] = r.pop("peak_rss") / MIB
    r["wall_s"] = r.pop("seconds")
    if timer:
        r.update(time_v(tv))
    text = (rdir / "bolt.log").read_text()
    found = BOLT_H2.findall(text)
    if not found:
        raise RuntimeError(f"no 'h2g (1,1): H (SE)' line in {rdir / 'bolt.log'}")
    r["h2"], r["h2_se"] = (float(x) for x in found[-1])
    if m := BOLT_TOTAL.search(text):
        r["bolt_reported_s"] = float(m.group(1))
    r["warnings"] = [ln.strip() for ln in text.splitlines() if ln.startswith(("WARNING", "NOTE"))]
    log(f"  BOLT h2 {r['h2']:.4f} (SE {r['h2_se']:.4f}), CPU {r['cpu_s']:.1f} s, max RSS {r['peak_rss_mib']:.0f} MiB")
    return r


def bolt_exe(args) -> str | None:
    if args.no_bolt:
        return None
    exe = shutil.which(args.bolt)
    if exe is None:
        log(f"BOLT-LMM not found ({args.bolt}; Debian: apt-get install -y bolt-lmm): BOLT rows are skipped")
    return exe


# --------------------------------------------------------------------------- workloads

def sizes(args, w: str, wl: dict, old: dict, ns: list[int], p: int, plink: bool):
    """Each n of a workload still to run, with its cohort and its (new) row of results; a row a
    previous run completed (``old``, from --resume) is taken as it is."""
    for n in ns:
        if (prev := old.get(str(n))) and prev.get("complete"):
            log(f"{w} n={n}: reusing the runs of {prev['runs_started']}")
            wl["rows"][str(n)] = prev
            continue
        log(f"=== {w} workload: n={n}, p={p}")
        c = cohort(args, n, p, plink=plink)
        yield n, c, wl["rows"].setdefault(str(n), {
            "n": n, "cohort": c, "runs_started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")})


def w_bolt(args, wl: dict, old: dict, save) -> None:
    exe = bolt_exe(args)
    wl["bolt"] = exe
    if exe:
        head = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
        wl["bolt_version"] = m.group(1) if (m := BOLT_VERSION.search(head)) else "?"
    for n, c, row in sizes(args, "bolt", wl, old, args.bolt_n, args.bolt_p, plink=exe is not None):
        row.update(runs={}, failed={})
        rdir = lambda m, rep: args.cache / "reml_runs" / f"{m}_n{n}_p{args.bolt_p}_r{rep + 1}"  # noqa: E731
        methods = {}
        if exe:
            methods["bolt"] = lambda rep: run_bolt(args, exe, c, rdir("bolt", rep))
        methods["bigmm_mf"] = lambda rep: run_bigmm(rdir("mf", rep), bigmm_config(args, c, {"method": "matrix_free"}),
                                                   args.timeout)
        if n <= args.exact_max_n:
            methods["bigmm_exact"] = lambda rep: run_bigmm(rdir("exact", rep), bigmm_config(
                args, c, {"method": "spectral"}, {"method": "exact"}), args.timeout)

        def saving(name, fn):  # each run is in the results file as soon as it is done
            def run(rep):
                r = fn(rep)
                row["runs"].setdefault(name, []).append(r)
                save()
                return r
            return run

        alternate(args.repeats, {m: saving(m, fn) for m, fn in methods.items()}, row["failed"])
        row["complete"] = True
        save()


def w_scale(args, wl: dict, old: dict, save) -> None:
    for n, c, row in sizes(args, "scale", wl, old, args.scale_n, args.scale_p, plink=False):
        row["runs"] = []
        for rep in range(args.scale_repeats):
            log(f"scale n={n}: repeat {rep + 1}/{args.scale_repeats}")
            row["runs"].append(run_bigmm(args.cache / "reml_runs" / f"scale_n{n}_p{args.scale_p}_r{rep + 1}",
                                         bigmm_config(args, c, {"method": "matrix_free"}), args.timeout))
            save()
        row["complete"] = True
        save()


# --------------------------------------------------------------------------- report

def med(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def f(v, spec: str, unit: str = "") -> str | None:
    return None if v is None else f"{v:{spec}}{unit}"


def spread(runs: list[dict], key: str, spec: str) -> str | None:
    """Median, with min–max when there are several runs."""
    v = med(runs, key)
    if v is None or len(runs) < 2:
        return f(v, spec)
    return f"{v:{spec}} ({min(r[key] for r in runs):{spec}}–{max(r[key] for r in runs):{spec}})"


def cohort_line(rows: dict) -> str:
    cs = [r["cohort"] for r in rows.values()]
    return ("Data: bigmm.simulate, unrelated (1 population), MAF U(0.05, 0.5), no missing calls, trait1 "
            "h² = 0.5; cached stores " + ", ".join(f"n = {c['n']:,}: {c['zarr_bytes'] / MIB:,.0f} MiB Zarr"
                                                   + (f" + {c['plink_bed_bytes'] / MIB:,.0f} MiB .bed"
                                                      if c.get("plink_bed_bytes") else "") for c in cs) + ".")


def bolt_report(wl: dict) -> list[str]:
    a, rows = wl["args"], wl["rows"]
    cov = "intercept only" if a["no_covariates"] else "covariates age (quantitative) and sex (categorical) + intercept"
    bolt = (f"BOLT-LMM {wl.get('bolt_version', '?')} `--reml --numThreads {a['bolt_threads']}`" if wl.get("bolt")
            else "BOLT-LMM not installed: its rows are skipped")
    out = [f"**bigmm matrix-free vs BOLT-REML** (run {wl['date']}; p = {a['bolt_p']:,}; {cov}, the same for both; "
           f"{bolt}, under `/usr/bin/time -v`; bigmm `bigmm run` on the Zarr store, `reml: {{method: matrix_free}}` at "
           f"its defaults ({wl['reml_defaults']}), cluster {a['workers']} workers × {a['threads']} thread, "
           f"memory_limit {a['memory_limit']}; exact: `spectrum: {{method: exact}}` + spectral REML, for n ≤ "
           f"{a['exact_max_n']:,}; {a['repeats']} run(s) of each, alternating, median; CPU = user + sys of the "
           f"whole process tree; peak RSS of bigmm = sampled peak of the sum over driver and workers, of BOLT its "
           f"max RSS; dev. = |ĥ² − ĥ²_exact|, also in units of the method's SE):", ""]
    table, summary, failed = [], [], []
    for n_s, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        runs = row["runs"]
        exact = med(runs.get("bigmm_exact", []), "h2")
        for m, label in METHODS.items():
            rr = runs.get(m)
            if not rr:
                if m in row.get("failed", {}):
                    table.append([f"{int(n_s):,}", label, "failed (below)"] + [None] * 8)
                    failed.append(f"- {label} at n = {int(n_s):,} failed: {row['failed'][m]}")
                continue
            h2, se = med(rr, "h2"), med(rr, "h2_se")
            dev = None if exact is None or m == "bigmm_exact" else abs(h2 - exact)
            table.append([f"{int(n_s):,}", label, spread(rr, "wall_s", ".1f"), f(med(rr, "cpu_s"), ".1f"),
                          f(med(rr, "peak_rss_mib"), ",.0f"), f(h2, ".4f"), f(se, ".4f"), f(med(rr, "h2_se_mc"), ".4f"),
                          f(med(rr, "h2_he"), ".4f"),
                          None if dev is None else f"{dev:.1e} ({dev / se:.2f} SE)",
                          f(med(rr, "passes_over_X"), ".0f")])
        b, mf = runs.get("bolt"), runs.get("bigmm_mf")
        if b and mf:
            ratio = med(mf, "cpu_s") / med(b, "cpu_s")
            db = None if exact is None else abs(med(b, "h2") - exact)
            dm = None if exact is None else abs(med(mf, "h2") - exact)
            acc = "not checked (no exact REML)" if exact is None else ("yes" if dm <= db else "no")
            summary.append([f"{int(n_s):,}", f"{ratio:.3f}", f"{med(mf, 'wall_s') / med(b, 'wall_s'):.3f}",
                            f(dm, ".1e"), f(db, ".1e"), acc,
                            "**met**" if ratio <= 0.2 and acc != "no" else "NOT met"])
    out += [md_table(["n", "method", "wall s", "CPU s", "peak RSS MiB", "ĥ²", "SE", "SE (MC part)", "h²_HE",
                      "dev. from exact", "passes over X"], table, "rl"), ""] + failed + ([""] if failed else [])
    if summary:
        out += ["Goal: bigmm CPU ≤ 0.2 × BOLT CPU at an equal or smaller deviation from exact REML:", "",
                md_table(["n", "CPU bigmm / BOLT", "wall bigmm / BOLT", "dev. bigmm", "dev. BOLT",
                          "bigmm dev. ≤ BOLT dev.", "goal"], summary), ""]
    notes = sorted({w for row in rows.values() for r in row["runs"].get("bolt", []) for w in r.get("warnings", [])})
    if notes:
        out += ["BOLT said: " + "; ".join(f"“{w}”" for w in notes) + ".", ""]
    return out + [cohort_line(rows), ""]


def scale_report(wl: dict) -> list[str]:
    a, rows = wl["args"], wl["rows"]
    rows = dict(sorted(((k, v) for k, v in rows.items() if v["runs"]), key=lambda kv: int(kv[0])))
    if not rows:
        return []
    table, per, unit = [], {}, {}
    for n_s, row in rows.items():
        rr, n = row["runs"], int(n_s)
        st = lambda name: med([{"s": r["stages_s"].get(name)} for r in rr], "s")  # noqa: E731
        passes = med(rr, "passes_over_X")
        work = (st("variant_stats") or 0) + (st("reml") or 0)
        per[n] = med(rr, "wall_s") / n
        unit[n] = work / passes / n if passes else None
        steps = med(rr, "lanczos_steps")
        table.append([f"{n:,}", spread(rr, "wall_s", ".1f"), f(med(rr, "cpu_s"), ".0f"),
                      f"{med(rr, 'peak_rss_mib') / 1024:.2f} "
                      f"({max(r['sum_of_process_peaks_mib'] for r in rr) / 1024:.2f})",
                      f"{passes:.0f} (1 + {steps:.0f})", f(st("variant_stats"), ".1f"), f(st("reml"), ".1f"),
                      f(med(rr, "pass_s_mean"), ".2f"), f((st("reml") or 0) / steps if steps else None, ".2f"),
                      f"{med(rr, 'h2'):.4f} ({med(rr, 'h2_se'):.4f})",
                      "yes" if all(r["converged"] for r in rr) else "NO",
                      f"{1e3 * per[n]:.2f}", f(unit[n] and 1e6 * unit[n], ".2f")])
    n0, nb = min(per), max(per)
    for t, n in zip(table, per):
        t.append(f"×{per[n] / per[n0]:.2f}")
    rb = rows[str(nb)]["runs"]
    wall = med(rb, "wall_s")
    rss, ub = (max(r[k] for r in rb) / 1024 for k in ("peak_rss_mib", "sum_of_process_peaks_mib"))
    cov = "intercept only" if a["no_covariates"] else "age + sex"
    return [f"**End to end at scale** (run {wl['date']}; `bigmm run`, matrix-free REML at its defaults, the Zarr store "
            f"given: no ingest, genotype layout {a.get('layout', 'int8')}; p = {a['scale_p']:,}; one phenotype, {cov}; cluster {a['workers']} workers × "
            f"{a['threads']} thread, memory_limit {a['memory_limit']}; {a['scale_repeats']} run(s) per n, median; "
            "peak RSS: sampled peak of the sum over all processes (sum of per-process peaks, an upper bound); "
            "passes over X: variant statistics + Lanczos steps; pass s: a Lanczos pass alone (run.log), "
            "REML s / step with the driver's work between passes; µs / sample / pass: (variant_stats + reml "
            "stage seconds) / passes / n):", "",
            md_table(["n", "wall s", "CPU s", "peak RSS GiB", "passes over X", "variant_stats s", "reml s", "pass s",
                      "REML s / step", "ĥ² (SE)", "converged", "ms / sample", "µs / sample / pass",
                      f"wall / sample vs n = {n0:,}"], table), "",
            f"- Goal: end to end under 15 min at n = {nb:,} — {'met' if wall < 900 else 'NOT met'}: "
            f"{wall / 60:.1f} min.",
            f"- Goal: under 6 GiB at n = {nb:,} — {'met' if rss < 6 else 'NOT met'}: sampled peak {rss:.2f} GiB "
            f"(upper bound {ub:.2f} GiB).",
            f"- Linear in n: wall time per sample at n = {nb:,} is ×{per[nb] / per[n0]:.2f} that at n = {n0:,} "
            f"(start-up included); the stages' time per sample and pass ×"
            f"{f(unit[nb] / unit[n0] if unit[nb] and unit[n0] else None, '.2f')}.", "",
            cohort_line(rows), ""]


def build_report(res: dict) -> str:
    wls = [w for w in ("bolt", "scale") if w in res]
    latest = max(wls, key=lambda w: res[w]["date"])
    m = res[latest]["machine"]
    lines = [machine_line(m) + ". " + " ".join(
        f"{w}: load average at start / end {res[w]['machine']['loadavg_start'][0]:.2f} / "
        f"{res[w]['loadavg_end'][0]:.2f}." for w in wls)
        + " (Shared machine: CPU time is less disturbed than wall time.)",
        ""]
    for w in wls:
        lines += (bolt_report if w == "bolt" else scale_report)(res[w])
    cmds = list(dict.fromkeys(res[w]["command"] for w in wls))
    return "\n".join(lines + ["Regenerate:", "", "```"] + cmds + ["```"])


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", default=["all"], choices=("bolt", "scale", "all", "report"))
    ap.add_argument("--bolt-n", type=int, nargs="+", default=[10000, 25000], help="cohort sizes of the BOLT comparison")
    ap.add_argument("--bolt-p", type=int, default=20000, help="variants of the BOLT comparison (default 20000)")
    ap.add_argument("--exact-max-n", type=int, default=10000, help="exact REML (GRM + eigh) up to this n")
    ap.add_argument("--repeats", type=int, default=1, help="repeats of the BOLT comparison (median; default 1)")
    ap.add_argument("--scale-n", type=int, nargs="+", default=[25000, 50000, 100000])
    ap.add_argument("--scale-p", type=int, default=50000)
    ap.add_argument("--scale-repeats", type=int, default=1, help="end-to-end runs per n of the scale workload")
    ap.add_argument("--no-covariates", action="store_true", help="intercept only (default: age + sex for both tools)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="Zarr chunks SAMPLES,VARIANTS (default 8192,2048, as bench.py)")
    ap.add_argument("--sim-block", type=int, default=1024, help="variants per simulation block (memory)")
    ap.add_argument("--layout", default="int8", choices=("int8", "2bit"),
                    help="genotype layout of the simulated stores (default int8: the cached cohorts' layout)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="4GiB", help="per worker")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before a bigmm run is killed")
    ap.add_argument("--bolt", default="/usr/bin/bolt", help="BOLT-LMM executable")
    ap.add_argument("--bolt-threads", type=int, default=2, help="bolt --numThreads")
    ap.add_argument("--no-bolt", action="store_true")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench", help="cohorts and run directories")
    ap.add_argument("--results", type=Path, default=None, help="results file (default CACHE/bench_reml.json)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the sizes a previous run with the same settings completed (from the results file)")
    add_docs_args(ap)
    args = ap.parse_args(argv)
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.results or args.cache / "bench_reml.json"
    res = json.loads(path.read_text()) if path.exists() else {}

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
        os.replace(tmp, path)

    todo = ["bolt", "scale"] if "all" in args.workloads else [w for w in args.workloads if w != "report"]
    if todo:
        import logging

        from bigmm.pipeline.config import RemlConfig

        logging.getLogger("distributed").setLevel(logging.ERROR)
        d = RemlConfig()
        defaults = f"probes {d.probes}, max_steps {d.max_steps}, tol {d.tol:g}, deflate {d.deflate}, {d.dtype}"
        settings = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                    for k, v in vars(args).items()}
        machine, command = machine_info(), command_line(__file__, argv)
    for w in todo:
        prev = res.get(w, {})
        same = args.resume and all(prev.get("args", {}).get(k) == settings[k] for k in SAME[w])
        res[w] = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "args": settings,
                  "machine": machine, "command": command, "reml_defaults": defaults, "rows": {}}
        t0 = time.perf_counter()
        (w_bolt if w == "bolt" else w_scale)(args, res[w], prev.get("rows", {}) if same else {}, save)
        res[w].update(loadavg_end=os.getloadavg(), workload_s=time.perf_counter() - t0)
        save()
        log(f"=== workload {w} done in {res[w]['workload_s']:.0f} s; results in {path}")
    if not any(w in res for w in ("bolt", "scale")):
        log(f"no results in {path}: run a workload first")
        return 1
    publish(SECTION, build_report(res), args.docs if args.write_docs else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
