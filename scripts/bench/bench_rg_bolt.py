#!/usr/bin/env python
"""Benchmark: the genetic correlation of one pair of phenotypes, bigmm next to BOLT-REML.

One cohort of n samples and p variants simulated with ``bigmm.simulate`` into a Zarr store and a
PLINK fileset of the same genotypes (common.ensure_cohort, cached in --cache and shared with
bench_reml.py and bench_components_bolt.py), and on it a pair of phenotypes ``ya``, ``yb`` with
known heritabilities (--h2, default 0.3 and 0.5), genetic correlation (--rg, 0.5) and residual
correlation (--re, 0.3): every variant causal, its two effects drawn from N(0, [[1, r_g], [r_g, 1]])
on the sample-standardized genotypes, each genetic value scaled to its h² in the sample; the
residuals bivariate normal with correlation r_e; covariates age (quantitative) and sex
(categorical) as bigmm.simulate gives them, with the same effects on both (0.5 per 10 years, 0.3).

Side by side, in turn (``common.alternate``), --repeats times, each tool as a fresh process:

``bolt``         ``bolt --bfile ... --phenoFile ... --phenoCol ya --phenoCol yb --covarFile ...
                 --qCovarCol age --covarCol sex --reml --numThreads T`` under ``/usr/bin/time -v``
                 (BOLT-REML's bivariate model: h² of each phenotype, r_g with SEs, from its log).
``bigmm_mf``     the library in a child process, as a run takes it at this n with ``reml.method:
                 matrix_free``: ``bigmm.variant_stats`` (one pass), ``bigmm.standardization`` (BOLT's
                 sample-SD scaling by default), ``bigmm.GrmOperator`` over the store (float32 products,
                 a run's default), ``bigmm.fit_matrix_free`` of both phenotypes (one block Krylov
                 build), then ``bigmm.mf_bivariate.fit_bivariate_matrix_free`` of the pair from that build (no pass
                 over X; Monte Carlo SD by the delete-one-probe jackknife).
``bigmm_exact``  (n ≤ --exact-max-n) the same child with the GRM (``bigmm.grm``), its eigendecomposition
                 (``bigmm.exact_spectrum``) and ``bigmm.bivariate.fit_bivariate`` (exact bivariate AI-REML).

Both bigmm children run on a local Dask cluster of --workers x 1 thread
(bigmm.pipeline.cluster.dask_client). CPU = user + sys of the reaped process tree; peak RSS of
bigmm = sampled peak of the RSS summed over the tree (common.PeakRSS), of BOLT its max RSS from
``/usr/bin/time -v`` (common.time_v). The 1-minute load average is recorded at the start and end
of every run (a shared machine).

Every run is saved to --results (default results/bench_rg_bolt.json) as soon as it is done;
``report`` renders the table from it, ``--write-docs`` writes it as the section "Genetic
correlations" of docs/benchmarks.md (with bench_rg_pairs.py's figures, when its --store JSON
files are in results/).

Usage::

    python scripts/bench/bench_rg_bolt.py --n 2000 --p 5000                 # smoke
    python scripts/bench/bench_rg_bolt.py --n 10000 --repeats 2             # the comparison
    python scripts/bench/bench_rg_bolt.py report --write-docs
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, CountingOperator, alternate_into, bigmm_child, bolt_exe, bolt_log_facts,  # noqa: E402
                    bolt_said, command_line, comparison_parser, ensure_cohort, fmt, invocation, log, machine_line,
                    md_table, med, merge_results, parse_comparison_args, read_covariates, report_results, run_bolt,
                    run_child, runs_line, time_v, tool_runs)

SECTION = "Genetic correlations (scripts/bench/bench_rg_bolt.py, scripts/bench/bench_rg_pairs.py)"
H2_COHORT = [0.5, 0.3]  # bench_reml.py's cohorts (their own traits are not used here)
COVAR_EFFECTS = (0.5, 0.3)  # age per 10 years, sex: as bigmm.simulate
TOOLS = {"bolt": "BOLT-REML", "bigmm_mf": "bigmm matrix-free", "bigmm_exact": "bigmm exact (GRM + eigh)"}
PHENOS = ("ya", "yb")
NUM = r"([-+0-9.eE]+|nan|-?inf)"


# --------------------------------------------------------------------------- the pair of phenotypes

def prepare(args) -> dict:
    """The cohort (simulated or cached) and on it the pair's phenotype file (cached next to it,
    keyed by the simulation's parameters)."""
    c = ensure_cohort(args.cache, args.n, p=args.p, seed=args.seed, pops=1, fst=0.0, h2=H2_COHORT,
                      chunks=args.chunks, sim_block=1024, need_plink=True)
    want = {"h2": list(args.h2), "rg": args.rg, "re": args.re, "pheno_seed": args.pheno_seed,
            "sim_created": c["created"]}
    base = Path(c["paths"]["zarr"]).with_suffix("")
    tag = f"rg{args.rg:g}_re{args.re:g}_h{args.h2[0]:g}-{args.h2[1]:g}_seed{args.pheno_seed}"
    pheno, meta_path = Path(f"{base}.{tag}.pheno.tsv"), Path(f"{base}.{tag}.json")
    if meta_path.exists() and pheno.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in want.items()):
            log(f"phenotypes: reusing {pheno.name}")
            return {**c, "pair": meta, "pheno": str(pheno)}
    import bigmm

    log(f"phenotypes: pair h2 {args.h2}, r_g {args.rg}, r_e {args.re} on {c['tag']}")
    t0 = time.perf_counter()
    store = bigmm.open_store(c["paths"]["zarr"])
    G = store.genotypes
    n, p = G.shape
    rng = np.random.default_rng(args.pheno_seed)
    L = np.linalg.cholesky(np.array([[1.0, args.rg], [args.rg, 1.0]]))
    g = np.zeros((n, 2))
    step = store.chunks[1]
    for c0 in range(0, p, step):  # a chunk of variants at a time, standardized by its sample SD
        B = np.asarray(G[:, c0:c0 + step]).astype(np.float64)
        called = B >= 0
        X = B - np.where(called, B, 0).sum(0) / np.maximum(called.sum(0), 1)
        X[~called] = 0.0
        sd = X.std(0)
        X /= np.where(sd > 0, sd, 1.0)
        g += X @ (rng.normal(size=(B.shape[1], 2)) @ L.T)
    g -= g.mean(0)
    g *= np.sqrt(args.h2) / g.std(0)
    Le = np.linalg.cholesky(np.array([[1.0, args.re], [args.re, 1.0]]))
    e = rng.normal(size=(n, 2)) @ Le.T
    e -= e.mean(0)
    e *= np.sqrt(1.0 - np.asarray(args.h2)) / e.std(0)
    fid, iid, age, sex = read_covariates(c["paths"]["covar"])
    if list(iid) != list(store.sample_iid):
        raise RuntimeError(f"{c['paths']['covar']}: samples not in the store's order")
    fixed = 1.0 + COVAR_EFFECTS[0] * (age - 50) / 10 + COVAR_EFFECTS[1] * (sex == "M")
    y = fixed[:, None] + g + e
    pheno.write_text("FID\tIID\t" + "\t".join(PHENOS) + "\n" + "".join(
        f"{a}\t{b}\t{float(u)!r}\t{float(v)!r}\n" for a, b, (u, v) in zip(fid, iid, y)))
    meta = {**want, "h2_sample": (g.var(0) / (g + e).var(0)).tolist(),
            "rg_sample": float(np.corrcoef(g.T)[0, 1]), "re_sample": float(np.corrcoef(e.T)[0, 1]),
            "seconds": time.perf_counter() - t0}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    log(f"  {meta['seconds']:.1f} s; sample h2 {meta['h2_sample']}, r_g {meta['rg_sample']:.4f}, "
        f"r_e {meta['re_sample']:.4f}")
    return {**c, "pair": meta, "pheno": str(pheno)}


