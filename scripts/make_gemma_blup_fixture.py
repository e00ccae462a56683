#!/usr/bin/env python
"""Build the GEMMA BLUP reference fixture in tests/data/gemma_blup/.

Self-contained on purpose (numpy + bed_reader only; it does NOT import bigmm),
so that the reference numbers can never be contaminated by the code under test.

What it does
------------
1. Simulates a small cohort with a fixed seed: n=300 samples, p=2000 variants,
   allele frequencies ~ U[0.05, 0.5], genotypes ~ Binomial(2, f) with no missing
   calls, and one phenotype ``trait`` (h2 ~ 0.5, intercept only, exactly 30 = 10%
   missing). Every variant has MAF >= 0.05 both in all 300 samples and in the
   270 phenotyped samples (failing variants are redrawn), so GEMMA's default SNP
   filters keep all of them.
2. Writes cohort.{bed,bim,fam} (the .fam carries the trait in column 6, -9 =
   missing: GEMMA's -predict with -epm takes the training/target split from the
   .fam and ignores -p), pheno.tsv, and GEMMA's -p / -c inputs.
3. Runs GEMMA 0.98.5 in a temporary directory, twice over: once with lambda =
   vg/ve estimated by GEMMA's REML ("reml"), once with lambda pinned to exactly 1
   by ``-lmin 1 -lmax 1`` ("fixed", h2 = 0.5 on the kinship scale), which allows a
   comparison free of optimiser error. Per setting:
     * ``-bslmm 2`` (ridge regression / GBLUP, no MCMC) with GEMMA's own
       kinship (centred genotypes of the analysed samples = -gk 1 centred)
       -> ``<set>_gk1.bv.txt`` (genetic values), ``.param.txt`` (alpha per SNP),
       ``.log.txt``;
     * ``-bslmm 2 -k <-gk 2 kinship>`` -> ``<set>_gk2.*``;
     * ``-predict 1 -epm <set>_gk1.param.txt -emu <set>_gk1.log.txt``
       -> ``<set>_pred_alpha.prdt.txt`` (missing samples from SNP effects);
     * the same with ``-ebv <set>_gk1.bv.txt -k <-gk 1 kinship>``
       -> ``<set>_pred_bv.prdt.txt`` (missing samples from the genetic values
       through the kinship);
     * ``-predict 1 -k <-gk 1 kinship> -c intercept`` without -epm (GEMMA's
       "prediction with kinship matrix only", a_mode 43)
       -> ``<set>_pred_kin.prdt.txt``.
4. Stores GEMMA's raw outputs (param files gzipped) and gemma_blup.json with
   the parsed values and the exact command lines.

Usage (from the repository root):

    /work/venv/bin/python scripts/make_gemma_blup_fixture.py

Requires GEMMA on PATH (Debian/Ubuntu: ``apt-get install -y gemma``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bed_reader import to_bed

SEED = 20240702
N = 300
P = 2000
MAF_MIN = 0.05
H2 = 0.5
INTERCEPT = 1.0
N_MISSING = 30  # 10% of 300
LAMBDA_FIXED = 1.0

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "gemma_blup"

# What GEMMA's numbers are, in bigmm's terms (verified numerically with a dense
# numpy computation and read from the GEMMA v0.98.5 source; see README.md).
CONVENTIONS = {
    "model": (
        "y = mu 1 + g + e over the n_o = 270 phenotyped samples, g ~ N(0, vg K), "
        "e ~ N(0, ve I); lambda = vg/ve, h2 = lambda/(1+lambda); K_a = rows/cols "
        "of the phenotyped samples of the all-sample kinship (-gk 1: centred "
        "allele counts, -gk 2: standardised with the population SD; means and SDs "
        "over all 300 samples); P = I - 11'/n_o; K_c = P K_a P."
    ),
    "w": (
        "w = V^-1 (y - 1 mu_hat) with V = vg K_a + ve I and mu_hat the GLS mean "
        "(bigmm's Blup.weights). It is the REML projection P_V y and is the same "
        "for K_a and K_c: w = (vg K_c + ve I)^-1 (y - ybar)."
    ),
    "lambda": (
        "-bslmm 2 estimates lambda by REML on K_c (the same lambda as -lmm: "
        "intercept-only REML is invariant to K_a vs K_c). It is not printed; "
        "pve = lambda d/(lambda d + 1), d = trace(K_c)/n_o, is (6 digits)."
    ),
    "bv": (
        "bv.txt = vg K_c w = P g_hat_o: bigmm's genetic values of the phenotyped "
        "samples minus their mean (mean_o(g_hat) = ybar - mu_hat). Samples without "
        "phenotype are NA. 7 significant digits."
    ),
    "alpha": (
        "param.txt alpha = (vg/p) Xc' w with Xc the allele counts of allele_1 "
        "(the .bim's 5th column) centred over the phenotyped samples (the "
        "centring drops out: 1'w = 0), NOT standardised, whatever -k says. "
        "-gk 1 / GEMMA's own kinship: alpha = bigmm's snp_effects with 'center' "
        "(per allele). -bslmm 2 -k sXX (-gk 2): alpha = sd_j * beta_std_j, where "
        "beta_std = bigmm's snp_effects with 'sample_sd' (so alpha is neither "
        "per-allele nor per-SD there). beta and gamma columns are 0. 7 digits."
    ),
    "estimated_mean": "log 'estimated mean' = ybar, the plain mean of the phenotyped y (6 digits)",
    "pred_alpha": (
        "-predict 1 -epm param -emu log: y_m = emu + sum_j (x_mj - xbar_o,j) alpha_j "
        "= emu + (mu_hat - ybar) + g_hat_m, where emu = ybar as printed in the log "
        "(6 digits): bigmm's BLUP phenotype mu_hat + g_hat_m (GLS mean plus genetic "
        "value) up to the printed mean, for -gk 1. 6 significant digits."
    ),
    "pred_bv": (
        "-predict 1 -epm param -emu log -ebv bv -k cXX: y_m = emu + K'_mo K_c^+ bv, "
        "K' = GEMMA's CenterMatrix(K, w = observed indicator), whose mo block is "
        "K_mo minus its row means over the observed columns. As bv = vg K_c w and "
        "1'w = 0 this is emu + vg K_mo w = emu + g_hat_m: the shift mu_hat - ybar "
        "of the alpha route is missing (the two GEMMA routes differ by 4.7e-4 here). "
        "The beta*gamma columns read by default (-en 2 0 6 7) are 0. 6 significant digits."
    ),
    "pred_kin": (
        "-predict 1 -k cXX -c intercept (no -epm, a_mode 43): REML on K_c for "
        "lambda and the GLS mean (= ybar), then y_m = ybar + vg K_mo "
        "(vg K_a + ve I)^-1 (y_o - ybar 1) with the all-sample kinship (GEMMA "
        "re-centres it over all 300 samples, a no-op for -gk output): "
        "= ybar + g_hat_m + (mu_hat - ybar) vg K_mo V^-1 1. Observed rows echo y. "
        "6 significant digits."
    ),
}


# --------------------------------------------------------------------------
# simulation
# --------------------------------------------------------------------------
def _maf(g: np.ndarray) -> np.ndarray:
    f = g.mean(axis=0) / 2.0
    return np.minimum(f, 1.0 - f)


def simulate(seed: int = SEED) -> dict:
    rng = np.random.default_rng(seed)
    miss = np.zeros(N, dtype=bool)
    miss[rng.choice(N, size=N_MISSING, replace=False)] = True
    obs = ~miss

    # genotypes: count of allele_1 ("A"), whose population frequency is f
    freq = rng.uniform(0.05, 0.5, size=P)
    geno = rng.binomial(2, freq, size=(N, P)).astype(np.int8)
    n_redraw = 0
    for _ in range(1000):
        bad = (_maf(geno) < MAF_MIN) | (_maf(geno[obs]) < MAF_MIN)
        if not bad.any():
            break
        k = int(bad.sum())
        n_redraw += k
        freq[bad] = rng.uniform(0.05, 0.5, size=k)
        geno[:, bad] = rng.binomial(2, freq[bad], size=(N, k)).astype(np.int8)
    else:  # pragma: no cover
        raise RuntimeError("could not draw variants passing the MAF check")

    gf = geno.astype(np.float64)
    z = (gf - gf.mean(axis=0)) / gf.std(axis=0)
    beta = rng.normal(0.0, 1.0, size=P)
    g = z @ beta
    g = (g - g.mean()) / g.std() * np.sqrt(H2)
    e = rng.normal(0.0, np.sqrt(1.0 - H2), size=N)
    y = np.round(INTERCEPT + g + e, 6)
    y[miss] = np.nan
    return {"geno": geno, "y": y, "n_redraw": n_redraw}


# --------------------------------------------------------------------------
# writing inputs
# --------------------------------------------------------------------------
def fmt_num(x: float) -> str:
    """Shortest round-trip text of a float, NA for NaN."""
    return "NA" if np.isnan(x) else repr(float(x))


def write_inputs(sim: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    fid = [f"F{i + 1}" for i in range(N)]
    iid = [f"I{i + 1}" for i in range(N)]
    y = sim["y"]
    props = {
        "fid": fid, "iid": iid, "father": ["0"] * N, "mother": ["0"] * N, "sex": [0] * N,
        # GEMMA -predict with -epm reads the training/target split from here (not from -p)
        "pheno": ["-9" if np.isnan(v) else fmt_num(v) for v in y],
        "chromosome": ["1"] * P, "sid": [f"rs{j + 1}" for j in range(P)], "cm_position": [0.0] * P,
        "bp_position": [1000 * (j + 1) for j in range(P)], "allele_1": ["A"] * P, "allele_2": ["G"] * P,
    }
    to_bed(out / "cohort.bed", sim["geno"], properties=props, count_A1=True)
    with open(out / "pheno.tsv", "w") as fh:
        fh.write("FID\tIID\ttrait\n")
        for i in range(N):
            fh.write(f"{fid[i]}\t{iid[i]}\t{fmt_num(y[i])}\n")
    gin = out / "gemma_input"
    gin.mkdir(exist_ok=True)
    (gin / "trait.txt").write_text("".join(fmt_num(v) + "\n" for v in y))
    (gin / "intercept.txt").write_text("1\n" * N)
    return {"fid": fid, "iid": iid}


# --------------------------------------------------------------------------
# GEMMA
# --------------------------------------------------------------------------
def gemma_version(gemma: str) -> str:
    r = subprocess.run([gemma, "-h"], capture_output=True, text=True)
    m = re.search(r"GEMMA\s+(\S+)\s+\(([^)]*)\)", r.stdout + r.stderr)
    return f"{m.group(1)} ({m.group(2)})" if m else (r.stdout + r.stderr).splitlines()[0].strip()


def run(gemma: str, args: list[str], cwd: Path, tmp: Path, commands: list[str]) -> str:
    r = subprocess.run([gemma] + args, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0 or "error" in (r.stdout + r.stderr).lower():
        sys.stderr.write(r.stdout + r.stderr)
        raise RuntimeError(f"GEMMA failed ({r.returncode}): gemma {' '.join(args)}")
    commands.append(" ".join(["gemma"] + args).replace(str(tmp), "$GEMMA_OUT"))
    return r.stdout


def parse_log(path: Path) -> dict:
    """All '## key = value' lines of a GEMMA log.txt as {key: raw string}."""
    raw = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^##\s*(.+?)\s*=\s*(.*?)\s*$", line)
        if m:
            raw[m.group(1)] = m.group(2)
    return raw


def read_column(path: Path) -> list:
    """One value per line (first field), None for NA."""
    out = []
    for line in path.read_text().splitlines():
        t = line.split()[0]
        out.append(None if t == "NA" else float(t))
    return out


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
    raw = out / "gemma_output"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="gemma_blup_fixture_"))
    commands: list[str] = []
    y = sim["y"]
    obs = ~np.isnan(y)
    p_in = ["-bfile", "cohort", "-p", "gemma_input/trait.txt"]
    o = ["-outdir", str(tmp), "-o"]
    result_sets = {}
    try:
        # kinship over all samples (inputs of -bslmm -k / -predict -k; not kept: see README)
        run(gemma, p_in + ["-gk", "1"] + o + ["kin"], out, tmp, commands)
        run(gemma, p_in + ["-gk", "2"] + o + ["kin"], out, tmp, commands)
        cxx, sxx = str(tmp / "kin.cXX.txt"), str(tmp / "kin.sXX.txt")
        for setting, lam_args in (("reml", []), ("fixed", ["-lmin", "1", "-lmax", "1"])):
            s = f"{setting}_"
            run(gemma, p_in + ["-bslmm", "2"] + lam_args + o + [s + "gk1"], out, tmp, commands)
            run(gemma, p_in + ["-k", sxx, "-bslmm", "2"] + lam_args + o + [s + "gk2"], out, tmp, commands)
            pm = ["-epm", str(tmp / f"{s}gk1.param.txt"), "-emu", str(tmp / f"{s}gk1.log.txt")]
            run(gemma, ["-bfile", "cohort"] + pm + ["-predict", "1"] + o + [s + "pred_alpha"],
                out, tmp, commands)
            run(gemma, ["-bfile", "cohort"] + pm + ["-ebv", str(tmp / f"{s}gk1.bv.txt"), "-k", cxx,
                                                   "-predict", "1"] + o + [s + "pred_bv"], out, tmp, commands)
            stdout = run(gemma, p_in + ["-c", "gemma_input/intercept.txt", "-k", cxx, "-predict", "1"]
                         + lam_args + o + [s + "pred_kin"], out, tmp, commands)

            res = {"lambda_args": " ".join(lam_args)}
            for kin in ("gk1", "gk2"):
                tag = s + kin
                lg = parse_log(tmp / f"{tag}.log.txt")
                alpha, rs = [], []
                with open(tmp / f"{tag}.param.txt") as fh:
                    header = fh.readline().split()
                    assert header == ["chr", "rs", "ps", "n_miss", "alpha", "beta", "gamma"], header
                    for line in fh:
                        t = line.split()
                        rs.append(t[1])
                        alpha.append(float(t[4]))
                        assert float(t[5]) == 0.0 and float(t[6]) == 0.0
                assert rs == [f"rs{j + 1}" for j in range(P)]
                bv = read_column(tmp / f"{tag}.bv.txt")
                assert [v is not None for v in bv] == obs.tolist()
                res[kin] = {
                    "kinship": "GEMMA's own (centred genotypes of the analysed samples)" if kin == "gk1"
                    else "-k kin.sXX.txt (-gk 2)",
                    "n_analyzed": int(lg["number of analyzed individuals"]),
                    "n_snps": int(lg["number of analyzed SNPs/var"]),
                    "pve": float(lg["pve estimate in the null model"]),
                    "pve_se": float(lg["se(pve) in the null model"]),
                    "logl_remle": float(lg["REMLE log-likelihood in the null model"]),
                    "estimated_mean": float(lg["estimated mean"]),
                    "printed": {k: lg[k] for k in ("pve estimate in the null model",
                                                   "se(pve) in the null model", "estimated mean")},
                    "files": {"bv": f"gemma_output/{tag}.bv.txt",
                              "param": f"gemma_output/{tag}.param.txt.gz",
                              "log": f"gemma_output/{tag}.log.txt"},
                    "bv": bv,
                    "alpha": alpha,
                }
                assert res[kin]["n_analyzed"] == int(obs.sum()) and res[kin]["n_snps"] == P, tag
                shutil.copyfile(tmp / f"{tag}.bv.txt", raw / f"{tag}.bv.txt")
                shutil.copyfile(tmp / f"{tag}.log.txt", raw / f"{tag}.log.txt")
                gzip_copy(tmp / f"{tag}.param.txt", raw / f"{tag}.param.txt.gz")
            for route in ("alpha", "bv", "kin"):
                tag = f"{s}pred_{route}"
                pr = read_column(tmp / f"{tag}.prdt.txt")
                shutil.copyfile(tmp / f"{tag}.prdt.txt", raw / f"{tag}.prdt.txt")
                shutil.copyfile(tmp / f"{tag}.log.txt", raw / f"{tag}.log.txt")
                if route == "kin":  # observed rows echo y (6 digits), missing rows are predicted
                    assert all(abs(a - b) <= 5.01e-6 * abs(b) for a, b, m in zip(pr, y, obs) if m)
                    pred = [v if not m else None for v, m in zip(pr, obs)]
                else:  # training rows are NA
                    assert [v is None for v in pr] == obs.tolist()
                    pred = pr
                res[f"pred_{route}"] = {"file": f"gemma_output/{tag}.prdt.txt", "prediction": pred}
            # vg, ve of the -predict kinship-only run go to stdout only
            vg = re.search(r"REMLE estimate for vg in the null model = (\S+)", stdout).group(1)
            ve = re.search(r"REMLE estimate for ve in the null model = (\S+)", stdout).group(1)
            (raw / f"{s}pred_kin.stdout.txt").write_text(stdout)
            res["pred_kin"].update({"vg": float(vg), "ve": float(ve), "printed": {"vg": vg, "ve": ve}})
            result_sets[setting] = res
    finally:
        if args.keep_tmp:
            print(f"GEMMA output kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "gemma_version": version,
        "seed": SEED,
        "n_samples": N,
        "n_variants": P,
        "n_observed": int(obs.sum()),
        "n_redrawn_variants": sim["n_redraw"],
        "iid": ids["iid"],
        "missing_iids": [ids["iid"][i] for i in np.flatnonzero(~obs)],
        "files": {
            "plink": "cohort.bed/.bim/.fam (genotype = count of allele_1 'A'; .fam column 6 = trait, -9 missing)",
            "pheno": "pheno.tsv",
            "gemma_inputs": {"trait": "gemma_input/trait.txt", "intercept": "gemma_input/intercept.txt"},
            "raw_outputs": "gemma_output/ (param files gzipped)",
        },
        "command_lines": commands,
        "command_cwd": "tests/data/gemma_blup (the fixture directory); $GEMMA_OUT = a temporary output directory",
        "lambda_fixed": LAMBDA_FIXED,
        "conventions": CONVENTIONS,
        "results": result_sets,
        "notes": (
            "bv/alpha/pve/estimated_mean/prediction are parsed from GEMMA's output files "
            "(bv, alpha: %.6e = 7 significant digits; log and prdt: 6 significant digits). "
            "Lists run over the .fam samples (bv, prediction: null = NA) or the .bim variants (alpha)."
        ),
    }
    with open(out / "gemma_blup.json", "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote fixture to {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
