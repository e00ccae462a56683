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
from ..io.tables import PHENO_PREFIX, read_table
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
    """``--chr``: ``autosomes``, or chromosomes and ranges separated by commas (``1-22``, ``1,3,X``),
    in PLINK's codes: 23 is X, 24 Y, 25 XY, 26 MT (either spelling, also in a range: ``22-X``).

    >>> parse_chr("1-3,X"), parse_chr("autosomes"), parse_chr("22-24,26")
    (['1', '2', '3', 'X'], 'autosomes', ['22', 'X', 'Y', 'MT'])
    """
    from ..io.plink import CHROM_NUMBERS, chrom_code

    if text.strip().lower() in ("autosomes", "autosome"):
        return "autosomes"
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"empty chromosome in {text!r}")
        if "-" in part:
            a, _, b = part.partition("-")
            ends = [chrom_code(a), chrom_code(b)]
            ends = [int(e) if e.isdigit() else CHROM_NUMBERS.get(e) for e in ends]
            if None in ends:
                raise argparse.ArgumentTypeError(f"range {part!r} must run between chromosome numbers or "
                                                 f"X, Y, XY, MT, like 1-22 or 22-X")
            lo, hi = ends
            if not 1 <= lo <= hi:
                raise argparse.ArgumentTypeError(f"range {part!r} must go up, from 1 on")
            out += [chrom_code(c) for c in range(lo, hi + 1)]
        else:
            out.append(chrom_code(part))
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"chromosomes repeated in {text!r} (PLINK's 23-26 are X, Y, XY, MT)")
    return out


def _selectors(flag: str, names: bool = True, numbers: bool = True):
    """A flag's value: one or several items separated by commas (the flag may also take several
    values: ``--mpheno 1 3`` is ``--mpheno 1,3``); an item is ``all``, a number from 1 (if
    ``numbers``) or a name (if ``names``). A list per value; :class:`_Items` joins them."""
    number = _bounded(int, 1, what=flag)

    def parse(text: str) -> list:
        out: list = []
        for item in text.split(","):
            item = item.strip()
            if not item:
                raise argparse.ArgumentTypeError(f"empty item in {text!r}")
            if item == "all" and numbers:
                out.append(item)
            elif numbers and (item.isdigit() or item.lstrip("+-").isdigit() or not names):
                out.append(number(item))
            else:
                out.append(item)
        return out
    return parse


