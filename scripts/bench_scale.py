#!/usr/bin/env python
"""Scale benchmark (issue 4): randomized spectrum and end-to-end REML at n = 25,000 ... 100,000.

Data. For each ``--n`` a cohort of ``--p`` variants is simulated with ``bigmm.simulate`` straight
into a Zarr cohort store (``--chunks`` samples x variants), with phenotypes and covariates written
by ``bigmm.write_tables``; the cohort of ``--compare-n`` samples is also written as a PLINK fileset
(same genotypes, same call) for plink2. Everything is cached under ``--cache``
(default ``cache/bench/``, shared with scripts/bench.py, git-ignored) and reused when present; the simulation time is
recorded when a cohort is made and reported from that record afterwards.

End to end. For each n, ``python -m bigmm.cli run cfg.yaml`` in a fresh output directory, with
``genotypes: {zarr: ...}`` (no ingest), ``spectrum: {method: randomized, rank: --rank}`` and a
local cluster (``--workers`` x ``--threads``, ``--memory-limit``). Reported: every stage's wall time
(``run.json`` ``stages[*].seconds``), passes over X, each spectrum pass (from ``run.log``), the
subprocess's wall time, and peak RSS summed over the driver and every descendant process (Dask
nanny and worker processes) sampled with psutil every 0.2 s; the sum of the per-process kernel
high-water marks (VmHWM, also sampled) is reported as an upper bound.

Side by side, at n = ``--compare-n``, on the same store and standardization (``variant_stats`` +
``standardization("gcta")`` with the run's filters), on one LocalCluster made by
``bigmm.cluster.dask_client`` with the same cluster settings, each ``--repeats`` times (median):

``bigmm``           ``bigmm.randomized_spectrum`` (API), k = --rank, oversample, power_iters, float32
                    (the pipeline's dtype), task memory as the pipeline gives it.
``svd_compressed``  ``dask.array.linalg.svd_compressed`` on ``bigmm.standardized(store.to_dask(),
                    std, float32)`` with the same k, ``n_oversamples`` and ``n_power_iter``,
                    ``compute=True`` (recompute X at each pass instead of holding it); eigenvalues
                    of K are s²/p.
``plink2``          ``plink2 --bfile ... --pca approx K --threads 2``; plink2 refuses more than 100
                    PCs in approx mode, and its cost grows as K² (K + 1 passes over a Krylov block
                    of 2K columns), so K = --plink2-pcs (default 20), with a bigmm run at the same
                    k for an equal-k time ratio.

Accuracy is measured against a reference: bigmm's randomized spectrum in float64 with many more
power iterations and a larger oversampling (``--ref-power-iters``, ``--ref-oversample``), computed
once and cached; its Ritz residuals ``‖K u − θ u‖ / θ`` bound its own relative error. With
``--compare-n`` up to ``--exact-max-n`` the exact eigenvalues (GRM + eigh) are computed as well and
the reference is checked against them.

Usage::

    python scripts/bench_scale.py --n 2000 5000 --p 5000 --repeats 1        # smoke (minutes)
    python scripts/bench_scale.py --write-docs                              # n = 25k, 50k, 100k; p = 50k
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchutil import MIB, REPO, PeakRSS, log, machine_info, machine_line, summarize, timed, write_docs  # noqa: E402

ENV0 = dict(os.environ)  # before any LocalCluster: dask's nanny leaks OPENBLAS_NUM_THREADS=1 into it
SECTION = "Scale: randomized spectrum and end-to-end REML (scripts/bench_scale.py)"
GIB = 1024.0 * MIB
#: stage columns of the end-to-end table; any other stage the pipeline runs is summed under "other"
MAIN_STAGES = ("variant_stats", "spectrum", "rotate", "reml", "report")


# --------------------------------------------------------------------------- data

def cohort_paths(cache: Path, n: int, args) -> dict:
    tag = f"n{n}_p{args.p}_seed{args.seed}" + (f"_pops{args.pops}_fst{args.fst:g}" if args.pops > 1 else "")
    base = cache / f"sim_{tag}"
    return {"tag": tag, "zarr": Path(f"{base}.zarr"), "plink": base, "pheno": Path(f"{base}.pheno.tsv"),
            "covar": Path(f"{base}.covar.tsv"), "truth": Path(f"{base}.truth.json"),
            "meta": Path(f"{base}.sim.json")}


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _plink_ok(prefix: Path, n: int, p: int) -> bool:
    bed = Path(f"{prefix}.bed")
    return (all(Path(f"{prefix}{s}").exists() for s in (".bed", ".bim", ".fam"))
            and bed.stat().st_size == 3 + p * ((n + 3) // 4))


def ensure_cohort(args, cache: Path, n: int, need_plink: bool) -> dict:
    """Simulate (or reuse) the cohort of n samples; returns its record (with the simulation time)."""
    import bigmm

    paths = cohort_paths(cache, n, args)
    want = {"n": n, "p": args.p, "seed": args.seed, "pops": args.pops, "fst": args.fst, "h2": args.h2,
            "chunks": list(args.chunks), "block": args.sim_block}
    meta = json.loads(paths["meta"].read_text()) if paths["meta"].exists() else None
    ok = (meta is not None and all(meta.get(k) == v for k, v in want.items())
          and paths["zarr"].exists() and paths["pheno"].exists() and paths["covar"].exists()
          and (not need_plink or (meta.get("plink") and _plink_ok(paths["plink"], n, args.p))))
    if ok:
        try:
            st = bigmm.open_store(paths["zarr"])
            ok = (st.genotypes.shape == (n, args.p)
                  and list(st.chunks) == [min(args.chunks[0], n), min(args.chunks[1], args.p)])
        except Exception as exc:  # noqa: BLE001 - a damaged cache is simulated again
            log(f"simulate: cached store unusable ({exc})")
            ok = False
    if ok:
        log(f"simulate: reusing {paths['zarr'].name} (made in {meta['simulate_s']:.0f} s on {meta['created']})")
        return {**meta, "tag": paths["tag"], "paths": {k: str(v) for k, v in paths.items()}, "reused": True}
    log(f"simulate: n={n} p={args.p} seed={args.seed} pops={args.pops} fst={args.fst} chunks={args.chunks} "
        f"{'+ PLINK ' if need_plink else ''}-> {paths['zarr']}")
    paths["meta"].unlink(missing_ok=True)
    r = timed(lambda: bigmm.simulate(n, args.p, h2=args.h2, seed=args.seed, n_pops=args.pops, fst=args.fst,
                                     out_zarr=paths["zarr"], out_plink=paths["plink"] if need_plink else None,
                                     chunks=tuple(args.chunks), block=args.sim_block), f"simulate n={n}")
    cohort = r["result"]
    t0 = time.perf_counter()
    bigmm.write_tables(cohort, paths["pheno"], paths["covar"], paths["truth"])
    t_tables = time.perf_counter() - t0
    meta = {**want, "plink": need_plink, "simulate_s": r["seconds"], "simulate_cpu_s": r["cpu_s"],
            "simulate_peak_rss_mib": r["peak_rss"] / MIB, "tables_s": t_tables,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "zarr_bytes": _du(paths["zarr"]),
            "plink_bed_bytes": _du(Path(f"{paths['plink']}.bed")) if need_plink else None}
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "tag": paths["tag"], "paths": {k: str(v) for k, v in paths.items()}, "reused": False}


# --------------------------------------------------------------------------- end to end

def write_run_config(rdir: Path, cohort: dict, args) -> Path:
    import yaml

    p = cohort["paths"]
    cfg = {
        "genotypes": {"zarr": p["zarr"]},
        "variants": {"min_maf": args.min_maf, "max_missing": args.max_missing, "standardize": "gcta"},
        "phenotypes": {"file": p["pheno"], "columns": "all"},
        "covariates": {"file": p["covar"], "columns": ["age", "sex"], "categorical": ["sex"]},
        "spectrum": ({"method": "exact"} if getattr(args, "method", "randomized") == "exact" else
                     {"method": "randomized", "rank": args.rank, "oversample": args.oversample,
                      "power_iters": args.power_iters}),
        "output": str(rdir / "out"),
        "cluster": {"workers": args.workers, "threads_per_worker": args.threads,
                    "memory_limit": args.memory_limit},
    }
    path = rdir / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


PASS_RE = re.compile(r"^(\S+ \S+) INFO randomized spectrum pass (\d+)/(\d+): (\d+)/(\d+) \(100%\), "
                     r"([\d.]+) s elapsed")
CKPT_RE = re.compile(r"^(\S+ \S+) INFO randomized spectrum: checkpoint after pass (\d+)")


def _log_time(stamp: str) -> float:
    # logging's asctime: "2026-11-24 18:40:01,123" (local time)
    return _dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


STAGE_RE = re.compile(r"^(\S+ \S+) INFO stage (\w+): (start|committed)")


def parse_run(out: Path) -> dict:
    """Stage times and passes from run.json, pass and stage boundaries from run.log, h² from results.json."""
    manifest = json.loads((out / "run.json").read_text())
    stages = {}
    for name, e in manifest.get("stages", {}).items():
        stages[name] = {"seconds": e["seconds"], "passes_over_X": e.get("passes_over_X", 0) or 0,
                        "driver_peak_rss_mib": e.get("driver_peak_rss_mib"),
                        "workers_rss_mib": e.get("workers_rss_mib")}
    passes, ckpt = [], {}
    log_path = out / "run.log"
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            m = PASS_RE.match(line)
            if m:
                passes.append({"pass": int(m.group(2)), "of": int(m.group(3)), "tasks": int(m.group(5)),
                               "seconds": float(m.group(6)), "end": _log_time(m.group(1))})
            m = CKPT_RE.match(line)
            if m:
                ckpt[int(m.group(2))] = _log_time(m.group(1))
            m = STAGE_RE.match(line)
            if m and m.group(2) in stages:
                stages[m.group(2)]["start" if m.group(3) == "start" else "end"] = _log_time(m.group(1))
    for ps in passes:  # time from the end of the pass to its checkpoint being committed (QR + write)
        if ps["pass"] in ckpt:
            ps["after_s"] = ckpt[ps["pass"]] - ps["end"]
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    fits = [{"name": f["name"], "h2": f["h2"], "h2_se": f["h2_se"], "n": f["n"]}
            for f in res.get("phenotypes", [])]
    si = res.get("spectrum_info", {})
    return {"status": manifest.get("status"), "stages": stages, "passes": passes, "fits": fits,
            "spectrum": {k: si.get(k) for k in ("k", "oversample", "power_iters", "passes_over_X",
                                                 "max_ritz_residual", "seconds", "compute_dtype",
                                                 "tail_eigenvalue", "trace_K")},
            "n_variants": res.get("n_variants")}


def _busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f))


def run_e2e(args, cache: Path, cohort: dict, rep: int) -> dict:
    n = cohort["n"]
    method = getattr(args, "method", "randomized")
    rdir = cache / "runs" / (f"n{n}_r{rep + 1}" if method == "randomized" else f"{method}_n{n}_r{rep + 1}")
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    cfg = write_run_config(rdir, cohort, args)
    cmd = [sys.executable, "-m", "bigmm.cli", "run", str(cfg)]
    log(f"end to end n={n} repeat {rep + 1}: {shlex.join(cmd)}")
    busy0 = _busy_cpu_s()
    load0 = os.getloadavg()[0]
    with open(rdir / "stdout.log", "w") as fh:
        t0 = time.perf_counter()
        wall0 = time.time()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV0, cwd=REPO,
                                start_new_session=True)
        mon = PeakRSS(pid=proc.pid, track_hwm=True, timeline=True)
        mon.__enter__()
        killer = threading.Timer(args.e2e_timeout, lambda: os.killpg(proc.pid, signal.SIGTERM))
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            wall = time.perf_counter() - t0
            mon.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {rdir / 'stdout.log'}")
    info = parse_run(rdir / "out")
    # which stage was running when the summed RSS peaked
    t_peak, own, others = max(mon.timeline, key=lambda s: s[1] + s[2])
    peak_stage = "outside stages"
    for name, s in info["stages"].items():
        if s.get("start", np.inf) <= t_peak <= s.get("end", -np.inf) + 0.25:
            peak_stage = name
    timeline = [(round(t - wall0, 2), round(a / MIB), round(b / MIB)) for t, a, b in mon.timeline]
    (rdir / "rss_timeline.json").write_text(json.dumps(timeline) + "\n")
    cpu = ru.ru_utime + ru.ru_stime
    out = {"n": n, "repeat": rep + 1, "run_dir": str(rdir), "wall_s": wall,
           "started": _dt.datetime.fromtimestamp(wall0).astimezone().isoformat(timespec="seconds"),
           "loadavg_1min_start_end": [load0, os.getloadavg()[0]],
           # CPU seconds the rest of the machine used meanwhile (other jobs on a shared machine)
           "other_cpu_s": _busy_cpu_s() - busy0 - cpu,
           "cpu_s": cpu, "max_single_process_rss_mib": ru.ru_maxrss / 1024,
           "peak_rss_sum_mib": mon.max_sum / MIB, "sum_of_process_peaks_mib": mon.sum_of_peaks / MIB,
           "peak_at_s": round(t_peak - wall0, 1), "peak_stage": peak_stage,
           "peak_driver_mib": own / MIB, "peak_others_mib": others / MIB, "max_processes": mon.max_procs,
           "rss_samples": mon.n_samples, **info}
    st = info["stages"]
    out["stages_sum_s"] = sum(s["seconds"] for s in st.values())
    out["passes_over_X"] = sum(s["passes_over_X"] for s in st.values())
    out["outside_stages_s"] = wall - out["stages_sum_s"]
    log(f"  n={n}: wall {wall:.1f} s (stages {out['stages_sum_s']:.1f} s: "
        + ", ".join(f"{k} {v['seconds']:.1f}" for k, v in st.items())
        + f"), {out['passes_over_X']} passes over X, peak RSS sum {out['peak_rss_sum_mib']:.0f} MiB "
          f"(in {peak_stage}; sum of process peaks {out['sum_of_process_peaks_mib']:.0f} MiB), "
          f"other jobs used {out['other_cpu_s']:.0f} CPU s meanwhile, "
          f"h2 " + ", ".join(f"{f['name']} {f['h2']:.3f}" for f in info["fits"]))
    return out


# --------------------------------------------------------------------------- side by side

def rel_errors(s: np.ndarray, ref: np.ndarray) -> dict:
    """Relative errors of eigenvalues against the reference, index by index (both descending)."""
    k = min(len(s), len(ref))
    e = np.abs(np.asarray(s[:k], float) - ref[:k]) / ref[:k]
    out = {"k": k, "top1": float(e[0])}
    for m in (10, 20, 100, 200):
        if k >= m:
            out[f"max_top{m}"] = float(e[:m].max())
            out[f"mean_top{m}"] = float(e[:m].mean())
    out[f"at_{k}"] = float(e[k - 1])
    out["signed_mean"] = float(np.mean((np.asarray(s[:k], float) - ref[:k]) / ref[:k]))
    return out


def run_svd_compressed(store, std, k: int, oversample: int, power_iters: int, seed: int, dtype,
                       iterator: str = "power"):
    import dask
    import dask.array as da

    import bigmm

    X = bigmm.standardized(store.to_dask(), std, dtype=dtype)
    u, s, _v = da.linalg.svd_compressed(X, k, n_power_iter=power_iters, n_oversamples=oversample,
                                        seed=seed, compute=True, iterator=iterator)
    u, s = dask.compute(u, s)
    return np.asarray(s, dtype=np.float64) ** 2 / std.n_kept, u.shape


def run_plink2(exe: str, prefix: str, out: Path, pcs: int, threads: int, memory_mib: int) -> dict:
    cmd = [exe, "--bfile", prefix, "--pca", "approx", str(pcs), "--threads", str(threads),
           "--memory", str(memory_mib), "--out", str(out)]
    with open(str(out) + ".stdout", "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=ENV0)
        _, status, ru = os.wait4(proc.pid, 0)
        dt = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = Path(str(out) + ".log").read_text()[-600:] if Path(str(out) + ".log").exists() else ""
        raise RuntimeError(f"{shlex.join(cmd)} failed ({rc}): {tail}")
    vals = np.loadtxt(str(out) + ".eigenval", ndmin=1)
    log(f"  plink2 --pca approx {pcs}: {dt:.2f} s, peak RSS {ru.ru_maxrss / 1024:.0f} MiB, "
        f"CPU {ru.ru_utime + ru.ru_stime:.1f} s, top eigenvalue {vals[0]:.5g}")
    return {"seconds": dt, "peak_rss": ru.ru_maxrss * 1024, "start_rss": 0, "cpu_s": ru.ru_utime + ru.ru_stime,
            "cmd": shlex.join(cmd), "eigenvalues": vals}


def reference_spectrum(args, cache: Path, cohort: dict, store, std, memory: int) -> dict:
    """The high-accuracy randomized spectrum (float64), cached."""
    import bigmm

    l_ref = args.rank + args.ref_oversample
    path = cache / (f"ref_{cohort['tag']}_k{args.rank}_os{args.ref_oversample}_q{args.ref_power_iters}"
                    f"_maf{args.min_maf:g}_miss{args.max_missing:g}.npz")
    if path.exists():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        if meta.get("sim_created") == cohort["created"]:
            log(f"reference: reusing {path.name} ({meta['seconds']:.0f} s when made)")
            return {"s": z["s"], "resid": z["resid"], **meta, "reused": True, "path": str(path)}
    log(f"reference: randomized spectrum float64, k={args.rank}, l={l_ref}, q={args.ref_power_iters} "
        f"({args.ref_power_iters + 2} passes)")
    r = timed(lambda: bigmm.randomized_spectrum(store.genotypes, std, args.rank, oversample=args.ref_oversample,
                                                power_iters=args.ref_power_iters, seed=12345, memory=memory,
                                                dtype=np.float64), "reference")
    spec = r["result"]
    resid = np.asarray(spec.diagnostics["ritz_residuals"])
    meta = {"seconds": r["seconds"], "peak_rss_mib": r["peak_rss"] / MIB, "oversample": args.ref_oversample,
            "power_iters": args.ref_power_iters, "passes": spec.diagnostics["passes_over_X"], "dtype": "float64",
            "sim_created": cohort["created"], "max_ritz_residual": float(resid.max())}
    np.savez(path, s=spec.s, resid=resid, meta=json.dumps(meta))
    return {"s": spec.s, "resid": resid, **meta, "reused": False, "path": str(path)}


def exact_top(store, std, k: int) -> tuple[np.ndarray, float]:
    import bigmm

    t0 = time.perf_counter()
    K = bigmm.grm(store.genotypes, std)
    s = bigmm.exact_spectrum(K).s[:k]
    return s, time.perf_counter() - t0


def compare(args, cache: Path, cohort: dict, res: dict) -> None:
    """The side-by-side comparisons at one n (in this process, on one LocalCluster)."""
    import bigmm
    from dask.utils import parse_bytes
    from distributed import get_task_stream

    from bigmm.cluster import dask_client
    from bigmm.config import ClusterConfig

    store = bigmm.open_store(cohort["paths"]["zarr"])
    memory = int(0.6 * parse_bytes(args.memory_limit) / args.threads)  # as bigmm.pipeline.task_memory
    cc = ClusterConfig(workers=args.workers, threads_per_worker=args.threads, memory_limit=args.memory_limit)
    cmp_: dict = {"n": cohort["n"], "memory_per_task": memory, "methods": {}}
    res["compare"] = cmp_
    exe = None
    if not args.no_plink2:
        exe = shutil.which(args.plink2)
        if exe is None:
            log("plink2 not found (apt-get install -y plink2): skipped")
        else:
            cmp_["plink2_version"] = subprocess.run([exe, "--version"], capture_output=True,
                                                    text=True).stdout.strip()
    methods = cmp_["methods"]
    with dask_client(cc) as client:
        log("compare: variant_stats + standardization")
        r = timed(lambda: bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta",
                                                min_maf=args.min_maf, max_missing=args.max_missing), "stats")
        std = r["result"]
        cmp_["p_kept"] = std.n_kept
        cmp_["stats_s"] = r["seconds"]
        ref = reference_spectrum(args, cache, cohort, store, std, memory)
        cmp_["reference"] = {k: v for k, v in ref.items() if k not in ("s", "resid")}
        cmp_["reference"]["top_eigenvalues"] = ref["s"][:10].tolist()
        cmp_["reference"]["ritz_resid_top1"] = float(ref["resid"][0])
        cmp_["reference"]["ritz_resid_max_top10"] = float(ref["resid"][:10].max())
        if cohort["n"] <= args.exact_max_n:
            log("compare: exact eigenvalues (GRM + eigh) to check the reference")
            s_ex, t_ex = exact_top(store, std, args.rank)
            cmp_["exact"] = {"seconds": t_ex, "ref_vs_exact": rel_errors(ref["s"], s_ex)}
            log(f"  reference vs exact: {cmp_['exact']['ref_vs_exact']}")
        dtype = np.float32 if args.dtype == "float32" else np.float64
        specs = {
            "bigmm": dict(k=args.rank),
            "svd_compressed": dict(k=args.rank),
        }
        if exe:
            specs["bigmm_k_plink2"] = dict(k=args.plink2_pcs)
            specs["plink2"] = dict(k=args.plink2_pcs)
        if args.no_svd:
            specs.pop("svd_compressed")
        runs: dict = {m: [] for m in specs}
        errs: dict = {m: [] for m in specs}
        streams: dict = {}
        for rep in range(args.repeats):
            seed = rep
            log(f"compare: repeat {rep + 1}/{args.repeats}")
            for m, spec in specs.items():
                k = spec["k"]
                if m.startswith("bigmm"):
                    with get_task_stream(client) as ts:
                        r = timed(lambda: bigmm.randomized_spectrum(
                            store.genotypes, std, k, oversample=args.oversample, power_iters=args.power_iters,
                            seed=seed, memory=memory, dtype=dtype), f"bigmm randomized_spectrum k={k}")
                    streams[m] = task_stream_summary(ts.data)
                    sp = r["result"]
                    s = sp.s
                    r["passes"] = sp.diagnostics["passes_over_X"]
                    r["max_ritz_residual"] = sp.diagnostics["max_ritz_residual"]
                elif m == "svd_compressed":
                    with get_task_stream(client) as ts:
                        r = timed(lambda: run_svd_compressed(store, std, k, args.oversample, args.power_iters,
                                                             seed, dtype), f"dask svd_compressed k={k}")
                    streams[m] = task_stream_summary(ts.data)
                    s = r["result"][0]
                    r["passes"] = 2 * args.power_iters + 2
                else:
                    r = run_plink2(exe, cohort["paths"]["plink"], cache / f"plink2_pca_{cohort['tag']}_k{k}",
                                   k, args.plink2_threads, args.plink2_memory)
                    s = r["eigenvalues"]
                    r["passes"] = f"{k + 2} (+1 freq.)"  # k + 1 Krylov passes, one to recover the PCs
                    cmp_["plink2_cmd"] = r["cmd"]
                e = rel_errors(s, ref["s"])
                log(f"    {m}: rel. error top-1 {e['top1']:.2e}, max top-10 {e.get('max_top10', float('nan')):.2e}, "
                    f"max top-{e['k']} {max(np.abs(np.asarray(s[:e['k']]) - ref['s'][:e['k']]) / ref['s'][:e['k']]):.2e}")
                r["eig_top"] = np.asarray(s[:10], float).tolist()
                r.pop("result", None)
                r.pop("eigenvalues", None)
                runs[m].append(r)
                errs[m].append(e)
        for m in specs:
            s = summarize(runs[m])
            s["k"] = specs[m]["k"]
            s["passes"] = runs[m][0]["passes"]
            s["errors"] = errs[m]
            s["errors_median"] = {key: statistics.median(e[key] for e in errs[m]) for key in errs[m][0]}
            s["errors_median"]["k"] = errs[m][0]["k"]
            s["eig_top_last"] = runs[m][-1]["eig_top"]
            if "max_ritz_residual" in runs[m][0]:
                s["max_ritz_residual_median"] = statistics.median(r["max_ritz_residual"] for r in runs[m])
            if m in streams:
                s["task_stream"] = streams[m]
            if m == "bigmm" or m == "svd_compressed":
                s["paired_ratio_vs_bigmm"] = [a["seconds"] / b["seconds"] for a, b in zip(runs[m], runs["bigmm"])]
            methods[m] = s
    if "plink2" in methods:
        p2, ref10 = methods["plink2"], np.asarray(cmp_["reference"]["top_eigenvalues"])
        ev = np.asarray(p2["eig_top_last"])
        cmp_["plink2_scale"] = {"ratio_top1": float(ev[0] / ref10[0]),
                                "ratio_median_top10": float(np.median(ev[:10] / ref10[:len(ev[:10])]))}


def task_stream_summary(data: list) -> dict:
    per_worker: dict = {}
    starts, stops, n = [], [], 0
    for rec in data:
        for ss in rec.get("startstops", ()):
            if ss.get("action") == "compute":
                w = rec.get("worker", "?")
                per_worker[w] = per_worker.get(w, 0.0) + ss["stop"] - ss["start"]
                starts.append(ss["start"])
                stops.append(ss["stop"])
                n += 1
    if not n:
        return {}
    span = max(stops) - min(starts)
    return {"tasks": n, "makespan_s": span, "busy_s": sum(per_worker.values()),
            "utilization": sum(per_worker.values()) / (span * max(1, len(per_worker)))}


# --------------------------------------------------------------------------- profile

def _std_for(cache: Path, cohort: dict, store):
    """The standardization of a cohort: from its first end-to-end run when there is one."""
    import bigmm
    from bigmm.pipeline import load_variants

    v = cache / "runs" / f"n{cohort['n']}_r1" / "out" / "variants.zarr"
    if v.exists():
        return load_variants(v)
    return bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")


def profile_task(store, std, ncols: int, n_chunks: int = 2) -> dict:
    """Replay one pass task's loop (bigmm.spectrum._apply_task) over ``n_chunks`` variant chunks after a
    warm-up one, with 1 BLAS thread as in a default worker: Zarr read+decode, standardization, the two
    GEMMs (float32), accumulation."""
    from threadpoolctl import threadpool_limits

    from bigmm.genotypes import standardize_block

    G = store.genotypes
    n, p = G.shape
    cw = G.chunks[1]
    M = np.random.default_rng(0).standard_normal((n, ncols))
    keys = ("read", "standardize", "gemm_XtM", "gemm_XY", "accumulate")
    t = dict.fromkeys(keys, 0.0)
    with threadpool_limits(limits=1, user_api="blas"):
        Md = M.astype(np.float32)
        buf = np.empty(n * cw, dtype=np.float32)
        acc = np.zeros(M.shape)
        for c in range(n_chunks + 1):
            a, b = c * cw, min(p, (c + 1) * cw)
            t0 = time.perf_counter()
            g = np.asarray(G[:, a:b])
            t1 = time.perf_counter()
            X = standardize_block(g, std.center[a:b], std.scale[a:b], np.float32, out=buf)
            t2 = time.perf_counter()
            T = X.T @ Md
            t3 = time.perf_counter()
            Y = X @ T
            t4 = time.perf_counter()
            acc += Y
            t5 = time.perf_counter()
            if c:
                for k, v in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    t[k] += v / n_chunks
    total = sum(t.values())
    n_ch = (p + cw - 1) // cw
    return {"n": n, "ncols": ncols, "chunk_cols": cw, "per_chunk_s": t, "chunk_s": total,
            "ns_per_genotype_read": t["read"] / (n * cw) * 1e9,
            "ns_per_genotype_standardize": t["standardize"] / (n * cw) * 1e9,
            "gflops_gemm": 4.0 * n * cw * ncols / (t["gemm_XtM"] + t["gemm_XY"]) / 1e9,
            "fractions": {k: v / total for k, v in t.items()}, "serial_pass_s": total * n_ch}


def profile_pass_cluster(client, store, std, ncols: int, memory: int) -> dict:
    """One pass on the cluster: bigmm.spectrum.apply_grm as it is (the block of vectors M embedded in the
    task graph), then the same tasks with M scattered to the workers first (client.scatter broadcast)."""
    from distributed import as_completed, get_task_stream

    from bigmm.spectrum import _apply_task, apply_grm, plan_pass

    G = store.genotypes
    n, p = G.shape
    M = np.random.default_rng(1).standard_normal((n, ncols))

    def stream(ts, t_submit):
        recs = [(ss["start"], ss["stop"], r.get("worker")) for r in ts.data for ss in r.get("startstops", ())
                if ss.get("action") == "compute" and ss["stop"] - ss["start"] > 0.05]
        first, last = min(s for s, _, _ in recs), max(e for _, e, _ in recs)
        workers = {w for _, _, w in recs}
        return {"tasks": len(recs), "submit_to_first_task_s": first - t_submit, "makespan_s": last - first,
                "busy_s": sum(e - s for s, e, _ in recs),
                "per_worker_s": sorted(sum(e - s for s, e, w in recs if w == ww) for ww in workers)}

    out = {"n": n, "ncols": ncols}
    with get_task_stream(client) as ts:
        t0 = time.time()
        Y, _ = apply_grm(G, std, M, dtype=np.float32, memory=memory)
        out["apply_grm"] = {"wall_s": time.time() - t0, **stream(ts, t0)}
    cw = G.chunks[1]
    bounds = [(a, min(p, a + cw)) for a in range(0, p, cw) if std.scale[a:min(p, a + cw)].any()]
    nthreads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    plan = plan_pass(n, ncols, bounds, memory, 2 * nthreads, 4)
    with get_task_stream(client) as ts:
        t0 = time.time()
        Mf = client.scatter(M, broadcast=True)
        futs = [client.submit(_apply_task, G, None, std.center, std.scale, grp, plan.sub_width, Mf, np.float32,
                              std.n_kept, False, pure=False) for grp in plan.groups]
        acc = None
        for f in as_completed(futs):
            part = f.result()[0]
            acc = part if acc is None else acc + part
            f.release()
        out["scattered"] = {"wall_s": time.time() - t0, **stream(ts, t0)}
    del Mf
    out["same_result"] = bool(np.allclose(acc, Y, rtol=1e-3, atol=1e-4 * float(np.abs(Y).max())))
    out["groups"] = [len(g) for g in plan.groups]
    log(f"  pass n={n}: apply_grm {out['apply_grm']['wall_s']:.1f} s (compute {out['apply_grm']['busy_s']:.1f} s), "
        f"M scattered {out['scattered']['wall_s']:.1f} s (compute {out['scattered']['busy_s']:.1f} s)")
    return out


def profile_driver(n: int, l: int) -> dict:
    """Driver steps between passes: CholeskyQR2 of the n x l block (all BLAS threads) and the checkpoint."""
    import tempfile

    from bigmm.pipeline import PassCheckpoint
    from bigmm.spectrum import cholesky_qr2

    Y = np.random.default_rng(2).standard_normal((n, l))
    t0 = time.perf_counter()
    Q = cholesky_qr2(Y)
    t_qr = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=REPO / "cache") as d:
        ck = PassCheckpoint(Path(d) / "spectrum.partial", "profile")
        t0 = time.perf_counter()
        ck.save({"pass": 1, "Q": Q, "diag": np.ones(n), "K1": np.ones(n)})
        t_ck = time.perf_counter() - t0
    return {"n": n, "l": l, "cholesky_qr2_s": t_qr, "checkpoint_save_s": t_ck}


def profile(args, cache: Path, res: dict) -> None:
    import bigmm
    from dask.utils import parse_bytes

    from bigmm.cluster import dask_client
    from bigmm.config import ClusterConfig

    l = args.rank + args.oversample
    memory = int(0.6 * parse_bytes(args.memory_limit) / args.threads)
    prof: dict = {"task": [], "cluster": [], "driver": []}
    res["profile"] = prof
    targets = [c for c in res["cohorts"] if c["n"] in (res["args"]["compare_n"], max(args.n))]
    stores = {c["n"]: (c, bigmm.open_store(c["paths"]["zarr"])) for c in targets}
    stds = {}
    for n, (c, store) in stores.items():
        stds[n] = _std_for(cache, c, store)
        for ncols in (l + 1, args.plink2_pcs + args.oversample + 1):
            r = profile_task(store, stds[n], ncols)
            log(f"  task profile n={n} l={ncols}: chunk {r['chunk_s']:.2f} s, GEMM {r['gflops_gemm']:.0f} GFLOP/s, "
                + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["fractions"].items()))
            prof["task"].append(r)
        prof["driver"].append(profile_driver(n, l))
    cc = ClusterConfig(workers=args.workers, threads_per_worker=args.threads, memory_limit=args.memory_limit)
    with dask_client(cc) as client:
        for n, (c, store) in stores.items():
            prof["cluster"].append(profile_pass_cluster(client, store, stds[n], l + 1, memory))


# --------------------------------------------------------------------------- memory plan

def memory_plans(args, ns: list[int]) -> list[dict]:
    """bigmm.spectrum.plan_pass's per-task memory for the widest pass, for this store's variant chunk
    and for the default one (8192), at the run's memory limit (no computation)."""
    from dask.utils import parse_bytes

    from bigmm.spectrum import plan_pass

    memory = int(0.6 * parse_bytes(args.memory_limit) / args.threads)
    l = args.rank + args.oversample
    out = []
    for n in ns:
        for cw in sorted({args.chunks[1], 8192}):
            pl = plan_pass(n, l + 30, [(0, cw)], memory, 1, 4)
            out.append({"n": n, "chunk_width": cw, "sub_width": pl.sub_width, "task_mib": pl.task_bytes / MIB,
                        "vectors_mib": 2 * n * (l + 30) * 8 / MIB, "slab_mib": n * cw / MIB,
                        "standardized_mib": n * pl.sub_width * 4 / MIB})
    return out


