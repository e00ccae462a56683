#!/usr/bin/env python
"""Simulation study: partitioned heritability (several variance components) against one component.

Each replicate draws a fresh cohort in NumPy (fresh genotypes, so that no figure is conditional
on one genotype matrix): n samples, p variants in LD blocks of ``--block`` variants. Allele
frequencies follow a 1/f spectrum on [0.01, 0.5] (f = 0.01 · 50^U); within a block each
haplotype carries a latent Gaussian AR(1) chain with correlation ρ_b ~ U(0.9, 0.995), and a
variant of frequency f reads it with loading c = 0.999 · min(1, √(f / 0.1)) plus its own noise,
the allele being present where the latent value is below Φ⁻¹(f). Rare variants are thereby in
weaker LD than common ones (their LD scores are about a third of the common variants'), as in
human data. Components and GRMs come from bigmm's public API: ``bigmm.variant_stats``,
``bigmm.standardization`` ("gcta"), ``bigmm.maf_bins``, ``bigmm.cross`` and
``bigmm.component_grms`` (one pass for the crossing MAF bin × annotation; the GRM of any
coarser split, and of all variants, is the variant-count weighted sum of its parts).

Rows (scenarios), each with total h² = ``--h2`` and per-variant effect variances
τ_s ∝ [2 f_s (1 − f_s)]^(1+α) on the standardized scale (α = ``--alpha``, default −1: equal
variance per standardized variant, per-allele effects growing as 1/√(2f(1−f))):

* ``lowmaf``: only variants with sample MAF < 0.05 are causal. Partition: MAF bins
  ``--maf-edges`` (default 0, 0.05, 0.2, 0.5).
* ``annot``: an annotation made of 10% of the LD blocks (chosen at random per replicate)
  carries half of h² (enrichment 5). Partition: annotation vs. the rest.
* ``even``: every variant causal, τ as above. Partition: the MAF bins (both fits unbiased).

Fits per replicate and row (``--methods``):

* ``one``: one-component REML, ``bigmm.fit_components`` with the GRM of all variants (m = 1);
* ``exact``: the partitioned exact AI-REML, ``bigmm.fit_components`` on the m GRMs;
* ``mf``: the partitioned matrix-free REML,
  ``bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks), ...)`` (the same
  arithmetic as a pass over the genotypes; its probe seed differs per replicate).

Fits are unconstrained by default (``--constrain`` for GCTA's σ²_j ≥ 0), so that components whose
truth is 0 do not pick up the truncation bias of the boundary. The truth compared with is the
design value (the expectation over effects and noise: h²_j = Σ_{s∈j} τ_s with Var(y) = 1);
the realised share Var(X_j β_j) / Var(y) of each replicate is recorded too, and its mean is
reported beside it.

Every replicate's fits are appended to a JSON-lines file (``--out`` with suffix ``.jsonl``) as
they finish, one line per (replicate, row, method); a rerun skips what is there, so a long run
can be interrupted and resumed, and adding ``mf`` later fits only the missing method. The
summary (``--out``) and the Markdown tables printed at the end cover replicates 0..R−1.

Usage::

    python scripts/studies/components_study.py --replicates 100 --methods one,exact,mf \\
        --out results/components_study.json            # the study in docs/components_study.md
    python scripts/studies/components_study.py --replicates 4 --n 400 --p 1500 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
T0 = time.perf_counter()
SCENARIOS = ("lowmaf", "annot", "even")
METHODS = ("one", "exact", "mf")
ANNOT = "annot"
#: the quantities compared across methods: the total h² of every method; h²_j and, for the
#: annotation row, the annotation's enrichment for the partitioned ones
TOTAL = "h2_total"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- data

def simulate_genotypes(n: int, p: int, rng: np.random.Generator, *, block: int = 100,
                       rho=(0.9, 0.995), maf_ld: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Allele counts (n, p) int8 in LD blocks, and each variant's block index.

    Frequencies f = 0.01 · 50^U (a 1/f spectrum on [0.01, 0.5]). Per haplotype and block a latent
    AR(1) chain a (correlation ρ_b ~ U(rho) between neighbours); variant s reads
    z = c_s a_s + √(1 − c_s²) ε_s with c_s = 0.999 · min(1, √(f_s / maf_ld)), and carries the
    allele where z < Φ⁻¹(f_s): its frequency is f_s, and rarer variants are in weaker LD.
    """
    from scipy.special import ndtri

    f = 0.01 * 50.0 ** rng.random(p)
    thresh = ndtri(f)
    c = 0.999 * np.minimum(1.0, np.sqrt(f / maf_ld))
    starts = np.arange(0, p, block)
    rhos = rng.uniform(rho[0], rho[1], size=starts.size)
    G = np.zeros((n, p), dtype=np.int8)
    for _ in range(2):  # two haplotypes
        a = rng.standard_normal((n, p))
        for b0, r in zip(starts, rhos):
            s = np.sqrt(1.0 - r * r)
            for j in range(b0 + 1, min(p, b0 + block)):
                a[:, j] = r * a[:, j - 1] + s * a[:, j]
        z = c * a + np.sqrt(1.0 - c * c) * rng.standard_normal((n, p))
        G += (z < thresh).astype(np.int8)
    return G, np.repeat(np.arange(starts.size), block)[:p]