# --------------------------------------------------------------------------- BOLT

def parse_bolt(text: str) -> dict:
    """BOLT-REML's bivariate estimates from its log: h² of each phenotype (h2g (1,1), (2,2)),
    the genetic correlation (gen corr (1,2)), with their SEs."""
    out = {}
    for key, pat in {"h2_a": r"h2g \(1,1\): ", "h2_b": r"h2g \(2,2\): ", "rg": r"gen corr \(1,2\): ",
                     "re": r"resid corr \(1,2\): "}.items():
        found = re.findall(pat + NUM + r" \(" + NUM + r"\)", text)
        if not found:
            if key == "re":
                continue
            raise RuntimeError(f"no {pat!r} line in BOLT's log")
        v, se = found[-1]  # the final estimates (after the refinement, when BOLT refines)
        out[key], out[f"{key}_se"] = float(v), float(se)
    return {**out, **bolt_log_facts(text)}


VEGS = re.compile(r"optVegs\[(\d)\]\[2,2\]\(\(" + NUM + "," + NUM + r"\),\(" + NUM + "," + NUM + r"\)\)")


def bolt_partial(rdir: Path) -> dict:
    """The record of a BOLT-REML run stopped before its end (by hand, out of time): h² and the
    correlations from the last variance parameters it printed (``optVegs[0]``: residual,
    ``optVegs[1]``: genetic, on its normalised phenotypes; no SEs, BOLT prints those at its end),
    wall and CPU so far from ``/usr/bin/time -v`` (lower bounds)."""
    text = (rdir / "bolt.log").read_text()
    vegs = {}
    for m in VEGS.finditer(text):
        vegs[int(m.group(1))] = [float(m.group(i)) for i in (2, 3, 5)]  # (1,1), (1,2), (2,2)
    if 0 not in vegs or 1 not in vegs:
        raise RuntimeError(f"{rdir / 'bolt.log'}: no optVegs lines (BOLT stopped before its first AI step)")
    (ea, eab, eb), (ga, gab, gb) = vegs[0], vegs[1]
    stage = "MCtrials = 100 refinement" if "Refining REML optimization" in text else "MCtrials = 15 stage"
    steps = text.split("Stochastic REML optimization")[-1].count("optVegs[1]")
    r = {"h2_a": ga / (ga + ea), "h2_b": gb / (gb + eb), "rg": gab / math.sqrt(ga * gb), "re": eab / math.sqrt(ea * eb),
         "h2_a_se": None, "h2_b_se": None, "rg_se": None, "partial": True,
         "partial_note": f"stopped in its {stage}, after {steps} AI steps in all", "passes_over_X": "—",
         "log": str(rdir / "bolt.log")}
    r.update(time_v(rdir / "time_v.txt"))
    r["wall_s"] = r["time_v_wall_s"]
    return r


