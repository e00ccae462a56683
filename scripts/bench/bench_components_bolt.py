#!/usr/bin/env python
"""Benchmark: several variance components, bigmm next to BOLT-REML on the same components.

For each n in --n (p = --p variants), a cohort simulated once with ``bigmm.simulate`` into a Zarr
store and a PLINK fileset of the same genotypes (common.ensure_cohort, cached in --cache and shared
with bench_reml.py), and on it a phenotype whose h² = 0.5 is spread unevenly over --m components:
the variants split into MAF bins (--m 4: [0, 0.15), [0.15, 0.25), [0.25, 0.35), [0.35, 0.5]; --m 8:
eight bins from 0 to 0.5), the low-MAF bins carrying more (h²_j ∝ m, m − 1, ..., 1), every variant
of a bin causal with effects N(0, 1) on the sample-standardized genotypes, each bin's genetic value
scaled to its h²_j in the sample; covariates age (quantitative) and sex (categorical) as
bigmm.simulate gives them, and the same effects (0.5 per 10 years, 0.3). The split is written as

* bigmm's annotation file (``variant_id component`` per line: ``--components FILE``), read back
  with ``bigmm.read_components``;
* BOLT's ``--modelSnps`` files, one per component. BOLT-LMM v2.4 takes a component's name from a
  second column of the file: several ``--modelSnps`` files with one column each are merged into
  ONE component named "modelSnps" (checked on this machine), so each file here has two columns,
  ``variant_id component``.

Side by side, in turn (``common.alternate``), --repeats times, each tool as a fresh process:

``bolt``         ``bolt --bfile ... --phenoFile ... --phenoCol y --covarFile ... --qCovarCol age
                 --covarCol sex --modelSnps F1 ... --modelSnps Fm --reml --numThreads T`` under
                 ``/usr/bin/time -v``: wall, user + sys CPU, max RSS; per component h²_j and SE, and
                 the total (1 − h²_e, SE of h²_e) parsed from its log.
``bigmm_exact``  (n ≤ --exact-max-n) the library in a child process: ``bigmm.variant_stats`` (one pass),
                 ``bigmm.standardization(stats, "sample_sd")`` (BOLT's scaling: each SNP by its sample
                 SD), ``bigmm.component_grms`` (every K_j in one pass) and ``bigmm.fit_components``
                 (exact AI-REML; no LRT, no ML fit: BOLT computes neither), on a local Dask cluster
                 of --workers x --threads (bigmm.pipeline.cluster.dask_client).
``bigmm_mf``     the same child with ``bigmm.ComponentsOperator`` over the Zarr store (products in
                 float32, a run's default ``reml.dtype``, accumulated in float64) and
                 ``bigmm.fit_components_matrix_free`` (passes over X: 1 for the statistics + ``op.passes``).

For a bigmm run: wall of the child; CPU = user + sys of the reaped process tree (driver, nannies,
Dask workers: getrusage of the children); peak RSS = sampled peak of the RSS summed over the tree
(common.PeakRSS; the sum of the per-process high-water marks is kept as an upper bound). The load
average (1 min) is recorded at the start and end of every run (a shared machine).

``--scale``: bigmm matrix-free only, n = --scale-n (100,000), p = --scale-p (50,000), --scale-m (8)
components; goals: under 30 minutes and under 6 GiB.

Every run is saved to --results (default results/bench_components_bolt.json) as soon as it is done,
merged by (n, p, m, tool): a later invocation replaces only the tools it runs. ``report`` renders
the tables from that file; ``--write-docs`` writes the section of docs/benchmarks.md.

Usage::

    python scripts/bench/bench_components_bolt.py --n 2000 --p 5000 --tools bolt bigmm_exact     # smoke
    python scripts/bench/bench_components_bolt.py --n 10000 25000 --m 4                         # full
    python scripts/bench/bench_components_bolt.py --scale                                       # n = 100,000
    python scripts/bench/bench_components_bolt.py report --write-docs
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, alternate_into, bigmm_child, bolt_exe, bolt_log_facts, bolt_said,  # noqa: E402
                    comparison_parser, ensure_cohort, fmt, invocation, log, machine_line, md_table, med, merge_results,
                    parse_comparison_args, read_covariates, report_results, run_bolt, run_child, runs_line,
                    tool_runs)

SECTION = "Several components: bigmm and BOLT-REML (scripts/bench/bench_components_bolt.py)"
H2_COHORT = [0.5, 0.3]  # bench_reml.py's cohorts (their own traits are not used here)
H2_TOTAL = 0.5
COVAR_EFFECTS = (0.5, 0.3)  # age per 10 years, sex: as bigmm.simulate
MAF_EDGES = {4: [0.0, 0.15, 0.25, 0.35, 0.5], 8: [0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]}
TOOLS = {"bolt": "BOLT-REML", "bigmm_exact": "bigmm exact (K_j + AI-REML)", "bigmm_mf": "bigmm matrix-free"}
PHENO = "y"
EXACT_MAX_N_REPORT = 10000  # the report expects exact runs up to this n
NUM = r"([-+0-9.eE]+|nan|-?inf)"


def maf_edges(m: int) -> list[float]:
    if m in MAF_EDGES:
        return MAF_EDGES[m]
    return list(np.linspace(0.0, 0.5, m + 1))


def comp_names(m: int) -> list[str]:
    e = maf_edges(m)
    return [f"maf{a:g}-{b:g}" for a, b in zip(e[:-1], e[1:])]


def true_h2(m: int) -> np.ndarray:
    w = np.arange(m, 0, -1, dtype=float)
    return H2_TOTAL * w / w.sum()


# --------------------------------------------------------------------------- the cohort's phenotype

def prepare(args, n: int, p: int, m: int, plink: bool) -> dict:
    """The cohort (simulated or cached), and on it the m-component phenotype, bigmm's annotation
    file and BOLT's --modelSnps files (cached next to the cohort, keyed by m and --pheno-seed)."""
    c = ensure_cohort(args.cache, n, p=p, seed=args.seed, pops=1, fst=0.0, h2=H2_COHORT, chunks=args.chunks,
                      sim_block=args.sim_block, need_plink=plink)
    base = Path(c["paths"]["zarr"]).with_suffix("")
    d = Path(f"{base}.comp{m}_seed{args.pheno_seed}")
    meta_path = d / "meta.json"
    files = {"pheno": d / "pheno.tsv", "annotation": d / "components.txt",
             "model_snps": [d / f"modelSnps.{name}.txt" for name in comp_names(m)]}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("sim_created") == c["created"] and all(Path(f).exists() for f in
                                                           [files["pheno"], files["annotation"], *files["model_snps"]]):
            log(f"phenotype: reusing {d.name}")
            return {**c, "comp": meta, "files": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v])
                                                 for k, v in files.items()}}
    import bigmm

    log(f"phenotype: {m} MAF-bin components on {c['tag']} -> {d}")
    t0 = time.perf_counter()
    store = bigmm.open_store(c["paths"]["zarr"])
    G = store.genotypes
    vids = store.variant_table()["id"]
    edges, names, h2 = np.asarray(maf_edges(m)), comp_names(m), true_h2(m)
    rng = np.random.default_rng(args.pheno_seed)
    g = np.zeros((n, m))
    assign = np.full(p, -1, dtype=np.int64)
    step, sub = store.chunks[1], 256  # a chunk's columns read once, standardized 256 at a time (memory)
    blocks = [(c0, s0) for c0 in range(0, p, step) for s0 in range(c0, min(c0 + step, p), sub)]
    for c0, v0 in blocks:
        if v0 == c0:
            chunk = np.asarray(G[:, c0:c0 + step])
        B = chunk[:, v0 - c0:min(v0 - c0 + sub, chunk.shape[1])].astype(np.float64)
        called = B >= 0
        f = np.where(called, B, 0).sum(0) / (2.0 * np.maximum(called.sum(0), 1))
        maf = np.minimum(f, 1 - f)
        k = np.clip(np.searchsorted(edges, maf, side="right") - 1, 0, m - 1)
        assign[v0:v0 + B.shape[1]] = k
        X = B - np.where(called, B, 0).sum(0) / np.maximum(called.sum(0), 1)
        X[~called] = 0.0
        sd = X.std(0)
        X /= np.where(sd > 0, sd, 1.0)
        beta = rng.normal(size=B.shape[1])
        for j in range(m):
            sel = k == j
            g[:, j] += X[:, sel] @ beta[sel]
    g -= g.mean(0)
    g *= np.sqrt(h2) / g.std(0)
    e = rng.normal(size=n)
    e = (e - e.mean()) / e.std() * math.sqrt(1.0 - H2_TOTAL)
    fid, iid, age, sex = read_covariates(c["paths"]["covar"])
    y = 1.0 + COVAR_EFFECTS[0] * (age - 50) / 10 + COVAR_EFFECTS[1] * (sex == "M") + g.sum(1) + e
    if list(iid) != list(store.sample_iid):
        raise RuntimeError(f"{c['paths']['covar']}: samples not in the store's order")
    d.mkdir(parents=True, exist_ok=True)
    files["pheno"].write_text(f"FID\tIID\t{PHENO}\n"
                              + "".join(f"{a}\t{b}\t{float(v)!r}\n" for a, b, v in zip(fid, iid, y)))
    counts = np.bincount(assign, minlength=m)
    with open(files["annotation"], "w") as fh:
        fh.write("# variant component\n")
        fh.writelines(f"{v}\t{names[j]}\n" for v, j in zip(vids, assign))
    for j, path in enumerate(files["model_snps"]):
        # BOLT: a second column names the component (one column only: every file one component "modelSnps")
        path.write_text("".join(f"{v}\t{names[j]}\n" for v in vids[assign == j]))
    meta = {"m": m, "names": names, "maf_edges": edges.tolist(), "h2_true": h2.tolist(),
            "h2_sample": (g.var(0) / (g.sum(1) + e).var()).tolist(), "n_variants": counts.tolist(),
            "pheno_seed": args.pheno_seed,
            "sim_created": c["created"], "seconds": time.perf_counter() - t0}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    log(f"  {time.perf_counter() - t0:.1f} s; variants per component {counts.tolist()}")
    return {**c, "comp": meta, "files": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v])
                                         for k, v in files.items()}}