def ld_scores_in_blocks(X: np.ndarray, block_of: np.ndarray) -> np.ndarray:
    """LD score of each variant within its block, Σ_t r̃²_st with r̃² = r² − (1 − r²)/(n − 2)
    (the unbiased r²), from the standardized matrix X (for the report of the LD pattern)."""
    n = X.shape[0]
    out = np.zeros(X.shape[1])
    for b in np.unique(block_of):
        cols = np.flatnonzero(block_of == b)
        Xb = X[:, cols]
        Xb = (Xb - Xb.mean(0)) / np.where(Xb.std(0) > 0, Xb.std(0), 1.0)
        r2 = (Xb.T @ Xb / n) ** 2
        out[cols] = (r2 - (1.0 - r2) / (n - 2)).sum(1)
    return out


def design(scenario: str, maf: np.ndarray, annot: np.ndarray, parts: dict, h2: float, alpha: float):
    """Per-variant effect variances τ (standardized scale, summing to h²) and the partition fitted.

    Returns (tau, partition name, truth dict: h²_j per component of the partition, the total
    and, for the annotation row, the annotation's enrichment)."""
    kept = np.isfinite(maf)  # NaN: a variant the standardization dropped (monomorphic), never causal
    het = np.where(kept, (2.0 * np.where(kept, maf, 0.25) * (1.0 - np.where(kept, maf, 0.25))) ** (1.0 + alpha), 0.0)
    if scenario == "lowmaf":
        w = np.where(kept & (np.nan_to_num(maf, nan=1.0) < 0.05), het, 0.0)
        tau, part = h2 * w / w.sum(), "maf"
    elif scenario == "annot":
        wa, wr = np.where(annot, het, 0.0), np.where(annot, 0.0, het)
        tau, part = 0.5 * h2 * wa / wa.sum() + 0.5 * h2 * wr / wr.sum(), "annot"
    elif scenario == "even":
        tau, part = h2 * het / het.sum(), "maf"
    else:
        raise ValueError(scenario)
    comps = parts[part]
    truth = {f"h2[{name}]": float(tau[comps.assignment == j].sum()) for j, name in enumerate(comps.names)}
    truth[TOTAL] = float(tau.sum())
    if part == "annot":
        share = truth[f"h2[{ANNOT}]"] / truth[TOTAL]
        truth[f"enrichment[{ANNOT}]"] = share / float(annot.mean())
    return tau, part, truth


# --------------------------------------------------------------------------- one replicate

