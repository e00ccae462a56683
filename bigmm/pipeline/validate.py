"""The one validator: every problem of a run configuration, found once, before any compute.

:func:`validate` reads each input once (the genotype samples and variants, the phenotype and
covariate tables, the variant list), checks sample overlap, columns, the memory plan, the free
disk space and the output directory, and either raises one error listing every problem or
returns the parsed :class:`Inputs` the run then uses. ``bigmm check`` and ``bigmm run`` share it;
``check`` prints the plan it checked (:meth:`Inputs.describe`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dask.utils import format_bytes

from ..errors import BigmmError, ConfigError, InputError, missing_reason
from ..io.gcta import GrmFiles, open_grm
from ..io.plink import PlinkFileset, chrom_code, read_plink
from ..io.tables import (Design, align_rows, build_design, fam_table, read_gemma_table, read_sample_list,
                         read_table, sample_matches)
from ..spectrum import subspace_width
from ..store import open_store, resolve_path
from ..io.plink import check_unique_variant_ids  # noqa: I001 - its own line: merges stay simple
from .config import (ClusterConfig, CovariatesConfig, GenotypesConfig, PhenotypesConfig, RunConfig,
                     SamplesConfig, VariantsConfig, _resolve, parse_config, read_yaml)
from .components import check_components, components_memory
from .config_rg import check_rg
from .memory import check_components_memory, check_memory, cluster_threads, components_block_size, grm_block_size
from .plan import (components_method, model_memory, needs_grm, needs_spectrum, passes_at_most, planned_stages,
                   reml_method, spectrum_method, stage_flops, stage_passes)
from .rundir import check_output_dir

log = logging.getLogger("bigmm")
#: the label of a sample the report.labels table has no row (or an empty cell) for
NO_LABEL = "no label"


@dataclass(frozen=True)
class Inputs:
    """What a run uses, read once: samples, the design, the variant list and the plan checked."""

    ids: list
    design: Design
    include: list | None
    n_variants: int
    method: str
    reml_method: str
    variant_chunk: int
    plink: PlinkFileset | None = None
    store: object = None  # the cohort or VCF Zarr store a config names (not for PLINK input)
    memory_plan: dict = field(default_factory=dict)
    replace_other_run: bool = False
    spectrum_needed: bool = True
    #: .fam rows kept by samples.keep/remove (None: all), and what the selection removed
    sample_rows: object = None
    #: variants selected out before the filters, by reason (variants.chr/extract/exclude)
    variant_drop: dict | None = None
    #: counts of the sample and variant selection (for the log and results.json)
    selection: dict = field(default_factory=dict)
    #: a given GRM (genotypes.grm): its files, and K over ``ids`` (the analysed samples), read once
    grm: GrmFiles | None = None
    grm_K: np.ndarray | None = None
    #: what the GRM input held and what was used (for the log and results.json)
    grm_info: dict | None = None
    stage_passes: dict = field(default_factory=dict)  # passes over X per stage (plan.stage_passes)
    stage_flops: dict = field(default_factory=dict)  # arithmetic per stage (plan.stage_flops)
    workers: str = ""  # the cluster's workers and their memory, for a person
    #: report.labels: (column name, label per sample of ``ids``, match counts), read once
    labels: tuple | None = None
    filters: str = ""  # the variant filters, for a person
    #: the variance components known before any pass (components.file / lists / by_chromosome,
    #: crossed; None without them), and what ``bigmm check`` prints of the components
    components: object = None
    components_text: str = ""
    #: why the REML model was chosen (several components: exact or matrix-free), for a person
    reml_reason: str = ""
    #: the genetic correlations asked for (rg.pairs), for a person ("" when none)
    rg_text: str = ""

    @property
    def genotype_provenance(self) -> dict | None:
        if self.grm is not None:  # the samples of K (they depend on the phenotypes and covariates)
            return {"grm_samples": _ids_hash(self.ids)}
        if self.store is None:
            return None
        attrs = self.store.attrs
        return {"created": attrs.get("created"), "provenance": attrs.get("provenance")}

    def describe(self, flops_per_second: float | None = None) -> str:
        """The plan checked, for a person: samples, variants, methods, stages and their passes
        over X, memory per task, worker and driver, and with ``flops_per_second`` (a rate
        measured on this machine, :func:`bigmm.pipeline.memory.matmul_rate`) a rough time estimate."""
        if self.grm is not None:
            return "\n".join(self._describe_grm() + [t for t in (self.components_text, self.rg_text) if t])
        lines = self._describe_data() + ([self.components_text] if self.components_text else []) \
            + ([self.rg_text] if self.rg_text else []) + self._describe_passes() + self._describe_memory()
        if flops_per_second and self.stage_flops:
            lines.append(self._describe_time(flops_per_second))
        return "\n".join(lines)

    def _describe_grm(self) -> list[str]:
        """:meth:`describe` for a given GRM: its samples, its files and the driver's memory."""
        d = self.design
        mp = self.memory_plan
        gi = self.grm_info
        lines = [f"samples: {gi['n_in_grm']} in the GRM, {gi['n_selected']} after samples.keep/remove, "
                 f"{gi['n_analysed']} analysed (K is restricted to them); {len(d.phenotype_names)} "
                 f"phenotype(s), {d.Z.shape[1]} fixed effects",
                 f"GRM: {self.grm.describe()}" + (f"; variants per entry (.grm.N.bin) min "
                                                   f"{gi['n_variants']['min']:g}, median "
                                                   f"{gi['n_variants']['median']:g}" if gi.get("n_variants") else ""),
                 "REML: spectral on the exact spectrum of the given K" if self.reml_method == "spectral"
                 else f"REML: {self.reml_method}" + (f" ({self.reml_reason})" if self.reml_reason else "")]
        if mp.get("driver_bytes"):
            lines.append(f"driver memory: {format_bytes(mp['driver_bytes'])} (8·max(1.5·n_grm² + n², 4·n²) "
                         f"bytes)")
        return lines

    def _describe_data(self) -> list[str]:
        """:meth:`describe`'s samples, variants and methods."""
        d = self.design
        return [f"samples: {len(self.ids)} genotyped, {int(d.analysed.sum())} analysed; "
                f"{len(d.phenotype_names)} phenotype(s), {d.Z.shape[1]} fixed effects",
                f"variants: {self.n_variants} in the genotype input"
                + (f", {len(self.include)} in the extract list" if self.include is not None else "")
                + "".join(f", {c} dropped by {k}" for k, c in self.selection.get("variants", {}).items())
                + (f"; kept: those passing {self.filters} (counted by the variant statistics, the run's "
                   f"first pass over X)" if self.filters else ""),
                f"REML: {self.reml_method}" + (f" ({self.reml_reason})" if self.reml_reason else "") + "; spectrum: "
                + (self.method if self.spectrum_needed else "none (matrix-free REML without deflation or PCs)"
                   if self.reml_method == "matrix_free" else "none (not needed without PCs as covariates)")]

    def _describe_passes(self) -> list[str]:
        """:meth:`describe`'s stages and their passes over X (matrix-free and randomized passes)."""
        mp = self.memory_plan
        lines = []
        if self.stage_passes:
            total = sum(self.stage_passes.values())
            mf = passes_at_most(self.reml_method)
            lines.append(f"stages: {', '.join(self.stage_passes)}; passes over X: {'at most ' if mf else ''}"
                         f"{total:g} in all (" + ", ".join(f"{k} {v:g}" for k, v in self.stage_passes.items() if v)
                         + ("; matrix-free REML stops when converged" if mf else "") + ")")
        if "mf_pass_vectors" in mp:
            lines.append(f"matrix-free passes over X: at most {mp['mf_max_passes']} Lanczos steps of "
                         f"{mp['mf_pass_vectors']} vectors ({format_bytes(mp['mf_pass_task_bytes'])} per task), "
                         f"driver up to {format_bytes(mp['mf_driver_bytes'])}")
        if "passes_over_X" in mp and self.spectrum_needed:
            lines.append(f"randomized spectrum: {mp['passes_over_X']} passes over X, the widest of "
                         f"{mp['pass_vectors']} vectors")
            if mp["basis_uncapped"] > mp["basis_width"]:
                lines.append(f"randomized spectrum: the Krylov space (power_iters + 1)·(rank + oversample) = "
                             f"{mp['basis_uncapped']} is wider than n = {len(self.ids)} samples: capped at n "
                             f"(on the whole space its Rayleigh–Ritz is exact)")
        return lines

    def _describe_memory(self) -> list[str]:
        """:meth:`describe`'s memory per task, workers and driver memory."""
        mp = self.memory_plan
        lines = []
        if mp.get("task_memory_bytes"):
            lines.append(f"memory per task: {format_bytes(mp['task_memory_bytes'])} allowed"
                         + (f", widest pass needs {format_bytes(mp['pass_task_bytes'])}" if "pass_task_bytes" in mp else "")
                         + (f", a GRM block needs {format_bytes(mp['grm_block_task_bytes'])}"
                            if "grm_block_task_bytes" in mp else ""))
        if self.workers:
            lines.append(f"workers: {self.workers}")
        if mp.get("driver_bytes"):
            lines.append(f"driver memory: {format_bytes(mp['driver_bytes'])}")
        return lines

    def _describe_time(self, flops_per_second: float) -> str:
        """:meth:`describe`'s rough time estimate: the plan's arithmetic at ``flops_per_second``."""
        total = sum(self.stage_flops.values())
        return (f"estimated time: about {_rough_duration(total / flops_per_second)} of arithmetic (a rough "
                f"estimate: {total:.2g} floating-point operations of the plan ("
                + ", ".join(f"{k} {v:.2g}" for k, v in self.stage_flops.items())
                + f") at {flops_per_second / 1e9:.0f} GFLOP/s, the rate of a float32 NumPy matrix product "
                f"measured just now on this machine; it assumes the cluster computes as fast as this "
                f"machine with all its cores, and leaves out reading the genotypes, starting the "
                f"cluster and the report)")


