"""Make the GEMMA multivariate-LMM fixture (tests/data/gemma_mvlmm/) for tests/test_bivariate.py.

GEMMA 0.98.5 (2021-08-25) (Debian/Guix package ``gemma``) on the cohort of tests/data/gemma_vc/
(400 HS1940 mice of GEMMA's example data, 5,067 SNPs; its README.md says how it was made), with
its two phenotypes (pheno1, pheno6) and its covariates (intercept, sex):

    gemma -bfile ../gemma_vc/cohort -p ../gemma_vc/gemma_input/pheno.txt -n 1 -gk 1 -outdir $OUT -o kin
    gemma -bfile ../gemma_vc/cohort -p ../gemma_vc/gemma_input/pheno.txt -n 1 2 \\
          -c ../gemma_vc/gemma_input/covar.txt -k $OUT/kin.cXX.txt -lmm 1 -outdir $OUT -o mvlmm

(run from this directory; $OUT a temporary directory). The second command is GEMMA's
multivariate LMM (``-n 1 2``): it fits Vg and Ve (2 x 2) by REML and by ML under the null model
on the mice with both phenotypes and the covariates, then tests every SNP (those results are not
kept). This script keeps GEMMA's log (``mvlmm.log.txt``) and the numbers parsed from it in
``gemma_mvlmm_results.json``. It uses only the Python standard library (no bigmm); about one
minute (GEMMA's per-SNP tests).

    python3 tests/data/gemma_mvlmm/make.py
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VC = Path("..") / "gemma_vc"


def run(args: list[str], out: Path, commands: list[str]) -> None:
    r = subprocess.run(["gemma"] + args, cwd=HERE, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"GEMMA failed: gemma {' '.join(args)}")
    commands.append(" ".join(["gemma"] + args).replace(str(out), "$OUT"))


def matrix_after(lines: list[str], header: str, start: int = 0) -> tuple[list[list[float]], int]:
    """The 2 x 2 symmetric matrix GEMMA prints after ``header`` (lower triangle or full rows)."""
    i = next(k for k in range(start, len(lines)) if lines[k].startswith(header))
    rows = [[float(v) for v in lines[i + 1].split()], [float(v) for v in lines[i + 2].split()]]
    a, b = rows[0][0], rows[1][0]
    d = rows[1][1]
    return [[a, b], [b, d]], i + 3


def parse(log: Path) -> dict:
    text = log.read_text()
    lines = text.splitlines()
    out = {}
    for key, name in (("n_total", "number of total individuals"), ("n_analyzed", "number of analyzed individuals"),
                      ("n_covariates", "number of covariates"), ("n_phenotypes", "number of phenotypes"),
                      ("n_snps", "number of analyzed SNPs/var")):
        out[key] = int(re.search(rf"## {re.escape(name)} = (\S+)", text).group(1))
    for key, name in (("remle_logl", "REMLE log-likelihood in the null model"),
                      ("mle_logl", "MLE log-likelihood in the null model")):
        out[key] = float(re.search(rf"## {re.escape(name)} = (\S+)", text).group(1))
    pos = 0
    for key in ("reml_Vg", "reml_Vg_se", "reml_Ve", "reml_Ve_se", "ml_Vg", "ml_Vg_se", "ml_Ve", "ml_Ve_se"):
        header = {"Vg": "## REMLE estimate for Vg" if key.startswith("reml") else "## MLE estimate for Vg",
                  "Ve": "## REMLE estimate for Ve" if key.startswith("reml") else "## MLE estimate for Ve"}
        h = "## se(Vg)" if key.endswith("Vg_se") else "## se(Ve)" if key.endswith("Ve_se") else \
            header[key.split("_")[1]]
        out[key], pos = matrix_after(lines, h, pos)
    return out


def main() -> int:
    if shutil.which("gemma") is None:
        print("gemma not found: apt-get install -y gemma", file=sys.stderr)
        return 1
    version = subprocess.run(["gemma", "-h"], capture_output=True, text=True)
    m = re.search(r"GEMMA\s+(\S+)\s+\(([^)]*)\)", version.stdout + version.stderr)
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gemma_mvlmm") as tmp:
        out = Path(tmp)
        pheno, covar = str(VC / "gemma_input" / "pheno.txt"), str(VC / "gemma_input" / "covar.txt")
        run(["-bfile", str(VC / "cohort"), "-p", pheno, "-n", "1", "-gk", "1", "-outdir", str(out), "-o", "kin"],
            out, commands)
        run(["-bfile", str(VC / "cohort"), "-p", pheno, "-n", "1", "2", "-c", covar, "-k", str(out / "kin.cXX.txt"),
             "-lmm", "1", "-outdir", str(out), "-o", "mvlmm"], out, commands)
        shutil.copy(out / "mvlmm.log.txt", HERE / "mvlmm.log.txt")
        result = {"gemma_version": f"{m.group(1)} ({m.group(2)})" if m else "unknown",
                  "cohort": "tests/data/gemma_vc (400 HS1940 mice, 5,067 SNPs)",
                  "phenotypes": ["pheno1", "pheno6"], "covariates": ["intercept", "sex"],
                  "kinship": "GEMMA -gk 1 (centred genotypes, X X' / p) over all 400 mice",
                  "command_lines": commands, "command_cwd": "tests/data/gemma_mvlmm; $OUT a temporary directory",
                  "printed_significant_digits": 6,
                  **parse(HERE / "mvlmm.log.txt")}
    (HERE / "gemma_mvlmm_results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