class _Items(argparse.Action):
    """A flag of several items (``--mpheno 1,3``, ``--mpheno 1 3``, or the flag given twice):
    their list, in order; ``all`` only alone, no item twice."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or []) + [x for v in values for x in v]
        if "all" in items and len(items) > 1:
            raise argparse.ArgumentError(self, "'all' fits every column: give it alone")
        repeated = sorted({str(x) for x in items if items.count(x) > 1})
        if repeated:
            raise argparse.ArgumentError(self, f"{', '.join(repeated)} given twice")
        setattr(namespace, self.dest, items)


def add_flags(r: argparse.ArgumentParser) -> None:
    """The flags of ``bigmm reml`` (GCTA/PLINK names where they exist)."""
    _input_flags(r)
    _filter_flags(r)
    _model_flags(r)
    _compute_flags(r)
    r.add_argument("--force", action="store_true",
                   help="rerun every stage; also replaces another run's results in DIR")


def _input_flags(r: argparse.ArgumentParser) -> None:
    """The "inputs" group: genotypes or a GRM, phenotypes, covariates and the run directory."""
    g = r.add_argument_group("inputs")
    g.add_argument("--bfile", metavar="PREFIX", help="PLINK .bed/.bim/.fam fileset (genotypes.plink)")
    g.add_argument("--grm", metavar="PREFIX", help="precomputed GRM instead of genotypes: GCTA's "
                   "PREFIX.grm.bin/.grm.N.bin/.grm.id or PLINK 2's PREFIX.rel.bin/.rel.id (genotypes.grm)")
    g.add_argument("--pheno", metavar="FILE", help="phenotype table: FID IID header, or headerless GCTA "
                   f"layout (columns {PHENO_PREFIX}1, {PHENO_PREFIX}2, ...), or GEMMA's with "
                   "--pheno-layout gemma (phenotypes.file)")
    g.add_argument("--pheno-layout", choices=("fid_iid", "gemma"), metavar="fid_iid|gemma",
                   help="layout of --pheno: fid_iid (default; FID IID then values) or gemma (GEMMA's -p "
                   "file: no IDs, no header, one column per phenotype, one row per .fam line in .fam "
                   "order; --mpheno N is GEMMA's -n N) (phenotypes.layout)")
    g.add_argument("--mpheno", type=_selectors("--mpheno"), nargs="+", action=_Items, metavar="N|NAME",
                   help="the phenotype(s) of --pheno to fit: numbers counted from 1 after FID IID "
                   "(default 1, as in GCTA/PLINK), column names, several separated by commas (1,3 or "
                   "bmi,height), or 'all' (phenotypes.columns)")
    g.add_argument("--pheno-name", type=_selectors("--pheno-name", numbers=False), nargs="+", action=_Items,
                   metavar="NAME", help="the phenotype column(s) of --pheno to fit, by header name, "
                   "several separated by commas (PLINK 2; phenotypes.columns)")
    g.add_argument("--pheno-fam", type=_selectors("--pheno-fam", names=False), nargs="+", action=_Items,
                   metavar="N",
                   help="the phenotype in column 5+N of the .fam file (1 = column 6), instead of --pheno; "
                   "several as 1,2 or 1 2, or 'all' (phenotypes.fam)")
    g.add_argument("--covar", metavar="FILE", help="discrete covariates, GCTA layout: every column a "
                   "category (covariates.covar); with --covar-name a table with a header whose named "
                   "columns are used (covariates.file)")
    g.add_argument("--covar-name", type=_selectors("--covar-name", numbers=False), nargs="+", action=_Items,
                   metavar="NAME", help="the covariates of --covar to use, by header name, several "
                   "separated by commas (PLINK 2): a column with a non-numeric value is a category, the "
                   "others quantitative, as in PLINK 2 (covariates.file, .columns, .categorical)")
    g.add_argument("--qcovar", metavar="FILE", help="quantitative covariates, GCTA layout (covariates.qcovar)")
    g.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="run directory (a folder, not a file prefix as GCTA's and PLINK's --out: "
                   "results are DIR/results.tsv, DIR/hsq/NAME.hsq, ...); the configuration is written "
                   f"to DIR/{CONFIG_NAME}")


def _filter_flags(r: argparse.ArgumentParser) -> None:
    """The "sample and variant filters" group (PLINK's names)."""
    f = r.add_argument_group("sample and variant filters")
    f.add_argument("--keep", metavar="FILE", help="FID IID of the samples to keep (samples.keep)")
    f.add_argument("--remove", metavar="FILE", help="FID IID of the samples to drop (samples.remove)")
    f.add_argument("--extract", metavar="FILE", help="IDs of the variants to keep (variants.extract)")
    f.add_argument("--exclude", metavar="FILE", help="IDs of the variants to drop (variants.exclude)")
    f.add_argument("--chr", type=parse_chr, metavar="LIST",
                   help="chromosomes: 1-22, 1,2,X or autosomes (variants.chr)")
    f.add_argument("--maf", type=_bounded(float, 0.0, 0.5, what="--maf"), metavar="F",
                   help="drop variants with minor allele frequency below F (variants.min_maf); like --geno, "
                   "computed over all genotyped samples (GEMMA computes both over the phenotyped samples: "
                   "to reproduce its variant set exactly, give its variants with --extract)")
    f.add_argument("--geno", type=_bounded(float, 0.0, 1.0, what="--geno"), metavar="F",
                   help="drop variants with a missing-call rate above F (variants.max_missing)")
    f.add_argument("--standardize", choices=("gcta", "center", "sample_sd"), metavar="gcta|center|sample_sd",
                   help="genotype standardization of K (variants.standardize): gcta (default; GCTA's GRM, "
                   "PLINK 2's --make-rel), center (GEMMA -gk 1), sample_sd (GEMMA -gk 2; BOLT-REML when "
                   "every genotyped sample is analysed, e.g. with --keep)")


def _model_flags(r: argparse.ArgumentParser) -> None:
    """The "model and methods" group: prevalence, spectrum, REML method, BLUP, GCTA's no-op flags."""
    m = r.add_argument_group("model and methods")
    m.add_argument("--prevalence", type=_bounded(float, 0.0, 1.0, True, True, what="--prevalence"), metavar="K",
                   help="population prevalence of a binary trait (phenotypes.prevalence)")
    m.add_argument("--spectrum", choices=("exact", "randomized", "auto"), help="spectrum.method")
    m.add_argument("--rank", type=_bounded(int, 1, what="--rank"), metavar="K",
                   help="eigenpairs of a randomized spectrum (spectrum.rank)")
    m.add_argument("--method", choices=("spectral", "matrix_free", "components", "components_matrix_free", "auto"),
                   help="reml.method (with a component flag, --components, --mgrm, ..., auto is the default: "
                        "components up to spectrum.exact_max_n samples, components_matrix_free above)")
    m.add_argument("--blup", action="store_true", help="BLUP of the genetic values, blup.tsv (predict.blup)")
    m.add_argument("--rg", type=parse_rg, metavar="all|none|auto|A:B,C:D",
                   help="genetic correlations by bivariate REML (GCTA's --reml-bivar) of every pair of "
                        "phenotypes (all), or of the pairs A:B,C:D named; rg.tsv and rg/*.hsq (rg.pairs)")
    _component_flags(m)
    m.add_argument("--reml", action="store_true",
                   help="accepted for GCTA compatibility; bigmm reml always fits REML")
    m.add_argument("--reml-no-lrt", action="store_true",
                   help="accepted for GCTA compatibility and ignored: the LRTs are always reported (one "
                   "component: free; several: a refit without each component, which on the matrix-free path "
                   "shares the passes over the genotypes with the log det solves, ~70%% more passes)")


def parse_rg(text: str):
    """``--rg``: all, none, auto, or pairs of phenotype names A:B separated by commas."""
    if text in ("all", "none", "auto"):
        return text
    pairs = []
    for item in text.split(","):
        a, sep, b = item.partition(":")
        if not sep or not a or not b or ":" in b:
            raise argparse.ArgumentTypeError(f"--rg {text}: {item!r} is not a pair A:B of phenotype names; give "
                                             f"all, none, or pairs such as bmi:height,bmi:whr")
        pairs.append([a, b])
    return pairs


def _maf_edges(text: str) -> list[float]:
    """``--maf-bins``: comma-separated increasing edges in [0, 0.5].

    >>> _maf_edges("0.01,0.05,0.5")
    [0.01, 0.05, 0.5]
    """
    try:
        edges = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers such as 0.01,0.05,0.5") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0 or edges[-1] > 0.5:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two increasing MAF edges in [0, 0.5], "
                                         f"e.g. 0.01,0.05,0.1,0.5")
    return edges