def _ids_hash(ids: list) -> str:
    """A short hash of a list of (FID, IID)."""
    return hashlib.sha256(json.dumps([list(i) for i in ids]).encode()).hexdigest()[:16]


def _design_rows(d: Design, rows: np.ndarray) -> Design:
    """The design restricted to the samples ``rows`` (all of them analysed)."""
    return Design(Y=d.Y[rows], Z=d.Z[rows], phenotype_names=d.phenotype_names,
                  covariate_names=d.covariate_names, analysed=d.analysed[rows], notes=dict(d.notes))


def _rough_duration(seconds: float) -> str:
    """``0.0042 s``, ``4.2 s``, ``12 s``, ``3.5 min``, ``2.1 h``.

    >>> _rough_duration(0.00421), _rough_duration(4.21), _rough_duration(12.3), _rough_duration(210), _rough_duration(7560)
    ('0.0042 s', '4.2 s', '12 s', '3.5 min', '2.1 h')
    """
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _attempt(problems: list[str], fn, *args):
    try:
        return fn(*args)
    except BigmmError as exc:
        problems.append(str(exc))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return None


def read_id_list(path: Path) -> list[str]:
    """Variant IDs, one per line (first field), ``#`` comments allowed."""
    if not path.exists():
        raise InputError(f"variant list {path} {missing_reason(path)}")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise InputError(f"variant list {path} is empty")
    return ids