def bolt_bivariate(args, exe: str, c: dict, rdir: Path) -> dict:
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    cmd = [exe, "--bfile", c["paths"]["plink"], "--phenoFile", c["pheno"]]
    for ph in PHENOS:
        cmd += ["--phenoCol", ph]
    cmd += ["--covarFile", c["paths"]["covar"], "--qCovarCol", "age", "--covarCol", "sex", "--reml",
            "--numThreads", str(args.bolt_threads)]
    r = run_bolt(cmd, rdir, f"BOLT-REML bivariate n={c['n']}", parse_bolt, passes_over_X="—")
    log(f"  BOLT h2 {r['h2_a']:.4f} ({r['h2_a_se']:.4f}), {r['h2_b']:.4f} ({r['h2_b_se']:.4f}), r_g {r['rg']:.4f} "
        f"({r['rg_se']:.4f}); CPU {r['cpu_s']:.1f} s, max RSS {r['peak_rss_mib']:.0f} MiB")
    return r


# --------------------------------------------------------------------------- bigmm (a child process)

def child(spec_path: str, out_path: str) -> int:
    """The bigmm side in its own process: statistics, the univariate build or the spectrum, the pair."""
    with bigmm_child(spec_path, out_path) as run:
        import bigmm
        from bigmm.genotypes import RUN_DTYPE
        from bigmm.bivariate import fit_bivariate
        from bigmm.mf_bivariate import fit_bivariate_matrix_free

        spec, store, std, Y, Z, memory, times, out = (run.spec, run.store, run.std, run.Y, run.Z, run.memory,
                                                      run.times, run.out)
        kw = dict(phenotype_names=list(PHENOS), covariate_names=["intercept", "age", "sex"])
        if spec["method"] == "bigmm_exact":
            t = time.perf_counter()
            K = bigmm.grm(store.genotypes, std)
            times["grm"] = time.perf_counter() - t
            t = time.perf_counter()
            spectrum = bigmm.exact_spectrum(np.asarray(K))
            del K
            times["eigh"] = time.perf_counter() - t
            t = time.perf_counter()
            biv = fit_bivariate(spectrum, Y, Z, **kw)
            times["bivariate"] = time.perf_counter() - t
            out["passes_over_X"] = "1 + GRM"
        else:
            t = time.perf_counter()
            op = CountingOperator(bigmm.GrmOperator(store.genotypes, std, memory=memory, dtype=np.dtype(RUN_DTYPE)))
            uni = bigmm.fit_matrix_free(op, Y, Z, probes=spec["probes"], seed=spec["seed"], **kw)
            times["univariate_build"] = time.perf_counter() - t
            before = op.calls
            t = time.perf_counter()
            biv = fit_bivariate_matrix_free(uni, [PHENOS], jackknife="newton")
            times["bivariate"] = time.perf_counter() - t
            if op.calls != before:
                raise RuntimeError("the bivariate fit took a pass over X")
            out["passes_over_X"] = 1 + op.calls
            out["univariate_converged"] = bool(uni.converged)
            out["univariate_h2"] = {f.name: [f.h2, f.h2_se] for f in uni.fits}
            out["mc_sd"] = {k: biv.mc_sd[0].get(k) for k in ("h2_a", "h2_b", "rg")}
        f = biv.fits[0]
        out.update(bigmm_source=str(Path(bigmm.__file__).resolve().parent), stages_s=times, n=f.n,
                   converged=bool(f.converged), iterations=f.iterations, boundary=f.boundary,
                   **{k: float(getattr(f, k)) for k in ("h2_a", "h2_a_se", "h2_b", "h2_b_se", "rg", "rg_se", "re",
                                                         "re_se", "sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e",
                                                         "logL")})
    return 0


