"""The flag form of a run (``bigmm reml --bfile ... --pheno ... --out DIR``): GCTA/PLINK-style
flags mapped onto a run configuration, which is written as ``DIR/config.yaml`` and run exactly as
``bigmm run DIR/config.yaml`` would, so that the run is reproducible and resumable (the same
flags, or ``bigmm run DIR/config.yaml``, resume it).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from ..errors import ConfigError, InputError
from ..io.tables import read_table
from ..store import atomic_write_text
from .config import RunConfig, parse_config

#: the configuration the flag form writes into its output directory
CONFIG_NAME = "config.yaml"
#: the first line of that file: bigmm replaces a config.yaml only when it begins so
FLAG_CONFIG_MARK = "# bigmm run configuration made from the flags of"


# -- argument types: a bad value is an argparse error naming the flag ----------------------------

def _bounded(kind, lo=None, hi=None, lo_open=False, hi_open=False, what="value"):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if (lo is not None and (v <= lo if lo_open else v < lo)) or \
                (hi is not None and (v >= hi if hi_open else v > hi)):
            lo_s = "" if lo is None else f"{'>' if lo_open else '≥'} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '≤'} {hi}"
            raise argparse.ArgumentTypeError(f"{what} must be {' and '.join(x for x in (lo_s, hi_s) if x)} "
                                             f"(got {text})")
        return v
    return parse


def parse_chr(text: str) -> list[str] | str:
    """``--chr``: ``autosomes``, or chromosomes and ranges separated by commas (``1-22``, ``1,3,X``).

    >>> parse_chr("1-3,X"), parse_chr("autosomes")
    (['1', '2', '3', 'X'], 'autosomes')
    """
    if text.strip().lower() in ("autosomes", "autosome"):
        return "autosomes"
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"empty chromosome in {text!r}")
        if "-" in part:
            a, _, b = part.partition("-")
            try:
                lo, hi = int(a), int(b)
            except ValueError:
                raise argparse.ArgumentTypeError(f"range {part!r} must be numeric, like 1-22") from None
            if not 1 <= lo <= hi:
                raise argparse.ArgumentTypeError(f"range {part!r} must go up, from 1 on")
            out += [str(c) for c in range(lo, hi + 1)]
        else:
            out.append(part)
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"chromosomes repeated in {text!r}")
    return out


def _mpheno(text: str) -> int | str:
    if text == "all":
        return text
    return _bounded(int, 1, what="--mpheno")(text)


def add_flags(r: argparse.ArgumentParser) -> None:
    """The flags of ``bigmm reml`` (GCTA/PLINK names where they exist)."""
    g = r.add_argument_group("inputs")
    g.add_argument("--bfile", metavar="PREFIX", help="PLINK .bed/.bim/.fam fileset (genotypes.plink)")
    g.add_argument("--grm", metavar="PREFIX", help="precomputed GCTA GRM PREFIX.grm.bin/.N.bin/.id (genotypes.grm)")
    g.add_argument("--pheno", metavar="FILE", help="phenotype table: FID IID header, or headerless GCTA "
                   "layout (phenotypes.file)")
    g.add_argument("--mpheno", type=_mpheno, default=None, metavar="N",
                   help="the N-th phenotype column of --pheno, counted from 1 after FID IID (default 1, "
                   "as in GCTA/PLINK), or 'all' (phenotypes.columns)")
    g.add_argument("--pheno-fam", type=_bounded(int, 1, what="--pheno-fam"), metavar="N",
                   help="the phenotype in column N of the .fam file, instead of --pheno (phenotypes.fam)")
    g.add_argument("--covar", metavar="FILE", help="discrete covariates, GCTA layout (covariates.covar)")
    g.add_argument("--qcovar", metavar="FILE", help="quantitative covariates, GCTA layout (covariates.qcovar)")
    g.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help=f"run directory (output); the configuration is written to DIR/{CONFIG_NAME}")
    f = r.add_argument_group("sample and variant filters")
    f.add_argument("--keep", metavar="FILE", help="FID IID of the samples to keep (samples.keep)")
    f.add_argument("--remove", metavar="FILE", help="FID IID of the samples to drop (samples.remove)")
    f.add_argument("--extract", metavar="FILE", help="IDs of the variants to keep (variants.extract)")
    f.add_argument("--exclude", metavar="FILE", help="IDs of the variants to drop (variants.exclude)")
    f.add_argument("--chr", type=parse_chr, metavar="LIST",
                   help="chromosomes: 1-22, 1,2,X or autosomes (variants.chr)")
    f.add_argument("--maf", type=_bounded(float, 0.0, 0.5, what="--maf"), metavar="F",
                   help="drop variants with minor allele frequency below F (variants.min_maf)")
    f.add_argument("--geno", type=_bounded(float, 0.0, 1.0, what="--geno"), metavar="F",
                   help="drop variants with a missing-call rate above F (variants.max_missing)")
    m = r.add_argument_group("model and methods")
    m.add_argument("--prevalence", type=_bounded(float, 0.0, 1.0, True, True, what="--prevalence"), metavar="K",
                   help="population prevalence of a binary trait (phenotypes.prevalence)")
    m.add_argument("--spectrum", choices=("exact", "randomized", "auto"), help="spectrum.method")
    m.add_argument("--rank", type=_bounded(int, 1, what="--rank"), metavar="K",
                   help="eigenpairs of a randomized spectrum (spectrum.rank)")
    m.add_argument("--method", choices=("spectral", "matrix_free", "auto"), help="reml.method")
    m.add_argument("--blup", action="store_true", help="BLUP of the genetic values, blup.tsv (predict.blup)")
    c = r.add_argument_group("compute")
    c.add_argument("--workers", type=_bounded(int, 1, what="--workers"), metavar="N",
                   help="Dask workers (cluster.workers)")
    c.add_argument("--threads", "--thread-num", type=_bounded(int, 1, what="--threads"), metavar="N",
                   help="threads per worker (cluster.threads_per_worker)")
    c.add_argument("--memory", metavar="SIZE", help="memory per worker, e.g. 8GiB (cluster.memory_limit)")
    r.add_argument("--force", action="store_true",
                   help="rerun every stage; also replaces another run's results in DIR")


def check_flags(parser: argparse.ArgumentParser, args) -> None:
    """Combinations of flags argparse cannot express; ``parser.error`` (exit 2) names them."""
    if args.bfile is None and args.grm is None:
        parser.error("give the genotypes with --bfile PREFIX (or a precomputed GRM with --grm PREFIX)")
    if (args.pheno is None) == (args.pheno_fam is None):
        parser.error("give the phenotype with one of --pheno FILE or --pheno-fam N")
    if args.mpheno is not None and args.pheno is None:
        parser.error("--mpheno picks a column of --pheno; with --pheno-fam give the column there")
    if args.rank is not None and args.spectrum not in ("randomized", "auto"):
        parser.error("--rank is the rank of a randomized spectrum: add --spectrum randomized (or auto)")


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def config_from_flags(args) -> dict:
    """The configuration mapping the flags stand for: only the keys the flags set (the rest keep
    their defaults), paths made absolute from the current directory."""
    cfg: dict = {"genotypes": {}}
    if args.bfile is not None:
        bfile = args.bfile[:-4] if args.bfile.endswith(".bed") else args.bfile
        cfg["genotypes"]["plink"] = _abs(bfile)
    if args.grm is not None:
        cfg["genotypes"]["grm"] = _abs(args.grm)
    if args.keep or args.remove:
        cfg["samples"] = {k: _abs(v) for k, v in (("keep", args.keep), ("remove", args.remove)) if v}
    variants = {"min_maf": args.maf, "max_missing": args.geno, "extract": _abs(args.extract),
                "exclude": _abs(args.exclude), "chr": args.chr}
    variants = {k: v for k, v in variants.items() if v is not None}
    if variants:
        cfg["variants"] = variants
    pheno: dict = {}
    if args.pheno is not None:
        pheno["file"] = _abs(args.pheno)
        pheno["columns"] = "all" if args.mpheno == "all" else [phenotype_column(args.pheno, args.mpheno or 1)]
    else:
        pheno["fam"] = args.pheno_fam
    if args.prevalence is not None:
        pheno["prevalence"] = args.prevalence
    cfg["phenotypes"] = pheno
    cov = {k: _abs(v) for k, v in (("covar", args.covar), ("qcovar", args.qcovar)) if v}
    if cov:
        cfg["covariates"] = cov
    spectrum = {k: v for k, v in (("method", args.spectrum), ("rank", args.rank)) if v is not None}
    if spectrum:
        cfg["spectrum"] = spectrum
    if args.method is not None:
        cfg["reml"] = {"method": args.method}
    if args.blup:
        cfg["predict"] = {"blup": True}
    cfg["output"] = _abs(str(args.out))
    cluster = {k: v for k, v in (("workers", args.workers), ("threads_per_worker", args.threads),
                                 ("memory_limit", args.memory)) if v is not None}
    if cluster:
        cfg["cluster"] = cluster
    return cfg


def phenotype_column(path: str, n: int) -> str:
    """The name of the ``n``-th phenotype column (from 1, after FID IID) of a table with a header,
    or ``"n"`` in a headerless GCTA-layout file (whose columns are named by position)."""
    columns = read_table(path, "phenotype").columns
    if n > len(columns):
        raise InputError(f"--mpheno {n}: phenotype file {path} has {len(columns)} phenotype column"
                         f"{'s' if len(columns) != 1 else ''} after FID IID"
                         + (f" ({', '.join(columns[:10])})" if columns and not columns[0].isdigit() else ""))
    return columns[n - 1]


#: the flag of each configuration key the flag form sets (to name flags in its errors)
FLAG_OF = {"genotypes.plink": "--bfile", "genotypes.grm": "--grm", "phenotypes.file": "--pheno",
           "phenotypes.columns": "--mpheno", "phenotypes.fam": "--pheno-fam",
           "phenotypes.prevalence": "--prevalence", "covariates.covar": "--covar",
           "covariates.qcovar": "--qcovar", "samples.keep": "--keep", "samples.remove": "--remove",
           "variants.extract": "--extract", "variants.exclude": "--exclude", "variants.chr": "--chr",
           "variants.min_maf": "--maf", "variants.max_missing": "--geno", "spectrum.method": "--spectrum",
           "spectrum.rank": "--rank", "reml.method": "--method", "predict.blup": "--blup",
           "cluster.workers": "--workers", "cluster.threads_per_worker": "--threads",
           "cluster.memory_limit": "--memory", "output": "--out"}


def flag_config(args, argv: list[str]) -> tuple[RunConfig, str]:
    """The configuration of the flags (its source is ``OUT/config.yaml``, not yet written) and
    the text of that file: a commented header naming the command line, then the keys set."""
    raw = config_from_flags(args)
    path = Path(raw["output"]) / CONFIG_NAME
    try:
        cfg = parse_config(raw, base=Path.cwd(), source=path)
    except ConfigError as exc:  # the schema's message names the config key
        raise ConfigError(f"the flags make an invalid configuration (each key's flag is in "
                          f"bigmm reml --help): {exc}") from None
    header = (f"{FLAG_CONFIG_MARK}\n"
              f"#   {shlex.join(['bigmm', *argv])}\n"
              f"# (run in {Path.cwd()}; paths are absolute). Rerun or resume it with\n"
              f"#   bigmm run {path}\n"
              f"# or the same command line. Keys not written here have their defaults (bigmm init).\n")
    return cfg, header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=False)


def check_config_file(path: Path) -> None:
    """Refuse to replace a ``config.yaml`` that bigmm did not write (its first line is not
    :data:`FLAG_CONFIG_MARK`): it is the user's own file."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200).decode(errors="replace").rstrip("\n")
    except OSError:
        first = ""
    if path.is_symlink() or first != FLAG_CONFIG_MARK:
        raise InputError(f"{path} exists and was not written by bigmm reml (its first line is not "
                         f"{FLAG_CONFIG_MARK!r}): it is not replaced; choose another --out, or run that "
                         f"configuration with bigmm run {path}")


def write_config_file(cfg: RunConfig, text: str) -> None:
    """Write the flag form's config file (atomically; called under the run's lock) and check that
    it reads back as ``cfg``. A ``config.yaml`` bigmm did not write is never replaced."""
    from .config import load_config

    check_config_file(Path(cfg.source))
    atomic_write_text(Path(cfg.source), text)
    back = load_config(cfg.source)
    if back != cfg:  # pragma: no cover - the written file must stand for the run exactly
        raise AssertionError(f"{cfg.source} does not read back as the configuration of the flags")