# --------------------------------------------------------------------------- BOLT

def parse_bolt(text: str, names) -> dict:
    out = {"components": {}}
    for name in names:
        mm = re.search(r'Variance component \d+:\s+"' + re.escape(name) + r'"\s*\n\s*h2g \(1,1\): ' + NUM
                       + r" \(" + NUM + r"\)", text)
        if not mm:
            raise RuntimeError(f"no h2g line for component {name!r} in BOLT's log")
        out["components"][name] = {"h2": float(mm.group(1)), "h2_se": float(mm.group(2))}
    mm = re.search(r"Variance component 0:\s+\(environment/noise\)\s*\n\s*h2e \(1,1\): " + NUM + r" \(" + NUM + r"\)",
                   text)
    if not mm:
        raise RuntimeError("no h2e line in BOLT's log")
    out["h2"], out["h2_se"] = 1.0 - float(mm.group(1)), float(mm.group(2))  # total h²: 1 − h²_e
    return {**out, **bolt_log_facts(text)}


def bolt_components(args, exe: str, c: dict, rdir: Path) -> dict:
    rdir.mkdir(parents=True, exist_ok=True)
    p, fl = c["paths"], c["files"]
    cmd = [exe, "--bfile", p["plink"], "--phenoFile", fl["pheno"], "--phenoCol", PHENO,
           "--covarFile", p["covar"], "--qCovarCol", "age", "--covarCol", "sex"]
    for f in fl["model_snps"]:
        cmd += ["--modelSnps", f]
    cmd += ["--reml", "--numThreads", str(args.bolt_threads)]
    r = run_bolt(cmd, rdir, f"BOLT-REML n={c['n']} m={c['comp']['m']}",
                 lambda text: parse_bolt(text, c["comp"]["names"]))
    log(f"  BOLT total h2 {r['h2']:.4f} ({r['h2_se']:.4f}); " + ", ".join(
        f"{k} {v['h2']:.4f} ({v['h2_se']:.4f})" for k, v in r["components"].items())
        + f"; CPU {r['cpu_s']:.1f} s, max RSS {r['peak_rss_mib']:.0f} MiB")
    return r


