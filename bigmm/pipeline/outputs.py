"""Saving and loading every stage output of a run directory, in one place.

Zarr groups are written through :func:`bigmm.store.atomic_dir` with checksummed arrays; single
files through :func:`bigmm.store.atomic_file`. A reader sees the old output or the whole new
one, never a part.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import zarr

from ..errors import InputError
from ..genotypes import Standardization, VariantStats
from ..reml import RemlResult, RotatedDesign
from ..spectrum import RITZ_CONVERGED, Spectrum
from ..store import CheckedArray, atomic_dir, atomic_file, atomic_write_text, new_array, verify_chunks

log = logging.getLogger("bigmm")


def save_variants(path: Path, stats: VariantStats, std: Standardization) -> None:
    with atomic_dir(path, overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name, arr in (("n_called", stats.n_called), ("allele_sum", stats.allele_sum),
                          ("allele_sq_sum", stats.allele_sq_sum), ("center", std.center),
                          ("scale", std.scale), ("keep", std.keep.astype(np.int8))):
            new_array(g, name, shape=arr.shape, dtype=arr.dtype, data=arr)
        g.attrs.update({"n_samples": stats.n_samples, "standardize": std.standardize,
                        "dropped": std.dropped, "trace_K": std.trace_K, "n_kept": std.n_kept,
                        "filters": std.filters})


def load_variants(path: Path) -> Standardization:
    g = zarr.open_group(str(path), mode="r")
    arrays = {}
    for name in ("center", "scale", "keep"):
        verify_chunks(g[name], f"{path}/{name}")
        arrays[name] = np.asarray(CheckedArray(g[name], f"{path}/{name}")[...])
    a = dict(g.attrs)
    return Standardization(standardize=a["standardize"], center=arrays["center"], scale=arrays["scale"],
                           keep=arrays["keep"].astype(bool), dropped=a["dropped"], trace_K=a["trace_K"],
                           n_samples=a["n_samples"], filters=a["filters"])


def save_spectrum(path: Path, spec: Spectrum) -> None:
    with atomic_dir(path, overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        n = spec.n
        new_array(g, "U", shape=spec.U.shape, dtype="float64", data=spec.U,
                  chunks=(min(n, 8192), min(spec.k, 4096)))
        new_array(g, "s", shape=spec.s.shape, dtype="float64", data=spec.s)
        if spec.diag_K is not None:
            new_array(g, "diag_K", shape=(n,), dtype="float64", data=spec.diag_K)
        if spec.ritz_cross is not None:
            new_array(g, "ritz_cross", shape=(spec.k,), dtype="float64", data=spec.ritz_cross)
        g.attrs.update({"n": n, "k": spec.k, "trace_K": spec.trace_K, "method": spec.method,
                        "rank": spec.rank, "diagnostics": spec.diagnostics,
                        "tail_trace_K2": spec.tail_trace_K2,
                        "samples": "all samples of the genotype store, in store order"})


def load_spectrum(path: Path) -> Spectrum:
    g = zarr.open_group(str(path), mode="r")
    arrays = {}
    for name in ("U", "s", "diag_K", "ritz_cross"):
        if name in g:
            verify_chunks(g[name], f"{path}/{name}")
            arrays[name] = np.asarray(CheckedArray(g[name], f"{path}/{name}")[...])
    a = dict(g.attrs)
    return Spectrum(U=arrays["U"], s=arrays["s"], n=a["n"], trace_K=a["trace_K"],
                    diag_K=arrays.get("diag_K"), method=a["method"], rank=a["rank"],
                    diagnostics=a["diagnostics"], tail_trace_K2=a["tail_trace_K2"],
                    ritz_cross=arrays.get("ritz_cross"))


def write_snp_effects(out: Path, variants: dict, std: Standardization, names: list, beta: np.ndarray) -> Path:
    """SNP effects per standardized genotype and per copy of allele 1: a TSV, or Zarr when p x m is large."""
    per_allele = beta * std.scale[:, None]
    p, m = beta.shape
    freq = std.center / 2.0
    if p * m > 5_000_000:
        path = out / "snp_effects.zarr"
        with atomic_dir(path, overwrite=True) as tmp:
            g = zarr.open_group(tmp, mode="w")
            new_array(g, "beta_std", shape=beta.shape, dtype="float64", data=beta,
                      chunks=(min(p, 65536), min(m, 64)))
            new_array(g, "beta_allele", shape=beta.shape, dtype="float64", data=per_allele,
                      chunks=(min(p, 65536), min(m, 64)))
            g.attrs.update({"phenotypes": list(names), "counted_allele": "allele1 of the variant table",
                            "rows": "variants of the genotype store, in order; 0 for dropped variants"})
        return path
    header = ["chrom", "id", "pos", "allele1", "allele2", "freq_allele1", "used"]
    header += [f"beta_{n}" for n in names] + [f"beta_allele_{n}" for n in names]
    lines = ["\t".join(header)]
    for j in range(p):
        row = [str(variants["chrom"][j]), str(variants["id"][j]), str(variants["pos"][j]),
               str(variants["allele1"][j]), str(variants["allele2"][j]),
               f"{freq[j]:.6g}" if std.keep[j] else "NA", "1" if std.keep[j] else "0"]
        row += [f"{x:.8g}" for x in beta[j]] + [f"{x:.8g}" for x in per_allele[j]]
        lines.append("\t".join(row))
    path = out / "snp_effects.tsv"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_spectrum_tables(out: Path, spec: Spectrum, ids: list, n_pcs: int) -> None:
    """``eigenvalues.tsv`` (with Ritz residuals when randomized) and ``pcs.tsv`` (FID IID PC1..)."""
    res = spec.diagnostics.get("ritz_residuals")
    # converged: relative Ritz residual ‖K u − θ u‖ / θ ≤ RITZ_CONVERGED (an exact spectrum has none)
    lines = ["index\teigenvalue" + ("\tritz_residual\tconverged" if res else "")]
    for i, v in enumerate(spec.s):
        lines.append(f"{i + 1}\t{v:.10g}" + (f"\t{res[i]:.3e}\t{str(bool(res[i] <= RITZ_CONVERGED)).lower()}"
                                              if res else ""))
    atomic_write_text(out / "eigenvalues.tsv", "\n".join(lines) + "\n")
    m = min(n_pcs, spec.k)
    rows = ["FID\tIID\t" + "\t".join(f"PC{i + 1}" for i in range(m))]
    for (f, i), u in zip(ids, spec.U[:, :m]):
        rows.append(f"{f}\t{i}\t" + "\t".join(f"{x:.8g}" for x in u))
    atomic_write_text(out / "pcs.tsv", "\n".join(rows) + "\n")


class PassCheckpoint:
    """Saves what each pass of the randomized spectrum adds (``spectrum.partial/pass-<j>.zarr``).

    Each pass's state is committed atomically in its own group, written once; :meth:`load`
    returns the states of passes 1, 2, … up to the first missing or unusable one.
    """

    def __init__(self, directory: Path, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def load(self) -> list | None:
        states = []
        j = 1
        while (self.dir / f"pass-{j}.zarr").exists():
            path = self.dir / f"pass-{j}.zarr"
            try:
                g = zarr.open_group(str(path), mode="r")
                if g.attrs.get("fingerprint") != self.fingerprint or int(g.attrs["pass"]) != j:
                    break
                state = {"pass": j, "algorithm": g.attrs.get("algorithm")}
                for name in g.array_keys():
                    verify_chunks(g[name], f"{path}/{name}")
                    state[name] = np.asarray(CheckedArray(g[name], f"{path}/{name}")[...])
            except (InputError, KeyError, ValueError) as exc:
                log.warning("randomized spectrum: ignoring an unusable checkpoint (%s)", exc)
                break
            states.append(state)
            j += 1
        return states or None

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        j = int(state["pass"])
        with atomic_dir(self.dir / f"pass-{j}.zarr", overwrite=True) as tmp:
            g = zarr.open_group(tmp, mode="w")
            for name, a in state.items():
                if isinstance(a, np.ndarray):
                    new_array(g, name, shape=a.shape, dtype="float64", data=a,
                              chunks=(min(max(a.shape[0], 1), 8192),) + tuple(max(1, x) for x in a.shape[1:]))
            g.attrs.update({"pass": j, "algorithm": state.get("algorithm"), "fingerprint": self.fingerprint})
        log.info("randomized spectrum: checkpoint after pass %d", j)


def save_rotated(path: Path, design: RotatedDesign) -> None:
    """The rotated design as one .npz file (zip members carry CRC-32 checks)."""
    arrays, meta = design.to_arrays()
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_file(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_rotated(path: Path) -> RotatedDesign:
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(bytes(f["meta"]).decode())
        arrays = {k: f[k] for k in f.files if k != "meta"}
    return RotatedDesign.from_arrays(arrays, meta)


def json_safe(obj):
    """JSON has no NaN/Infinity: a copy with them written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def save_reml(path: Path, result: RemlResult) -> None:
    atomic_write_text(path, json.dumps(json_safe(result.to_dict()), indent=2) + "\n")


