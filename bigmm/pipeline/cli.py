"""The ``bigmm`` command: argument parsing only; the work is in the run layer and the library."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import shlex
import sys
from pathlib import Path

from .._version import __version__
from ..errors import BigmmError, InputError
from ..io.plink import ingest_plink
from ..simulate import simulate, write_tables
from ..store import DEFAULT_LAYOUT, LAYOUTS, atomic_write_text, check_replaceable_store, convert_store
from ..tasks import TerminalHandler
from .config import load_config
from .flags import add_flags, check_config_file, check_flags, flag_config, write_config_file
from .memory import matmul_rate
from .registry import STAGES
from .rundir import RunInterrupted, lock_holder, read_manifest
from .scoring import score_run
from .stages import genotype_store_line, run, status
from .template import render_template
from .submit import write_job_script
from .validate import check_file

log = logging.getLogger("bigmm")


def _chunks(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected SAMPLES,VARIANTS such as 2048,8192") from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError("chunk sizes must be positive")
    return a, b


class _Parser(argparse.ArgumentParser):
    """argparse that takes flags by their whole name only (``--cov`` is not taken for ``--covar``,
    and a later flag cannot silently change what it stands for) and answers an unknown flag of
    any command with the command's flags nearest to it ("did you mean --covar?")."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def suggest(self, flag: str) -> list[str]:
        """This parser's long flags closest to ``flag`` (a typo, or an abbreviation), best first."""
        names = [o for o in self._option_string_actions if o.startswith("--")]
        close = difflib.get_close_matches(flag, names, n=3, cutoff=0.7)
        longer = [o for o in names if o.startswith(flag) and o not in close]
        return (close + longer)[:3]

    def _unknown(self, flag: str) -> str:
        near = self.suggest(flag)
        also = f" (or {', '.join(near[1:])})" if len(near) > 1 else ""
        return (f"unrecognized argument {flag}" + (f": did you mean {near[0]}{also}?" if near else
                                                   f" ({self.prog} --help lists the flags)"))

    def parse_known_args(self, args=None, namespace=None):
        # an unknown flag is reported before argparse's other checks ("--ot DIR" would first say
        # "--out is required"): a command's flags, or the top parser's up to the command's name
        commands = set()
        if self._subparsers is not None:
            commands = {name for a in self._subparsers._group_actions for name in (a.choices or {})}
        for token in (sys.argv[1:] if args is None else list(args)):
            if token == "--" or token in commands:
                break
            flag = token.split("=", 1)[0]
            if (len(flag) > 1 and flag.startswith("-") and flag not in self._option_string_actions
                    and not self._negative_number_matcher.match(flag)):
                self.error(self._unknown(flag))
        return super().parse_known_args(args, namespace)

    def error(self, message):
        # the top parser's leftovers ("unrecognized arguments: --verbos") get the same suggestion
        if message.startswith("unrecognized arguments: "):
            flags = [t.split("=", 1)[0] for t in message.split(": ", 1)[1].split() if t.startswith("-")]
            if flags:
                message = "; ".join(self._unknown(f) for f in flags)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``bigmm`` parser: the global flags, then one subcommand per command, in --help order."""
    p = _Parser(prog="bigmm", description="Linear mixed models for big genotype cohorts.")
    p.add_argument("--version", action="version", version=f"bigmm {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_reml, _add_init, _add_check, _add_status, _add_submit, _add_score, _add_ingest,
                _add_convert, _add_simulate):
        add(sub)
    return p


def _add_run(sub) -> None:
    """``bigmm run CONFIG``."""
    r = sub.add_parser("run", help="run (or resume) the analysis described by a YAML config")
    r.add_argument("config", type=Path)
    r.add_argument("--force", action="store_true",
                   help="rerun every stage; also replaces another run's results in the output directory")
    r.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help=f"rerun from STAGE on ({', '.join(STAGES)})")


def _add_reml(sub) -> None:
    """``bigmm reml``: GCTA/PLINK-style flags (:func:`add_flags`)."""
    fl = sub.add_parser("reml", help="run (or resume) an analysis given by GCTA/PLINK-style flags; "
                        "writes OUT/config.yaml and runs it as 'bigmm run' does",
                        description="REML with GCTA/PLINK-style flags, no YAML needed. The flags are "
                        "written as a configuration to OUT/config.yaml and run exactly as "
                        "'bigmm run OUT/config.yaml' would: the same flags, or that command, resume it. "
                        "Keys without a flag: 'bigmm init' writes a template of them all.")
    add_flags(fl)
    fl.set_defaults(flag_parser=fl)  # its combination errors are reported as argparse's


def _add_init(sub) -> None:
    """``bigmm init [PATH]``."""
    it = sub.add_parser("init", help="write a commented config template: every key, its default and "
                        "what it does")
    it.add_argument("path", nargs="?", default=Path("bigmm.yaml"), type=Path,
                    help="file to write (default bigmm.yaml; - for standard output)")
    it.add_argument("--force", action="store_true", help="replace an existing file")


def _add_check(sub) -> None:
    """``bigmm check CONFIG``."""
    c = sub.add_parser("check", help="validate a config and all its inputs; report every problem")
    c.add_argument("config", type=Path)
    c.add_argument("--no-cluster", action="store_true", help="do not contact the cluster")


def _add_status(sub) -> None:
    """``bigmm status RUN_DIR``."""
    st = sub.add_parser("status", help="state of each stage of a run directory, and what would rerun")
    st.add_argument("run_dir", type=Path)


def _add_submit(sub) -> None:
    """``bigmm submit CONFIG``."""
    sb = sub.add_parser("submit", help="write (and optionally submit) a SLURM job script that runs the config")
    sb.add_argument("config", type=Path)
    sb.add_argument("--script", type=Path, help="where to write it (default OUTPUT/submit.sbatch)")
    sb.add_argument("--submit", action="store_true", help="also submit it with sbatch")


def _add_score(sub) -> None:
    """``bigmm score``."""
    sc = sub.add_parser("score", help="apply a run's SNP effects to another cohort (PLINK or Zarr)")
    sc.add_argument("--run", required=True, type=Path, help="run directory with snp_effects (predict.snp_effects)")
    src = sc.add_mutually_exclusive_group(required=True)
    src.add_argument("--bfile", help="target PLINK fileset prefix")
    src.add_argument("--zarr", type=Path, help="target cohort store")
    src.add_argument("--vcf-zarr", type=Path, help="target VCF Zarr store")
    sc.add_argument("--out", required=True, type=Path, help="scores table to write (FID IID per phenotype); "
                    "a new file outside the run folder")
    sc.add_argument("--force", action="store_true", help="replace an existing scores table (never an input "
                    "or a file of the run folder)")


def _add_ingest(sub) -> None:
    """``bigmm ingest``."""
    i = sub.add_parser("ingest", help="convert a PLINK .bed/.bim/.fam fileset into a Zarr cohort store")
    i.add_argument("--bfile", required=True, help="PLINK fileset prefix")
    i.add_argument("--out", required=True, type=Path, help="store to create (e.g. cohort.zarr)")
    i.add_argument("--chunks", type=_chunks, default=(2048, 8192), help="SAMPLES,VARIANTS per chunk")
    i.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                   help="how the store holds the genotypes: 2bit (four per byte, the default) or int8 (a byte "
                        "each); both read back the same")
    i.add_argument("--force", action="store_true", help="replace an existing store")


def _add_convert(sub) -> None:
    """``bigmm convert``."""
    c = sub.add_parser("convert", help="copy a cohort store into a new one with another genotype layout",
                       description="Copy a cohort store into a new store whose genotypes are stored in "
                       "--layout (2bit: four genotypes per byte; int8: a byte each), with the same chunks, "
                       "samples and variants. Every chunk is read back and compared with the source before "
                       "the new store appears; the source is never changed, and --out must not exist.")
    c.add_argument("store", type=Path, help="the cohort store to convert")
    c.add_argument("--out", required=True, type=Path, help="the new store (must not exist)")
    c.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT, help="layout of the new store "
                   "(default %(default)s)")


def _add_simulate(sub) -> None:
    """``bigmm simulate``."""
    s = sub.add_parser("simulate", help="simulate a cohort with known heritability",
                       description="Simulate genotypes and phenotypes with known heritability. Each trait is "
                       "y = 1 + 0.5 (age - 50)/10 + 0.3 sex + g + e, with age ~ N(50, 10²) and sex 0/1 "
                       "(F/M, M = 1) in PREFIX.covar.tsv, the genetic value g scaled to variance h2 and "
                       "the noise e to 1 - h2 (both centred): h2 is the heritability once age and sex are "
                       "fitted as covariates (bigmm reml ... --covar PREFIX.covar.tsv --covar-name age,sex; "
                       "in a config covariates.file, columns: [age, sex], categorical: [sex]); a fit "
                       "without them finds about h2 / 1.27 (age and sex add variance 0.25 + 0.3² / 4). "
                       "PREFIX.truth.json records the settings.")
    s.add_argument("--n", type=int, required=True, help="samples")
    s.add_argument("--p", type=int, required=True, help="variants")
    s.add_argument("--h2", type=float, nargs="+", default=[0.5],
                   help="true h2 of each trait, given age and sex (see above)")
    s.add_argument("--out", required=True, help="output prefix: PREFIX.bed/.bim/.fam, "
                   "PREFIX.pheno.tsv, PREFIX.covar.tsv, PREFIX.truth.json")
    s.add_argument("--zarr", action="store_true", help="write a cohort store PREFIX.zarr instead of PLINK")
    s.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                   help="with --zarr: how the store holds the genotypes (2bit or int8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="replace existing files of PREFIX (never files in a "
                   "bigmm run folder, and a PREFIX.zarr only if it is a store bigmm made)")
    s.add_argument("--maf", type=float, nargs=2, default=(0.05, 0.5), metavar=("MIN", "MAX"))
    s.add_argument("--genotype-missing", type=float, default=0.0)
    s.add_argument("--phenotype-missing", type=float, default=0.0)
    s.add_argument("--pops", type=int, default=1, help="populations (Balding-Nichols)")
    s.add_argument("--fst", type=float, default=0.0)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    # on an interactive terminal, live progress bars replace the progress lines (TerminalHandler);
    # to a file or pipe (batch jobs, logs), plain lines only
    handler = TerminalHandler(sys.stderr) if sys.stderr.isatty() else logging.StreamHandler(sys.stderr)
    handler.setLevel(level)  # a run also logs INFO to its run.log, whatever the terminal shows
    handler.setFormatter(logging.Formatter("%(asctime)s bigmm %(levelname)s: %(message)s", "%H:%M:%S"))
    # one terminal handler: main() called again in one process (a notebook, a test) replaces the
    # earlier call's, which may write to a stream that is closed by now
    for old in [h for h in log.handlers if getattr(h, "bigmm_cli", False)]:
        log.removeHandler(old)
    handler.bigmm_cli = True
    log.addHandler(handler)
    log.setLevel(level)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "reml":
        check_flags(args.flag_parser, args)
    _setup_logging(args.verbose, args.quiet)
    try:
        return _dispatch(args, argv)
    except BigmmError as exc:
        print(f"bigmm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bigmm: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except RunInterrupted as exc:
        print(f"bigmm: stopped by signal {exc.signum}; run the same command again to resume",
              file=sys.stderr)
        return 128 + exc.signum


def check_simulate_outputs(prefix: str, zarr: bool, force: bool) -> None:
    """``bigmm simulate`` writes over nothing without ``--force``, and never into a run folder."""
    names = [".zarr"] if zarr else [".bed", ".bim", ".fam"]
    paths = [Path(prefix + ext) for ext in names + [".pheno.tsv", ".covar.tsv", ".truth.json"]]
    there = [p for p in paths if p.exists() or p.is_symlink()]
    if not there:
        return
    if not force:
        raise InputError(f"--out {prefix}: {', '.join(map(str, there))} exist{'s' if len(there) == 1 else ''}; "
                         f"choose another prefix, or add --force to replace them")
    for p in there:
        if (p.parent / "run.json").exists():
            raise InputError(f"--out {prefix}: {p} is in a run folder ({p.parent / 'run.json'}), whose files "
                             f"are the run's own: choose a prefix outside it")
    if zarr:
        check_replaceable_store(paths[0])


def _dispatch(args, argv) -> int:
    """Run the parsed command (its handler in :data:`_COMMANDS`); returns the exit code."""
    handler = _COMMANDS.get(args.command)
    if handler is None:
        raise AssertionError(args.command)
    return handler(args, argv)


def _run_command(args, argv) -> int:
    """``bigmm run`` and ``bigmm reml``: run (or resume) the analysis, print each fit's estimates."""
    written = None
    if args.command == "reml":
        # OUT/config.yaml is written once the inputs are valid, before the first stage
        cfg, text = flag_config(args, argv)
        check_config_file(cfg.source)  # a config.yaml of the user's in OUT: refused before any work
        written = lambda: write_config_file(cfg, text)  # noqa: E731  (under the run's lock)
    else:
        cfg = load_config(args.config)
    outcome = run(cfg, force=args.force, from_stage=getattr(args, "from_stage", None), on_validated=written,
                  command=shlex.join(["bigmm", *argv]))
    if written is not None:
        print(f"configuration: {cfg.source} (rerun or resume: bigmm run {cfg.source})")
    _print_estimates(outcome)
    print(f"results: {outcome.results_json}")
    return 0


