"""Result files (``results.json``, ``results.tsv``), peer formats (.hsq, .eigenvec) and
``report.html``, each written atomically; ``results.json`` last of all.

The report's parts live in their own modules and are importable from here: what it shows
(:mod:`.report_data`), its figures (:mod:`.report_figures`) and its page (:mod:`.report_html`)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from ..reml import LOG2PI, MATRIX_FREE_COLUMNS, TABLE_COLUMNS, liability_h2
from ..store import atomic_write_text
from ..vcreml import COMPONENT_COLUMNS, COMPONENT_MC_COLUMNS, PHENOTYPE_FIELDS, PHENOTYPE_MC_FIELDS
from .outputs import json_safe as _clean
from .report_data import (MAX_LABELS, RELATEDNESS_CLASSES, TILE, TOP_PAIRS, UNLABELLED,  # noqa: F401
                          ReportData, is_components, label_groups, relatedness_class, relatedness_summary,
                          vp_and_se)
from .report_figures import FIGURES, make_figures  # noqa: F401
from .report_html import SECTIONS, write_report  # noqa: F401

#: results.tsv's columns after ``phenotype`` (the library's fits table: RemlResult.to_pandas() has the same)
TSV_COLUMNS = TABLE_COLUMNS
#: with phenotypes.prevalence: h² on the liability scale (Lee et al. 2011)
LIABILITY_COLUMNS = ("prevalence", "case_fraction", "h2_liability", "h2_liability_se")


def results_document(reml: dict, run_info: dict) -> dict:
    """The content of ``results.json``: the run's information and the fits (JSON-safe).

    A several-component fit has its own ``n_variants`` (a count per component): the run's count of
    variants kept after the filters is then ``n_variants_kept``; its ``reml_method``, there and in
    each phenotype's fit, is the run's model (``components`` or ``components_matrix_free``, as
    ``reml.method`` and run.json name it), and the fit's own name of its algorithm
    (``ai_reml``, ``matrix_free_ai_reml``) is ``reml_algorithm``."""
    doc = dict(run_info)
    fits = reml.get("phenotypes") or []
    if is_components(fits):
        if "n_variants" in doc:
            doc["n_variants_kept"] = doc.pop("n_variants")
        model = doc.get("reml_method")
        if model is not None:
            reml = dict(reml, reml_method=model, reml_algorithm=reml.get("reml_method"),
                        phenotypes=[dict(p, reml_method=model, reml_algorithm=p.get("reml_method")) for p in fits])
    doc.update(reml)
    return _clean(doc)


def write_results_json(outdir: Path, doc: dict) -> Path:
    """``results.json``: written last of all, after the run is recorded complete (it marks a
    finished run)."""
    js = Path(outdir) / "results.json"
    atomic_write_text(js, json.dumps(doc, indent=2) + "\n")
    return js


def write_results(outdir: Path, reml: dict, run_info: dict) -> tuple[Path, dict]:
    """Write results.tsv; returns its path and the results.json document (written later by
    :func:`write_results_json`).

    ``reml`` is :meth:`RemlResult.to_dict` (as stored in ``reml.json``).
    """
    outdir = Path(outdir)
    doc = results_document(reml, run_info)
    fits = reml["phenotypes"]
    if is_components(fits):
        tsv = outdir / "results.tsv"
        atomic_write_text(tsv, components_tsv(fits))
        return tsv, doc
    fe_names = [fe["name"] for fe in fits[0]["fixed_effects"]] if fits else []
    columns = TSV_COLUMNS + (MATRIX_FREE_COLUMNS if fits and "h2_se_mc" in fits[0] else ()) \
        + (LIABILITY_COLUMNS if fits and "h2_liability" in fits[0] else ())
    header = ["phenotype", *columns]
    for name in fe_names:
        header += [f"beta_{name}", f"se_{name}"]
    rows = ["\t".join(header)]
    for fit in fits:
        vals = [fit["name"]] + [_fmt(fit.get(c)) for c in columns]  # a column an older reml.json lacks: "."
        for fe in fit["fixed_effects"]:
            vals += [_fmt(fe["estimate"]), _fmt(fe["se"])]
        rows.append("\t".join(vals))
    tsv = outdir / "results.tsv"
    atomic_write_text(tsv, "\n".join(rows) + "\n")
    return tsv, doc


def components_tsv(fits: list) -> str:
    """results.tsv of a several-component fit (:meth:`bigmm.ComponentsResult.to_dict`'s
    ``phenotypes``): one row per phenotype × component, the columns of
    :meth:`bigmm.ComponentsResult.table_rows` (the component's, its Monte Carlo SDs, then the
    phenotype's totals and the Monte Carlo SD of its total h²; "." where the fit has no such
    number, e.g. the Monte Carlo SDs of the exact path), then the phenotype's h² on the liability
    scale (with a prevalence) and its fixed effects (``beta_<name>``, ``se_<name>``)."""
    comp_mc, fit_mc = COMPONENT_MC_COLUMNS, PHENOTYPE_MC_FIELDS
    liability = LIABILITY_COLUMNS if "h2_liability" in fits[0] else ()
    fe_names = [fe["name"] for fe in fits[0]["fixed_effects"]]
    header = ["phenotype", *COMPONENT_COLUMNS, *comp_mc, *PHENOTYPE_FIELDS, *fit_mc, *liability]
    for name in fe_names:
        header += [f"beta_{name}", f"se_{name}"]
    fit_keys = [*PHENOTYPE_FIELDS.values(), *fit_mc.values(), *liability]
    rows = ["\t".join(header)]
    for fit in fits:
        tail = [_fmt(fit.get(k)) for k in fit_keys]
        for fe in fit["fixed_effects"]:
            tail += [_fmt(fe["estimate"]), _fmt(fe["se"])]
        for c in fit["components"]:
            rows.append("\t".join([str(fit["name"]), str(c["name"])]
                                  + [_fmt(c.get(k)) for k in [*COMPONENT_COLUMNS[1:], *comp_mc]] + tail))
    return "\n".join(rows) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "NA" if not math.isfinite(v) else f"{v:.10g}"
    if v == "" or v is None:
        return "."
    return str(v)


# ---------------------------------------------------------------------------------------
# peer-compatible files
# ---------------------------------------------------------------------------------------

def gcta_logl(logl_reml: float, n: int, c: int) -> float:
    """GCTA's REML ``logL`` from bigmm's ``logl_reml`` (docs/math.md, "Log-likelihood conventions").

    GCTA reports ``−½ [log det V + log det(ZᵀV⁻¹Z) + yᵀPy]`` (est_hsq.cpp, ``reml_iteration``):
    Harville's restricted log-likelihood without its ``−½ (n − c) log 2π`` constant, which
    bigmm's ``logl_reml`` keeps. Neither has GEMMA's ``½ log det(ZᵀZ)``.
    """
    return float(logl_reml) + 0.5 * (n - c) * LOG2PI


def hsq_file_names(names) -> dict[str, str]:
    """The ``.hsq`` file name of each phenotype: its name with characters other than letters,
    digits, ``-``, ``_`` and ``.`` replaced by ``_``; where two names would give the same file
    (``bmi/adj`` and ``bmi_adj``, or names that differ only in case, which share a file on
    case-insensitive file systems) each changed or clashing name gets ``-`` and the first 8 hex
    digits of the SHA-1 of the original name, so every phenotype has its own file, the same
    in every run."""
    names = [str(n) for n in names]
    safe = {n: _safe_name(n) for n in names}
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(safe[n].lower(), []).append(n)
    out = {}
    for members in groups.values():
        exact = [n for n in members if safe[n] == n]
        for n in members:
            # one name kept as it is (it needs no change and no other name keeps its spelling)
            keep = len(members) == 1 or (len(exact) == 1 and n == exact[0])
            out[n] = f"{safe[n]}.hsq" if keep else \
                f"{safe[n]}-{hashlib.sha1(n.encode('utf-8')).hexdigest()[:8]}.hsq"
    return out


def write_hsq(outdir: Path, reml: dict) -> list[Path]:
    """A GCTA ``.hsq`` table per phenotype (file names from :func:`hsq_file_names`).

    Rows and order as GCTA writes them: V(G), V(e), Vp, V(G)/Vp; with a prevalence (the
    phenotype's ``h2_liability``) GCTA's two lines on the liability transform and
    ``V(G)/Vp_L``; then logL, logL0 (the model with h² = 0), LRT, df, Pval, n. logL and logL0
    are GCTA's (:func:`gcta_logl`: bigmm's ``logl_reml`` plus ``(n − c)/2 · log 2π``); the LRT
    is the same in both conventions.
    """
    if is_components(reml["phenotypes"]):
        return write_components_hsq(outdir, reml)
    paths = []
    files = hsq_file_names(fit["name"] for fit in reml["phenotypes"])
    for fit in reml["phenotypes"]:
        vp, se_vp = vp_and_se(fit)
        n, c = int(fit["n"]), len(fit["fixed_effects"])

        def logl(key):
            v = fit.get(key)
            return float("nan") if v is None else gcta_logl(v, n, c)

        rows = [("Source", "Variance", "SE"),
                ("V(G)", _fmt(fit["sigma2_g"]), _fmt(fit["sigma2_g_se"])),
                ("V(e)", _fmt(fit["sigma2_e"]), _fmt(fit["sigma2_e_se"])),
                ("Vp", _fmt(float(vp)), _fmt(se_vp)),
                ("V(G)/Vp", _fmt(fit["h2"]), _fmt(fit["h2_se"]))]
        if "h2_liability" in fit:  # phenotypes.prevalence (added by the run layer)
            rows += [("The estimate of variance explained on the observed scale is transformed to that on "
                      "the underlying scale:",),
                     (f"(Proportion of cases in the sample = {fit['case_fraction']:.6f}; "  # GCTA's fixed 6 digits
                      f"User-specified disease prevalence = {fit['prevalence']:.6f})",),
                     ("V(G)/Vp_L", _fmt(fit.get("h2_liability")), _fmt(fit.get("h2_liability_se")))]
        rows += [("logL", _fmt(logl("logl_reml")), ""),
                 ("logL0", _fmt(logl("logl_reml_h2_0")), ""),
                 ("LRT", _fmt(fit["lrt_stat"]), ""),
                 ("df", "1", ""),
                 ("Pval", _fmt(fit["lrt_pvalue"]), ""),
                 ("n", str(fit["n"]), "")]
        text = "\n".join("\t".join(r).rstrip("\t") for r in rows)
        text += ("\n# bigmm: logL and logL0 in GCTA's convention (results.json logl_reml + (n - c)/2 log(2 pi), "
                 f"c = {c} fixed effects); Pval from the 50:50 mixture of chi2(0) and chi2(1)\n")
        path = Path(outdir) / files[str(fit["name"])]
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def gcta_component_names(m: int) -> list[str]:
    """GCTA's names of m genetic components (``--mgrm``, in the order of its GRM list): ``G`` for
    one, ``G1`` .. ``Gm`` for several."""
    return ["G"] if m == 1 else [f"G{j + 1}" for j in range(m)]


def write_components_hsq(outdir: Path, reml: dict) -> list[Path]:
    """GCTA's ``.hsq`` of a several-component fit (``--reml --mgrm`` with ``--reml-lrt 1 .. m``),
    one per phenotype (file names from :func:`hsq_file_names`).

    Rows and order as GCTA writes them: V(G1) .. V(Gm), V(e), Vp, V(G1)/Vp .. V(Gm)/Vp, an empty
    line and ``Sum of V(G)/Vp`` (the total h²; GCTA leaves both out for one component, then named
    V(G)); with a prevalence GCTA's two lines on the liability transform, ``V(Gj)/Vp_L`` and
    ``Sum of V(G)_L/Vp``; then logL, logL0 (the model without any genetic component, as GCTA's
    ``--reml-lrt 1 2 .. m``), LRT, df = m, Pval (``lrt_pvalue``: GCTA's ½ P(χ²_m > LRT) when
    constrained), n. logL and logL0 in GCTA's convention (:func:`gcta_logl`). Comment lines after
    GCTA's rows (``# bigmm:``) name the component behind each Gj and its variant count.
    """
    def num(v):  # a number the fit does not have (null in reml.json): NA, as R reads it
        return "NA" if v is None else _fmt(v)

    paths = []
    files = hsq_file_names(fit["name"] for fit in reml["phenotypes"])
    for fit in reml["phenotypes"]:
        comps = fit["components"]
        g = gcta_component_names(len(comps))
        vp, se_vp = vp_and_se(fit)
        n, c = int(fit["n"]), len(fit["fixed_effects"])

        def logl(key):
            v = fit.get(key)
            return float("nan") if v is None else gcta_logl(v, n, c)

        rows = [("Source", "Variance", "SE")]
        rows += [(f"V({gj})", num(cj["sigma2"]), num(cj["sigma2_se"])) for gj, cj in zip(g, comps)]
        rows += [("V(e)", num(fit["sigma2_e"]), num(fit["sigma2_e_se"])), ("Vp", num(float(vp)), num(se_vp))]
        rows += [(f"V({gj})/Vp", num(cj["h2"]), num(cj["h2_se"])) for gj, cj in zip(g, comps)]
        if len(comps) > 1:
            rows += [("",), ("Sum of V(G)/Vp", num(fit["h2"]), num(fit["h2_se"]))]
        if "h2_liability" in fit:  # phenotypes.prevalence (added by the run layer)
            k, p = fit["prevalence"], fit["case_fraction"]

            def on_liability(h2, se):
                if h2 is None or se is None:
                    return float("nan"), float("nan")
                return liability_h2(h2, se, k, p)

            rows += [("The estimate of variance explained on the observed scale is transformed to that on "
                      "the underlying scale:",),
                     (f"(Proportion of cases in the sample = {p:.6f}; "  # GCTA's fixed 6 digits
                      f"User-specified disease prevalence = {k:.6f})",)]
            rows += [(f"V({gj})/Vp_L", *map(_fmt, on_liability(cj["h2"], cj["h2_se"]))) for gj, cj in zip(g, comps)]
            if len(comps) > 1:
                rows += [("",), ("Sum of V(G)_L/Vp", num(fit.get("h2_liability")), num(fit.get("h2_liability_se")))]
        rows += [("logL", num(logl("logl_reml")), ""),
                 ("logL0", num(logl("logl_reml_h2_0")), ""),
                 ("LRT", num(fit["lrt_stat"]), ""),
                 ("df", str(len(comps)), ""),
                 ("Pval", num(fit["lrt_pvalue"]), ""),
                 ("n", str(fit["n"]), "")]
        text = "\n".join("\t".join(r).rstrip("\t") for r in rows)
        text += "\n" + "".join(
            f"# bigmm: {gj} = component {cj['name']!s}"
            + ("" if cj.get("n_variants") is None else f" ({_fmt(cj['n_variants'])} variants)") + "\n"
            for gj, cj in zip(g, comps))
        if fit.get("logl_reml") is None:
            text += (f"# bigmm: logL, LRT and Pval NA: this fit ({fit.get('reml_method')}) does not evaluate "
                     "the log-likelihood\n")
        elif fit.get("logl_reml_se_mc") is not None:  # a matrix-free fit: log det V by stochastic Lanczos quadrature
            text += (f"# bigmm: logL and LRT are Monte Carlo estimates (log det V by stochastic Lanczos quadrature "
                     f"with random probes): SD {_fmt(fit['logl_reml_se_mc'])} for logL, "
                     f"{num(fit.get('lrt_stat_se_mc'))} for LRT; logL0 is exact\n")
        text += ("# bigmm: logL and logL0 in GCTA's convention (results.json logl_reml + (n - c)/2 log(2 pi), "
                 f"c = {c} fixed effects); logL0 without any genetic component; Pval by "
                 + ("GCTA's rule, 1/2 P(chi2_df > LRT)" if fit.get("constrain", True) else
                    "P(chi2_df > LRT) (unconstrained fit)") + "\n")
        path = Path(outdir) / files[str(fit["name"])]
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def write_plink_pca(prefix: Path, ids: list, U, s, n_pcs: int) -> tuple[Path, Path]:
    """PLINK 2-style ``.eigenvec`` (``#FID IID PC1 ..``) and ``.eigenval`` (one per line)."""
    m = min(n_pcs, U.shape[1])
    lines = ["#FID\tIID\t" + "\t".join(f"PC{i + 1}" for i in range(m))]
    for (f, i), u in zip(ids, U[:, :m]):
        lines.append(f"{f}\t{i}\t" + "\t".join(f"{x:.6g}" for x in u))
    vec = Path(str(prefix) + ".eigenvec")
    val = Path(str(prefix) + ".eigenval")
    atomic_write_text(vec, "\n".join(lines) + "\n")
    atomic_write_text(val, "".join(f"{v:.6g}\n" for v in s[:m]))
    return vec, val
