#!/usr/bin/env python
"""Simulation study: genetic correlations, matrix-free bivariate REML against exact bivariate REML.

Rows: r_g ∈ {0, 0.5, 0.9} × (h²_a, h²_b) ∈ {(0.2, 0.5), (0.5, 0.5)} (six phenotype pairs), with
residual correlation r_e = ``--re`` and unit phenotypic variances, on two cohorts:

* ``unrelated``: one population, independent Binomial(2, f) allele counts, f ~ U(0.05, 0.5);
* ``structured``: ``--pops`` populations whose frequencies drift from the ancestral ones by the
  Balding–Nichols model at F_ST = ``--fst`` (equal shares).

Both cohort generators are ``simulate_genotypes`` of ``scripts/studies/sim_matrix_free.py``.
Each replicate draws, per cohort, a fresh genotype matrix (n × p; its own seed), the GRM
(``bigmm.variant_stats``, ``bigmm.standardization`` "gcta", ``bigmm.grm``) and its exact
spectrum (``bigmm.exact_spectrum``), then the 12 phenotypes of the six pairs on that cohort, each
pair from the model itself, ``[y_a, y_b] = 1 + U √s Z_g C_gᵀ + Z_e C_eᵀ`` with ``C_g C_gᵀ = G₀``,
``C_e C_eᵀ = E₀`` (so ``Var(vec Y) = G₀ ⊗ K + E₀ ⊗ I``; the truth is G₀, E₀ of the design):
``G₀ = [[h²_a, r_g √(h²_a h²_b)], [·, h²_b]]``, ``E₀`` likewise from 1 − h² and r_e.

Fits per replicate and cohort, all six pairs at once:

* ``exact``: ``bigmm.bivariate.fit_bivariate`` on the exact spectrum (one eigendecomposition);
* ``mf``: ONE univariate ``bigmm.fit_matrix_free`` build of all 12 phenotypes (they share the
  missing-value pattern; an in-memory operator of K with the arithmetic of a pass over X; default
  probes and tolerance unless ``--probes``/``--tol``; probe seed per replicate), then
  ``bigmm.mf_bivariate.fit_bivariate_matrix_free`` of the six pairs (no pass over X; Monte Carlo SDs by the
  delete-one-probe jackknife, ``*_se_mc``, for the unconstrained fits).

Each fit is made unconstrained (``constrain=False``: |r_g| > 1 allowed, so that the r_g = 0.9
rows are not truncated at the boundary and SE calibration is judged on the estimator itself)
and constrained (``constrain=True``, GCTA's default: G₀ positive semi-definite); both are
recorded. No likelihood-ratio tests (``lrt=False``).

Every (replicate, cohort) appends its records (one line per pair and method) to a JSON-lines
file (``--out`` with suffix ``.jsonl``) as it finishes; a rerun skips what is there, so a run can
be interrupted and resumed, and ``--cohorts``/``--replicates`` can be extended later. Workers are
processes with one BLAS thread each. The summary (``--out``) and the Markdown tables printed at
the end cover replicates 0..R−1 of what the records hold.

Usage::

    nice python scripts/studies/rg_study.py --replicates 200 --out results/rg_study.json  # docs/rg_study.md
    python scripts/studies/rg_study.py --replicates 2 --n 400 --p 800 --out /tmp/rg.json   # smoke run
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
T0 = time.perf_counter()
COHORTS = ("unrelated", "structured")
RGS = (0.0, 0.5, 0.9)
H2_PAIRS = ((0.2, 0.5), (0.5, 0.5))
#: the six rows (phenotype pairs) simulated on every cohort: (r_g, h²_a, h²_b)
ROWS = tuple((rg, ha, hb) for ha, hb in H2_PAIRS for rg in RGS)
METHODS = ("exact", "mf")
FITS = ("unc", "con")  # constrain=False, constrain=True
QUANTITIES = ("rg", "h2_a", "h2_b", "re")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def row_name(row) -> str:
    rg, ha, hb = row
    return f"rg={rg:g} h2=({ha:g},{hb:g})"


def truth(row, re: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """G₀, E₀ (unit phenotypic variances) and the true values of the compared quantities."""
    rg, ha, hb = row
    G0 = np.array([[ha, rg * np.sqrt(ha * hb)], [rg * np.sqrt(ha * hb), hb]])
    ea, eb = 1.0 - ha, 1.0 - hb
    E0 = np.array([[ea, re * np.sqrt(ea * eb)], [re * np.sqrt(ea * eb), eb]])
    return G0, E0, {"rg": rg, "h2_a": ha, "h2_b": hb, "re": re}


def _sqrt_psd(A: np.ndarray) -> np.ndarray:
    """C with C Cᵀ = A for a PSD 2 × 2 A (eigendecomposition: Cholesky fails at |r| = 1)."""
    w, V = np.linalg.eigh(A)
    return V * np.sqrt(np.clip(w, 0.0, None))


# --------------------------------------------------------------------------- one replicate

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


def _estimates(fit, mc: dict | None) -> dict:
    """(estimate, SE, MC SD) of the compared quantities of one BivariateFit."""
    return {q: (float(getattr(fit, q)), float(getattr(fit, q + "_se")),
                float(mc.get(q, float("nan"))) if mc else float("nan")) for q in QUANTITIES}


def run_unit(rep: int, ci: int, cfg: dict) -> list[dict]:
    """Simulate replicate ``rep`` of cohort ``COHORTS[ci]`` and fit its six pairs both ways."""
    import bigmm
    from bigmm.bivariate import fit_bivariate
    from bigmm.mf_bivariate import fit_bivariate_matrix_free
    from sim_matrix_free import simulate_genotypes  # the cohort generators of the univariate study

    cohort = COHORTS[ci]
    ss = np.random.SeedSequence([cfg["seed"], ci, rep])
    s_g, s_y, s_mf = ss.generate_state(3)
    rng = np.random.default_rng(int(s_y))
    t0 = time.perf_counter()
    pops = cfg["pops"] if cohort == "structured" else 1
    G = simulate_genotypes(cfg["n"], cfg["p"], pops=pops, fst=cfg["fst"], seed=int(s_g))
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    K = np.asarray(bigmm.grm(G, std))
    del G
    t_grm = time.perf_counter() - t0
    t = time.perf_counter()
    spec = bigmm.exact_spectrum(K)
    t_eigh = time.perf_counter() - t
    root = spec.U * np.sqrt(np.clip(spec.s, 0.0, None))
    cols, names, truths = [], [], []
    for k, row in enumerate(ROWS):
        G0, E0, tr = truth(row, cfg["re"])
        g = root @ rng.standard_normal((cfg["n"], 2)) @ _sqrt_psd(G0).T
        e = rng.standard_normal((cfg["n"], 2)) @ _sqrt_psd(E0).T
        cols.append(1.0 + g + e)
        names += [f"p{k}a", f"p{k}b"]
        truths.append(tr)
    Y = np.hstack(cols)
    pairs = [(f"p{k}a", f"p{k}b") for k in range(len(ROWS))]
    fits, secs = {}, {}
    t = time.perf_counter()
    for fk, con in zip(FITS, (False, True)):
        res = fit_bivariate(spec, Y, phenotype_names=names, pairs=pairs, constrain=con, lrt=False)
        fits[("exact", fk)] = [(f, None) for f in res.fits]
    secs["exact"] = time.perf_counter() - t
    t = time.perf_counter()
    op = DenseOperator(K)
    kw = {}
    if cfg["probes"]:
        kw["probes"] = cfg["probes"]
    if cfg["tol"]:
        kw["tol"] = cfg["tol"]
    mf_seed = int(s_mf % (2 ** 31))
    build = bigmm.fit_matrix_free(op, Y, phenotype_names=names, seed=mf_seed, **kw)
    secs["mf_build"] = time.perf_counter() - t
    t = time.perf_counter()
    for fk, con in zip(FITS, (False, True)):
        # the Monte Carlo SD of the unconstrained fits only: a constrained fit on the |r_g| = 1
        # boundary is jackknifed by N full refits, which would dominate the study's time
        res = fit_bivariate_matrix_free(build, pairs, constrain=con, lrt=False, jackknife=None if con else "newton")
        fits[("mf", fk)] = list(zip(res.fits, res.mc_sd))
    secs["mf_pairs"] = time.perf_counter() - t
    steps = [int(f.lanczos_steps) for f in build.fits]
    out = []
    for k, row in enumerate(ROWS):
        for meth in METHODS:
            rec = {"rep": rep, "cohort": cohort, "row": row_name(row), "method": meth, "truth": truths[k]}
            for fk in FITS:
                f, mc = fits[(meth, fk)][k]
                rec[fk] = {"est": _estimates(f, mc), "converged": bool(f.converged), "boundary": f.boundary,
                           "iterations": int(f.iterations)}
            if meth == "mf":
                rec["mf_seed"], rec["passes"], rec["steps"] = mf_seed, int(op.passes), max(steps[2 * k:2 * k + 2])
                rec["build_converged"] = bool(all(f.converged for f in build.fits[2 * k:2 * k + 2]))
            rec["seconds"] = {"grm": t_grm, "eigh": t_eigh, **secs}
            out.append(rec)
    return out


def _worker_init(threads: int) -> None:
    import scipy.linalg  # noqa: F401  (threadpool_limits limits only the BLAS libraries loaded)
    from threadpoolctl import threadpool_limits

    import bigmm  # noqa: F401

    sys.path.insert(0, str(REPO / "scripts" / "studies"))
    threadpool_limits(threads)
    _worker_init.limits = threadpool_limits  # keep the limiter referenced


def _work(args):
    rep, ci, cfg = args
    return rep, ci, run_unit(rep, ci, cfg)


# --------------------------------------------------------------------------- records

def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interrupted run: that unit is refitted
                pass
    return recs


def config_key(cfg: dict) -> dict:
    """What the records depend on: a resumed run must use the same (checked before fitting)."""
    return {k: cfg[k] for k in ("n", "p", "pops", "fst", "re", "seed", "probes", "tol")}


def run(cfg: dict, replicates: int, records: Path, workers: int) -> None:
    """Fit every missing (replicate, cohort) of replicates 0..R−1, appending to ``records``.
    Units are ordered cohort by cohort (the first cohort's replicates come first)."""
    header = records.with_suffix(".config.json")
    key = config_key(cfg)
    if header.exists() and json.loads(header.read_text()) != key:
        sys.exit(f"{records}: made with another configuration ({header}); use another --out or the same options")
    records.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(json.dumps(key, indent=1))
    have = {}
    for r in read_records(records):
        have.setdefault((r["rep"], r["cohort"]), set()).add((r["row"], r["method"]))
    complete = {u for u, s in have.items() if len(s) == len(ROWS) * len(METHODS)}
    jobs = [(rep, COHORTS.index(c), cfg) for c in cfg["cohorts"] for rep in range(replicates)
            if (rep, c) not in complete]
    log(f"{len(jobs)} (replicate, cohort) units to fit ({len(complete)} complete in {records}); "
        f"load average {os.getloadavg()[0]:.1f}")
    if not jobs:
        return
    with open(records, "a") as fh:
        def write(rep, ci, recs):
            for r in recs:
                fh.write(json.dumps(r) + "\n")
            fh.flush()
            s = recs[0]["seconds"]
            log(f"{COHORTS[ci]} replicate {rep}: " + ", ".join(f"{k} {v:.1f}s" for k, v in s.items())
                + f"; passes {recs[1]['passes']}; load {os.getloadavg()[0]:.1f}")
        if workers <= 1:
            _worker_init(1)
            for j in jobs:
                write(*_work(j))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, _worker_init, (1,)) as pool:
                for rep, ci, recs in pool.imap_unordered(_work, jobs):
                    write(rep, ci, recs)