def _print_estimates(outcome) -> None:
    """One line per phenotype: h², pve and the variances; another for h² on the liability scale."""
    for f in outcome.result.fits:
        comps = getattr(f, "components", ())
        total = f" (total of {len(comps)} components)" if comps else ""
        lrt = "" if math.isnan(f.lrt_pvalue) else f"\tLRT p={f.lrt_pvalue:.3g}"
        print(f"{f.name}\tn={f.n}\th2={f.h2:.4f}{total}\tSE={f.h2_se:.4f} (scale of K, as GCTA's V(G)/Vp)\t"
              f"pve={f.pve:.4f}\tSE={f.pve_se:.4f} (GEMMA's)\t"
              f"sigma2_g={f.sigma2_g:.4g}\tsigma2_e={f.sigma2_e:.4g}{lrt}")
        for c in comps:
            print(f"{f.name}\tcomponent {c.name}\tvariants={c.n_variants:.0f}\th2={c.h2:.4f}\tSE={c.h2_se:.4f}\t"
                  f"share of h2={c.share:.4f}\tSE={c.share_se:.4f}\tenrichment={c.enrichment:.3g}\t"
                  f"SE={c.enrichment_se:.3g}" + ("" if math.isnan(c.lrt_pvalue) else f"\tLRT p={c.lrt_pvalue:.3g}"))
    doc = json.loads(outcome.results_json.read_text())
    for p in doc.get("phenotypes", []):
        if p.get("h2_liability") is not None:
            print(f"{p['name']}\th2 liability scale={p['h2_liability']:.4f}\tSE={p['h2_liability_se']:.4f}\t"
                  f"(prevalence {p['prevalence']:g}, case fraction {p['case_fraction']:.4f})")
    _print_rg((doc.get("rg") or {}).get("pairs") or [])