def read_labels(path: Path, column: str | None, ids: list) -> tuple[str, np.ndarray, dict]:
    """The ``report.labels`` table's ``column`` for each sample of ``ids`` (matched by FID/IID;
    :data:`NO_LABEL` for a sample without a row or with an empty cell), and the match counts."""
    t = read_table(path, "report.labels")
    if column is None:
        if len(t.columns) != 1:
            raise InputError(f"report.labels {path} has {len(t.columns)} columns besides FID IID "
                             f"({', '.join(t.columns[:10])}{', ...' if len(t.columns) > 10 else ''}): name the one "
                             f"that colours the PC plots with report.label_column")
        column = t.columns[0]
    try:
        values = t.text(column)
    except InputError as exc:
        raise InputError(f"report.label_column {column!r}: {exc}") from None
    rows = align_rows(t, ids)
    labels = np.array([NO_LABEL if r < 0 or values[r] is None else values[r] for r in rows], dtype=object)
    labelled = labels != NO_LABEL
    counts = {"file": str(path), "column": column, "rows": len(t.fid), "rows_matched": int((rows >= 0).sum()),
              "samples": len(ids), "samples_labelled": int(labelled.sum()),
              "samples_without_label": int((~labelled).sum()), "levels": len(set(labels[labelled].tolist()))}
    log.info("report.labels %s: column %s, %d of %d rows match a genotyped sample; %d of %d samples labelled "
             "(%d distinct labels), %d shown as %r", path, column, counts["rows_matched"], counts["rows"],
             counts["samples_labelled"], len(ids), counts["levels"], counts["samples_without_label"], NO_LABEL)
    return column, labels, counts


def estimate_disk(cfg: RunConfig, n: int, p: int, method: str, rmethod: str = "spectral",
                  n_components: int | None = None) -> dict[str, int]:
    """Bytes the run will write, by output (upper bounds; stores are compressed); ``n_components``:
    the most components of a several-component run (its GRMs are stored uncompressed)."""
    need = {}
    if n_components:
        need["components (float64 GRMs, m x n x n)"] = 8 * n_components * n * n
    if cfg.genotypes.plink is not None:
        need["genotypes.zarr (int8, before compression)"] = n * p
    if needs_grm(cfg, method, rmethod):
        need["grm.zarr (float64 K and int32 per-pair call counts, n x n)"] = 12 * n * n
    if cfg.gcta_prefix() is not None:
        need["GCTA .grm.bin + .grm.N.bin"] = 4 * n * (n + 1)
    if not needs_spectrum(cfg, rmethod):
        return need
    k = n if method == "exact" else cfg.spectrum.rank
    need["spectrum.zarr (U, float64 n x k)"] = 8 * n * k
    if method == "randomized":
        l = subspace_width(cfg.spectrum.rank, cfg.spectrum.oversample, n)
        need["spectrum checkpoint (float64 n x l)"] = 8 * n * l
    return need


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def still_to_write(cfg: RunConfig, need: dict[str, int]) -> dict[str, int]:
    """``need`` less what the run folder already holds: a committed output (a store, the GCTA
    files) is not written again unless its stage reruns, and then the old one is removed first;
    a checkpoint (``*.partial``) is continued, so only the rest of it is still to be written."""
    out = Path(cfg.output)
    gcta = cfg.gcta_prefix()
    left = {}
    for key, size in need.items():
        head = key.split(" ")[0]
        if head == "GCTA":
            done = gcta is not None and Path(f"{gcta}.grm.bin").exists()
        elif key.startswith("spectrum checkpoint"):
            part = out / "spectrum.partial"
            size -= _tree_bytes(part) if part.exists() else 0
            done = (out / "spectrum.zarr").exists()
        else:
            part = out / f"{head}.partial"
            size -= _tree_bytes(part) if part.exists() else 0
            done = (out / head).exists()
        if not done and size > 0:
            left[key] = size
    return left


