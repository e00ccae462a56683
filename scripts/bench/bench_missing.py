#!/usr/bin/env python
"""Benchmark: the two exact treatments of missing phenotype values, and the choice of ``auto``.

For each n, spectrum (exact, or the top k eigenpairs of it: a reduced spectrum), fraction of
missing values and number of missingness patterns P, a GRM of n samples (random genotypes,
p = 2n) and P phenotypes, each with its own random set of missing samples (so P patterns, one
phenotype each), c = 3 fixed effects. Then, timed on one BLAS thread (the cost model's constants
are per thread):

    indicator  ``rotate(missing="indicator")`` + ``fit_rotated``  (one indicator column per
               missing value; REML work grows with (c + n_miss)² per evaluation)
    subset     ``rotate(missing="subset")`` + ``fit_rotated``     (the spectrum of the observed
               samples: an eigendecomposition of the n_obs block per pattern when exact)

and the method ``auto`` picks (``bigmm.reml._choose_missing_method``). A row is marked ``WRONG``
when auto picks the slower one by more than 20% (and 0.05 s). Prints a Markdown table.

Usage::

    python scripts/bench/bench_missing.py                        # the default grid
    python scripts/bench/bench_missing.py --n 2000 --frac 0.1 --patterns 1 4
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bigmm.reml import _choose_missing_method, fit_rotated, rotate  # noqa: E402
from bigmm.spectrum import exact_spectrum  # noqa: E402


def grm(n: int, rng) -> np.ndarray:
    p = 2 * n
    f = rng.uniform(0.05, 0.5, p)
    G = rng.binomial(2, f, size=(n, p)).astype(float)
    X = (G - 2 * f) / np.sqrt(2 * f * (1 - f))
    return X @ X.T / p


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--k", type=int, nargs="+", default=[0, 200], help="0: exact spectrum; else top k")
    ap.add_argument("--frac", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    ap.add_argument("--patterns", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    print("| n | spectrum | missing | patterns | n_miss | indicator s (rotate + fit) | "
          "subset s (rotate + fit) | auto picks | |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for n in args.n:
        full = exact_spectrum(grm(n, rng))
        for k in args.k:
            if k >= n:
                continue
            spec = full if k == 0 else full.top(k)
            for frac in args.frac:
                for P in args.patterns:
                    c = 3
                    Z = np.column_stack([np.ones(n), rng.standard_normal((n, c - 1))])
                    Y = rng.standard_normal((n, P))
                    n_miss = int(round(frac * n))
                    for j in range(P):
                        Y[rng.choice(n, n_miss, replace=False), j] = np.nan
                    t = {}
                    for method in ("indicator", "subset"):
                        rd, t_rot = timed(lambda: rotate(spec, Y, Z, missing=method))
                        _, t_fit = timed(lambda: fit_rotated(rd))
                        t[method] = (t_rot, t_fit)
                    pick = _choose_missing_method(spec, n - n_miss, c, n_miss, "auto")
                    pick = "indicator" if pick == "indicator" else "subset"
                    tot = {m: sum(v) for m, v in t.items()}
                    best = min(tot, key=tot.get)
                    wrong = pick != best and tot[pick] > 1.2 * tot[best] and tot[pick] - tot[best] > 0.05
                    row = (n, "exact" if k == 0 else f"top {k}", frac, P, n_miss,
                           f"{tot['indicator']:.2f} ({t['indicator'][0]:.2f} + {t['indicator'][1]:.2f})",
                           f"{tot['subset']:.2f} ({t['subset'][0]:.2f} + {t['subset'][1]:.2f})",
                           pick, "WRONG" if wrong else "")
                    rows.append(row)
                    print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()
