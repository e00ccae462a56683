#!/usr/bin/env python
"""Benchmark: bigmm's GRM and exact eigendecomposition, with PLINK 2 side by side.

Stages (each run ``--repeats`` times; the median is reported with min and max):

``ingest``  bigmm.ingest_plink, PLINK fileset -> Zarr cohort store (no Dask).
``stats``   bigmm.variant_stats + bigmm.standardization("gcta"), on the cluster.
``grm``     the grm stage's own build, bigmm.pipeline.stage.grm.build_grm_store: K and the
            per-pair call counts N (GCTA's), block by block through its checkpoint, committed by
            rename (its block size: the stage's rule, bigmm.pipeline.memory.grm_block_size, with the
            cluster's threads and task memory; product dtype from GrmConfig), on a dask.distributed LocalCluster made by
            bigmm.pipeline.cluster.dask_client, for each ``--configs`` entry: ``WxT`` (workers x
            threads) plus optional ``:`` options ``bN`` (force N BLAS threads per worker with
            threadpoolctl after start-up), ``f32``/``f64`` (product dtype), ``blockN``, ``konly``
            (K alone, without N: the build these benchmarks timed before, to compare with).
``eigh``    bigmm.exact_spectrum on the GRM loaded into the driver's memory.
``plink2``  plink2 --bfile PREFIX --make-rel square bin (the peer), run right after each GRM repeat
            of the first config (paired runs see similar load), checked against bigmm's K.
``blas``    the machine's BLAS rate: NumPy ``A @ A.T``, A of shape (5000, 8192), float64 and
            float32, in-process, 1 thread and all cores.
``profile`` one GRM block task (bigmm.grm.grm_block with the counts N, as the grm stage's tasks
            compute it, under cProfile, 1 BLAS thread as in a default worker): Zarr read+decode
            vs standardization vs BLAS, and a model of the whole GRM.

Peak RSS is the maximum over the stage of the sum of the resident set sizes of the driver and
all its descendant processes (Dask nanny/worker processes), sampled by a background thread
every 0.2 s; because a LAPACK call holding the GIL starves that thread, the driver's own
kernel high-water mark (VmHWM, reset at each stage start) is used for the driver's share.
plink2's peak is its exact ru_maxrss from wait4. CPU time (user + system, summed over the same
processes) is reported too: on a shared machine it is less disturbed than wall time.

GFLOP/s: ``n² · p / t``. X Xᵀ is symmetric; computing one triangle (what bigmm's upper-
triangle blocks do, with SYRK on the diagonal blocks) takes n² · p flops, half of the 2 n² p of
a full GEMM. NumPy's ``A @ A.T`` also calls SYRK, so the BLAS reference uses the same count.

Usage::

    python scripts/bench/bench_grm.py --n 1000 --p 5000 --repeats 1          # smoke
    python scripts/bench/bench_grm.py --write-docs                           # n=5000, p=50000
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, Columns, add_docs_args, add_plink2_args, command_line,  # noqa: E402
                    grm_block_size, log, machine_info, machine_line, md_table, peer_exe, peer_version,
                    profile_call, publish, run_peer, summarize, task_stream_summary, timed, timed_grm)

SECTION = "GRM and eigendecomposition (scripts/bench/bench_grm.py)"


def blas_peak(repeats: int, n: int = 5000, k: int = 8192) -> dict:
    """NumPy ``A @ A.T`` (SYRK: n(n+1)k flops), float64 and float32, 1 thread and all cores."""
    from threadpoolctl import threadpool_limits

    out = {}
    for dtype in ("float64", "float32"):
        A = np.random.default_rng(0).standard_normal((n, k)).astype(dtype)
        for threads in sorted({1, os.cpu_count() or 1}):
            with threadpool_limits(limits=threads, user_api="blas"):
                A @ A.T  # warm-up (thread pool, page faults of the output)
                runs = [timed(lambda: (A @ A.T).shape, f"BLAS A@A.T {n}x{k} {dtype}, {threads} thread(s)")
                        for _ in range(repeats)]
            s = summarize(runs, threads=threads, dtype=dtype, n=n, k=k)
            s["gflops"] = n * n * k / s["median_s"] / 1e9
            s["gflops_best"] = n * n * k / s["min_s"] / 1e9
            out[f"{dtype}/{threads}"] = s
        A = None
    return out


def peak_for(res: dict, dtype: str) -> dict:
    """The all-core A @ A.T entry of a dtype."""
    return res["blas_peak"][f"{dtype}/{res['machine']['nproc']}"]


def simulate_cached(cache: Path, n: int, p: int, seed: int) -> Path:
    """A simulated PLINK fileset (bigmm.simulate), reused when present."""
    import bigmm

    prefix = cache / f"sim_n{n}_p{p}_seed{seed}"
    bed = prefix.with_suffix(".bed")
    if all(prefix.with_suffix(s).exists() for s in (".bed", ".bim", ".fam")) and \
            bed.stat().st_size == 3 + p * ((n + 3) // 4):
        log(f"simulate: reusing {prefix}.{{bed,bim,fam}}")
        return prefix
    timed(lambda: bigmm.simulate(n, p, seed=seed, out_plink=prefix), f"simulate n={n} p={p} seed={seed} -> {prefix}")
    return prefix


# --------------------------------------------------------------------------- GRM

def parse_config(spec: str) -> dict:
    """``2x1``, ``1x1:b2``, ``2x1:f64:block2048``, ``2x1:konly`` -> a GRM run configuration."""
    base, *opts = spec.split(":")
    try:
        w, t = (int(x) for x in base.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bad config {spec!r}: expected WORKERSxTHREADS[:bN][:f32|f64][:blockN][:konly]") from None
    cfg = {"spec": spec, "workers": w, "threads": t, "force_blas": None, "dtype": None, "block": None,
           "k_only": False}
    for o in opts:
        if o == "konly":
            cfg["k_only"] = True
        elif o.startswith("block"):
            cfg["block"] = int(o[5:])
        elif o in ("f32", "f64"):
            cfg["dtype"] = "float32" if o == "f32" else "float64"
        elif o.startswith("b"):
            cfg["force_blas"] = int(o[1:])
        else:
            raise SystemExit(f"bad config option {o!r} in {spec!r}")
    return cfg


def _worker_blas():
    import os as _os

    from threadpoolctl import threadpool_info as _info

    return {"env_OPENBLAS_NUM_THREADS": _os.environ.get("OPENBLAS_NUM_THREADS"),
            "blas_threads": sorted({d["num_threads"] for d in _info() if d.get("user_api") == "blas"})}


def _worker_set_blas(k: int):
    from threadpoolctl import threadpool_limits as _lim

    _lim(limits=k, user_api="blas")  # not a context: the limit stays for the worker's lifetime
    return _worker_blas()


def agreement(K: np.ndarray, rel: np.ndarray) -> dict:
    d = np.abs(K - rel)
    off = d.copy()
    np.fill_diagonal(off, 0.0)
    return {"max_abs_diff": float(d.max()), "max_abs_diff_diag": float(np.diag(d).max()),
            "max_abs_diff_offdiag": float(off.max()), "max_abs_K": float(np.abs(K).max())}


# --------------------------------------------------------------------------- profile

def _lpt_makespan(costs: list[float], workers: int) -> float:
    loads = [0.0] * max(1, workers)
    for c in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += c
    return max(loads)


def profile_block(store, std, block: int, dtypes: list, cache: Path, workers: int, n_chunks: int = 2) -> dict:
    """Where a GRM block task's time goes: bigmm.grm.grm_block with the per-pair counts (as the
    grm stage's tasks call it) under cProfile (common.profile_call).

    For the first off-diagonal block (0, 1) and the diagonal block (0, 0) of the GRM's block
    layout, over the first ``n_chunks`` variant chunks: Zarr read + decode, standardization and
    grm_block's own time (its products and the float64 accumulation: BLAS). From these per-genotype
    and per-flop costs, a model of the whole GRM (serial, and its makespan on ``workers`` with
    the block tasks scheduled largest first) for this and other block sizes.
    """
    import importlib

    gm = importlib.import_module("bigmm.grm")  # (bigmm.grm the attribute is the function)
    G = store.genotypes
    n, p = G.shape
    cs = store.chunks[0]
    step = gm._variant_chunk(G)
    pv = min(p, n_chunks * step)
    blocks = gm._blocks(n, block)
    cases = ([("off-diagonal", blocks[0], blocks[1])] if len(blocks) > 1 else []) + [("diagonal", blocks[0], blocks[0])]
    out: dict = {"block": block, "variant_chunks": -(-pv // step), "workers": workers, "by_dtype": {}}

    def decoded_rows(r: slice) -> int:  # zarr decodes whole chunks
        return min(n, -(-r.stop // cs) * cs) - (r.start // cs) * cs

    for dtype in dtypes:
        dt = np.dtype(dtype)
        prof: dict = {}
        for kind, ri, rj in cases:
            t = profile_call(gm.grm_block, Columns(G, pv), std.center, std.scale, ri, rj, step, std.n_kept, dt, True)
            ni, nj, same = ri.stop - ri.start, rj.stop - rj.start, ri == rj
            decoded = decoded_rows(ri) + (0 if same else decoded_rows(rj))
            prof[kind] = {"rows": [ni, nj], **t, "ns_per_decoded_genotype": t["read_s"] / (decoded * pv) * 1e9,
                          "ns_per_standardized_genotype": t["standardize_s"] / ((ni + (0 if same else nj)) * pv) * 1e9,
                          "gflops": (ni * ni if same else 2 * ni * nj) * pv / t["blas_s"] / 1e9}
        src = prof.get("off-diagonal", prof["diagonal"])
        rates = {"read": src["ns_per_decoded_genotype"], "std": src["ns_per_standardized_genotype"],
                 "gemm": src["gflops"], "syrk": prof["diagonal"]["gflops"]}

        def model(b: int) -> dict:
            bl = gm._blocks(n, b)
            costs, parts = [], {"read+decode": 0.0, "standardize": 0.0, "BLAS": 0.0}
            for a in range(len(bl)):
                for c in range(a, len(bl)):
                    ni_, nj_, same_ = bl[a].stop - bl[a].start, bl[c].stop - bl[c].start, a == c
                    rd = (decoded_rows(bl[a]) + (0 if same_ else decoded_rows(bl[c]))) * p * rates["read"] / 1e9
                    sd = (ni_ + (0 if same_ else nj_)) * p * rates["std"] / 1e9
                    bs = (ni_ * ni_ * p / rates["syrk"] if same_ else 2 * ni_ * nj_ * p / rates["gemm"]) / 1e9
                    for key, v in zip(parts, (rd, sd, bs)):
                        parts[key] += v
                    costs.append(rd + sd + bs)
            serial = sum(costs)
            return {"blocks_per_side": len(bl), "tasks": len(costs), "serial_s": serial,
                    "fractions": {k: v / serial for k, v in parts.items()}, "largest_task_s": max(costs),
                    "makespan_s": _lpt_makespan(costs, workers), "ideal_s": serial / workers}

        sizes = sorted({block, cs, -(-n // 2), -(-n // 3)})
        out["by_dtype"][dt.name] = {"cases": prof, "rates": rates, "model": {str(b): model(b) for b in sizes if b <= n}}
    if len(blocks) > 1:  # writing one finished block of K and N (and their transposes), as a block task does
        wpath = cache / "profile_grm.zarr"
        shutil.rmtree(wpath, ignore_errors=True)
        gm.create_grm_store(wpath, n, block, {}, counts=True)
        acc = np.full((blocks[0].stop - blocks[0].start, blocks[1].stop - blocks[1].start), 0.5)
        t0 = time.perf_counter()
        gm._write_block(str(wpath), 0, 1, blocks[0], blocks[1], {"K": acc, "N": np.full(acc.shape, p, np.int32)})
        out["write_block_s"] = time.perf_counter() - t0
        out["write_ns_per_entry"] = out["write_block_s"] / (2 * acc.size) * 1e9
        shutil.rmtree(wpath, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- report

def build_report(res: dict) -> str:
    m, st = res["machine"], res["stages"]
    c0 = res["configs"][0]
    g0 = st[f"grm {c0['spec']}"]

    def row(stage, setup, s, dtype=None):
        pct = f"{100 * s['gflops'] / peak_for(res, dtype)['gflops']:.0f}% ({dtype})" if dtype else ""
        rng = f"{s['min_s']:.2f}–{s['max_s']:.2f}" if s["repeats"] > 1 else "—"
        return [stage, setup, f"{s['median_s']:.2f}", rng, f"{s['cpu_s_median']:.1f}", f"{s['peak_rss_mib_median']:,.0f}",
                f"{s['gflops']:.1f}" if "gflops" in s else "", pct]

    rows = [row("ingest", "bed → Zarr, driver only", st["ingest"]),
            row("stats", f"variant_stats + gcta standardization, cluster {c0['workers']}×{c0['threads']}", st["stats"])]
    for cfg in res["configs"]:
        bt = ",".join(str(x) for x in cfg["worker_blas"]["blas_threads"]) or "?"
        how = "forced by threadpoolctl" if cfg["force_blas"] else f"bigmm asks {cfg['requested_blas']}"
        rows.append(row(f"grm `{cfg['spec']}`", f"{cfg['workers']} worker × {cfg['threads']} thread, BLAS {bt}/worker "
                        f"({how}), {cfg['dtype_name']}, block {cfg['block_size']} ({cfg['blocks_per_side']}×"
                        f"{cfg['blocks_per_side']}), " + ("K only, no N (the earlier benchmark build)" if cfg["k_only"]
                                                          else "K and N (build_grm_store)")
                        + (" **(pipeline default)**" if cfg["is_default"] else ""),
                        st[f"grm {cfg['spec']}"], cfg["dtype_name"]))
    if "plink2" in st:
        rows.append(row("plink2", f"--make-rel square bin --threads {res['plink2']['threads']} (whole job: read .bed, "
                        "freqs, GRM, write)", st["plink2"], "float64"))
    if "eigh" in st:
        rows.append(row("eigh", f"exact_spectrum (scipy eigh, evd), driver, {res['eigh_threads']} BLAS threads", st["eigh"]))
    rows += [row("BLAS", f"NumPy A @ A.T (SYRK), {s['n']} × {s['k']} {s['dtype']}, {s['threads']} thread(s)", s, s["dtype"])
             for s in res["blas_peak"].values()]
    lines = [f"Run {res['date']} · n = {res['n']:,} samples × p = {res['p']:,} variants ({res['p_kept']:,} kept), "
             f"simulated (seed {res['seed']}, no missing calls) · repeats = {res['repeats']} (median; min–max shown) · "
             f"variant chunk {res['chunk']}", "",
             f"{machine_line(m)}; {res.get('plink2', {}).get('version', 'plink2 not run')}. Load average at start / end: "
             f"{m['loadavg_start'][0]:.2f} / {res['loadavg_end'][0]:.2f} (a shared machine: other jobs ran during the "
             "run, hence medians, CPU times and paired ratios).", "",
             md_table(["stage", "setup", "median s", "min–max s", "CPU s", "peak RSS MiB (sum)", "GFLOP/s (n²p/t)",
                       "% of BLAS peak"], rows, "ll"), "",
             "- Peak RSS: the maximum over the stage of the summed RSS of the driver and all its descendant processes "
             f"(Dask nanny/worker processes, idle ones included: {g0['start_rss_mib_median']:,.0f} MiB at the start of "
             f"the `{c0['spec']}` GRM stage), sampled every 0.2 s (the driver's own share from its VmHWM); plink2: its "
             "ru_maxrss. CPU s: user + system time summed over the same processes (median).",
             "- GFLOP/s = n²·p / t, the flop count of one triangle of X Xᵀ (half of a full GEMM's 2n²p); NumPy's "
             "A @ A.T is SYRK and is counted the same way (n²·k). % of BLAS peak: against A @ A.T on all "
             f"{m['nproc']} cores in the same precision as the GRM's products (plink2: float64)."]
    for dt in ("float64", "float32"):
        one, allc = res["blas_peak"].get(f"{dt}/1"), peak_for(res, dt)
        if one and m["nproc"] > 1 and allc["gflops"] < 0.75 * m["nproc"] * one["gflops"]:
            lines.append(f"- The all-core {dt} A @ A.T ran at {allc['gflops']:.0f} GFLOP/s "
                         f"(best {allc['gflops_best']:.0f}), "
                         f"under {m['nproc']} × its 1-thread rate: other jobs held cores, so the % of peak is flattering.")
    if "plink2" in st:
        p2 = st["plink2"]
        lines.append(f"- **plink2 / bigmm** (GRM, `{c0['spec']}`): wall {p2['median_s']:.2f} / {g0['median_s']:.2f} s = "
                     f"**{p2['median_s'] / g0['median_s']:.2f}**; median of the paired per-repeat ratios "
                     f"**{p2['paired_ratio_median']:.2f}**; CPU time {p2['cpu_s_median'] / g0['cpu_s_median']:.2f} (> 1: "
                     "bigmm faster). plink2's time covers its whole job (read the .bed, frequencies, GRM, write "
                     f"{8 * res['n'] ** 2 / 1e6:,.0f} MB).")
    for kc in (c for c in res["configs"] if c["k_only"]):
        same = ("workers", "threads", "force_blas", "dtype_name", "block_size")
        full = next((c for c in res["configs"] if not c["k_only"] and all(c[k] == kc[k] for k in same)), None)
        if full:
            a, b = st[f"grm {full['spec']}"], st[f"grm {kc['spec']}"]
            lines.append(f"- **K and N / K only** (`{full['spec']}` / `{kc['spec']}`: the grm stage's build, with "
                         "GCTA's per-pair call counts N, against K alone as these benchmarks built it before): wall "
                         f"{a['median_s']:.2f} / {b['median_s']:.2f} s = **{a['median_s'] / b['median_s']:.2f}**, "
                         f"CPU {a['cpu_s_median']:.1f} / {b['cpu_s_median']:.1f} s = "
                         f"{a['cpu_s_median'] / b['cpu_s_median']:.2f}, peak RSS {a['peak_rss_mib_median']:,.0f} / "
                         f"{b['peak_rss_mib_median']:,.0f} MiB = "
                         f"{a['peak_rss_mib_median'] / b['peak_rss_mib_median']:.2f}.")
    for cfg in res["configs"]:
        a = cfg.get("agreement")
        if a and cfg.get("agreement_first_of_dtype"):
            lines.append(f"- Agreement with plink2 --make-rel, bigmm {cfg['dtype_name']} products (`{cfg['spec']}`): max "
                         f"|K_bigmm − K_plink2| = {a['max_abs_diff']:.2e} (diagonal {a['max_abs_diff_diag']:.2e}, "
                         f"off-diagonal {a['max_abs_diff_offdiag']:.2e}; max |K| = {a['max_abs_K']:.3g}).")
    if any(c.get("agreement") for c in res["configs"]):
        lines.append("  Both use the GCTA standardization (g − 2f)/√(2f(1−f)) with f from all samples (all are "
                     "founders here) and divide by the number of variants; plink2 counts the other allele (A1, its "
                     "ALT), which flips the sign of every column of X and leaves X Xᵀ unchanged. The simulated "
                     "genotypes have no missing calls, so bigmm's mean imputation and plink2's default treatment "
                     "(per-pair valid variants; its `meanimpute` modifier would match bigmm) coincide: the float64 "
                     "difference is round-off, the float32 one the rounding of each chunk's float32 product.")
    lines.append("- LocalCluster start-up (not in the stage times): "
                 + ", ".join(f"`{k}` {v:.1f} s" for k, v in res["cluster_start_s"].items()) + ".")
    for cfg in res["configs"]:
        if ts := cfg.get("task_stream"):
            lines.append(f"- GRM `{cfg['spec']}` task stream (last repeat): {ts['tasks']} block tasks of "
                         + ", ".join(f"{x:.1f}" for x in ts["task_s"])
                         + f" s; makespan {ts['makespan_s']:.1f} s, worker utilization {100 * ts['utilization']:.0f}%.")
    if "eigh" in st:
        lines.append(f"- eigh: K loaded from the Zarr GRM first ({res['k_load_s']:.2f} s, not included); the "
                     "cluster is closed by then, so the RSS is the driver's.")
    if prof := res.get("profile"):
        for dt, d in prof["by_dtype"].items():
            parts = [f"{kind} {c['rows'][0]}×{c['rows'][1]}: {c['total_s']:.2f} s = read+decode {c['read_s']:.2f} + "
                     f"standardize {c['standardize_s']:.2f} + BLAS {c['blas_s']:.2f} ({c['gflops']:.1f} GFLOP/s) + "
                     f"other {c['other_s']:.2f}" for kind, c in d["cases"].items()]
            lines.append(f"- Profile, {dt} products, {prof['variant_chunks']} variant chunks, 1 BLAS thread "
                         "(bigmm.grm.grm_block with the counts N, under cProfile): " + "; ".join(parts)
                         + f". Per genotype: read+decode {d['rates']['read']:.2f} ns, "
                           f"standardize {d['rates']['std']:.2f} ns.")
            lines.append(f"  Model of the whole GRM from these rates, {dt}: " + "; ".join(
                f"block {b} ({mm['tasks']} tasks): serial {mm['serial_s']:.1f} s (BLAS "
                f"{100 * mm['fractions']['BLAS']:.0f}%), makespan on {prof['workers']} workers {mm['makespan_s']:.1f} s "
                f"(ideal {mm['ideal_s']:.1f})" for b, mm in d["model"].items()) + ".")
        if "write_ns_per_entry" in prof:
            lines.append(f"- Writing a finished block of K and N and their transposes into the Zarr GRM: "
                         f"{prof['write_ns_per_entry']:.1f} ns per entry of K (its N entry written with it).")
    lines += ["", "Regenerate (from the repository root, in bigmm's environment):", "", "```", res["command"], "```"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="samples (default 5000)")
    ap.add_argument("--p", type=int, default=50000, help="variants (default 50000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench",
                    help="cache directory for the simulated fileset and stores (default cache/bench)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measured thing (median reported)")
    ap.add_argument("--configs", default="2x1,2x1:f64,2x1:block2048,1x1,1x1:b2",
                    help="GRM runs, comma-separated: WORKERSxTHREADS[:bBLAS][:f32|f64][:blockN]; the first is "
                         "used for stats and paired with plink2 (default: %(default)s; 2x1 with no options is "
                         "what the pipeline does with the default ClusterConfig and GrmConfig)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default=None,
                    help="GRM product dtype when a config does not say (default: GrmConfig's default)")
    ap.add_argument("--block-size", type=int, default=None,
                    help="GRM block when a config does not say (default: the pipeline's grm_block_size)")
    ap.add_argument("--no-eigh", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the one-block profile")
    add_plink2_args(ap)
    add_docs_args(ap)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    import logging

    import zarr
    from distributed import get_task_stream
    from threadpoolctl import threadpool_limits

    import bigmm
    from bigmm.pipeline.cluster import blas_threads_per_worker, dask_client
    from bigmm.pipeline.config import ClusterConfig, GrmConfig

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    ncpu = os.cpu_count() or 1
    default_dtype = args.dtype or GrmConfig().dtype
    configs = [parse_config(s.strip()) for s in args.configs.split(",") if s.strip()]
    res: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "n": args.n,
                 "p": args.p, "repeats": args.repeats, "seed": args.seed, "machine": machine_info(),
                 "stages": {}, "configs": configs, "default_dtype": default_dtype, "cluster_start_s": {},
                 "command": command_line(__file__, argv)}
    st = res["stages"]
    prefix = simulate_cached(cache, args.n, args.p, args.seed)
    log("BLAS peak")
    res["blas_peak"] = blas_peak(args.repeats)
    store_path = cache / f"cohort_n{args.n}_p{args.p}_seed{args.seed}.zarr"
    log("stage ingest")
    st["ingest"] = summarize([timed(lambda: bigmm.ingest_plink(prefix, store_path, overwrite=True), "ingest")
                              for _ in range(args.repeats)])
    store = bigmm.open_store(store_path)
    res["chunk"] = store.chunks[1]

    exe = None if args.no_plink2 else peer_exe(args.plink2)
    if exe:
        res["plink2"] = {"exe": exe, "version": peer_version(exe), "threads": args.plink2_threads,
                         "memory_mib": args.plink2_memory}
    p2_out = cache / f"plink2_rel_n{args.n}_p{args.p}_seed{args.seed}"
    p2_runs: list = []
    pair_ratios: list = []
    rel = std = None
    gpath = cache / f"grm_n{args.n}_p{args.p}_seed{args.seed}.zarr"
    seen_dtypes: set = set()
    default_cc = ClusterConfig()
    for i, cfg in enumerate(configs):
        cc = ClusterConfig(workers=cfg["workers"], threads_per_worker=cfg["threads"])
        cfg["requested_blas"] = blas_threads_per_worker(cc.workers, cc.threads_per_worker)
        t0 = time.perf_counter()
        with dask_client(cc) as client:
            res["cluster_start_s"][cfg["spec"]] = time.perf_counter() - t0
            info = client.run(_worker_set_blas, cfg["force_blas"]) if cfg["force_blas"] else client.run(_worker_blas)
            cfg["worker_blas"] = next(iter(info.values()))
            dtype = np.dtype(cfg["dtype"] or default_dtype)
            block = cfg["block"] or args.block_size or grm_block_size(store, cc, dtype)
            cfg.update(dtype_name=dtype.name, block_size=block, blocks_per_side=-(-args.n // block),
                       is_default=(cfg["workers"], cfg["threads"]) == (default_cc.workers, default_cc.threads_per_worker)
                       and not (cfg["force_blas"] or cfg["dtype"] or cfg["block"] or cfg["k_only"] or args.dtype
                                or args.block_size))
            log(f"cluster {cfg['spec']}: requested BLAS {cfg['requested_blas']}, workers report {info}; "
                f"{dtype.name}, block {block}")
            if std is None:
                log("stage stats")
                runs = [timed(lambda: bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta"), "stats")
                        for _ in range(args.repeats)]
                st["stats"] = summarize(runs)
                std = runs[-1]["result"]
                res["p_kept"] = std.n_kept
            log(f"stage grm {cfg['spec']}")
            runs = []
            for _ in range(args.repeats):
                with get_task_stream(client) as ts:
                    runs.append(timed_grm(store, std, gpath, block, dtype, f"grm {cfg['spec']}", cfg["k_only"]))
                cfg["build"] = runs[-1]["result"]
                cfg["task_stream"] = task_stream_summary(ts.data)
                if i == 0 and exe:  # the peer right after each GRM of the first config: similar load
                    p2_runs.append(run_peer([exe, "--bfile", str(prefix), "--make-rel", "square", "bin", "--threads",
                                             str(args.plink2_threads), "--memory", str(args.plink2_memory), "--out",
                                             str(p2_out)], Path(f"{p2_out}.stdout"), "plink2 --make-rel"))
                    pair_ratios.append(p2_runs[-1]["seconds"] / runs[-1]["seconds"])
            s = summarize(runs)
            s["gflops"] = args.n ** 2 * std.n_kept / s["median_s"] / 1e9
            st[f"grm {cfg['spec']}"] = s
        if p2_runs:
            if rel is None:
                rel = np.fromfile(f"{p2_out}.rel.bin", dtype="<f8").reshape(args.n, args.n)
                ids = [tuple(ln.split()[:2]) for ln in open(f"{p2_out}.rel.id") if not ln.startswith("#")]
                res["plink2"]["same_sample_order"] = ids == store.sample_ids()
            cfg["agreement"] = agreement(np.asarray(zarr.open_group(str(gpath), mode="r")["K"][...]), rel)
            cfg["agreement_first_of_dtype"] = dtype.name not in seen_dtypes
            seen_dtypes.add(dtype.name)
            log(f"agreement {cfg['spec']}: {cfg['agreement']}")
    if p2_runs:
        st["plink2"] = summarize(p2_runs, paired_ratios=pair_ratios, paired_ratio_median=statistics.median(pair_ratios))
        st["plink2"]["gflops"] = args.n ** 2 * args.p / st["plink2"]["median_s"] / 1e9
        res["plink2"]["cmd"] = p2_runs[-1]["cmd"]
    rel = None
    if not args.no_eigh:
        t0 = time.perf_counter()
        K = np.asarray(zarr.open_group(str(gpath), mode="r")["K"][...])
        res["k_load_s"], res["eigh_threads"] = time.perf_counter() - t0, ncpu
        log(f"stage eigh ({ncpu} BLAS threads)")
        with threadpool_limits(limits=ncpu, user_api="blas"):
            runs = [timed(lambda: bigmm.exact_spectrum(K).rank, "eigh") for _ in range(args.repeats)]
        st["eigh"] = summarize(runs)
        K = None
    if not args.no_profile:
        c0 = configs[0]
        log("profile: one block task")
        res["profile"] = profile_block(store, std, c0["block_size"], [c0["dtype_name"]] + [
            d for d in ("float32", "float64") if d != c0["dtype_name"]], cache, c0["workers"] * c0["threads"])
    res["loadavg_end"] = os.getloadavg()
    (cache / "bench_grm_results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    log(f"results: {cache / 'bench_grm_results.json'}")
    publish(SECTION, build_report(res), args.docs if args.write_docs else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