def run_bigmm(args, c: dict, method: str, rdir: Path, rep: int) -> dict:
    """The child of ``method``, measured from here: wall, CPU of the reaped process tree, peak
    RSS summed over it (sampled; the sum of per-process peaks as an upper bound)."""
    spec = {"method": method, "zarr": c["paths"]["zarr"], "covar": c["paths"]["covar"], "pheno": c["pheno"],
            "standardize": args.standardize, "seed": rep, "probes": args.probes,
            "cluster": {"workers": args.workers, "threads_per_worker": 1, "memory_limit": args.memory_limit}}
    r = run_child(__file__, spec, rdir, f"{method} n={c['n']}", args.timeout)
    log(f"  {method}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB; h2 "
        f"{r['h2_a']:.4f} ({r['h2_a_se']:.4f}), {r['h2_b']:.4f} ({r['h2_b_se']:.4f}), r_g {r['rg']:.4f} "
        f"({r['rg_se']:.4f}); passes {r['passes_over_X']}")
    return r


# --------------------------------------------------------------------------- report

def row_report(row: dict) -> list[str]:
    runs, pair = row["runs"], row["pair"]
    bolt = runs.get("bolt") or []
    hs = pair["h2_sample"]
    lines = [f"**n = {row['n']:,}, p = {row['p']:,}** (simulated h² {pair['h2'][0]:g} / {pair['h2'][1]:g}, "
             f"r_g {pair['rg']:g}, r_e {pair['re']:g}; in the sample h² {hs[0]:.4f} / {hs[1]:.4f}, "
             f"r_g {pair['rg_sample']:.4f}, r_e {pair['re_sample']:.4f}):", ""]
    head = ["tool", "ĥ²_a ± SE", "ĥ²_b ± SE", "r̂_g ± SE", "max z vs BOLT", "wall s", "CPU s", "CPU / BOLT",
            "peak RSS MiB", "passes over X", "load avg start–end"]
    table = []
    keys = ("h2_a", "h2_b", "rg")
    bolt_est = {k: (med(bolt, lambda r: r[k]), med(bolt, lambda r: r[f"{k}_se"])) for k in keys} if bolt else {}
    bolt_cpu = med(bolt, lambda r: r["cpu_s"])
    # a BOLT run stopped before its end: estimates of its last finished stage without SEs, its CPU a lower bound
    partial = any(r.get("partial") for r in bolt)
    lo, hi = ("≥ ", "≤ ") if partial else ("", "")
    for t, label, rr in tool_runs(TOOLS, row, table, len(head), 400):
        cells, zs = [], []
        for k in keys:
            v, se = med(rr, lambda r: r[k]), med(rr, lambda r: r[f"{k}_se"])
            cell = f"{v:.4f} ± {se:.4f}" if se is not None else f"{v:.4f} (no SE)"
            mc = med(rr, lambda r: (r.get("mc_sd") or {}).get(k))
            if mc is not None and not math.isnan(mc):
                cell += f" (MC {mc:.4f})"
            if t != "bolt" and k in bolt_est:
                z = abs(v - bolt_est[k][0]) / math.hypot(se, bolt_est[k][1] or 0.0)
                zs.append(z)
                cell += f" [{z:.2f}]"
            cells.append(cell)
        cpu = med(rr, lambda r: r["cpu_s"])
        l0, l1 = rr[0]["loadavg_1min_start_end"][0], rr[-1]["loadavg_1min_start_end"][1]
        loads = f"{'?' if l0 is None else format(l0, '.1f')}–{l1:.1f}"
        table.append([label] + cells + [fmt(max(zs), ".2f") if zs else None,
                                        (lo if t == "bolt" else "") + fmt(med(rr, lambda r: r["wall_s"]), ".1f"),
                                        (lo if t == "bolt" else "") + fmt(cpu, ".1f"),
                                        hi + fmt(cpu / bolt_cpu, ".3f") if bolt_cpu and t != "bolt" else None,
                                        fmt(med(rr, lambda r: r["peak_rss_mib"]), ",.0f"),
                                        str(rr[0].get("passes_over_X")), loads])
    lines += [md_table(head, table), ""]
    mf = runs.get("bigmm_mf")
    if bolt and mf:
        ratio = med(mf, lambda r: r["cpu_s"]) / bolt_cpu
        ratios = [m["cpu_s"] / b["cpu_s"] for m, b in zip(mf, bolt)]
        if partial:
            lines.append(f"- BOLT-REML was stopped before its end ({bolt[0].get('partial_note', '')}): its row has "
                         "the estimates of its last finished stage, without SEs; its wall and CPU are lower bounds, "
                         "the CPU ratio an upper bound; z uses bigmm's SE alone.")
        lines.append(f"- Goal CPU(bigmm matrix-free) ≤ 0.2 × CPU(BOLT-REML): {hi}{ratio:.3f} (ratio of the medians; "
                     f"per alternated repeat {', '.join(f'{x:.3f}' for x in ratios)}) — "
                     f"{'met' if ratio <= 0.2 else 'NOT met'}.")
        z = max(abs(med(mf, lambda r: r[k]) - bolt_est[k][0]) / math.hypot(med(mf, lambda r: r[f"{k}_se"]),
                                                                             bolt_est[k][1] or 0.0) for k in keys)
        lines.append(f"- Goal ĥ²_a, ĥ²_b and r̂_g within their SEs of BOLT's (every z ≤ 1): largest z {z:.2f} "
                     f"— {'met' if z <= 1 else 'NOT met'}.")
        st = med(mf, lambda r: r["stages_s"]["bivariate"])
        ub = med(mf, lambda r: r["stages_s"]["univariate_build"])
        lines.append(f"- bigmm matrix-free, where the time goes (medians): variant statistics "
                     f"{med(mf, lambda r: r['stages_s']['variant_stats']):.1f} s (1 pass), the univariate build "
                     f"of both phenotypes {ub:.1f} s ({mf[0]['passes_over_X'] - 1} passes), the pair from it "
                     f"{st:.2f} s (no pass; jackknife of the Monte Carlo SD included).")
    ex = runs.get("bigmm_exact")
    if ex and mf:
        ze = max(abs(med(mf, lambda r: r[k]) - med(ex, lambda r: r[k])) / med(ex, lambda r: r[f"{k}_se"])
                 for k in keys)
        lines.append(f"- Matrix-free against exact: max |estimate difference| / exact SE over ĥ²_a, ĥ²_b, r̂_g "
                     f"{ze:.3f}.")
    if ex:
        st = ex[0]["stages_s"]
        lines.append(f"- bigmm exact, where the time goes (first run): GRM {st['grm']:.1f} s, eigendecomposition "
                     f"{st['eigh']:.1f} s, the bivariate fit {st['bivariate']:.2f} s.")
    spans = {t: [(_dt.datetime.fromisoformat(r["started"]).timestamp(), r["wall_s"]) for r in rr]
             for t, rr in runs.items() if rr}
    overlap = sorted({TOOLS[t] for t, ss in spans.items() for u, vv in spans.items() if u != t
                      for a, wa in ss for b, wb in vv if a < b + wb and b < a + wa})
    if overlap:
        lines.append("- Runs of " + ", ".join(overlap) + " overlapped in time (separate invocations of this "
                     "script, to fit the time available): each slowed the other; CPU time is the compared figure.")
    lines += bolt_said(bolt)
    lines.append(runs_line(runs, TOOLS))
    return lines + [""]