# --------------------------------------------------------------------------- summary

def _boot(rng, R: int, B: int) -> np.ndarray:
    return rng.integers(0, R, size=(B, R))


def summarise(recs: list[dict], replicates: int, B: int = 2000, seed: int = 1) -> dict:
    """Per (cohort, row, method, fit, quantity): truth, mean, bias ± MC SE, SD, mean SE, SE/SD with
    a bootstrap 95% CI, coverage of est ± 1.96 SE; per (cohort, row, fit, quantity) mf against
    exact on the same replicates."""
    import warnings

    with warnings.catch_warnings():  # a bootstrap of one or two replicates: NaN CIs, said as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return _summarise(recs, replicates, B, seed)


def _key(cohort, row):
    return COHORTS.index(cohort), [row_name(r) for r in ROWS].index(row)


def _summarise(recs: list[dict], replicates: int, B: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    by = {}
    for r in recs:
        if r["rep"] < replicates:
            by.setdefault((r["cohort"], r["row"], r["method"]), {})[r["rep"]] = r
    rows, pairs = [], []
    for (coh, row, meth), reps in sorted(by.items(), key=lambda kv: (*_key(*kv[0][:2]), METHODS.index(kv[0][2]))):
        ids = sorted(reps)
        for fk in FITS:
            for q in QUANTITIES:
                est = np.array([reps[i][fk]["est"][q][0] for i in ids])
                se = np.array([reps[i][fk]["est"][q][1] for i in ids])
                tr = float(reps[ids[0]]["truth"][q])
                R = est.size
                ok = np.isfinite(est)  # r_g is NaN where an unconstrained σ²_g < 0
                err = est[ok] - tr
                sd = float(np.std(err, ddof=1)) if err.size > 1 else float("nan")
                idx = _boot(rng, err.size, B)
                ratio_b = np.nanmean(se[ok][idx], 1) / err[idx].std(1, ddof=1)
                # a fit without an estimate or SE counts as an interval that missed
                cover = ok & np.isfinite(se) & (np.abs(est - tr) <= 1.96 * se)
                rows.append({
                    "cohort": coh, "row": row, "method": meth, "fit": fk, "quantity": q, "R": R, "truth": tr,
                    "mean": float(err.mean() + tr), "bias": float(err.mean()), "bias_mcse": sd / np.sqrt(err.size),
                    "sd": sd, "mean_se": float(np.nanmean(se[ok])), "se_ratio": float(np.nanmean(se[ok]) / sd),
                    # robust to the few replicates in the tail of a ratio estimator (r̂_g where a
                    # σ̂²_g is near 0): the normal-equivalent SD from the interquartile range
                    "sd_iqr": float(np.subtract(*np.percentile(err, [75, 25])) / 1.349),
                    "median_se": float(np.nanmedian(se[ok])),
                    "max_abs_z": float(np.nanmax(np.abs(err) / se[ok])),
                    "se_ratio_ci": [float(v) for v in np.nanpercentile(ratio_b, [2.5, 97.5])],
                    "coverage": float(cover.mean()), "no_estimate": int(np.sum(~ok)),
                    "no_se": int(np.sum(ok & ~np.isfinite(se))),
                    "boundary": int(sum(bool(reps[i][fk]["boundary"]) for i in ids)),
                    "not_converged": int(sum(not reps[i][fk]["converged"] for i in ids))})
    for coh in COHORTS:
        for row in ROWS:
            ex, mf = by.get((coh, row_name(row), "exact")), by.get((coh, row_name(row), "mf"))
            if not ex or not mf:
                continue
            both = sorted(set(ex) & set(mf))
            for fk in FITS:
                # replicates where both fits converged and gave an estimate: a fit that did not
                # converge is reported as such to its user (the count is in the table)
                for q in QUANTITIES:
                    ids = [i for i in both if ex[i][fk]["converged"] and mf[i][fk]["converged"]
                           and np.isfinite(ex[i][fk]["est"][q][0]) and np.isfinite(mf[i][fk]["est"][q][0])]
                    tr = float(ex[ids[0]]["truth"][q])
                    a = np.array([ex[i][fk]["est"][q][0] for i in ids]) - tr
                    b = np.array([mf[i][fk]["est"][q][0] for i in ids]) - tr
                    se = np.array([ex[i][fk]["est"][q][1] for i in ids])
                    mc = np.array([mf[i][fk]["est"][q][2] for i in ids])
                    idx = _boot(rng, len(ids), B)
                    # NaN where both spreads are 0 (every constrained fit at |r_g| = 1)
                    eff_b = a[idx].var(1, ddof=1) / np.where(b[idx].var(1, ddof=1) > 0, b[idx].var(1, ddof=1), np.nan)
                    d = b - a
                    pairs.append({
                        "cohort": coh, "row": row_name(row), "fit": fk, "quantity": q, "R": len(ids),
                        "left_out": len(both) - len(ids),
                        "efficiency": float(a.var(ddof=1) / b.var(ddof=1)) if b.var() > 0 else float("nan"),
                        "efficiency_ci": [float(v) for v in np.nanpercentile(eff_b, [2.5, 97.5])],
                        "mean_mc_sd": float(np.nanmean(mc)), "mean_se": float(np.nanmean(se)),
                        "mc_sd_over_se": float(np.nanmean(mc) / np.nanmean(se)),
                        "max_mc_sd_over_se": float(np.nanmax(mc / se)),
                        "diff_sd": float(np.std(d, ddof=1)),
                        "diff_sd_over_se": float(np.std(d, ddof=1) / np.nanmean(se)),
                        "diff_sd_over_mc": float(np.std(d, ddof=1) / np.nanmean(mc)),
                        "max_abs_diff": float(np.max(np.abs(d))),
                        "mean_passes": float(np.mean([mf[i]["passes"] for i in ids]))})
    secs = {}
    for r in recs:
        if r["rep"] < replicates and r["method"] == "exact" and r["row"] == row_name(ROWS[0]):
            for k, v in r["seconds"].items():
                secs.setdefault(r["cohort"], {}).setdefault(k, []).append(v)
    timing = {c: {k: float(np.median(v)) for k, v in d.items()} for c, d in secs.items()}
    units = {c: len(d["grm"]) for c, d in secs.items()}
    return {"rows": rows, "mf_vs_exact": pairs, "median_seconds": timing, "units": units}


def criteria(summary: dict, fit: str = "unc") -> str:
    """The issue's three criteria for r_g per (cohort, pair): efficiency of the matrix-free fit
    against the exact one (≥ 0.95), its mean Monte Carlo SD over the mean SE (≤ ¼), and the SE
    calibration SE / SD of both (within 10% of 1)."""
    cal = {(r["cohort"], r["row"], r["method"]): r for r in summary["rows"]
           if r["fit"] == fit and r["quantity"] == "rg"}
    L = ["| cohort | pair | efficiency [95% CI] | MC SD / SE | SE / SD exact [95% CI] | SE / SD mf [95% CI] | "
         "coverage exact / mf | R |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["mf_vs_exact"]:
        if r["fit"] != fit or r["quantity"] != "rg":
            continue
        ex, mf = cal.get((r["cohort"], r["row"], "exact")), cal.get((r["cohort"], r["row"], "mf"))
        lo, hi = r["efficiency_ci"]
        L.append(f"| {r['cohort']} | {r['row']} | {r['efficiency']:.3f} [{lo:.3f}, {hi:.3f}] | "
                 f"{r['mc_sd_over_se']:.4f} | "
                 f"{ex['se_ratio']:.2f} [{ex['se_ratio_ci'][0]:.2f}, {ex['se_ratio_ci'][1]:.2f}] | "
                 f"{mf['se_ratio']:.2f} [{mf['se_ratio_ci'][0]:.2f}, {mf['se_ratio_ci'][1]:.2f}] | "
                 f"{ex['coverage']:.2f} / {mf['coverage']:.2f} | {r['R']} |")
    return "\n".join(L)


def _f(x, spec: str) -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


def calibration_table(summary: dict, fit: str = "unc", quantities=QUANTITIES) -> str:
    """Per (cohort, pair, method, quantity): bias, spread, SE calibration and coverage."""
    L = ["| cohort | pair | method | quantity | truth | mean | bias ± MC SE | SD | mean SE | SE / SD [95% CI] | "
         "coverage | no est. / no SE | at bound | not conv. | R |",
         "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        if r["fit"] != fit or r["quantity"] not in quantities:
            continue
        lo, hi = r["se_ratio_ci"]
        L.append(f"| {r['cohort']} | {r['row']} | {r['method']} | {r['quantity']} | {r['truth']:.2f} | "
                 f"{r['mean']:.3f} | {r['bias']:+.3f} ± {r['bias_mcse']:.3f} | {r['sd']:.3f} | {r['mean_se']:.3f} | "
                 f"{_f(r['se_ratio'], '.2f')} [{_f(lo, '.2f')}, {_f(hi, '.2f')}] | {r['coverage']:.2f} | "
                 f"{r['no_estimate']} / {r['no_se']} | {r['boundary']} | {r['not_converged']} | {r['R']} |")
    return "\n".join(L)


def tail_table(summary: dict, fit: str = "unc", quantity: str = "rg") -> str:
    """The SD against a robust SD (IQR / 1.349), the mean SE against the median SE, and the
    largest |error| / SE: whether a miscalibration is the bulk of the replicates or a few."""
    L = ["| cohort | pair | method | SD | IQR / 1.349 | mean SE | median SE | max abs(error) / SE |",
         "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        if r["fit"] == fit and r["quantity"] == quantity:
            L.append(f"| {r['cohort']} | {r['row']} | {r['method']} | {r['sd']:.3f} | {r['sd_iqr']:.3f} | "
                     f"{r['mean_se']:.3f} | {r['median_se']:.3f} | {r['max_abs_z']:.1f} |")
    return "\n".join(L)


def paired_table(summary: dict, fit: str = "unc", quantities=QUANTITIES) -> str:
    """Per (cohort, pair, quantity): the matrix-free fit against the exact one, same replicates."""
    L = ["| cohort | pair | quantity | efficiency Var(exact)/Var(mf) [95% CI] | mean MC SD / mean SE (max) | "
         "SD(mf − exact) | SD(mf − exact) / mean SE | SD(mf − exact) / mean MC SD | max abs(mf − exact) | "
         "passes | R (left out) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["mf_vs_exact"]:
        if r["fit"] != fit or r["quantity"] not in quantities:
            continue
        lo, hi = r["efficiency_ci"]
        L.append(f"| {r['cohort']} | {r['row']} | {r['quantity']} | {_f(r['efficiency'], '.3f')} "
                 f"[{_f(lo, '.3f')}, {_f(hi, '.3f')}] | {_f(r['mc_sd_over_se'], '.4f')} "
                 f"({_f(r['max_mc_sd_over_se'], '.3f')}) | {r['diff_sd']:.4f} | {_f(r['diff_sd_over_se'], '.4f')} | "
                 f"{_f(r['diff_sd_over_mc'], '.2f')} | {r['max_abs_diff']:.4f} | {r['mean_passes']:.0f} | "
                 f"{r['R']} ({r['left_out']}) |")
    return "\n".join(L)


def markdown(summary: dict) -> str:
    """The doc's tables."""
    return "\n".join([
        "### The criteria for r_g (unconstrained fits)", "", criteria(summary, "unc"), "",
        "### r_g, unconstrained (constrain=False)", "", calibration_table(summary, "unc", ("rg",)), "",
        "### r_g, unconstrained: the bulk and the tail", "", tail_table(summary, "unc", "rg"), "",
        "### h² and r_e, unconstrained", "", calibration_table(summary, "unc", ("h2_a", "h2_b", "re")), "",
        "### Matrix-free against exact, unconstrained (same replicates)", "", paired_table(summary, "unc"), "",
        "### r_g, constrained (constrain=True, GCTA's default; no Monte Carlo SD computed)", "",
        calibration_table(summary, "con", ("rg",)), "", paired_table(summary, "con", ("rg",))])


# --------------------------------------------------------------------------- main

def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--cohorts", default=",".join(COHORTS), help="comma-separated subset of " + ",".join(COHORTS)
                    + " (in the order fitted)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=1500)
    ap.add_argument("--pops", type=int, default=10, help="populations of the structured cohort")
    ap.add_argument("--fst", type=float, default=0.05, help="Balding–Nichols F_ST of the structured cohort")
    ap.add_argument("--re", type=float, default=0.2, help="residual correlation r_e of every pair")
    ap.add_argument("--probes", type=int, default=0, help="probes of the matrix-free build (0: bigmm's default)")
    ap.add_argument("--tol", type=float, default=0.0, help="tolerance of the matrix-free build (0: bigmm's default)")
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2, help="processes, one BLAS thread each")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default="results/rg_study.json",
                    help="summary JSON; the per-replicate records go to the same name with suffix .jsonl")
    a = ap.parse_args(argv)
    a.cohorts = [c for c in a.cohorts.split(",") if c]
    bad = [c for c in a.cohorts if c not in COHORTS]
    if bad:
        ap.error(f"unknown cohort {bad}")
    return a


def config(a: argparse.Namespace) -> dict:
    return {"n": a.n, "p": a.p, "pops": a.pops, "fst": a.fst, "re": a.re, "seed": a.seed, "probes": a.probes,
            "tol": a.tol, "cohorts": a.cohorts}


def main(argv=None) -> None:
    a = parse(argv)
    cfg = config(a)
    out = Path(a.out)
    records = out.with_suffix(".jsonl")
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from common import machine_info, machine_line  # the benchmarks' one helper module

    load0 = os.getloadavg()
    t = time.perf_counter()
    run(cfg, a.replicates, records, a.workers)
    wall = time.perf_counter() - t
    log(f"fitting done in {wall:.0f} s")
    summary = summarise(read_records(records), a.replicates, a.bootstrap)
    summary["config"] = config_key(cfg)
    args = sys.argv[1:] if argv is None else argv
    summary["command"] = "python scripts/studies/rg_study.py " + " ".join(shlex.quote(x) for x in args)
    summary["machine"] = machine_line(machine_info())
    summary["this_run"] = {"wall_seconds": round(wall), "loadavg_start": [round(x, 2) for x in load0],
                           "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    out.write_text(json.dumps(summary, indent=1))
    print(f"{summary['command']}\n{summary['machine']}\n{json.dumps(summary['this_run'])}\n"
          f"units {summary['units']}; median seconds per unit {json.dumps(summary['median_seconds'])}\n")
    print(markdown(summary))

if __name__ == "__main__":
    main()