def _component_flags(c) -> None:
    """Several variance components (GCTA's and BOLT-REML's names; the components section), in the
    "model and methods" group."""
    c.add_argument("--components", metavar="FILE",
                   help="variant ID and component name per line, as BOLT-REML's --modelSnps: one variance "
                   "component per name; variants not listed are in no component (components.file)")
    c.add_argument("--component-lists", nargs="+", metavar="FILE",
                   help="one variant list per component (first field of each line, as GCTA's --extract "
                   "per GRM); the component is named by the file name without its suffix (components.lists)")
    c.add_argument("--mgrm", metavar="FILE",
                   help="file of GRM prefixes, one per line (GCTA's --mgrm; GCTA .grm.bin or PLINK 2 "
                   ".rel.bin): one component per GRM. Without --bfile the samples are those of the first "
                   "GRM (components.mgrm)")
    c.add_argument("--maf-bins", type=_maf_edges, metavar="E1,E2,...",
                   help="MAF bin edges, e.g. 0.01,0.05,0.1,0.5: one component per bin, crossed with "
                   "--components/--component-lists/--by-chromosome (components.maf_bins)")
    c.add_argument("--ld-bins", type=_bounded(int, 1, what="--ld-bins"), metavar="K",
                   help="LD-score quantile bins (4: quartiles) within each MAF bin or component, as "
                   "GREML-LDMS; LD scores from one windowed pass (components.ld_bins)")
    c.add_argument("--ld-window-kb", type=_bounded(float, 0.0, lo_open=True, what="--ld-window-kb"), metavar="KB",
                   help="LD-score window in kb either side (default 200, GCTA's --ld-score-region) "
                   "(components.ld_window_kb)")
    c.add_argument("--ld-window-variants", type=_bounded(int, 1, what="--ld-window-variants"), metavar="N",
                   help="LD-score window in variants either side (components.ld_window_variants)")
    c.add_argument("--by-chromosome", action="store_true",
                   help="one component per chromosome, crossed with the others (components.by_chromosome)")
    c.add_argument("--reml-no-constrain", action="store_true",
                   help="let component variances go negative, as GCTA's --reml-no-constrain "
                   "(components.constrain: false)")