def pairs_report() -> list[str]:
    """bench_rg_pairs.py --store figures found in results/ (all pairs of P phenotypes at scale)."""
    recs = []
    for f in sorted((REPO / "results").glob("bench_rg_pairs_n*_p*_t*.json")):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            continue
        if r.get("univariate"):
            recs.append(r)
    if not recs:
        return []
    recs.sort(key=lambda r: r["args"]["n"])
    head = ["n", "p", "phenotypes (pairs)", "univariate build: wall", "CPU (all processes)", "passes over X",
            "CPU s per pass", "peak RSS GiB", "all pairs, no jackknife: wall (driver CPU)",
            "all pairs + jackknife: wall (driver CPU)", "pairs' CPU / build's CPU", "load avg start–end"]
    rows = []
    for r in recs:
        a, u = r["args"], r["univariate"]
        p0, p1 = r.get("pairs_jackknife_off"), r.get("pairs_jackknife_newton")
        P = a["traits"]
        last = p1 or p0 or u
        pairs = lambda q: None if q is None else f"{q['wall_s']:.0f} s ({q['cpu_s_driver']:.0f} s)"  # noqa: E731
        rows.append([f"{a['n']:,}", f"{a['p']:,}", f"{P} ({P * (P - 1) // 2:,})", f"{u['wall_s'] / 60:.1f} min",
                     f"{u['cpu_s_tree'] / 60:.1f} min", str(u["passes_over_X"]),
                     f"{u['cpu_s_tree'] / u['passes_over_X']:.0f}", f"{u['peak_rss_mib'] / 1024:.2f}",
                     pairs(p0) or "not finished", pairs(p1) or "not finished",
                     " / ".join(f"{q['cpu_s_driver'] / u['cpu_s_tree']:.2f}" for q in (p0, p1) if q) or None,
                     f"{r['loadavg_start'][0]:.1f}–{last['loadavg_end'][0]:.1f}"])
    return ["**All pairs of many phenotypes** (`scripts/bench/bench_rg_pairs.py --store`: a `bigmm.simulate` "
            "Zarr store, chunks 8192 × 2048, the phenotypes with factor-structured genetic and residual "
            "covariances, h² ~ U(0.2, 0.6), intercept + 1 covariate, all observed; `GrmOperator` float32 on a local "
            "Dask cluster of 2 workers × 1 thread; `fit_matrix_free` (30 probes) then "
            "`fit_bivariate_matrix_free(res, \"all\")` without and with the delete-one-probe jackknife, in the "
            "driver; 0 passes over X for the pairs (asserted); peak RSS = sampled peak of the sum over driver and "
            "workers; the pairs' peak is below the build's):", "", md_table(head, rows), "",
            "Commands: " + "; ".join(f"`{pairs_command(r)}` ({r['date']})" for r in recs) + ".", ""] \
        + [f"- n = {r['args']['n']:,}: Monte Carlo SD of r̂_g / its statistical SE over the pairs: median "
           f"{q[0]:.3f}, 90% {q[1]:.3f}, max {q[2]:.3f}; pairs not converged "
           f"{r['pairs_jackknife_newton']['not_converged']}, on a boundary {r['pairs_jackknife_newton']['boundary']}."
           for r in recs if (q := r.get("rg_mc_over_se_quantiles"))] \
        + [f"- n = {r['args']['n']:,}: figures read from the run's printed lines (it started before the script "
           "saved its JSON after every stage)." for r in recs if r.get("from_log")] \
        + [f"- n = {r['args']['n']:,}: {r['note']}" for r in recs if r.get("note")] + extrapolation(recs)