def _check_disk(cfg: RunConfig, n: int, p: int, method: str, rmethod: str, n_components: int | None = None) -> None:
    need = still_to_write(cfg, estimate_disk(cfg, n, p, method, rmethod, n_components))
    total = sum(need.values())
    where = Path(cfg.output)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if total > free:
        detail = "; ".join(f"{k} {format_bytes(v)}" for k, v in need.items())
        raise ConfigError(f"not enough disk space for the run: it writes up to {format_bytes(total)} "
                          f"({detail}) under {cfg.output}, but {where} has {format_bytes(free)} free")


def _check_cluster(cc: ClusterConfig) -> None:
    if cc.backend == "address":
        from distributed import Client

        from .cluster import _security

        try:
            client = Client(cc.address, timeout="5s", security=_security(cc))
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cluster.address: cannot reach the Dask scheduler at {cc.address} ({exc})") from None
        client.close()
    elif cc.backend in ("slurm", "pbs", "sge"):
        try:
            import dask_jobqueue  # noqa: F401
        except ImportError:
            raise ConfigError(f"cluster.backend {cc.backend!r} needs dask-jobqueue: "
                              f"pip install 'bigmm[jobqueue]'") from None


def _open_genotype_store(g: GenotypesConfig):
    if g.vcf_zarr is not None:
        from ..io.vcfzarr import open_vcf_zarr

        return open_vcf_zarr(g.vcf_zarr, sample_ids=g.vcf_sample_ids)
    return open_store(g.zarr)


def select_samples(ids: list, samples: SamplesConfig) -> tuple[np.ndarray | None, dict]:
    """The genotype rows kept by samples.keep / samples.remove (PLINK --keep / --remove, keep
    applied first), and counts of what each removed. (None, {}) without a selection."""
    if samples.keep is None and samples.remove is None:
        return None, {}
    kept = np.ones(len(ids), dtype=bool)
    counts: dict = {"genotyped": len(ids)}
    for key, path in (("keep", samples.keep), ("remove", samples.remove)):
        if path is None:
            continue
        hit, unmatched = sample_matches(read_sample_list(path, f"samples.{key} file"), ids)
        before = int(kept.sum())
        kept &= hit if key == "keep" else ~hit
        counts[f"removed_by_{key}"] = before - int(kept.sum())
        counts[f"{key}_entries_not_genotyped"] = unmatched
    counts["kept"] = int(kept.sum())
    if not kept.any():
        raise InputError("no genotyped sample is left after "
                         + " and ".join(f"samples.{k} ({getattr(samples, k)})" for k in ("keep", "remove")
                                        if getattr(samples, k) is not None)
                         + ": check that the lists hold FID IID (or IID) of the genotype data")
    return np.flatnonzero(kept), counts


def select_variants(table: dict, variants: VariantsConfig) -> tuple[dict | None, dict, list | None]:
    """Variants dropped by variants.chr / extract (include) / exclude, as boolean masks by reason
    (in PLINK's order), the counts, and the extract list."""
    chroms = variants.chromosomes()
    if chroms is None and variants.extract is None and variants.exclude is None:
        return None, {}, None
    vid = np.asarray(table["id"], dtype=object)
    drop: dict = {}
    extract = None
    if chroms is not None:
        # one spelling per chromosome: X is 23 in PLINK's numbers, chrX in a VCF's contigs
        want = {chrom_code(c) for c in chroms}
        codes, where = np.unique(np.asarray(table["chrom"]).astype(str), return_inverse=True)
        drop["chr"] = ~np.array([chrom_code(c) in want for c in codes], dtype=bool)[where.ravel()]
    if variants.extract is not None:
        extract = read_id_list(variants.extract)
        drop["not_in_extract"] = ~np.isin(vid, extract)
    if variants.exclude is not None:
        drop["in_exclude"] = np.isin(vid, read_id_list(variants.exclude))
    taken = np.zeros(vid.size, dtype=bool)
    counts = {}
    for k, m in drop.items():  # each variant counted under the first reason that drops it
        counts[k] = int((m & ~taken).sum())
        taken |= m
    if taken.all():
        raise InputError(f"no variant is left after variants.chr/extract/exclude (of {vid.size}: "
                         + ", ".join(f"{k} drops {c}" for k, c in counts.items())
                         + "); check the chromosome codes and the variant IDs against the genotype input")
    return drop, counts, extract