# --------------------------------------------------------------------------- bigmm (a child process)

def read_annotation(spec: dict, store):
    import bigmm

    return bigmm.read_components(spec["annotation"], store.variant_table()["id"])


def child(spec_path: str, out_path: str) -> int:
    """The bigmm side in its own process: statistics, components, the fit; stage times to JSON."""
    with bigmm_child(spec_path, out_path, inputs=read_annotation) as run:
        import bigmm

        spec, store, std, memory, times, out = run.spec, run.store, run.std, run.memory, run.times, run.out
        comps = run.extra.check(std.keep)
        y, Z = np.ascontiguousarray(run.Y[:, 0]), run.Z
        kw = dict(phenotype_names=[PHENO], covariate_names=["intercept", "age", "sex"])
        if spec["method"] == "bigmm_exact":
            t = time.perf_counter()
            grms = bigmm.component_grms(store.genotypes, std, comps, memory=memory)
            times["component_grms"] = time.perf_counter() - t
            t = time.perf_counter()
            res = bigmm.fit_components(list(grms.K), y, Z, component_names=grms.names, n_variants=grms.n_variants,
                                       lrt=False, ml=False, **kw)
            times["fit"] = time.perf_counter() - t
            out["passes_over_X"] = "1 + one K_j build"
        else:
            t = time.perf_counter()
            # the products in a run's precision (reml.dtype's default, float32; accumulated in float64)
            from bigmm.genotypes import RUN_DTYPE

            op = bigmm.ComponentsOperator(store.genotypes, std, comps.assignment, names=comps.names, memory=memory,
                                          dtype=np.dtype(RUN_DTYPE))
            if spec.get("probes"):
                kw["n_probes"] = spec["probes"]
            res = bigmm.fit_components_matrix_free(op, y, Z, seed=spec["seed"], **kw)
            times["fit"] = time.perf_counter() - t
            out["op_passes"] = int(op.passes)
            out["fit_passes"] = getattr(res[PHENO], "passes", None)
            out["passes_over_X"] = 1 + int(op.passes)
        fit = res[PHENO]
        out.update(bigmm_source=str(Path(bigmm.__file__).resolve().parent), h2=fit.h2, h2_se=fit.h2_se,
                   h2_se_mc=getattr(fit, "h2_se_mc", None), n=fit.n,
                   iterations=getattr(fit, "iterations", None), converged=getattr(fit, "converged", None),
                   reml_method=getattr(fit, "reml_method", None), stages_s=times,
                   components={ce.name: {"h2": ce.h2, "h2_se": ce.h2_se, "h2_se_mc": getattr(ce, "h2_se_mc", None),
                                         "n_variants": ce.n_variants, "boundary": ce.boundary}
                               for ce in fit.components})
    return 0


