#!/usr/bin/env python
"""Benchmark: bigmm's GRM and exact eigendecomposition, with PLINK 2 side by side.

Stages (each run ``--repeats`` times; the median is reported with min and max):

``ingest``  bigmm.ingest_plink, PLINK fileset -> Zarr cohort store (no Dask).
``stats``   bigmm.variant_stats + bigmm.standardization("gcta"), on the cluster.
``grm``     create_grm_store + bigmm.grm(out=..., dtype=...) as the pipeline's GRM stage does it
            (block size from bigmm.grm.default_block_size with the cluster's threads and task
            memory, product dtype from GrmConfig), on a dask.distributed LocalCluster made by
            bigmm.cluster.dask_client, for each ``--configs`` entry: ``WxT`` (workers x threads)
            plus optional ``:`` options ``bN`` (force N BLAS threads per worker with
            threadpoolctl after start-up), ``f32``/``f64`` (product dtype), ``blockN``.
``eigh``    bigmm.exact_spectrum on the GRM loaded into the driver's memory.
``plink2``  plink2 --bfile PREFIX --make-rel square bin (the peer), run right after each GRM repeat
            of the first config (paired runs see similar load), checked against bigmm's K.
``blas``    the machine's BLAS rate: NumPy ``A @ A.T``, A of shape (5000, 8192), float64 and
            float32, in-process, 1 thread and all cores.
``profile`` one GRM block task (bigmm.grm.grm_block under cProfile, 1 BLAS thread as in a default
            worker): Zarr read+decode vs standardization vs BLAS, and a model of the whole GRM.

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

    python scripts/bench_grm.py --n 1000 --p 5000 --repeats 1          # smoke
    python scripts/bench_grm.py --write-docs                           # n=5000, p=50000
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchutil import REPO, log, machine_info, summarize, timed, write_docs  # noqa: E402

ENV0 = dict(os.environ)  # before any LocalCluster: dask's nanny leaks OPENBLAS_NUM_THREADS=1 into it
SECTION = "GRM and eigendecomposition (scripts/bench_grm.py)"


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
            s = summarize(runs)
            s["gflops"] = n * n * k / s["median_s"] / 1e9
            s["gflops_best"] = n * n * k / s["min_s"] / 1e9
            s.update(threads=threads, dtype=dtype)
            out[f"{dtype}/{threads}"] = s
        A = None
    return out


def peak_for(res: dict, dtype: str) -> dict:
    """The all-core A @ A.T entry of a dtype."""
    return res["blas_peak"][f"{dtype}/{res['machine']['nproc']}"]


# --------------------------------------------------------------------------- data

def simulate_cached(cache: Path, n: int, p: int, seed: int) -> Path:
    import bigmm

    prefix = cache / f"sim_n{n}_p{p}_seed{seed}"
    bed = prefix.with_suffix(".bed")
    files = [prefix.with_suffix(s) for s in (".bed", ".bim", ".fam")]
    if all(f.exists() for f in files) and bed.stat().st_size == 3 + p * ((n + 3) // 4):
        log(f"simulate: reusing {prefix}.{{bed,bim,fam}}")
        return prefix
    log(f"simulate: n={n} p={p} seed={seed} -> {prefix}")
    t0 = time.perf_counter()
    bigmm.simulate(n, p, seed=seed, out_plink=prefix)
    log(f"simulate: done in {time.perf_counter() - t0:.1f} s")
    return prefix


# --------------------------------------------------------------------------- GRM

def parse_config(spec: str) -> dict:
    """``2x1``, ``1x1:b2``, ``2x1:f64:block2048`` -> a GRM run configuration."""
    base, *opts = spec.split(":")
    try:
        w, t = (int(x) for x in base.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bad config {spec!r}: expected WORKERSxTHREADS[:bN][:f32|f64][:blockN]") from None
    cfg = {"spec": spec, "workers": w, "threads": t, "force_blas": None, "dtype": None, "block": None}
    for o in opts:
        if o.startswith("block"):
            cfg["block"] = int(o[5:])
        elif o in ("f32", "f64"):
            cfg["dtype"] = "float32" if o == "f32" else "float64"
        elif o.startswith("b"):
            cfg["force_blas"] = int(o[1:])
        else:
            raise SystemExit(f"bad config option {o!r} in {spec!r}")
    return cfg


def pipeline_block(store, cc, dtype: np.dtype) -> int:
    """The GRM block size of the pipeline's GRM stage (grm.block_size unset)."""
    try:
        from bigmm.grm import default_block_size
        from bigmm.pipeline import task_memory
        from bigmm.tasks import total_threads
    except ImportError:  # older bigmm: the store's sample chunk
        return store.chunks[0]
    return default_block_size(store.n_samples, total_threads(), store.chunks[0], store.chunks[1],
                              task_memory(cc), dtype.itemsize)