def _phenotype_source(phenotypes: PhenotypesConfig, fs: PlinkFileset | None, all_ids: list):
    """The phenotype table (a path, or a Table read here) and its columns."""
    if phenotypes.fam is not None:
        if fs is None:
            raise ConfigError("phenotypes.fam needs genotypes.plink (its .fam)")
        t = fam_table(fs.paths["fam"], fs.fid, fs.iid, fs.fam_phenotypes, fs.fam_lines)
        if phenotypes.fam == "all":
            return t, list(t.columns)
        wanted = phenotypes.fam if isinstance(phenotypes.fam, list) else [phenotypes.fam]
        for n in wanted:
            if n > len(t.columns):
                raise InputError(f"phenotypes.fam = {phenotypes.fam}: {fs.paths['fam']} has {len(t.columns)} "
                                 f"phenotype column(s) (column 6 on); fam: N reads column {5 + n}")
        return t, [t.columns[n - 1] for n in wanted]
    if phenotypes.layout == "gemma":
        return read_gemma_table(phenotypes.file, all_ids, "phenotype"), phenotypes.columns
    return phenotypes.file, phenotypes.columns


def _check_inputs(problems: list[str], genotypes: GenotypesConfig | None, phenotypes: PhenotypesConfig | None,
                  covariates: CovariatesConfig | None, variants: VariantsConfig | None,
                  samples: SamplesConfig | None = None) -> dict:
    """Read and check the input files of the sections given (None: a section that is itself
    invalid), each once; problems are appended. Returns what was read."""
    got: dict = {}
    ids, p, fs, vtable = _read_genotypes(problems, genotypes, got)
    all_ids = ids
    if ids is not None:
        _check_unique_samples(problems, ids)
        ids = _apply_sample_selection(problems, ids, samples, fs, got)
        got.update(ids=ids, n_variants=p)
    _apply_variant_selection(problems, vtable, variants, got)
    _check_tables(problems, ids, all_ids, fs, phenotypes, covariates, got)
    return got


def _read_genotypes(problems: list[str], g: GenotypesConfig | None, got: dict) -> tuple:
    """Open the genotype input (PLINK, a given GRM, or a Zarr store) into ``got``; returns its sample
    IDs, its variant count, the PLINK fileset and the variant table (None for what it lacks)."""
    ids = p = None
    fs = vtable = None
    if g is not None and g.plink is not None:
        fs = _attempt(problems, read_plink, g.plink)
        if fs is not None:
            got.update(plink=fs, variant_chunk=g.chunks[1])
            ids, p = fs.sample_ids, fs.n_variants
            vtable = fs.variants
            got["variant_table"] = vtable
    elif g is not None and g.grm is not None:
        gf = _attempt(problems, open_grm, g.grm)  # IDs read and sizes checked; values later
        if gf is not None:
            got.update(grm=gf, variant_chunk=0)
            ids = gf.ids
    elif g is not None:
        store = _attempt(problems, _open_genotype_store, g)
        if store is not None:
            got.update(store=store, variant_chunk=store.chunks[1])
            ids, p = store.sample_ids(), store.n_variants
            vtable = store.variant_table()
            got["variant_table"] = vtable
            _attempt(problems, check_unique_variant_ids, vtable["id"], f"genotype store {store.path}")
    return ids, p, fs, vtable


def _check_unique_samples(problems: list[str], ids: list) -> None:
    """A problem for the first genotype sample ID that is there twice."""
    seen: dict = {}
    for i, key in enumerate(ids):
        if key in seen:
            problems.append(f"genotype samples: duplicate ID {key[0]}/{key[1]} (rows {seen[key] + 1} "
                            f"and {i + 1}); sample IDs must be unique")
            break
        seen[key] = i


def _apply_sample_selection(problems: list[str], ids: list, samples: SamplesConfig | None, fs, got: dict) -> list:
    """The genotype samples kept by samples.keep/remove (PLINK or a given GRM only); their rows and
    counts go into ``got``."""
    if samples is not None and (samples.keep is not None or samples.remove is not None):
        if fs is None and "grm" not in got:
            problems.append("samples.keep / samples.remove select samples of genotypes.plink input "
                            "(at ingest); for a Zarr or VCF Zarr store, leave the samples out of the "
                            "phenotype file instead")
        else:
            sel = _attempt(problems, select_samples, ids, samples)
            if sel is not None and sel[0] is not None:
                rows, counts = sel
                ids = [ids[i] for i in rows]
                got.update(sample_rows=rows)
                got.setdefault("selection", {})["samples"] = counts
    return ids


