#!/usr/bin/env python
"""The benchmark suite: bigmm against its peers, side by side in one run, on the same data.

Workloads (``python scripts/bench/bench.py WORKLOAD ...``; ``all`` runs them in this order):

``blas``      The machine's BLAS rate in this run: NumPy float32 ``A @ A.T`` of the GRM's shape
              (n x p = --grm-n x --p; NumPy calls SYRK: n² p flops), float64 of a quarter of
              the variants, and the in-memory product of a randomized pass, ``A (Aᵀ V)`` with
              V of l = --rank + --oversample columns (4 n p l flops), on all cores and on one.
``floor``     One pass over X on the cluster (``bigmm.GrmOperator.apply``), and its floor: reading
              and decoding every chunk of the genotype store (Zarr), then the same plus the fused
              standardization to float32, with nothing else; bytes read per pass (the store's
              chunks on disk).
``grm``       The GRM at n = --grm-n: bigmm (the grm stage's own build, build_grm_store: K and
              GCTA's per-pair call counts N in a Zarr GRM store, in the stage's blocks, float32
              products; --grm-k-only adds K alone, as this benchmark built it before, alternated
              with it), ``plink2 --make-rel square bin``,
              ``gemma -gk 1`` (centred kinship, GEMMA's text output) and a plain ``dask.array``
              ``X @ X.T`` on the same lazy standardized float32 X written to Zarr.
``spectrum``  Top-20 and top-200 eigenvalues at n = 10,000 (a structured and an unrelated
              cohort) and 25,000 (structured): bigmm's randomized block Krylov spectrum (its
              defaults), ``dask.array.linalg.svd_compressed`` (same k, oversampling and power
              iterations, on the same lazy X), ``sklearn.utils.extmath.randomized_svd`` on X held
              in memory (float32; the load is timed apart) and ``plink2 --pca approx`` (k <= 100:
              plink2 refuses more). Accuracy against exact eigenvalues (GRM + ``eigh``, cached)
              where n <= --exact-max-n, else against a float64 block Krylov reference with many
              more passes (cached; its Ritz residuals bound its own error).
``e2e``       End to end (``bigmm run`` of a config, ingest excluded, the cohort already in Zarr):
              n = --grm-n exact and n = 100,000 randomized k = --rank.
``reml``      REML alone (``bigmm.fit_reml``, rotation included) of 1, 100 and 10,000 phenotypes
              on one reduced spectrum, n = 100,000, k = --rank (U a random orthonormal basis).
``report``    Only write the tables from the saved results.

Every figure is the median of --repeats runs (min-max shown); peers run alternately with bigmm
so pairs see similar load on a shared machine. Peak RSS is the largest sampled sum over the
driver and all its descendant processes (Dask nanny and worker processes, every 0.2 s; the
driver's own kernel high-water mark where it is larger); for a peer process it is its exact
``ru_maxrss``. Results accumulate in ``--cache``/results.json (one entry per workload, with the
machine and git state); ``--write-docs`` renders all of them into docs/benchmarks.md.

Cohorts are simulated once with ``bigmm.simulate`` (Zarr, chunks --chunks samples x variants, and
a PLINK fileset where a peer needs one) and cached in --cache (git-ignored; common.ensure_cohort).

Usage::

    python scripts/bench/bench.py all --write-docs          # everything (about 1.5 h on 2 cores)
    python scripts/bench/bench.py grm spectrum --repeats 1  # some workloads
    python scripts/bench/bench.py all --small --repeats 1   # smoke run at toy sizes (minutes)

Peers: ``apt-get install -y plink2 gemma`` (Debian); ``pip install -e '.[bench]'`` for
scikit-learn. A missing peer is skipped (the log says so) and the table says "not installed".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MIB, REPO, add_docs_args, alternate, bigmm_spectrum, cluster_config, cluster_section,  # noqa: E402
                    du, ensure_cohort, fmt_time, grm_block_size, log, machine_info,
                    machine_line, md_table, measure_spectra, peer_exe, plink2_pca, publish, reference,
                    run_e2e, run_peer, summarize, svd_compressed, task_memory, timed, timed_grm, variant_filter)

SECTION = "Benchmark suite (scripts/bench/bench.py)"
WORKLOADS = ("blas", "floor", "grm", "spectrum", "e2e", "reml")


def cohort(args, n: int, structured: bool = True, plink: bool | None = None) -> dict:
    """The cached cohort; a PLINK fileset beside the store up to n = 25,000 (the peers' sizes)."""
    c = ensure_cohort(args.cache, n, p=args.p, seed=args.seed, pops=10 if structured else 1,
                      fst=0.01 if structured else 0.0, h2=[0.5, 0.3], chunks=args.chunks, sim_block=1024,
                      need_plink=n <= 25000 if plink is None else plink)
    c["kind"] = "structured" if structured else "unrelated"
    return c


def open_cohort(args, c: dict):
    import bigmm

    store = bigmm.open_store(c["paths"]["zarr"])
    return store, du(Path(c["paths"]["zarr"]) / "genotypes")


def std_of(store, args):
    return variant_filter(store, args.min_maf, args.max_missing)


# --------------------------------------------------------------------------- blas

def w_blas(args) -> dict:
    from threadpoolctl import threadpool_limits

    from bigmm.spectrum import subspace_width

    n, p = args.grm_n, args.p
    l = subspace_width(args.rank, args.oversample, n)
    rng = np.random.default_rng(0)
    out: dict = {"n": n, "p": p, "l": l}
    A = rng.standard_normal((n, p), dtype=np.float32)
    A @ A[:512].T  # warm the thread pool
    runs = [timed(lambda: (A @ A.T).shape, f"float32 A@A.T {n}x{p}") for _ in range(args.repeats)]
    out["syrk_f32"] = summarize(runs, flops=float(n) * n * p)
    V = rng.standard_normal((n, l), dtype=np.float32)
    for threads in sorted({1, os.cpu_count() or 1}):
        with threadpool_limits(limits=threads, user_api="blas"):
            runs = [timed(lambda: (A @ (A.T @ V)).shape, f"float32 pass A(AᵀV) l={l}, {threads} thread(s)")
                    for _ in range(args.repeats)]
        out[f"pass_f32_{threads}t"] = summarize(runs, flops=4.0 * n * p * l, threads=threads)
    A = V = None  # free before the float64 matrix
    p4 = max(1, p // 4)
    A = rng.standard_normal((n, p4))
    runs = [timed(lambda: (A @ A.T).shape, f"float64 A@A.T {n}x{p4}") for _ in range(args.repeats)]
    out["syrk_f64"] = summarize(runs, flops=float(n) * n * p4, p=p4)
    for key in ("syrk_f32", "pass_f32_1t", f"pass_f32_{os.cpu_count()}t", "syrk_f64"):
        if key in out:
            out[key]["gflops"] = out[key]["flops"] / out[key]["median_s"] / 1e9
            log(f"  {key}: {out[key]['gflops']:.0f} GFLOP/s")
    return out


# --------------------------------------------------------------------------- floor

def _touch(block):
    return np.zeros((1, 1) if block.ndim == 2 else (1,), dtype=np.int64)


def w_floor(args) -> dict:
    import bigmm
    from bigmm.pipeline.cluster import dask_client
    from bigmm.spectrum import subspace_width

    out: dict = {"cohorts": []}
    for n in args.floor_n:
        l = subspace_width(args.rank, args.oversample, n)
        c = cohort(args, n)
        store, nbytes = open_cohort(args, c)
        with dask_client(cluster_config(args)):
            std = std_of(store, args)
            G = store.to_dask()
            op = bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=task_memory(args))
            M = np.random.default_rng(0).standard_normal((n, l))

            def read(A):
                return A.map_blocks(_touch, dtype=np.int64, chunks=(1, 1)).sum().compute()

            runs = alternate(args.repeats, {
                "read_decode": lambda _r: timed(lambda: read(G), f"read+decode n={n}"),
                "read_decode_standardize": lambda _r: timed(
                    lambda: read(bigmm.standardized(G, std, dtype=np.float32)), f"read+decode+standardize n={n}"),
                "pass": lambda _r: timed(lambda: op.apply(M)[0].shape, f"bigmm pass l={l} n={n}")})
        rec = {"n": n, "p": store.genotypes.shape[1], "p_kept": std.n_kept, "l": l, "kind": c["kind"],
               "bytes_read": nbytes, "chunks": list(store.chunks), "n_chunks": G.npartitions,
               **{m: summarize(rr) for m, rr in runs.items()}}
        rec["pass"]["flops"] = 4.0 * n * std.n_kept * l
        rec["ratio_pass_to_read"] = rec["pass"]["median_s"] / rec["read_decode"]["median_s"]
        rec["ratio_pass_to_read_std"] = rec["pass"]["median_s"] / rec["read_decode_standardize"]["median_s"]
        log(f"  n={n}: pass / read+decode = {rec['ratio_pass_to_read']:.2f}")
        out["cohorts"].append(rec)
        G = M = None
    return out


# --------------------------------------------------------------------------- grm

def _dask_xxt(store, std, path: Path) -> None:
    import dask.array as da

    import bigmm

    X = bigmm.standardized(store.to_dask(), std, dtype=np.float32)
    shutil.rmtree(path, ignore_errors=True)
    da.to_zarr((X @ X.T) / np.float32(std.n_kept), str(path), overwrite=True)


def _gemma_pheno(c: dict, path: Path) -> None:
    """GEMMA's -p file: the first simulated trait, one line per .fam sample (GEMMA -gk needs one)."""
    with open(c["paths"]["pheno"]) as fh:
        fh.readline()
        vals = {tuple(f[:2]): f[2] for f in (ln.split() for ln in fh) if f}
    with open(f"{c['paths']['plink']}.fam") as fam, open(path, "w") as out:
        for ln in fam:
            v = vals.get(tuple(ln.split()[:2]), "NA")
            out.write(("NA" if v in ("NA", "-9", "") else v) + "\n")


def w_grm(args) -> dict:
    import zarr

    from bigmm.pipeline.cluster import dask_client

    n = args.grm_n
    c = cohort(args, n)
    store, nbytes = open_cohort(args, c)
    work = args.cache / "grm_work"
    work.mkdir(parents=True, exist_ok=True)
    plink2, gemma = peer_exe(args.plink2), peer_exe(args.gemma)
    out: dict = {"n": n, "p": store.genotypes.shape[1], "kind": c["kind"], "bytes_read": nbytes,
                 "peers_missing": [x for x, e in (("plink2", plink2), ("gemma", gemma)) if e is None], "failed": {}}
    threads = str(args.workers * args.threads)
    cc = cluster_config(args)
    with dask_client(cc):
        std = std_of(store, args)
        out["p_kept"] = std.n_kept
        block = out["block"] = grm_block_size(store, cc, np.float32)
        methods = {"bigmm": lambda _r: timed_grm(store, std, work / "bigmm_grm.zarr", block, np.float32, "bigmm GRM")}
        if args.grm_k_only:
            methods["bigmm_k_only"] = lambda _r: timed_grm(store, std, work / "bigmm_grm_k_only.zarr", block,
                                                           np.float32, "bigmm GRM, K only", k_only=True)
        if plink2:
            methods["plink2"] = lambda _r: run_peer(
                [plink2, "--bfile", c["paths"]["plink"], "--make-rel", "square", "bin", "--threads", threads,
                 "--memory", str(args.peer_memory_mib), "--out", str(work / "plink2")], work / "plink2.stdout",
                "plink2 --make-rel")
        if gemma:
            _gemma_pheno(c, work / "gemma.pheno.txt")

            def g(_r):
                shutil.rmtree(work / "gemma_out", ignore_errors=True)
                return run_peer([gemma, "-bfile", c["paths"]["plink"], "-p", str(work / "gemma.pheno.txt"),
                                 "-gk", "1", "-outdir", str(work / "gemma_out"), "-o", "kin"],
                                work / "gemma.stdout", "gemma -gk 1")
            methods["gemma"] = g
        methods["dask_xxt"] = lambda _r: timed(lambda: _dask_xxt(store, std, work / "dask_K.zarr"), "dask X @ X.T")
        runs = alternate(args.repeats, methods, out["failed"])
    for m, rr in runs.items():
        out[m] = summarize(rr, flops=float(n) * n * std.n_kept, cmd=rr[0].get("cmd"))
    # agreement of the matrices (upper triangle of bigmm's blocked store)
    K = np.asarray(zarr.open_group(str(work / "bigmm_grm.zarr"), mode="r")["K"][...])
    iu = np.triu_indices(n)
    others = {"bigmm_k_only": lambda: np.asarray(zarr.open_group(str(work / "bigmm_grm_k_only.zarr"), mode="r")["K"]),
              "plink2": lambda: np.fromfile(str(work / "plink2.rel.bin"), dtype="<f8").reshape(n, n),
              "dask_xxt": lambda: np.asarray(zarr.open_array(str(work / "dask_K.zarr"), mode="r")[...], np.float64)}
    out["max_abs_diff_vs_bigmm"] = {m: float(np.abs(K[iu] - load()[iu]).max()) for m, load in others.items()
                                    if m in runs}
    out["note_gemma"] = ("gemma -gk 1 is the centred kinship (no scaling), another matrix than the GCTA GRM; "
                         "its agreement with bigmm's centred GRM is tested against a fixture (tests/data/gemma)")
    log(f"  agreement with bigmm (max |ΔK|): {out['max_abs_diff_vs_bigmm']}")
    K = None
    for f in ("plink2.rel.bin", "bigmm_grm.zarr", "bigmm_grm_k_only.zarr", "dask_K.zarr", "gemma_out"):
        shutil.rmtree(work / f, ignore_errors=True) if (work / f).is_dir() else (work / f).unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- spectrum

def load_x(store, std) -> np.ndarray:
    """The standardized float32 X in the driver's memory, one row chunk at a time (threads in this
    process: a single result of n·p·4 bytes would not fit one Dask worker)."""
    import bigmm

    X = bigmm.standardized(store.to_dask(), std, dtype=np.float32)
    out = np.empty(X.shape, dtype=np.float32)
    r0 = 0
    for h in X.chunks[0]:
        out[r0:r0 + h] = X[r0:r0 + h].compute(scheduler="threads")
        r0 += h
    return out


def sklearn_svd(Xm: np.ndarray, k: int, oversample: int, q: int, seed: int, p: int) -> dict:
    from sklearn.utils.extmath import randomized_svd

    r = timed(lambda: randomized_svd(Xm, k, n_oversamples=oversample, n_iter=q, random_state=seed)[1],
              f"sklearn randomized_svd k={k}")
    r.update(s=np.asarray(r["result"], np.float64) ** 2 / p, passes=f"{2 * q + 2} half (in memory)")
    return r


def w_spectrum(args) -> dict:
    from bigmm.pipeline.cluster import dask_client
    from bigmm.spectrum import DEFAULT_POWER_ITERS

    have_sklearn = "sklearn" in args.methods and importlib.util.find_spec("sklearn") is not None
    if "sklearn" in args.methods and not have_sklearn:
        log("scikit-learn not installed (pip install -e '.[bench]'): randomized_svd skipped")
    plink2 = peer_exe(args.plink2) if "plink2" in args.methods else None
    q = DEFAULT_POWER_ITERS["krylov"] if args.power_iters is None else args.power_iters
    os_, qa, mem = args.oversample, args.bigmm_accurate_q, task_memory(args)
    out: dict = {"q": q, "oversample": os_, "cases": [],
                 "peers_missing": (["plink2"] if not plink2 else []) + ([] if have_sklearn else ["sklearn"])}
    for spec in args.spectrum_cohorts:
        n, kind = int(spec.split(":")[0]), spec.split(":")[1]
        c = cohort(args, n, structured=(kind == "structured"))
        store, _ = open_cohort(args, c)
        with dask_client(cluster_config(args)):
            std = std_of(store, args)
            ref = reference(args.cache, c, store, std, k=max(args.spectrum_k), exact=n <= args.exact_max_n,
                            oversample=args.ref_oversample, power_iters=args.ref_power_iters, memory=mem,
                            filters=f"maf{args.min_maf:g}_miss{args.max_missing:g}")
            Xm, load_s = None, None
            if have_sklearn:
                r = timed(lambda: load_x(store, std), "load X into memory (float32)")
                Xm, load_s = r["result"], r["seconds"]
            for k in args.spectrum_k:
                def bigmm_q(qq):
                    return lambda rep: bigmm_spectrum(store, std, k, oversample=os_, power_iters=qq, seed=rep,
                                                      memory=mem, dtype=np.float32)

                def svd_q(qq, it):
                    return lambda rep: svd_compressed(store, std, k, oversample=os_, power_iters=qq, seed=rep,
                                                      dtype=np.float32, iterator=it)
                methods = {"bigmm": bigmm_q(q)}
                if plink2 and k <= 100 and qa:
                    methods[f"bigmm q = {qa}"] = bigmm_q(qa)
                methods["svd_compressed"] = svd_q(q, "power")
                for qs in args.svd_more_q:
                    # dask's default "power" iterator does not re-normalise between products: in
                    # float32 it overflows from q = 6 on (LinAlgError); "QR" orthonormalises each
                    # product (tsqr), at some cost per half-pass
                    methods[f"svd_compressed q = {qs} (QR)"] = svd_q(qs, "QR")
                if Xm is not None:
                    methods["sklearn"] = lambda rep, k=k: sklearn_svd(Xm, k, os_, q, rep, std.n_kept)
                if plink2 and k <= 100:
                    methods["plink2"] = lambda rep, k=k: plink2_pca(
                        plink2, c["paths"]["plink"], args.cache / f"plink2_pca_{c['tag']}_k{k}", k,
                        args.workers * args.threads, args.peer_memory_mib)
                log(f"spectrum n={n} {kind} k={k}")
                failed: dict = {}
                out["cases"].append({"n": n, "kind": kind, "k": k, "p_kept": std.n_kept, "failed": failed,
                                     "reference": ref["method"], "reference_max_ritz_residual": ref["max_ritz_residual"],
                                     "load_X_s": load_s,
                                     "methods": measure_spectra(args.repeats, methods, ref["s"], failed)})
                args.save_partial("spectrum", out)  # a later failure keeps the cases done
            Xm = None
    return out


# --------------------------------------------------------------------------- end to end

def w_e2e(args) -> dict:
    out: dict = {"runs": []}
    q = 3 if args.power_iters is None else args.power_iters
    for method, n in (("exact", args.grm_n), ("randomized", args.e2e_n)):
        c = cohort(args, n)
        spectrum = ({"method": "exact"} if method == "exact" else
                    {"method": "randomized", "rank": args.rank, "oversample": args.oversample, "power_iters": q})
        runs = [run_e2e(args.cache, c, rep, spectrum=spectrum, cluster=cluster_section(args), timeout=args.e2e_timeout,
                        variants={"min_maf": args.min_maf, "max_missing": args.max_missing})
                for rep in range(args.repeats)]
        walls = [r["wall_s"] for r in runs]
        out["runs"].append({
            "method": method, "n": n, "p": args.p, "k": args.rank if method == "randomized" else None,
            "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls), "repeats": len(runs),
            "stages_median_s": {k: statistics.median(r["stages"][k]["seconds"] for r in runs) for k in runs[0]["stages"]},
            "passes_over_X": runs[0]["passes_over_X"],
            "peak_rss_sum_mib_median": statistics.median(r["peak_rss_sum_mib"] for r in runs),
            "peak_rss_sum_mib_max": max(r["peak_rss_sum_mib"] for r in runs),
            "sum_of_process_peaks_mib_max": max(r["sum_of_process_peaks_mib"] for r in runs),
            "h2": [f["h2"] for f in runs[-1]["fits"]]})
    return out


# --------------------------------------------------------------------------- reml alone

def synthetic_spectrum(n: int, k: int, seed: int = 0):
    """A reduced spectrum: U random orthonormal (n x k), eigenvalues decaying from 30 to 1.5,
    tail eigenvalue so that tr K = n (a GRM's trace)."""
    from scipy.linalg import qr

    from bigmm import Spectrum

    rng = np.random.default_rng(seed)
    U, _ = qr(rng.standard_normal((n, k)), mode="economic")
    s = np.geomspace(30.0, 1.5, k)
    lam = (n - s.sum()) / (n - k)
    return Spectrum(U=np.ascontiguousarray(U), s=s, n=n, trace_K=float(n), diag_K=np.ones(n),
                    method="randomized (synthetic)", rank=k, tail_trace_K2=(n - k) * lam ** 2)


def simulate_phenotypes(spec, m: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """m phenotypes from the reduced model, h² uniform on (0.05, 0.95), with 2 covariates."""
    rng = np.random.default_rng(seed)
    n, U, s, lam = spec.n, spec.U, spec.s, spec.tail
    Z = np.column_stack([np.ones(n), rng.standard_normal(n), rng.integers(0, 2, n)])
    Y = np.empty((n, m))
    h2 = rng.uniform(0.05, 0.95, m)
    for j0 in range(0, m, 500):
        j1 = min(m, j0 + 500)
        w = rng.standard_normal((n, j1 - j0))
        Uw = U.T @ w
        g = U @ (np.sqrt(s)[:, None] * Uw) + np.sqrt(lam) * (w - U @ Uw)
        Y[:, j0:j1] = np.sqrt(h2[j0:j1]) * g + np.sqrt(1 - h2[j0:j1]) * rng.standard_normal((n, j1 - j0))
        Y[:, j0:j1] += Z @ np.array([1.0, 0.5, 0.3])[:, None]
    return Y, Z


def w_reml(args) -> dict:
    import bigmm

    n, k = args.e2e_n, args.rank
    log(f"REML alone: synthetic reduced spectrum n={n}, k={k}")
    spec = synthetic_spectrum(n, k)
    out: dict = {"n": n, "k": k, "cases": []}
    for m in args.reml_m:
        Y, Z = simulate_phenotypes(spec, m)
        runs = [timed(lambda: bigmm.fit_reml(spec, Y, Z), f"fit_reml {m} phenotype(s)") for _ in range(args.repeats)]
        fits = runs[-1]["result"].fits
        s = summarize(runs, m=m, h2_mean=float(np.mean([f.h2 for f in fits])))
        s["per_phenotype_ms"] = 1e3 * s["median_s"] / m
        out["cases"].append(s)
        Y = None
    return out


# --------------------------------------------------------------------------- report

def _gib(mib: float | None) -> str:
    return "—" if mib is None else f"{mib / 1024:.2f} GiB"


def _e(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


RECOVERED_NOTE = (
    " (a): rows recovered from the log of an earlier run of the same command on the same day (`{log}`), whose "
    "spectrum workload then failed at n = 25,000 (X held in one Dask worker for sklearn; fixed) before saving: "
    "times, CPU and RSS of every repeat and the median mean error were logged, the other error columns were not. "
    "Their sklearn rows are left out: in that run X reached the driver as one Dask result, and sklearn took 41.5 s "
    "on it at n = 10,000, k = 200 (structured) against 14.2 s on the same X loaded row chunk by row chunk in the "
    "later run.")


def report(res: dict) -> str:
    L: list[str] = [machine_line(res["machine"]) + ".", ""] if res.get("machine") else []
    goals: list[str] = []
    L += ["Regenerate with `python scripts/bench/bench.py all --write-docs` (about 1.5 h here; one workload: "
          "`python scripts/bench/bench.py grm --write-docs`). Times are medians of the repeats with min–max; "
          "peak RSS is summed over the driver and every Dask worker/nanny process (a peer: its own "
          "ru_maxrss); each workload's date is given with it.", ""]
    b = res.get("blas")
    peak32 = b["syrk_f32"]["gflops"] if b else None
    if b:
        nc = max(int(k.split("_")[-1][:-1]) for k in b if k.startswith("pass_f32_"))
        rows = [(f"float32 `A @ A.T` (SYRK), {nc} threads", b["p"], b["syrk_f32"]),
                (f"float64 `A @ A.T`, {nc} threads", b["syrk_f64"]["p"], b["syrk_f64"]),
                (f"float32 pass `A (Aᵀ V)`, l = {b['l']}, 1 thread", b["p"], b["pass_f32_1t"]),
                (f"float32 pass `A (Aᵀ V)`, {nc} threads", b["p"], b[f"pass_f32_{nc}t"])]
        L += [f"### BLAS rate in the same run ({b['date']})", "",
              md_table(["kernel", "shape", "median", "GFLOP/s"],
                       [[kern, f"{b['n']} x {p}", fmt_time(s), f"{s['gflops']:.0f}"] for kern, p, s in rows], "ll"), ""]
    g = res.get("grm")
    if g:
        names = {"bigmm": f"bigmm (blocks of {g.get('block')}, float32 products, float64 sums, K and per-pair "
                          "counts N as the grm stage builds them) -> Zarr",
                 "bigmm_k_only": "bigmm, K only (no N: this benchmark's build before)",
                 "plink2": "`plink2 --make-rel square bin`", "gemma": "`gemma -gk 1` (text output)",
                 "dask_xxt": "dask.array `X @ X.T` -> Zarr (same lazy float32 X)"}
        rows = []
        for key, label in names.items():
            s = g.get(key)
            if not s:
                if key in g.get("peers_missing", []):
                    rows.append([label, "not installed"] + [""] * 5)
                continue
            gf = s["flops"] / s["median_s"] / 1e9
            rows.append([label, fmt_time(s), f"{s['cpu_s_median']:.0f} s", _gib(s["peak_rss_mib_median"]), f"{gf:.0f}",
                         f"{gf / peak32:.0%}" if peak32 else "", f"{s['median_s'] / g['bigmm']['median_s']:.2f}"])
        rows += [[m, f"failed: {msg}"] + [""] * 5 for m, msg in g.get("failed", {}).items()]
        L += [f"### GRM, n = {g['n']:,}, p = {g['p_kept']:,} ({g['date']})", "",
              md_table(["tool", "wall time", "CPU", "peak RSS", "GFLOP/s (n²p / t)", "of float32 SYRK peak",
                        "time / bigmm"], rows), "",
              "Largest |ΔK| against bigmm's GRM (upper triangle): "
              + ", ".join(f"{k} {v:.1e}" for k, v in g["max_abs_diff_vs_bigmm"].items())
              + f". {g['note_gemma']}. Bytes read per pass over the store: {g['bytes_read'] / MIB:.0f} MiB.", ""]
        bt = g["bigmm"]["median_s"]
        goals.append(f"GRM n = {g['n']:,} under 25 s: {_met(bt < 25)} ({bt:.1f} s; "
                     f"{g['bigmm']['flops'] / bt / 1e9 / peak32:.0%} of the float32 SYRK peak measured in the same run, "
                     f"whose own in-memory product takes {b['syrk_f32']['median_s']:.1f} s)" if peak32 else
                     f"GRM: {bt:.1f} s")
        for peer in ("plink2", "gemma"):
            if g.get(peer):
                r = g[peer]["median_s"] / bt
                goals.append(f"GRM at most a quarter of `{peer}`'s time: {_met(r >= 4)} ({peer} takes {r:.2f}x "
                             f"bigmm's time)")
    f = res.get("floor")
    if f:
        rows = []
        for r in f["cohorts"]:
            gf = r["pass"]["flops"] / r["pass"]["median_s"] / 1e9
            rows.append([f"{r['n']:,}", f"{r['chunks'][0]} x {r['chunks'][1]}", f"{r['bytes_read'] / MIB:.0f} MiB",
                         fmt_time(r["read_decode"]), fmt_time(r["read_decode_standardize"]),
                         f"{fmt_time(r['pass'])} (l = {r['l']})", f"{gf:.0f}", f"{r['ratio_pass_to_read']:.2f}"])
            goals.append(f"pass within 1.5x of read + decode at n = {r['n']:,}: {_met(r['ratio_pass_to_read'] <= 1.5)} "
                         f"({r['ratio_pass_to_read']:.2f}x; the pass is {4 * r['n'] * r['p_kept'] * r['l'] / 1e12:.1f} "
                         f"Tflop, {r['pass']['median_s']:.1f} s = {gf:.0f} GFLOP/s)")
        L += [f"### A pass over X and its floor ({f['date']})", "",
              md_table(["n", "chunks", "bytes read", "read + decode", "+ standardize", "bigmm pass (l columns)",
                        "pass GFLOP/s", "pass / read+decode"], rows, "rl"), ""]
    sp = res.get("spectrum")
    if sp:
        rows = []
        kmax = max(x["k"] for x in sp["cases"])
        for c in sp["cases"]:
            k, meth = c["k"], c["methods"]
            bt = meth["bigmm"]["median_s"]
            for m, s in meth.items():
                e = s["errors_median"]
                rows.append([f"{c['n']:,}", c["kind"] + (" (a)" if c.get("recovered_from_log") else ""), k, m,
                             fmt_time(s), _gib(s["peak_rss_mib_median"]), s["passes"], _e(e.get(f"mean_top{k}")),
                             _e(e.get("max_top10")), _e(e.get("top1")), f"{s['median_s'] / bt:.2f}"])
            rows += [[f"{c['n']:,}", c["kind"], k, m, f"failed: {msg}"] + [""] * 6 for m, msg in c.get("failed", {}).items()]
            eb = meth["bigmm"]["errors_median"][f"mean_top{k}"]
            for m, s in meth.items():
                es, r = s["errors_median"][f"mean_top{k}"], bt / s["median_s"]
                if k == kmax and m.startswith("svd_compressed"):
                    goals.append(f"top-{k} at n = {c['n']:,} ({c['kind']}) at most 0.5x the time of {m} at equal or "
                                 f"better accuracy: {_met(r <= 0.5 and eb <= es)} ({r:.2f}x its time, mean top-{k} "
                                 f"error {eb:.2e} vs {es:.2e})")
            if "plink2" in meth:
                p2 = meth["plink2"]
                for m, s in meth.items():
                    if m.startswith("bigmm"):
                        r = s["median_s"] / p2["median_s"]
                        goals.append(f"{m} faster than `plink2 --pca approx {k}` at n = {c['n']:,} ({c['kind']}): "
                                     f"{_met(r < 1)} ({r:.2f}x its time; mean top-{k} error "
                                     f"{s['errors_median'][f'mean_top{k}']:.1e} vs plink2's "
                                     f"{p2['errors_median'][f'mean_top{k}']:.1e})")
        refs = {(c["n"], c["kind"]): (c["reference"], c["reference_max_ritz_residual"]) for c in sp["cases"]}
        loads = [c for c in sp["cases"] if c.get("load_X_s") and c["k"] == sp["cases"][0]["k"]]
        recovered = next((c["recovered_from_log"] for c in sp["cases"] if c.get("recovered_from_log")), None)
        L += [f"### Top-k spectrum ({sp['date']}; Krylov q = {sp['q']}, oversample {sp['oversample']}, "
              f"float32 products for bigmm, svd_compressed and sklearn)", "",
              md_table(["n", "cohort", "k", "tool", "wall time", "peak RSS", "passes over X", "mean rel. err. top-k",
                        "max rel. err. top-10", "top-1 err.", "time / bigmm"], rows, "rlrlrrl"), "",
              "References: " + "; ".join(f"n = {n:,} {kd}: {r}" + (f" (max Ritz residual {rr:.1e})" if rr else "")
                                         for (n, kd), (r, rr) in refs.items())
              + (". Peak RSS: the driver holds the float32 X for sklearn (n·p·4 bytes) during every method's run, "
                 "so the other rows include it too; sklearn's time excludes loading X into memory (" + ", ".join(
                     f"{c['load_X_s']:.0f} s at n = {c['n']:,}" for c in loads) + ")" if loads else "")
              + ". plink2 computes at most 100 PCs in approx mode. Errors are |θ_i − λ_i| / λ_i, index by index "
              "(medians over the repeats, whose seeds differ)."
              + (RECOVERED_NOTE.format(log=recovered) if recovered else ""),
              ""]
    e = res.get("e2e")
    if e:
        rows = []
        for r in e["runs"]:
            rows.append([f"{r['n']:,}", r["method"] + (f" k = {r['k']}" if r["k"] else ""),
                         f"{r['median_s']:.0f} s ({r['min_s']:.0f}–{r['max_s']:.0f})",
                         ", ".join(f"{k} {v:.0f}" for k, v in r["stages_median_s"].items() if v >= 0.5),
                         r["passes_over_X"], _gib(r["peak_rss_sum_mib_median"]), ", ".join(f"{h:.3f}" for h in r["h2"])])
            if r["method"] == "randomized":
                goals.append(f"end to end n = {r['n']:,} under 5 minutes and 6 GiB: "
                             f"{_met(r['median_s'] < 300 and r['peak_rss_sum_mib_max'] < 6144)} "
                             f"({r['median_s']:.0f} s, peak RSS sum {_gib(r['peak_rss_sum_mib_max'])} at most)")
        L += [f"### End to end, `bigmm run` with the cohort in Zarr ({e['date']})", "",
              md_table(["n", "spectrum", "wall time", "stages (median s)", "passes over X", "peak RSS sum",
                        "h² (2 traits)"], rows, "rlrlrrl"), ""]
    rm = res.get("reml")
    if rm:
        rows = [[f"{c['m']:,}", fmt_time(c), f"{c['per_phenotype_ms']:.2f} ms", _gib(c["peak_rss_mib_median"])]
                for c in rm["cases"]]
        goals += [f"{c['m']:,} phenotypes of REML in under 1 minute: {_met(c['median_s'] < 60)} ({c['median_s']:.1f} s)"
                  for c in rm["cases"] if c["m"] >= 10000]
        L += [f"### REML alone on one spectrum, n = {rm['n']:,}, k = {rm['k']} ({rm['date']})", "",
              md_table(["phenotypes", "wall time", "per phenotype", "peak RSS"], rows, "r"), ""]
    if goals:
        L += ["### Targets (issue 6)", ""] + [f"- {x}" for x in goals] + [""]
    return "\n".join(L)


# --------------------------------------------------------------------------- main

RUNNERS = {"blas": w_blas, "floor": w_floor, "grm": w_grm, "spectrum": w_spectrum, "e2e": w_e2e, "reml": w_reml}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="+", choices=WORKLOADS + ("all", "report"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench")
    ap.add_argument("--p", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="samples,variants per store chunk (default 8192,2048)")
    ap.add_argument("--grm-n", type=int, default=10000, help="n of the GRM, BLAS and exact end-to-end workloads")
    ap.add_argument("--floor-n", type=int, nargs="+", default=[10000, 25000])
    ap.add_argument("--spectrum-cohorts", nargs="+", default=["10000:structured", "10000:unrelated",
                                                               "25000:structured"], help="N:structured|unrelated")
    ap.add_argument("--spectrum-k", type=int, nargs="+", default=[20, 200])
    ap.add_argument("--e2e-n", type=int, default=100000, help="n of the randomized end-to-end and REML workloads")
    ap.add_argument("--e2e-timeout", type=float, default=3600, help="seconds before an end-to-end run is stopped")
    ap.add_argument("--reml-m", type=int, nargs="+", default=[1, 100, 10000])
    ap.add_argument("--rank", type=int, default=200)
    ap.add_argument("--oversample", type=int, default=50)
    ap.add_argument("--power-iters", type=int, default=None, help="default: bigmm's Krylov default")
    ap.add_argument("--bigmm-accurate-q", type=int, default=10,
                    help="also run bigmm with this many power iterations where plink2 runs (0: no)")
    ap.add_argument("--svd-more-q", type=int, nargs="*", default=[],
                    help="also run svd_compressed with these power iterations (accuracy matched to bigmm's)")
    ap.add_argument("--methods", nargs="+", default=["sklearn", "plink2"], choices=["sklearn", "plink2"],
                    help="optional spectrum peers to run (bigmm and svd_compressed always run)")
    ap.add_argument("--exact-max-n", type=int, default=12000, help="largest n whose reference is eigh")
    ap.add_argument("--ref-oversample", type=int, default=100)
    ap.add_argument("--ref-power-iters", type=int, default=10)
    ap.add_argument("--min-maf", type=float, default=0.01)
    ap.add_argument("--max-missing", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="5GiB", help="per worker")
    ap.add_argument("--plink2", default="plink2")
    ap.add_argument("--gemma", default="gemma")
    ap.add_argument("--peer-memory-mib", type=int, default=8000, help="plink2 --memory")
    ap.add_argument("--grm-k-only", action="store_true",
                    help="grm: also time K alone, without the per-pair counts N (the earlier build), to compare")
    ap.add_argument("--small", action="store_true", help="toy sizes for a smoke run (results not written to docs)")
    add_docs_args(ap)
    args = ap.parse_args(argv)
    if args.small:
        args.p, args.grm_n, args.floor_n, args.e2e_n = 4000, 1500, [1500], 6000
        args.spectrum_cohorts, args.reml_m, args.rank = ["1500:structured", "3000:unrelated"], [1, 100], 50
        args.spectrum_k = [10, 20]
        args.cache = args.cache / "small"
        args.chunks = (1024, 1024)
        args.exact_max_n = 2000
    args.cache.mkdir(parents=True, exist_ok=True)
    results_path = args.cache / "results.json"
    res = json.loads(results_path.read_text()) if results_path.exists() else {}
    todo = list(WORKLOADS) if "all" in args.workloads else [w for w in args.workloads if w != "report"]

    def save(w: str, r: dict) -> None:
        if w == "spectrum" and "spectrum" in res:  # keep earlier cases that this run did not redo
            key = lambda c: (c["n"], c["kind"], c["k"])  # noqa: E731
            redone = {key(c) for c in r["cases"]}
            r = {**r, "cases": sorted([c for c in res["spectrum"]["cases"] if key(c) not in redone] + r["cases"],
                                      key=lambda c: (c["n"], c["kind"] != "structured", c["k"]))}
        res[w] = {**r, "date": _dt.date.today().isoformat(), "repeats": args.repeats}
        res["machine"] = machine_info()
        results_path.write_text(json.dumps(res, indent=1, default=float) + "\n")

    args.save_partial = save
    for w in todo:
        log(f"=== workload {w}")
        t0 = time.perf_counter()
        r = RUNNERS[w](args)
        r["workload_s"] = time.perf_counter() - t0
        save(w, r)
        log(f"=== workload {w} done in {r['workload_s']:.0f} s; results in {results_path}")
    publish(SECTION, report(res), args.docs if args.write_docs and not args.small else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