def load_reml(path: Path, design: RotatedDesign | None = None) -> RemlResult:
    return RemlResult.from_dict(json.loads(Path(path).read_text()), design=design)


def write_blup(path: Path, ids: list, names: list, genetic_values: np.ndarray) -> None:
    lines = ["FID\tIID\t" + "\t".join(names)]
    for (f, i), g in zip(ids, genetic_values):
        lines.append(f"{f}\t{i}\t" + "\t".join(f"{x:.8g}" if np.isfinite(x) else "NA" for x in g))
    atomic_write_text(path, "\n".join(lines) + "\n")


class StepCheckpoint:
    """The matrix-free REML's state after each Lanczos step, one .npz file replaced atomically
    (``reml.partial/state.npz``); :meth:`load` returns it (or None), and the solver resumes after
    that step if the state is of the same inputs. The last state is kept as the stage's output
    (``reml_state.npz``): predictions rebuild the fit from it without a pass over X."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                meta = json.loads(bytes(f["meta"]).decode())
                arrays = {k: f[k] for k in f.files if k != "meta"}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("matrix-free REML: ignoring an unusable checkpoint %s (%s)", self.path, exc)
            return None
        return {"meta": meta, "arrays": arrays}

    def save(self, state: dict) -> None:
        arrays = dict(state["arrays"])
        arrays["meta"] = np.frombuffer(json.dumps(state["meta"]).encode(), dtype=np.uint8)
        with atomic_file(self.path, "wb") as fh:
            np.savez(fh, **arrays)


def save_rg(out: Path, result, hsq_names: dict) -> None:
    """The genetic correlations: ``rg/<a>.<b>.hsq`` per pair (GCTA's bivariate table, file names
    ``hsq_names[(a, b)]``), ``rg.tsv`` (one row per pair, the result's ``to_pandas()`` columns, 15
    significant digits) and ``rg.json`` (the result, read back by :func:`load_rg`), that last."""
    out = Path(out)
    for f in result.fits:
        atomic_write_text(out / "rg" / hsq_names[(f.trait_a, f.trait_b)], f.hsq_text())
    table = result.to_pandas()
    atomic_write_text(out / "rg.tsv", table.to_csv(sep="\t", index=False, na_rep="NA", float_format="%.15g"))
    atomic_write_text(out / "rg.json", json.dumps(json_safe(result.to_dict()), indent=2) + "\n")


def load_rg(path: Path):
    """The genetic correlations saved by :func:`save_rg` (a matrix-free result keeps its Monte
    Carlo SDs and builds)."""
    from ..bivariate import BivariateResult
    from ..mf_bivariate import BivariateMatrixFreeResult

    d = json.loads(Path(path).read_text())
    return (BivariateMatrixFreeResult if "mc_sd" in d else BivariateResult).from_dict(d)
