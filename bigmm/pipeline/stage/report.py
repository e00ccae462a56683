"""report: results.tsv, GCTA's .hsq tables, PLINK's PCA files, report.html and its figures, a GCTA
GRM export if asked, and last of all results.json (written once the run is recorded complete).

No pass over X: it reads the variant statistics once, the GRM's lower triangle once in bands (for
the relatedness summary and the GCTA export), blup.tsv and blup_loo.tsv.
"""

from __future__ import annotations

import logging

import numpy as np
import zarr

from ..._version import __version__
from ...blup import loo_accuracy
from ...io.gcta import gcta_grm_writer
from ...reml import liability_h2
from ...spectrum import RITZ_CONVERGED, unconverged_pcs
from ...store import file_fingerprint, now_utc
from ...tasks import fail_point
from ..outputs import json_safe
from ..report import (FIGURES, ReportData, hsq_file_names, relatedness_summary, write_hsq, write_plink_pca,
                      write_report, write_results, write_results_json)
from ..report_rg import rg_results
from . import Context, Facts, Stage
from .rg import hsq_names as rg_hsq_names
from .rg import pairs_of
from .spectrum import n_pcs_written
from .variant_stats import variant_filters

log = logging.getLogger("bigmm")


def inputs(f: Facts) -> dict:
    """The export prefix, the report settings and the labels file."""
    cfg = f.cfg
    return {"export_gcta": str(cfg.gcta_prefix()), "report": cfg.section_fingerprint("report"),
            "labels": file_fingerprint(cfg.report.labels)}


def extra_files(ctx: Context) -> list[str]:
    """The .hsq tables, PLINK's PCA files, the figures and a GCTA export, besides the outputs."""
    files = [f"hsq/{f}" for f in hsq_file_names(ctx.inp.design.phenotype_names).values()]
    files += ["pca.eigenvec", "pca.eigenval"] + [f"report/{f}.png" for f in FIGURES]
    prefix = ctx.cfg.gcta_prefix()
    if prefix is not None:
        rel = prefix.relative_to(ctx.out)
        files += [f"{rel}.grm.bin", f"{rel}.grm.N.bin", f"{rel}.grm.id"]
    return files


def spectrum_info(ctx: Context, spec) -> dict | None:
    """The spectrum's method, size and diagnostics for results.json (None without a spectrum)."""
    if spec is None:
        return None
    return {"method": spec.method, "requested": ctx.cfg.spectrum.method, "n": spec.n, "k": spec.k,
            "rank": spec.rank, "trace_K": spec.trace_K, "tail_eigenvalue": spec.tail,
            **{k: v for k, v in spec.diagnostics.items() if k != "ritz_residuals"},
            **({"pc_residual_tol": RITZ_CONVERGED, "unconverged_pcs": unconverged_pcs(spec, n_pcs_written(ctx.cfg, spec))}
               if spec.diagnostics.get("ritz_residuals") else {})}


def run_info(ctx: Context, std, spec) -> dict:
    """What results.json records of the run besides the fits."""
    cfg, inp = ctx.cfg, ctx.inp
    info = {
        "bigmm_version": __version__,
        "created": now_utc(),
        "n_samples": int(inp.design.analysed.sum()),
        "n_genotyped": len(inp.ids),
        "n_variants": std.n_kept if std is not None else None,
        "n_variants_total": int(std.keep.size) if std is not None else None,
        "variants_dropped": std.dropped if std is not None else None,
        "standardize": std.standardize if std is not None else None,
        "reml_method": inp.reml_method,
        "spectrum_info": spectrum_info(ctx, spec),
        "design": inp.design.notes,
        "stages": {k: {"seconds": v.get("seconds"), "driver_peak_rss_mib": v.get("driver_peak_rss_mib"),
                       "workers_rss_mib": v.get("workers_rss_mib")}
                   for k, v in ctx.manifest.get("stages", {}).items()},
        "config_fingerprint": cfg.fingerprint(),
        "config": cfg.model_dump(mode="json"),
        # what started the run and what it read (the report's summary names them)
        "command": ctx.command,
        "config_file": None if cfg.source is None else str(cfg.source),
        "inputs": {k: None if v is None else str(v) for k, v in (
            ("genotypes", cfg.genotypes.plink or cfg.genotypes.zarr or cfg.genotypes.vcf_zarr),
            ("GRM", cfg.genotypes.grm), ("phenotype", cfg.phenotypes.file),
            ("covariate", cfg.covariates.file))},
    }
    info["samples_selection"] = inp.selection.get("samples")
    if inp.labels is not None:
        info["report_labels"] = inp.labels[2]
    if std is not None:
        info["variant_filters"] = variant_filters(cfg.variants, std)
    else:  # a given GRM: what it held, and which of its samples were used
        info["grm_input"] = inp.grm_info
    return info