def _worker_blas():
    import os as _os

    from threadpoolctl import threadpool_info as _info

    return {"env_OPENBLAS_NUM_THREADS": _os.environ.get("OPENBLAS_NUM_THREADS"),
            "blas_threads": sorted({d["num_threads"] for d in _info() if d.get("user_api") == "blas"})}


def _worker_set_blas(k: int):
    from threadpoolctl import threadpool_limits as _lim

    _lim(limits=k, user_api="blas")  # not a context: the limit stays for the worker's lifetime
    return _worker_blas()


def run_grm(store, std, gpath: Path, block: int, dtype: np.dtype) -> None:
    import zarr

    from bigmm.grm import create_grm_store, grm, grm_complete

    attrs = {"n_samples": store.n_samples, "n_variants": std.n_kept, "standardize": std.standardize,
             "block_size": block, "dtype": dtype.name, "bigmm_version": "bench"}
    create_grm_store(gpath, store.n_samples, block, attrs)
    grm(store.genotypes, std, block_size=block, out=gpath, dtype=dtype)
    if not grm_complete(zarr.open_group(str(gpath), mode="r")):
        raise RuntimeError("GRM blocks missing after computation")


def task_stream_summary(data: list) -> dict:
    per_worker: dict = {}
    starts, stops, durs = [], [], []
    for rec in data:
        for ss in rec.get("startstops", ()):
            if ss.get("action") == "compute":
                d = ss["stop"] - ss["start"]
                w = rec.get("worker", "?")
                per_worker[w] = per_worker.get(w, 0.0) + d
                starts.append(ss["start"])
                stops.append(ss["stop"])
                durs.append(d)
    if not durs:
        return {}
    span = max(stops) - min(starts)
    busy = sum(per_worker.values())
    return {"tasks": len(durs), "makespan_s": span, "busy_s_per_worker": sorted(per_worker.values()),
            "task_s": sorted(durs), "utilization": busy / (span * max(1, len(per_worker)))}


def run_plink2(exe: str, prefix: Path, out: Path, threads: int, memory_mib: int) -> dict:
    cmd = [exe, "--bfile", str(prefix), "--make-rel", "square", "bin", "--threads", str(threads),
           "--memory", str(memory_mib), "--out", str(out)]
    with open(str(out) + ".stdout", "w") as logf:
        t0 = time.perf_counter()
        # the environment as it was before any LocalCluster (see ENV0)
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=ENV0)
        _, status, ru = os.wait4(proc.pid, 0)
        dt = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {out}.log")
    cpu = ru.ru_utime + ru.ru_stime
    log(f"  plink2 --make-rel: {dt:.2f} s, CPU {cpu:.1f} s, peak RSS {ru.ru_maxrss / 1024:.0f} MiB")
    return {"seconds": dt, "cpu_s": cpu, "peak_rss": ru.ru_maxrss * 1024, "start_rss": 0, "cmd": shlex.join(cmd)}


def agreement(K: np.ndarray, rel: np.ndarray) -> dict:
    d = np.abs(K - rel)
    np.fill_diagonal(d, np.abs(np.diag(K) - np.diag(rel)))
    off = d.copy()
    np.fill_diagonal(off, 0.0)
    return {"max_abs_diff": float(d.max()), "max_abs_diff_diag": float(np.diag(d).max()),
            "max_abs_diff_offdiag": float(off.max()), "max_abs_K": float(np.abs(K).max()),
            "mean_diag_bigmm": float(np.diag(K).mean()), "mean_diag_plink2": float(np.diag(rel).mean())}


# --------------------------------------------------------------------------- profile

