#!/usr/bin/env python
"""Build the GEMMA reference fixture in tests/data/gemma/.

Self-contained on purpose (numpy + bed_reader only; it does NOT import bigmm),
so that the reference numbers can never be contaminated by the code under test.

What it does
------------
1. Simulates a small cohort with a fixed seed: n=300 samples, p=2000 variants,
   allele frequencies ~ U[0.05, 0.5], genotypes ~ Binomial(2, f) with no missing
   calls, a continuous covariate ``age``, a binary covariate ``sex`` (0/1) and two
   phenotypes: ``trait1`` (h2 ~ 0.5, complete) and ``trait2`` (h2 ~ 0.3, exactly
   10% missing).  Every variant has MAF >= 0.05 both in all 300 samples and in
   the 270 samples with a non-missing trait2 (failing variants are re-drawn), so
   GEMMA's default SNP filters (-maf 0.01, -miss 0.05, -r2 0.9999) keep all of
   them.
2. Writes cohort.{bed,bim,fam}, pheno.tsv, covar.tsv and the GEMMA-format inputs
   gemma_input/{trait1.txt,trait2.txt,covar.txt}.
3. For each trait and each kinship type (-gk 1 centred, -gk 2 standardised) runs
   GEMMA: kinship, then the null-model REML fit with covariates (-lmm 1), and
   parses the resulting log.txt.
4. Records everything in gemma_results.json, keeps the GEMMA kinship matrices
   (gzipped, byte-for-byte GEMMA output) and the GEMMA log files.

Usage (from the repository root):

    /work/venv/bin/python scripts/make_gemma_fixture.py

Requires GEMMA on PATH (Debian/Ubuntu: ``apt-get install -y gemma``).  The
script installs nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bed_reader import to_bed

SEED = 20240611
N = 300
P = 2000
MAF_MIN = 0.05
H2 = {"trait1": 0.5, "trait2": 0.3}
N_MISSING_TRAIT2 = 30  # 10% of 300
TRAITS = ("trait1", "trait2")
GK_TYPES = (1, 2)
KIN_SUFFIX = {1: "cXX", 2: "sXX"}

# Conventions of GEMMA 0.98.5, verified numerically (see README.md in the
# fixture directory) and against the GEMMA source (src/gemma_io.cpp PlinkKin,
# src/gemma.cpp, src/lmm.cpp LogRL_f/LogL_f/CalcPve/CalcLmmVgVeBeta).
CONVENTIONS = {
    "kinship_samples": (
        "-gk uses ALL samples in the .fam, whatever the phenotype: allele "
        "frequencies/means and SDs are over all 300 samples; the output is "
        "n_total x n_total. The phenotype (-p or .fam col 6) only selects the "
        "samples used by the SNP QC filters (-maf/-miss/-r2)."
    ),
    "kinship_gk1": "K = Xc Xc^T / p, Xc = X - column means (X = allele counts, all samples)",
    "kinship_gk2": (
        "K = Z Z^T / p, Z = (X - column means) / column SD with the population "
        "SD (divide by n, not n-1), all samples"
    ),
    "lmm_kinship_subset_and_centring": (
        "-lmm reads K, keeps rows/cols of the analysed samples (K_a) and "
        "double-centres it: K_c = P K_a P, P = I - 11^T/n_a; eigenvalues "
        "< 1e-10 are set to 0. Model: y = W b + g + e, g ~ N(0, vg K_c), "
        "e ~ N(0, ve I)."
    ),
    "vg_ve": (
        "REML estimates on the kinship scale (V = vg*K + ve*I). Because the "
        "intercept is in W, REML (vg, ve, logl) is identical for K_a and "
        "P K_a P. ve = y'Py/(n_a - c) at lambda = vg/ve."
    ),
    "logl_remle": (
        "Harville REML log-likelihood -1/2[(n-c)log 2pi + log|V| + "
        "log|W'V^-1 W| + r'V^-1 r] PLUS 1/2 log|W'W| (half_logdet_WtW)"
    ),
    "pve": (
        "pve = vg*d/(vg*d + ve), d = trace(P K_a P)/n_a = mean(diag K_a) - "
        "mean(K_a) over the analysed samples (kinship_d)"
    ),
    "pve_se": (
        "delta method from lambda: se(pve) = d/(d*lambda+1)^2 * "
        "sqrt(-1/(d^2 logl_R/d lambda^2)), logl_R profiled over ve"
    ),
    "beta_se_beta": (
        "GLS at the REML estimates with V = vg*P K_a P + ve*I (the "
        "double-centred kinship!); se = sqrt(diag((W'V^-1 W)^-1)). For "
        "trait2 (subset, K_a not centred) the intercept differs by ~2e-4 to "
        "7e-4 relative from GLS with the uncentred K_a; age/sex effects agree."
    ),
    "logl_mle": (
        "Profiled ML log-likelihood with P K_a P, maximised only over "
        "lambda in [1e-5, 1e5]. With a centred kinship plus an intercept the "
        "ML likelihood is unbounded as ve -> 0, so GEMMA often returns the "
        "value at the lambda = 1e5 boundary (trait1 gk1/gk2, trait2 gk2 "
        "here); only trait2 gk1 is an interior maximum. Do not test against it."
    ),
    "printed_precision": "log.txt values: 6 significant digits; kinship files: 10 significant digits",
}

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "gemma"


# --------------------------------------------------------------------------
# simulation
# --------------------------------------------------------------------------
def _maf(g: np.ndarray) -> np.ndarray:
    """Minor allele frequency of each column of an (n, p) 0/1/2 matrix."""
    f = g.mean(axis=0) / 2.0
    return np.minimum(f, 1.0 - f)


def simulate(seed: int = SEED) -> dict:
    rng = np.random.default_rng(seed)

    # which trait2 values will be missing (decided first so the MAF check on
    # the observed subset can be enforced while drawing genotypes)
    miss2 = np.zeros(N, dtype=bool)
    miss2[rng.choice(N, size=N_MISSING_TRAIT2, replace=False)] = True
    obs2 = ~miss2

    # genotypes: dosage of allele_1 ("A"), whose population frequency is f
    freq = rng.uniform(0.05, 0.5, size=P)
    geno = rng.binomial(2, freq, size=(N, P)).astype(np.int8)
    n_redraw = 0
    for _ in range(1000):
        bad = (_maf(geno) < MAF_MIN) | (_maf(geno[obs2]) < MAF_MIN)
        if not bad.any():
            break
        k = int(bad.sum())
        n_redraw += k
        freq[bad] = rng.uniform(0.05, 0.5, size=k)
        geno[:, bad] = rng.binomial(2, freq[bad], size=(N, k)).astype(np.int8)
    else:  # pragma: no cover
        raise RuntimeError("could not draw variants passing the MAF check")

    # covariates, rounded so that the text files carry the exact values
    age = np.round(rng.normal(50.0, 10.0, size=N), 1)
    sex = rng.integers(0, 2, size=N).astype(np.int64)

    # standardised genotypes (sample frequencies)
    gf = geno.astype(np.float64)
    mu = gf.mean(axis=0)
    sd = gf.std(axis=0)
    z = (gf - mu) / sd

    pheno = {}
    cov_effects = {"trait1": (10.0, 0.03, 0.5), "trait2": (-2.0, -0.02, 0.8)}
    for trait in TRAITS:
        h2 = H2[trait]
        beta = rng.normal(0.0, 1.0, size=P)
        g = z @ beta
        g = (g - g.mean()) / g.std() * np.sqrt(h2)
        e = rng.normal(0.0, np.sqrt(1.0 - h2), size=N)
        b0, b_age, b_sex = cov_effects[trait]
        y = b0 + b_age * (age - 50.0) + b_sex * sex + g + e
        pheno[trait] = np.round(y, 6)
    pheno["trait2"] = np.where(miss2, np.nan, pheno["trait2"])

    return {
        "geno": geno,
        "freq": freq,
        "age": age,
        "sex": sex,
        "pheno": pheno,
        "n_redraw": n_redraw,
    }


# --------------------------------------------------------------------------
# writing inputs
# --------------------------------------------------------------------------
def fmt_num(x: float) -> str:
    """Shortest round-trip text of a float, NA for NaN."""
    if np.isnan(x):
        return "NA"
    return repr(float(x))


def write_inputs(sim: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    fid = [f"F{i + 1}" for i in range(N)]
    iid = [f"I{i + 1}" for i in range(N)]
    props = {
        "fid": fid,
        "iid": iid,
        "father": ["0"] * N,
        "mother": ["0"] * N,
        "sex": [0] * N,  # covariate sex lives in covar.tsv
        "pheno": ["-9"] * N,  # phenotypes live in pheno.tsv
        "chromosome": ["1"] * P,
        "sid": [f"rs{j + 1}" for j in range(P)],
        "cm_position": [0.0] * P,
        "bp_position": [1000 * (j + 1) for j in range(P)],
        "allele_1": ["A"] * P,
        "allele_2": ["G"] * P,
    }
    # val = count of allele_1 ("A") per sample
    to_bed(out / "cohort.bed", sim["geno"], properties=props, count_A1=True)

    with open(out / "pheno.tsv", "w") as fh:
        fh.write("FID\tIID\ttrait1\ttrait2\n")
        for i in range(N):
            fh.write(
                f"{fid[i]}\t{iid[i]}\t{fmt_num(sim['pheno']['trait1'][i])}"
                f"\t{fmt_num(sim['pheno']['trait2'][i])}\n"
            )
    with open(out / "covar.tsv", "w") as fh:
        fh.write("FID\tIID\tage\tsex\n")
        for i in range(N):
            fh.write(f"{fid[i]}\t{iid[i]}\t{fmt_num(sim['age'][i])}\t{int(sim['sex'][i])}\n")

    # GEMMA (BIMBAM-style) inputs: one row per .fam line, no header, NA missing.
    gin = out / "gemma_input"
    gin.mkdir(exist_ok=True)
    for trait in TRAITS:
        with open(gin / f"{trait}.txt", "w") as fh:
            for v in sim["pheno"][trait]:
                fh.write(fmt_num(v) + "\n")
    with open(gin / "covar.txt", "w") as fh:
        # GEMMA needs the intercept column explicitly
        for i in range(N):
            fh.write(f"1 {fmt_num(sim['age'][i])} {int(sim['sex'][i])}\n")
    return {"fid": fid, "iid": iid}


# --------------------------------------------------------------------------
# GEMMA
# --------------------------------------------------------------------------
def gemma_version(gemma: str) -> str:
    r = subprocess.run([gemma, "-h"], capture_output=True, text=True)
    text = r.stdout + r.stderr
    m = re.search(r"GEMMA\s+(\S+)\s+\(([^)]*)\)", text)
    return f"{m.group(1)} ({m.group(2)})" if m else text.splitlines()[0].strip()


def run(cmd: list[str], cwd: Path, tmp: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise RuntimeError(f"GEMMA failed ({r.returncode}): {' '.join(cmd)}")
    # record with the temporary output directory replaced by a placeholder
    return " ".join(cmd).replace(str(tmp), "$GEMMA_OUT")


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"


def parse_log(path: Path) -> dict:
    """All '## key = value' lines of a GEMMA log.txt as {key: raw string}."""
    raw = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^##\s*(.+?)\s*=\s*(.*?)\s*$", line)
        if m:
            raw[m.group(1)] = m.group(2)
    return raw


def floats(s: str) -> list[float]:
    return [float(t) for t in re.findall(_FLOAT, s)]


def sig_digits(s: str) -> int:
    """Number of significant digits of a printed number."""
    mant = s.strip().lstrip("+-").split("e")[0].split("E")[0]
    digits = mant.replace(".", "").lstrip("0")
    return len(digits)


def half_logdet_wtw(w: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(w.T @ w)
    assert sign > 0
    return 0.5 * float(logdet)


def kinship_d(kin_path: Path, keep: np.ndarray) -> float:
    """d = mean(diag K_a) - mean(K_a) = trace(P K_a P)/n_a over analysed samples.

    This is the factor in GEMMA's pve = vg*d / (vg*d + ve)."""
    k = np.loadtxt(kin_path)[np.ix_(keep, keep)]
    return float(np.diag(k).mean() - k.mean())