def run_bigmm(args, c: dict, method: str, rdir: Path, rep: int) -> dict:
    """The child of ``method`` on the cohort, measured from here: wall, CPU of the reaped process
    tree, peak RSS summed over it (sampled; sum of per-process peaks as an upper bound)."""
    spec = {"method": method, "zarr": c["paths"]["zarr"], "covar": c["paths"]["covar"], "pheno": c["files"]["pheno"],
            "annotation": c["files"]["annotation"], "standardize": args.standardize, "seed": rep,
            "probes": args.probes,
            "cluster": {"workers": args.workers, "threads_per_worker": args.threads, "memory_limit": args.memory_limit}}
    r = run_child(__file__, spec, rdir, f"{method} n={c['n']} m={c['comp']['m']}", args.timeout)
    log(f"  {method}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, total h2 "
        f"{r['h2']:.4f} ({r['h2_se']:.4f}); " + ", ".join(f"{k} {v['h2']:.4f} ({v['h2_se']:.4f})"
                                                          for k, v in r["components"].items()))
    return r


# --------------------------------------------------------------------------- workloads

def matrix_free_available() -> bool:
    import bigmm

    return all(hasattr(bigmm, a) for a in ("ComponentsOperator", "fit_components_matrix_free"))


def key(n: int, p: int, m: int) -> str:
    return f"n{n}_p{p}_m{m}"