def _compute_flags(r: argparse.ArgumentParser) -> None:
    """The "compute" group: the local Dask cluster's workers, threads and memory."""
    c = r.add_argument_group("compute")
    c.add_argument("--workers", type=_bounded(int, 1, what="--workers"), metavar="N",
                   help="Dask workers (cluster.workers)")
    c.add_argument("--threads", "--thread-num", type=_bounded(int, 1, what="--threads"), metavar="N",
                   help="threads per worker (cluster.threads_per_worker)")
    c.add_argument("--memory", metavar="SIZE", help="memory per worker, e.g. 8GiB (cluster.memory_limit)")


def check_flags(parser: argparse.ArgumentParser, args) -> None:
    """Combinations of flags argparse cannot express; ``parser.error`` (exit 2) names them."""
    if args.bfile is None and args.grm is None and args.mgrm is None:
        parser.error("give the genotypes with --bfile PREFIX (or a precomputed GRM with --grm PREFIX, "
                     "or several with --mgrm FILE)")
    if args.mgrm is not None and args.grm is not None:
        parser.error("give one of --grm PREFIX (one GRM) or --mgrm FILE (several)")
    split = [f for f, v in (("--components", args.components), ("--component-lists", args.component_lists),
                            ("--maf-bins", args.maf_bins), ("--ld-bins", args.ld_bins),
                            ("--by-chromosome", args.by_chromosome)) if v]
    if args.mgrm is not None and split:
        parser.error(f"--mgrm (precomputed GRMs) cannot be combined with {', '.join(split)}")
    if (args.ld_window_kb is not None or args.ld_window_variants is not None) and args.ld_bins is None:
        parser.error("--ld-window-kb / --ld-window-variants are the window of --ld-bins: add it")
    if args.reml_no_constrain and not (split or args.mgrm):
        parser.error("--reml-no-constrain is for several variance components (--components, --mgrm, "
                     "--maf-bins, ...)")
    if (args.pheno is None) == (args.pheno_fam is None):
        parser.error("give the phenotype with one of --pheno FILE or --pheno-fam N")
    for flag in ("mpheno", "pheno_name", "pheno_layout"):
        if getattr(args, flag) is not None and args.pheno is None:
            parser.error(f"--{flag.replace('_', '-')} is about --pheno FILE; with --pheno-fam give the "
                         f"column(s) there")
    if args.mpheno is not None and args.pheno_name is not None:
        parser.error("give the phenotypes with one of --mpheno or --pheno-name")
    if args.covar_name is not None and args.covar is None:
        parser.error("--covar-name picks columns of --covar FILE: add it")
    if "all" in (args.pheno_name or []) or "all" in (args.covar_name or []):
        parser.error("--pheno-name and --covar-name take column names ('all': leave the flag out, "
                     "or --mpheno all)")
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
                "exclude": _abs(args.exclude), "chr": args.chr, "standardize": args.standardize}
    variants = {k: v for k, v in variants.items() if v is not None}
    if variants:
        cfg["variants"] = variants
    pheno: dict = {}
    if args.pheno is not None:
        pheno["file"] = _abs(args.pheno)
        if args.pheno_layout is not None:
            pheno["layout"] = args.pheno_layout
        chosen = args.pheno_name if args.pheno_name is not None else (args.mpheno or [1])
        flag = "--pheno-name" if args.pheno_name is not None else "--mpheno"
        pheno["columns"] = "all" if chosen == ["all"] else \
            phenotype_columns(args.pheno, chosen, layout=args.pheno_layout or "fid_iid", flag=flag)
    else:
        fam = args.pheno_fam  # one column stays a number, as phenotypes.fam: N
        pheno["fam"] = fam[0] if len(fam) == 1 else fam
    if args.prevalence is not None:
        pheno["prevalence"] = args.prevalence
    cfg["phenotypes"] = pheno
    cov: dict = {}
    if args.covar is not None and args.covar_name is not None:
        cov["file"] = _abs(args.covar)
        cov["columns"] = list(args.covar_name)
        categorical = categorical_columns(args.covar, args.covar_name)
        if categorical:
            cov["categorical"] = categorical
    elif args.covar is not None:
        cov["covar"] = _abs(args.covar)
    if args.qcovar is not None:
        cov["qcovar"] = _abs(args.qcovar)
    if cov:
        cfg["covariates"] = cov
    spectrum = {k: v for k, v in (("method", args.spectrum), ("rank", args.rank)) if v is not None}
    if spectrum:
        cfg["spectrum"] = spectrum
    if args.method is not None:
        cfg["reml"] = {"method": args.method}
    if args.blup:
        cfg["predict"] = {"blup": True}
    if args.rg is not None:
        cfg["rg"] = {"pairs": args.rg}
    _add_components(cfg, args)
    cfg["output"] = _abs(str(args.out))
    cluster = {k: v for k, v in (("workers", args.workers), ("threads_per_worker", args.threads),
                                 ("memory_limit", args.memory)) if v is not None}
    if cluster:
        cfg["cluster"] = cluster
    return cfg


