"""Several variance components, bigmm next to BOLT-REML on the same split of the same variants.

On BOLT-LMM's example cohort (EUR_subset: 379 Europeans of the 1000 Genomes Project, 54,051 SNPs on
chromosomes 17-22; the BOLT-LMM v2.4 release's example/ folder, Debian package bolt-lmm-example),
for each split of the variants into components this script fits

  * bigmm, through the library: ``ingest_plink`` of the analysed samples, ``variant_stats``,
    ``standardization("sample_sd")`` with BOLT's filters (``EUR_subset.exclude``, at most 10%
    missing calls per SNP: BOLT's ``--maxMissingPerSnp`` default), the split from
    ``chromosome_components`` / ``maf_bins``, every K_j in one pass (``component_grms``) and exact
    AI-REML (``fit_components``, intercept only or, with ``--covariates``, BOLT's example covariates;
    no LRTs or ML fits: BOLT computes neither);
  * BOLT-REML: ``bolt --reml --modelSnps=FILE`` with BOLT's example settings (``--remove``,
    ``--exclude``, ``--phenoCol=PHENO``; ``NA`` and ``-9`` are missing for both), FILE written from
    bigmm's own assignment (variant ID and component name per line), so both use the same variants
    in the same components,

and prints, per component, h²_j and its SE from each, their difference in units of the combined SE
sqrt(SE_bigmm² + SE_BOLT²), the exact REML log-likelihood (a dense NumPy evaluation written here) at
each tool's estimate (BOLT prints none: it is evaluated at BOLT's h²_j with the overall scale at its
REML optimum), and the wall and CPU time of each.

Samples: BOLT standardizes each SNP over the samples it analyses (not removed, PHENO observed), so
bigmm's store holds exactly those samples and uses ``sample_sd``; h²_j = σ²_j / Vp in both.

Usage:
  python scripts/studies/peer_components.py --eur /work/data/eur --out WORKDIR [--threads 2]
      [--splits chrom maf2 maf3] [--covariates] [--bolt bolt]
"""
from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = {
    "chrom": "two chromosome groups: chr17-19, chr20-22",
    "maf2": "two MAF bins: [0, 0.1), [0.1, 0.5]",
    "maf3": "three MAF bins: [0, 0.05), [0.05, 0.2), [0.2, 0.5]",
}
EUR_FILES = ("EUR_subset.bed", "EUR_subset.bim", "EUR_subset.fam", "EUR_subset.pheno.covars",
             "EUR_subset.remove", "EUR_subset.exclude")
NUM = r"([-+0-9.eE]+|nan|-?inf)"


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def analysed_samples(eur: Path, covariates: bool):
    """BOLT's analysed samples: in the .fam, not in EUR_subset.remove, PHENO (and with
    ``covariates`` CAT_COV, QCOV1, QCOV2) observed (NA and -9 are missing). Returns their .fam row
    indices, PHENO and the fixed-effect design Z (intercept; with ``covariates`` also one indicator
    per CAT_COV level but the first, QCOV1, QCOV2), in .fam order."""
    rows = [line.split() for line in open(eur / "EUR_subset.pheno.covars")]
    head, body = rows[0], rows[1:]
    used = ["PHENO", "CAT_COV", "QCOV1", "QCOV2"] if covariates else ["PHENO"]
    table = {(r[0], r[1]): [r[head.index(c)] for c in used] for r in body}
    removed = {tuple(line.split()[:2]) for line in open(eur / "EUR_subset.remove") if line.strip()}
    idx, vals = [], []
    for i, line in enumerate(open(eur / "EUR_subset.fam")):
        key = tuple(line.split()[:2])
        v = table.get(key)
        if key in removed or v is None or any(x in ("NA", "-9") for x in v):
            continue
        idx.append(i)
        vals.append(v)
    y = np.array([float(v[0]) for v in vals])
    cols = [np.ones(len(y))]
    if covariates:
        levels = sorted({v[1] for v in vals})
        cols += [np.array([v[1] == lev for v in vals], dtype=float) for lev in levels[1:]]
        cols += [np.array([float(v[2]) for v in vals]), np.array([float(v[3]) for v in vals])]
    return np.array(idx, dtype=np.int64), y, np.column_stack(cols)