def _apply_variant_selection(problems: list[str], vtable: dict | None, variants: VariantsConfig | None,
                             got: dict) -> None:
    """The variants selected out by variants.chr/extract/exclude, or the extract list alone when the
    input has no variant table yet, into ``got``."""
    if vtable is not None and variants is not None:
        vs = _attempt(problems, select_variants, vtable, variants)
        if vs is not None and vs[0] is not None:
            got.update(variant_drop=vs[0], include=vs[2])
            got.setdefault("selection", {})["variants"] = vs[1]
    elif variants is not None and variants.extract is not None:
        got["include"] = _attempt(problems, read_id_list, variants.extract)


def _check_tables(problems: list[str], ids, all_ids, fs, phenotypes: PhenotypesConfig | None,
                  covariates: CovariatesConfig | None, got: dict) -> None:
    """The phenotype and covariate tables matched to the samples: the design into ``got``, or the
    problems of each table on its own."""
    pheno_src = None
    if phenotypes is not None and all_ids is not None:
        pheno_src = _attempt(problems, _phenotype_source, phenotypes, fs, all_ids)
        if pheno_src is None:
            phenotypes = None  # reported
    if ids is not None and phenotypes is not None and covariates is not None:
        c = covariates
        before = len(problems)
        design = _attempt(problems, build_design, ids, pheno_src[0], pheno_src[1], c.file,
                          c.columns, c.categorical, c.qcovar, c.covar)
        if design is not None:
            got["design"] = design
        else:
            del problems[before:]
    if "design" not in got:
        _check_tables_apart(problems, ids, phenotypes, covariates, pheno_src)


def _check_tables_apart(problems: list[str], ids, phenotypes: PhenotypesConfig | None,
                        covariates: CovariatesConfig | None, pheno_src) -> None:
    """Each table and its columns on its own, so that problems in both are reported (read again
    only on this error path), then the design if neither has a problem."""
    before = len(problems)
    for section, what in ((phenotypes, "phenotype"), (covariates, "covariate")):
        if section is None or section.file is None or (what == "phenotype" and pheno_src is not None
                                                       and not isinstance(pheno_src[0], Path)):
            continue
        t = _attempt(problems, read_table, section.file, what)
        if t is not None and section.columns != "all":
            for col in section.columns:
                _attempt(problems, t.column_index, col)
    if len(problems) == before and ids is not None and phenotypes is not None and covariates is not None:
        c = covariates
        _attempt(problems, build_design, ids, pheno_src[0], pheno_src[1], c.file, c.columns,
                 c.categorical, c.qcovar, c.covar)


def _workers_text(cc: ClusterConfig) -> str:
    """The cluster's workers and the memory of each, for a person."""
    if cc.backend == "local":
        return (f"local cluster of {cc.workers} worker processes x {cc.threads_per_worker} threads, "
                f"{cc.memory_limit} each")
    if cc.backend == "address":
        return f"those of the scheduler at {cc.address} (their memory is theirs)"
    jq = cc.jobqueue
    jobs = f"{jq.adaptive.minimum}..{jq.adaptive.maximum}" if jq.adaptive is not None else f"{cc.workers}"
    return f"{jobs} {cc.backend} jobs of {jq.cores} cores and {jq.memory} ({jq.processes} worker processes each)"


def collect(cfg: RunConfig, *, force: bool = False, contact_cluster: bool = False) -> tuple[list[str], Inputs | None]:
    """Every problem of a parsed configuration and its inputs, and the inputs when there are none."""
    problems: list[str] = []
    got = _check_inputs(problems, cfg.genotypes, cfg.phenotypes, cfg.covariates, cfg.variants, cfg.samples)
    ids, grm_rows = _restrict_grm(got)
    labels = None
    if ids is not None and cfg.report.labels is not None:
        labels = _attempt(problems, read_labels, cfg.report.labels, cfg.report.label_column, ids)
    method = rmethod = None
    memory_plan: dict = {}
    if cfg.components is not None and ids is not None:
        _attempt(problems, check_components, cfg, got, ids)
    if ids is not None:
        method, rmethod, memory_plan = _check_plan(problems, cfg, ids, got, grm_rows)
    if rmethod is not None and "design" in got:  # rg.pairs against the phenotypes, before any stage
        got["rg_text"] = _attempt(problems, check_rg, cfg.rg, got["design"], rmethod, method) or ""
    _check_prevalence(problems, cfg, got)
    replace = _attempt(problems, check_output_dir, Path(cfg.output), cfg, force)
    if contact_cluster:
        _attempt(problems, _check_cluster, cfg.cluster)
    if problems or "design" not in got:
        return problems, None
    return problems, _inputs(cfg, got, ids, method, rmethod, memory_plan, bool(replace), labels)