def _add_components(cfg: dict, args) -> None:
    """The components section of the component flags, and with ``--mgrm`` alone the first GRM as
    the run's samples."""
    comp = _component_config(args)
    if comp:
        cfg["components"] = comp
        if args.mgrm is not None and args.bfile is None:  # the samples: those of the first GRM
            from ..io.gcta import open_mgrm

            cfg["genotypes"]["grm"] = str(open_mgrm(Path(args.mgrm)).grms[0].bin.resolve())


def _component_config(args) -> dict:
    """The components section the component flags stand for (empty without them)."""
    comp = {"file": _abs(args.components), "mgrm": _abs(args.mgrm),
            "lists": [_abs(p) for p in args.component_lists] if args.component_lists else None,
            "maf_bins": args.maf_bins, "ld_bins": args.ld_bins, "ld_window_kb": args.ld_window_kb,
            "ld_window_variants": args.ld_window_variants, "by_chromosome": args.by_chromosome or None,
            "constrain": False if args.reml_no_constrain else None}
    return {k: v for k, v in comp.items() if v is not None}


def phenotype_columns(path: str, chosen: list, layout: str = "fid_iid", flag: str = "--mpheno") -> list[str]:
    """The names of the phenotype columns ``chosen`` (numbers from 1 after FID IID, or names)
    of a phenotype table: its header's names, or ``PHENO1``, ``PHENO2``, ... in a headerless
    GCTA-layout file. A GEMMA-layout file (read only with the genotypes' samples, when the run
    is checked) has no header: its N-th column is ``PHENO{N}``."""
    if layout == "gemma":
        return [f"{PHENO_PREFIX}{c}" if isinstance(c, int) else c for c in chosen]
    table = read_table(path, "phenotype")
    columns = table.columns
    out = []
    for c in chosen:
        if isinstance(c, int) and c > len(columns):
            raise InputError(f"{flag} {c}: phenotype file {path} has {len(columns)} phenotype column"
                             f"{'s' if len(columns) != 1 else ''} after FID IID"
                             + (f" ({', '.join(columns[:10])})" if columns else ""))
        if isinstance(c, int):
            out.append(columns[c - 1])
            continue
        try:
            out.append(table.column_name(c))
        except InputError as exc:
            raise InputError(f"{flag} {c}: {exc}") from None
    return out


def categorical_columns(path: str, names: list[str]) -> list[str]:
    """The columns ``names`` of a covariate table that hold a value other than a number or a
    missing code: PLINK 2 takes them as categories (``--covar-name``)."""
    table = read_table(path, "covariate")
    out = []
    for name in names:
        try:
            table.column_index(name)
        except InputError as exc:
            raise InputError(f"--covar-name {name}: {exc}") from None
        try:
            table.numeric(name)  # numbers and missing codes only, or an error naming the value
        except InputError:
            out.append(name)
    return out


#: the flag of each configuration key the flag form sets (to name flags in its errors)
FLAG_OF = {"genotypes.plink": "--bfile", "genotypes.grm": "--grm", "phenotypes.file": "--pheno",
           "phenotypes.columns": "--mpheno / --pheno-name", "phenotypes.fam": "--pheno-fam",
           "phenotypes.layout": "--pheno-layout", "variants.standardize": "--standardize",
           "covariates.file": "--covar with --covar-name", "covariates.columns": "--covar-name",
           "covariates.categorical": "--covar-name",
           "phenotypes.prevalence": "--prevalence", "covariates.covar": "--covar",
           "covariates.qcovar": "--qcovar", "samples.keep": "--keep", "samples.remove": "--remove",
           "variants.extract": "--extract", "variants.exclude": "--exclude", "variants.chr": "--chr",
           "variants.min_maf": "--maf", "variants.max_missing": "--geno", "spectrum.method": "--spectrum",
           "spectrum.rank": "--rank", "reml.method": "--method", "predict.blup": "--blup",
           "components.file": "--components", "components.lists": "--component-lists",
           "components.mgrm": "--mgrm", "components.maf_bins": "--maf-bins", "components.ld_bins": "--ld-bins",
           "components.ld_window_kb": "--ld-window-kb", "components.ld_window_variants": "--ld-window-variants",
           "components.by_chromosome": "--by-chromosome", "components.constrain": "--reml-no-constrain",
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