def gzip_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        with gzip.GzipFile(filename="", mode="wb", fileobj=fo, mtime=0, compresslevel=9) as gz:
            shutil.copyfileobj(fi, gz)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture directory")
    ap.add_argument("--gemma", default="gemma", help="GEMMA executable (default: gemma on PATH)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep GEMMA's temporary output")
    args = ap.parse_args(argv)

    gemma = shutil.which(args.gemma)
    if gemma is None:
        print("gemma not found: apt-get install -y gemma", file=sys.stderr)
        return 1

    out: Path = args.out.resolve()
    sim = simulate()
    ids = write_inputs(sim, out)
    version = gemma_version(gemma)

    (out / "logs").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gemma_fixture_"))
    commands: list[str] = []
    fits: list[dict] = []
    kin_files: dict[int, str] = {}
    kin_bytes: dict[int, bytes] = {}

    w_full = np.column_stack([np.ones(N), sim["age"], sim["sex"].astype(float)])
    try:
        for trait in TRAITS:
            y = sim["pheno"][trait]
            keep = ~np.isnan(y)
            for gk in GK_TYPES:
                tag = f"{trait}_gk{gk}"
                # 1) kinship.  GEMMA's -gk needs a phenotype (it aborts with 0
                #    analysed individuals otherwise); the phenotype only decides
                #    which samples enter the SNP QC filters - the matrix itself
                #    is always computed over ALL samples of the .fam.
                cmd = [
                    "gemma", "-bfile", "cohort", "-p", f"gemma_input/{trait}.txt",
                    "-gk", str(gk), "-outdir", str(tmp), "-o", f"{tag}_kin",
                ]
                commands.append(run([gemma] + cmd[1:], out, tmp).replace(gemma, "gemma", 1))
                kin_path = tmp / f"{tag}_kin.{KIN_SUFFIX[gk]}.txt"
                kin_log = parse_log(tmp / f"{tag}_kin.log.txt")

                # 2) null-model REML fit with covariates (intercept, age, sex)
                cmd = [
                    "gemma", "-bfile", "cohort", "-p", f"gemma_input/{trait}.txt",
                    "-c", "gemma_input/covar.txt", "-k", str(kin_path),
                    "-lmm", "1", "-outdir", str(tmp), "-o", tag,
                ]
                commands.append(run([gemma] + cmd[1:], out, tmp).replace(gemma, "gemma", 1))
                log_path = tmp / f"{tag}.log.txt"
                shutil.copyfile(log_path, out / "logs" / f"{tag}.log.txt")
                lg = parse_log(log_path)

                # kinship fixture: identical for both traits (all SNPs pass QC,
                # all samples used) -> store one file per -gk, verify identity
                kb = kin_path.read_bytes()
                if gk not in kin_bytes:
                    kin_bytes[gk] = kb
                    name = f"kinship_gk{gk}.{KIN_SUFFIX[gk]}.txt.gz"
                    gzip_copy(kin_path, out / name)
                    kin_files[gk] = name
                elif kb != kin_bytes[gk]:
                    raise RuntimeError(f"kinship for {tag} differs from the first trait's")

                beta = floats(lg.get("beta estimate in the null model", ""))
                se_beta = floats(lg.get("se(beta)", ""))
                vg = float(lg["vg estimate in the null model"])
                ve = float(lg["ve estimate in the null model"])
                fits.append({
                    "trait": trait,
                    "gk": gk,
                    "kinship_file": kin_files[gk],
                    "log_file": f"logs/{tag}.log.txt",
                    "n_total": int(lg["number of total individuals"]),
                    "n_analyzed": int(lg["number of analyzed individuals"]),
                    "n_covariates": int(lg["number of covariates"]),
                    "n_snps_total": int(lg["number of total SNPs/var"]),
                    "n_snps": int(lg["number of analyzed SNPs/var"]),
                    "n_snps_kinship": int(kin_log["number of analyzed SNPs/var"]),
                    "excluded_iids": [ids["iid"][i] for i in np.flatnonzero(~keep)],
                    "vg": vg,
                    "ve": ve,
                    "pve": float(lg["pve estimate in the null model"]),
                    "pve_se": float(lg["se(pve) in the null model"]),
                    "beta": beta,
                    "se_beta": se_beta,
                    "beta_names": ["intercept", "age", "sex"],
                    "logl_remle": float(lg["REMLE log-likelihood in the null model"]),
                    "logl_mle": float(lg["MLE log-likelihood in the null model"]),
                    "half_logdet_WtW": half_logdet_wtw(w_full[keep]),
                    "kinship_d": kinship_d(kin_path, keep),
                    "printed": {k: lg[k] for k in (
                        "vg estimate in the null model", "ve estimate in the null model",
                        "pve estimate in the null model", "se(pve) in the null model",
                        "REMLE log-likelihood in the null model",
                        "MLE log-likelihood in the null model",
                        "beta estimate in the null model", "se(beta)")},
                })
                # sanity: everything kept
                assert fits[-1]["n_snps"] == P and fits[-1]["n_snps_kinship"] == P, tag
                assert fits[-1]["n_analyzed"] == int(keep.sum()), tag
    finally:
        if args.keep_tmp:
            print(f"GEMMA output kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    digits = max(sig_digits(t) for f in fits for v in f["printed"].values()
                 for t in re.findall(_FLOAT, v))
    result = {
        "gemma_version": version,
        "seed": SEED,
        "n_samples": N,
        "n_variants": P,
        "n_redrawn_variants": sim["n_redraw"],
        "files": {
            "plink": "cohort.bed/.bim/.fam (genotype = count of allele_1 'A'; .fam pheno = -9, sex = 0)",
            "pheno": "pheno.tsv",
            "covar": "covar.tsv",
            "gemma_inputs": {
                "trait1": "gemma_input/trait1.txt",
                "trait2": "gemma_input/trait2.txt",
                "covar": "gemma_input/covar.txt (columns: 1, age, sex)",
            },
            "kinship": {f"gk{gk}": kin_files[gk] for gk in GK_TYPES},
        },
        "command_lines": commands,
        "command_cwd": "tests/data/gemma (the fixture directory); $GEMMA_OUT = a temporary output directory",
        "printed_significant_digits": digits,
        "conventions": CONVENTIONS,
        "fits": fits,
        "notes": (
            "All numbers in 'fits' are parsed from GEMMA's log.txt (printed "
            "with 6 significant digits, trailing zeros dropped), except "
            "half_logdet_WtW and kinship_d, computed by this script with "
            "numpy. Kinship files are GEMMA's own output (10 significant "
            "digits), gzipped; they are identical for trait1 and trait2 "
            "because GEMMA -gk uses all .fam samples. logl_mle is NOT a "
            "usable reference (see conventions.logl_mle). Numerical "
            "verification of every convention: README.md."
        ),
    }
    with open(out / "gemma_results.json", "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote fixture to {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