class _FirstColumns:
    """The first ``p`` variants of a genotype array, for grm_block (reads delegate)."""

    def __init__(self, G, p: int):
        self.G, self.shape, self.chunks = G, (G.shape[0], p), G.chunks

    def __getitem__(self, sel):
        return self.G[sel]


def _lpt_makespan(costs: list[float], workers: int) -> float:
    loads = [0.0] * max(1, workers)
    for c in sorted(costs, reverse=True):
        i = loads.index(min(loads))
        loads[i] += c
    return max(loads)


def profile_block(store, std, block: int, dtypes: list, cache: Path, workers: int,
                  n_chunks: int = 2) -> dict:
    """Where a GRM block task's time goes: bigmm.grm.grm_block under cProfile, 1 BLAS thread.

    For the first off-diagonal block (0, 1) and the diagonal block (0, 0) of the GRM's block
    layout, over the first ``n_chunks`` variant chunks: cumulative time in ``_row_block`` (Zarr
    read + decode), in ``standardize_block``, and grm_block's own time (the ``@`` products and
    the float64 accumulation, which cProfile cannot see as calls: that is BLAS). From these
    per-genotype and per-flop costs, a model of the whole GRM (serial, and its makespan on
    ``workers`` with the block tasks scheduled largest first) for this and other block sizes.
    """
    import cProfile
    import pstats

    from threadpoolctl import threadpool_limits

    import importlib

    gm = importlib.import_module("bigmm.grm")  # (bigmm.grm the attribute is the function)

    G = store.genotypes
    n, p = G.shape
    cs = store.chunks[0]
    step = gm._variant_chunk(G)
    pv = min(p, n_chunks * step)
    Gs = _FirstColumns(G, pv)
    blocks = gm._blocks(n, block)
    cases = [("diagonal", blocks[0], blocks[0])]
    if len(blocks) > 1:
        cases.insert(0, ("off-diagonal", blocks[0], blocks[1]))
    out: dict = {"block": block, "variant_chunks": pv // step if pv % step == 0 else -(-pv // step),
                 "chunk_cols": step, "by_dtype": {}}

    def decoded_rows(r: slice) -> int:  # zarr decodes whole chunks
        return (min(n, -(-r.stop // cs) * cs) - (r.start // cs) * cs)

    for dtype in dtypes:
        dt = np.dtype(dtype)
        prof: dict = {}
        for kind, ri, rj in cases:
            pr = cProfile.Profile()
            with threadpool_limits(limits=1, user_api="blas"):
                t0 = time.perf_counter()
                pr.enable()
                gm.grm_block(Gs, std.center, std.scale, ri, rj, step, std.n_kept, dt)
                pr.disable()
                total = time.perf_counter() - t0
            fn = {"_row_block": 0.0, "standardize_block": 0.0, "grm_block_self": 0.0}
            for (_file, _line, name), (_cc, _nc, tt, ct, _callers) in pstats.Stats(pr).stats.items():
                if name in ("_row_block", "standardize_block"):
                    fn[name] += ct
                elif name == "grm_block":
                    fn["grm_block_self"] += tt
            ni, nj = ri.stop - ri.start, rj.stop - rj.start
            same = ri == rj
            rows_dec = decoded_rows(ri) + (0 if same else decoded_rows(rj))
            rows_std = ni + (0 if same else nj)
            flops = (ni * ni if same else 2 * ni * nj) * pv
            prof[kind] = {"rows": [ni, nj], "total_s": total, "read_s": fn["_row_block"],
                          "standardize_s": fn["standardize_block"], "blas_s": fn["grm_block_self"],
                          "other_s": total - sum(fn.values()),
                          "ns_per_decoded_genotype": fn["_row_block"] / (rows_dec * pv) * 1e9,
                          "ns_per_standardized_genotype": fn["standardize_block"] / (rows_std * pv) * 1e9,
                          "gflops": flops / fn["grm_block_self"] / 1e9}
        src = prof.get("off-diagonal", prof["diagonal"])
        rates = {"read": src["ns_per_decoded_genotype"], "std": src["ns_per_standardized_genotype"],
                 "gemm": src["gflops"], "syrk": prof["diagonal"]["gflops"]}

        def model(b: int) -> dict:
            bl = gm._blocks(n, b)
            costs, parts = [], {"read+decode": 0.0, "standardize": 0.0, "BLAS": 0.0}
            for a in range(len(bl)):
                for c in range(a, len(bl)):
                    ri_, rj_ = bl[a], bl[c]
                    ni_, nj_ = ri_.stop - ri_.start, rj_.stop - rj_.start
                    same_ = a == c
                    rd = (decoded_rows(ri_) + (0 if same_ else decoded_rows(rj_))) * p * rates["read"] / 1e9
                    sd = (ni_ + (0 if same_ else nj_)) * p * rates["std"] / 1e9
                    bl_s = (ni_ * ni_ * p / rates["syrk"] if same_ else 2 * ni_ * nj_ * p / rates["gemm"]) / 1e9
                    parts["read+decode"] += rd
                    parts["standardize"] += sd
                    parts["BLAS"] += bl_s
                    costs.append(rd + sd + bl_s)
            serial = sum(costs)
            return {"blocks_per_side": len(bl), "tasks": len(costs), "serial_s": serial,
                    "fractions": {k: v / serial for k, v in parts.items()},
                    "largest_task_s": max(costs), "makespan_s": _lpt_makespan(costs, workers),
                    "ideal_s": serial / workers}

        sizes = sorted({block, cs, -(-n // 2), -(-n // 3)})
        out["by_dtype"][dt.name] = {"cases": prof, "rates": rates,
                                    "model": {str(b): model(b) for b in sizes if b <= n}}
    out["workers"] = workers
    # writing one finished block (and its transpose) into a GRM store, as _block_task does
    if hasattr(gm, "_write_block") and len(blocks) > 1:
        wpath = cache / "profile_grm.zarr"
        shutil.rmtree(wpath, ignore_errors=True)
        gm.create_grm_store(wpath, n, block, {})
        ri, rj = blocks[0], blocks[1]
        acc = np.zeros((ri.stop - ri.start, rj.stop - rj.start))
        t0 = time.perf_counter()
        gm._write_block(str(wpath), 0, 1, ri, rj, acc + 0.5)
        out["write_block_s"] = time.perf_counter() - t0
        out["write_ns_per_entry"] = out["write_block_s"] / (2 * acc.size) * 1e9
        shutil.rmtree(wpath, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- report

def fmt_s(s: dict) -> str:
    return f"{s['median_s']:.2f}"


def fmt_range(s: dict) -> str:
    return f"{s['min_s']:.2f}–{s['max_s']:.2f}" if s["repeats"] > 1 else "—"


def fmt_cpu_rss(s: dict) -> str:
    return f"{s['cpu_s_median']:.1f} | {s['peak_rss_mib_median']:,.0f}"


def cfg_label(cfg: dict) -> str:
    blas = cfg.get("worker_blas", {})
    bt = ",".join(str(x) for x in blas.get("blas_threads", [])) or "?"
    if cfg["force_blas"]:
        how = f"BLAS {bt}/worker (forced by threadpoolctl)"
    else:
        how = f"BLAS {bt}/worker (bigmm.cluster asks {cfg.get('requested_blas')})"
    return (f"{cfg['workers']} worker × {cfg['threads']} thread, {how}, {cfg['dtype_name']}, block "
            f"{cfg['block_size']} ({cfg['blocks_per_side']}×{cfg['blocks_per_side']})")


def build_table(res: dict) -> str:
    rows = ["| stage | setup | median s | min–max s | CPU s | peak RSS MiB (sum) | GFLOP/s (n²p/t) "
            "| % of BLAS peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    st = res["stages"]
    rows.append(f"| ingest | bed → Zarr, driver only | {fmt_s(st['ingest'])} | {fmt_range(st['ingest'])} | "
                f"{fmt_cpu_rss(st['ingest'])} | | |")
    rows.append(f"| stats | variant_stats + gcta standardization, cluster {res['configs'][0]['workers']}×"
                f"{res['configs'][0]['threads']} | {fmt_s(st['stats'])} | {fmt_range(st['stats'])} | "
                f"{fmt_cpu_rss(st['stats'])} | | |")
    for i, cfg in enumerate(res["configs"]):
        s = st[f"grm {cfg['spec']}"]
        pk = peak_for(res, cfg["dtype_name"])
        tag = " **(pipeline default)**" if cfg.get("is_default") else ""
        rows.append(f"| grm `{cfg['spec']}` | {cfg_label(cfg)}{tag} | {fmt_s(s)} | {fmt_range(s)} | "
                    f"{fmt_cpu_rss(s)} | {s['gflops']:.1f} | {100 * s['gflops'] / pk['gflops']:.0f}% "
                    f"({cfg['dtype_name']}) |")
    if "plink2" in st:
        s = st["plink2"]
        pk = peak_for(res, "float64")
        rows.append(f"| plink2 | --make-rel square bin --threads {res['plink2']['threads']} (whole job: read "
                    f".bed, freqs, GRM, write) | {fmt_s(s)} | {fmt_range(s)} | {fmt_cpu_rss(s)} | "
                    f"{s['gflops']:.1f} | {100 * s['gflops'] / pk['gflops']:.0f}% (float64) |")
    if "eigh" in st:
        s = st["eigh"]
        rows.append(f"| eigh | exact_spectrum (scipy eigh, evd), driver, {res['eigh_threads']} BLAS threads | "
                    f"{fmt_s(s)} | {fmt_range(s)} | {fmt_cpu_rss(s)} | | |")
    for key, s in res["blas_peak"].items():
        pk = peak_for(res, s["dtype"])
        rows.append(f"| BLAS | NumPy A @ A.T (SYRK), 5000 × 8192 {s['dtype']}, {s['threads']} thread(s) | "
                    f"{fmt_s(s)} | {fmt_range(s)} | {fmt_cpu_rss(s)} | {s['gflops']:.1f} | "
                    f"{100 * s['gflops'] / pk['gflops']:.0f}% |")
    return "\n".join(rows)


def build_report(res: dict) -> str:
    m = res["machine"]
    blas = "; ".join(f"{b['package']}: {b['internal_api']} {b['version']} ({b['architecture']}, "
                     f"{b['threading_layer']})" for b in m["blas"])
    st = res["stages"]
    c0 = res["configs"][0]
    g0 = st[f"grm {c0['spec']}"]
    lines = [f"Run {res['date']} · n = {res['n']:,} samples × p = {res['p']:,} variants "
             f"({res['p_kept']:,} kept), simulated (seed {res['seed']}, no missing calls) · "
             f"repeats = {res['repeats']} (median; min–max shown) · variant chunk {res['chunk']}",
             "",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']:.1f} GiB RAM; BLAS (threadpoolctl) "
             f"{blas}; bigmm {m['bigmm']} (git {m['git_commit']}"
             f"{', modified: ' + ', '.join(m['bigmm_modified_files']) if m['bigmm_modified_files'] else ''}), "
             f"numpy {m['numpy']}, scipy {m['scipy']}, dask {m['dask']}, zarr {m['zarr']}, Python {m['python']}; "
             f"{res.get('plink2', {}).get('version', 'plink2 not run')}. Load average at start / end: "
             f"{m['loadavg_start'][0]:.2f} / {res['loadavg_end'][0]:.2f} (a shared machine: other jobs ran "
             f"during the run, hence medians, CPU times and paired ratios).",
             "",
             build_table(res),
             "",
             "- Peak RSS: the maximum over the stage of the summed RSS of the driver and all its descendant "
             "processes (Dask nanny/worker processes, idle ones included: "
             f"{g0['start_rss_mib_median']:,.0f} MiB at the start of the `{c0['spec']}` GRM stage), sampled every "
             "0.2 s (the driver's own share from its VmHWM); plink2: its ru_maxrss. Shared pages count once "
             "per process. CPU s: user + system time summed over the same processes (median).",
             "- GFLOP/s = n²·p / t, the flop count of one triangle of X Xᵀ (half of a full GEMM's 2n²p); "
             "NumPy's A @ A.T is SYRK and is counted the same way (n²·k). % of BLAS peak: against A @ A.T on "
             f"all {m['nproc']} cores in the same precision as the GRM's products (plink2: float64).",
             ]
    for dt in ("float64", "float32"):
        one, allc = res["blas_peak"].get(f"{dt}/1"), peak_for(res, dt)
        if one and m["nproc"] > 1 and allc["gflops"] < 0.75 * m["nproc"] * one["gflops"]:
            lines.append(f"- The all-core {dt} A @ A.T ran at {allc['gflops']:.0f} GFLOP/s (best of the repeats "
                         f"{allc['gflops_best']:.0f}), under {m['nproc']} × its 1-thread rate "
                         f"({m['nproc'] * one['gflops']:.0f}): other jobs held cores, so the % of peak is "
                         f"flattering; against {m['nproc']} × the 1-thread rate the GRMs in {dt} reach "
                         + ", ".join(f"`{c['spec']}` {100 * st['grm ' + c['spec']]['gflops'] / (m['nproc'] * one['gflops']):.0f}%"
                                     for c in res["configs"] if c["dtype_name"] == dt) + ".")
    if "plink2" in st:
        p2 = st["plink2"]
        e2e = st["ingest"]["median_s"] + st["stats"]["median_s"] + g0["median_s"]
        e2e_cpu = st["ingest"]["cpu_s_median"] + st["stats"]["cpu_s_median"] + g0["cpu_s_median"]
        lines.append(
            f"- **plink2 / bigmm** (GRM, `{c0['spec']}`, the pipeline default): wall {p2['median_s']:.2f} / "
            f"{g0['median_s']:.2f} s = **{p2['median_s'] / g0['median_s']:.2f}**; median of the per-repeat ratios "
            f"(plink2 run right after each GRM): **{p2['paired_ratio_median']:.2f}**; CPU time "
            f"{p2['cpu_s_median']:.1f} / {g0['cpu_s_median']:.1f} s = {p2['cpu_s_median'] / g0['cpu_s_median']:.2f} "
            f"(> 1: bigmm faster). plink2's time covers its whole job (read the .bed, frequencies, GRM, write "
            f"{8 * res['n'] ** 2 / 1e6:,.0f} MB); bigmm's ingest + stats + GRM take {e2e:.2f} s wall, {e2e_cpu:.1f} s CPU "
            f"(plink2 / that = {p2['median_s'] / e2e:.2f} wall, {p2['cpu_s_median'] / e2e_cpu:.2f} CPU).")
    for cfg in res["configs"]:
        a = cfg.get("agreement")
        if a and cfg.get("agreement_first_of_dtype"):
            lines.append(f"- Agreement with plink2 --make-rel, bigmm {cfg['dtype_name']} products (`{cfg['spec']}`): "
                         f"max |K_bigmm − K_plink2| = {a['max_abs_diff']:.2e} (diagonal {a['max_abs_diff_diag']:.2e}, "
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
        ts = cfg.get("task_stream")
        if ts:
            lines.append(f"- GRM `{cfg['spec']}` task stream (last repeat): {ts['tasks']} block tasks of "
                         + ", ".join(f"{x:.1f}" for x in ts["task_s"])
                         + f" s; makespan {ts['makespan_s']:.1f} s, worker utilization {100 * ts['utilization']:.0f}%.")
    if "eigh" in st:
        lines.append(f"- eigh: K loaded from the Zarr GRM first ({res['k_load_s']:.2f} s, not included); the "
                     "cluster is closed by then, so the RSS is the driver's.")
    prof = res.get("profile")
    if prof:
        for dt, d in prof["by_dtype"].items():
            cs = d["cases"]
            parts = []
            for kind, c in cs.items():
                parts.append(f"{kind} {c['rows'][0]}×{c['rows'][1]}: {c['total_s']:.2f} s = read+decode "
                             f"{c['read_s']:.2f} + standardize {c['standardize_s']:.2f} + BLAS {c['blas_s']:.2f} "
                             f"({c['gflops']:.1f} GFLOP/s) + other {c['other_s']:.2f}")
            r = d["rates"]
            lines.append(f"- Profile, {dt} products, {prof['variant_chunks']} variant chunks, 1 BLAS thread "
                         f"(bigmm.grm.grm_block under cProfile): " + "; ".join(parts)
                         + f". Per genotype: read+decode {r['read']:.2f} ns, standardize {r['std']:.2f} ns.")
            mods = []
            for b, mm in d["model"].items():
                fr = mm["fractions"]
                mods.append(f"block {b} ({mm['blocks_per_side']}×{mm['blocks_per_side']}, {mm['tasks']} tasks): "
                            f"serial {mm['serial_s']:.1f} s (read {100 * fr['read+decode']:.0f}%, standardize "
                            f"{100 * fr['standardize']:.0f}%, BLAS {100 * fr['BLAS']:.0f}%), largest task "
                            f"{mm['largest_task_s']:.1f} s, makespan on {prof['workers']} workers "
                            f"{mm['makespan_s']:.1f} s (ideal {mm['ideal_s']:.1f})")
            lines.append(f"  Model of the whole GRM from these rates, {dt}: " + "; ".join(mods) + ".")
        if "write_ns_per_entry" in prof:
            lines.append(f"- Writing a finished block and its transpose into the Zarr GRM: "
                         f"{prof['write_ns_per_entry']:.1f} ns per entry ({prof['write_block_s']:.2f} s for block (0, 1)).")
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
                    help="GRM block when a config does not say (default: the pipeline's default_block_size)")
    ap.add_argument("--plink2", default="plink2", help="plink2 executable")
    ap.add_argument("--plink2-threads", type=int, default=2)
    ap.add_argument("--plink2-memory", type=int, default=4000, help="plink2 --memory, MiB")
    ap.add_argument("--no-plink2", action="store_true")
    ap.add_argument("--no-eigh", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the one-block profile")
    ap.add_argument("--write-docs", action="store_true", help="write the section to docs/benchmarks.md")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    import logging

    import zarr
    from threadpoolctl import threadpool_limits

    import bigmm
    from bigmm.cluster import blas_threads_per_worker, dask_client
    from bigmm.config import ClusterConfig, GrmConfig

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    ncpu = os.cpu_count() or 1
    default_dtype = args.dtype or getattr(GrmConfig(), "dtype", "float64")
    configs = [parse_config(s.strip()) for s in args.configs.split(",") if s.strip()]
    res: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "n": args.n,
                 "p": args.p, "repeats": args.repeats, "seed": args.seed, "machine": machine_info(),
                 "stages": {}, "configs": configs, "default_dtype": default_dtype,
                 "command": "python scripts/bench_grm.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    st = res["stages"]

    prefix = simulate_cached(cache, args.n, args.p, args.seed)

    log("BLAS peak")
    res["blas_peak"] = blas_peak(args.repeats)

    store_path = cache / f"cohort_n{args.n}_p{args.p}_seed{args.seed}.zarr"
    log("stage ingest")
    runs = [timed(lambda: bigmm.ingest_plink(prefix, store_path, overwrite=True), "ingest")
            for _ in range(args.repeats)]
    st["ingest"] = summarize(runs)
    store = bigmm.open_store(store_path)
    res["chunk"] = store.chunks[1]

    exe = None
    if not args.no_plink2:
        exe = shutil.which(args.plink2)
        if exe is None:
            print("plink2 not found: apt-get install -y plink2", flush=True)
        else:
            ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
            res["plink2"] = {"exe": exe, "version": ver, "threads": args.plink2_threads,
                             "memory_mib": args.plink2_memory}
    p2_out = cache / f"plink2_rel_n{args.n}_p{args.p}_seed{args.seed}"
    p2_runs: list = []
    pair_ratios: list = []
    rel = None

    gpath = cache / f"grm_n{args.n}_p{args.p}_seed{args.seed}.zarr"
    std = None
    res["cluster_start_s"] = {}
    from distributed import get_task_stream

    seen_dtypes: set = set()
    for i, cfg in enumerate(configs):
        cc = ClusterConfig(workers=cfg["workers"], threads_per_worker=cfg["threads"])
        cfg["requested_blas"] = blas_threads_per_worker(cc.workers, cc.threads_per_worker)
        t0 = time.perf_counter()
        with dask_client(cc) as client:
            res["cluster_start_s"][cfg["spec"]] = time.perf_counter() - t0
            info = client.run(_worker_set_blas, cfg["force_blas"]) if cfg["force_blas"] else client.run(_worker_blas)
            cfg["worker_blas"] = next(iter(info.values()))
            dtype = np.dtype(cfg["dtype"] or default_dtype)
            block = cfg["block"] or args.block_size or pipeline_block(store, cc, dtype)
            cfg.update(dtype_name=dtype.name, block_size=block, blocks_per_side=-(-args.n // block),
                       is_default=(cfg["workers"], cfg["threads"]) == (ClusterConfig().workers,
                                                                       ClusterConfig().threads_per_worker)
                       and not (cfg["force_blas"] or cfg["dtype"] or cfg["block"] or args.dtype or args.block_size))
            log(f"cluster {cfg['spec']}: requested BLAS {cfg['requested_blas']}, workers report {info}; "
                f"{dtype.name}, block {block}")
            if std is None:
                log("stage stats")

                def stats():
                    s = bigmm.variant_stats(store.to_dask())
                    return bigmm.standardization(s, "gcta")

                runs = [timed(stats, "stats") for _ in range(args.repeats)]
                st["stats"] = summarize(runs)
                std = runs[-1]["result"]
                res["p_kept"] = std.n_kept
            log(f"stage grm {cfg['spec']}")
            runs = []
            for r in range(args.repeats):
                shutil.rmtree(gpath, ignore_errors=True)
                with get_task_stream(client) as ts:
                    runs.append(timed(lambda: run_grm(store, std, gpath, block, dtype), f"grm {cfg['spec']}"))
                cfg["task_stream"] = task_stream_summary(ts.data)
                if i == 0 and exe:
                    # the peer right after each GRM of the first config: paired runs see similar load
                    p2_runs.append(run_plink2(exe, prefix, p2_out, args.plink2_threads, args.plink2_memory))
                    pair_ratios.append(p2_runs[-1]["seconds"] / runs[-1]["seconds"])
            s = summarize(runs)
            s["gflops"] = args.n ** 2 * std.n_kept / s["median_s"] / 1e9
            st[f"grm {cfg['spec']}"] = s
        if p2_runs:
            if rel is None:
                rel = np.fromfile(str(p2_out) + ".rel.bin", dtype="<f8").reshape(args.n, args.n)
                ids = [tuple(ln.split()[:2]) for ln in open(str(p2_out) + ".rel.id") if not ln.startswith("#")]
                res["plink2"]["same_sample_order"] = ids == store.sample_ids()
            K = np.asarray(zarr.open_group(str(gpath), mode="r")["K"][...])
            cfg["agreement"] = agreement(K, rel)
            cfg["agreement_first_of_dtype"] = dtype.name not in seen_dtypes
            seen_dtypes.add(dtype.name)
            log(f"agreement {cfg['spec']}: {cfg['agreement']}")
            del K

    if p2_runs:
        s = summarize(p2_runs)
        s["gflops"] = args.n ** 2 * args.p / s["median_s"] / 1e9
        s["paired_ratios"] = pair_ratios
        s["paired_ratio_median"] = statistics.median(pair_ratios)
        st["plink2"] = s
        res["plink2"]["cmd"] = p2_runs[-1]["cmd"]
    del rel

    if not args.no_eigh:
        t0 = time.perf_counter()
        K = np.asarray(zarr.open_group(str(gpath), mode="r")["K"][...])
        res["k_load_s"] = time.perf_counter() - t0
        res["eigh_threads"] = ncpu
        log(f"stage eigh ({ncpu} BLAS threads)")
        with threadpool_limits(limits=ncpu, user_api="blas"):
            runs = [timed(lambda: bigmm.exact_spectrum(K).rank, "eigh") for _ in range(args.repeats)]
        st["eigh"] = summarize(runs)
        res["eigh_rank"] = runs[-1]["result"]
        del K

    if not args.no_profile:
        c0 = configs[0]
        log("profile: one block task")
        res["profile"] = profile_block(store, std, c0["block_size"],
                                       [c0["dtype_name"]] + [d for d in ("float32", "float64") if d != c0["dtype_name"]],
                                       cache, c0["workers"] * c0["threads"])
        log(f"profile: {json.dumps(res['profile'], default=float)}")

    res["loadavg_end"] = os.getloadavg()
    report = build_report(res)
    print(f"\n## {SECTION}\n")
    print(report)
    (cache / "bench_grm_results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    log(f"results: {cache / 'bench_grm_results.json'}")
    if args.write_docs:
        write_docs(args.docs, SECTION, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
