#!/usr/bin/env python
"""Simulation study: matrix-free REML (Lanczos quadrature) against exact REML, and its defaults.

For two cohorts simulated here in NumPy ((a) structured: ``--pops`` populations whose allele
frequencies drift from an ancestral one by the Balding–Nichols model at ``--fst``; (b)
unrelated: independent binomial allele counts with random frequencies), the script computes
the GRM with bigmm's public API (``bigmm.variant_stats``, ``bigmm.standardization`` "gcta",
``bigmm.grm``) and its exact spectrum (``bigmm.exact_spectrum``). For each true h² it draws
``--reps`` replicate phenotypes from the full model ``y = 1 + L z``, ``L Lᵀ = h² K + (1 − h²) I``
(L from the exact eigendecomposition) and fits them with

* exact REML: ``bigmm.fit_reml`` on the exact spectrum (the reference, all phenotypes at once);
* reduced-spectrum REML: ``bigmm.fit_reml`` on ``exact.top(k)`` (k = ``--k``);
* matrix-free REML: ``bigmm.mfreml.fit_matrix_free`` on an in-memory operator of K (the
  arithmetic of a pass over the genotypes), in several configurations (probes N, tol,
  deflation by the exact top-k eigenpairs). Each call fits ``--batch`` replicates of every h²
  (so 3 · batch phenotypes share one Krylov block and one set of probes) with its own probe
  seed: Monte Carlo errors of replicates in different calls are independent;
* Haseman–Elston (``h2_he``, the first pass of the default matrix-free configuration).

Per (cohort, h², method) the report gives the mean ĥ² and its bias ± MC SE (SD/√R), the SD,
the mean reported SE and its ratio to the SD (calibration), the efficiency
``Var(ĥ²_exact) / Var(ĥ²_method)`` on the same replicates, ``RMS(ĥ²_method − ĥ²_exact)`` (for the
matrix-free rows: the Monte Carlo + quadrature error), the mean reported Monte Carlo SD
``h2_se_mc`` and its ratio to the mean statistical SE, mean Lanczos steps (passes over X) and
boundary counts. The goal for the defaults: efficiency ≥ 0.95 and MC SD ≤ ¼ statistical SE
with the fewest steps.

Usage::

    python scripts/studies/sim_matrix_free.py --n 1000 --p 2000 --reps 20 --no-docs  # smoke run
    python scripts/studies/sim_matrix_free.py        # the study in docs/matrix_free.md

A section between ``<!-- discussion -->`` and ``<!-- /discussion -->`` in the output is
hand-written and kept when the file is regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "bench"))
from common import machine_info  # noqa: E402  (the benchmarks' one helper module)
T0 = time.perf_counter()
DISC_BEGIN = "<!-- discussion -->"
DISC_END = "<!-- /discussion -->"
H2S = (0.2, 0.5, 0.8)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


class DenseOperator:
    """K in memory behind the operator interface of fit_matrix_free (counts passes)."""

    def __init__(self, K: np.ndarray):
        self.K = K
        self.passes = 0

    @property
    def n(self) -> int:
        return self.K.shape[0]

    def apply(self, M, want_diag=False):
        self.passes += 1
        return self.K @ M, (np.diag(self.K).copy() if want_diag else None)


#: the matrix-free solver's source files, hashed together as its provenance
SOLVER_MODULES = ("lanczos.py", "mf_likelihood.py", "mf_pattern.py", "mf_quadrature.py", "mf_solver.py", "mfreml.py")


def provenance() -> dict:
    """The machine and software (scripts/bench/common.py's machine_info) plus the hash of the
    solver's modules (mfreml.py and the modules it is built from, in name order)."""
    import hashlib

    m = machine_info()
    h = hashlib.sha256()
    for name in SOLVER_MODULES:
        h.update((REPO / "bigmm" / name).read_bytes())
    return {"git": m["git_commit"], "mfreml_sha256": h.hexdigest()[:12],
            "bigmm": m["bigmm"], "numpy": m["numpy"], "scipy": m["scipy"], "python": m["python"], "cpu": m["cpu"],
            "nproc": m["nproc"], "loadavg_start": [round(x, 2) for x in m["loadavg_start"]]}


# --------------------------------------------------------------------------- data

def simulate_genotypes(n: int, p: int, *, pops: int, fst: float, seed: int) -> np.ndarray:
    """Allele counts 0/1/2 (int8). One population: independent Binomial(2, f), f ~ U(0.05, 0.5).
    Several: ancestral f ~ U(0.05, 0.5), population frequencies ~ Beta(f(1−F)/F, (1−f)(1−F)/F)
    (Balding–Nichols), samples assigned to populations in equal shares."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 0.5, size=p)
    if pops <= 1:
        return rng.binomial(2, f, size=(n, p)).astype(np.int8)
    a = f * (1 - fst) / fst
    b = (1 - f) * (1 - fst) / fst
    fp = rng.beta(a, b, size=(pops, p))
    pop = np.arange(n) % pops
    G = np.empty((n, p), dtype=np.int8)
    for k in range(pops):
        rows = np.flatnonzero(pop == k)
        G[rows] = rng.binomial(2, fp[k], size=(rows.size, p))
    return G


def draw_phenotypes(exact, h2: float, R: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    root = exact.U * np.sqrt(np.clip(h2 * exact.s + (1.0 - h2), 0.0, None))
    return 1.0 + root @ rng.standard_normal((exact.n, R))


# --------------------------------------------------------------------------- fits

def reml_arrays(res) -> dict:
    return {"h2": np.array([f.h2 for f in res.fits]), "se": np.array([f.h2_se for f in res.fits]),
            "boundary": np.array([f.boundary != "" for f in res.fits])}


def run_matrix_free(K, Y, exact, cfg: dict, batch: int, R: int, seed: int) -> dict:
    """Fit the (n, 3R) phenotype matrix in calls of `batch` replicates of every h²."""
    from bigmm.mfreml import fit_matrix_free

    m = Y.shape[1]
    out = {k: np.full(m, np.nan) for k in ("h2", "se", "se_mc", "se_stat", "he", "steps", "dh")}
    out["boundary"] = np.zeros(m, bool)
    out["converged"] = np.zeros(m, bool)
    op = DenseOperator(K)
    deflate = exact.top(cfg["deflate"]) if cfg.get("deflate") else None
    t = time.perf_counter()
    calls = 0
    for c0 in range(0, R, batch):
        cols = np.concatenate([np.arange(i * R + c0, i * R + min(R, c0 + batch)) for i in range(len(H2S))])
        res = fit_matrix_free(op, Y[:, cols], probes=cfg["probes"], tol=cfg["tol"],
                              max_steps=cfg.get("max_steps", 100), deflate=deflate, seed=seed + calls)
        calls += 1
        for j, f in zip(cols, res.fits):
            out["h2"][j], out["se"][j], out["se_mc"][j] = f.h2, f.h2_se, f.h2_se_mc
            out["se_stat"][j], out["he"][j], out["steps"][j] = f.h2_se_stat, f.h2_he, f.lanczos_steps
            out["dh"][j] = f.delta_h2
            out["boundary"][j] = f.boundary != ""
            out["converged"][j] = f.converged
    out["seconds"] = time.perf_counter() - t
    out["calls"] = calls
    out["passes"] = op.passes
    return out


def row_stats(est: np.ndarray, se, ex: np.ndarray, h2: float, *, mc=None, stat=None, steps=None,
              boundary=None) -> dict:
    R = est.size
    sd = float(est.std(ddof=1))
    diff = est - ex
    d = {"mean": float(est.mean()), "bias": float(est.mean() - h2), "mcse": sd / np.sqrt(R), "sd": sd,
         "mean_se": float(np.nanmean(se)) if se is not None else float("nan"),
         "eff": float(ex.var(ddof=1) / est.var(ddof=1)),
         "rms_diff": float(np.sqrt(np.mean(diff ** 2))),
         "mean_mc": float(np.mean(mc)) if mc is not None else float("nan"),
         "mean_stat": float(np.mean(stat)) if stat is not None else float("nan"),
         "steps": float(np.mean(steps)) if steps is not None else float("nan"),
         "n_boundary": int(boundary.sum()) if boundary is not None else 0}
    d["se_ratio"] = d["mean_se"] / sd if sd > 0 else float("nan")
    d["mc_ratio"] = d["mean_mc"] / d["mean_stat"] if d["mean_stat"] > 0 else float("nan")
    # efficiency from the paired difference: Var_exact / (Var_exact + MS(diff)), less noisy
    d["eff_paired"] = float(ex.var(ddof=1) / (ex.var(ddof=1) + np.mean(diff ** 2)))
    return d


# --------------------------------------------------------------------------- report

def f3(x):
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


def f4(x):
    return "–" if x is None or not np.isfinite(x) else f"{x:.4f}"


def cohort_table(rows: list) -> str:
    head = ("| h² | method | mean ĥ² | bias ± MC SE | SD | mean SE | SE / SD | efficiency | "
            "paired eff. | RMS(ĥ² − ĥ²_exact) | mean MC SD | MC SD / stat SE | steps | at bound |")
    lines = [head, "| " + " | ".join(["---:"] * 14) + " |"]
    for h2, name, s in rows:
        steps = "–" if not np.isfinite(s["steps"]) else f"{s['steps']:.1f}"
        lines.append(
            f"| {h2} | {name} | {f4(s['mean'])} | {s['bias']:+.4f} ± {s['mcse']:.4f} | {f4(s['sd'])} | "
            f"{f4(s['mean_se'])} | {f3(s['se_ratio'])} | {f3(s['eff'])} | {f3(s['eff_paired'])} | "
            f"{f4(s['rms_diff'])} | {f4(s['mean_mc'])} | {f3(s['mc_ratio'])} | "
            f"{steps} | "
            f"{s['n_boundary']} |")
    return "\n".join(lines)


def config_name(cfg: dict) -> str:
    s = f"MF N={cfg['probes']} tol={cfg['tol']:g}"
    if cfg.get("deflate"):
        s += f" defl k={cfg['deflate']}"
    return s


def keep_discussion(path: Path) -> str:
    if path.exists():
        text = path.read_text()
        if DISC_BEGIN in text and DISC_END in text:
            return text[text.index(DISC_BEGIN):text.index(DISC_END) + len(DISC_END)]
    return f"{DISC_BEGIN}\n_(no discussion yet)_\n{DISC_END}"


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--p", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=100, help="replicates per (cohort, h²)")
    ap.add_argument("--batch", type=int, default=5, help="replicates of each h² per matrix-free call")
    ap.add_argument("--pops", type=int, default=10)
    ap.add_argument("--fst", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=200, help="rank of the reduced-spectrum REML rows")
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--configs", default="30:1e-4:0,10:1e-4:0,30:1e-3:0,10:1e-3:0,30:1e-4:20",
                    help="matrix-free configurations probes:tol:deflation rank (0 = none); the first is "
                         "the default one (its first pass gives the Haseman–Elston rows)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads (1: the driver's small products stall with threads on a busy machine)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "matrix_free.md")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        return study(args, argv)


def study(args, argv) -> int:
    import bigmm

    cfgs = []
    for c in args.configs.split(","):
        N, tol, d = c.split(":")
        cfgs.append({"probes": int(N), "tol": float(tol), "deflate": int(d)})
    prov = provenance()
    cmd = "python scripts/studies/sim_matrix_free.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    log(f"{cmd}\n{json.dumps(prov)}")
    cohorts = [("structured", f"(a) structured: {args.pops} populations, Balding–Nichols F_ST = {args.fst}",
                args.pops, args.seed + 1),
               ("unrelated", "(b) unrelated: one population", 1, args.seed + 2)]
    sections, summary = [], {}
    for ci, (cname, title, pops, cseed) in enumerate(cohorts):
        t = time.perf_counter()
        G = simulate_genotypes(args.n, args.p, pops=pops, fst=args.fst, seed=cseed)
        std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
        K = np.asarray(bigmm.grm(G, std))
        del G
        t_grm = time.perf_counter() - t
        t = time.perf_counter()
        exact = bigmm.exact_spectrum(K)
        t_eigh = time.perf_counter() - t
        log(f"{cname}: p kept {std.n_kept}, GRM {t_grm:.1f} s, eigh {t_eigh:.1f} s, top eigenvalues "
            f"{np.round(exact.s[:12], 2).tolist()}")
        R = args.reps
        pseeds = [args.seed + 100 * (ci + 1) + i for i in range(len(H2S))]
        Y = np.hstack([draw_phenotypes(exact, h2, R, s) for h2, s in zip(H2S, pseeds)])
        t = time.perf_counter()
        ex = reml_arrays(bigmm.fit_reml(exact, Y))
        t_exact = time.perf_counter() - t
        red = reml_arrays(bigmm.fit_reml(exact.top(args.k), Y))
        log(f"{cname}: exact REML of {Y.shape[1]} phenotypes {t_exact:.1f} s")
        mf = []
        for k, cfg in enumerate(cfgs):
            out = run_matrix_free(K, Y, exact, cfg, args.batch, R, seed=args.seed + 1000 * (ci + 1) + 100 * k)
            mf.append(out)
            log(f"{cname}: {config_name(cfg)}: {out['calls']} calls, {out['passes']} passes, mean steps "
                f"{np.mean(out['steps']):.1f}, {out['seconds']:.1f} s, converged {int(out['converged'].sum())}/"
                f"{out['converged'].size}")
        rows, csum = [], {}
        for i, h2 in enumerate(H2S):
            sl = slice(i * R, (i + 1) * R)
            e = ex["h2"][sl]
            rows.append((h2, "exact REML", row_stats(e, ex["se"][sl], e, h2, boundary=ex["boundary"][sl])))
            for cfg, out in zip(cfgs, mf):
                st = row_stats(out["h2"][sl], out["se"][sl], e, h2, mc=out["se_mc"][sl], stat=out["se_stat"][sl],
                               steps=out["steps"][sl], boundary=out["boundary"][sl])
                rows.append((h2, config_name(cfg), st))
                csum.setdefault(config_name(cfg), []).append(
                    {"h2": h2, "eff": st["eff"], "eff_paired": st["eff_paired"], "mc_ratio": st["mc_ratio"],
                     "rms_over_mc": st["rms_diff"] / st["mean_mc"], "steps": st["steps"],
                     "max_steps_seen": float(np.max(out["steps"][sl])), "seconds": out["seconds"],
                     "converged": int(out["converged"][sl].sum()), "se_ratio": st["se_ratio"]})
            rows.append((h2, f"reduced top {args.k}", row_stats(red["h2"][sl], red["se"][sl], e, h2,
                                                                boundary=red["boundary"][sl])))
            he = mf[0]["he"][sl]
            rows.append((h2, "Haseman–Elston (pass 1)", row_stats(he, None, e, h2)))
        summary[cname] = csum
        info = (f"p = {std.n_kept} variants kept of {args.p}; tr K = {exact.trace_K:.1f}; top eigenvalues "
                f"{', '.join(f'{x:.2f}' for x in exact.s[:10])}; λ_min = {exact.s[-2]:.3f} (then 0: K 1 = 0); "
                f"GRM {t_grm:.0f} s, eigh {t_eigh:.0f} s; exact REML of {Y.shape[1]} phenotypes {t_exact:.1f} s; "
                + "; ".join(f"{config_name(c)}: {o['seconds']:.0f} s for {o['calls']} calls "
                            f"({o['passes']} passes)" for c, o in zip(cfgs, mf)))
        sections.append(f"## {title}\n\n{info}\n\n{cohort_table(rows)}\n")
        del K, exact
    # summary of the configurations
    lines = ["| configuration | cohort | min efficiency | min paired eff. | max MC SD / stat SE | "
             "RMS diff / mean MC SD | mean steps (per h²) | max steps | converged | MF seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cfg in cfgs:
        nm = config_name(cfg)
        for cname in summary:
            s = summary[cname][nm]
            lines.append(f"| {nm} | {cname} | {min(x['eff'] for x in s):.3f} | "
                         f"{min(x['eff_paired'] for x in s):.3f} | {max(x['mc_ratio'] for x in s):.3f} | "
                         + ", ".join(f"{x['rms_over_mc']:.2f}" for x in s) + " | "
                         + ", ".join(f"{x['steps']:.1f}" for x in s) + f" | {max(x['max_steps_seen'] for x in s):.0f} | "
                         f"{sum(x['converged'] for x in s)}/{len(H2S) * args.reps} | {s[0]['seconds']:.0f} |")
    prov["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    prov["minutes"] = round((time.perf_counter() - T0) / 60, 1)
    doc = "\n".join([
        "# Matrix-free REML: accuracy against exact REML, and its defaults",
        "",
        f"Generated by `{cmd}` (git {prov['git']}, the solver's modules ({', '.join(SOLVER_MODULES)}) sha256 {prov['mfreml_sha256']}, "
        f"bigmm {prov['bigmm']}, numpy {prov['numpy']}, "
        f"scipy {prov['scipy']}, {prov['cpu']}, {prov['nproc']} CPUs, load average "
        f"{prov['loadavg_start']} → {prov['loadavg_end']}, {prov['minutes']} minutes). "
        "Regenerate with the same command; the discussion section is kept.",
        "",
        "## Method",
        "",
        f"- Cohorts of n = {args.n} samples and p = {args.p} simulated variants (GCTA-standardized GRM via "
        "`bigmm.grm`, exact spectrum via `bigmm.exact_spectrum`). Structured: samples split equally over "
        f"{args.pops} populations with Balding–Nichols frequencies at F_ST = {args.fst}; unrelated: one population.",
        f"- For each h² ∈ {{{', '.join(map(str, H2S))}}}: R = {args.reps} replicate phenotypes `y = 1 + L z`, "
        "`L Lᵀ = h² K + (1 − h²) I`, intercept only.",
        "- exact REML: `bigmm.fit_reml` on the exact spectrum (the reference); reduced top k: `bigmm.fit_reml` "
        "on `exact.top(k)`; MF: `bigmm.mfreml.fit_matrix_free` with an in-memory operator of K "
        f"(BLAS threads: {args.threads}), "
        f"{args.batch} replicates of every h² per call (one Krylov block, one probe set), a new probe seed "
        "per call; deflation uses the exact top-k eigenpairs; Haseman–Elston from the first pass of the "
        "first MF configuration.",
        "- Columns: bias ± MC SE (SD/√R); mean SE = mean reported `h2_se` (for MF: statistical and Monte "
        "Carlo combined); SE / SD its calibration; efficiency = Var(ĥ²_exact)/Var(ĥ²_method) on the same "
        "replicates; paired eff. = Var(ĥ²_exact)/(Var(ĥ²_exact) + mean (ĥ²_method − ĥ²_exact)²), which "
        "does not depend on the sampling noise of two variances; RMS(ĥ² − ĥ²_exact) is the method's own "
        "error (MF: probes + quadrature); mean MC SD = mean reported `h2_se_mc` (delete-one-probe "
        "jackknife) and its ratio to the mean statistical SE `h2_se_stat`; steps = Lanczos steps = passes "
        "over X per call.",
        f"- Seeds: cohorts {args.seed + 1}, {args.seed + 2}; phenotypes {args.seed}+100·(cohort)+i; probes "
        f"{args.seed}+1000·(cohort)+100·(configuration)+call.",
        "",
        "## Summary by configuration",
        "",
        "\n".join(lines),
        "",
        "## Discussion",
        "",
        keep_discussion(args.out),
        "",
        *sections,
    ])
    print(doc)
    if not args.no_docs:
        args.out.write_text(doc)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