def _restrict_grm(got: dict) -> tuple[list | None, np.ndarray | None]:
    """With a given GRM, the run's samples are the analysed ones (K is needed over them only): the
    design restricted to them and the GRM's facts into ``got``; returns the samples and the GRM
    rows to read (None without a GRM)."""
    ids = got.get("ids")
    gf = got.get("grm")
    grm_rows = None
    if gf is not None and "design" in got:
        # K is needed over the analysed samples only: the run's samples are those
        d = got["design"]
        keep = np.flatnonzero(d.analysed)
        sel = got.get("sample_rows")
        grm_rows = keep if sel is None else np.asarray(sel)[keep]
        got["grm_info"] = {"format": gf.format, "layout": gf.layout, "dtype": "float32" if gf.dtype == "<f4" else "float64",
                           "files": [str(p) for p in gf.files], "n_in_grm": gf.n, "n_selected": len(ids),
                           "n_analysed": int(keep.size), "n_not_analysed": len(ids) - int(keep.size)}
        if keep.size < len(ids):
            got["design"] = _design_rows(d, keep)
            ids = [ids[i] for i in keep]
    return ids, grm_rows


def _check_plan(problems: list[str], cfg: RunConfig, ids: list, got: dict, grm_rows) -> tuple:
    """The methods chosen for ``ids`` and the memory plan checked (then the GRM's values read, once),
    the PCs against the rank and the disk space; returns the spectrum and REML methods and the plan."""
    gf = got.get("grm")
    method = spectrum_method(cfg, len(ids))
    if cfg.components is not None:  # exact or matrix-free, and why (the dense GRMs' memory)
        rmethod, got["reml_reason"] = components_method(cfg, len(ids), components_memory(got))
    else:
        rmethod = _attempt(problems, reml_method, cfg, len(ids))
    if rmethod is None:
        return method, rmethod, {}
    before = len(problems)
    memory_plan = _attempt(problems, lambda: check_memory(
        cfg, len(ids), method, got["variant_chunk"], grm_needed=needs_grm(cfg, method, rmethod),
        spectrum_needed=needs_spectrum(cfg, rmethod), model=model_memory(rmethod), design=got.get("design"),
        n_grm_file=gf.n if gf is not None else None)) or {}
    if "components_plan" in got and "design" in got and len(problems) == before:
        memory_plan.update(got["components_plan"])
    if rmethod == "components" and "components_plan" in got and "design" in got and len(problems) == before:
        # the component GRMs' driver memory, refused before any pass
        memory_plan["driver_bytes"] = max(memory_plan.get("driver_bytes", 0), _attempt(
            problems, check_components_memory, got["components_plan"]["components_m"],
            got["components_plan"]["components_n"], int(got["design"].analysed.sum()),
            bool(np.isnan(got["design"].Y[got["design"].analysed]).any())) or 0)
        if cfg.components.mgrm is None:
            memory_plan["components_block"] = _attempt(
                problems, components_block_size, cfg, len(ids), got["components_plan"]["components_m"],
                cluster_threads(cfg.cluster) or os.cpu_count() or 1, min(got["variant_chunk"], got["n_variants"]))
    if grm_rows is not None and len(problems) == before and cfg.components is None:  # the GRM's values, read once
        got["grm_K"] = _attempt(problems, gf.read, grm_rows)
        got["grm_info"]["n_variants"] = _attempt(problems, gf.n_variants)
    if cfg.covariates.pcs and method == "randomized" and cfg.covariates.pcs > cfg.spectrum.rank:
        problems.append(f"covariates.pcs = {cfg.covariates.pcs} exceeds spectrum.rank = {cfg.spectrum.rank}")
    if got.get("n_variants") is not None or gf is not None:
        _attempt(problems, _check_disk, cfg, len(ids), got.get("n_variants") or 0, method, rmethod,
                 got.get("components_plan", {}).get("components_m"))
    return method, rmethod, memory_plan


def _check_prevalence(problems: list[str], cfg: RunConfig, got: dict) -> None:
    """phenotypes.prevalence: every phenotype must be binary (0/1 or 1/2)."""
    if cfg.phenotypes.prevalence is not None and "design" in got:
        d = got["design"]
        for j, name in enumerate(d.phenotype_names):
            y = d.Y[d.analysed, j]
            levels = set(np.unique(y[~np.isnan(y)]).tolist())
            if levels not in ({0.0, 1.0}, {1.0, 2.0}):
                shown = ", ".join(f"{v:g}" for v in sorted(levels)[:5]) + (", ..." if len(levels) > 5 else "")
                problems.append(f"phenotypes.prevalence is for a binary trait coded 0/1 or 1/2 (control/"
                                f"case), but phenotype {name!r} has the values {shown}")