def workload(args, res: dict, save, ns, p: int, m: int, tools: list[str], exe: str | None,
             scale: bool = False) -> None:
    for n in ns:
        log(f"=== n={n}, p={p}, m={m}: {', '.join(tools)}")
        c = prepare(args, n, p, m, plink="bolt" in tools)
        row = res.setdefault("rows", {}).setdefault(key(n, p, m), {"n": n, "p": p, "m": m, "runs": {}, "failed": {}})
        row["cohort"] = {k: c.get(k) for k in ("tag", "paths", "created", "zarr_bytes", "plink_bed_bytes")}
        row["comp"], row["files"], row["scale"] = c["comp"], c["files"], scale
        rdir = lambda t, rep: args.cache / "components_runs" / f"{t}_{key(n, p, m)}_r{rep + 1}"  # noqa: E731
        methods = {}
        for t in tools:
            if t == "bolt":
                if exe:
                    methods[t] = lambda rep: bolt_components(args, exe, c, rdir("bolt", rep))
            elif t == "bigmm_exact" and n > args.exact_max_n:
                log(f"  bigmm_exact skipped at n = {n} > --exact-max-n {args.exact_max_n}")
            elif t == "bigmm_mf" and not matrix_free_available():
                log("  bigmm_mf skipped: this bigmm has no ComponentsOperator / fit_components_matrix_free")
            else:
                methods[t] = (lambda t: lambda rep: run_bigmm(args, c, t, rdir(t, rep), rep))(t)
        alternate_into(row, methods, args.repeats, res["command"], save)
        save()


# --------------------------------------------------------------------------- report

def row_report(row: dict) -> list[str]:
    n, p, m, names = row["n"], row["p"], row["m"], row["comp"]["names"]
    runs = row["runs"]
    bolt = runs.get("bolt") or []
    lines = [f"**n = {n:,}, p = {p:,}, {m} components** (MAF bins; variants per component "
             + ", ".join(f"{a}: {b:,}" for a, b in zip(names, row["comp"]["n_variants"])) + "):", ""]
    head = ["tool"] + [f"ĥ²({nm}) ± SE" for nm in names] + [
        "total ĥ² ± SE", "max z vs BOLT", "max z vs exact", "wall s", "CPU s", "CPU / BOLT", "peak RSS MiB",
        "passes over X",
        "load avg start–end"]
    table = [["simulated (sample h²_j)"] + [f"{h:.4f}" for h in row["comp"]["h2_sample"]]
             + [f"{sum(row['comp']['h2_sample']):.4f}"] + [None] * 8]
    bolt_cpu = med(bolt, lambda r: r["cpu_s"])
    def estimates(rr):
        return {nm: (med(rr, lambda r: r["components"][nm]["h2"]), med(rr, lambda r: r["components"][nm]["h2_se"]))
                for nm in names} if rr else {}

    bh, eh = estimates(bolt), estimates(runs.get("bigmm_exact"))
    for t, label, rr in tool_runs(TOOLS, row, table, len(head), 200):
        cells, zs, ze = [], [], []
        for nm in names:
            h, se = med(rr, lambda r: r["components"][nm]["h2"]), med(rr, lambda r: r["components"][nm]["h2_se"])
            cell = f"{h:.4f} ± {se:.4f}"
            mc = med(rr, lambda r: r["components"][nm].get("h2_se_mc"))
            if mc is not None and not math.isnan(mc):
                cell += f" (MC {mc:.4f})"
            if t != "bolt" and nm in bh:
                z = abs(h - bh[nm][0]) / math.hypot(se, bh[nm][1])
                zs.append(z)
                cell += f" [{z:.2f}]"
            if t == "bigmm_mf" and nm in eh:
                ze.append(abs(h - eh[nm][0]) / se)
            cells.append(cell)
        h, se = med(rr, lambda r: r["h2"]), med(rr, lambda r: r["h2_se"])
        cpu = med(rr, lambda r: r["cpu_s"])
        passes = rr[0].get("passes_over_X")
        loads = f"{rr[0]['loadavg_1min_start_end'][0]:.2f}–{rr[-1]['loadavg_1min_start_end'][1]:.2f}"
        table.append([label] + cells + [f"{h:.4f} ± {se:.4f}", fmt(max(zs), ".2f") if zs else None,
                                        fmt(max(ze), ".3f") if ze else None,
                                        fmt(med(rr, lambda r: r["wall_s"]), ".1f"), fmt(cpu, ".1f"),
                                        fmt(cpu / bolt_cpu, ".3f") if bolt_cpu and t != "bolt" else None,
                                        fmt(med(rr, lambda r: r["peak_rss_mib"]), ",.0f"),
                                        None if passes is None else str(passes), loads])
    lines += [md_table(head, table), ""]
    mf = runs.get("bigmm_mf")
    if bolt and mf:
        ratio = med(mf, lambda r: r["cpu_s"]) / bolt_cpu
        lines.append(f"- Goal CPU(bigmm matrix-free) ≤ 0.2 × CPU(BOLT-REML): {ratio:.3f} — "
                     f"{'met' if ratio <= 0.2 else 'NOT met'}.")
        z = max(abs(med(mf, lambda r: r["components"][nm]["h2"]) - bh[nm][0])
                / math.hypot(med(mf, lambda r: r["components"][nm]["h2_se"]), bh[nm][1]) for nm in names)
        lines.append(f"- Goal ĥ²_j of both within their SEs (every z ≤ 1): largest z {z:.2f} — "
                     f"{'met' if z <= 1 else 'NOT met'}.")
    lines += bolt_said(bolt)
    src = {r.get("bigmm_source") for rr in runs.values() for r in rr} - {None, str(REPO / "bigmm")}
    if src:
        lines.append("- bigmm imported from " + ", ".join(sorted(src)) + " (not this checkout's bigmm/).")
    expected = ["bigmm_mf"] if row.get("scale") else [t for t in TOOLS if t != "bigmm_exact" or n <= EXACT_MAX_N_REPORT]
    pending = [TOOLS[t] for t in expected if not runs.get(t) and t not in row.get("failed", {})]
    if pending:
        lines.append("- **Pending** (not yet run on this cohort): " + ", ".join(pending) + ".")
    lines.append(runs_line(runs, TOOLS))
    return lines + [""]


