#!/usr/bin/env python
"""One pass over X on 1, 2 and 4 Dask workers of one machine (threads and processes), and a large pass beside its floor.

Part 1, scaling: the same pass (``bigmm.GrmOperator.apply``, float32 products, float64
accumulation, the default kernel) on one simulated cohort store (common.ensure_cohort, as
bench_pass_floor.py makes it, cached in --cache), for each width l (--width: 33, the matrix-free
REML's block of one phenotype, covariates and 30 probes; 250, the randomized spectrum's) on these
local clusters of ``bigmm.pipeline.cluster.dask_client`` (127.0.0.1, worker processes):

``1x1``               1 worker process x 1 thread (the baseline);
``threads k``         1 worker process x k threads (k = 2, 4);
``processes k``       k worker processes x 1 thread (k = 2, 4);
``1x1, BLAS = cores`` 1 worker process x 1 thread with as many BLAS threads as cores (the
                      pipeline's rule for 1 worker: threads x BLAS threads <= cores).

Every other configuration runs 1 BLAS thread per Dask thread (set in each worker with
threadpoolctl, checked), so the Dask threads are the only parallelism and "speed-up" means what
the workers add. One cluster at a time (--configs, in the order given): it starts, makes a
narrow warm-up pass, runs --repeats repeats of every width in turn, and closes; the results file
is written after each configuration. (Clusters kept up side by side, to alternate them within
each repeat, cost too much: on a loaded 2-core machine their idle workers and nannies took much
of the CPU.) k x 1 BLAS threads above the cores is oversubscribed (4 on a 2-core machine): it is
reported anyway, it shows the overhead. Per configuration: wall time, CPU time (driver, workers
and nannies), passes per second, speed-up against 1x1 and
parallel efficiency (speed-up / Dask threads); medians of --repeats, the 1-minute load average
before and after each pass.

Part 2, a large pass beside its floor (--large-n, default 100,000 samples, p = --p; the store in
--large-layout, default 2bit, bigmm's default): the matrix-free-width pass (33) and the randomized
spectrum's (250) (--large-width) with each kernel of --large-kernels (tile, the default, and fold)
on the pipeline's default local cluster (2 x 1), against, in the same run and alternated with
them, their floor's components:

- read + decode every genotype chunk, with the store's own codecs (the chunk file read, CRC32C
  checked, zstd, the 2-bit unpacking: bigmm.chunk_files, chunk by chunk) and as a pass reads (``store.genotypes[...]``,
  which decodes a bigmm store's chunk files itself: bigmm.chunk_files); 2 threads over the chunks;
- standardize into float32 and the BLAS of the two products of width l, measured on the first
  --large-chunks variant chunks (all samples) and scaled to p by the columns: both are linear in
  the columns, and holding all of X's codes (n p bytes, 5 GB at n = 10^5) is what the pass avoids.

The floor of a pass is the larger of decode and BLAS (2 threads each).

Usage::

    python scripts/bench/bench_pass_scaling.py                        # n = 10,000, p = 50,000; + n = 100,000
    python scripts/bench/bench_pass_scaling.py --n 2000 --p 8000 --repeats 1 --no-large   # smoke run
    python scripts/bench/bench_pass_scaling.py --report cache/bench/pass_scaling.json --write-docs --docs docs/performance.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MIB, REPO, add_docs_args, alternate, command_line, du, ensure_cohort,  # noqa: E402
                    fmt_time, log, machine_info, machine_line, md_table, publish, summarize, timed,
                    variant_filter)

SECTION = "Scaling on one machine (scripts/bench/bench_pass_scaling.py)"
MODEL_SECTION = "Biobank scale on paper: the figures (scripts/bench/bench_pass_scaling.py --model)"


def configs(ks, cores: int) -> dict:
    """name -> (workers, threads per worker, BLAS threads per Dask thread)."""
    out = {"1x1": (1, 1, 1)}
    for k in ks:
        if k > 1:
            out[f"threads {k}"] = (1, k, 1)
    for k in ks:
        if k > 1:
            out[f"processes {k}"] = (k, 1, 1)
    if cores > 1:
        out[f"1x1, BLAS {cores}"] = (1, 1, cores)
    return out


def blas_threads_of(client) -> list[int]:
    """The BLAS thread counts threadpoolctl reports in each worker (checked after the plugins)."""
    def probe():
        from threadpoolctl import threadpool_info

        return max(d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas")
    return sorted(client.run(probe).values())


def timed_load(fn, label: str) -> dict:
    """:func:`common.timed` with the 1-minute load average before and after."""
    l0 = os.getloadavg()[0]
    r = timed(fn, label)
    r["load"] = [l0, os.getloadavg()[0]]
    return r


def summarize_load(rr: list[dict]) -> dict:
    return summarize(rr, load_before=[r["load"][0] for r in rr], load_after=[r["load"][1] for r in rr])


# --------------------------------------------------------------------------- part 1

def measure_scaling(args, save=None) -> dict:
    import bigmm
    from bigmm.pipeline.cluster import BlasThreads, dask_client
    from bigmm.pipeline.config import ClusterConfig
    from bigmm.pipeline.memory import task_memory

    c = ensure_cohort(args.cache, args.n, p=args.p, seed=args.seed, pops=10, fst=0.01, h2=[0.5, 0.3],
                      chunks=args.chunks, sim_block=1024, need_plink=False, layout=args.layout)
    store = bigmm.open_store(c["paths"]["zarr"])
    n, p = store.genotypes.shape
    std = variant_filter(store, args.min_maf, args.max_missing)
    cores = os.cpu_count() or 1
    cfgs = configs(args.workers, cores)
    rng = np.random.default_rng(0)
    Ms = {l: rng.standard_normal((n, l)) for l in args.width}
    out = {"n": n, "p": p, "p_kept": std.n_kept, "chunks": list(store.chunks), "tag": c["tag"], "cores": cores,
           "layout": store.layout, "kernel": bigmm.passes.DEFAULT_KERNEL,
           "widths": list(args.width), "memory_limit": args.memory_limit, "configs": {}}
    runs = {}
    out["order"] = list(args.configs)
    for name in args.configs:  # in the order asked
        w, t, b = cfgs[name]
        cc = ClusterConfig(workers=w, threads_per_worker=t, memory_limit=args.memory_limit)
        with dask_client(cc) as client:
            client.register_plugin(BlasThreads(b), name=f"bench-blas-{b}")  # after the pipeline's rule
            blas = blas_threads_of(client)
            if set(blas) != {b}:
                raise SystemExit(f"{name}: workers report BLAS threads {blas}, wanted {b}")
            op = bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=task_memory(cc))
            op.apply(Ms[args.width[0]][:, :1])  # warm-up: the workers import bigmm and open the store
            plans = {l: op.plan(l) for l in args.width}
            out["configs"][name] = {"workers": w, "threads": t, "blas": b, "tasks": len(plans[args.width[0]].groups),
                                    "sub_width": {l: pl.sub_width for l, pl in plans.items()}}
            log(f"{name}: {w} worker(s) x {t} thread(s), BLAS {blas}, {plans[args.width[0]].describe()}")
            methods = {f"{name} l={l}": (lambda l, name: lambda _r: timed_load(
                lambda: op.apply(Ms[l])[0].shape, f"{name} l={l}"))(l, name) for l in args.width}
            runs.update(alternate(args.repeats, methods))
        if save is not None:  # after each configuration: a run cut short keeps what it measured
            save({**out, "runs": {m: summarize_load(rr) for m, rr in runs.items()}})
    out["runs"] = {m: summarize_load(rr) for m, rr in runs.items()}
    return out


# --------------------------------------------------------------------------- part 2

def store_reader(store):
    """``read(i0, a, b)``: the chunk at sample ``i0``, variant ``a`` of a cohort store decoded as
    its own codecs do (the chunk file read, CRC32C checked, zstd, and for the ``2bit`` layout the
    unpacking: ``bigmm.chunk_files.ChunkFiles.chunk``), at the chunk's full shape."""
    from bigmm.chunk_files import ChunkFiles

    files = ChunkFiles.of(store.genotypes.arr)
    if files is None:
        raise SystemExit(f"{store.path}: not a store whose chunk files bigmm decodes itself")
    rc, cc = files.chunks
    return lambda i0, a, b: files.chunk(i0 // rc, a // cc)


def measure_large(args) -> dict:
    """The large pass at each width, every kernel of --large-kernels, alternated with its floor's
    components: read + decode (the store's codecs; and through Zarr, as the pass reads), and,
    on the first --large-chunks variant chunks scaled to p, standardizing and the BLAS of the two
    products."""
    import bigmm
    from bench_pass_floor import read_all
    from bigmm.genotypes import standardize_block
    from bigmm.pipeline.cluster import dask_client
    from bigmm.pipeline.config import ClusterConfig
    from bigmm.pipeline.memory import task_memory
    from threadpoolctl import threadpool_limits

    n = args.large_n
    c = ensure_cohort(args.cache, n, p=args.p, seed=args.seed, pops=1, fst=0.0, h2=[0.5, 0.3],
                      chunks=args.chunks, sim_block=1024, need_plink=False, layout=args.large_layout)
    store = bigmm.open_store(c["paths"]["zarr"])
    n, p = store.genotypes.shape
    rc, cc = store.chunks
    widths = list(args.large_width)
    std = variant_filter(store, args.min_maf, args.max_missing)
    gpath = Path(c["paths"]["zarr"]) / "genotypes"
    read = store_reader(store)
    bounds = [(a, min(p, a + cc)) for a in range(0, p, cc)]
    jobs = [(i0, a, b) for a, b in bounds for i0 in range(0, n, rc)]
    i0, a, b = jobs[-1]
    if not np.array_equal(read(i0, a, b)[:n - i0, :b - a], np.asarray(store.genotypes.arr[i0:, a:b])):
        raise SystemExit("the chunk reader does not decode to the store's genotypes")

    def zarr_read(i0, a, b):
        return np.asarray(store.genotypes[i0:i0 + rc, a:b])

    ccfg = ClusterConfig(workers=2, threads_per_worker=1, memory_limit=args.memory_limit)
    sub = bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=task_memory(ccfg),
                            n_tasks=2).plan(max(widths)).sub_width
    k = min(args.large_chunks, len(bounds))
    sample_cols = [np.asarray(store.genotypes[:, a:b]) for a, b in bounds[:k]]
    cols_sampled = sum(g.shape[1] for g in sample_cols)
    scale_to_p = p / cols_sampled
    pieces = [(j, w0, min(g.shape[1], w0 + sub)) for j, g in enumerate(sample_cols) for w0 in range(0, g.shape[1], sub)]
    M32 = np.random.default_rng(0).standard_normal((n, max(widths))).astype(np.float32)

    def std_pieces(threads):
        def work(share):
            buf = np.empty(n * sub, dtype=np.float32)
            for j, w0, w1 in share:
                a = bounds[j][0]
                standardize_block(sample_cols[j][:, w0:w1], std.center[a + w0:a + w1], std.scale[a + w0:a + w1],
                                  np.float32, out=buf)
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, [pieces[t::threads] for t in range(threads)]))

    X = standardize_block(sample_cols[0][:, :sub], std.center[:sub], std.scale[:sub], np.float32)
    piece_widths = [w1 - w0 for _j, w0, w1 in pieces]

    def blas(threads, l):
        Ml = np.ascontiguousarray(M32[:, :l])

        def work(ws):
            for w in ws:
                Xc = X[:, :w]
                Xc @ (Xc.T @ Ml)
        with threadpool_limits(1, user_api="blas"):
            with concurrent.futures.ThreadPoolExecutor(threads) as ex:
                list(ex.map(work, [piece_widths[t::threads] for t in range(threads)]))

    methods = {
        "decode 2t": lambda _r: timed_load(lambda: read_all(read, jobs, 2), "read+decode (codecs), 2 threads"),
        "zarr 2t": lambda _r: timed_load(lambda: read_all(zarr_read, jobs, 2), "read+decode (store.genotypes), 2 threads"),
        "standardize 2t (sample)": lambda _r: timed_load(lambda: std_pieces(2), f"standardize {cols_sampled} columns, 2 threads"),
    }
    for l in widths:
        methods[f"blas 2t (sample) l={l}"] = (
            lambda _r, l=l: timed_load(lambda: blas(2, l), f"BLAS l={l} on {cols_sampled} columns, 2 threads"))
    Mf = M32.astype(np.float64)
    with dask_client(ccfg):
        ops = {kern: bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=task_memory(ccfg), kernel=kern)
               for kern in args.large_kernels}
        log(f"large pass n={n}: {ops[args.large_kernels[0]].plan(max(widths)).describe()}")
        for op in ops.values():
            op.apply(Mf[:, :1])  # warm-up
        for l in widths:
            for kern, op in ops.items():
                methods[f"pass {kern} l={l}"] = (lambda _r, op=op, l=l, kern=kern: timed_load(
                    lambda: op.apply(Mf[:, :l])[0].shape, f"bigmm pass n={n} l={l} kernel {kern}"))
        runs = alternate(args.repeats, methods)
    return {"n": n, "p": p, "p_kept": std.n_kept, "chunks": [rc, cc], "widths": widths, "sub_width": sub,
            "kernels": list(args.large_kernels), "layout": args.large_layout,
            "store_bytes": du(gpath), "cols_sampled": cols_sampled, "scale_to_p": scale_to_p,
            "cluster": {"workers": 2, "threads": 1, "memory_limit": args.memory_limit},
            "runs": {m: summarize_load(rr) for m, rr in runs.items()}}


