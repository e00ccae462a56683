#!/usr/bin/env python
"""Benchmark: genetic correlations of all pairs of P phenotypes from one matrix-free build.

Simulates n samples and p variants (allele frequencies U[0.05, 0.5], seed ``--seed``) held in
memory, and P phenotypes with correlated genetic and residual parts: genetic values
``X B / √p`` with ``B = β Lᵀ`` (β: p x F standard normal, L: P x F loadings), residuals with a
factor structure too, each trait scaled to a heritability drawn from U[0.2, 0.6]; intercept and
one covariate, every phenotype observed on every sample. Then, on the local threaded Dask
scheduler with a :class:`bigmm.GrmOperator` (its passes counted):

1. ``bigmm.fit_matrix_free`` of the P phenotypes (``--probes`` probes): wall and CPU time, passes;
2. ``bigmm.mf_bivariate.fit_bivariate_matrix_free`` of all P(P − 1)/2 pairs from that build:
   without the Monte Carlo jackknife and with it (one AI-REML step per probe), wall and CPU time,
   per pair, and against the time of one pass; it must take no pass over X. ``--pair-workers k`` spreads
   the pairs over k processes (the CPU time printed is this process's: with k > 1 it leaves out
   the workers', so compare wall times then).

Prints the figures; ``--exact-pairs k`` also fits the first k pairs by ``bigmm.fit_bivariate`` on
the exact spectrum (GRM and eigendecomposition: small n only) and prints the largest
|r_g,mf − r_g,exact| in units of the exact r_g SE and of the matrix-free Monte Carlo SD.

``--store``: the cohort as the scale benchmarks hold it instead (``common.ensure_cohort``: a
``bigmm.simulate`` Zarr store of n x p, chunks 8192 x 2048, cached in --cache and shared with
bench_reml.py / bench_scale.py), passes on a local Dask cluster of --workers x 1 thread
(``bigmm.pipeline.cluster.dask_client``, --memory-limit each) with the operator a run builds
(``GrmOperator`` of the store, float32 products, the task memory of that cluster); the traits'
genetic values take one more pass (``X B``, not counted: it is the simulation). Peak memory is
then the sampled peak of the RSS summed over the driver and the workers (``common.PeakRSS``),
and the figures are also written to --results as JSON.

Usage::

    .venv/bin/python scripts/bench/bench_rg_pairs.py --n 2000 --p 4000 --traits 100
    .venv/bin/python scripts/bench/bench_rg_pairs.py --store --n 100000 --p 50000 --traits 100
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

import bigmm
from bigmm.mf_bivariate import fit_bivariate_matrix_free

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MIB, REPO, CountingOperator, PeakRSS, command_line, ensure_cohort, log,  # noqa: E402
                    machine_info, wall_cpu)


def simulate_traits(G, std, P: int, F: int, rng) -> np.ndarray:
    """P phenotypes with factor-structured genetic and residual covariances (see the module doc)."""
    n, p = G.shape
    X = bigmm.standardized(G, std)
    beta = rng.normal(size=(std.n_kept, F))
    L = rng.normal(size=(P, F))
    g = np.asarray((X @ (beta @ L.T).astype(X.dtype)).compute(), dtype=np.float64) / np.sqrt(std.n_kept)
    e = rng.normal(size=(n, F)) @ rng.normal(size=(P, F)).T + rng.normal(size=(n, P)) * 2.0
    h2 = rng.uniform(0.2, 0.6, size=P)
    g /= g.std(axis=0)
    e /= e.std(axis=0)
    return np.sqrt(h2) * g + np.sqrt(1 - h2) * e


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=4000)
    ap.add_argument("--traits", type=int, default=100, help="phenotypes P (P(P − 1)/2 pairs)")
    ap.add_argument("--factors", type=int, default=5, help="factors of the genetic and residual covariances")
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--dtype", default="float32", choices=["float64", "float32"])
    ap.add_argument("--exact-pairs", type=int, default=0, help="check the first k pairs against the exact path")
    ap.add_argument("--no-lrt", action="store_true",
                    help="the pairs without their likelihood-ratio tests (lrt=False: no r_g = 0 and |r_g| = 1 refits)")
    ap.add_argument("--pair-workers", type=int, default=1,
                    help="processes that fit the pairs (fit_bivariate_matrix_free's workers=)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", action="store_true",
                    help="a cached bigmm.simulate Zarr store and a local Dask cluster (the scale setting)")
    ap.add_argument("--workers", type=int, default=2, help="--store: Dask workers (1 thread each)")
    ap.add_argument("--memory-limit", default="5GiB", help="--store: per worker")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench", help="--store: cached cohorts")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON of the figures (--store default: results/bench_rg_pairs_nN_pP_tT.json)")
    ap.add_argument("--keep-build", type=Path, default=None,
                    help="pickle the univariate build (and its figures) to this file after step 1")
    ap.add_argument("--from-build", type=Path, default=None,
                    help="skip the cohort and step 1: fit the pairs of a build kept by --keep-build (its figures "
                         "are carried into this run's record, marked as such)")
    args = ap.parse_args(argv)
    if args.from_build:
        return pairs_only(args)
    if args.store:
        from bigmm.pipeline.cluster import dask_client
        from bigmm.pipeline.config import ClusterConfig
        from bigmm.pipeline.memory import task_memory

        import logging

        logging.getLogger("distributed").setLevel(logging.ERROR)
        steps = logging.getLogger("bigmm")  # progress lines, timed (one per pass)
        steps.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        steps.addHandler(handler)
        cc = ClusterConfig(workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit)
        if args.results is None:
            args.results = REPO / "results" / f"bench_rg_pairs_n{args.n}_p{args.p}_t{args.traits}.json"
        ctx = dask_client(cc)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        return run(args, task_memory(cc) if args.store else None)


def run(args, memory) -> int:
    rng = np.random.default_rng(args.seed)
    rec = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": command_line(__file__, None), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "loadavg_start": os.getloadavg()}
    if args.store:
        rec["machine"] = machine_info()
        c = ensure_cohort(args.cache, args.n, p=args.p, seed=args.seed, pops=1, fst=0.0, h2=[0.5, 0.3],
                          chunks=(8192, 2048), sim_block=1024, need_plink=False)
        store = bigmm.open_store(c["paths"]["zarr"])
        G = store.genotypes
        rec["cohort"] = {k: c.get(k) for k in ("tag", "created", "simulate_s", "zarr_bytes")}
        std, w, _ = wall_cpu(lambda: bigmm.standardization(bigmm.variant_stats(store.to_dask())))
        rec["variant_stats_s"] = w
        log(f"variant statistics: {w:.1f} s (1 pass)")
        t0 = time.perf_counter()
        Y = simulate_traits(store.to_dask(), std, args.traits, args.factors, rng)
        log(f"traits simulated: {time.perf_counter() - t0:.1f} s (1 pass, not counted)")
    else:
        f = rng.uniform(0.05, 0.5, args.p)
        G = rng.binomial(2, f, size=(args.n, args.p)).astype(np.int8)
        std = bigmm.standardization(bigmm.variant_stats(G))
        Y = simulate_traits(G, std, args.traits, args.factors, rng)
    Z = np.column_stack([np.ones(args.n), rng.normal(size=args.n)])
    names = [f"t{j + 1}" for j in range(args.traits)]
    op = CountingOperator(bigmm.GrmOperator(G, std, dtype=args.dtype, memory=memory))
    npairs = args.traits * (args.traits - 1) // 2
    print(f"n = {args.n}, p = {args.p} ({std.n_kept} kept), P = {args.traits} phenotypes ({npairs} pairs), "
          f"{args.probes} probes, pass dtype {args.dtype}, {args.pair_workers} worker process(es) for the pairs, "
          f"{os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    with PeakRSS() as mon:
        res, w_uni, c_uni = wall_cpu(lambda: bigmm.fit_matrix_free(op, Y, Z, phenotype_names=names,
                                                                  probes=args.probes, seed=args.seed))
    passes = op.calls
    pass_s = sum(res.notes["pass_seconds"]) / max(len(res.notes["pass_seconds"]), 1) \
        if res.notes.get("pass_seconds") else w_uni / passes
    def save():  # after every stage: a run stopped early keeps what it measured
        if args.results:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(rec, indent=1, default=str) + "\n")

    rec["univariate"] = {"wall_s": w_uni, "cpu_s_driver": c_uni, "cpu_s_tree": mon.cpu, "peak_rss_mib": mon.peak / MIB,
                         "passes_over_X": passes, "pass_s_mean": pass_s, "converged": bool(res.converged),
                         "pass_seconds": res.notes.get("pass_seconds"), "loadavg_end": os.getloadavg()}
    if args.keep_build:
        args.keep_build.parent.mkdir(parents=True, exist_ok=True)
        with open(args.keep_build, "wb") as fh:
            pickle.dump({"result": res, "univariate": rec["univariate"], "rec": dict(rec), "npairs": npairs,
                         "pass_s": pass_s, "w_uni": w_uni}, fh)
    print(f"univariate fit: {w_uni:.2f} s wall, {c_uni:.2f} s CPU (driver; {mon.cpu:.1f} s process tree), "
          f"{passes} passes over X ({pass_s:.3f} s per pass), converged {res.converged}, peak RSS "
          f"{mon.peak / MIB:,.0f} MiB", flush=True)
    save()
    return fit_pairs(args, rec, res, npairs, pass_s, w_uni, save, op, (G, std, Y, Z, names))


def pairs_only(args) -> int:
    """--from-build: the pairs of a kept build, in this process (no cohort, no cluster)."""
    with open(args.from_build, "rb") as fh:
        kept = pickle.load(fh)
    rec = {**kept["rec"], "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": command_line(__file__, None), "machine": machine_info(), "loadavg_start": os.getloadavg(),
           "from_build": str(args.from_build), "univariate": {**kept["univariate"], "from_build": True},
           "pairs_args": {"no_lrt": args.no_lrt, "pair_workers": args.pair_workers}}
    res = kept["result"]
    print(f"pairs of the build kept in {args.from_build} ({len(res.phenotype_names)} phenotypes; build "
          f"{kept['w_uni']:.1f} s wall, {kept['univariate']['passes_over_X']} passes, "
          f"{kept['pass_s']:.2f} s per pass), load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
          flush=True)

    def save():
        if args.results:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(rec, indent=1, default=str) + "\n")

    return fit_pairs(args, rec, res, kept["npairs"], kept["pass_s"], kept["w_uni"], save, None)


def fit_pairs(args, rec, res, npairs, pass_s, w_uni, save, op, data=None) -> int:
    """Step 2 (and the exact check): all pairs from the build, without and with the jackknife."""
    out = {}
    for how in (None, "newton"):
        before = op.calls if op is not None else 0
        with PeakRSS() as mon:
            r, w, c = wall_cpu(lambda: fit_bivariate_matrix_free(res, "all", jackknife=how, workers=args.pair_workers,
                                                                  lrt=not args.no_lrt))
        assert op is None or op.calls == before, "the pairs took a pass over X"
        out[how] = r
        rec[f"pairs_jackknife_{how or 'off'}"] = {
            "wall_s": w, "cpu_s_driver": c, "peak_rss_mib": mon.peak / MIB, "passes_over_X": (op.calls - before) if op is not None else 0,
            "not_converged": sum(not f.converged for f in r.fits), "boundary": sum(bool(f.boundary) for f in r.fits),
            "loadavg_end": os.getloadavg()}
        print(f"all pairs, jackknife {how or 'off'}: {w:.2f} s wall, {c:.2f} s CPU ({1e3 * w / npairs:.1f} ms per "
              f"pair; {w / pass_s:.1f} passes' time; {w / w_uni:.2f} x the univariate fit), 0 passes over X; "
              f"{sum(not f.converged for f in r.fits)} pairs not converged, "
              f"{sum(bool(f.boundary) for f in r.fits)} on a boundary; peak RSS {mon.peak / MIB:,.0f} MiB",
              flush=True)
        save()
    r = out["newton"]
    rg_se = np.array([f.rg_se for f in r.fits])
    rg_mc = np.array([m["rg"] for m in r.mc_sd])
    ok = np.isfinite(rg_se) & np.isfinite(rg_mc) & (rg_se > 0)
    if ok.any():
        q = np.quantile(rg_mc[ok] / rg_se[ok], [0.5, 0.9, 1.0])
        print(f"r_g Monte Carlo SD / statistical SE over {int(ok.sum())} pairs: median {q[0]:.3f}, 90% {q[1]:.3f}, "
              f"max {q[2]:.3f}")
    if args.exact_pairs and data is None:
        print("--exact-pairs needs the cohort: not with --from-build")
    elif args.exact_pairs:
        G, std, Y, Z, names = data
        k = min(args.exact_pairs, npairs)
        K = bigmm.grm(G, std)
        spec, w_ex, _ = wall_cpu(lambda: bigmm.exact_spectrum(np.asarray(K)))
        pairs = [(f.trait_a, f.trait_b) for f in r.fits[:k]]
        ex = bigmm.bivariate.fit_bivariate(spec, Y, Z, phenotype_names=names, pairs=pairs)
        d = np.array([abs(a.rg - b.rg) for a, b in zip(r.fits[:k], ex.fits)])
        print(f"exact path on {k} pairs (eigh {w_ex:.1f} s): max |r_g,mf − r_g,exact| = {d.max():.2e}, "
              f"max of it / exact SE {np.nanmax(d / [b.rg_se for b in ex.fits]):.3f}, "
              f"/ MC SD {np.nanmax(d / rg_mc[:k]):.2f}")
        if args.results:
            rec["exact_check"] = {"pairs": k, "max_abs_rg": float(d.max())}
    if args.results:
        rec["rg_mc_over_se_quantiles"] = [float(x) for x in q] if ok.any() else None
        save()
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
