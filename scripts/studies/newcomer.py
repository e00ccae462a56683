"""A newcomer's comparison of bigmm with GEMMA and BOLT-REML on their own example data, bigmm run
from command-line flags alone.

Data (public; not in this repository):
  * GEMMA's example folder (github.com/genetics-statistics/GEMMA, example/; Debian package
    gemma-doc): mouse_hs1940.bed/.bim/.fam (1,940 heterogeneous-stock mice, 12,226 SNPs, six
    phenotypes in .fam columns 6-11) and mouse_hs1940.pheno.txt (the same phenotypes, GEMMA -p).
  * BOLT-LMM's example folder (the BOLT-LMM v2.4 release tarball, example/; Debian package
    bolt-lmm-example): EUR_subset.bed/.bim/.fam (379 1000 Genomes Europeans, 54,051 SNPs),
    EUR_subset.pheno.covars, EUR_subset.remove, EUR_subset.exclude.

Usage:
  python scripts/studies/newcomer.py --hs1940 DIR --eur DIR --out WORKDIR [--only NAME ...]

Needs `gemma` (0.98.5), `bolt` (2.4) on PATH and bigmm (`--bigmm`, default: the bigmm next to this
Python). Prints, per comparison, every command run with its wall time, then a side-by-side table
(h2 / pve, sigma2_g, sigma2_e, their SEs, the REML log-likelihood in the peer's convention, wall
time). bigmm's numbers are converted to the peer's conventions as docs/math.md section 9 says:
  * GEMMA's pve is bigmm's `pve` (sigma2_g d / (sigma2_g d + sigma2_e), d = mean diag K_a -
    mean K_a); GEMMA's vg, ve are bigmm's sigma2_g, sigma2_e; GEMMA's REMLE log-likelihood is
    bigmm's logl_reml + 1/2 log det(Z'Z) (Z: the fixed-effect design; the intercept alone: n).
  * BOLT-REML's h2g is sigma2_g / (sigma2_g + sigma2_e) with K = X X'/M standardized by the
    sample SD over the analysed samples (mean diag K = 1): bigmm's `h2` under
    `--standardize sample_sd` with the analysed samples alone in the genotype set (`--keep`).

bigmm flags that a version may lack (`--standardize`, several `--pheno-fam` columns): the run
then goes through the equivalent configuration file (written by this script, printed) and
`bigmm run`, and the table says so.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

RUNS: list[dict] = []          # every command run: name, argv, seconds
REUSE = False                  # --reuse: a command that finished before (WORK/name.seconds) is not rerun


def run(name, argv, cwd, log=None):
    """Run argv in cwd (stdout+stderr to log or WORK/name.log), time it, fail loudly."""
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    log = Path(log or cwd / f"{name}.log")
    print(f"$ (cd {cwd} && {shlex.join(map(str, argv))})", flush=True)
    done = cwd / f"{name}.seconds"
    if REUSE and done.exists():
        dt = float(done.read_text())
        print(f"  {dt:.1f} s (earlier run, --reuse), log {log}", flush=True)
        return log, dt
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run([str(a) for a in argv], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t0
    RUNS.append({"name": name, "argv": [str(a) for a in argv], "seconds": dt})
    print(f"  {dt:.1f} s, exit {rc}, log {log}", flush=True)
    if rc != 0:
        sys.exit(f"{name} failed (exit {rc}); see {log}")
    done.write_text(f"{dt:.3f}\n")
    return log, dt


# --- parsers ---------------------------------------------------------------------------------

def _num(text, pattern, group=1):
    m = re.search(pattern, text, re.M)
    if not m:
        raise ValueError(f"not found: {pattern}")
    return float(m.group(group))


def gemma_lmm(log):
    t = Path(log).read_text()
    return {"n": int(_num(t, r"number of analyzed individuals = (\d+)")),
            "logl": _num(t, r"REMLE log-likelihood in the null model = (\S+)"),
            "pve": _num(t, r"pve estimate in the null model = (\S+)"),
            "pve_se": _num(t, r"se\(pve\) in the null model = (\S+)"),
            "vg": _num(t, r"vg estimate in the null model = (\S+)"),
            "ve": _num(t, r"## ve estimate in the null model = (\S+)")}


def gemma_vc(log):
    t = Path(log).read_text()
    s = re.search(r"sigma2 estimates =\s+(\S+)\s+(\S+)", t)
    se = re.search(r"se\(sigma2\) =\s+(\S+)\s+(\S+)", t)
    return {"n": int(_num(t, r"number of analyzed individuals = (\d+)")),
            "pve": _num(t, r"pve estimates =\s+(\S+)"), "pve_se": _num(t, r"se\(pve\) =\s+(\S+)"),
            "vg": float(s.group(1)), "ve": float(s.group(2)),
            "vg_se": float(se.group(1)), "ve_se": float(se.group(2))}


def bolt_reml(log):
    """BOLT-REML's single-trait, single-component summary (v2.4 prints the components as 1x1
    matrices: component 0 the noise, component 1 the GRM)."""
    t = Path(log).read_text()
    num = r"([-0-9.eE+]+)"
    e = re.search(r"Variance component 0: \[1,1\].*?\n\s*entry \(1,1\): " + num + r" \(" + num + r"\)", t, re.S)
    g = re.search(r"Variance component 1: \[1,1\].*?\n\s*entry \(1,1\): " + num + r" \(" + num + r"\)", t, re.S)
    h = re.search(r"h2g \(1,1\): " + num + r" \(" + num + r"\)", t)
    return {"n": int(_num(t, r"Number of individuals used in analysis: Nused = (\d+)")),
            "M": int(_num(t, r"Total post-QC SNPs: M = (\d+)")),
            "h2": float(h.group(1)), "h2_se": float(h.group(2)),
            "vg": float(g.group(1)), "vg_se": float(g.group(2)),
            "ve": float(e.group(1)), "ve_se": float(e.group(2))}


def bigmm_results(outdir):
    """results.tsv (one row per phenotype) plus compute time without the report stage."""
    import csv
    import json
    rows = list(csv.DictReader(open(Path(outdir) / "results.tsv"), delimiter="\t"))
    res = json.load(open(Path(outdir) / "results.json"))
    stages = sum(v["seconds"] for k, v in res.get("stages", {}).items() if k != "report")
    out = {}
    for r in rows:
        d = {k: (float(v) if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf", v or "x") else v) for k, v in r.items()}
        d["n"] = int(d["n"])
        d["stages_s"] = stages
        d["standardize"] = res.get("standardize")
        d["n_variants"] = res.get("n_variants")
        out[r["phenotype"]] = d
    return out


# --- bigmm from flags (or the equivalent configuration) ----------------------------------------

def bigmm_help(bigmm):
    return subprocess.run([bigmm, "reml", "--help"], capture_output=True, text=True).stdout


def bigmm_flags(bigmm, name, work, flags: list, fallback_cfg: dict, needs: list[str]):
    """Run `bigmm reml FLAGS --out WORK/name`. `needs` are the flags (as strings to find in
    `bigmm reml --help`) this run relies on; if one is missing, write fallback_cfg (the same
    configuration) to WORK/name.yaml and run `bigmm run` on it instead."""
    out = Path(work) / name
    helptext = bigmm_help(bigmm)
    missing = [f for f in needs if f not in helptext]
    if not missing:
        log, dt = run(name, [bigmm, "reml", *flags, "--out", out], work)
        how = "flags"
    else:
        print(f"  (this bigmm lacks {', '.join(missing)}: the same run from a configuration file; "
              f"with those flags it is: bigmm reml {shlex.join(map(str, flags))} --out {out})")
        cfg = dict(fallback_cfg, output=str(out))
        cfgfile = Path(work) / f"{name}.yaml"
        cfgfile.write_text(yaml.safe_dump(cfg, sort_keys=False))
        print("  " + cfgfile.read_text().replace("\n", "\n  "))
        log, dt = run(name, [bigmm, "run", "--force", cfgfile], work)
        how = "YAML (" + ", ".join(missing) + " missing)"
    res = bigmm_results(out)
    for d in res.values():
        d["wall_s"] = dt
        d["via"] = how
    return res


CLUSTER = {"workers": 1, "threads_per_worker": 2}
CLUSTER_FLAGS = ["--workers", "1", "--threads", "2"]


# --- the comparisons ---------------------------------------------------------------------------

def hs1940_gemma(args, work, gk, cols):
    """GEMMA -gk {1,2}, then -lmm 4 and -vc 2 (for the SEs of vg, ve) per phenotype column."""
    hs = Path(args.hs1940)
    kin, dt_gk = run(f"gemma_gk{gk}", ["gemma", "-bfile", hs / "mouse_hs1940", "-gk", gk, "-o", f"hs_gk{gk}"], work)
    out = {}
    for c in cols:
        log_lmm, dt_lmm = run(f"gemma_gk{gk}_lmm_n{c}", ["gemma", "-bfile", hs / "mouse_hs1940", "-k",
                              f"output/hs_gk{gk}.{'cXX' if gk == 1 else 'sXX'}.txt", "-lmm", 4, "-n", c,
                              "-o", f"hs_gk{gk}_lmm_n{c}"], work)
        log_vc, dt_vc = run(f"gemma_gk{gk}_vc_n{c}", ["gemma", "-p", hs / "mouse_hs1940.pheno.txt", "-k",
                            f"output/hs_gk{gk}.{'cXX' if gk == 1 else 'sXX'}.txt", "-vc", 2, "-n", c,
                            "-o", f"hs_gk{gk}_vc_n{c}"], work)
        lmm = gemma_lmm(Path(work) / "output" / f"hs_gk{gk}_lmm_n{c}.log.txt")
        vc = gemma_vc(Path(work) / "output" / f"hs_gk{gk}_vc_n{c}.log.txt")
        out[c] = {"lmm": lmm, "vc": vc, "t_gk": dt_gk, "t_lmm": dt_lmm, "t_vc": dt_vc}
    return out


def table(title, rows):
    """rows: list of (label, dict) with keys n, h2, h2_se, vg, vg_se, ve, ve_se, logl, time."""
    keys = ["n", "h2", "h2_se", "vg", "vg_se", "ve", "ve_se", "logl", "time"]
    print(f"\n### {title}\n")
    print("| | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, d in rows:
        cells = []
        for k in keys:
            v = d.get(k)
            cells.append("" if v is None else (str(v) if isinstance(v, (int, str)) else f"{v:.6g}"))
        print(f"| {label} | " + " | ".join(cells) + " |")


def gemma_variants(prefix, fam_cols, out):
    """The variants GEMMA's -gk keeps: at least two genotype classes, missing fraction <= 0.05 and
    MAF >= 0.01 over the samples with every phenotype of fam_cols observed (GEMMA's defaults
    -miss 0.05 -maf 0.01, counted over the analysed samples, not over the whole .fam)."""
    import numpy as np
    fam = [line.split() for line in open(f"{prefix}.fam")]
    bim = [line.split()[1] for line in open(f"{prefix}.bim")]
    n, p = len(fam), len(bim)
    raw = np.fromfile(f"{prefix}.bed", dtype=np.uint8)[3:].reshape(p, (n + 3) // 4)
    codes = np.stack([(raw >> (2 * k)) & 3 for k in range(4)], axis=2).reshape(p, -1)[:, :n]
    g = np.choose(codes, [2, -1, 1, 0]).astype(np.int8)     # PLINK: 00 hom, 01 missing, 10 het, 11 hom
    obs = np.array([all(r[4 + c] not in ("NA", "-9") for c in fam_cols) for r in fam])
    G = g[:, obs]
    called = G >= 0
    N = called.sum(1)
    cnt = np.stack([(G == k).sum(1) for k in (0, 1, 2)], axis=1)
    f = (cnt[:, 1] + 2 * cnt[:, 2]) / (2 * np.maximum(N, 1))
    ok = ((cnt > 0).sum(1) >= 2) & ((G.shape[1] - N) / G.shape[1] <= 0.05) & (np.minimum(f, 1 - f) >= 0.01)
    Path(out).write_text("".join(b + "\n" for b, k in zip(bim, ok) if k))
    return int(ok.sum())


def compare_gemma(args, work, gk, std, cols, maf_row=False):
    g = hs1940_gemma(args, work, gk, cols)
    prefix = Path(args.hs1940) / "mouse_hs1940"
    # GEMMA's kinship is the one -gk wrote, with its default -n 1: its variants are filtered over
    # the samples with .fam column 6 observed, whichever phenotype -lmm then fits with it
    extract = Path(work) / "gemma_variants_gk_n1.txt"
    n_extract = gemma_variants(prefix, [1], extract)
    if len(cols) == 1:
        ph = {"fam": cols[0]}
    else:                                    # several .fam columns: GEMMA's -p file, the same values
        ph = {"file": str(Path(args.hs1940) / "mouse_hs1940.pheno.txt"), "layout": "gemma",
              "columns": [str(c) for c in cols]}
    needs = ["--standardize"] + (["N [N ...]"] if len(cols) > 1 else [])
    runs = []
    # the variants: GEMMA's list (MAF over the analysed samples), and optionally bigmm's own
    # --maf/--geno filters (over all genotyped samples)
    for kind in (["maf"] if maf_row else []) + ["extract"]:
        vflags = ["--maf", "0.01", "--geno", "0.05"] if kind == "maf" else ["--extract", extract]
        vcfg = {"min_maf": 0.01, "max_missing": 0.05} if kind == "maf" else {"extract": str(extract)}
        flags = ["--bfile", prefix, "--pheno-fam", *map(str, cols), *vflags, "--standardize", std, *CLUSTER_FLAGS]
        cfg = {"genotypes": {"plink": str(prefix)}, "variants": {**vcfg, "standardize": std},
               "phenotypes": ph, "cluster": CLUSTER}
        name = f"bigmm_hs_{std}_n{'_'.join(map(str, cols))}" + ("" if kind == "maf" else "_extract")
        runs.append((kind, bigmm_flags(args.bigmm, name, work, flags, cfg, needs)))
    for i, c in enumerate(cols):
        gl, gv = g[c]["lmm"], g[c]["vc"]
        rows = [(f"GEMMA -gk {gk} -lmm 4 -n {c}", {"n": gl["n"], "h2": gl["pve"], "h2_se": gl["pve_se"],
                 "vg": gl["vg"], "ve": gl["ve"], "logl": gl["logl"],
                 "time": f"{g[c]['t_gk']:.1f} + {g[c]['t_lmm']:.1f} s"}),
                (f"GEMMA -gk {gk} -vc 2 -n {c}", {"n": gv["n"], "h2": gv["pve"], "h2_se": gv["pve_se"],
                 "vg": gv["vg"], "vg_se": gv["vg_se"], "ve": gv["ve"], "ve_se": gv["ve_se"],
                 "time": f"{g[c]['t_gk']:.1f} + {g[c]['t_vc']:.1f} s"})]
        for kind, b in runs:
            bm = list(b.values())[i]
            what = "--maf 0.01 --geno 0.05" if kind == "maf" else f"--extract GEMMA's {n_extract} variants"
            rows.append((f"bigmm {std}, {what}, p = {bm['n_variants']} ({bm['via']}; pve)",
                         {"n": bm["n"], "h2": bm["pve"], "h2_se": bm["pve_se"],
                          "vg": bm["sigma2_g"], "vg_se": bm["sigma2_g_se"], "ve": bm["sigma2_e"],
                          "ve_se": bm["sigma2_e_se"], "logl": bm["logl_reml"] + 0.5 * math.log(bm["n"]),
                          "time": f"{bm['wall_s']:.1f} s ({bm['stages_s']:.1f} s before report)"}))
        table(f"HS1940, .fam column {5 + c} (GEMMA -n {c}), GEMMA -gk {gk} vs bigmm --standardize {std}", rows)


def bolt_hs1940(args, work):
    """BOLT cannot read NA in a .fam: a copy of the .fam with -9 there, and the phenotypes as a
    FID IID table (GEMMA's -n 1 is P1)."""
    hs = Path(args.hs1940)
    prep = Path(work) / "bolt_hs"
    prep.mkdir(parents=True, exist_ok=True)
    fam = [line.split() for line in open(hs / "mouse_hs1940.fam")]
    with open(prep / "hs.fam", "w") as fh:
        fh.writelines("\t".join(r[:5] + ["-9"]) + "\n" for r in fam)
    with open(prep / "hs.pheno", "w") as fh:
        fh.write("FID\tIID\tP1\n")
        fh.writelines("\t".join([r[0], r[1], r[5]]) + "\n" for r in fam)
    with open(prep / "analysed.keep", "w") as fh:   # the samples BOLT analyses: P1 observed
        fh.writelines(f"{r[0]}\t{r[1]}\n" for r in fam if r[5] != "NA")
    for ext in ("bed", "bim"):
        if not (prep / f"hs.{ext}").exists():
            (prep / f"hs.{ext}").symlink_to((hs / f"mouse_hs1940.{ext}").resolve())
    log, dt = run("bolt_hs_P1", ["bolt", f"--bfile={prep / 'hs'}", f"--phenoFile={prep / 'hs.pheno'}",
                                 "--phenoCol=P1", "--reml", "--numThreads=2"], work)
    bo = bolt_reml(log)
    flags = ["--bfile", hs / "mouse_hs1940", "--pheno-fam", "1", "--keep", prep / "analysed.keep",
             "--standardize", "sample_sd", *CLUSTER_FLAGS]
    cfg = {"genotypes": {"plink": str(hs / "mouse_hs1940")}, "samples": {"keep": str(prep / "analysed.keep")},
           "variants": {"standardize": "sample_sd"}, "phenotypes": {"fam": 1}, "cluster": CLUSTER}
    b = list(bigmm_flags(args.bigmm, "bigmm_hs_bolt", work, flags, cfg, ["--standardize"]).values())[0]
    rows = [("BOLT-REML --phenoCol=P1", {**bo, "time": f"{dt:.1f} s"}),
            (f"bigmm sample_sd, --keep analysed ({b['via']}; h2)",
             {"n": b["n"], "h2": b["h2"], "h2_se": b["h2_se"], "vg": b["sigma2_g"], "vg_se": b["sigma2_g_se"],
              "ve": b["sigma2_e"], "ve_se": b["sigma2_e_se"],
              "time": f"{b['wall_s']:.1f} s ({b['stages_s']:.1f} s before report)"})]
    table(f"HS1940 .fam column 6, BOLT-REML (M = {bo['M']}) vs bigmm", rows)


def bolt_eur(args, work, covariates):
    """BOLT's example: EUR_subset minus EUR_subset.remove and EUR_subset.exclude, PHENO of
    EUR_subset.pheno.covars (and its covariates CAT_COV, QCOV1, QCOV2 as in run_example.sh)."""
    eur = Path(args.eur)
    prep = Path(work) / "bolt_eur"
    prep.mkdir(parents=True, exist_ok=True)
    rows = [line.split() for line in open(eur / "EUR_subset.pheno.covars")]
    head, body = rows[0], rows[1:]
    ix = {c: head.index(c) for c in head}
    removed = {tuple(r[:2]) for r in (line.split() for line in open(eur / "EUR_subset.remove"))}
    # the samples BOLT analyses: genotyped, not removed, PHENO (and every covariate) observed;
    # BOLT (as PLINK, and bigmm) reads both NA and -9 as missing (PHENO is -9 for HG00104, HG00106)
    used = [c for c in (["PHENO", "CAT_COV", "QCOV1", "QCOV2"] if covariates else ["PHENO"])]
    fam_ids = {tuple(line.split()[:2]) for line in open(eur / "EUR_subset.fam")}
    keep = [r for r in body if tuple(r[:2]) in fam_ids and tuple(r[:2]) not in removed
            and all(r[ix[c]] not in ("NA", "-9") for c in used)]
    tag = "cov" if covariates else "nocov"
    with open(prep / f"analysed_{tag}.keep", "w") as fh:
        fh.writelines(f"{r[0]}\t{r[1]}\n" for r in keep)
    # GCTA-layout covariate files (headerless): what --covar / --qcovar read
    with open(prep / "eur.covar", "w") as fh:
        fh.writelines(f"{r[0]}\t{r[1]}\t{r[ix['CAT_COV']]}\n" for r in body)
    with open(prep / "eur.qcovar", "w") as fh:
        fh.writelines(f"{r[0]}\t{r[1]}\t{r[ix['QCOV1']]}\t{r[ix['QCOV2']]}\n" for r in body)
    argv = ["bolt", f"--bfile={eur / 'EUR_subset'}", f"--remove={eur / 'EUR_subset.remove'}",
            f"--exclude={eur / 'EUR_subset.exclude'}", f"--phenoFile={eur / 'EUR_subset.pheno.covars'}",
            "--phenoCol=PHENO"]
    if covariates:
        argv += [f"--covarFile={eur / 'EUR_subset.pheno.covars'}", "--covarCol=CAT_COV", "--qCovarCol=QCOV{1:2}"]
    log, dt = run(f"bolt_eur_{tag}", argv + ["--reml", "--numThreads=2"], work)
    bo = bolt_reml(log)
    flags = ["--bfile", eur / "EUR_subset", "--keep", prep / f"analysed_{tag}.keep",
             "--exclude", eur / "EUR_subset.exclude", "--pheno", eur / "EUR_subset.pheno.covars", "--mpheno", "1",
             "--standardize", "sample_sd", *CLUSTER_FLAGS]
    cfg = {"genotypes": {"plink": str(eur / "EUR_subset")}, "samples": {"keep": str(prep / f"analysed_{tag}.keep")},
           "variants": {"standardize": "sample_sd", "exclude": str(eur / "EUR_subset.exclude")},
           "phenotypes": {"file": str(eur / "EUR_subset.pheno.covars"), "columns": ["PHENO"]}, "cluster": CLUSTER}
    if covariates:
        flags += ["--covar", prep / "eur.covar", "--qcovar", prep / "eur.qcovar"]
        cfg["covariates"] = {"covar": str(prep / "eur.covar"), "qcovar": str(prep / "eur.qcovar")}
    b = list(bigmm_flags(args.bigmm, f"bigmm_eur_{tag}_keep{len(keep)}", work, flags, cfg,
                        ["--standardize"]).values())[0]
    rows = [(f"BOLT-REML ({tag})", {**bo, "time": f"{dt:.1f} s"}),
            (f"bigmm sample_sd ({b['via']}; h2)",
             {"n": b["n"], "h2": b["h2"], "h2_se": b["h2_se"], "vg": b["sigma2_g"], "vg_se": b["sigma2_g_se"],
              "ve": b["sigma2_e"], "ve_se": b["sigma2_e_se"],
              "time": f"{b['wall_s']:.1f} s ({b['stages_s']:.1f} s before report)"})]
    table(f"EUR_subset, PHENO{' + CAT_COV, QCOV1, QCOV2' if covariates else ''}: BOLT-REML "
          f"(M = {bo['M']}) vs bigmm", rows)


COMPARISONS = {
    "gemma_gk1": lambda a, w: compare_gemma(a, w, 1, "center", [1], maf_row=True),
    "gemma_gk2": lambda a, w: compare_gemma(a, w, 2, "sample_sd", [1], maf_row=True),
    "gemma_multi": lambda a, w: compare_gemma(a, w, 1, "center", [1, 6]),
    "bolt_hs1940": bolt_hs1940,
    "bolt_eur": lambda a, w: bolt_eur(a, w, False),
    "bolt_eur_cov": lambda a, w: bolt_eur(a, w, True),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hs1940", required=True, help="folder with GEMMA's mouse_hs1940.* files")
    p.add_argument("--eur", help="folder with BOLT-LMM's EUR_subset.* files")
    p.add_argument("--out", required=True, help="work folder (created; runs go into it)")
    p.add_argument("--bigmm", default=str(Path(sys.executable).with_name("bigmm")))
    p.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), help="run only these comparisons")
    p.add_argument("--reuse", action="store_true", help="do not rerun a command that finished in an earlier run")
    args = p.parse_args()
    global REUSE
    REUSE = args.reuse
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
    work = Path(args.out).resolve()
    for name in args.only or COMPARISONS:
        if name.startswith("bolt_eur") and not args.eur:
            print(f"skipping {name}: no --eur")
            continue
        print(f"\n## {name}\n", flush=True)
        COMPARISONS[name](args, work / name)


if __name__ == "__main__":
    main()