# --------------------------------------------------------------------------- model

#: passes over X per estimate, measured (docs/benchmarks.md, docs/matrix_free.md, docs/stages.md), and the
#: columns l of their blocks: (estimate, passes, l of the passes, where the count comes from)
ESTIMATES = [
    ("matrix-free REML, 1 phenotype (c = 3, 30 probes)", 15, [33],
     "14 at n = 100,000 (1 + 13 Lanczos steps; 10, 13 at n = 10,000, 25,000), rounded up"),
    ("randomized spectrum, k = 200 (block Krylov, q = 3)", 5, [250],
     "1 variant statistics + q + 1 = 4 at l = 250"),
    ("several components, m = 8, with the log-likelihoods", 90, [43, 430],
     "44 for the REML fit at n = 100,000 (l = c + 2 + N + m = 43), ~70% more for the ML and reduced fits "
     "and the log dets (up to 10 × the columns): the plan's estimate, 90; half modelled at l = 43, half at 430"),
]


def per_genotype(floor: dict) -> dict:
    """CPU nanoseconds per genotype (one core) of each floor component, from a bench_pass_floor results file."""
    r = floor["runs"]
    g = floor["n"] * floor["p"]
    best = lambda lay: min(r[k]["cpu_s_median"] for k in (f"decode {lay} 1t", f"decode {lay} codec 1t") if k in r)  # noqa: E731
    out = {"genotypes": g, "decode int8-zstd1": best("int8-zstd1"), "decode 2bit-zstd1": best("2bit-zstd1"),
           "standardize": r["standardize 1t"]["cpu_s_median"],
           "bits int8-zstd1": floor["layouts"]["int8-zstd1"]["bytes"] * 8 / g,
           "bits 2bit-zstd1": floor["layouts"]["2bit-zstd1"]["bytes"] * 8 / g}
    for l in floor["widths"]:
        out[f"blas {l}"] = r[f"blas l={l}"]["cpu_s_median"]
        out[f"pass {l}"] = r[f"pass fold l={l}"]["cpu_s_median"]
    return {k: (v / g * 1e9 if k.split()[0] in ("decode", "standardize", "blas", "pass") else v) for k, v in out.items()}