def estimates(fit) -> dict:
    """The compared quantities of one ComponentsFit, with reported SE and Monte Carlo SD."""
    def mc(obj):
        return float(getattr(obj, "h2_se_mc", float("nan")))
    out = {TOTAL: (float(fit.h2), float(fit.h2_se), mc(fit))}
    if fit.n_components > 1:
        for c in fit.components:
            out[f"h2[{c.name}]"] = (float(c.h2), float(c.h2_se), mc(c))
            if c.name == ANNOT:
                out[f"enrichment[{c.name}]"] = (float(c.enrichment), float(c.enrichment_se), float("nan"))
    return out


def run_replicate(rep: int, cfg: dict, todo: set) -> list[dict]:
    """Simulate replicate ``rep`` and fit the (row, method) pairs in ``todo``; one record each."""
    import bigmm

    ss = np.random.SeedSequence([cfg["seed"], rep])
    rng_g, rng_y, rng_mf = (np.random.default_rng(s) for s in ss.spawn(3))
    t0 = time.perf_counter()
    G, block_of = simulate_genotypes(cfg["n"], cfg["p"], rng_g, block=cfg["block"])
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    maf_c = bigmm.maf_bins(std, cfg["maf_edges"])
    blocks = np.unique(block_of)
    chosen = rng_g.choice(blocks, size=max(1, round(0.1 * blocks.size)), replace=False)
    annot = np.isin(block_of, chosen)
    annot_c = bigmm.Components((ANNOT, "rest"), np.where(std.keep, np.where(annot, 0, 1), -1), "annotation")
    crossed = bigmm.cross(maf_c, annot_c)
    cg = bigmm.component_grms(G, std, crossed, min_variants=1)
    # the GRM of a coarser split: Σ over its crossing cells of (p_cell / p_part) K_cell
    parts, grms = {"maf": maf_c, "annot": annot_c}, {}
    cell_maf = np.array([maf_c.names.index(nm.split(":")[0]) for nm in cg.names])
    cell_annot = np.array([annot_c.names.index(nm.split(":")[1]) for nm in cg.names])
    for part, cell_of in (("maf", cell_maf), ("annot", cell_annot)):
        Ks, counts = [], []
        for j in range(parts[part].m):
            w = np.where(cell_of == j, cg.n_variants, 0).astype(float)
            Ks.append(np.tensordot(w / w.sum(), cg.K, axes=1))
            counts.append(float(w.sum()))
        grms[part] = (Ks, counts)
    K_all = cg.weighted_sum()
    del cg
    X = bigmm.standardized(G, std).compute()
    maf = bigmm.components.minor_allele_frequency(std)  # NaN for dropped variants
    setup_s = time.perf_counter() - t0
    out = []
    for scenario in cfg["scenarios"]:
        tau, part, truth = design(scenario, maf, annot & std.keep, parts, cfg["h2"], cfg["alpha"])
        beta = rng_y.standard_normal(tau.size) * np.sqrt(tau)
        e = rng_y.standard_normal(cfg["n"]) * np.sqrt(1.0 - cfg["h2"])
        comps = parts[part]
        g_j = {nm: X[:, comps.assignment == j] @ beta[comps.assignment == j] for j, nm in enumerate(comps.names)}
        y = sum(g_j.values()) + e
        vy = float(np.var(y))
        realised = {f"h2[{nm}]": float(np.var(g)) / vy for nm, g in g_j.items()}
        realised[TOTAL] = float(np.var(y - e)) / vy
        mf_seed = int(rng_mf.integers(2 ** 31))
        Ks, counts = grms[part]
        for method in cfg["methods"]:
            if (scenario, method) not in todo:
                continue
            t1 = time.perf_counter()
            if method == "one":
                res = bigmm.fit_components([K_all], y, component_names=["all"], n_variants=[sum(counts)],
                                           constrain=cfg["constrain"], lrt=False, ml=False)
            elif method == "exact":
                res = bigmm.fit_components(Ks, y, component_names=list(comps.names), n_variants=counts,
                                           constrain=cfg["constrain"], lrt=False, ml=False)
            else:
                op = bigmm.DenseComponentsOperator(Ks, names=list(comps.names), n_variants=counts)
                res = bigmm.fit_components_matrix_free(op, y, seed=mf_seed, constrain=cfg["constrain"])
            fit = res.fits[0]
            out.append({"rep": rep, "scenario": scenario, "method": method, "truth": truth,
                        "realised": realised, "est": estimates(fit), "converged": bool(fit.converged),
                        "iterations": int(getattr(fit, "iterations", 0)),
                        "passes": getattr(fit, "passes", None), "seconds": time.perf_counter() - t1,
                        "setup_seconds": setup_s, "mf_seed": mf_seed if method == "mf" else None})
    return out


