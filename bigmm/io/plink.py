"""PLINK 1 binary filesets (.bed/.bim/.fam) and their ingest into a cohort store.

The .bed is decoded with bed-reader, variant block by variant block, so memory
stays bounded by the block whatever the cohort size. Stored genotypes count
allele 1 of the .bim (column 5), as PLINK does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..errors import InputError, missing_reason
from ..store import (DEFAULT_CHUNKS, DEFAULT_LAYOUT, CohortStore, atomic_dir, check_layout, check_replaceable_store,
                     file_fingerprint, finish_store, new_genotypes, now_utc, open_store, resolve_path,
                     write_store_tables)
from ..tasks import Progress

log = logging.getLogger("bigmm")

BED_MAGIC = b"\x6c\x1b\x01"

#: PLINK's numbers for the human chromosomes beyond the autosomes 1-22: the number and the name
#: are the same chromosome (25, XY, is the pseudo-autosomal region of X; 26, MT, mitochondrial)
CHROM_NUMBERS = {"X": 23, "Y": 24, "XY": 25, "MT": 26}
#: other spellings PLINK 1.9 and 2 read or write for them (``--output-chr M``/``0M``; PLINK 2's
#: ``--split-par`` names the two pseudo-autosomal regions PAR1 and PAR2, both XY)
CHROM_ALIASES = {"M": "MT", "0M": "MT", "0X": "X", "0Y": "Y", "PAR1": "XY", "PAR2": "XY"}


def chrom_code(code) -> str:
    """The chromosome a PLINK or VCF chromosome code names, in one spelling: autosomes as their
    number, the others as X, Y, XY, MT. A ``chr`` prefix, leading zeros, case and PLINK's numbers
    23-26 (human numbering, PLINK's default) are ignored; a code PLINK has no meaning for (an
    unplaced contig, another species' chromosome) is returned as given, less a ``chr`` prefix.

    >>> [chrom_code(c) for c in ("23", "chrX", "x", "24", "25", "PAR1", "26", "chrM", "01", "chr7", "scaffold_9")]
    ['X', 'X', 'X', 'Y', 'XY', 'XY', 'MT', 'MT', '1', '7', 'scaffold_9']
    """
    c = str(code).strip()
    if c[:3].lower() == "chr" and len(c) > 3:
        c = c[3:]
    if c.isdigit():
        number = int(c)
        return next((name for name, k in CHROM_NUMBERS.items() if k == number), str(number))
    up = c.upper()
    if up in CHROM_NUMBERS:
        return up
    return CHROM_ALIASES.get(up, c)


def plink_paths(prefix: str | os.PathLike) -> dict[str, Path]:
    """The three files of a fileset; ``prefix`` may also end in .bed."""
    prefix = str(prefix)
    if prefix.endswith(".bed"):
        prefix = prefix[:-4]
    paths = {ext: Path(prefix + "." + ext) for ext in ("bed", "bim", "fam")}
    missing = [str(p) if missing_reason(p) == "does not exist" else f"{p} (it {missing_reason(p)})"
               for p in paths.values() if not p.exists()]
    if missing:
        raise InputError(f"PLINK fileset {prefix}: missing {', '.join(missing)}")
    return paths


def read_fam(path: Path) -> tuple[list[str], list[str]]:
    """FID and IID of every line of a .fam file (see :func:`parse_fam`)."""
    fid, iid, _, _ = parse_fam(path)
    return fid, iid


def parse_fam(path: Path) -> tuple[list[str], list[str], list[list[str]], list[int]]:
    """A .fam file: FID, IID, the phenotype cells of each line and its line number.

    Six whitespace-separated columns (FID IID father mother sex phenotype), or more: GEMMA's
    example filesets carry one phenotype per column from column 6 on, and PLINK accepts them.
    Every line must have the same number of columns; (FID, IID) pairs must be unique.
    """
    fid, iid, cells, lines = [], [], [], []
    seen: dict[tuple[str, str], int] = {}
    width = None
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 6:
                raise InputError(f"{path} line {lineno}: expected 6 columns "
                                 f"(FID IID father mother sex phenotype), found {len(fields)}")
            if width is None:
                width = (len(fields), lineno)
            elif len(fields) != width[0]:
                raise InputError(f"{path} line {lineno}: {len(fields)} columns, but line {width[1]} has "
                                 f"{width[0]}; every line of a .fam has the same columns (FID IID father "
                                 f"mother sex and one or more phenotypes)")
            key = (fields[0], fields[1])
            if key in seen:
                raise InputError(f"{path} line {lineno}: duplicate sample ID {key[0]}/{key[1]} "
                                 f"(first on line {seen[key]}); sample IDs must be unique")
            seen[key] = lineno
            fid.append(fields[0])
            iid.append(fields[1])
            cells.append(fields[5:])
            lines.append(lineno)
    if not fid:
        raise InputError(f"{path} has no samples")
    return fid, iid, cells, lines


def read_bim(path: Path) -> dict[str, list]:
    """Variant table of a .bim file (6 columns: chrom id cM pos allele1 allele2); variant IDs
    must be unique (:func:`check_unique_variant_ids`)."""
    out = {"chrom": [], "id": [], "pos": [], "allele1": [], "allele2": []}
    lines = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise InputError(f"{path} line {lineno}: expected 6 columns "
                                 f"(chrom id cM pos allele1 allele2), found {len(fields)}")
            try:
                pos = int(fields[3])
            except ValueError:
                raise InputError(f"{path} line {lineno}: position {fields[3]!r} of variant "
                                 f"{fields[1]} is not an integer") from None
            out["chrom"].append(fields[0])
            out["id"].append(fields[1])
            out["pos"].append(pos)
            out["allele1"].append(fields[4])
            out["allele2"].append(fields[5])
            lines.append(lineno)
    if not out["id"]:
        raise InputError(f"{path} has no variants")
    check_unique_variant_ids(out["id"], str(path), unit="line", numbers=lines)
    return out


def check_unique_variant_ids(ids, where: str, unit: str = "variant", numbers=None) -> None:
    """Refuse variant IDs that occur more than once, naming them and where they are.

    Variants are matched by ID wherever two tables meet (a run's SNP effects and a target
    cohort in ``bigmm score``, ``variants.extract`` / ``exclude`` lists): a duplicated ID would
    send an effect to the wrong variant. ``numbers``: the line (or row) number of each ID, for
    the message (default: its 1-based position, called ``unit``).
    """
    ids = np.asarray(ids, dtype=object)
    if ids.size == len(set(ids.tolist())):
        return
    prefix = where[:-4] if where.endswith(".bim") else "PREFIX"
    uniq, first_at, inverse, counts = np.unique(ids.astype(str), return_index=True, return_inverse=True,
                                                return_counts=True)
    dup = np.flatnonzero(counts > 1)
    numbers = np.arange(1, ids.size + 1) if numbers is None else np.asarray(numbers)
    first = dup[np.argsort(first_at[dup], kind="stable")]  # in file order
    shown = []
    for u in first[:5]:
        at = numbers[inverse == u]
        more = f" and {at.size - 4} more" if at.size > 4 else ""
        shown.append(f"{uniq[u]} ({unit}s {', '.join(str(int(x)) for x in at[:4])}{more})")
    raise InputError(
        f"{where}: {dup.size} variant ID(s) occur more than once: {'; '.join(shown)}"
        + (f"; and {dup.size - 5} more" if dup.size > 5 else "")
        + ". bigmm matches variants by ID (SNP effects in bigmm score, variants.extract/exclude), so "
          "a duplicated ID is ambiguous: give every variant a unique ID (plink2 --bfile "
        f"{prefix} --set-all-var-ids '@:#:$r:$a' --new-id-max-allele-len 1000 --make-bed --out NEW) or "
        f"remove the duplicates (plink2 --bfile {prefix} --rm-dup exclude-all --make-bed --out NEW)")


def check_bed(path: Path, n: int, p: int) -> None:
    """Check the .bed magic number, SNP-major mode and size against .fam/.bim counts."""
    with open(path, "rb") as fh:
        head = fh.read(3)
    if head[:2] != BED_MAGIC[:2]:
        raise InputError(f"{path} is not a PLINK .bed file (wrong magic number {head[:2].hex()}, "
                         f"expected 6c1b)")
    if len(head) < 3 or head[2] != 1:
        raise InputError(f"{path} is in sample-major mode or truncated; rewrite it with "
                         f"`plink2 --bfile ... --make-bed`")
    expected = 3 + p * ((n + 3) // 4)
    size = path.stat().st_size
    if size != expected:
        fam, bim = path.with_suffix(".fam"), path.with_suffix(".bim")
        what = "truncated" if size < expected else "longer than expected"
        raise InputError(f"{path} is {what}: {size} bytes, but {fam.name} has {n} samples and "
                         f"{bim.name} has {p} variants, which need {expected} bytes; check that the "
                         f"three files belong together and the .bed was copied completely")


def _check_padding(buf: bytes, paths: dict[str, Path], n: int, v0: int, ids: list[str]) -> None:
    """The unused 2-bit slots closing each variant of a .bed must be zero.

    A .fam a few lines short of the .bed's samples leaves the .bed the same
    size (samples are packed four to a byte), so the size check cannot see it;
    the genotypes of the extra samples then sit in these slots.
    """
    if n % 4 == 0:
        return
    last = np.frombuffer(buf, dtype=np.uint8).reshape(-1, (n + 3) // 4)[:, -1]
    bad = np.flatnonzero(last & ((0xFF << (2 * (n % 4))) & 0xFF))
    if bad.size:
        j = v0 + int(bad[0])
        raise InputError(f"{paths['bed']} holds genotypes for more samples than the {n} in "
                         f"{paths['fam'].name} (first seen at variant {ids[j]}); lines of the .fam "
                         f"are probably missing: check that the three files belong together (if they "
                         f"do, the .bed's padding bits are not zero: rewrite it with "
                         f"`plink --bfile ... --make-bed`)")


@dataclass(frozen=True)
class PlinkFileset:
    """A PLINK fileset's paths, samples and variants, read and checked once (:func:`read_plink`)."""

    paths: dict
    fid: list
    iid: list
    variants: dict
    #: the .fam's phenotype cells (column 6 on) of each sample, and each sample's .fam line
    fam_phenotypes: list = field(default_factory=list, repr=False)
    fam_lines: list = field(default_factory=list, repr=False)

    @property
    def sample_ids(self) -> list[tuple[str, str]]:
        return list(zip(self.fid, self.iid))

    @property
    def n_variants(self) -> int:
        return len(self.variants["id"])


def read_plink(prefix: str | os.PathLike) -> PlinkFileset:
    """Read the .fam and .bim of a fileset and check the .bed against them (magic, mode, size)."""
    paths = plink_paths(prefix)
    fid, iid, pheno, lines = parse_fam(paths["fam"])
    variants = read_bim(paths["bim"])
    check_bed(paths["bed"], len(fid), len(variants["id"]))
    return PlinkFileset(paths=paths, fid=fid, iid=iid, variants=variants, fam_phenotypes=pheno, fam_lines=lines)


def ingest_plink(prefix: str | os.PathLike | PlinkFileset, out: str | os.PathLike, *,
                 chunks: tuple[int, int] = DEFAULT_CHUNKS, overwrite: bool = False,
                 max_block_bytes: int = 256 << 20, num_threads: int | None = None,
                 samples: np.ndarray | None = None, layout: str = DEFAULT_LAYOUT) -> CohortStore:
    """Convert a PLINK .bed/.bim/.fam fileset into a chunked cohort store.

    Streams the .bed in blocks of whole Zarr chunks (at most ``max_block_bytes``
    of int8 in memory), hashing the raw bytes on the way for the provenance
    record, and commits the store by atomic rename: an interrupted ingest leaves
    no store behind.

    Parameters
    ----------
    prefix : path or PlinkFileset
        Fileset prefix (``data/cohort`` for ``data/cohort.bed`` etc.), or a fileset already
        read by :func:`read_plink` (its .fam and .bim are then not read again).
    out : path
        The new store (a directory, conventionally ending in ``.zarr``).
    chunks : (int, int)
        Chunk shape, samples x variants.
    layout : {"2bit", "int8"}
        How the store holds the genotypes (:data:`bigmm.store.LAYOUTS`): four per byte (the default)
        or a byte each; they read back as int8 codes either way.
    samples : int array, optional
        The .fam rows to keep (increasing; PLINK's --keep/--remove): the store holds only these
        samples, as if the fileset had only them. Default: all.
    overwrite : bool
        Replace an existing store at ``out`` (default: an existing store is an error). Only a cohort
        store bigmm made is replaced, and never one that holds the fileset read: anything else at
        ``out`` is an error.

    Examples
    --------
    >>> import tempfile, bigmm
    >>> d = tempfile.mkdtemp()
    >>> _ = bigmm.simulate(20, 30, seed=1, out_plink=f"{d}/c")
    >>> store = bigmm.ingest_plink(f"{d}/c", f"{d}/c.zarr", chunks=(8, 16))
    >>> store.n_samples, store.n_variants, store.chunks
    (20, 30, (8, 16))
    >>> store = bigmm.ingest_plink(f"{d}/c", f"{d}/c.zarr", overwrite=True)   # replaces it
    """
    from bed_reader import open_bed

    fs = prefix if isinstance(prefix, PlinkFileset) else read_plink(prefix)
    paths, fid, iid, variants = fs.paths, fs.fid, fs.iid, fs.variants
    n_fam = len(fid)
    if samples is not None:
        samples = np.asarray(samples, dtype=np.int64)
        if samples.size == 0 or np.any(np.diff(samples) <= 0) or samples[0] < 0 or samples[-1] >= n_fam:
            raise ValueError("samples must be increasing .fam rows")
        fid, iid = [fid[i] for i in samples], [iid[i] for i in samples]
    n, p = len(fid), len(variants["id"])
    cs, cv = min(chunks[0], n), min(chunks[1], p)
    rows_per_block = max(cs, (max_block_bytes // max(cv, 1)) // cs * cs)
    bytes_per_variant = (n_fam + 3) // 4
    t0 = time.perf_counter()
    bed_hash = hashlib.blake2b(digest_size=16)
    check_layout(layout)
    if overwrite:  # only a store bigmm made, and never one that holds the fileset read here
        check_replaceable_store(out, inputs=[p for p in paths.values() if p is not None])
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w")
        arr = new_genotypes(group, (n, p), (cs, cv), layout)
        with open_bed(paths["bed"], iid_count=n_fam, sid_count=p, num_threads=num_threads) as bed, \
                open(paths["bed"], "rb") as raw:
            bed_hash.update(raw.read(3))
            n_blocks = (p + cv - 1) // cv
            progress = Progress(f"ingest {paths['bed'].name}", n_blocks, unit="variant block")
            for b, v0 in enumerate(range(0, p, cv)):
                v1 = min(p, v0 + cv)
                buf = raw.read((v1 - v0) * bytes_per_variant)
                bed_hash.update(buf)
                _check_padding(buf, paths, n_fam, v0, variants["id"])
                for r0 in range(0, n, rows_per_block):
                    r1 = min(n, r0 + rows_per_block)
                    rows = np.s_[r0:r1] if samples is None else samples[r0:r1]
                    block = bed.read(index=(rows, np.s_[v0:v1]), dtype="int8", order="C")
                    block[block < 0] = -1
                    arr[r0:r1, v0:v1] = block
                progress.update(b + 1)
        write_store_tables(group, fid, iid, variants)
        bed_fp = file_fingerprint(paths["bed"], content=False)
        bed_fp["blake2b"] = bed_hash.hexdigest()
        provenance = {
            "source": "plink",
            "prefix": str(resolve_path(str(prefix))),
            "files": {"bed": bed_fp, "bim": file_fingerprint(paths["bim"]),
                      "fam": file_fingerprint(paths["fam"])},
            "counted_allele": "allele1 (.bim column 5)",
            "samples": ("all of the .fam" if samples is None else
                        f"{n} of the {n_fam} of the .fam (sample selection)"),
            "ingested": now_utc(),
        }
        finish_store(group, n, p, provenance)
    log.info("ingest: %d samples x %d variants into %s in %.1f s", n, p, out, time.perf_counter() - t0)
    return open_store(out)