def add_liability_scale(ctx: Context, fits: list) -> None:
    """h² on the liability scale (Lee et al. 2011) for a case-control phenotype with a prevalence."""
    prevalence = ctx.cfg.phenotypes.prevalence
    if prevalence is None:
        return
    d = ctx.inp.design
    for p in fits:
        y = d.Y[d.analysed, d.phenotype_names.index(p["name"])]
        y = y[~np.isnan(y)]
        cases = float(np.mean(y == y.max()))
        hl, hl_se = liability_h2(p["h2"], p["h2_se"], prevalence, cases)
        p.update(prevalence=prevalence, case_fraction=cases, h2_liability=hl, h2_liability_se=hl_se)
        log.info("REML %s: h2 on the liability scale %.4f (SE %.4f): prevalence %g, %.4f of the "
                 "sample cases (Lee et al. 2011)", p["name"], hl, hl_se, prevalence, cases)


def _labels(ctx: Context, data: ReportData) -> None:
    """report.labels (read at validation), else the first categorical covariate, colour the PCs."""
    d = ctx.inp.design
    if ctx.inp.labels is not None:
        column, lab, counts = ctx.inp.labels
        data.labels, data.label_source = (column, lab), counts
    for cov in ([] if data.labels is not None else ctx.cfg.covariates.categorical):
        cols = [j for j, nm in enumerate(d.covariate_names) if nm.startswith(f"{cov}=")]
        ref = (d.notes.get("categorical_reference") or {}).get(cov)
        lab = np.full(d.Z.shape[0], "not analysed", dtype=object)
        lab[d.analysed] = str(ref)
        for j in cols:
            lab[d.analysed & (d.Z[:, j] == 1.0)] = d.covariate_names[j].split("=", 1)[1]
        data.labels = (cov, lab)
        break