def _worker_init(threads: int) -> None:
    from threadpoolctl import threadpool_limits

    import dask

    threadpool_limits(threads)
    dask.config.set(scheduler="synchronous")
    _worker_init.limits = threadpool_limits  # keep the limiter referenced


def _work(args):
    rep, cfg, todo = args
    return rep, run_replicate(rep, cfg, todo)


# --------------------------------------------------------------------------- records

def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interrupted run: refit that one
                pass
    return recs


def config_key(cfg: dict) -> dict:
    """What the records depend on: a resumed run must use the same (checked before fitting)."""
    return {k: cfg[k] for k in ("n", "p", "block", "h2", "alpha", "maf_edges", "seed", "constrain")}


def run(cfg: dict, replicates: int, records: Path, workers: int) -> None:
    """Fit every missing (replicate, row, method) of replicates 0..R−1, appending to ``records``."""
    header = records.with_suffix(".config.json")
    key = config_key(cfg)
    if header.exists() and json.loads(header.read_text()) != key:
        sys.exit(f"{records}: made with another configuration ({header}); use another --out or the same options")
    records.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(json.dumps(key, indent=1))
    done = {(r["rep"], r["scenario"], r["method"]) for r in read_records(records)}
    want = {(s, m) for s in cfg["scenarios"] for m in cfg["methods"]}
    jobs = [(rep, cfg, {sm for sm in want if (rep, *sm) not in done}) for rep in range(replicates)]
    jobs = [j for j in jobs if j[2]]
    log(f"{len(jobs)} replicates to fit ({replicates - len(jobs)} complete in {records})")
    if not jobs:
        return
    threads = max(1, cfg["threads"] // max(1, workers))
    with open(records, "a") as fh:
        def write(rep, recs):
            for r in recs:
                fh.write(json.dumps(r) + "\n")
            fh.flush()
            secs = {f"{r['scenario']}/{r['method']}": round(r["seconds"], 1) for r in recs}
            log(f"replicate {rep}: setup {recs[0]['setup_seconds']:.1f}s, fits {secs}")
        if workers <= 1:
            _worker_init(threads)
            for j in jobs:
                write(*_work(j))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, _worker_init, (threads,)) as pool:
                for rep, recs in pool.imap_unordered(_work, jobs):
                    write(rep, recs)


# --------------------------------------------------------------------------- summary

def _boot(rng, R: int, B: int) -> np.ndarray:
    return rng.integers(0, R, size=(B, R))


def summarise(recs: list[dict], replicates: int, B: int = 2000, seed: int = 1) -> dict:
    """Per (row, method, quantity): truth, mean, bias ± MC SE, SD, mean SE, SE/SD with a
    bootstrap 95% CI, coverage of est ± 1.96 SE; per (row, quantity) mf against exact."""
    import warnings

    with warnings.catch_warnings():  # a bootstrap of one or two replicates: NaN CIs, said as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return _summarise(recs, replicates, B, seed)