# --------------------------------------------------------------------------- report

def stage_s(r: dict, name: str) -> float:
    return r["stages"].get(name, {}).get("seconds", 0.0)


def after_spectrum_s(r: dict) -> float:
    return sum(v["seconds"] for k, v in r["stages"].items() if k not in ("ingest", "variant_stats", "grm", "spectrum"))


def _f(x, fmt="{:.1f}"):
    return "" if x is None else fmt.format(x)


def build_report(res: dict) -> str:
    m = res["machine"]
    a = res["args"]
    lines = [f"Run {res['date']} · p = {a['p']:,} variants · n = "
             + ", ".join(f"{n:,}" for n in a["n"])
             + f" · Zarr chunks {a['chunks'][0]} samples × {a['chunks'][1]} variants · spectrum k = {a['rank']}, "
               f"oversample {a['oversample']}, power_iters {a['power_iters']} (block Krylov: {a['power_iters'] + 1} passes), "
               f"{a['dtype']} · cluster {a['workers']} workers × {a['threads']} thread, memory_limit "
               f"{a['memory_limit']} each",
             "",
             machine_line(m) + f"; {res.get('compare', {}).get('plink2_version', 'plink2 not run')}. "
             f"Load average at start / end: {m['loadavg_start'][0]:.2f} / {res['loadavg_end'][0]:.2f} "
             "(shared machine).",
             ""]
    # data
    lines += ["**Data** (bigmm.simulate → Zarr, cached; "
              + (f"{a['pops']} populations, Fst {a['fst']:g} (Balding–Nichols), " if a["pops"] > 1 else "")
              + f"MAF U(0.05, 0.5), no missing calls, two traits h² = {', '.join(str(h) for h in a['h2'])}; "
              f"simulated in variant blocks of {a['sim_block']}):", "",
              "| n | store on disk | simulate s (when made) | simulate peak RSS MiB | PLINK .bed |",
              "|---:|---:|---:|---:|---:|"]
    for c in res["cohorts"]:
        lines.append(f"| {c['n']:,} | {c['zarr_bytes'] / MIB:,.0f} MiB | {c['simulate_s']:.0f}"
                     f"{' (incl. PLINK)' if c.get('plink') else ''} | {c['simulate_peak_rss_mib']:,.0f} | "
                     + (f"{c['plink_bed_bytes'] / MIB:,.0f} MiB" if c.get("plink_bed_bytes") else "—") + " |")
    lines.append("")
    # end to end
    e2e = res.get("e2e", {})
    if e2e:
        others = sorted({name for runs in e2e.values() for r in runs for name in r["stages"]} - set(MAIN_STAGES))
        lines += ["**End to end**: `python -m bigmm.cli run cfg.yaml` (store given: no ingest stage), fresh output "
                  "directory; stage times from run.json; peak RSS summed over driver + scheduler + nannies + "
                  "workers (psutil, 0.2 s), the sum of per-process peaks (VmHWM) as an upper bound.", "",
                  "| n | runs | total wall s | variant_stats s | spectrum s (passes) | s / pass | rotate s | reml s | "
                  + (f"{' + '.join(others)} s | " if others else "")
                  + "report s | outside stages s | passes over X | peak RSS sum GiB (stage) | ≤ sum of process peaks GiB "
                  "| total µs / sample | other jobs' CPU s | h² ± SE (true " + ", ".join(str(h) for h in a["h2"]) + ") |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if others else "")
                  + "---:|---:|---:|---:|---:|---:|---:|---|"]
        for n_s, runs in sorted(e2e.items(), key=lambda kv: int(kv[0])):
            n = int(n_s)
            med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
            st = lambda name: med(lambda r: stage_s(r, name))  # noqa: E731
            passes = runs[0]["stages"].get("spectrum", {}).get("passes_over_X", 0)
            pass_s = med(lambda r: statistics.mean(p["seconds"] for p in r["passes"])) if runs[0]["passes"] else None
            peak = max(runs, key=lambda r: r["peak_rss_sum_mib"])
            wall = med(lambda r: r["wall_s"])
            walls = sorted(r["wall_s"] for r in runs)
            wall_txt = f"{wall:.1f}" + (f" ({walls[0]:.0f}–{walls[-1]:.0f})" if len(runs) > 1 else "")
            other_cpu = ", ".join(f"{r['other_cpu_s']:.0f}" for r in runs if "other_cpu_s" in r) or "?"
            oth = f"{med(lambda r: sum(stage_s(r, o) for o in others)):.1f} | " if others else ""
            lines.append(
                f"| {n:,} | {len(runs)} | {wall_txt} | {st('variant_stats'):.1f} | {st('spectrum'):.1f} ({passes}) | "
                f"{_f(pass_s)} | {st('rotate'):.1f} | {st('reml'):.1f} | {oth}{st('report'):.1f} | "
                f"{med(lambda r: r['outside_stages_s']):.1f} | {runs[0]['passes_over_X']} | "
                f"{peak['peak_rss_sum_mib'] / 1024:.2f} ({peak['peak_stage']}) | "
                f"{peak['sum_of_process_peaks_mib'] / 1024:.2f} | {wall / n * 1e6:,.0f} | {other_cpu} | "
                + ", ".join(f"{f['h2']:.3f} ± {f['h2_se']:.3f}" for f in runs[0]["fits"]) + " |")
        lines.append("")
        for r in [r for _, runs in sorted(e2e.items(), key=lambda kv: int(kv[0])) for r in runs]:
            n_s = r["n"]
            if not r["passes"]:
                continue
            ps = [p["seconds"] for p in r["passes"]]
            after = [p["after_s"] for p in r["passes"] if "after_s" in p]
            sp = stage_s(r, "spectrum")
            lines.append(f"- n = {int(n_s):,} (run {r['repeat']}"
                         + (f", {r['started'][:16].replace('T', ' ')}" if r.get("started") else "")
                         + (f", load {r['loadavg_1min_start_end'][0]:.1f}→{r['loadavg_1min_start_end'][1]:.1f}, "
                            f"other jobs {r['other_cpu_s']:.0f} CPU s" if "other_cpu_s" in r else "")
                         + f"): spectrum stage {sp:.1f} s = {len(ps)} passes over X "
                         f"{sum(ps):.1f} s ({', '.join(f'{x:.1f}' for x in ps)}) + {sp - sum(ps):.1f} s outside the "
                         f"passes (orthonormalisation, checkpoint after each pass: {statistics.mean(after) if after else 0:.2f} s "
                         f"each, Rayleigh–Ritz, saving the spectrum and pcs.tsv); passes run as {r['passes'][0]['tasks']} "
                         f"tasks; peak of the summed RSS at {r['peak_at_s']:.0f} s into the run "
                         f"(driver {r['peak_driver_mib']:,.0f} MiB + {r['peak_others_mib']:,.0f} MiB in the other "
                         f"processes, {r['max_processes']} processes).")
        lines.append("")
        ns = sorted(int(k) for k in e2e)
        n0 = ns[0]

        def per_n(n, f):
            return statistics.median(f(r) for r in e2e[str(n)]) / n * 1e6

        comps = [("total wall", lambda r: r["wall_s"]),
                 ("variant_stats", lambda r: r["stages"]["variant_stats"]["seconds"]),
                 ("spectrum", lambda r: r["stages"]["spectrum"]["seconds"]),
                 ("stages after the spectrum", after_spectrum_s),
                 ("outside stages", lambda r: r["outside_stages_s"])]
        lines += ["Cost per sample (µs / sample = seconds / n × 10⁶; constant = linear in n), and its ratio to "
                  f"n = {n0:,}:", "",
                  "| component | " + " | ".join(f"n = {n:,}" for n in ns) + " |",
                  "|---|" + "---:|" * len(ns)]
        for label, f in comps:
            base = per_n(n0, f)
            lines.append(f"| {label} | " + " | ".join(
                f"{per_n(n, f):,.0f} (×{per_n(n, f) / base:.2f})" if base > 0 else f"{per_n(n, f):,.1f}"
                for n in ns) + " |")
        lines.append("")
    # comparison
    cmp_ = res.get("compare")
    if cmp_:
        ref = cmp_["reference"]
        meth = cmp_["methods"]
        lines += [f"**Side by side at n = {cmp_['n']:,}** (p = {cmp_['p_kept']:,} kept; same store, standardization "
                  f"and LocalCluster; {a['repeats']} repeats, median, min–max; eigenvalue errors are relative to the "
                  f"reference, median over repeats, max over the top m):", "",
                  "| method | setup | k | passes over X | median s | min–max s | CPU s | peak RSS MiB (sum) | "
                  "top-1 err | max top-10 err | max top-k err | mean top-k err |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        setups = {
            "bigmm": f"bigmm.randomized_spectrum, oversample {a['oversample']}, power_iters {a['power_iters']}, {a['dtype']}",
            "svd_compressed": f"dask svd_compressed(n_oversamples={a['oversample']}, n_power_iter={a['power_iters']}, "
                              f"compute=True) on bigmm.standardized (lazy, {a['dtype']}); λ = s²/p",
            "bigmm_k_plink2": f"bigmm.randomized_spectrum at plink2's k, oversample {a['oversample']}, "
                              f"power_iters {a['power_iters']}, {a['dtype']}",
            "plink2": f"plink2 --pca approx {a['plink2_pcs']} --threads {a['plink2_threads']} (whole job)",
        }
        for mname in ("bigmm", "svd_compressed", "bigmm_k_plink2", "plink2"):
            s = meth.get(mname)
            if not s:
                continue
            e = s["errors_median"]
            k = e["k"]
            rng = f"{s['min_s']:.1f}–{s['max_s']:.1f}" if s["repeats"] > 1 else "—"
            lines.append(f"| {mname} | {setups[mname]} | {s['k']} | {s['passes']} | {s['median_s']:.1f} | {rng} | "
                         f"{s['cpu_s_median']:.0f} | {s['peak_rss_mib_median']:,.0f} | {e['top1']:.1e} | "
                         f"{_f(e.get('max_top10'), '{:.1e}')} | {e[f'max_top{k}'] if f'max_top{k}' in e else e[f'at_{k}']:.1e} | "
                         f"{_f(e.get(f'mean_top{k}'), '{:.1e}')} |")
        lines.append(f"| reference | bigmm.randomized_spectrum float64, oversample {ref['oversample']}, power_iters "
                     f"{ref['power_iters']} (cached) | {a['rank']} | {ref['passes']} | {ref['seconds']:.1f} | — | | "
                     f"{ref['peak_rss_mib']:,.0f} | Ritz resid. {ref['ritz_resid_top1']:.1e} | "
                     f"{ref['ritz_resid_max_top10']:.1e} | {ref['max_ritz_residual']:.1e} | |")
        lines.append("")
        b = meth.get("bigmm")
        notes = []
        if b and "svd_compressed" in meth:
            sv = meth["svd_compressed"]
            notes.append(f"- Time ratio bigmm / svd_compressed = {b['median_s']:.1f} / {sv['median_s']:.1f} = "
                         f"**{b['median_s'] / sv['median_s']:.2f}** (< 1: bigmm faster); median of the paired "
                         f"per-repeat ratios {statistics.median(1 / x for x in sv['paired_ratio_vs_bigmm']):.2f}. "
                         f"CPU time ratio {b['cpu_s_median'] / sv['cpu_s_median']:.2f}.")
        if b and "plink2" in meth:
            p2, bk = meth["plink2"], meth["bigmm_k_plink2"]
            notes.append(f"- Time ratio bigmm / plink2: at k = {a['rank']} (bigmm) vs k = {a['plink2_pcs']} (plink2) "
                         f"{b['median_s']:.1f} / {p2['median_s']:.1f} = **{b['median_s'] / p2['median_s']:.2f}**; at the "
                         f"same k = {a['plink2_pcs']}: {bk['median_s']:.1f} / {p2['median_s']:.1f} = "
                         f"**{bk['median_s'] / p2['median_s']:.2f}**. plink2 --pca approx refuses k > 100 ('--pca approx "
                         "does not support more than 100 PCs'), and it makes k + 1 passes over a Krylov block of 2k "
                         "columns, so its cost grows as k²: k = 200 cannot be run and k = 100 would take about 25× the "
                         f"k = {a['plink2_pcs']} time.")
            sc = cmp_.get("plink2_scale", {})
            if sc:
                notes.append(f"- plink2's eigenvalues are on bigmm's scale (K = X Xᵀ / p with X standardized by "
                             f"√(2f(1−f)); plink2 divides its products by the variant count, 'variant_ct_recip'): top-1 "
                             f"plink2 / reference = {sc['ratio_top1']:.4f}, median over the top 10 "
                             f"{sc['ratio_median_top10']:.4f}, so the errors above compare like with like.")
        if b:
            ts = b.get("task_stream") or {}
            if ts:
                notes.append(f"- bigmm task stream (last repeat): {ts['tasks']} tasks, workers busy "
                             f"{100 * ts['utilization']:.0f}% of the {ts['makespan_s']:.1f} s from first to last task.")
        if "svd_compressed" in meth and meth["svd_compressed"].get("task_stream"):
            ts = meth["svd_compressed"]["task_stream"]
            notes.append(f"- svd_compressed task stream (last repeat): {ts['tasks']} tasks, workers busy "
                         f"{100 * ts['utilization']:.0f}% of {ts['makespan_s']:.1f} s.")
        ex = cmp_.get("exact")
        if ex:
            e = ex["ref_vs_exact"]
            kk = e["k"]
            notes.append(f"- Reference vs exact eigenvalues (GRM + eigh, {ex['seconds']:.0f} s): top-1 {e['top1']:.1e}, "
                         f"max over the top {kk} {e.get(f'max_top{kk}', e[f'at_{kk}']):.1e}.")
        notes.append(f"- The reference's Ritz residuals ‖K u − θ u‖ / θ bound its relative eigenvalue error (θ ≤ λ "
                     f"by interlacing; |λ − θ| ≤ ‖r‖): {ref['ritz_resid_top1']:.1e} at the top, "
                     f"{ref['max_ritz_residual']:.1e} at worst over the top {a['rank']}. Reference top eigenvalues: "
                     + ", ".join(f"{x:.4g}" for x in ref["top_eigenvalues"][:10]) + ".")
        notes.append(f"- bigmm and svd_compressed start from the same standardization; its variant_stats pass "
                     f"({cmp_['stats_s']:.1f} s) is not in their times. plink2's time is its whole job (reading the .bed, "
                     "allele frequencies, PCA, writing).")
        lines += notes + [""]
    # memory plan
    if res.get("memory_plans"):
        lines += ["**Task memory plan** of the widest pass (bigmm.spectrum.plan_pass at memory_limit "
                  f"{a['memory_limit']} × 0.6 per thread; float32; vectors = 2·n·(l + probes)·8 bytes):", "",
                  "| n | variant chunk | standardized sub-block cols | task MiB | vectors MiB | int8 slab MiB | "
                  "standardized MiB |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for pl in res["memory_plans"]:
            lines.append(f"| {pl['n']:,} | {pl['chunk_width']} | {pl['sub_width']} | {pl['task_mib']:,.0f} | "
                         f"{pl['vectors_mib']:,.0f} | {pl['slab_mib']:,.0f} | {pl['standardized_mib']:,.0f} |")
        lines.append("")
    prof = res.get("profile")
    if prof:
        lines += ["**Profile of a pass** (where a pass's time goes; same stores and cluster settings):", ""]
        for r in prof["task"]:
            f = r["fractions"]
            lines.append(f"- One pass task at n = {r['n']:,}, {r['ncols']} vectors (1 BLAS thread, as in a worker; "
                         f"per variant chunk of {r['chunk_cols']}): {r['chunk_s']:.2f} s = GEMMs "
                         f"{100 * (f['gemm_XtM'] + f['gemm_XY']):.0f}% ({r['gflops_gemm']:.0f} GFLOP/s float32), Zarr "
                         f"read+decode {100 * f['read']:.0f}% ({r['ns_per_genotype_read']:.2f} ns/genotype), "
                         f"standardization {100 * f['standardize']:.0f}% ({r['ns_per_genotype_standardize']:.2f} "
                         f"ns/genotype), accumulation {100 * f['accumulate']:.0f}%; one core alone would take "
                         f"{r['serial_pass_s']:.1f} s per pass.")
        for r in prof["cluster"]:
            ag, sc = r["apply_grm"], r["scattered"]
            ser = next((t["serial_pass_s"] for t in prof["task"] if t["n"] == r["n"] and t["ncols"] == r["ncols"]), None)
            lines.append(f"- One pass on the cluster at n = {r['n']:,} ({r['ncols']} vectors, {len(r['groups'])} tasks of "
                         f"{'/'.join(str(g) for g in r['groups'])} variant chunks): bigmm.spectrum.apply_grm "
                         f"{ag['wall_s']:.1f} s wall, tasks computing {ag['busy_s']:.1f} s in all"
                         + (f" (×{ag['busy_s'] / ser:.2f} the one-core time: the two workers slow each other down)"
                            if ser else "")
                         + f", per worker {' / '.join(f'{x:.1f}' for x in ag['per_worker_s'])} s; the same tasks with "
                         f"the vectors scattered to the workers first instead of embedded in the graph: "
                         f"{sc['wall_s']:.1f} s ({100 * (1 - sc['wall_s'] / ag['wall_s']):.0f}% less).")
        for r in prof["driver"]:
            lines.append(f"- Between passes at n = {r['n']:,} (driver): CholeskyQR2 of the n × {r['l']} block "
                         f"{r['cholesky_qr2_s']:.2f} s, the pass checkpoint (PassCheckpoint.save) "
                         f"{r['checkpoint_save_s']:.2f} s.")
        lines.append("")
    if res.get("summary"):
        lines += res["summary"] + [""]
    lines += ["Regenerate:", "", "```", res["command"], "```"]
    return "\n".join(lines)


def goals(res: dict, args) -> list[str]:
    """Plain sentences: where time goes and whether the goals of issue 4 are met."""
    e2e = res.get("e2e", {})
    if not e2e:
        return []
    ns = sorted(int(k) for k in e2e)
    big = ns[-1]
    rb = e2e[str(big)]
    wall = statistics.median(r["wall_s"] for r in rb)
    rss = max(r["peak_rss_sum_mib"] for r in rb) / 1024
    ub = max(r["sum_of_process_peaks_mib"] for r in rb) / 1024
    out = []
    r0 = e2e[str(ns[0])]
    w0 = statistics.median(r["wall_s"] for r in r0)
    ratio = (wall / big) / (w0 / ns[0])
    sp = statistics.median(r["stages"]["spectrum"]["seconds"] for r in rb)
    vs = statistics.median(r["stages"]["variant_stats"]["seconds"] for r in rb)
    rr = statistics.median(after_spectrum_s(r) for r in rb)
    sim = next((c["simulate_s"] for c in res["cohorts"] if c["n"] == big), None)
    out.append(f"- Where the time goes at n = {big:,}: spectrum {sp:.0f} s ({100 * sp / wall:.0f}% of {wall:.0f} s), "
               f"variant_stats {vs:.0f} s ({100 * vs / wall:.0f}%), the stages after it (rotate, REML, report...) "
               f"{rr:.0f} s "
               f"({100 * rr / wall:.0f}%), start-up/validation/cluster outside the stages "
               f"{wall - sum(r['stages_sum_s'] for r in rb) / len(rb):.0f} s. "
               + (f"Simulating that cohort took {sim:.0f} s (once; not part of the run)." if sim else ""))
    lin = "yes" if ratio <= 1.15 else ("roughly" if ratio <= 1.35 else "no")
    out.append(f"- Goal: cost linear in n — {lin}: time per sample at n = {big:,} is ×{ratio:.2f} that at "
               f"n = {ns[0]:,}.")
    out.append(f"- Goal: total RSS under 6 GiB at n = {big:,} — {'met' if rss < 6 else 'NOT met'}: sampled peak of "
               f"the summed RSS {rss:.2f} GiB (sum of per-process peaks, an upper bound: {ub:.2f} GiB).")
    out.append(f"- Goal: end to end under 15 minutes at n = {big:,} — {'met' if wall < 900 else 'NOT met'}: "
               f"{wall / 60:.1f} min ({len(rb)} run{'s' if len(rb) > 1 else ''}).")
    return out


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
    ap.add_argument("--plink2", default="plink2")
    ap.add_argument("--plink2-pcs", type=int, default=20, help="plink2 --pca approx K (plink2 allows K <= 100)")
    ap.add_argument("--plink2-threads", type=int, default=2)
    ap.add_argument("--plink2-memory", type=int, default=4000, help="plink2 --memory, MiB")
    ap.add_argument("--no-plink2", action="store_true")
    ap.add_argument("--no-svd", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of a pass")
    ap.add_argument("--write-docs", action="store_true", help="write the section to docs/benchmarks.md")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    args.n = sorted(set(args.n))
    cn = args.compare_n or args.n[0]
    if cn not in args.n:
        args.n = sorted(args.n + [cn])

    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
                 "machine": machine_info(),
                 "command": "python scripts/bench_scale.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    res["args"]["compare_n"] = cn
    out_json = cache / "bench_scale_results.json"

    def save():
        out_json.write_text(json.dumps(res, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
                            + "\n")

    previous, previous_compare, previous_compare_date = {}, None, None
    if args.reuse_compare and out_json.exists():
        old = json.loads(out_json.read_text())
        keys = ("p", "seed", "pops", "fst", "chunks", "rank", "oversample", "power_iters", "dtype", "workers",
                "threads", "memory_limit", "min_maf", "max_missing", "compare_n", "repeats", "ref_oversample",
                "ref_power_iters", "plink2_pcs", "plink2_threads", "no_svd", "no_plink2")
        if "compare" in old and all(old.get("args", {}).get(k) == res["args"].get(k) for k in keys):
            previous_compare = old["compare"]
            previous_compare_date = old.get("compare_reused_from", old.get("date"))
    if args.reuse_e2e and out_json.exists():
        old = json.loads(out_json.read_text())
        same = all(old.get("args", {}).get(k) == res["args"].get(k)
                   for k in ("p", "seed", "pops", "fst", "chunks", "rank", "oversample", "power_iters", "dtype",
                             "workers", "threads", "memory_limit", "min_maf", "max_missing", "h2", "sim_block"))
        if same:
            previous = old.get("e2e", {})
            res["e2e_reused_from"] = old.get("e2e_reused_from", old.get("date"))
    res["cohorts"] = [ensure_cohort(args, cache, n, need_plink=(n == cn and not args.no_plink2)) for n in args.n]
    save()
    res["memory_plans"] = memory_plans(args, args.n)
    if not args.no_e2e:
        res["e2e"] = {}
        for c in res["cohorts"]:
            key = str(c["n"])
            runs = list(previous.get(key, []))[:args.e2e_repeats]
            if runs:
                log(f"end to end n={c['n']}: reusing {len(runs)} run(s) of {res['e2e_reused_from']}")
            res["e2e"][key] = runs
            for r in range(len(runs), args.e2e_repeats):
                runs.append(run_e2e(args, cache, c, r))
                save()
    if not args.no_compare:
        if previous_compare is not None:
            log(f"compare: reusing the comparison of {previous_compare_date}")
            res["compare"] = previous_compare
            res["compare_reused_from"] = previous_compare_date
        else:
            compare(args, cache, next(c for c in res["cohorts"] if c["n"] == cn), res)
        save()
    if not args.no_profile:
        log("profile: one pass task, one pass on the cluster, driver steps")
        profile(args, cache, res)
        save()
    res["loadavg_end"] = os.getloadavg()
    res["summary"] = goals(res, args)
    save()
    report = build_report(res)
    print(f"\n## {SECTION}\n")
    print(report)
    log(f"results: {out_json}")
    if args.write_docs:
        write_docs(args.docs, SECTION, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