def ns_at(rates: dict, kind: str, l: int) -> float:
    """ns per genotype of ``kind`` (blas, pass) at width l: linear in l through the two measured widths."""
    ws = sorted(int(k.split()[1]) for k in rates if k.startswith(kind + " "))
    a, b = ws[0], ws[-1]
    ya, yb = rates[f"{kind} {a}"], rates[f"{kind} {b}"]
    return ya + (yb - ya) * (l - a) / (b - a)


def model(floor: dict, ns: list[int], p: int, threads: int) -> dict:
    """The biobank model: bytes, core-seconds per pass, passes, cores for a one-hour fit, memory."""
    from bigmm.passes import piece_width, task_bytes
    from bigmm.pipeline.memory import TASK_SHARE, WORKER_BASELINE_BYTES
    from bigmm.spectrum import driver_bytes

    rates = per_genotype(floor)
    out = {"rates": rates, "floor": {k: floor[k] for k in ("n", "p", "date", "command") if k in floor}, "p": p,
           "by_n": {}}
    for n in ns:
        g = n * p
        row = {"genotypes": g, "bytes": {"int8": g, "int8-zstd1": g * rates["bits int8-zstd1"] / 8,
                                         "2bit": g / 4, "2bit-zstd1": g * rates["bits 2bit-zstd1"] / 8},
               "core_s": {}, "estimates": [], "memory": {}}
        for l in (33, 43, 250, 430):
            row["core_s"][l] = {"decode int8-zstd1": rates["decode int8-zstd1"] * g / 1e9,
                                "decode 2bit-zstd1": rates["decode 2bit-zstd1"] * g / 1e9,
                                "standardize": rates["standardize"] * g / 1e9,
                                "blas": ns_at(rates, "blas", l) * g / 1e9, "pass": ns_at(rates, "pass", l) * g / 1e9}
        for name, passes, ls, why in ESTIMATES:
            core_s = sum(row["core_s"][l]["pass"] for l in ls) / len(ls) * passes
            floor_s = sum(row["core_s"][l]["decode int8-zstd1"] + row["core_s"][l]["blas"] for l in ls) / len(ls) * passes
            row["estimates"].append({"estimate": name, "passes": passes, "l": ls, "why": why,
                                     "core_h": core_s / 3600, "floor_core_h": floor_s / 3600,
                                     "cores_1h": core_s / 3600, "bytes_read": passes * row["bytes"]["int8-zstd1"]})
        for what, cols, blocks in (("matrix-free REML pass", 33, 1), ("components pass, m = 8", 43, 8),
                                   ("spectrum's widest pass (l + 1 + 30 probes)", 281, 1)):
            w = piece_width(n, 4)
            tb = task_bytes(n, cols, 2048, w, 4, out_blocks=blocks)
            row["memory"][f"{what}: {cols} columns"] = {
                "task_bytes": tb, "sub_width": w,
                "worker_limit": (tb * threads + WORKER_BASELINE_BYTES) / TASK_SHARE}
        row["memory"]["driver of the randomized spectrum (Krylov basis)"] = driver_bytes(n, 250, 3, "krylov")
        # fit_components_matrix_free's driver, its docstring's rule: 8 (m + 4) n (c + 2 + N + m) per phenotype
        # plus 8 m n N for one pattern's probes' products
        row["memory"]["driver of the components fit (per phenotype)"] = 8 * 12 * n * 43 + 8 * 8 * n * 30
        out["by_n"][n] = row
    return out