def extrapolation(recs: list[dict], n_to: int = 100000) -> list[str]:
    """Where no run at ``n_to`` finished: the build's cost scaled from the largest n measured (a
    pass is O(n p width) and its driver work O(n); the pairs' driver work does not depend on n)."""
    done = [r for r in recs if r.get("pairs_jackknife_newton") or r.get("pairs_jackknife_off")]
    if not done or any(r["args"]["n"] >= n_to and r.get("pairs_jackknife_newton") for r in recs):
        return []
    r = done[-1]
    a, u = r["args"], r["univariate"]
    p1 = r.get("pairs_jackknife_newton") or r["pairs_jackknife_off"]
    how = "with" if r.get("pairs_jackknife_newton") else "without"
    f = n_to / a["n"]
    cpu = f * u["cpu_s_tree"] / 60
    basis_gib = n_to * u["passes_over_X"] * (a["traits"] + 2) * 8 / 2**30
    return [f"- **n = {n_to:,}: no finished run on this machine** (none fitted in the time the shared machine "
            f"allowed). Scaled from n = {a['n']:,} (cost linear in n, the same {u['passes_over_X']} passes; the "
            f"single-phenotype runs of the matrix-free section took 10 passes at n = 25,000 and 13 at n = 100,000, "
            f"so allow ~30% more): the univariate build ≈ {cpu:.0f}–{1.3 * cpu:.0f} CPU-minutes, i.e. "
            f"≈ {cpu / 2:.0f}–{1.3 * cpu / 2:.0f} min of wall on 2 otherwise idle cores; the driver keeps the "
            f"Krylov basis, n × passes × (phenotypes + covariates) doubles ≈ {basis_gib:.1f}–"
            f"{1.3 * basis_gib:.1f} GiB at n = {n_to:,} ({u['peak_rss_mib'] / 1024:.2f} GiB in all at "
            f"n = {a['n']:,}); all pairs {how} the jackknife ≈ {p1['cpu_s_driver'] / 60:.0f} CPU-minutes of "
            f"driver work whatever n (it depends on the Krylov dimension, passes × (phenotypes + covariates), "
            f"and the probes only).", ""]