def _variant_histograms(ctx: Context, data: ReportData) -> None:
    """MAF and missingness of every variant, from variants.zarr (read once)."""
    try:
        g = zarr.open_group(str(ctx.out / "variants.zarr"), mode="r")
        n_called = np.asarray(g["n_called"][...], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.asarray(g["allele_sum"][...]) / (2.0 * n_called)
        data.maf = np.minimum(f, 1.0 - f)
        data.missing = 1.0 - n_called / float(g.attrs["n_samples"])
    except (OSError, KeyError, ValueError) as exc:  # the report goes on without the histograms
        log.warning("report: variant statistics not shown (%s)", exc)


def _blup_accuracy(ctx: Context, data: ReportData, reml_result) -> None:
    """ĝ against y from blup.tsv, and the leave-one-out accuracies from blup_loo.tsv (spectral)."""
    d = ctx.inp.design
    blup = ctx.out / "blup.tsv"
    if not blup.exists():
        return
    m = len(d.phenotype_names)
    # NA: a sample the GRMs of components.mgrm do not cover (not analysed)
    ghat = np.genfromtxt(blup, skip_header=1, usecols=range(2, 2 + m), ndmin=2, missing_values="NA",
                         filling_values=np.nan)
    data.blup = {name: (ghat[:, j], d.Y[:, j]) for j, name in enumerate(d.phenotype_names)}
    loo = ctx.out / "blup_loo.tsv"  # spectral REML only
    pg = np.genfromtxt(loo, skip_header=1, usecols=range(2, 2 + 2 * m), ndmin=2, missing_values="NA",
                       filling_values=np.nan) if loo.exists() else None
    h2 = {f.name: f.h2 for f in reml_result.fits}
    for j, name in enumerate(d.phenotype_names):
        g, y = ghat[:, j], d.Y[:, j]
        have = np.isfinite(y) & np.isfinite(g)
        acc = {"in_sample": float(np.corrcoef(g[have], y[have])[0, 1])
               if have.sum() > 2 and np.ptp(g[have]) > 0 else float("nan"), "n": int(have.sum())}
        if pg is not None:
            acc.update({k: v for k, v in loo_accuracy(y, pg[:, 2 * j], pg[:, 2 * j + 1], h2[name]).items()
                        if k != "n"})
        data.blup_accuracy[name] = acc


def report_data(ctx: Context, reml_result, stats: Stage, grm: Stage, on_grm_rows=None) -> ReportData:
    """What the report shows besides results.json, from the run's saved outputs: no pass over X.
    Reads the GRM's lower triangle once, in bands of whole chunks (:func:`relatedness_summary`,
    which hands each band to ``on_grm_rows``)."""
    d = ctx.inp.design
    data = ReportData(phenotypes={nm: d.Y[d.analysed, j] for j, nm in enumerate(d.phenotype_names)})
    _labels(ctx, data)
    if ctx.planned(stats):  # a run on a given GRM has no variant statistics to show
        _variant_histograms(ctx, data)
    if (ctx.out / "grm.zarr").exists() and ctx.planned(grm):
        data.relatedness = relatedness_summary(ctx.value(grm)["K"], ctx.inp.ids, on_rows=on_grm_rows)
    _blup_accuracy(ctx, data, reml_result)
    return data


def with_export(ctx: Context, std, reml_result, stats: Stage, grm: Stage) -> ReportData:
    """The report data; with a GCTA export, GCTA's files written from the relatedness section's
    read of K (and one read of N)."""
    prefix = ctx.cfg.gcta_prefix()
    if prefix is None:
        return report_data(ctx, reml_result, stats, grm)
    N, row = ctx.value(grm)["N"], [0]
    with gcta_grm_writer(prefix, ctx.inp.ids, std.n_kept) as write_rows:
        def export(band):
            r0, r1 = row[0], row[0] + band.shape[0]
            write_rows(band, N[r0:r1, 0:r1])
            row[0] = r1
        return report_data(ctx, reml_result, stats, grm, on_grm_rows=export)


def declare(name: str, stats: Stage, grm: Stage, spectrum: Stage, remls: tuple, blups: tuple, rgs: tuple = ()) -> Stage:
    def body(ctx: Context):
        std = ctx.value(stats) if ctx.planned(stats) else None  # none for a given GRM or GRMs
        spec = ctx.value(spectrum) if ctx.inp.spectrum_needed else None
        reml_result = ctx.value(ctx.planned(*remls))
        reml = json_safe(reml_result.to_dict())
        d = ctx.inp.design
        fits = {p["name"]: p for p in reml["phenotypes"]}
        for j, nm in enumerate(d.phenotype_names):  # analysed samples without a value, the same for every method
            if nm in fits:
                fits[nm]["n_missing"] = int(np.isnan(d.Y[d.analysed, j]).sum())
        info = run_info(ctx, std, spec)
        rg = ctx.planned(*rgs)
        if rg is not None:  # the genetic correlations: results.json's rg block and the report's section
            info.update(rg_results(ctx.value(rg), rg_hsq_names(pairs_of(ctx))))
        add_liability_scale(ctx, reml["phenotypes"])
        data = with_export(ctx, std, reml_result, stats, grm)
        for p in reml["phenotypes"]:  # BLUP accuracies (with predict.blup): in results.json
            p.update({f"blup_accuracy_{k}": v for k, v in (data.blup_accuracy.get(p["name"]) or {}).items()
                      if k != "n"})
        hsq_files = hsq_file_names(p["name"] for p in reml["phenotypes"])
        for p in reml["phenotypes"]:  # each phenotype's own .hsq, named in results.json
            p["hsq_file"] = f"hsq/{hsq_files[p['name']]}"
            if hsq_files[p["name"]] != f"{p['name']}.hsq":
                log.info("phenotype %r: GCTA table in %s", p["name"], p["hsq_file"])
        _, doc = write_results(ctx.out, reml, info)
        write_hsq(ctx.out / "hsq", reml)
        fail_point("report-html")
        figures = ctx.cfg.report.figures
        if spec is None:
            write_report(ctx.out, doc, None, None, None, data, figures=figures)
        else:
            write_plink_pca(ctx.out / "pca", ctx.inp.ids, spec.U, spec.s, max(ctx.cfg.covariates.pcs, 20))
            ritz = spec.diagnostics.get("ritz_residuals")
            write_report(ctx.out, doc, spec.s, spec.U[:, :4], np.asarray(ritz) if ritz else None, data,
                         figures=figures)
        return doc, {}

    def upstream(f: Facts) -> tuple:
        return f.pick(*remls) + (f.pick(*blups) if f.cfg.predict.blup else ()) \
            + ((grm,) if f.export_gcta else ()) + tuple(s for s in f.pick(*rgs) if s.needed(f))

    return Stage(name=name, outputs=("results.json", "results.tsv", "report.html"), body=body, inputs=inputs,
                 upstream=upstream, extra_files=extra_files, after_cluster=True,
                 finish=lambda ctx, doc: write_results_json(ctx.out, doc))
