"""Synthetic cohorts with known truth.

Genotypes are drawn variant block by variant block (so a cohort larger than
memory can be written), optionally with population structure by the
Balding–Nichols model: ancestral frequencies ``f ~ U(maf_min, maf_max)`` and
per-population frequencies ``Beta(f (1−F)/F, (1−f)(1−F)/F)``. The genetic value
is ``g = X β`` with X standardized by the sample frequencies and
``β ~ N(0, 1/p_causal)``, rescaled so that ``var(g) = h²`` and ``var(e) = 1 − h²``
in the sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .store import DEFAULT_CHUNKS, DEFAULT_LAYOUT, atomic_dir, check_layout, check_replaceable_store, atomic_file, atomic_write_text, finish_store, new_genotypes, write_store_tables


@dataclass
class SimulatedCohort:
    """The simulated phenotype side; genotypes go straight to their writer."""

    fid: list[str]
    iid: list[str]
    phenotypes: dict[str, np.ndarray]
    covariates: dict[str, np.ndarray]
    truth: dict = field(default_factory=dict)


def _genotype_blocks(n, p, rng, maf_range, missing_rate, n_pops, fst, block):
    pop = np.arange(n) % n_pops if n_pops > 1 else np.zeros(n, dtype=int)
    for v0 in range(0, p, block):
        b = min(block, p - v0)
        f = rng.uniform(maf_range[0], maf_range[1], size=b)
        if n_pops > 1 and fst > 0:
            a = f * (1 - fst) / fst
            bb = (1 - f) * (1 - fst) / fst
            fp = rng.beta(a[None, :], bb[None, :], size=(n_pops, b))
            fp = np.clip(fp, 1e-3, 1 - 1e-3)
            probs = fp[pop]
        else:
            probs = np.broadcast_to(f, (n, b))
        G = (rng.random((n, b)) < probs).astype(np.int8) + (rng.random((n, b)) < probs).astype(np.int8)
        if missing_rate > 0:
            G[rng.random((n, b)) < missing_rate] = -1
        yield v0, G, pop


def _standardize_sample(G: np.ndarray) -> np.ndarray:
    called = G >= 0
    cnt = called.sum(0)
    f = np.where(cnt > 0, np.where(called, G, 0).sum(0) / (2.0 * np.maximum(cnt, 1)), 0.0)
    sd = np.sqrt(2 * f * (1 - f))
    X = (G - 2 * f) / np.where(sd > 0, sd, 1.0)
    X[~called] = 0.0
    X[:, sd == 0] = 0.0
    return X


def simulate(n: int, p: int, *, h2=0.5, n_traits: int | None = None, seed: int = 0,
             maf=(0.05, 0.5), genotype_missing: float = 0.0, n_pops: int = 1, fst: float = 0.0,
             causal_fraction: float = 1.0, phenotype_missing: float = 0.0,
             covariate_effects=(0.5, 0.3), out_plink: str | Path | None = None,
             out_zarr: str | Path | None = None, chunks=None, block: int = 4096,
             layout: str = DEFAULT_LAYOUT) -> SimulatedCohort:
    """Simulate genotypes and phenotypes with known heritability.

    Parameters
    ----------
    n, p : int
        Samples and variants.
    h2 : float or sequence of float
        True heritability of each trait (one trait per value).
    maf : (float, float)
        Range of the (ancestral) allele frequencies.
    genotype_missing : float
        Fraction of genotype calls set missing at random.
    n_pops, fst : int, float
        Population structure (Balding–Nichols); samples are assigned to
        populations in turn. Population does not enter the phenotype except
        through the genotypes, so h² stays the genetic share.
    phenotype_missing : float
        Fraction of phenotype values set missing at random per trait.
    covariate_effects : (float, float)
        Effects of ``age`` (standardized) and ``sex`` (0/1) on each trait.
    out_plink, out_zarr : path, optional
        Where to write the genotypes: a PLINK fileset prefix and/or a cohort
        store (written through :func:`bigmm.store.create_store`-compatible
        layout, streamed).
    layout : {"2bit", "int8"}
        How ``out_zarr`` stores the genotypes (:data:`bigmm.store.LAYOUTS`).

    Examples
    --------
    >>> import tempfile, bigmm
    >>> d = tempfile.mkdtemp()
    >>> c = bigmm.simulate(50, 100, h2=[0.5, 0.2], seed=1, out_plink=f"{d}/c")
    >>> sorted(c.phenotypes), c.truth["h2"]
    (['trait1', 'trait2'], [0.5, 0.2])
    >>> bigmm.ingest_plink(f"{d}/c", f"{d}/c.zarr").n_variants
    100
    """
    h2s = np.atleast_1d(np.asarray(h2, dtype=float))
    if n_traits is not None and h2s.size == 1:
        h2s = np.repeat(h2s, n_traits)
    if np.any((h2s < 0) | (h2s > 1)):
        raise InputError("h2 must lie in [0, 1]")
    if n < 4 or p < 1:
        raise InputError("simulate needs n >= 4 and p >= 1")
    rng = np.random.default_rng(seed)
    fid = [f"F{i + 1}" for i in range(n)]
    iid = [f"I{i + 1}" for i in range(n)]
    m = h2s.size
    g = np.zeros((n, m))
    beta_rng = np.random.default_rng(seed + 1)
    writers = []
    if out_plink is not None:
        writers.append(_PlinkWriter(Path(out_plink), fid, iid, p))
    if out_zarr is not None:
        writers.append(_ZarrWriter(Path(out_zarr), fid, iid, p, chunks, check_layout(layout)))
    try:
        for v0, G, pop in _genotype_blocks(n, p, rng, maf, genotype_missing, n_pops, fst, block):
            for w in writers:
                w.write(v0, G)
            X = _standardize_sample(G)
            causal = beta_rng.random((G.shape[1], m)) < causal_fraction
            beta = beta_rng.normal(size=(G.shape[1], m)) * causal
            g += X @ beta
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    cov_rng = np.random.default_rng(seed + 2)
    age = cov_rng.normal(50, 10, size=n)
    sex = cov_rng.integers(0, 2, size=n)
    Zeff = covariate_effects[0] * (age - 50) / 10 + covariate_effects[1] * sex
    phen = {}
    for t in range(m):
        gt = g[:, t] - g[:, t].mean()
        sd = gt.std()
        gt = gt / sd * np.sqrt(h2s[t]) if sd > 0 else gt
        e = cov_rng.normal(size=n)
        e = (e - e.mean()) / e.std() * np.sqrt(1 - h2s[t])
        y = 1.0 + Zeff + gt + e
        if phenotype_missing > 0:
            y[cov_rng.random(n) < phenotype_missing] = np.nan
        phen[f"trait{t + 1}"] = y
    truth = {"n": n, "p": p, "h2": h2s.tolist(), "seed": seed, "maf": list(maf),
             "genotype_missing": genotype_missing, "n_pops": n_pops, "fst": fst,
             "causal_fraction": causal_fraction, "phenotype_missing": phenotype_missing,
             "covariate_effects": {"age_per_10y": covariate_effects[0], "sex": covariate_effects[1]},
             "intercept": 1.0}
    return SimulatedCohort(fid=fid, iid=iid, phenotypes=phen,
                           covariates={"age": age, "sex": sex.astype(float)}, truth=truth)


def write_tables(cohort: SimulatedCohort, pheno_path, covar_path, truth_path=None) -> None:
    """Write the phenotype and covariate tables (tab-separated, FID IID header, NA missing).

    Examples
    --------
    >>> import tempfile, bigmm
    >>> d = tempfile.mkdtemp()
    >>> c = bigmm.simulate(20, 30, seed=1)
    >>> bigmm.write_tables(c, f"{d}/pheno.tsv", f"{d}/covar.tsv")
    >>> bigmm.read_table(f"{d}/pheno.tsv").columns
    ['trait1']
    """
    def fmt(v):
        return "NA" if np.isnan(v) else repr(float(v))

    names = list(cohort.phenotypes)
    lines = ["FID\tIID\t" + "\t".join(names)]
    for i, (f, s) in enumerate(zip(cohort.fid, cohort.iid)):
        lines.append(f"{f}\t{s}\t" + "\t".join(fmt(cohort.phenotypes[k][i]) for k in names))
    atomic_write_text(Path(pheno_path), "\n".join(lines) + "\n")
    lines = ["FID\tIID\tage\tsex"]
    for i, (f, s) in enumerate(zip(cohort.fid, cohort.iid)):
        lines.append(f"{f}\t{s}\t{cohort.covariates['age'][i]:.3f}\t{'M' if cohort.covariates['sex'][i] else 'F'}")
    atomic_write_text(Path(covar_path), "\n".join(lines) + "\n")
    if truth_path is not None:
        atomic_write_text(Path(truth_path), json.dumps(cohort.truth, indent=2) + "\n")


class _PlinkWriter:
    """Stream variant blocks into a PLINK .bed (SNP-major), then write .bim/.fam; each file
    appears whole or not at all (:func:`bigmm.store.atomic_file`)."""

    def __init__(self, prefix: Path, fid, iid, p):
        self.prefix, self.fid, self.iid, self.p = prefix, fid, iid, p
        self._bed = atomic_file(Path(str(prefix) + ".bed"), "wb")
        self.fh = self._bed.__enter__()
        self.fh.write(b"\x6c\x1b\x01")

    def write(self, v0, G):
        # PLINK 2-bit codes, counting allele 1: 0 copies -> 11, 1 -> 10, 2 -> 00, missing -> 01
        code = np.array([1, 3, 2, 0], dtype=np.uint8)[G.T.astype(np.int64) + 1]  # variants x n
        n = code.shape[1]
        pad = (-n) % 4
        if pad:
            code = np.hstack([code, np.zeros((code.shape[0], pad), np.uint8)])
        code = code.reshape(code.shape[0], -1, 4)
        packed = code[:, :, 0] | (code[:, :, 1] << 2) | (code[:, :, 2] << 4) | (code[:, :, 3] << 6)
        self.fh.write(packed.astype(np.uint8).tobytes())

    def close(self):
        atomic_write_text(Path(str(self.prefix) + ".fam"),
                          "".join(f"{f} {i} 0 0 0 -9\n" for f, i in zip(self.fid, self.iid)))
        atomic_write_text(Path(str(self.prefix) + ".bim"),
                          "".join(f"1\trs{j + 1}\t0\t{(j + 1) * 100}\tA\tG\n" for j in range(self.p)))
        self._bed.__exit__(None, None, None)

    def abort(self):
        import sys

        self._bed.__exit__(*sys.exc_info())


class _ZarrWriter:
    """Stream variant blocks into a new cohort store (committed on close)."""

    def __init__(self, path: Path, fid, iid, p, chunks, layout: str = DEFAULT_LAYOUT):
        import zarr


        self.path, self.fid, self.iid, self.p = path, fid, iid, p
        n = len(fid)
        cs, cv = chunks or DEFAULT_CHUNKS
        check_replaceable_store(path)  # an earlier simulated store, never a folder of the user's
        self.ctx = atomic_dir(path, overwrite=True)
        self.tmp = self.ctx.__enter__()
        self.group = zarr.open_group(self.tmp, mode="w")
        self.arr = new_genotypes(self.group, (n, p), (min(cs, n), min(cv, p)), layout)
        self.buf = []
        self.buf_start = 0
        self.cv = min(cv, p)

    def write(self, v0, G):
        self.buf.append(G)
        width = sum(b.shape[1] for b in self.buf)
        if width >= self.cv:
            self._flush(final=False)

    def _flush(self, final: bool):
        if not self.buf:
            return
        block = np.hstack(self.buf)
        w = block.shape[1] if final else (block.shape[1] // self.cv) * self.cv
        self.arr[:, self.buf_start:self.buf_start + w] = block[:, :w]
        self.buf_start += w
        self.buf = [block[:, w:]] if w < block.shape[1] else []

    def close(self):

        self._flush(final=True)
        variants = {"chrom": ["1"] * self.p, "id": [f"rs{j + 1}" for j in range(self.p)],
                    "pos": (np.arange(self.p) + 1) * 100, "allele1": ["A"] * self.p,
                    "allele2": ["G"] * self.p}
        write_store_tables(self.group, self.fid, self.iid, variants)
        finish_store(self.group, len(self.fid), self.p, {"source": "bigmm.simulate"})
        self.ctx.__exit__(None, None, None)

    def abort(self):
        import sys

        self.ctx.__exit__(*sys.exc_info())