def pairs_command(r: dict) -> str:
    a = r["args"]
    return r.get("command") or f"python scripts/bench/bench_rg_pairs.py --store --n {a['n']} --p {a['p']} " \
                               f"--traits {a['traits']}"


def build_report(res: dict) -> str:
    a = res["args"]
    lines = [machine_line(res["machine"]) + ".", "",
             f"Latest invocation {res['date']}. Setup: cohort from `bigmm.simulate` (unrelated, MAF U(0.05, 0.5), "
             f"no missing calls; seed {a['seed']}), a pair of phenotypes `ya`, `yb` (every variant causal, effects "
             "bivariate normal with correlation r_g on the sample-standardized genotypes, genetic values scaled to "
             "their h², residuals bivariate normal with correlation r_e; covariates age (quantitative) and sex "
             "(categorical) + intercept for both tools). "
             f"BOLT-LMM {res.get('bolt_version', '?')} `--reml --phenoCol ya --phenoCol yb --numThreads "
             f"{a['bolt_threads']}` (its bivariate model: h² of each, r_g with SEs) under `/usr/bin/time -v`. bigmm "
             f"through the library in a child process, standardization `{a['standardize']}` (BOLT's), on a local "
             f"Dask cluster of {a['workers']} workers × 1 thread ({a['memory_limit']} each): matrix-free = "
             "`GrmOperator` (float32) + `fit_matrix_free` of both phenotypes (one block Krylov build, "
             f"{a['probes']} probes) + `fit_bivariate_matrix_free` of the pair from it (MC = Monte Carlo SD by the "
             "delete-one-probe jackknife; the SE shown is the statistical one); exact = `grm` + `exact_spectrum` + "
             "`fit_bivariate`. CPU = user + sys of the whole process tree; peak RSS of bigmm = sampled peak of the "
             "sum over driver and workers, of BOLT its max RSS; [z] = |estimate(bigmm) − estimate(BOLT)| / "
             "sqrt(SE_bigmm² + SE_BOLT²); load average = 1-minute load at the start of the first and the end of "
             "the last run. The machine is shared with other developers' jobs (2 cores): figures are indicative, "
             "CPU time is less disturbed than wall time, and ratios are of medians.", ""]
    for row in sorted(res.get("rows", {}).values(), key=lambda r: r["n"]):
        lines += row_report(row)
    lines += pairs_report()
    cmds = list(dict.fromkeys(r["command"] for row in res.get("rows", {}).values()
                              for rr in row["runs"].values() for r in rr))
    return "\n".join(lines + ["The commands that made the pair's rows:", "", "```"] + cmds + ["```"])


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_child"]:
        return child(*argv[1:3])
    ap = comparison_parser(__doc__, ("run", "report", "bolt-partial"),
                           "run; report; bolt-partial: record the BOLT run of --n/--p that was stopped before its "
                           "end (its last variance parameters, no SEs; its CPU so far)")
    ap.add_argument("--n", type=int, default=10000, help="samples (default 10000)")
    ap.add_argument("--p", type=int, default=20000, help="variants (default 20000, as bench_components_bolt.py)")
    ap.add_argument("--h2", type=float, nargs=2, default=[0.3, 0.5], help="h² of ya and yb (default 0.3 0.5)")
    ap.add_argument("--rg", type=float, default=0.5, help="genetic correlation (default 0.5)")
    ap.add_argument("--re", type=float, default=0.3, help="residual correlation (default 0.3)")
    ap.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS),
                    help="which runs (default all; bigmm_exact only for n <= --exact-max-n)")
    ap.add_argument("--exact-max-n", type=int, default=10000,
                    help="largest n for the exact path (GRM 8 n² bytes, eigh O(n³); default 10000)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each tool, alternating (median; default 1)")
    ap.add_argument("--seed", type=int, default=1, help="the cohort's bigmm.simulate seed (default 1)")
    ap.add_argument("--pheno-seed", type=int, default=24, help="the pair's seed (default 24)")
    ap.add_argument("--standardize", default="sample_sd", choices=("sample_sd", "gcta"),
                    help="bigmm's standardization (default sample_sd: BOLT's)")
    ap.add_argument("--probes", type=int, default=30, help="matrix-free probes (default 30, the library's)")
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="Zarr chunks SAMPLES,VARIANTS of a new cohort (default 8192,2048)")
    ap.add_argument("--workers", type=int, default=2)
    args = parse_comparison_args(ap, argv, "bench_rg_bolt.json")
    res: dict = {}  # this invocation's rows only (save merges them into the file)
    save = lambda: merge_results(args.results, res)  # noqa: E731

    if args.action == "run":
        res.update(invocation(__file__, argv, args))
        exe = bolt_exe(args.bolt, res) if "bolt" in args.tools else None
        c = prepare(args)
        key = f"n{args.n}_p{args.p}"
        row = res.setdefault("rows", {}).setdefault(key, {"n": args.n, "p": args.p, "runs": {}, "failed": {}})
        row["cohort"] = {k: c.get(k) for k in ("tag", "paths", "created", "zarr_bytes", "plink_bed_bytes")}
        row["pair"] = c["pair"]
        rdir = lambda t, rep: args.cache / "rg_runs" / f"{t}_{key}_r{rep + 1}"  # noqa: E731
        methods = {}
        for t in args.tools:
            if t == "bolt":
                if exe:
                    methods[t] = lambda rep: bolt_bivariate(args, exe, c, rdir("bolt", rep))
            elif t == "bigmm_exact" and args.n > args.exact_max_n:
                log(f"  bigmm_exact skipped at n = {args.n} > --exact-max-n {args.exact_max_n}")
            else:
                methods[t] = (lambda t: lambda rep: run_bigmm(args, c, t, rdir(t, rep), rep))(t)
        alternate_into(row, methods, args.repeats, res["command"], save)
        res["loadavg_end"] = os.getloadavg()
        save()
    if args.action == "bolt-partial":
        key = f"n{args.n}_p{args.p}"
        disk = json.loads(args.results.read_text())
        rdir = args.cache / "rg_runs" / f"bolt_{key}_r1"
        r = bolt_partial(rdir)
        r.update(started=_dt.datetime.fromtimestamp((rdir / "time_v.txt").stat().st_mtime - r["wall_s"])
                 .astimezone().isoformat(timespec="seconds"), loadavg_1min_start_end=[None, os.getloadavg()[0]],
                 command=command_line(__file__, argv))
        res = {"rows": {key: {**disk["rows"][key], "runs": {"bolt": [r]}, "failed": {}}}}
        save()
        log(f"recorded the stopped BOLT run of {key}: h2 {r['h2_a']:.4f}, {r['h2_b']:.4f}, r_g {r['rg']:.4f} "
            f"({r['partial_note']}); CPU so far {r['cpu_s']:.1f} s")
    return report_results(args.results, SECTION, build_report, args.docs if args.write_docs else None)


if __name__ == "__main__":
    sys.exit(main())