def _summarise(recs: list[dict], replicates: int, B: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    by = {}
    for r in recs:
        if r["rep"] < replicates:
            by.setdefault((r["scenario"], r["method"]), {})[r["rep"]] = r
    rows, pairs = [], []
    for (scen, meth), reps in sorted(by.items(), key=lambda kv: (SCENARIOS.index(kv[0][0]), METHODS.index(kv[0][1]))):
        ids = sorted(reps)
        first = reps[ids[0]]
        for q in first["est"]:
            est = np.array([reps[i]["est"][q][0] for i in ids])
            se = np.array([reps[i]["est"][q][1] for i in ids])
            truth = np.array([reps[i]["truth"][q] for i in ids])  # the design's, per replicate
            R = est.size
            # the SD of the error ĥ² − h², h² the replicate's design value (it varies between
            # replicates where it depends on the drawn frequencies: a MAF bin's share in "even")
            sd = float(np.std(est - truth, ddof=1)) if R > 1 else float("nan")
            idx = _boot(rng, R, B)
            # a fit without SEs (NaN: an unconstrained fit that stopped where V is singular) stays
            # in the bias and SD (it is what the method returned), is left out of the mean SE,
            # and counts as an interval that missed
            ratio_b = np.nanmean(se[idx], 1) / (est - truth)[idx].std(1, ddof=1)
            cover = np.isfinite(se) & (np.abs(est - truth) <= 1.96 * se)
            rows.append({
                "scenario": scen, "method": meth, "quantity": q, "R": R, "truth": float(truth.mean()),
                "realised_mean": float(np.mean([reps[i]["realised"].get(q, np.nan) for i in ids])),
                "mean": float(est.mean()), "bias": float(np.mean(est - truth)),
                "bias_mcse": sd / np.sqrt(R), "sd": sd, "mean_se": float(np.nanmean(se)),
                "se_ratio": float(np.nanmean(se) / sd), "se_nan": int(np.sum(~np.isfinite(se))),
                "at_zero": int(np.sum(est == 0.0)),  # held at the bound by --constrain
                "se_ratio_ci": [float(v) for v in np.nanpercentile(ratio_b, [2.5, 97.5])],
                "coverage": float(cover.mean()), "coverage_mcse": float(np.sqrt(cover.mean() * (1 - cover.mean()) / R)),
                "converged": int(sum(reps[i]["converged"] for i in ids)),
                "mean_seconds": float(np.mean([reps[i]["seconds"] for i in ids]))})
    for scen in SCENARIOS:
        ex, mf = by.get((scen, "exact")), by.get((scen, "mf"))
        if not ex or not mf:
            continue
        both = sorted(set(ex) & set(mf))
        # the replicates where both fits converged: a fit that did not converge is reported as
        # such to its user, and its estimate is no estimate of either method's efficiency
        ids = [i for i in both if ex[i]["converged"] and mf[i]["converged"]]
        for q in ex[ids[0]]["est"]:
            truth = np.array([ex[i]["truth"][q] for i in ids])  # the errors' variances, as above
            a = np.array([ex[i]["est"][q][0] for i in ids]) - truth
            b = np.array([mf[i]["est"][q][0] for i in ids]) - truth
            se = np.array([ex[i]["est"][q][1] for i in ids])
            se = np.where(np.isfinite(se), se, np.nan)
            mc = np.array([mf[i]["est"][q][2] for i in ids])
            idx = _boot(rng, len(ids), B)
            eff_b = a[idx].var(1, ddof=1) / b[idx].var(1, ddof=1)
            pairs.append({
                "scenario": scen, "quantity": q, "R": len(ids), "not_converged": len(both) - len(ids),
                "efficiency": float(a.var(ddof=1) / b.var(ddof=1)),
                "efficiency_ci": [float(v) for v in np.percentile(eff_b, [2.5, 97.5])],
                "mc_sd_over_se": float(np.nanmean(mc) / np.nanmean(se)), "diff_sd": float(np.std(b - a, ddof=1)),
                "diff_sd_over_se": float(np.std(b - a, ddof=1) / np.nanmean(se)),
                "mean_passes": float(np.mean([mf[i]["passes"] or np.nan for i in ids])),
                "mean_seconds": float(np.mean([mf[i]["seconds"] for i in ids]))})
    return {"rows": rows, "mf_vs_exact": pairs}


def markdown(summary: dict) -> str:
    """The doc's tables."""
    L = ["| row | method | quantity | h² (design) | mean ĥ² | bias ± MC SE | SD | mean SE | SE / SD [95% CI] | "
         "coverage 95% CI | no SE | at 0 | R |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        lo, hi = r["se_ratio_ci"]
        L.append(f"| {r['scenario']} | {r['method']} | {r['quantity']} | {r['truth']:.3f} | {r['mean']:.3f} | "
                 f"{r['bias']:+.3f} ± {r['bias_mcse']:.3f} | {r['sd']:.3f} | {r['mean_se']:.3f} | "
                 f"{r['se_ratio']:.2f} [{lo:.2f}, {hi:.2f}] | {r['coverage']:.2f} | {r['se_nan']} | "
                 f"{r['at_zero']} | {r['R']} |")
    L += ["", "Matrix-free against exact (same replicates):", "",
          "| row | quantity | efficiency Var(exact)/Var(mf) [95% CI] | mean MC SD / mean SE | SD(mf − exact) | "
          "SD(mf − exact) / mean SE | passes | R (not converged) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    if not summary["mf_vs_exact"]:
        L.append("| *pending: the matrix-free rows have not been run* | | | | | | | |")
    for r in summary["mf_vs_exact"]:
        lo, hi = r["efficiency_ci"]
        L.append(f"| {r['scenario']} | {r['quantity']} | {r['efficiency']:.3f} [{lo:.3f}, {hi:.3f}] | "
                 f"{r['mc_sd_over_se']:.3f} | {r['diff_sd']:.4f} | {r['diff_sd_over_se']:.3f} | "
                 f"{r['mean_passes']:.0f} | {r['R']} ({r.get('not_converged', 0)}) |")
    return "\n".join(L)


# --------------------------------------------------------------------------- main

def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--methods", default="one,exact", help="comma-separated subset of one,exact,mf")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=6000)
    ap.add_argument("--block", type=int, default=100, help="variants per LD block")
    ap.add_argument("--h2", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=-1.0, help="τ_s ∝ [2f(1−f)]^(1+α) on the standardized scale")
    ap.add_argument("--maf-edges", default="0,0.05,0.2,0.5")
    ap.add_argument("--constrain", action="store_true", help="σ²_j ≥ 0 (GCTA's default); default unconstrained")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--workers", type=int, default=2, help="processes, each with --threads / workers BLAS threads")
    ap.add_argument("--threads", type=int, default=2,
                    help="BLAS threads in all (on a busy machine, 2 threads in one process made a 200 x 200 "
                         "Cholesky 250 times slower than 1: prefer processes)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default="results/components_study.json",
                    help="summary JSON; the per-replicate records go to the same name with suffix .jsonl")
    a = ap.parse_args(argv)
    a.methods = [m for m in a.methods.split(",") if m]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    bad = [m for m in a.methods if m not in METHODS] + [s for s in a.scenarios if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown method or scenario {bad}")
    a.maf_edges = [float(x) for x in a.maf_edges.split(",")]
    return a


def config(a: argparse.Namespace) -> dict:
    return {"n": a.n, "p": a.p, "block": a.block, "h2": a.h2, "alpha": a.alpha, "maf_edges": a.maf_edges,
            "seed": a.seed, "constrain": a.constrain, "methods": a.methods, "scenarios": a.scenarios,
            "threads": a.threads}


def main(argv=None) -> None:
    a = parse(argv)
    cfg = config(a)
    out = Path(a.out)
    records = out.with_suffix(".jsonl")
    t = time.perf_counter()
    run(cfg, a.replicates, records, a.workers)
    log(f"fitting done in {time.perf_counter() - t:.0f} s")
    summary = summarise(read_records(records), a.replicates, a.bootstrap)
    summary["config"] = config_key(cfg)
    args = sys.argv[1:] if argv is None else argv
    summary["command"] = "python scripts/studies/components_study.py " + " ".join(args)
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from common import machine_info, machine_line  # the benchmarks' one helper module

    summary["machine"] = machine_line(machine_info())
    out.write_text(json.dumps(summary, indent=1))
    print(markdown(summary))


if __name__ == "__main__":
    main()