def scale_lines(row: dict) -> list[str]:
    rr = row["runs"].get("bigmm_mf")
    if not rr:
        return []
    wall, rss = med(rr, lambda r: r["wall_s"]), med(rr, lambda r: r["peak_rss_mib"]) / 1024
    return [f"- Goal at n = {row['n']:,}, p = {row['p']:,}, {row['m']} components: under 30 minutes — "
            f"{'met' if wall < 1800 else 'NOT met'} ({wall / 60:.1f} min); under 6 GiB — "
            f"{'met' if rss < 6 else 'NOT met'} (sampled peak {rss:.2f} GiB, sum of per-process peaks "
            f"{max(r['sum_of_process_peaks_mib'] for r in rr) / 1024:.2f} GiB).", ""]


def build_report(res: dict) -> str:
    a = res["args"]
    lines = [machine_line(res["machine"]) + ".", "",
             f"Latest invocation {res['date']}; each run's start is listed under its table. "
             f"Setup: cohorts from `bigmm.simulate` (unrelated, MAF U(0.05, 0.5), no missing calls; seed {a['seed']}), "
             f"one phenotype `{PHENO}` with total h² = {H2_TOTAL} split over MAF-bin components, "
             "h²_j ∝ m, m − 1, ..., 1 "
             "(low MAF carries more), covariates age (quantitative) and sex (categorical) + intercept for both tools. "
             f"BOLT-LMM {res.get('bolt_version', '?')} `--reml --numThreads {a['bolt_threads']}` with one "
             "`--modelSnps` file per component (two columns: variant ID, component name; BOLT names a component by "
             "that second column: one-column files given as several `--modelSnps` are merged into a single "
             "component), under `/usr/bin/time -v`. "
             f"bigmm through the library in a child process, standardization `{a['standardize']}` (BOLT's), on a "
             f"local Dask cluster of {a['workers']} workers × {a['threads']} thread ({a['memory_limit']} each): "
             "exact = "
             "`component_grms` + `fit_components` (AI-REML, no LRT/ML fits); matrix-free = `ComponentsOperator` + "
             "`fit_components_matrix_free`. CPU = user + sys of the whole process tree; peak RSS of bigmm = sampled "
             "peak of the sum over driver and workers, of BOLT its max RSS; [z] after a bigmm estimate = "
             "|ĥ²_j(bigmm) − ĥ²_j(BOLT)| / sqrt(SE_bigmm² + SE_BOLT²), max z vs BOLT the largest over the "
             "components; max z vs exact = max_j |ĥ²_j(matrix-free) − ĥ²_j(exact)| / SE_j; "
             "simulated h²_j = var(g_j) / var(g + e) in the sample; load average = 1-minute load at the start of "
             "the first and the end of the last run (2 cores shared with other jobs: CPU time is less disturbed "
             "than wall time).", ""]
    rows = sorted(res.get("rows", {}).values(), key=lambda r: (r["m"], r["n"]))
    for row in rows:
        lines += row_report(row)
        if row.get("scale"):
            lines += scale_lines(row)
    if not any(r.get("scale") and r["n"] >= 100000 and r["runs"].get("bigmm_mf") for r in rows):
        lines += ["- **Pending**: the scale run (`--scale`: bigmm matrix-free alone at n = 100,000, p = 50,000, "
                  "8 components; goals under 30 minutes and under 6 GiB).", ""]
    cmds = list(dict.fromkeys(r["command"] for row in res.get("rows", {}).values()
                              for rr in row["runs"].values() for r in rr))
    return "\n".join(lines + ["The commands that made these rows:", "", "```"] + cmds + ["```", "",
                               "The whole comparison in one invocation (every tool, alternating), and the scale run:",
                               "", "```", "python scripts/bench/bench_components_bolt.py --n 10000 25000 --m 4",
                               "python scripts/bench/bench_components_bolt.py --scale", "```"])


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_child"]:
        return child(*argv[1:3])
    ap = comparison_parser(__doc__, ("run", "report"))
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 25000], help="cohort sizes (default 10000 25000)")
    ap.add_argument("--p", type=int, default=20000, help="variants (default 20000, as bench_reml.py)")
    ap.add_argument("--m", type=int, default=4, help="components (MAF bins; default 4)")
    ap.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS),
                    help="which runs (default all; bigmm_exact only for n <= --exact-max-n)")
    ap.add_argument("--exact-max-n", type=int, default=10000)
    ap.add_argument("--scale", action="store_true",
                    help="instead: bigmm matrix-free only at --scale-n, --scale-p, --scale-m")
    ap.add_argument("--scale-n", type=int, default=100000)
    ap.add_argument("--scale-p", type=int, default=50000)
    ap.add_argument("--scale-m", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each tool, alternating (median; default 1)")
    ap.add_argument("--seed", type=int, default=1, help="the cohort's bigmm.simulate seed (default 1)")
    ap.add_argument("--pheno-seed", type=int, default=23, help="the components phenotype's seed (default 23)")
    ap.add_argument("--standardize", default="sample_sd", choices=("sample_sd", "gcta"),
                    help="bigmm's standardization (default sample_sd: BOLT's)")
    ap.add_argument("--probes", type=int, default=None, help="matrix-free probes (default: the library's)")
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="Zarr chunks SAMPLES,VARIANTS of a new cohort (default 8192,2048, as bench_reml.py)")
    ap.add_argument("--sim-block", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    args = parse_comparison_args(ap, argv, "bench_components_bolt.json")
    res: dict = {}  # this invocation's rows only (save merges them into the file)
    save = lambda: merge_results(args.results, res)  # noqa: E731

    if args.action == "run":
        res.update(invocation(__file__, argv, args))
        if args.scale:
            workload(args, res, save, [args.scale_n], args.scale_p, args.scale_m, ["bigmm_mf"], None, scale=True)
        else:
            exe = bolt_exe(args.bolt, res) if "bolt" in args.tools else None
            workload(args, res, save, args.n, args.p, args.m, args.tools, exe)
        res["loadavg_end"] = os.getloadavg()
        save()
    return report_results(args.results, SECTION, build_report, args.docs if args.write_docs else None)


if __name__ == "__main__":
    sys.exit(main())
