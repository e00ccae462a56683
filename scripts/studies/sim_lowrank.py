#!/usr/bin/env python
"""Simulation study: REML on the reduced (randomized top-k) spectrum vs full-rank REML.

For each of two cohorts simulated once with ``bigmm.simulate`` and cached as Zarr stores
((a) population structure: ``n_pops`` populations at ``fst``; (b) unrelated samples, one
population), the script computes

* the GRM ``K = X Xᵀ / p`` (``bigmm.grm``, Dask threaded scheduler) and its exact spectrum
  (``bigmm.exact_spectrum``, LAPACK syevd);
* for each ``k`` the randomized top-k spectrum straight from the genotypes at bigmm's DEFAULT
  settings (``bigmm.randomized_spectrum(bigmm.GrmOperator(store.genotypes, std), k, seed=...)``,
  oversampling
  ``DEFAULT_OVERSAMPLE``, ``DEFAULT_POWER_ITERS`` power iterations), with its accuracy against
  eigh (relative error of the top-k eigenvalues, largest principal angle between the top-k
  subspaces), passes over X, time, max Ritz residual, and the probe estimate of the tail's
  ``tr K₂²`` (used by the calibrated SE) against its exact value;
* for each true h²: ``R`` replicate phenotypes drawn from the FULL model
  ``y = 1 + L z``, ``L Lᵀ = h² K + (1 − h²) I`` (L from the exact eigendecomposition), fitted
  all at once with ``bigmm.fit_reml`` (intercept only) on the exact spectrum (the full-rank
  REML reference), on each randomized spectrum, and on the exact top-k spectrum
  (``Spectrum.top(k)``: the same reduced model with exact eigenvectors, which separates the
  cost of the reduction from that of the randomization).

Per (cohort, spectrum, h²) it reports the mean ĥ² and its Monte Carlo SE, the bias in MC SEs
(pass: |bias| < 2 MC SE), the empirical SD of ĥ², the mean reported ``h2_se`` (on a reduced
spectrum the calibrated sandwich SE) and its ratio to the SD (pass: within 10%), the mean
``h2_se_curvature`` and its ratio, the efficiency relative to exact REML
``Var(ĥ²_exact) / Var(ĥ²_reduced)`` (paired: the same replicates) and the boundary counts.
Uncertainties of the ratios are bootstrap SEs over replicates (paired across spectra).

Everything is seeded (the seeds are printed and written to the report). BLAS threads are
capped so that Dask threads × BLAS threads ≤ ``--threads``.

Usage::

    python scripts/studies/sim_lowrank.py --quick  # smoke run: n=1000, p=3000, 30 replicates
    python scripts/studies/sim_lowrank.py          # the study in docs/lowrank.md (n=5000, p=20000)

The full run writes ``docs/lowrank.md`` (``--out`` to change, ``--no-docs`` to skip); a quick
run writes its report into the cache directory. A section of the report between the markers
``<!-- discussion -->`` and ``<!-- /discussion -->`` is hand-written and kept when the file
is regenerated. Raw per-replicate results go to ``CACHE/results_*.npz`` and a JSON summary.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import REPO, T0, command_line, log, machine_info, md_table  # noqa: E402

DISC_BEGIN = "<!-- discussion -->"
DISC_END = "<!-- /discussion -->"


# --------------------------------------------------------------------------- setup

def cohort_specs(args) -> list[dict]:
    return [
        {"name": "structured", "title": f"(a) population structure: {args.n_pops} populations, "
                                        f"F_ST = {args.fst}", "n_pops": args.n_pops, "fst": args.fst,
         "seed": args.seed + 1},
        {"name": "unrelated", "title": "(b) unrelated samples: one population", "n_pops": 1, "fst": 0.0,
         "seed": args.seed + 2},
    ]


def ensure_cohort(cache: Path, spec: dict, n: int, p: int) -> tuple[Path, float | None]:
    """The cohort's Zarr store, simulated once and reused (returns path, seconds or None if cached)."""
    import bigmm

    path = cache / f"{spec['name']}_n{n}_p{p}_pops{spec['n_pops']}_fst{spec['fst']:g}_seed{spec['seed']}.zarr"
    if path.exists():
        try:
            st = bigmm.open_store(path)
            if st.n_samples == n and st.n_variants == p:
                log(f"cohort {spec['name']}: reusing {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
                return path, None
        except Exception as exc:  # a broken cache entry is rebuilt
            log(f"cohort {spec['name']}: cache entry unreadable ({exc}); simulating again")
    log(f"cohort {spec['name']}: simulating n={n} p={p} n_pops={spec['n_pops']} fst={spec['fst']} "
        f"seed={spec['seed']} -> {path}")
    t = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    bigmm.simulate(n, p, h2=0.5, seed=spec["seed"], n_pops=spec["n_pops"], fst=spec["fst"],
                   out_zarr=path, chunks=(min(n, 1024), min(p, 2048)))
    dt = time.perf_counter() - t
    log(f"cohort {spec['name']}: simulated in {dt:.1f} s")
    return path, dt


# --------------------------------------------------------------------------- statistics

def draw_phenotypes(exact, h2: float, R: int, seed: int) -> np.ndarray:
    """R phenotypes y = 1 + L z with L = U diag(sqrt(h² s + 1 − h²)): Var(y) = h² K + (1 − h²) I."""
    rng = np.random.default_rng(seed)
    root = exact.U * np.sqrt(np.clip(h2 * exact.s + (1.0 - h2), 0.0, None))
    return 1.0 + root @ rng.standard_normal((exact.n, R))


def fit_arrays(spec, Y) -> dict:
    import bigmm

    res = bigmm.fit_reml(spec, Y)
    return {"h2": np.array([f.h2 for f in res.fits]),
            "se": np.array([f.h2_se for f in res.fits]),
            "se_curv": np.array([f.h2_se_curvature for f in res.fits]),
            "lower": np.array([f.boundary == "lower" for f in res.fits]),
            "upper": np.array([f.boundary == "upper" for f in res.fits]),
            "se_method": res.fits[0].h2_se_method}


def summarize(fits: dict, ref: dict, h2: float, boot: np.ndarray) -> dict:
    """Row statistics of one spectrum at one h², with paired bootstrap SEs (index array ``boot``)."""
    est, se, sec = fits["h2"], fits["se"], fits["se_curv"]
    R = est.size
    mean = float(est.mean())
    sd = float(est.std(ddof=1))
    mcse = sd / np.sqrt(R)
    bias = mean - h2
    z = bias / mcse if mcse > 0 else float("nan")
    ok_se, ok_c = np.isfinite(se), np.isfinite(sec)
    mse, msec = float(np.mean(se[ok_se])), float(np.mean(sec[ok_c]))
    var_ref = float(ref["h2"].var(ddof=1))
    eff = var_ref / sd ** 2 if sd > 0 else float("nan")
    # bootstrap over replicates, the same resamples for this spectrum and the reference
    eb, rb, seb, secb = est[boot], ref["h2"][boot], np.where(ok_se, se, np.nan)[boot], np.where(ok_c, sec, np.nan)[boot]
    sdb = eb.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_b = np.nanmean(seb, axis=1) / sdb
        ratioc_b = np.nanmean(secb, axis=1) / sdb
        eff_b = rb.var(axis=1, ddof=1) / sdb ** 2
    ratio = mse / sd if sd > 0 else float("nan")
    return {
        "R": R, "mean": mean, "mcse": mcse, "bias": bias, "bias_z": z, "bias_pass": bool(abs(z) < 2),
        "sd": sd, "mean_se": mse, "se_ratio": ratio, "se_ratio_bse": float(np.nanstd(ratio_b)),
        "se_pass": bool(abs(ratio - 1) < 0.10), "n_se_nonfinite": int((~ok_se).sum()),
        "mean_se_curv": msec, "curv_ratio": msec / sd if sd > 0 else float("nan"),
        "curv_ratio_bse": float(np.nanstd(ratioc_b)), "efficiency": eff,
        "efficiency_bse": float(np.nanstd(eff_b)),
        "n_lower": int(fits["lower"].sum()), "n_upper": int(fits["upper"].sum()),
        "se_method": fits["se_method"],
        # the same statistics over the interior (non-boundary) estimates only, to show whether
        # truncation at 0 and 1 explains a bias
        "mean_interior": float(est[~(fits["lower"] | fits["upper"])].mean())
        if (~(fits["lower"] | fits["upper"])).any() else float("nan"),
    }


def spectrum_accuracy(exact, K, spec, k: int) -> tuple[dict, np.ndarray]:
    s_ex = exact.s[:k]
    rel = np.abs(spec.s - s_ex) / s_ex
    # exact tr((P₂KP₂)²) for the randomized U₁: ‖K‖²_F − 2‖KU₁‖²_F + ‖U₁ᵀKU₁‖²_F
    KU = K @ spec.U
    tail_K2 = float(np.sum(exact.s ** 2) - 2.0 * np.sum(KU * KU) + np.sum((spec.U.T @ KU) ** 2))
    d = spec.diagnostics
    return {
        "k": k, "rel_err_max": float(rel.max()), "rel_err_median": float(np.median(rel)),
"passes": int(d["passes_over_X"]), "seconds": float(d["seconds"]),
        "max_ritz_residual": float(d["max_ritz_residual"]), "orthonormality_error": float(d["orthonormality_error"]),
        "tail_trK2_probe": float(spec.tail_trace_K2), "tail_trK2_exact": tail_K2,
        "tail_trK2_rel_err": float(spec.tail_trace_K2 / tail_K2 - 1.0),
        "tail_lambda": float(spec.tail), "oversample": int(d["oversample"]), "power_iters": int(d["power_iters"]),
        "seed": int(d["seed"]), "compute_dtype": str(d.get("compute_dtype", "?")),
        "share_trace": float(exact.s[:k].sum() / exact.trace_K),
        "share_trace_K2": float(np.sum(exact.s[:k] ** 2) / np.sum(exact.s ** 2)),
    }, KU


def asymptotic_var(exact, h2: float, U1=None, s1=None, KU1=None) -> float:
    """Large-sample Var(ĥ²) at the true h², computed here independently of bigmm.

    Full-rank REML (``U1`` None): the inverse Fisher information. A reduced model with
    eigenvectors ``U1`` (orthonormal, orthogonal to 1), eigenvalues ``s1`` and the tail
    ``λ̄ = (tr K − Σ s1) / (n − k)``: the sandwich ``H⁻¹ J H⁻¹`` with H the expected information
    of the reduced model and J the variance of its REML score under the FULL model
    ``V = σ²_g K + σ²_e I`` (``KU1 = K U1`` from the exact K), exactly:
    ``J_ab = ½ tr(M_a V M_b V)``, ``M_a = P ∂V₁/∂θ_a P`` with P the REML projection of the
    reduced model for an intercept (which lies in the tail: K 1 = 0 for GCTA-standardized X).
    Parameters (σ²_g, σ²_e) = (h², 1 − h²); delta method for h².
    """
    sg, se = h2, 1.0 - h2
    grad = np.array([se, -sg]) / (sg + se) ** 2
    s = exact.s
    n = exact.n
    if U1 is None:
        live = s[:-1]  # the intercept's null direction (K 1 = 0) is removed by REML
        v = sg * live + se
        Dm = np.stack([live, np.ones_like(live)])
        H = 0.5 * (Dm / v ** 2) @ Dm.T
        return float(grad @ np.linalg.solve(H, grad))
    k = s1.size
    lam = max(0.0, (exact.trace_K - float(s1.sum())) / (n - k))
    v1, vt = sg * s1 + se, sg * lam + se
    d = [s1, np.ones(k)]          # ∂V₁/∂θ_a on the top part
    t = [lam, 1.0]                # ... on the tail
    c = [t[0] / vt ** 2, t[1] / vt ** 2]
    E = [d[0] / v1 ** 2 - c[0], d[1] / v1 ** 2 - c[1]]  # M_a = c_a Q + U1 diag(E_a) U1ᵀ, Q = I − 11ᵀ/n
    VU = sg * KU1 + se * U1
    G = U1.T @ VU                 # U1ᵀ V U1
    W = VU.T @ VU                 # U1ᵀ V² U1 (= U1ᵀ V Q V U1 since U1ᵀ1 = 0)
    trV2Q = sg ** 2 * float(np.sum(s ** 2)) + 2 * sg * se * exact.trace_K + se ** 2 * n - se ** 2
    H = np.zeros((2, 2))
    J = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            H[i, j] = 0.5 * (float(np.sum(d[i] * d[j] / v1 ** 2)) + (n - k - 1) * t[i] * t[j] / vt ** 2)
            J[i, j] = 0.5 * (c[i] * c[j] * trV2Q + c[i] * float(np.sum(E[j] * np.diag(W)))
                             + c[j] * float(np.sum(E[i] * np.diag(W)))
                             + float(E[i] @ (G * G) @ E[j]))  # tr(diag(E_a) G diag(E_b) G), G symmetric
    Hi = np.linalg.inv(H)
    return float(grad @ Hi @ J @ Hi @ grad)


def clipped_normal(mu: float, sd: float, lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    """Mean and SD of clip(X, lo, hi) for X ~ N(mu, sd²): what truncation at the boundaries alone
    does to an otherwise unbiased, normal estimator."""
    from scipy import stats

    x = np.linspace(lo, hi, 20001)
    w = stats.norm.pdf(x, mu, sd) * (x[1] - x[0])
    p_lo, p_hi = stats.norm.cdf(lo, mu, sd), stats.norm.sf(hi, mu, sd)
    m1 = float(np.sum(w * x) + p_lo * lo + p_hi * hi)
    m2 = float(np.sum(w * x * x) + p_lo * lo ** 2 + p_hi * hi ** 2)
    return m1, float(np.sqrt(max(0.0, m2 - m1 ** 2)))


# --------------------------------------------------------------------------- report

def fmt_e(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.1e}"


def spectrum_table(c: dict) -> str:
    return md_table(["k", "passes over X", "time (s)", "top-k eigenvalues: max rel. error", "median rel. error",
                     "max Ritz residual", "tail tr K₂² (probes) rel. error", "λ̄", "share of tr K", "share of tr K²"],
                    [[a["k"], a["passes"], f"{a['seconds']:.1f}", fmt_e(a["rel_err_max"]), fmt_e(a["rel_err_median"]),
                      fmt_e(a["max_ritz_residual"]), f"{a['tail_trK2_rel_err']:+.2%}", f"{a['tail_lambda']:.3f}",
                      f"{a['share_trace']:.1%}", f"{a['share_trace_K2']:.1%}"] for a in c["spectra"]], "r")


def reml_table(c: dict, which: str) -> str:
    rows = []
    for h2 in c["h2s"]:
        for kind, k in [("exact", c["n"])] + [(which, k) for k in c["ks"]]:
            r = c["rows"][f"exact|{h2}" if kind == "exact" else f"{which}{k}|{h2}"]
            exact = kind == "exact"
            rows.append([f"{h2:g}", f"{k} (exact REML)" if exact else k, f"{r['mean']:.4f} ({r['mcse']:.4f})",
                         f"{r['bias_z']:+.2f}", "yes" if r["bias_pass"] else "**no**", f"{r['sd']:.4f}",
                         f"{r['mean_se']:.4f}", f"{r['se_ratio']:.3f} ± {r['se_ratio_bse']:.3f}",
                         "yes" if r["se_pass"] else "**no**", f"{r['mean_se_curv']:.4f}",
                         f"{r['curv_ratio']:.3f} ± {r['curv_ratio_bse']:.3f}", f"{r['asym_se']:.4f}",
                         1 if exact else f"{r['efficiency']:.3f} ± {r['efficiency_bse']:.3f}",
                         1 if exact else f"{r['asym_eff']:.3f}", f"{r['n_lower']} / {r['n_upper']}"])
    return md_table(["h²", "k", "mean ĥ² (MC SE)", "bias / MC SE", "bias ok", "SD(ĥ²)", "mean h2_se", "h2_se / SD",
                     "SE ok", "mean h2_se_curvature", "curvature / SD", "asymptotic SE", "efficiency",
                     "asymptotic efficiency", "boundary 0 / 1"], rows, "r")


def findings(res: dict) -> list[str]:
    """Data-driven summary lines (always consistent with the tables)."""
    out = []
    for which, label in (("rand", "randomized top-k"), ("top", "exact top-k")):
        n_rows = se_fail = bias_fail = 0
        se_bad, bias_bad = [], []
        for c in res["cohorts"]:
            for h2 in c["h2s"]:
                for k in c["ks"]:
                    r = c["rows"][f"{which}{k}|{h2}"]
                    n_rows += 1
                    nb = r["n_lower"] + r["n_upper"]
                    if not r["se_pass"]:
                        se_fail += 1
                        se_bad.append(f"{c['name']} k={k} h²={h2:g}: {r['se_ratio']:.3f} ({nb} at a boundary"
                                      + (f"; SD of a clipped normal: {r['clip_sd']:.3f}, observed {r['sd']:.3f}, "
                                         f"mean SE {r['mean_se']:.3f}" if nb else "") + ")")
                    if not r["bias_pass"]:
                        bias_fail += 1
                        bias_bad.append(f"{c['name']} k={k} h²={h2:g}: {r['bias']:+.4f} = {r['bias_z']:+.2f} MC SE "
                                        f"({nb} at a boundary"
                                        + (f"; mean of a clipped normal: {r['clip_mean']:.3f}, observed "
                                           f"{r['mean']:.3f}" if nb else "") + ")")
        out.append(f"**{label}**: calibrated SE within 10% of the empirical SD in {n_rows - se_fail} of {n_rows} "
                   f"rows" + (f"; outside: {'; '.join(se_bad)}." if se_bad else "."))
        out.append(f"**{label}**: |bias| < 2 MC SE in {n_rows - bias_fail} of {n_rows} rows"
                   + (f"; outside: {'; '.join(bias_bad)}." if bias_bad else "."))
    ex_se, ex_b = [], []
    for c in res["cohorts"]:
        for h2 in c["h2s"]:
            r = c["rows"][f"exact|{h2}"]
            if not r["se_pass"]:
                ex_se.append(f"{c['name']} h²={h2:g}: {r['se_ratio']:.3f}")
            if not r["bias_pass"]:
                ex_b.append(f"{c['name']} h²={h2:g}: {r['bias_z']:+.2f} MC SE")
    out.append("**exact REML** (reference): SE within 10% " + ("everywhere" if not ex_se else f"except {'; '.join(ex_se)}")
               + ", |bias| < 2 MC SE " + ("everywhere." if not ex_b else f"except {'; '.join(ex_b)}."))
    return out


def build_report(res: dict, discussion: str | None) -> str:
    a = res["args"]
    m = res["machine"]
    L = []
    L.append("# REML on a reduced spectrum: simulation study")
    L.append("")
    L.append("Generated by `scripts/studies/sim_lowrank.py`; regenerate with")
    L.append("")
    L.append("```bash")
    L.append(res["command"])
    L.append("```")
    L.append("")
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in m["blas"])
    git = m["git_commit"] + (f" with uncommitted changes to {', '.join(m['bigmm_modified_files'])}"
                             if m["bigmm_modified_files"] else "")
    L.append(f"Run {res['date']} on `{m['host']}`: {m['cpu']}, {m['nproc']} cores, {m['memory_gib']:.1f} GiB, "
             f"{m['os']}; Python {m['python']}, NumPy {m['numpy']}, SciPy {m['scipy']}, Dask {m['dask']}, "
             f"Zarr {m['zarr']}, BLAS {blas}; bigmm {m['bigmm']} at git {git} (sources sha256 "
             f"{m['bigmm_sha256']}…, see `machine_info` in scripts/bench/common.py). "
             f"Dask threaded scheduler with {a['threads']} threads and BLAS capped at "
             f"{res['blas_threads_passes']} thread(s) per task during passes over X and the GRM, "
             f"{a['threads']} for eigh and the fits (load average at start "
             f"{[round(x, 2) for x in m['loadavg_start']]}; the machine "
             f"is shared, so times are indicative). Total runtime **{res['runtime_s'] / 60:.1f} min**.")
    L.append("")
    L.append("## Setup")
    L.append("")
    L.append(f"- Two cohorts of n = {a['n']} samples and p = {a['p']} variants, simulated once with "
             f"`bigmm.simulate` (allele frequencies U(0.05, 0.5), Balding–Nichols population frequencies) and "
             f"cached under `{res['cache_rel']}`: " + "; ".join(
                 f"{c['title']} (seed {c['seed']})" for c in res["cohorts"]) + ".")
    L.append("- GRM `K = X Xᵀ / p` with GCTA standardization (`bigmm.grm`), exact spectrum by "
             "`bigmm.exact_spectrum`; randomized top-k spectra by `bigmm.randomized_spectrum("
             "bigmm.GrmOperator(store.genotypes, std), k, seed=...)` at "
             + ("the defaults" if res["defaults"]["are_defaults"] else "NON-default settings")
             + f" (algorithm {res['defaults'].get('algorithm', 'subspace')}, oversampling {res['defaults']['oversample']}, "
             f"{res['defaults']['power_iters']} power iterations, {res['defaults']['probes']} probes for the "
             "tail tr K₂², compute dtype "
             + ", ".join(sorted({a["compute_dtype"] for c in res["cohorts"] for a in c["spectra"]})) + ").")
    L.append(f"- For each true h² ∈ {{{', '.join(f'{h:g}' for h in a['h2s'])}}}: R = {a['replicates']} replicate "
             "phenotypes from the **full** model `y = 1 + L z`, `L Lᵀ = h² K + (1 − h²) I`, `z ~ N(0, I)`, "
             "with L from the exact eigendecomposition. All replicates are fitted at once by `bigmm.fit_reml` "
             "(intercept only) on the exact spectrum (full-rank REML, the reference, row `k = n`), on each "
             "randomized spectrum and on the exact top-k spectrum (`Spectrum.top(k)`).")
    L.append("- Columns: mean ĥ² with its Monte Carlo SE (SD/√R); bias in MC SEs (\"bias ok\": |bias| < 2 MC SE); "
             "SD(ĥ²) over replicates; mean reported `h2_se` (on a reduced spectrum the calibrated sandwich SE, "
             "on the exact spectrum the observed-information SE) and its ratio to SD (\"SE ok\": within 10%); "
             "mean `h2_se_curvature` (the curvature SE of the approximate likelihood) and its ratio; "
             "\"asymptotic SE\": the large-sample SE of ĥ² at the true h² computed by this script from the exact "
             "eigenvalues, independently of bigmm (Fisher information for full-rank REML; the sandwich "
             "H⁻¹ J H⁻¹ of the exact top-k reduced model, J the score variance under the full model, for the "
             "reduced rows); efficiency `Var(ĥ²_exact) / Var(ĥ²_k)` on the same replicates and its asymptotic "
             "value (ratio of the asymptotic variances); boundary estimates at h² = 0 / at the upper "
             "bound. ± values are bootstrap SEs over replicates. With R replicates the SD itself is uncertain "
             f"by about 1/√(2R) = {1 / np.sqrt(2 * a['replicates']):.1%} of its value, so a 10% SE criterion is "
             "about two such standard errors; with many rows, a few misses at the 2-MC-SE bias criterion are "
             "expected by chance alone (rows sharing replicates are correlated).")
    L.append("- Seeds: " + "; ".join(f"{k} {v}" for k, v in res["seeds"].items()) + ".")
    L.append("")
    L.append("## Summary of the checks")
    L.append("")
    for line in findings(res):
        L.append(f"- {line}")
    L.append("")
    L.append("## Discussion")
    L.append("")
    L.append(DISC_BEGIN)
    L.append(discussion.strip("\n") if discussion else
             "_(hand-written discussion: edit between the markers; kept when the script regenerates this file)_")
    L.append(DISC_END)
    for c in res["cohorts"]:
        L.append("")
        L.append(f"## Cohort {c['title']}")
        L.append("")
        ex = c["exact"]
        L.append(f"Exact spectrum: eigh in {ex['seconds']:.1f} s (GRM {c['grm_seconds']:.1f} s); "
                 f"tr K = {ex['trace_K']:.1f}, top eigenvalues {', '.join(f'{s:.2f}' for s in ex['top_s'][:12])}, "
                 f"the k-th eigenvalue for k = {', '.join(str(k) for k in c['ks'])}: "
                 f"{', '.join('%.3f' % ex['s_at_k'][str(k)] for k in c['ks'])}; mean eigenvalue tr K / n = "
                 f"{ex['trace_K'] / c['n']:.3f}.")
        L.append("")
        L.append("### Randomized spectra (defaults) against eigh")
        L.append("")
        L.append(spectrum_table(c))
        L.append("")
        L.append("λ̄ is the tail eigenvalue shared by the n − k directions outside the top k; "
                 "\"share of tr K\" / \"share of tr K²\" are Σ_{i≤k} s_i / tr K and Σ_{i≤k} s_i² / tr K² from eigh. "
                 "Relative errors and Ritz residuals are those of the randomized eigenpairs at the default "
                 "settings; the REML estimating equations stay unbiased with inexact eigenvectors (λ̄ comes from "
                 "tr K and the Ritz values), and the calibrated SE includes their coupling with the tail.")
        L.append("")
        L.append("### REML on the randomized top-k spectra")
        L.append("")
        L.append(reml_table(c, "rand"))
        L.append("")
        L.append("### REML on the exact top-k spectra (`Spectrum.top(k)`, same replicates)")
        L.append("")
        L.append(reml_table(c, "top"))
    L.append("")
    return "\n".join(L)


def read_discussion(path: Path) -> str | None:
    if not path.exists():
        return None
    text = path.read_text()
    i, j = text.find(DISC_BEGIN), text.find(DISC_END)
    if i < 0 or j < i:
        return None
    body = text[i + len(DISC_BEGIN):j].strip("\n")
    return None if body.startswith("_(hand-written discussion") else body


# --------------------------------------------------------------------------- main

def run_cohort(spec: dict, args, cache: Path, seeds: dict, blas_pass: int) -> dict:
    from threadpoolctl import threadpool_limits

    import bigmm

    n, p, R = args.n, args.p, args.replicates
    path, sim_s = ensure_cohort(cache, spec, n, p)
    store = bigmm.open_store(path)
    with threadpool_limits(limits=blas_pass, user_api="blas"):
        t = time.perf_counter()
        std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
        K = bigmm.grm(store.genotypes, std)
        grm_s = time.perf_counter() - t
    log(f"cohort {spec['name']}: variant stats + GRM {n}x{n} in {grm_s:.1f} s ({std.n_kept} variants kept)")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        t = time.perf_counter()
        exact = bigmm.exact_spectrum(K)
        eig_s = time.perf_counter() - t
    log(f"cohort {spec['name']}: exact spectrum in {eig_s:.1f} s; top eigenvalues "
        f"{np.array2string(exact.s[:6], precision=2)}; tr K = {exact.trace_K:.1f}")
    out = {"name": spec["name"], "title": spec["title"], "n_pops": spec["n_pops"], "fst": spec["fst"],
           "seed": spec["seed"], "n": n, "p": p, "ks": list(args.ks), "h2s": list(args.h2s),
           "simulate_seconds": sim_s, "grm_seconds": grm_s,
           "exact": {"seconds": eig_s, "trace_K": exact.trace_K, "top_s": exact.s[:20].tolist(),
                     "s_at_k": {str(k): float(exact.s[k - 1]) for k in args.ks}, "rank": exact.rank},
           "spectra": [], "rows": {}}
    rspecs = {}
    for ik, k in enumerate(args.ks):
        rseed = seeds[f"randomized {spec['name']} k={k}"]
        with threadpool_limits(limits=blas_pass, user_api="blas"):
            rs = bigmm.randomized_spectrum(bigmm.GrmOperator(store.genotypes, std), k, seed=rseed,
                                           oversample=args.oversample, power_iters=args.power_iters,
                                           algorithm=args.algorithm)
        with threadpool_limits(limits=args.threads, user_api="blas"):
            acc, KU = spectrum_accuracy(exact, K, rs, k)
        rspecs[k] = (rs, KU)
        out["spectra"].append(acc)
        log(f"cohort {spec['name']}: randomized k={k} seed={rseed}: {acc['passes']} passes, {acc['seconds']:.1f} s, "
            f"eigenvalue rel. err max {acc['rel_err_max']:.1e} median {acc['rel_err_median']:.1e}, "
            f"max Ritz residual {acc['max_ritz_residual']:.1e}, tail trK2 probe err {acc['tail_trK2_rel_err']:+.2%}")
    del K
    raw = {}
    boot_rng = np.random.default_rng(seeds["bootstrap"])
    boot = boot_rng.integers(0, R, size=(args.bootstrap, R))
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for h2 in args.h2s:
            pseed = seeds[f"phenotypes {spec['name']} h2={h2:g}"]
            t = time.perf_counter()
            Y = draw_phenotypes(exact, h2, R, pseed)
            fits = {"exact": fit_arrays(exact, Y)}
            for k in args.ks:
                fits[f"rand{k}"] = fit_arrays(rspecs[k][0], Y)
                fits[f"top{k}"] = fit_arrays(exact.top(k), Y)
            avar_full = asymptotic_var(exact, h2)
            for key, f in fits.items():
                row = summarize(f, fits["exact"], h2, boot)
                if key == "exact":
                    avar = avar_full
                elif key.startswith("rand"):
                    rs, KU = rspecs[int(key[4:])]
                    avar = asymptotic_var(exact, h2, rs.U, rs.s, KU)
                else:
                    kk = int(key[3:])
                    avar = asymptotic_var(exact, h2, exact.U[:, :kk], exact.s[:kk], exact.U[:, :kk] * exact.s[:kk])
                row["asym_se"], row["asym_eff"] = float(np.sqrt(avar)), avar_full / avar
                row["clip_mean"], row["clip_sd"] = clipped_normal(h2, row["asym_se"])
                out["rows"][f"{key}|{h2}"] = row
                for field in ("h2", "se", "se_curv", "lower", "upper"):
                    raw[f"{spec['name']}|{key}|{h2}|{field}"] = f[field]
            ex = out["rows"][f"exact|{h2}"]
            msg = ", ".join(f"k={k}: {out['rows'][f'rand{k}|{h2}']['mean']:.3f}"
                            f" eff {out['rows'][f'rand{k}|{h2}']['efficiency']:.2f}"
                            f" SE/SD {out['rows'][f'rand{k}|{h2}']['se_ratio']:.2f}" for k in args.ks)
            log(f"cohort {spec['name']}: h2={h2:g} seed={pseed}: {R} replicates fitted on "
                f"{len(fits)} spectra in {time.perf_counter() - t:.1f} s; exact mean {ex['mean']:.3f} "
                f"SD {ex['sd']:.3f} SE/SD {ex['se_ratio']:.2f}; {msg}")
    out["raw"] = raw
    return out


def main(argv=None) -> int:
    from bigmm.spectrum import DEFAULT_OVERSAMPLE, DEFAULT_POWER_ITERS, DEFAULT_PROBES

    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="samples (default 5000; 1000 with --quick)")
    ap.add_argument("--p", type=int, default=None, help="variants (default 20000; 3000 with --quick)")
    ap.add_argument("--replicates", type=int, default=None, help="phenotypes per h² (default 200; 30 with --quick)")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="ranks (default 50 200 1000; 50 200 with --quick)")
    ap.add_argument("--h2s", type=float, nargs="+", default=[0.2, 0.5, 0.8], help="true heritabilities")
    ap.add_argument("--n-pops", type=int, default=10, help="populations of the structured cohort")
    ap.add_argument("--fst", type=float, default=0.05, help="F_ST of the structured cohort")
    ap.add_argument("--seed", type=int, default=20260, help="base seed (all others derive from it)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the ± columns")
    ap.add_argument("--oversample", type=int, default=None,
                    help=f"randomized spectrum oversampling (default: bigmm's DEFAULT_OVERSAMPLE = {DEFAULT_OVERSAMPLE})")
    ap.add_argument("--power-iters", type=int, default=None,
                    help=f"randomized spectrum power iterations (default: bigmm's DEFAULT_POWER_ITERS = {DEFAULT_POWER_ITERS})")
    ap.add_argument("--algorithm", choices=sorted(DEFAULT_POWER_ITERS), default="krylov",
                    help="randomized spectrum algorithm (default: bigmm's default, krylov; docs/lowrank.md "
                         "says which one its table was made with)")
    ap.add_argument("--threads", type=int, default=2, help="total threads (Dask threads x BLAS threads)")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "sim_lowrank",
                    help="cohort cache directory (default cache/sim_lowrank, git-ignored)")
    ap.add_argument("--quick", action="store_true", help="smoke run: n=1000, p=3000, 30 replicates, k = 50 200")
    ap.add_argument("--out", type=Path, default=None,
                    help="report path (default docs/lowrank.md; CACHE/lowrank_quick.md with --quick)")
    ap.add_argument("--no-docs", action="store_true", help="do not write the report")
    args = ap.parse_args(argv)
    q = args.quick
    args.n = args.n or (1000 if q else 5000)
    args.p = args.p or (3000 if q else 20000)
    args.replicates = args.replicates or (30 if q else 200)
    args.ks = args.ks or ([50, 200] if q else [50, 200, 1000])
    bad = [k for k in args.ks if not 0 < k < args.n]
    if bad:
        ap.error(f"--ks must lie in 1..n-1 = {args.n - 1} (got {bad})")
    if any(not 0 <= h <= 1 for h in args.h2s):
        ap.error("--h2s must lie in [0, 1]")
    out_path = args.out or ((args.cache / "lowrank_quick.md") if q else REPO / "docs" / "lowrank.md")

    logging.basicConfig(level=logging.WARNING)
    import dask

    dask_threads = args.threads
    blas_pass = max(1, args.threads // dask_threads)
    dask.config.set(scheduler="threads", num_workers=dask_threads)

    specs = cohort_specs(args)
    seeds = {}
    for ci, c in enumerate(specs):
        seeds[f"cohort {c['name']}"] = c["seed"]
    for ci, c in enumerate(specs):
        for ik, k in enumerate(args.ks):
            seeds[f"randomized {c['name']} k={k}"] = args.seed + 100 * (ci + 1) + ik
        for ih, h2 in enumerate(args.h2s):
            seeds[f"phenotypes {c['name']} h2={h2:g}"] = args.seed + 1000 * (ci + 1) + ih
    seeds["bootstrap"] = args.seed + 9
    command = command_line(__file__, argv).rstrip()
    log(f"sim_lowrank: n={args.n} p={args.p} replicates={args.replicates} ks={args.ks} h2s={args.h2s} "
        f"threads={args.threads} (Dask {dask_threads} x BLAS {blas_pass} in passes); defaults oversample="
        f"{DEFAULT_OVERSAMPLE} algorithm={args.algorithm} power_iters={DEFAULT_POWER_ITERS[args.algorithm]} "
        f"probes={DEFAULT_PROBES}")
    log("seeds: " + ", ".join(f"{k}={v}" for k, v in seeds.items()))
    machine = machine_info()
    cohorts = [run_cohort(c, args, args.cache, seeds, blas_pass) for c in specs]
    runtime = time.perf_counter() - T0
    res = {
        "command": command, "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine, "runtime_s": runtime, "seeds": seeds, "blas_threads_passes": blas_pass,
        "defaults": {"oversample": DEFAULT_OVERSAMPLE if args.oversample is None else args.oversample,
                     "power_iters": DEFAULT_POWER_ITERS[args.algorithm] if args.power_iters is None else args.power_iters,
                     "algorithm": args.algorithm,
                     "probes": DEFAULT_PROBES,
                     "are_defaults": args.oversample is None and args.power_iters is None},
        "cache_rel": str(args.cache.relative_to(REPO)) if args.cache.resolve().is_relative_to(REPO) else str(args.cache),
        "args": {"n": args.n, "p": args.p, "replicates": args.replicates, "ks": args.ks, "h2s": args.h2s,
                 "n_pops": args.n_pops, "fst": args.fst, "seed": args.seed, "threads": args.threads,
                 "bootstrap": args.bootstrap, "quick": q, "oversample": args.oversample,
                 "power_iters": args.power_iters},
        "cohorts": cohorts,
    }
    tag = f"n{args.n}_p{args.p}_R{args.replicates}_seed{args.seed}" + (
        "" if args.oversample is None else f"_os{args.oversample}") + (
        "" if args.power_iters is None else f"_q{args.power_iters}") + (
        "" if args.algorithm == "krylov" else f"_{args.algorithm}")
    raw = {}
    for c in cohorts:
        raw.update(c.pop("raw"))
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.cache / f"results_{tag}.npz", **raw)
    (args.cache / f"results_{tag}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    log(f"raw results: {args.cache / f'results_{tag}.npz'}, summary {args.cache / f'results_{tag}.json'}")
    report = build_report(res, read_discussion(out_path))
    print()
    for line in findings(res):
        print("- " + line)
    print()
    for c in cohorts:
        print(f"## {c['title']}\n\n{spectrum_table(c)}\n\n{reml_table(c, 'rand')}\n\n{reml_table(c, 'top')}\n")
    if not args.no_docs:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(report)
        os.replace(tmp, out_path)
        log(f"wrote {out_path}")
    log(f"done in {runtime / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