def model_report(mdl: dict) -> str:
    r = mdl["rates"]
    f = mdl["floor"]
    gib = 2**30
    lines = [f"Rates: CPU nanoseconds per genotype on one core, from the floor table's run ({f.get('date', '?')}, "
             f"n = {f['n']:,} × p = {f['p']:,} = {f['n'] * f['p']:.1e} genotypes; CPU seconds ÷ genotypes): "
             f"read + decode int8 zstd-1 {r['decode int8-zstd1']:.2f} ns, 2-bit zstd-1 {r['decode 2bit-zstd1']:.2f} ns; "
             f"standardize {r['standardize']:.2f} ns; BLAS of the two products "
             + ", ".join(f"l = {k.split()[1]} {v:.2f} ns" for k, v in r.items() if k.startswith("blas "))
             + "; the whole pass (kernel `fold`, driver and workers) "
             + ", ".join(f"l = {k.split()[1]} {v:.2f} ns" for k, v in r.items() if k.startswith("pass "))
             + f". Stored bits per genotype: int8 zstd-1 {r['bits int8-zstd1']:.2f}, 2-bit zstd-1 "
             f"{r['bits 2bit-zstd1']:.2f}. Other widths: linear in l through the two measured ones.", ""]
    rows = []
    for n, row in mdl["by_n"].items():
        b = row["bytes"]
        rows.append([f"{n:,}", f"{row['genotypes']:.2e}", f"{b['int8'] / 1e9:,.0f} GB", f"{b['int8-zstd1'] / 1e9:,.0f} GB",
                     f"{b['2bit'] / 1e9:,.0f} GB", f"{b['2bit-zstd1'] / 1e9:,.0f} GB"])
    lines += [f"**Bytes per pass** (p = {mdl['p']:,}):", "",
              md_table(["n", "genotypes", "int8", "int8 zstd-1", "2-bit", "2-bit zstd-1"], rows), ""]
    rows = []
    for n, row in mdl["by_n"].items():
        for l in (33, 250):
            c = row["core_s"][l]
            rows.append([f"{n:,}", str(l), f"{c['decode int8-zstd1']:,.0f}", f"{c['decode 2bit-zstd1']:,.0f}",
                         f"{c['standardize']:,.0f}", f"{c['blas']:,.0f}",
                         f"{c['decode int8-zstd1'] + c['blas']:,.0f}", f"{c['pass']:,.0f}",
                         f"{c['pass'] / 3600:.2f}"])
    lines += ["**Core-seconds per pass** (one core's work; w workers of one thread each take about this ÷ w "
              "seconds of wall time if nothing else limits them):", "",
              md_table(["n", "l", "decode int8 zstd-1", "decode 2-bit zstd-1", "standardize", "BLAS",
                        "decode + BLAS (floor's work)", "pass (measured rate)", "pass, core-hours"], rows), ""]
    rows = []
    for n, row in mdl["by_n"].items():
        for e in row["estimates"]:
            rows.append([f"{n:,}", e["estimate"], str(e["passes"]), ", ".join(map(str, e["l"])),
                         f"{e['core_h']:,.1f}", f"{e['floor_core_h']:,.1f}", f"{e['cores_1h']:,.0f}",
                         f"{e['bytes_read'] / 1e12:,.1f} TB"])
    lines += ["**Passes per estimate and the cores for a one-hour fit** (core-hours at the pass's measured rate; at "
              "the floor's, decode + BLAS; cores = core-hours ÷ 1 hour, the passes alone):", "",
              md_table(["n", "estimate", "passes", "l", "core-hours", "core-hours at the floor", "cores for 1 hour",
                        "read in all (int8 zstd-1)"], rows), ""]
    rows = []
    for n, row in mdl["by_n"].items():
        m = row["memory"]
        for k, v in m.items():
            if isinstance(v, dict):
                rows.append([f"{n:,}", f"task of a {k} (pieces of {v['sub_width']})", f"{v['task_bytes'] / gib:.1f} GiB",
                             f"{v['worker_limit'] / gib:.1f} GiB"])
            else:
                rows.append([f"{n:,}", k, f"{v / gib:.1f} GiB", "—"])
    lines += ["**Memory** (the library's rules: `bigmm.passes.task_bytes` with `piece_width`, float32 pieces, "
              "variant chunks of 2048; a worker's `memory_limit` from the pipeline's rule inverted: "
              "(task × threads + worker baseline) ÷ task share, 1 thread; `bigmm.spectrum.driver_bytes`; "
              "`fit_components_matrix_free`'s documented driver memory):", "",
              md_table(["n", "what", "bytes", "worker memory_limit (1 thread)"], rows), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- report

def _load(s: dict) -> str:
    return f"{statistics.median(s['load_before']):.1f} → {statistics.median(s['load_after']):.1f}"


def scaling_report(res: dict) -> list[str]:
    s = res["scaling"]
    r = s["runs"]
    lines = [f"n = {s['n']:,} samples × p = {s['p']:,} variants ({s['p_kept']:,} kept; simulated, 10 populations) · "
             f"store chunks {s['chunks'][0]} × {s['chunks'][1]} ({s.get('layout', 'int8')}, zstd-1) · {s['cores']} cores · "
             f"`GrmOperator.apply`, float32 products, float64 accumulation, kernel `{s.get('kernel', 'fold')}` · local clusters of "
             f"`bigmm.pipeline.cluster.dask_client` on 127.0.0.1, {s['memory_limit']} per worker, one at a "
             f"time, in the order {', '.join(s.get('order', s['configs']))} (the widths in turn within each repeat).", ""]
    for l in s["widths"]:
        base = r.get(f"1x1 l={l}")
        flops = 4.0 * s["n"] * s["p_kept"] * l
        rows = []
        for name, cf in sorted(s["configs"].items(), key=lambda kv: (kv[1]["blas"] > 1, kv[1]["workers"] > 1,
                                                                      kv[1]["threads"] * kv[1]["workers"])):
            x = r.get(f"{name} l={l}")
            if not x:
                continue
            k = cf["workers"] * cf["threads"]
            sp = base["median_s"] / x["median_s"]
            spc = base["cpu_s_median"] / x["cpu_s_median"]
            rows.append([name, f"{cf['workers']} × {cf['threads']}", str(cf["blas"]),
                         "yes" if k * cf["blas"] > s["cores"] else "no", fmt_time(x, 2), f"{x['cpu_s_median']:.1f} s",
                         f"{1 / x['median_s']:.3f}", f"{flops / x['median_s'] / 1e9:.0f}", f"{sp:.2f}",
                         f"{sp / (k * cf['blas']):.2f}", f"{spc:.2f}", _load(x)])
        lines += [f"**Width l = {l}** ({flops / 1e9:,.0f} Gflop per pass):", "",
                  md_table(["configuration", "workers × threads", "BLAS threads each", "over the cores",
                            "wall (median; min–max)", "CPU", "passes/s", "GFLOP/s", "speed-up vs 1x1",
                            "efficiency (speed-up / threads in use)", "CPU ratio 1x1 / this", "load before → after"],
                           rows), ""]
    return lines


def large_report(g: dict) -> list[str]:
    """The large pass beside its floor, one table per width. (Older results files: one width
    ``l``, the int8 store, one kernel.)"""
    r = g["runs"]
    n, p, f = g["n"], g["p"], g["scale_to_p"]
    widths = g.get("widths", [g.get("l")])
    kernels = g.get("kernels", [g.get("kernel")])
    layout = g.get("layout", "int8")
    dec2 = r["decode 2t"]
    st = r["standardize 2t (sample)"]
    st_p = st["median_s"] * f
    out = [f"**A pass at n = {n:,}** beside its floor, p = {p:,} ({g['p_kept']:,} kept; simulated, one population), "
           f"store {g['store_bytes'] / MIB:,.0f} MiB ({layout} layout, zstd-1, chunks {g['chunks'][0]} × "
           f"{g['chunks'][1]}); 2 workers × 1 thread; the floor's components alternated with the passes "
           f"(standardize and BLAS measured on {g['cols_sampled']:,} columns and scaled × {f:.2f}):", ""]
    for l in widths:
        bl = r.get(f"blas 2t (sample) l={l}", r.get("blas 2t (sample)"))
        bl_p = bl["median_s"] * f
        floor = max(dec2["median_s"], bl_p)
        flops = 4.0 * n * p * l
        rows = [[f"read + decode ({layout}, the store's codecs, 2 threads)", fmt_time(dec2, 2),
                 f"{dec2['cpu_s_median']:.1f} s", "measured", _load(dec2)]]
        if "zarr 2t" in r:
            z = r["zarr 2t"]
            rows.append(["read + decode as a pass reads (`store.genotypes[...]`: bigmm.chunk_files; 2 threads)", fmt_time(z, 2),
                         f"{z['cpu_s_median']:.1f} s", "measured", _load(z)])
        rows += [[f"standardize into float32 (2 threads, pieces of {g['sub_width']})", f"{st_p:.2f} s",
                  f"{st['cpu_s_median'] * f:.1f} s", "sampled", _load(st)],
                 [f"BLAS, the two float32 products of width {l} (2 threads × 1 BLAS thread)", f"{bl_p:.2f} s",
                  f"{bl['cpu_s_median'] * f:.1f} s", "sampled", _load(bl)]]
        ratios = []
        for kern in kernels:
            ps = r.get(f"pass {kern} l={l}", r.get("pass"))
            rows.append([f"**the pass** (`GrmOperator.apply`, kernel `{kern}`)", fmt_time(ps, 2),
                         f"{ps['cpu_s_median']:.1f} s", "measured", _load(ps)])
            ratios.append(f"kernel `{kern}` {ps['median_s'] / floor:.2f}× the floor (wall), "
                          f"{ps['cpu_s_median'] / (dec2['cpu_s_median'] + bl['cpu_s_median'] * f):.2f}× decode + BLAS "
                          f"in CPU seconds")
        out += [f"*Width l = {l}* ({flops / 1e9:,.0f} Gflop per pass):", "",
                md_table(["work", "wall", "CPU", "how", "load before → after"], rows), "",
                f"Floor = max(read + decode on 2 threads, BLAS) = {floor:.2f} s "
                f"({'BLAS' if bl_p >= dec2['median_s'] else 'decode'}-bound); the pass: " + "; ".join(ratios) + ".", ""]
    return out


def run_line(res: dict) -> str:
    return (f"Run {res['date']} · `{res['command']}` · repeats = {res['repeats']} (median; min–max) · load average "
            f"{res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end.")


def report(res: dict) -> str:
    lines = [run_line(res), "", machine_line(res["machine"]) + ".", ""]
    for key, part in (("scaling", scaling_report), ("large", large_report)):
        if res.get(key):
            lines += ([res[key]["run"], ""] if res[key].get("run") else []) + part(res if key == "scaling" else res[key])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--p", type=int, default=50000)
    ap.add_argument("--width", type=int, nargs="+", default=[33, 250], help="columns l of the block M")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="k: 1 x k threads and k x 1 processes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=None,
                    help="configurations to run (default all: 1x1, threads k, processes k, 1x1 BLAS cores)")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="samples,variants per store chunk (default 8192,2048, as bench.py)")
    ap.add_argument("--min-maf", type=float, default=0.01)
    ap.add_argument("--max-missing", type=float, default=0.05)
    ap.add_argument("--memory-limit", default="5GiB", help="per worker")
    ap.add_argument("--no-scaling", action="store_true", help="only the large pass")
    ap.add_argument("--no-large", action="store_true", help="only the scaling")
    ap.add_argument("--large-n", type=int, default=100000)
    ap.add_argument("--large-width", type=int, nargs="+", default=[33, 250])
    ap.add_argument("--layout", default="2bit", choices=["2bit", "int8"], help="the scaling cohort's store layout")
    ap.add_argument("--large-layout", default="2bit", choices=["2bit", "int8"], help="the large cohort's store layout")
    ap.add_argument("--large-kernels", nargs="+", default=["tile", "fold"], help="pass kernels timed (bigmm.passes.KERNELS)")
    ap.add_argument("--large-chunks", type=int, default=4, help="variant chunks standardized and multiplied")
    ap.add_argument("--json", type=Path, default=None, help="results file (default --cache/pass_scaling.json)")
    ap.add_argument("--model", type=Path, default=None, metavar="FLOOR_JSON",
                    help="only print the biobank model from a bench_pass_floor.py results file")
    ap.add_argument("--model-n", type=int, nargs="+", default=[500000, 1000000])
    ap.add_argument("--model-p", type=int, default=500000)
    add_docs_args(ap)
    ap.add_argument("--report", type=Path, nargs="+", default=None,
                    help="only write the report of these results files (parts of separate runs merged)")
    args = ap.parse_args(argv)
    if args.model is not None:
        mdl = model(json.loads(args.model.read_text()), args.model_n, args.model_p, 1)
        publish(MODEL_SECTION, model_report(mdl), args.docs if args.write_docs else None)
        return 0
    if args.report is not None:
        parts = [json.loads(f.read_text()) for f in args.report]
        res = parts[0]
        for part in parts[1:]:  # the first file's run line; the others' parts, each with its own run line
            for key in ("scaling", "large"):
                if part.get(key):
                    res[key] = {**part[key], "run": run_line(part)}
        publish(SECTION, report(res), args.docs if args.write_docs else None)
        return 0
    if args.configs is None:
        args.configs = list(configs(args.workers, os.cpu_count() or 1))
    args.cache.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    res = {"machine": machine_info()}
    path = args.json or args.cache / "pass_scaling.json"

    def save(part: dict) -> None:
        res.update(scaling=part, repeats=args.repeats, load=[load0, os.getloadavg()[0]],
                   command=command_line(__file__, argv),
                   date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        path.write_text(json.dumps(res, indent=1, default=float) + "\n")

    if not args.no_scaling:
        res["scaling"] = measure_scaling(args, save)
    if not args.no_large:
        res["large"] = measure_large(args)
    res.update(repeats=args.repeats, load=[load0, os.getloadavg()[0]], command=command_line(__file__, argv),
               date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    path.write_text(json.dumps(res, indent=1, default=float) + "\n")
    log(f"results in {path}")
    publish(SECTION, report(res), args.docs if args.write_docs else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