def _print_rg(pairs: list, shown: int = 10) -> None:
    """The genetic correlations: each pair when there are few, else their count and the largest |r_g|."""
    def line(p):
        def n(k, f="{:.4f}"):
            return "NA" if p.get(k) is None else f.format(p[k])
        return (f"rg {p['trait_a']} x {p['trait_b']}\tn={p['n']}\trg={n('rg')}\tSE={n('rg_se')}\t"
                f"re={n('re')}\tp(rg=0)={n('p_rg0', '{:.3g}')}" + (f"\t{p['boundary']}" if p.get("boundary") else ""))
    if len(pairs) <= shown:
        for p in pairs:
            print(line(p))
    elif pairs:
        top = max(pairs, key=lambda p: abs(p["rg"]) if p.get("rg") is not None else -1.0)
        print(f"genetic correlations: {len(pairs)} pairs (rg.tsv); the largest |r_g|: " + line(top))


def _init_command(args, argv) -> int:
    """``bigmm init``: write the config template (to standard output for ``-``)."""
    text = render_template()
    if str(args.path) == "-":
        sys.stdout.write(text)
        return 0
    if args.path.exists() and not args.force:
        raise InputError(f"{args.path} exists; choose another path or add --force to replace it")
    atomic_write_text(args.path, text)
    print(f"template: {args.path}; fill in genotypes.plink (or zarr) and phenotypes.file, then "
          f"bigmm check {args.path} and bigmm run {args.path}")
    return 0