def _inputs(cfg: RunConfig, got: dict, ids: list, method: str, rmethod: str, memory_plan: dict, replace: bool,
            labels) -> Inputs:
    """The :class:`Inputs` of a configuration without problems, with its stages' passes and flops."""
    gf = got.get("grm")
    n, p = len(ids), got.get("n_variants") or 0  # a given GRM: no variants to pass over
    stages = planned_stages(cfg, method, rmethod)
    threads = cluster_threads(cfg.cluster) or os.cpu_count() or 1
    block = grm_block_size(cfg, n, threads, min(cfg.genotypes.chunks[0], n), min(got["variant_chunk"], p)) \
        if needs_grm(cfg, method, rmethod) else None
    passes = stage_passes(cfg, n, method, rmethod, block, memory_plan, stages)
    flops = stage_flops(cfg, n, p, method, rmethod, memory_plan, passes, len(got["design"].phenotype_names))
    return Inputs(ids=ids, design=got["design"], include=got.get("include"),
                  n_variants=got["n_variants"], method=method, reml_method=rmethod,
                  variant_chunk=got["variant_chunk"],
                  plink=got.get("plink"), store=got.get("store"), memory_plan=memory_plan,
                  replace_other_run=replace, spectrum_needed=needs_spectrum(cfg, rmethod),
                  sample_rows=got.get("sample_rows"), variant_drop=got.get("variant_drop"),
                  selection=got.get("selection", {}), grm=gf, grm_K=got.get("grm_K"),
                  grm_info=got.get("grm_info"), labels=labels,
                  stage_passes=passes, stage_flops=flops, workers=_workers_text(cfg.cluster),
                  filters=f"min_maf {cfg.variants.min_maf}, max_missing {cfg.variants.max_missing}",
                  components=got.get("components"), components_text=got.get("components_text", ""),
                  reml_reason=got.get("reml_reason", ""), rg_text=got.get("rg_text", ""))


def validate(cfg: RunConfig, *, force: bool = False, contact_cluster: bool = False) -> Inputs:
    """The inputs of a run, read once; one error listing every problem if there are any."""
    problems, inputs = collect(cfg, force=force, contact_cluster=contact_cluster)
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} problems" + (f" in {cfg.source}" if cfg.source else "") + ":\n"
                         + "\n".join(f"  - {p}" for p in problems))
    return inputs


def check_config(cfg: RunConfig, contact_cluster: bool = True, force: bool = False) -> list[str]:
    """Every problem of a parsed configuration's inputs (empty list: ready to run)."""
    return collect(cfg, force=force, contact_cluster=contact_cluster)[0]


def check_file(path: str | Path, contact_cluster: bool = True) -> tuple[list[str], Inputs | None]:
    """Every problem of a YAML config file: the schema (all keys at once), then its inputs;
    and the inputs (with the plan checked) when there are none."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        return [str(exc)], None
    if raw is None:
        return [f"{path} is empty"], None
    if not isinstance(raw, dict):
        return [f"{path}: the configuration must be a mapping of sections"], None
    try:
        cfg = parse_config(raw, base=resolve_path(path).parent, source=resolve_path(path))
    except ConfigError as exc:
        problems = [ln.strip() for ln in str(exc).splitlines()[1:]]
        problems = [f"{path}: {ln}" for ln in problems] or [str(exc)]
        # sections that are valid on their own still get their inputs checked
        problems += _check_valid_sections(raw, path, contact_cluster)
        return problems, None
    return collect(cfg, contact_cluster=contact_cluster)


def _check_valid_sections(raw: dict, path: Path, contact_cluster: bool) -> list[str]:
    """Input and cluster checks for the sections of an invalid config that are themselves valid."""
    resolved = _resolve(raw, resolve_path(path).parent)
    valid: dict = {}
    for key, model in (("genotypes", GenotypesConfig), ("phenotypes", PhenotypesConfig),
                       ("covariates", CovariatesConfig), ("variants", VariantsConfig),
                       ("samples", SamplesConfig), ("cluster", ClusterConfig)):
        section = resolved.get(key, None if key in ("genotypes", "phenotypes") else {})
        if not isinstance(section, dict):
            continue
        try:
            valid[key] = model.model_validate(section)
        except Exception:  # noqa: BLE001 - its schema errors are already reported
            continue
    problems: list[str] = []
    _check_inputs(problems, *(valid.get(k) for k in ("genotypes", "phenotypes", "covariates", "variants", "samples")))
    if contact_cluster and "cluster" in valid:
        _attempt(problems, _check_cluster, valid["cluster"])
    return problems
