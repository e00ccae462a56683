"""``bigmm score``: a run's SNP effects applied to another cohort (the glue; the maths is in bigmm.blup)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import zarr

from ..blup import match_alleles, score
from ..errors import InputError
from ..io.plink import check_unique_variant_ids, ingest_plink
from ..io.vcfzarr import open_vcf_zarr
from ..store import atomic_write_text, open_store, resolve_path
from .config import parse_config
from .outputs import load_variants
from .rundir import read_manifest

log = logging.getLogger("bigmm")


def _read_effects(run: Path):
    manifest = read_manifest(run)
    if manifest is None:
        raise InputError(f"{run} is not a bigmm run directory (no run.json)")
    std = load_variants(run / "variants.zarr")
    tsv, zp = run / "snp_effects.tsv", run / "snp_effects.zarr"
    cfg = parse_config(manifest["config"], base=run)
    if cfg.genotypes.plink is not None:
        train = open_store(run / "genotypes.zarr", verify=False).variant_table()
    elif cfg.genotypes.vcf_zarr is not None:
        train = open_vcf_zarr(cfg.genotypes.vcf_zarr).variant_table()
    else:
        train = open_store(cfg.genotypes.zarr, verify=False).variant_table()
    check_unique_variant_ids(train["id"], f"run {run} (the training variants of its SNP effects)")
    if zp.exists():
        g = zarr.open_group(str(zp), mode="r")
        return train, std, np.asarray(g["beta_std"][...]), list(g.attrs["phenotypes"])
    if not tsv.exists():
        raise InputError(f"{run} has no SNP effects: run it with predict: {{snp_effects: true}}")
    with open(tsv) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    names = [h[len("beta_"):] for h in header if h.startswith("beta_") and not h.startswith("beta_allele_")]
    cols = [header.index(f"beta_{n}") for n in names]
    beta = np.loadtxt(tsv, skiprows=1, usecols=cols, ndmin=2, delimiter="\t")
    return train, std, beta, names


def check_scores_path(out: Path, run: Path, inputs, force: bool) -> None:
    """Refuse a scores path that exists (unless ``force``), lies in the run folder, or is (or is
    inside) an input of the scoring: the target fileset or store. Checked before any work."""
    out = Path(out)
    where, run_dir = resolve_path(out), resolve_path(run)
    if where == run_dir or run_dir in where.parents:
        raise InputError(f"--out {out} is inside the run folder {run}, whose files are the run's own: "
                         f"write the scores outside it")
    for f in inputs:
        f = resolve_path(f)
        if where == f or f in where.parents:
            raise InputError(f"--out {out} is {f}, an input of this command: bigmm never writes over its "
                             f"input; choose another path")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give the path of the scores table to write")
    if (out.exists() or out.is_symlink()) and not force:
        raise InputError(f"--out {out} exists; choose another path, or add --force to replace it")


def score_run(run: Path, out: Path, bfile=None, zarr_path=None, vcf_zarr=None, force: bool = False):
    """Score a target cohort with the SNP effects of ``run``; returns (path, allele-match counts).

    ``out`` must not exist (unless ``force``), and is never a file of the run folder or of the
    target cohort, even with ``force``."""
    run = Path(run)
    if bfile is not None:
        bfile = str(bfile)[:-4] if str(bfile).endswith(".bed") else bfile
        targets = [Path(f"{bfile}.{ext}") for ext in ("bed", "bim", "fam")]
    else:
        targets = [Path(zarr_path if zarr_path is not None else vcf_zarr)]
    check_scores_path(out, run, targets, force)
    train, std, beta, names = _read_effects(run)
    with tempfile.TemporaryDirectory() as tmp:
        if bfile is not None:
            target = ingest_plink(bfile, Path(tmp) / "target.zarr")
        elif zarr_path is not None:
            target = open_store(zarr_path)
        else:
            target = open_vcf_zarr(vcf_zarr)
        table = target.variant_table()
        check_unique_variant_ids(table["id"], f"target {bfile or zarr_path or vcf_zarr}")
        m = match_alleles(train, table, keep=std.keep)  # used: variants in the scores
        if m.counts["used"] == 0:
            raise InputError(f"no variant of the target matches the training variants by ID and alleles "
                             f"({m.counts})")
        log.info("scoring: %s", m.counts)
        S = score(target.genotypes, m, std, beta)
        lines = ["FID\tIID\t" + "\t".join(names)]
        for (f, i), row in zip(target.sample_ids(), S):
            lines.append(f"{f}\t{i}\t" + "\t".join(f"{x:.8g}" for x in row))
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return Path(out), m.counts