def split(name, bigmm, std, chrom):
    if name == "chrom":
        return bigmm.chromosome_components(chrom, {"chr17-19": ["17", "18", "19"], "chr20-22": ["20", "21", "22"]},
                                           keep=std.keep)
    edges = {"maf2": [0.0, 0.1, 0.5], "maf3": [0.0, 0.05, 0.2, 0.5]}[name]
    comps = bigmm.maf_bins(std, edges)
    # plain names (maf0.1-0.5) for the table and the --modelSnps file; the split is maf_bins's own
    names = [f"maf{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
    return bigmm.Components(names, comps.assignment, comps.source)


def reml_logl(Ks, y, Z, theta) -> float:
    """Exact REML log-likelihood in bigmm's convention (Harville's, without ½ log det ZᵀZ):
    −½[(n − c) log 2π + log det V + log det ZᵀV⁻¹Z + yᵀPy], V = Σ θ_j K_j + θ_e I."""
    n, c = Z.shape
    V = sum(t * K for t, K in zip(theta[:-1], Ks)) + theta[-1] * np.eye(n)
    L = np.linalg.cholesky(V)
    Li_y = np.linalg.solve(L, y)
    Li_Z = np.linalg.solve(L, Z)
    A = Li_Z.T @ Li_Z
    b = Li_Z.T @ Li_y
    yPy = Li_y @ Li_y - b @ np.linalg.solve(A, b)
    return float(-0.5 * ((n - c) * math.log(2 * math.pi) + 2 * np.log(np.diag(L)).sum()
                         + np.linalg.slogdet(A)[1] + yPy))


def logl_at_h2(Ks, y, Z, h2) -> float:
    """REML log-likelihood at the h²_j (V = s (Σ h_j K_j + (1 − Σ h_j) I)), the scale s at its REML
    optimum s = yᵀP₀y / (n − c) (P₀ of the unscaled V₀)."""
    n, c = Z.shape
    theta0 = np.append(h2, 1.0 - np.sum(h2))
    V0 = sum(t * K for t, K in zip(theta0[:-1], Ks)) + theta0[-1] * np.eye(n)
    L = np.linalg.cholesky(V0)
    Li_y, Li_Z = np.linalg.solve(L, y), np.linalg.solve(L, Z)
    b = Li_Z.T @ Li_y
    s = (Li_y @ Li_y - b @ np.linalg.solve(Li_Z.T @ Li_Z, b)) / (n - c)
    return reml_logl(Ks, y, Z, s * theta0)


def parse_bolt(text: str, names) -> dict:
    out = {"n": int(re.search(r"Nused = (\d+)", text).group(1)),
           "M": int(re.search(r"Total post-QC SNPs: M = (\d+)", text).group(1))}
    for name in names:
        m = re.search(r'Variance component \d+:\s+"' + re.escape(name) + r'"\s*\n\s*h2g \(1,1\): ' + NUM
                      + r" \(" + NUM + r"\)", text)
        if not m:
            raise ValueError(f"no h2g line for component {name!r} in BOLT's log")
        out[name] = (float(m.group(1)), float(m.group(2)))
    m = re.search(r"Variance component 0:\s+\(environment/noise\)\s*\n\s*h2e \(1,1\): " + NUM + r" \(" + NUM + r"\)",
                  text)
    out["h2e"] = (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))
    out["ai_iters"] = len(re.findall(r"Start ITER \d+: computing AI matrix", text))
    warn = [ln.strip() for ln in text.splitlines() if "WARNING" in ln and "SNP has been excluded" not in ln]
    out["warnings"] = sorted(set(warn))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eur", required=True, type=Path, help="folder with BOLT-LMM's EUR_subset.* files")
    p.add_argument("--out", required=True, type=Path, help="work folder (created; bigmm's store and BOLT's logs)")
    p.add_argument("--threads", type=int, default=2, help="threads of each tool (BOLT --numThreads; bigmm's BLAS "
                   "and Dask); default 2")
    p.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    p.add_argument("--covariates", action="store_true", help="BOLT's example covariates (CAT_COV categorical, "
                   "QCOV1, QCOV2) in both fits, as run_example.sh; default: intercept only")
    p.add_argument("--bolt", default="bolt", help="the BOLT-LMM executable (default: bolt on PATH)")
    args = p.parse_args()

    exe = shutil.which(args.bolt)
    if exe is None:
        sys.exit(f"BOLT-LMM not found ({args.bolt}; Debian: apt-get install -y bolt-lmm): nothing to compare with")
    missing = [f for f in EUR_FILES if not (args.eur / f).is_file()]
    if missing:
        sys.exit(f"EUR_subset data missing in {args.eur}: {', '.join(missing)} (BOLT-LMM v2.4's example/ folder, "
                 "Debian package bolt-lmm-example)")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    import dask
    import bigmm

    dask.config.set(scheduler="threads", num_workers=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    eur = args.eur
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {os.getloadavg()}, "
          f"{os.cpu_count()} CPUs, bigmm {bigmm.__version__}", flush=True)

    # --- bigmm: the shared setup (store of the analysed samples, statistics, filters) ----------
    t0, c0 = time.perf_counter(), cpu_self()
    rows, y, Z = analysed_samples(eur, args.covariates)
    store = bigmm.ingest_plink(eur / "EUR_subset", args.out / f"eur_analysed_{len(rows)}.zarr", samples=rows,
                               overwrite=True)
    stats = bigmm.variant_stats(store.to_dask())
    vt = store.variant_table()
    excluded = {line.split()[0] for line in open(eur / "EUR_subset.exclude") if line.strip()}
    std = bigmm.standardization(stats, "sample_sd", max_missing=0.1,
                                drop={"exclude": np.isin(vt["id"], list(excluded))})
    setup = (time.perf_counter() - t0, cpu_self() - c0)
    n = len(y)
    print(f"bigmm setup: n = {n}, {Z.shape[1]} fixed effects, {std}; {setup[0]:.1f} s wall, "
          f"{setup[1]:.1f} s CPU", flush=True)

    tables = []
    for name in args.splits:
        comps = split(name, bigmm, std, vt["chrom"])
        comps.check(std.keep, min_variants=100)
        tag = f"{name}{'_cov' if args.covariates else ''}"
        model = args.out / f"{tag}.modelSnps"
        a = comps.assignment
        with open(model, "w") as fh:
            fh.writelines(f"{vid}\t{comps.names[j]}\n" for vid, j in zip(vt["id"], a) if j >= 0)
        # bigmm: every K_j in one pass, then exact AI-REML
        t0, c0 = time.perf_counter(), cpu_self()
        grms = bigmm.component_grms(store.genotypes, std, comps)
        t1 = time.perf_counter()
        res = bigmm.fit_components(list(grms.K), y, Z, component_names=grms.names, n_variants=grms.n_variants,
                                   phenotype_names=["PHENO"], lrt=False, ml=False)
        t2, c2 = time.perf_counter(), cpu_self()
        fit = res["PHENO"]
        bm = {"wall": setup[0] + t2 - t0, "cpu": setup[1] + c2 - c0, "grm": t1 - t0, "fit": t2 - t1}
        # BOLT-REML on the same variants and components
        log = args.out / f"bolt_{tag}.log"
        covar = ([f"--covarFile={eur / 'EUR_subset.pheno.covars'}", "--covarCol=CAT_COV", "--qCovarCol=QCOV{1:2}"]
                 if args.covariates else [])
        argv = [exe, f"--bfile={eur / 'EUR_subset'}", f"--remove={eur / 'EUR_subset.remove'}",
                f"--exclude={eur / 'EUR_subset.exclude'}", f"--phenoFile={eur / 'EUR_subset.pheno.covars'}",
                "--phenoCol=PHENO", *covar, f"--modelSnps={model}", "--reml", f"--numThreads={args.threads}"]
        print(f"$ {' '.join(map(str, argv))}", flush=True)
        t0, c0 = time.perf_counter(), cpu_children()
        with open(log, "w") as fh:
            rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT).returncode
        bt = {"wall": time.perf_counter() - t0, "cpu": cpu_children() - c0}
        if rc != 0:
            tail = " / ".join(log.read_text().strip().splitlines()[-3:])
            sys.exit(f"BOLT-REML failed (exit {rc}) on split {name}: {tail} (log: {log})")
        bo = parse_bolt(log.read_text(), comps.names)
        # exact REML log-likelihood at each tool's estimate
        Ks = list(grms.K)
        theta = np.array([c.sigma2 for c in fit.components] + [fit.sigma2_e])
        ll_b = reml_logl(Ks, y, Z, theta)
        h2_bolt = np.array([bo[c][0] for c in comps.names])
        ll_o = logl_at_h2(Ks, y, Z, h2_bolt)
        lines = [f"\n## {SPLITS[name]}  (n = {fit.n} bigmm, {bo['n']} BOLT; M = {int(grms.n_variants.sum())} "
                 f"bigmm, {bo['M']} BOLT)",
                 "| component | variants | bigmm h² (SE) | BOLT h² (SE) | Δ / combined SE |",
                 "|---|---|---|---|---|"]
        for c, pj in zip(fit.components, grms.n_variants):
            hb, sb = bo[c.name]
            z = (c.h2 - hb) / math.hypot(c.h2_se, sb)
            lines.append(f"| {c.name} | {pj:,} | {c.h2:.4f} ({c.h2_se:.4f}){' [bound]' if c.boundary else ''} "
                         f"| {hb:.4f} ({sb:.4f}) | {z:+.2f} |")
        he, se_e = bo["h2e"]
        z = (fit.h2 - (1 - he)) / math.hypot(fit.h2_se, se_e)
        lines += [f"| total | {int(grms.n_variants.sum()):,} | {fit.h2:.4f} ({fit.h2_se:.4f}) "
                  f"| {1 - he:.4f} ({se_e:.4f}) | {z:+.2f} |",
                  f"| REML logL (exact, at each estimate) | | {ll_b:.4f} | {ll_o:.4f} | Δ = {ll_b - ll_o:.4f} |",
                  f"| iterations | | {fit.iterations} AI (converged: {fit.converged}) | {bo['ai_iters']} AI | |",
                  f"| wall / CPU (s) | | {bm['wall']:.1f} / {bm['cpu']:.1f} (K_j {bm['grm']:.1f}, fit {bm['fit']:.2f}, "
                  f"+ setup {setup[0]:.1f}) | {bt['wall']:.1f} / {bt['cpu']:.1f} | |"]
        lines.append(f"check: bigmm's logl_reml {fit.logl_reml:.6f}, NumPy evaluation here {ll_b:.6f}")
        if bo["warnings"]:
            lines.append("BOLT warnings: " + "; ".join(bo["warnings"]))
        print("\n".join(lines), flush=True)
        tables.append(lines)
    print(f"\nload average at the end {os.getloadavg()}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


if __name__ == "__main__":
    main()
