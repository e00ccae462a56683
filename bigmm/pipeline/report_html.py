"""``report.html``: one function per section, each returning its HTML ("" when it has nothing to
show), and :func:`write_report`, which puts them on one self-contained page (images inline as
data URIs) and writes the figures to ``report/*.png``."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from ..store import atomic_file, atomic_write_text
from .report_data import MAX_LABELS, ReportData, is_components, label_groups, vp_and_se
from .report_figures import MAX_COMPONENT_PHENOTYPES, MAX_COMPONENTS_SHOWN, make_figures
from .report_rg import RG_CAPTION, rg_section

#: escapes user text (names, paths, labels) on the page
_e = html.escape

#: the report's sections (``<section id=...>``), in order; a section with nothing to show is left out
SECTIONS = ("summary", "estimates", "fixed-effects", "samples", "phenotypes", "matrix-free", "variants",
            "relatedness", "spectrum", "profiles", "blup", "stages")
#: every section in page order: SECTIONS, a several-component fit's "Variance components" after the
#: estimates and, when rg.pairs asks for them, the genetic correlations after that
COMPONENTS_SECTIONS = SECTIONS[:2] + ("components", "rg") + SECTIONS[2:]


def _num(v, f="{:.4f}"):
    return "NA" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)


def _table(header, rows, e) -> str:
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows) + "</table>")


def _spectrum_extras(sp: dict, e) -> str:
    """Rows for whatever trace-share / convergence figures the spectrum stage recorded."""
    rows = []
    for key, v in sp.items():
        if not any(t in key for t in ("trace_share", "share", "converged", "convergence")):
            continue
        if isinstance(v, list):
            if v and all(isinstance(x, bool) for x in v):
                shown = f"{sum(v)} of {len(v)} eigenpairs converged" + (
                    "" if all(v) else f" (not: {', '.join(str(i + 1) for i, x in enumerate(v) if not x)[:200]})")
            elif v and all(isinstance(x, (int, float)) or x is None for x in v):
                xs = [x for x in v if x is not None]
                shown = f"{len(v)} values, min {min(xs):.3g}, max {max(xs):.3g}" if xs else "none"
            else:
                shown = json.dumps(v)[:300]
        elif isinstance(v, float):
            shown = f"{v:.4f}"
        elif isinstance(v, dict):
            shown = ", ".join(f"{k}: {_num(x, '{:.4g}') if isinstance(x, float) else x}" for k, x in v.items())
        else:
            shown = str(v)
        rows.append((key, shown))
    if not rows:
        return ""
    return "<h3>Captured share and convergence</h3>" + _table(["figure", "value"], rows, e)



def write_report(outdir: Path, doc: dict, s, U, ritz=None, data: ReportData | None = None,
                 figures: bool = True) -> Path:
    """``report.html`` (self-contained: images inline as data URIs) and ``report/*.png``
    (one per :data:`FIGURES` that applies; none without ``figures``)."""
    outdir = Path(outdir)
    data = data or ReportData()
    figs = make_figures(doc, s, U, ritz, data) if figures else {}
    for name, png in figs.items():
        with atomic_file(outdir / "report" / f"{name}.png", "wb") as fh:
            fh.write(png)
    phen = doc.get("phenotypes") or []
    sp = doc.get("spectrum_info") or {}
    components = components_section(phen, figs)  # only on the page of a several-component fit
    page = _page([summary_section(doc), estimates_section(phen), *([components] if components else []),
                  rg_section(doc, _img(figs, "rg", RG_CAPTION)), fixed_effects_section(phen),
                  samples_section(doc.get("design") or {}, phen), phenotypes_section(figs),
                  matrix_free_section(phen), variants_section(doc, data, figs),
                  relatedness_section(data.relatedness, figs), spectrum_section(sp, data, figs),
                  profiles_section(figs), blup_section(data), stages_section(doc)])
    path = outdir / "report.html"
    atomic_write_text(path, page)
    return path


def _img(figs: dict, name: str, alt: str) -> str:
    """A figure inline as a data URI, with ``alt`` as its caption ("" if the run has no such figure)."""
    if name not in figs:
        return ""
    b64 = base64.b64encode(figs[name]).decode()
    return (f'<figure><img id="fig-{name}" src="data:image/png;base64,{b64}" alt="{_e(alt)}">'
            f'<figcaption>{_e(alt)}</figcaption></figure>')


def summary_section(doc: dict) -> str:
    """Run summary: version, command, inputs, sample and variant counts, methods, conventions."""
    num = _num
    sp = doc.get("spectrum_info") or {}
    inputs = doc.get("inputs") or {}
    summary = [
        ("bigmm version", doc.get("bigmm_version")), ("created", doc.get("created")),
        ("command line", doc.get("command") or "none recorded (run from Python: bigmm.run)"),
        ("configuration file", doc.get("config_file") or "none (a configuration given in Python)"),
        *((f"{what} input", path) for what, path in inputs.items() if path),
        ("genotyped samples", doc.get("n_genotyped")), ("analysed samples", doc.get("n_samples")),
        ("variants used", doc.get("n_variants_kept", doc.get("n_variants"))), ("variants in the data", doc.get("n_variants_total")),
        ("variants dropped", ", ".join(f"{k} {v}" for k, v in (doc.get("variants_dropped") or {}).items() if v) or "none"),
        ("standardization", doc.get("standardize")),
        ("REML method", doc.get("reml_method") or "spectral"),
        ("spectrum", (f"{sp.get('method')} (requested {sp.get('requested')}), n = {sp.get('n')}, k = {sp.get('k')}"
                      + (f", {sp.get('passes_over_X')} passes over X, max Ritz residual {num(sp.get('max_ritz_residual'), '{:.2e}')}"
                         if sp.get("passes_over_X") else "")) if sp else "none"),
        ("log-likelihood convention", doc.get("logl_convention")),
        ("config fingerprint", doc.get("config_fingerprint")),
    ]
    if is_components(doc.get("phenotypes") or []):  # a several-component fit: its components and total h²
        summary[-2:-2] = components_summary(doc)
    return ('<section id="summary"><h2>Run summary</h2>'
            f'{_table(["", ""], summary, _e).replace("<tr><th></th><th></th></tr>", "")}</section>')


def estimates_section(phen: list) -> str:
    """Estimates: h², the variance components, Vp, pve and the LRT per phenotype; with a prevalence,
    h² on the liability scale."""
    num = _num
    rows = []
    for p in phen:
        h, se = p.get("h2"), p.get("h2_se")
        ci = "NA" if se is None or h is None else f"[{max(0.0, h - 1.96 * se):.3f}, {min(1.0, h + 1.96 * se):.3f}]"
        vp, vp_se = vp_and_se(p)
        rows.append((p.get("name"), p.get("n"), num(h), num(se), ci, num(p.get("sigma2_g")), num(p.get("sigma2_g_se")),
                     num(p.get("sigma2_e")), num(p.get("sigma2_e_se")), num(vp), num(vp_se), num(p.get("pve")),
                     num(p.get("lrt_pvalue"), "{:.3g}"), p.get("boundary") or "-", p.get("missing_method"),
                     p.get("h2_se_method")))
    estimates = _table(["phenotype", "n", "h²", "SE", "95% CI", "σ²<sub>g</sub>", "SE", "σ²<sub>e</sub>", "SE", "Vp", "SE", "pve",
                        "LRT p", "boundary", "missing", "SE method"], rows, _e)
    if is_components(phen):  # the totals of a several-component fit (its components: their own section)
        return ('<section id="estimates"><h2>Estimates</h2>\n'
                '<p>The totals over the variance components: h² = σ²<sub>g</sub> / Vp with σ²<sub>g</sub> = '
                'Σ<sub>j</sub> σ²<sub>j</sub> and Vp = σ²<sub>g</sub> + σ²<sub>e</sub> (SEs from the inverse '
                'average-information matrix); 95% confidence interval h² ± 1.96 SE, clipped to [0, 1]. LRT p-value '
                'for all components = 0 by GCTA\'s rule, ½ P(χ²<sub>m</sub> &gt; LRT) with m components (unconstrained '
                'fit: P(χ²<sub>m</sub> &gt; LRT)).</p>\n' + estimates + liability_table(phen) + '</section>')
    return ('<section id="estimates"><h2>Estimates</h2>\n'
            '<p>h² = σ²<sub>g</sub> / Vp with Vp = σ²<sub>g</sub> + σ²<sub>e</sub> (its SE from the covariance of '
            'the two); 95% confidence interval\nh² ± 1.96 SE, clipped to [0, 1]. LRT p-value for h² = 0 from '
            '½χ²₀ + ½χ²₁.</p>\n' + estimates + liability_table(phen) + '</section>')


def components_summary(doc: dict) -> list[tuple[str, str]]:
    """The run summary's rows of a several-component fit: the components and each phenotype's
    total h² (the first 10 phenotypes)."""
    phen = doc["phenotypes"]
    names = [str(c["name"]) for c in phen[0]["components"]]
    total = "; ".join(f"{p.get('name')} {_pm(p.get('h2'), p.get('h2_se'))}" for p in phen[:10])
    counts = [_dash(c.get("n_variants"), "{:.0f}") for c in phen[0]["components"]]
    shown = ", ".join(f"{nm} ({k})" for nm, k in zip(names[:20], counts)) \
        + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    return [("variance components (variants)", f"{len(names)}: {shown}"
             + ("" if doc.get("constrain") is None else
                " (each σ²ⱼ ≥ 0, GCTA's constraint)" if doc.get("constrain") else " (unconstrained)")),
            ("total h² (sum of the components) ± SE", total + (f"; ... ({len(phen) - 10} more)" if len(phen) > 10 else ""))]


def _dash(v, f="{:.4f}"):
    """A number, or "—" where there is none (NaN, null)."""
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)


def _pm(v, se, f="{:.4f}"):
    """``estimate ± SE``; "—" for either that is missing."""
    return "—" if _dash(v, f) == "—" else f"{_dash(v, f)} ± {_dash(se, f)}"


def components_section(phen: list, figs: dict) -> str:
    """Variance components: per phenotype a table of each component's variants, h²ⱼ, share of h²
    and enrichment with their SEs and its LRT p-value, and the figure of shares and enrichments."""
    if not is_components(phen):
        return ""
    mc = any(c.get("h2_se_mc") is not None for p in phen for c in p["components"])  # a matrix-free fit
    header = ["component", "variants", "σ²<sub>j</sub> ± SE", "h²<sub>j</sub> ± SE", "share of h² ± SE",
              "enrichment ± SE", "LRT p", "at bound 0"] + (["h²<sub>j</sub> SD (Monte Carlo)"] if mc else [])
    tables = []
    for p in phen:
        rows = [(c.get("name"), _dash(c.get("n_variants"), "{:.0f}"), _pm(c.get("sigma2"), c.get("sigma2_se"), "{:.4g}"),
                 _pm(c.get("h2"), c.get("h2_se")), _pm(c.get("share"), c.get("share_se")),
                 _pm(c.get("enrichment"), c.get("enrichment_se"), "{:.3f}"), _dash(c.get("lrt_pvalue"), "{:.3g}"),
                 "yes" if c.get("boundary") else "-") + ((_dash(c.get("h2_se_mc")),) if mc else ())
                for c in p["components"]]
        rows.append(("total", _dash(sum(c.get("n_variants") or 0 for c in p["components"]) or None, "{:.0f}"),
                     _pm(p.get("sigma2_g"), p.get("sigma2_g_se"), "{:.4g}"), _pm(p.get("h2"), p.get("h2_se")),
                     "1", "1", _dash(p.get("lrt_pvalue"), "{:.3g}"), "yes" if p.get("boundary") else "-")
                    + ((_dash(p.get("h2_se_mc")),) if mc else ()))
        tables.append(f"<h3>{_e(str(p.get('name')))} (n = {_e(str(p.get('n')))})</h3>" + _table(header, rows, _e))
    nq, m = len(phen), len(phen[0]["components"])
    capped = ((f" The figure shows the first {MAX_COMPONENT_PHENOTYPES} of {nq} phenotypes." if nq > MAX_COMPONENT_PHENOTYPES else "")
              + (f" The figure shows the first {MAX_COMPONENTS_SHOWN} of {m} components." if m > MAX_COMPONENTS_SHOWN else ""))
    return ('<section id="components"><h2>Variance components</h2>\n'
            '<p>V = Σ<sub>j</sub> σ²<sub>j</sub> K<sub>j</sub> + σ²<sub>e</sub> I, one GRM K<sub>j</sub> per component '
            '(its variants). h²<sub>j</sub> = σ²<sub>j</sub> / Vp (GCTA\'s V(Gj)/Vp); share = σ²<sub>j</sub> / '
            'Σ<sub>k</sub> σ²<sub>k</sub>, its part of the total h²; enrichment = share / (its share of the variants), '
            '1 where h² per variant is the same in every component. SEs from the inverse average-information '
            'matrix, carried to the ratios by the delta method; "—": not available. LRT p: the test of '
            'σ²<sub>j</sub> = 0 against the fit without component j (row "total": of all components = 0). '
            '"At bound 0": the estimate is held at 0 by the constraint σ²<sub>j</sub> ≥ 0.'
            + (" SD (Monte Carlo): the spread of the matrix-free estimate due to its random probes." if mc else "")
            + capped + "</p>"
            + _img(figs, "components", "Share of h² and enrichment per component with 95% intervals (±1.96 SE)")
            + "".join(tables) + "</section>")


def liability_table(phen: list) -> str:
    """The estimates on the liability scale of the phenotypes with a prevalence ("" if none)."""
    num = _num
    liability = [(p.get("name"), num(p.get("prevalence"), "{:g}"), num(p.get("case_fraction")), num(p.get("h2")),
                  num(p.get("h2_se")), num(p.get("h2_liability")), num(p.get("h2_liability_se")))
                 for p in phen if p.get("h2_liability") is not None]
    if not liability:
        return ""
    return ('<h3 id="liability">Liability scale</h3><p>A case/control phenotype (cases: its larger value) '
            'with <code>phenotypes.prevalence</code> K: h² above is on the observed 0/1 scale; on the '
            'liability scale h²<sub>L</sub> = h² K²(1 − K)² / (z² P(1 − P)), z the standard normal density at '
            'the threshold Φ⁻¹(1 − K), P the case fraction of the analysed samples; its SE is the observed '
            'scale SE times the same factor (Lee et al. 2011, as GCTA\'s V(G)/Vp_L).</p>'
            + _table(["phenotype", "prevalence K", "case fraction P", "h² (observed)", "SE",
                      "h²<sub>L</sub> (liability)", "SE"], liability, _e))


def fixed_effects_section(phen: list) -> str:
    """Fixed effects: each phenotype's GLS estimates at the REML variances, SE and z."""
    num = _num
    fe_rows = [(p.get("name"), fe.get("name"), num(fe.get("estimate"), "{:.6g}"), num(fe.get("se"), "{:.4g}"),
                num(fe["estimate"] / fe["se"], "{:.2f}") if fe.get("se") and fe.get("estimate") is not None else "NA")
               for p in phen for fe in (p.get("fixed_effects") or [])]
    fe_section = "" if not fe_rows else (
        '<section id="fixed-effects"><h2>Fixed effects</h2><p>Generalised least squares at the REML '
        'variances; SE from (ZᵀV⁻¹Z)⁻¹; z = estimate / SE. Categorical covariates are coded against '
        'their reference level.</p>' + _table(["phenotype", "effect", "estimate", "SE", "z"], fe_rows, _e)
        + "</section>")
    return fe_section


def samples_section(design: dict, phen: list) -> str:
    """Samples: why each genotyped sample was left out, how the rows of each input file matched,
    and per phenotype the samples with a value; the design's warnings."""
    sample_rows = []
    for m in design.get("matches") or []:
        sample_rows.append((m.get("what"), m.get("file"), m.get("rows"), m.get("rows_matched"),
                            m.get("genotyped_without_row"), m.get("rows_matching_if_swapped"),
                            m.get("rows_matching_by_iid_only")))
    n_gen = design.get("n_genotyped")
    excluded = exclusion_counts(design)
    per_pheno = [(p.get("name"), p.get("n"), p.get("n_missing")) for p in phen]  # n_missing: of the analysed
    return "" if not (sample_rows or excluded) else (
        '<section id="samples"><h2>Samples</h2>'
        + (f"<p>{n_gen} genotyped samples; each sample left out is counted under the first reason that "
           "applies.</p>" + _table(["samples", "count"], excluded, _e) if excluded else "")
        + ("<h3>Input files</h3>" + _table(["table", "file", "rows", "rows matching a genotyped sample",
                                            "genotyped samples without a row", "rows matching if FID/IID swapped",
                                            "rows matching by IID only"], sample_rows, _e) if sample_rows else "")
        + ("<h3>Per phenotype</h3>" + _table(["phenotype", "samples with a value", "analysed samples without one"],
                                             per_pheno, _e) if per_pheno else "")
        + "".join(f'<p class="warn">{_e(w)}</p>' for w in design.get("warnings") or []) + "</section>")


def exclusion_counts(design: dict) -> list[tuple[str, int]]:
    """(reason, samples) rows: each genotyped sample counted under the first reason it was left
    out, then the analysed ones ([] when the design has no sample counts)."""
    n_gen = design.get("n_genotyped")
    excluded = []
    if n_gen is not None:
        in_ph = design.get("n_in_phenotype_file")
        miss_cov = design.get("n_missing_covariates") or 0
        n_an = design.get("n_analysed")
        if in_ph is not None:
            excluded.append(("no row in the phenotype file", n_gen - in_ph))
        excluded.append(("a covariate missing (or no row in a covariate file)", miss_cov))
        if in_ph is not None and n_an is not None:
            excluded.append(("no value of any phenotype", max(0, in_ph - miss_cov - n_an)))
        excluded.append(("analysed", n_an))
    return excluded


def phenotypes_section(figs: dict) -> str:
    """Phenotype distributions: the histograms of the analysed values."""
    return "" if "phenotypes" not in figs else (
        '<section id="phenotypes"><h2>Phenotype distributions</h2><p>Values of the analysed samples, '
        'before covariates are fitted.</p>' + _img(figs, "phenotypes", "Phenotype histograms") + "</section>")


def matrix_free_section(phen: list) -> str:
    """Matrix-free REML: Lanczos steps, passes, convergence, probes and SEs of each matrix-free fit."""
    num = _num
    mf = [p for p in phen if p.get("reml_method") == "matrix_free"]
    mf_rows = [(p["name"], p.get("lanczos_steps"), p.get("passes_over_X"), "yes" if p.get("converged") else "NO",
                num(p.get("delta_h2"), "{:.1e}"), num(p.get("delta_logl"), "{:.1e}"), p.get("probes"),
                p.get("deflation_rank"), num(p.get("h2_se_stat")), num(p.get("h2_se_mc")), num(p.get("h2_he")))
               for p in mf]
    return "" if not mf else (
        '<section id="matrix-free"><h2>Matrix-free REML</h2>\n<p>ℓ_R(h²) by block Lanczos quadrature on passes '
        'over the genotypes (no spectrum of K); log det H by stochastic Lanczos quadrature with Rademacher probes. '
        'The reported SE of h² combines the statistical SE and the Monte Carlo SD of ĥ² due to the probes '
        '(delete-one-probe jackknife). Convergence: the change of ĥ² and ℓ_R over the last step. h²_HE is the '
        'Haseman–Elston moment estimate from the first pass: a rough cross-check, far less precise than '
        'REML and not constrained, so it can fall outside [0, 1].</p>'
        + _table(["phenotype", "Lanczos steps", "passes over X", "converged", "|Δh²|", "|Δℓ_R|", "probes",
                  "deflation rank", "SE (statistical)", "SD (Monte Carlo)", "h²<sub>HE</sub>"], mf_rows, _e) + "</section>")


def variants_section(doc: dict, data: ReportData, figs: dict) -> str:
    """Variant QC: the variants each filter dropped, and the MAF and missingness histograms."""
    dropped = doc.get("variants_dropped") or {}
    filters = (doc.get("config") or {}).get("variants") or {}
    return "" if not (dropped or "variant_qc" in figs) else (
        '<section id="variants"><h2>Variant QC</h2><p>Each dropped variant is counted under the first filter '
        'that applies'
        + (f" (min_maf {filters.get('min_maf')}, max_missing {filters.get('max_missing')})" if filters else "")
        + ". Histograms over all variants of the data, before filtering."
        + (" No genotype call is missing (every variant called in every sample)." if data.missing is not None
           and np.all(np.nan_to_num(np.asarray(data.missing, dtype=float)) == 0) else "") + "</p>"
        + _table(["filter", "variants removed"], [(k, v) for k, v in dropped.items()]
                 + [("kept", doc.get("n_variants"))], _e)
        + _img(figs, "variant_qc", "Minor allele frequency and missingness per variant") + "</section>")


def relatedness_section(rel: dict | None, figs: dict) -> str:
    """Relatedness: the off-diagonal K of the saved GRM, its histogram and the most related pairs."""
    num = _num
    if not rel:
        return ""
    top = [(f"{a['a'][0]}/{a['a'][1]}", f"{a['b'][0]}/{a['b'][1]}", num(a["K"]), num(a.get("K_aa")),
            num(a.get("K_bb")), num(a.get("K_normalised")), a.get("class") or "-") for a in rel["top"]]
    undefined = rel.get("pairs_without_normalised") or 0
    return (
        '<section id="relatedness"><h2>Relatedness</h2>'
        f"<p>Off-diagonal entries of K over {rel['n']} genotyped samples ({rel['pairs']} pairs): mean "
        f"{num(rel['mean'], '{:.2e}')}, SD {num(rel['sd'], '{:.3g}')}, min {num(rel['min'])}, max "
        f"{num(rel['max'])}; diagonal K<sub>ii</sub> mean {num(rel.get('diag_mean'))}, min "
        f"{num(rel.get('diag_min'))}, max {num(rel.get('diag_max'))}. Pairs are ranked and classed by the "
        "normalised relatedness K<sub>ij</sub> / √(K<sub>ii</sub> K<sub>jj</sub>), not by the raw "
        "K<sub>ij</sub>: in inbred or structured samples K<sub>ii</sub> = 1 + F<sub>i</sub> exceeds 1 and "
        "the raw K<sub>ij</sub> of relatives grows with it (a duplicate of a sample with K<sub>ii</sub> = "
        "1.3 has K<sub>ij</sub> = 1.3), while the normalised value is 1 for a duplicate whatever the "
        "inbreeding (missing calls, which shrink K<sub>ij</sub>, are undone too). With it ≈ 2 × kinship: "
        "pairs above 0.707 are duplicates or MZ twins, above 0.354 first-degree, 0.177 second-degree, "
        "0.088 third-degree relatives (KING's kinship cut-offs, doubled). Cryptic relatives inflate h² "
        "estimated from distant relatedness; consider removing one of each close pair. Population "
        "structure raises K within a population too: with structure, a pair above a cut-off need not be "
        "a relative (see the PCs)."
        + (f" {undefined} pairs involve a sample with K<sub>ii</sub> ≤ 0 (no called genotype) and have "
           "no normalised value." if undefined else "") + "</p>"
        + _img(figs, "relatedness", "Distribution of the normalised off-diagonal K (log scale)")
        + f"<h3>The {len(top)} most related pairs</h3>"
        + _table(["sample i", "sample j", "K<sub>ij</sub>", "K<sub>ii</sub>", "K<sub>jj</sub>",
                  "K<sub>ij</sub> / √(K<sub>ii</sub> K<sub>jj</sub>)", "class (normalised)"], top, _e)
        + "</section>")


def blup_section(data: ReportData) -> str:
    """Genetic values (BLUP): in-sample and held-out accuracies per phenotype."""
    num = _num
    blup_rows = []
    for name, (g, y) in (data.blup or {}).items():
        acc = (data.blup_accuracy or {}).get(name) or {}
        blup_rows.append((name, acc.get("n"), num(acc.get("in_sample"), "{:.3f}"), num(acc.get("loo"), "{:.3f}"),
                          num(acc.get("loo_genetic"), "{:.3f}"), num(acc.get("gv"), "{:.3f}"),
                          int((~np.isfinite(np.asarray(y, dtype=float))).sum())))
    has_loo = any("loo" in (a or {}) for a in (data.blup_accuracy or {}).values())
    return "" if not blup_rows else (
        '<section id="blup"><h2>Genetic values (BLUP)</h2><p>Accuracy over the samples whose y entered the '
        'fit. <b>In-sample</b> r(ĝ, y) is optimistic: y<sub>i</sub> is part of ĝ<sub>i</sub>. '
        '<b>Held-out</b> r(ŷ<sub>−i</sub>, y): each sample\'s y predicted from the others alone (fixed '
        'effects re-estimated without it, then its BLUP from its relatives), at the REML variance '
        'components, computed exactly from the fit without refitting (leave-one-out); this is the accuracy '
        'to expect in new samples like these, and the one to quote. <b>Genetic part</b> '
        'r(ĝ<sub>−i</sub>, y − zβ̂<sub>−i</sub>): the held-out genetic value against the held-out y '
        'corrected for the covariates (not raised by covariates that predict y). '
        '<b>r(ĝ, g)</b> ≈ that divided by √ĥ²: the implied accuracy of the genetic values themselves. '
        + ("" if has_loo else "The held-out accuracies need spectral REML (not computed for a matrix-free "
           "fit). ")
        + 'Samples without a value of the phenotype get a prediction from their relatives; to score '
        'another cohort use <code>bigmm score</code>.</p>'
        + _table(["phenotype", "samples with y", "in-sample r(ĝ, y)", "held-out r(ŷ<sub>−i</sub>, y)",
                  "genetic part, held-out", "r(ĝ, g) ≈ (held-out genetic) / √ĥ²", "samples predicted without y"],
                 blup_rows, _e)
        + "</section>")


def spectrum_section(sp: dict, data: ReportData, figs: dict) -> str:
    """Spectrum and principal components: captured share and convergence, the scree, PC and Ritz
    plots."""
    pc_caption, pc_text = pc_labels(data, figs)
    return (
        '<section id="spectrum"><h2>Spectrum and principal components</h2>'
        + _spectrum_extras(sp, _e)
        + pc_text
        + _img(figs, "scree", "Eigenvalues of the GRM") + _img(figs, "pc1_pc2", "PC1 vs PC2" + pc_caption)
        + _img(figs, "pc3_pc4", "PC3 vs PC4" + pc_caption)
        + _img(figs, "ritz_residuals", "Ritz residuals") + "</section>") if (sp or figs.keys() & {"scree", "pc1_pc2"}) else ""


def pc_labels(data: ReportData, figs: dict) -> tuple[str, str]:
    """The PC plots' caption ending and the paragraph saying what colours them ("", "" if nothing)."""
    pc_caption = pc_text = ""
    if data.labels is not None and figs.keys() & {"pc1_pc2", "pc3_pc4"}:
        entries = [f"{v} ({int(sel.sum())})" for v, sel in label_groups(data.labels[1])]
        pc_caption = f", coloured by {data.labels[0]}: " + ", ".join(entries)
        src = data.label_source
        if src:
            pc_text = (f'<p id="pc-labels">The PC plots are coloured by column <b>{_e(src["column"])}</b> of '
                       f'<code>{_e(src["file"])}</code>: {src["samples_labelled"]} of {src["samples"]} samples '
                       f'labelled ({src["levels"]} distinct labels; at most {MAX_LABELS} legend entries, the rarer '
                       f'labels grouped as "other"), {src["samples_without_label"]} without a row or value shown '
                       f'as "no label"; {src["rows_matched"]} of the file\'s {src["rows"]} rows match a sample.</p>')
        else:
            pc_text = (f'<p id="pc-labels">The PC plots are coloured by the categorical covariate '
                       f'<b>{_e(str(data.labels[0]))}</b> (set <code>report.labels</code> to colour them by a '
                       f'column of your own, e.g. population).</p>')
    return pc_caption, pc_text


def profiles_section(figs: dict) -> str:
    """REML profile likelihood: the plot of ℓ_R(h²) of the first phenotypes."""
    return "" if "reml_profiles" not in figs else (
        '<section id="profiles"><h2>REML profile likelihood</h2>'
        + _img(figs, "reml_profiles", "Restricted log-likelihood over h² (first phenotypes), relative to its "
                     "maximum; dotted: the estimate, shaded: its 95% Wald interval, dashed: the likelihood-ratio 95% cut-off")
        + "</section>")


def stages_section(doc: dict) -> str:
    """Stages: seconds and memory of each stage of the run."""
    num = _num
    stage_rows = [(name, num(st.get("seconds"), "{:.1f}"), num(st.get("driver_peak_rss_mib"), "{:.0f}"),
                   num(st.get("workers_rss_mib"), "{:.0f}")) for name, st in (doc.get("stages") or {}).items()]
    return ('<section id="stages"><h2>Stages</h2>\n'
            + _table(["stage", "seconds", "driver peak RSS (MiB)", "workers RSS (MiB)"], stage_rows, _e)
            + "\n</section>")


def _page(sections: list[str]) -> str:
    """The whole page: the head and style, the navigation bar (a link to each section present),
    the sections one per line, and the script that marks each image as loaded."""
    page = _HEAD + "\n".join(sections) + "\n" + _TAIL
    present = [sid for sid in COMPONENTS_SECTIONS if f'<section id="{sid}">' in page]
    titles = {"fixed-effects": "fixed effects", "matrix-free": "matrix-free", "blup": "BLUP",
              "components": "variance components", "rg": "genetic correlations"}
    page = page.replace("{nav}", "".join(f'<a href="#{sid}">{titles.get(sid, sid)}</a>' for sid in present))
    return page


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bigmm report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f0f0f0; }
section { overflow-x: auto; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: min(560px, 95vw); height: auto; }
figcaption { font-size: 0.85em; color: #555; max-width: 520px; }
.warn { color: #a33; }
nav a { margin-right: 0.8em; }
</style></head><body>
<h1>bigmm report</h1>
<nav>{nav}</nav>
"""

_TAIL = """<script>
window.addEventListener("load", function () {
  for (const im of document.images) im.dataset.loaded = (im.complete && im.naturalWidth > 0) ? "yes" : "no";
});
</script>
</body></html>
"""
