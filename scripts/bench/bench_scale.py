#!/usr/bin/env python
"""Scale benchmark (issue 4): randomized spectrum and end-to-end REML at n = 25,000 ... 100,000.

Data. For each ``--n`` a cohort of ``--p`` variants is simulated with ``bigmm.simulate`` straight
into a Zarr cohort store (``--chunks`` samples x variants), with phenotypes and covariates written
by ``bigmm.write_tables``; the cohort of ``--compare-n`` samples is also written as a PLINK fileset
(same genotypes, same call) for plink2. Everything is cached under ``--cache`` (default
``cache/bench/``, shared with bench.py, git-ignored; common.ensure_cohort) and reused when present;
the simulation time is recorded when a cohort is made and reported from that record afterwards.

End to end. For each n, ``python -m bigmm.pipeline.cli run cfg.yaml`` in a fresh output directory,
with ``genotypes: {zarr: ...}`` (no ingest), ``spectrum: {method: randomized, rank: --rank}`` and a
local cluster (``--workers`` x ``--threads``, ``--memory-limit``). Reported: every stage's wall time
(``run.json``), passes over X, each spectrum pass (from ``run.log``), the subprocess's wall time,
and peak RSS summed over the driver and every descendant process (Dask nanny and worker
processes) sampled with psutil every 0.2 s; the sum of the per-process kernel high-water marks
(VmHWM, also sampled) is reported as an upper bound (common.run_e2e).

Side by side, at n = ``--compare-n``, on the same store and standardization (``variant_stats`` +
``standardization("gcta")`` with the run's filters), on one LocalCluster made by
``bigmm.pipeline.cluster.dask_client`` with the same cluster settings, each ``--repeats`` times
(median), run in turn:

``bigmm``           ``bigmm.randomized_spectrum(bigmm.GrmOperator(...))``, k = --rank, oversample,
                    power_iters, --dtype, task memory as the pipeline gives it.
``svd_compressed``  ``dask.array.linalg.svd_compressed`` on ``bigmm.standardized(store.to_dask(),
                    std, dtype)`` with the same k, ``n_oversamples`` and ``n_power_iter``,
                    ``compute=True`` (recompute X at each pass instead of holding it); eigenvalues
                    of K are s²/p.
``plink2``          ``plink2 --bfile ... --pca approx K --threads 2``; plink2 refuses more than 100
                    PCs in approx mode, and its cost grows as K², so K = --plink2-pcs (default 20),
                    with a bigmm run at the same k (``bigmm_k_plink2``) for an equal-k time ratio.

Accuracy is measured against a reference: bigmm's randomized spectrum in float64 with many more
power iterations and a larger oversampling (``--ref-power-iters``, ``--ref-oversample``), computed
once and cached; its Ritz residuals ``‖K u − θ u‖ / θ`` bound its own relative error. With
``--compare-n`` up to ``--exact-max-n`` the exact eigenvalues (GRM + eigh) are computed as well and
the reference is checked against them.

Profile (unless --no-profile): one pass task (``bigmm.passes._apply_task`` under cProfile, one
BLAS thread), one pass on the cluster (``GrmOperator.apply``, its task stream) and the driver's
steps between passes (CholeskyQR2, the pass checkpoint).

Usage::

    python scripts/bench/bench_scale.py --n 2000 5000 --p 5000 --repeats 1        # smoke (minutes)
    python scripts/bench/bench_scale.py --write-docs                              # n = 25k, 50k, 100k; p = 50k
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MIB, REPO, Columns, add_docs_args, add_plink2_args, bigmm_spectrum, cluster_config,  # noqa: E402
                    cluster_section, command_line, ensure_cohort, fmt_time, log, machine_info,
                    machine_line, md_table, measure_spectra, peer_exe, peer_version, plink2_pca,
                    profile_call, publish, reference, rel_errors, rules_config, run_e2e, svd_compressed, task_memory,
                    task_stream_summary, timed, variant_filter)

SECTION = "Scale: randomized spectrum and end-to-end REML (scripts/bench/bench_scale.py)"
#: stage columns of the end-to-end table; any other stage the pipeline runs is summed under "other"
MAIN_STAGES = ("variant_stats", "spectrum", "rotate", "reml", "report")
#: settings that must match for --reuse-e2e / --reuse-compare to take earlier results
SAME_DATA = ("p", "seed", "pops", "fst", "chunks", "rank", "oversample", "power_iters", "dtype", "workers",
             "threads", "memory_limit", "min_maf", "max_missing")
SAME_E2E = SAME_DATA + ("h2", "sim_block")
SAME_COMPARE = SAME_DATA + ("compare_n", "repeats", "ref_oversample", "ref_power_iters", "plink2_pcs",
                            "plink2_threads", "no_svd", "no_plink2")


def cohort(args, n: int, need_plink: bool) -> dict:
    return ensure_cohort(args.cache, n, p=args.p, seed=args.seed, pops=args.pops, fst=args.fst, h2=args.h2,
                         chunks=args.chunks, sim_block=args.sim_block, need_plink=need_plink)


# --------------------------------------------------------------------------- side by side

def compare(args, c: dict) -> dict:
    """The side-by-side comparison at one n (in this process, on one LocalCluster)."""
    import bigmm
    from distributed import get_task_stream

    from bigmm.pipeline.cluster import dask_client

    store = bigmm.open_store(c["paths"]["zarr"])
    memory = task_memory(args)
    dtype = np.dtype(args.dtype)
    out: dict = {"n": c["n"], "memory_per_task": memory, "failed": {}}
    exe = None if args.no_plink2 else peer_exe(args.plink2)
    if exe:
        out["plink2_version"] = peer_version(exe)
    with dask_client(cluster_config(args)) as client:
        r = timed(lambda: variant_filter(store, args.min_maf, args.max_missing), "variant_stats + standardization")
        std = r["result"]
        out.update(p_kept=std.n_kept, stats_s=r["seconds"])
        filters = f"maf{args.min_maf:g}_miss{args.max_missing:g}"
        ref = reference(args.cache, c, store, std, k=args.rank, exact=False, oversample=args.ref_oversample,
                        power_iters=args.ref_power_iters, memory=memory, filters=filters)
        out["reference"] = {k: v for k, v in ref.items() if k not in ("s", "resid")}
        out["reference"].update(top_eigenvalues=ref["s"][:10].tolist(), ritz_resid_top1=float(ref["resid"][0]),
                                ritz_resid_max_top10=float(ref["resid"][:10].max()))
        if c["n"] <= args.exact_max_n:
            ex = reference(args.cache, c, store, std, k=args.rank, exact=True, oversample=0, power_iters=0,
                           memory=memory, filters=filters)
            out["exact"] = {"seconds": ex["seconds"], "ref_vs_exact": rel_errors(ref["s"], ex["s"])}
            log(f"  reference vs exact: {out['exact']['ref_vs_exact']}")

        def streamed(fn):  # the record gets the task stream of the run
            def run(rep):
                with get_task_stream(client) as ts:
                    r = fn(rep)
                r["task_stream"] = task_stream_summary(ts.data)
                return r
            return run

        def bigmm_k(k):
            return streamed(lambda rep: bigmm_spectrum(store, std, k, oversample=args.oversample,
                                                       power_iters=args.power_iters, seed=rep, memory=memory,
                                                       dtype=dtype))
        methods = {"bigmm": bigmm_k(args.rank)}
        if not args.no_svd:
            methods["svd_compressed"] = streamed(lambda rep: svd_compressed(
                store, std, args.rank, oversample=args.oversample, power_iters=args.power_iters, seed=rep,
                dtype=dtype))
        if exe:
            methods["bigmm_k_plink2"] = bigmm_k(args.plink2_pcs)
            methods["plink2"] = lambda rep: plink2_pca(exe, c["paths"]["plink"],
                                                       args.cache / f"plink2_pca_{c['tag']}_k{args.plink2_pcs}",
                                                       args.plink2_pcs, args.plink2_threads, args.plink2_memory)
        out["methods"] = measure_spectra(args.repeats, methods, ref["s"], out["failed"])
    return out


# --------------------------------------------------------------------------- profile

def profile_task(store, std, ncols: int, memory, n_chunks: int = 2) -> dict:
    """One pass task (bigmm.passes._apply_task) over ``n_chunks`` variant chunks after a warm-up one,
    under cProfile with one BLAS thread (common.profile_call): read+decode, standardization, the
    two GEMMs and the accumulation (the task's own lines)."""
    import bigmm
    from bigmm.passes import _apply_task

    op = bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=memory)
    cw, (n, p) = op.chunk_width, store.genotypes.shape
    n_chunks = max(1, min(n_chunks, -(-p // cw) - 1))
    G = Columns(store.genotypes, min(p, (n_chunks + 1) * cw))
    M = np.random.default_rng(0).standard_normal((n, ncols)).astype(np.float32)
    sub = op.plan(ncols).sub_width
    args = (None, std.center, std.scale)
    _apply_task(G, *args, [(0, cw)], sub, M, np.float32, std.n_kept, False)  # warm-up
    t = profile_call(_apply_task, G, *args, [(c * cw, min(p, (c + 1) * cw)) for c in range(1, n_chunks + 1)], sub, M,
                     np.float32, std.n_kept, False)
    chunk_s = t["total_s"] / n_chunks
    return {"n": n, "ncols": ncols, "chunk_cols": cw, "sub_width": sub, **t, "chunk_s": chunk_s,
            "ns_per_genotype_read": t["read_s"] / (n * cw * n_chunks) * 1e9,
            "ns_per_genotype_standardize": t["standardize_s"] / (n * cw * n_chunks) * 1e9,
            "gflops_gemm": 4.0 * n * cw * ncols * n_chunks / t["blas_s"] / 1e9,
            "serial_pass_s": chunk_s * -(-p // cw)}


def profile_pass_cluster(client, store, std, ncols: int, memory) -> dict:
    """One pass on the cluster (GrmOperator.apply) and its task stream."""
    from distributed import get_task_stream

    import bigmm

    op = bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=memory)
    M = np.random.default_rng(1).standard_normal((op.n, ncols))
    with get_task_stream(client) as ts:
        t0 = time.time()
        op.apply(M)
        wall = time.time() - t0
    out = {"n": op.n, "ncols": ncols, "wall_s": wall, "groups": [len(g) for g in op.plan(ncols).groups],
           **task_stream_summary(ts.data, t_submit=t0)}
    log(f"  pass n={op.n}: {wall:.1f} s wall, tasks computing {out.get('busy_s', 0):.1f} s")
    return out


def profile_driver(n: int, l: int) -> dict:
    """Driver steps between passes: CholeskyQR2 of the n x l block (all BLAS threads) and the checkpoint."""
    import tempfile

    from bigmm.pipeline.outputs import PassCheckpoint
    from bigmm.spectrum import cholesky_qr2

    Y = np.random.default_rng(2).standard_normal((n, l))
    t0 = time.perf_counter()
    Q = cholesky_qr2(Y)
    t_qr = time.perf_counter() - t0
    (REPO / "cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "cache") as d:
        t0 = time.perf_counter()
        PassCheckpoint(Path(d) / "spectrum.partial", "profile").save({"pass": 1, "Q": Q, "diag": np.ones(n),
                                                                      "K1": np.ones(n)})
        t_ck = time.perf_counter() - t0
    return {"n": n, "l": l, "cholesky_qr2_s": t_qr, "checkpoint_save_s": t_ck}


def profile(args, cohorts: list[dict]) -> dict:
    import bigmm
    from bigmm.pipeline.cluster import dask_client
    from bigmm.pipeline.outputs import load_variants
    from bigmm.spectrum import pass_columns, subspace_width

    memory = task_memory(args)
    prof: dict = {"task": [], "cluster": [], "driver": []}
    stores = {}
    for c in cohorts:
        store = bigmm.open_store(c["paths"]["zarr"])
        v = args.cache / "runs" / f"n{c['n']}_r1" / "out" / "variants.zarr"  # the first end-to-end run's
        std = load_variants(v) if v.exists() else variant_filter(store)
        # a Krylov pass without probes: the block of l = rank + oversample vectors and the ones vector
        l = subspace_width(args.rank, args.oversample, c["n"])
        stores[c["n"]] = (store, std, pass_columns(l, 0))
        for ncols in (pass_columns(l, 0), pass_columns(subspace_width(args.plink2_pcs, args.oversample, c["n"]), 0)):
            r = profile_task(store, std, ncols, memory)
            log(f"  task profile n={c['n']} l={ncols}: chunk {r['chunk_s']:.2f} s, GEMM {r['gflops_gemm']:.0f} GFLOP/s")
            prof["task"].append(r)
        prof["driver"].append(profile_driver(c["n"], l))
    with dask_client(cluster_config(args)) as client:
        prof["cluster"] = [profile_pass_cluster(client, store, std, ncols, memory)
                           for store, std, ncols in stores.values()]
    return prof


def memory_plans(args) -> list[dict]:
    """The plan of the widest pass of the spectrum stage (bigmm.pipeline.memory.spectrum_pass_plan,
    as the pipeline checks it) at the run's task memory, for this store's variant chunk and the
    default one."""
    from bigmm.pipeline.memory import spectrum_pass_plan
    from bigmm.store import DEFAULT_CHUNKS

    cfg = rules_config(cluster_config(args), spectrum={"method": "randomized", "rank": args.rank,
                                                       "oversample": args.oversample, "dtype": args.dtype})
    out = []
    for n in args.n:
        for cw in sorted({args.chunks[1], DEFAULT_CHUNKS[1]}):
            pl = spectrum_pass_plan(cfg, n, cw, task_memory(args))
            out.append({"n": n, "chunk_width": cw, "vectors": pl.n_cols, "sub_width": pl.sub_width,
                        "task_mib": pl.task_bytes / MIB})
    return out


# --------------------------------------------------------------------------- report

def stage_s(r: dict, name: str) -> float:
    return r["stages"].get(name, {}).get("seconds", 0.0)


def after_spectrum_s(r: dict) -> float:
    return sum(v["seconds"] for k, v in r["stages"].items() if k not in ("ingest", "variant_stats", "grm", "spectrum"))


def e2e_tables(e2e: dict, a: dict) -> list[str]:
    others = sorted({name for runs in e2e.values() for r in runs for name in r["stages"]} - set(MAIN_STAGES))
    rows, pass_rows = [], []
    for n_s, runs in sorted(e2e.items(), key=lambda kv: int(kv[0])):
        med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
        walls = sorted(r["wall_s"] for r in runs)
        peak = max(runs, key=lambda r: r["peak_rss_sum_mib"])
        pass_s = med(lambda r: statistics.mean(p["seconds"] for p in r["passes"])) if runs[0]["passes"] else None
        rows.append([f"{int(n_s):,}", len(runs), f"{med(lambda r: r['wall_s']):.1f}" + (
                     f" ({walls[0]:.0f}–{walls[-1]:.0f})" if len(runs) > 1 else ""),
                     f"{med(lambda r: stage_s(r, 'variant_stats')):.1f}",
                     f"{med(lambda r: stage_s(r, 'spectrum')):.1f} "
                     f"({runs[0]['stages'].get('spectrum', {}).get('passes_over_X', 0)})",
                     None if pass_s is None else f"{pass_s:.1f}"]
                    + [f"{med(lambda r: stage_s(r, s)):.1f}" for s in ("rotate", "reml")]
                    + ([f"{med(lambda r: sum(stage_s(r, o) for o in others)):.1f}"] if others else [])
                    + [f"{med(lambda r: stage_s(r, 'report')):.1f}", f"{med(lambda r: r['outside_stages_s']):.1f}",
                       runs[0]["passes_over_X"], f"{peak['peak_rss_sum_mib'] / 1024:.2f} ({peak['peak_stage']})",
                       f"{peak['sum_of_process_peaks_mib'] / 1024:.2f}",
                       f"{med(lambda r: r['wall_s']) / int(n_s) * 1e6:,.0f}",
                       ", ".join(f"{r['other_cpu_s']:.0f}" for r in runs if "other_cpu_s" in r) or None,
                       ", ".join(f"{f['h2']:.3f} ± {f['h2_se']:.3f}" for f in runs[0]["fits"])])
        for r in runs:
            if r["passes"]:
                ps, after = [p["seconds"] for p in r["passes"]], [p["after_s"] for p in r["passes"] if "after_s" in p]
                load = r.get("loadavg_1min_start_end")
                pass_rows.append([f"{int(n_s):,}", r["repeat"], r.get("started", "")[:16].replace("T", " "),
                                  f"{load[0]:.1f}→{load[1]:.1f}" if load else None,
                                  f"{stage_s(r, 'spectrum'):.1f}", ", ".join(f"{x:.1f}" for x in ps),
                                  f"{stage_s(r, 'spectrum') - sum(ps):.1f}", f"{statistics.mean(after) if after else 0:.2f}",
                                  r["passes"][0]["tasks"], f"{r['peak_at_s']:.0f}",
                                  f"{r['peak_driver_mib']:,.0f} + {r['peak_others_mib']:,.0f}"])
    ns = sorted(int(k) for k in e2e)

    def per_n(n, f):
        return statistics.median(f(r) for r in e2e[str(n)]) / n * 1e6

    comps = [("total wall", lambda r: r["wall_s"]), ("variant_stats", lambda r: stage_s(r, "variant_stats")),
             ("spectrum", lambda r: stage_s(r, "spectrum")), ("stages after the spectrum", after_spectrum_s),
             ("outside stages", lambda r: r["outside_stages_s"])]
    cost = [[label] + [f"{per_n(n, f):,.0f} (×{per_n(n, f) / per_n(ns[0], f):.2f})" if per_n(ns[0], f) > 0 else
                       f"{per_n(n, f):,.1f}" for n in ns] for label, f in comps]
    return ["**End to end**: `python -m bigmm.pipeline.cli run cfg.yaml` (store given: no ingest stage), fresh "
            "output directory; stage times from run.json; peak RSS summed over driver + scheduler + nannies + workers "
            "(psutil, 0.2 s), the sum of per-process peaks (VmHWM) as an upper bound.", "",
            md_table(["n", "runs", "total wall s", "variant_stats s", "spectrum s (passes)", "s / pass", "rotate s",
                      "reml s"] + ([f"{' + '.join(others)} s"] if others else [])
                     + ["report s", "outside stages s", "passes over X", "peak RSS sum GiB (stage)",
                        "≤ sum of process peaks GiB", "total µs / sample", "other jobs' CPU s",
                        "h² ± SE (true " + ", ".join(str(h) for h in a["h2"]) + ")"],
                     rows, "r" * (15 + bool(others)) + "l"),
            "", "Each run's spectrum stage (passes over X from run.log; outside them: orthonormalisation, the "
            "checkpoint after each pass, Rayleigh–Ritz, saving the spectrum and pcs.tsv):", "",
            md_table(["n", "run", "started", "load", "spectrum s", "passes s", "outside passes s", "checkpoint s",
                      "tasks / pass", "RSS peak at s", "peak driver + others MiB"], pass_rows, "rrll"),
            "", "Cost per sample (µs / sample = seconds / n × 10⁶; constant = linear in n), and its ratio to "
            f"n = {ns[0]:,}:", "", md_table(["component"] + [f"n = {n:,}" for n in ns], cost), ""]


def compare_tables(cmp_: dict, a: dict) -> list[str]:
    ref, meth = cmp_["reference"], cmp_["methods"]
    setups = {"bigmm": f"bigmm.randomized_spectrum, oversample {a['oversample']}, power_iters {a['power_iters']}, "
                       f"{a['dtype']}",
              "svd_compressed": f"dask svd_compressed(n_oversamples={a['oversample']}, n_power_iter={a['power_iters']}, "
                                f"compute=True) on bigmm.standardized (lazy, {a['dtype']}); λ = s²/p",
              "bigmm_k_plink2": "bigmm.randomized_spectrum at plink2's k",
              "plink2": f"plink2 --pca approx {a['plink2_pcs']} --threads {a['plink2_threads']} (whole job)"}
    rows = []
    for m, s in meth.items():
        e = s["errors_median"]
        k = e["k"]
        rows.append([m, setups[m], k, s["passes"], fmt_time(s), f"{s['cpu_s_median']:.0f}",
                     f"{s['peak_rss_mib_median']:,.0f}", f"{e['top1']:.1e}", f"{e['max_top10']:.1e}" if "max_top10" in e
                     else None, f"{e.get(f'max_top{k}', e[f'at_{k}']):.1e}",
                     f"{e[f'mean_top{k}']:.1e}" if f"mean_top{k}" in e else None])
    rows.append(["reference", f"bigmm float64, oversample {ref['oversample']}, power_iters {ref['power_iters']} (cached)",
                 a["rank"], ref.get("passes"), f"{ref['seconds']:.1f} s", "", f"{ref['peak_rss_mib']:,.0f}",
                 f"Ritz resid. {ref['ritz_resid_top1']:.1e}", f"{ref['ritz_resid_max_top10']:.1e}",
                 f"{ref['max_ritz_residual']:.1e}", ""])
    b = meth["bigmm"]
    notes = [f"- Time ratio bigmm (k = {a['rank']}) / {m} (k = {s['errors_median']['k']}) = "
             f"**{b['median_s'] / s['median_s']:.2f}** (< 1: bigmm faster); paired per repeat "
             f"{statistics.median(x / y for x, y in zip(b['times_s'], s['times_s'])):.2f}."
             for m, s in meth.items() if m != "bigmm"]
    if ex := cmp_.get("exact"):
        e, kk = ex["ref_vs_exact"], ex["ref_vs_exact"]["k"]
        notes.append(f"- Reference vs exact eigenvalues (GRM + eigh): top-1 {e['top1']:.1e}, max over the top {kk} "
                     f"{e.get(f'max_top{kk}', e[f'at_{kk}']):.1e}.")
    notes += [f"- {m} failed: {msg}" for m, msg in cmp_.get("failed", {}).items()]
    return [f"**Side by side at n = {cmp_['n']:,}** (p = {cmp_['p_kept']:,} kept; same store, standardization and "
            f"LocalCluster; {a['repeats']} repeats, median, min–max; eigenvalue errors relative to the reference, "
            "median over repeats, max or mean over the top m):", "",
            md_table(["method", "setup", "k", "passes over X", "time", "CPU s", "peak RSS MiB (sum)", "top-1 err",
                      "max top-10 err", "max top-k err", "mean top-k err"], rows, "ll"), ""] + notes + [""]


def build_report(res: dict) -> str:
    a = res["args"]
    m = res["machine"]
    lines = [f"Run {res['date']} · p = {a['p']:,} variants · n = " + ", ".join(f"{n:,}" for n in a["n"])
             + f" · Zarr chunks {a['chunks'][0]} samples × {a['chunks'][1]} variants · spectrum k = {a['rank']}, "
               f"oversample {a['oversample']}, power_iters {a['power_iters']} (block Krylov: {a['power_iters'] + 1} "
               f"passes), {a['dtype']} · cluster {a['workers']} workers × {a['threads']} thread, memory_limit "
               f"{a['memory_limit']} each", "",
             machine_line(m) + f"; {res.get('compare', {}).get('plink2_version', 'plink2 not run')}. Load average at "
             f"start / end: {m['loadavg_start'][0]:.2f} / {res['loadavg_end'][0]:.2f} (shared machine).", "",
             "**Data** (bigmm.simulate → Zarr, cached; "
             + (f"{a['pops']} populations, Fst {a['fst']:g} (Balding–Nichols), " if a["pops"] > 1 else "")
             + f"MAF U(0.05, 0.5), no missing calls, two traits h² = {', '.join(str(h) for h in a['h2'])}; "
             f"simulated in variant blocks of {a['sim_block']}):", "",
             md_table(["n", "store on disk", "simulate s (when made)", "simulate peak RSS MiB", "PLINK .bed"],
                      [[f"{c['n']:,}", f"{c['zarr_bytes'] / MIB:,.0f} MiB",
                        f"{c['simulate_s']:.0f}" + (" (incl. PLINK)" if c.get("plink") else ""),
                        f"{c['simulate_peak_rss_mib']:,.0f}",
                        f"{c['plink_bed_bytes'] / MIB:,.0f} MiB" if c.get("plink_bed_bytes") else None]
                       for c in res["cohorts"]], "r"), ""]
    if res.get("e2e"):
        lines += e2e_tables(res["e2e"], a)
    if res.get("compare"):
        lines += compare_tables(res["compare"], a)
    if res.get("memory_plans"):
        lines += [f"**Task memory plan** of the widest pass (bigmm.passes.plan_pass at the pipeline's task memory for "
                  f"memory_limit {a['memory_limit']}, {a['threads']} thread(s) per worker; {a['dtype']}):", "",
                  md_table(["n", "variant chunk", "vectors", "standardized sub-block cols", "task MiB"],
                           [[f"{p['n']:,}", p["chunk_width"], p["vectors"], p["sub_width"], f"{p['task_mib']:,.0f}"]
                            for p in res["memory_plans"]], "r"), ""]
    if prof := res.get("profile"):
        cluster = {(r["n"], r["ncols"]): r for r in prof["cluster"]}
        driver = {r["n"]: r for r in prof["driver"]}
        rows = [[f"{r['n']:,}", r["ncols"], f"{r['chunk_s']:.2f}", f"{r['blas_s'] / r['total_s']:.0%}",
                 f"{r['gflops_gemm']:.0f}", f"{r['read_s'] / r['total_s']:.0%}", f"{r['ns_per_genotype_read']:.2f}",
                 f"{r['standardize_s'] / r['total_s']:.0%}", f"{r['ns_per_genotype_standardize']:.2f}",
                 f"{r['serial_pass_s']:.1f}", f"{cluster[key]['wall_s']:.1f}" if (key := (r["n"], r["ncols"])) in cluster
                 else None, f"{driver[r['n']]['cholesky_qr2_s']:.2f} + {driver[r['n']]['checkpoint_save_s']:.2f}"]
                for r in prof["task"]]
        lines += ["**Profile of a pass**: one task (bigmm.passes._apply_task under cProfile, 1 BLAS thread, per "
                  "variant chunk), one pass on the cluster (GrmOperator.apply), the driver between passes:", "",
                  md_table(["n", "vectors", "task s / chunk", "GEMMs", "GFLOP/s", "read+decode", "ns / genotype",
                            "standardize", "ns / genotype", "one core s / pass", "cluster pass s",
                            "CholeskyQR2 + checkpoint s"], rows, "r"), ""]
    lines += res.get("summary", []) + ["", "Regenerate:", "", "```", res["command"], "```"]
    return "\n".join(lines)


def goals(res: dict) -> list[str]:
    """Plain sentences: where time goes and whether the goals of issue 4 are met."""
    e2e = res.get("e2e", {})
    if not e2e:
        return []
    ns = sorted(int(k) for k in e2e)
    big, rb, r0 = ns[-1], e2e[str(ns[-1])], e2e[str(ns[0])]
    med = lambda runs, f: statistics.median(f(r) for r in runs)  # noqa: E731
    wall = med(rb, lambda r: r["wall_s"])
    rss = max(r["peak_rss_sum_mib"] for r in rb) / 1024
    ub = max(r["sum_of_process_peaks_mib"] for r in rb) / 1024
    ratio = (wall / big) / (med(r0, lambda r: r["wall_s"]) / ns[0])
    sp, vs = med(rb, lambda r: stage_s(r, "spectrum")), med(rb, lambda r: stage_s(r, "variant_stats"))
    rr = med(rb, after_spectrum_s)
    sim = next((c["simulate_s"] for c in res["cohorts"] if c["n"] == big), None)
    lin = "yes" if ratio <= 1.15 else ("roughly" if ratio <= 1.35 else "no")
    return [f"- Where the time goes at n = {big:,}: spectrum {sp:.0f} s ({sp / wall:.0%} of {wall:.0f} s), variant_stats "
            f"{vs:.0f} s ({vs / wall:.0%}), the stages after it (rotate, REML, report...) {rr:.0f} s ({rr / wall:.0%}), "
            f"start-up/validation/cluster outside the stages {med(rb, lambda r: r['outside_stages_s']):.0f} s."
            + (f" Simulating that cohort took {sim:.0f} s (once; not part of the run)." if sim else ""),
            f"- Goal: cost linear in n — {lin}: time per sample at n = {big:,} is ×{ratio:.2f} that at n = {ns[0]:,}.",
            f"- Goal: total RSS under 6 GiB at n = {big:,} — {'met' if rss < 6 else 'NOT met'}: sampled peak of the "
            f"summed RSS {rss:.2f} GiB (sum of per-process peaks, an upper bound: {ub:.2f} GiB).",
            f"- Goal: end to end under 15 minutes at n = {big:,} — {'met' if wall < 900 else 'NOT met'}: "
            f"{wall / 60:.1f} min ({len(rb)} run{'s' if len(rb) > 1 else ''})."]


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[25000, 50000, 100000], help="cohort sizes")
    ap.add_argument("--p", type=int, default=50000, help="variants (default 50000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--h2", type=float, nargs="+", default=[0.5, 0.3], help="true h² of the simulated traits")
    ap.add_argument("--pops", type=int, default=10, help="simulated populations (Balding–Nichols; 1 = none)")
    ap.add_argument("--fst", type=float, default=0.01)
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="Zarr chunks SAMPLES,VARIANTS (default 8192,2048)")
    ap.add_argument("--sim-block", type=int, default=1024, help="variants per simulation block (memory)")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench")
    ap.add_argument("--min-maf", type=float, default=0.01)
    ap.add_argument("--max-missing", type=float, default=0.05)
    ap.add_argument("--rank", type=int, default=200)
    ap.add_argument("--oversample", type=int, default=50)
    ap.add_argument("--power-iters", type=int, default=4)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="5GiB", help="per worker")
    ap.add_argument("--e2e-repeats", type=int, default=1, help="end-to-end runs per n (median)")
    ap.add_argument("--e2e-timeout", type=float, default=3600, help="seconds before an end-to-end run is stopped")
    ap.add_argument("--reuse-e2e", action="store_true",
                    help="take the end-to-end runs already measured from the previous results file (same "
                         "settings); only missing repeats run")
    ap.add_argument("--reuse-compare", action="store_true",
                    help="take the side-by-side comparison from the previous results file (same settings)")
    ap.add_argument("--compare-n", type=int, default=None, help="n of the side-by-side comparison (default min --n)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the side-by-side comparison (median)")
    ap.add_argument("--ref-oversample", type=int, default=200)
    ap.add_argument("--ref-power-iters", type=int, default=15)
    ap.add_argument("--exact-max-n", type=int, default=6000,
                    help="also compute exact eigenvalues when the comparison n is at most this")
    ap.add_argument("--plink2-pcs", type=int, default=20, help="plink2 --pca approx K (plink2 allows K <= 100)")
    ap.add_argument("--no-svd", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of a pass")
    add_plink2_args(ap)
    add_docs_args(ap)
    args = ap.parse_args(argv)
    cn = args.compare_n or min(args.n)
    args.n = sorted(set(args.n) | {cn})

    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
                 "machine": machine_info(), "command": command_line(__file__, argv)}
    res["args"]["compare_n"] = cn
    out_json = args.cache / "bench_scale_results.json"
    old = json.loads(out_json.read_text()) if out_json.exists() and (args.reuse_e2e or args.reuse_compare) else {}

    def same(keys) -> bool:
        return all(old.get("args", {}).get(k) == res["args"].get(k) for k in keys)

    def save():
        out_json.write_text(json.dumps(res, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
                            + "\n")

    res["cohorts"] = [cohort(args, n, need_plink=(n == cn and not args.no_plink2)) for n in args.n]
    save()
    res["memory_plans"] = memory_plans(args)
    if not args.no_e2e:
        previous = old.get("e2e", {}) if args.reuse_e2e and same(SAME_E2E) else {}
        if previous:
            res["e2e_reused_from"] = old.get("e2e_reused_from", old.get("date"))
        res["e2e"] = {}
        for c in res["cohorts"]:
            runs = res["e2e"][str(c["n"])] = list(previous.get(str(c["n"]), []))[:args.e2e_repeats]
            if runs:
                log(f"end to end n={c['n']}: reusing {len(runs)} run(s) of {res['e2e_reused_from']}")
            for r in range(len(runs), args.e2e_repeats):
                runs.append(run_e2e(args.cache, c, r, timeout=args.e2e_timeout, cluster=cluster_section(args),
                                    variants={"min_maf": args.min_maf, "max_missing": args.max_missing},
                                    spectrum={"method": "randomized", "rank": args.rank, "oversample": args.oversample,
                                              "power_iters": args.power_iters}))
                save()
    if not args.no_compare:
        if args.reuse_compare and "compare" in old and same(SAME_COMPARE):
            res["compare_reused_from"] = old.get("compare_reused_from", old.get("date"))
            log(f"compare: reusing the comparison of {res['compare_reused_from']}")
            res["compare"] = old["compare"]
        else:
            res["compare"] = compare(args, next(c for c in res["cohorts"] if c["n"] == cn))
        save()
    if not args.no_profile:
        log("profile: one pass task, one pass on the cluster, driver steps")
        res["profile"] = profile(args, [c for c in res["cohorts"] if c["n"] in (cn, max(args.n))])
        save()
    res["loadavg_end"] = os.getloadavg()
    res["summary"] = goals(res)
    save()
    log(f"results: {out_json}")
    publish(SECTION, build_report(res), args.docs if args.write_docs else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