def _check_command(args, argv) -> int:
    """``bigmm check``: every problem of the config and its inputs (exit 2), else what the run will do."""
    problems, inputs = check_file(args.config, contact_cluster=not args.no_cluster)
    if problems:
        print(f"{args.config}: {len(problems)} problem{'s' if len(problems) > 1 else ''}", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK")
    print(inputs.describe(flops_per_second=matmul_rate()))
    return 0


def _status_command(args, argv) -> int:
    """``bigmm status``: the run's state, then each stage's state, time and whether it would rerun."""
    rows = status(args.run_dir)
    m = read_manifest(args.run_dir)
    state = m.get("status", "?")
    if state == "running" and lock_holder(args.run_dir) is None:
        state = "stopped (run.json says running, but no bigmm process holds the run: it was killed or could not record its end; see run.log)"
    elif state == "complete" and not (args.run_dir / "results.json").exists():
        state = "incomplete (run.json says complete, but results.json is missing: run the same command again)"
    print(f"{args.run_dir}: run {state}"
          + (f", resume from {m['resume_from']}" if m.get("resume_from") else ""))
    print(f"{'stage':<14} {'state':<24} {'seconds':>9}  would rerun")
    for r in rows:
        sec = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{r['stage']:<14} {r['state']:<24} {sec:>9}  {r['rerun']}")
    store = genotype_store_line(args.run_dir, m)
    if store:
        print(f"genotype store {store}")
    return 0


def _submit_command(args, argv) -> int:
    """``bigmm submit``: write the SLURM job script (and submit it with ``--submit``)."""
    path = write_job_script(load_config(args.config), args.script, submit=args.submit)
    print(f"job script: {path}" + ("" if args.submit else f" (submit it with: sbatch {path})"))
    return 0


def _score_command(args, argv) -> int:
    """``bigmm score``: apply a run's SNP effects to another cohort."""
    path, counts = score_run(args.run, args.out, bfile=args.bfile, zarr_path=args.zarr,
                             vcf_zarr=args.vcf_zarr, force=args.force)
    print(f"scores: {path} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


def _ingest_command(args, argv) -> int:
    """``bigmm ingest``: a PLINK fileset into a Zarr cohort store."""
    if args.out.exists() and not args.force:
        raise InputError(f"{args.out} already exists; remove it, or add --force to replace it")
    store = ingest_plink(args.bfile, args.out, chunks=args.chunks, overwrite=args.force, layout=args.layout)
    print(f"{store.path}: {store.n_samples} samples x {store.n_variants} variants, chunks {store.chunks}, "
          f"layout {store.layout}")
    return 0


def _convert_command(args, argv) -> int:
    """``bigmm convert``: a cohort store copied into a new one with another genotype layout."""
    store = convert_store(args.store, args.out, args.layout)
    conv = store.attrs["provenance"]["converted"]
    print(f"{store.path}: {store.n_samples} samples x {store.n_variants} variants, chunks {store.chunks}, "
          f"layout {store.layout} (from {conv['layout_from']}, {args.store}); every chunk checked against "
          f"the source")
    return 0


def _simulate_command(args, argv) -> int:
    """``bigmm simulate``: a cohort with known heritability, its phenotype and covariate tables."""
    prefix = args.out
    if args.layout != DEFAULT_LAYOUT and not args.zarr:
        raise InputError("--layout is how a cohort store holds the genotypes: give it with --zarr "
                         "(a PLINK fileset has its own layout)")
    check_simulate_outputs(prefix, args.zarr, args.force)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    cohort = simulate(args.n, args.p, h2=args.h2, seed=args.seed, maf=tuple(args.maf),
                      genotype_missing=args.genotype_missing, n_pops=args.pops, fst=args.fst,
                      phenotype_missing=args.phenotype_missing,
                      out_plink=None if args.zarr else prefix,
                      out_zarr=prefix + ".zarr" if args.zarr else None, layout=args.layout)
    write_tables(cohort, prefix + ".pheno.tsv", prefix + ".covar.tsv", prefix + ".truth.json")
    print(f"simulated {args.n} samples x {args.p} variants: {prefix}"
          + (".zarr" if args.zarr else ".bed/.bim/.fam") + f", {prefix}.pheno.tsv, {prefix}.covar.tsv")
    return 0


#: each command's handler: ``handler(args, argv)`` returns the exit code
_COMMANDS = {"run": _run_command, "reml": _run_command, "init": _init_command, "check": _check_command,
             "status": _status_command, "submit": _submit_command, "score": _score_command,
             "ingest": _ingest_command, "convert": _convert_command, "simulate": _simulate_command}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
