"""Result files (``results.json``, ``results.tsv``), peer formats (.hsq, .eigenvec) and
``report.html``, each written atomically; ``results.json`` last of all."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..reml import LOG2PI, MATRIX_FREE_COLUMNS, TABLE_COLUMNS
from ..store import atomic_file, atomic_write_text
from .outputs import json_safe as _clean

#: results.tsv's columns after ``phenotype`` (the library's fits table: RemlResult.to_pandas() has the same)
TSV_COLUMNS = TABLE_COLUMNS
#: with phenotypes.prevalence: h² on the liability scale (Lee et al. 2011)
LIABILITY_COLUMNS = ("prevalence", "case_fraction", "h2_liability", "h2_liability_se")


def results_document(reml: dict, run_info: dict) -> dict:
    """The content of ``results.json``: the run's information and the fits (JSON-safe)."""
    doc = dict(run_info)
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


def vp_and_se(fit: dict) -> tuple[float, float]:
    """Vp = σ²_g + σ²_e and its SE from the variances' covariance (one phenotype's dict)."""
    def val(key):  # JSON null (NaN, ±inf) as NaN, in float64 arithmetic: no OverflowError
        v = fit.get(key)
        return np.float64("nan") if v is None else np.float64(v)

    with np.errstate(over="ignore", invalid="ignore"):
        vp = val("sigma2_g") + val("sigma2_e")
        var_vp = val("sigma2_g_se") ** 2 + val("sigma2_e_se") ** 2 + 2 * val("sigma2_g_sigma2_e_cov")
        se_vp = float(np.sqrt(var_vp)) if var_vp > 0 else float("nan")
    return float(vp), se_vp


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


# ---------------------------------------------------------------------------------------
# report.html
# ---------------------------------------------------------------------------------------

#: GRM entries ≈ 2 × kinship: KING's kinship cut-offs (0.354, 0.177, 0.0884, 0.0442) doubled, applied
#: to the normalised relatedness K_ij / sqrt(K_ii K_jj) (1 for a duplicate, whatever the inbreeding)
RELATEDNESS_CLASSES = ((0.707, "duplicate or MZ twin"), (0.354, "1st degree"), (0.177, "2nd degree"),
                       (0.088, "3rd degree"))
#: the largest off-diagonal pairs of K listed in the report
TOP_PAIRS = 20
#: relatedness_summary works on tiles of at most TILE x TILE entries of a band it has read
TILE = 1024


@dataclass
class ReportData:
    """What the report shows besides ``results.json``, from outputs the run already has (nothing
    here takes a pass over the genotypes). Every field is optional."""

    #: phenotype name -> values of the analysed samples (NaN missing)
    phenotypes: dict = field(default_factory=dict)
    #: (column name, label per genotyped sample): colours the PC plots (report.labels' column, else
    #: the first categorical covariate)
    labels: tuple | None = None
    #: where the labels came from and how they matched (report.labels: file, column, counts)
    label_source: dict | None = None
    #: per variant: minor allele frequency and missing fraction (variant statistics)
    maf: np.ndarray | None = None
    missing: np.ndarray | None = None
    #: :func:`relatedness_summary` of the saved GRM (exact path only)
    relatedness: dict | None = None
    #: phenotype name -> (ĝ, y) over the genotyped samples (y NaN where not analysed or missing)
    blup: dict = field(default_factory=dict)
    #: phenotype name -> {"n", "in_sample": r(ĝ, y), and from the leave-one-out predictions (spectral
    #: REML) "loo": r(ŷ₋ᵢ, y), "loo_genetic": r(ĝ₋ᵢ, y − zβ̂₋ᵢ), "gv": loo_genetic / √h²}
    blup_accuracy: dict = field(default_factory=dict)


#: at most this many labels get their own colour in the PC plots; the rarer ones are grouped as "other"
MAX_LABELS = 12
#: labels drawn in grey beneath the others (a sample without a label, or not analysed)
UNLABELLED = ("no label", "not analysed")
_LABEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                  "#17becf", "#393b79", "#637939", "#000000")  # not grey: "other" and "no label" are


def label_groups(labels, cap: int = MAX_LABELS) -> list[tuple[str, np.ndarray]]:
    """The legend of the PC plots: (entry, samples) pairs. The labels by decreasing count (ties
    alphabetically), at most ``cap`` entries: beyond that the ``cap − 1`` most frequent and
    ``other (m labels)``; then the :data:`UNLABELLED` groups."""
    lab = np.array([str(x) for x in labels], dtype=object)
    levels, counts = np.unique(lab, return_counts=True)
    named = sorted(((int(c), str(v)) for v, c in zip(levels, counts) if v not in UNLABELLED),
                   key=lambda t: (-t[0], t[1]))
    keep = named if len(named) <= cap else named[:cap - 1]
    groups = [(v, lab == v) for _, v in keep]
    if len(named) > len(keep):
        rest = [v for _, v in named[len(keep):]]
        groups.append((f"other ({len(rest)} labels)", np.isin(lab, rest)))
    groups += [(v, lab == v) for v in UNLABELLED if v in levels]
    return groups


def relatedness_summary(K, ids, top: int = TOP_PAIRS, block: int = 2048, bins: int = 120, on_rows=None) -> dict:
    """The report's relatedness section from a saved GRM: the off-diagonal entries (their moments
    and the histogram of their normalised values), and the ``top`` pairs with the largest normalised
    relatedness ``K_ij / sqrt(K_ii K_jj)``, each classed by that value (:data:`RELATEDNESS_CLASSES`).

    Why normalised: with inbred or structured samples ``K_ii = 1 + F_i`` exceeds 1 and the raw
    ``K_ij`` of relatives scales with it (a duplicate of a sample with ``K_ii = 1.31`` has
    ``K_ij = 1.31``; a pair of ``K_ij = 0.93`` between two such samples is 0.71 normalised, first
    degree, not a duplicate). The normalised value is 1 for a duplicate whatever the inbreeding,
    and also undoes the shrinkage of ``K_ij`` towards 0 by missing calls (mean-imputed to 0).

    Cost: one read of the lower triangle of ``K`` (diagonal included) in bands of rows
    ``K[r0:r1, 0:r1]`` whose edges are chunk edges (``block`` rounded down to whole chunks, at
    least one), so each chunk of a Zarr ``K`` is read and decoded at most once, and the chunks
    above the bands' diagonal squares (the same numbers as below) not at all. The diagonal comes from that read. Memory: one band
    (``r1 − r0`` rows × ``r1`` columns), a few tiles of :data:`TILE`² numbers and O(n + top).

    ``on_rows(K_rows)``, if given, is called with each band in turn, from row 0 to n: the GCTA
    export of K (:func:`bigmm.io.gcta.gcta_grm_writer`) is written from the same read.
    """
    n = int(K.shape[0])
    chunks = getattr(K, "chunks", None)
    c = int(chunks[0]) if chunks and isinstance(chunks[0], (int, np.integer)) else 0
    if chunks and isinstance(chunks[1], (int, np.integer)) and int(chunks[1]) != c:
        c = int(np.lcm(c, int(chunks[1])))  # band edges that are chunk edges in both directions
    b = c * max(1, int(block) // c) if c else int(block)
    lo, hi = -0.25, 1.25
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    diag = np.empty(n, dtype=np.float64)
    best = np.empty(0)  # the normalised values of the candidate pairs, their (a, b) and raw K_ab
    best_ij = np.empty((0, 2), dtype=np.int64)
    best_raw = np.empty(0)
    vmin, vmax, total, total_sq, m = np.inf, -np.inf, 0.0, 0.0, 0
    undefined = 0  # pairs with a sample whose K_ii ≤ 0 (no called genotype): no normalised value
    for r0 in range(0, n, b):
        r1 = min(n, r0 + b)
        band = np.asarray(K[r0:r1, 0:r1], dtype=np.float64)
        if on_rows is not None:
            on_rows(band)
        diag[r0:r1] = band[np.arange(r1 - r0), np.arange(r0, r1)]
        # tiles of at most TILE x TILE: for rows s0..s1, the diagonal tile, then columns 0..s0
        tiles = [(s0, min(r1, s0 + TILE), c0, c1) for s0 in range(r0, r1, TILE)
                 for c0, c1 in [(s0, min(r1, s0 + TILE))] + [(c, min(s0, c + TILE)) for c in range(0, s0, TILE)]]
        for s0, s1, c0, c1 in tiles:
            tile = band[s0 - r0:s1 - r0, c0:c1]
            dd = np.outer(diag[s0:s1], diag[c0:c1])
            with np.errstate(invalid="ignore", divide="ignore"):
                norm = tile / np.sqrt(dd)
            norm[~(dd > 0)] = np.nan
            if c0 == s0:  # the strict lower triangle of the diagonal tile
                below = np.tri(s1 - s0, k=-1, dtype=bool)
                vals, nv = tile[below], norm[below]
                norm[~below] = np.nan
            else:
                vals, nv = tile.ravel(), norm.ravel()
            if vals.size == 0:
                continue
            vmin, vmax = min(vmin, float(vals.min())), max(vmax, float(vals.max()))
            total += float(vals.sum())
            total_sq += float(np.dot(vals, vals))
            m += vals.size
            ok = np.isfinite(nv)
            undefined += int(vals.size - ok.sum())
            counts += np.histogram(np.clip(nv[ok], lo, hi - 1e-12), edges)[0]
            flat = np.where(np.isfinite(norm), norm, -np.inf).ravel()
            k = min(top, flat.size)
            cand = np.argpartition(flat, flat.size - k)[flat.size - k:]
            cand = cand[np.isfinite(flat[cand])]
            if cand.size == 0:
                continue
            i, j = np.unravel_index(cand, norm.shape)
            best = np.concatenate([best, flat[cand]])
            best_raw = np.concatenate([best_raw, tile[i, j]])
            best_ij = np.concatenate([best_ij, np.column_stack([j + c0, i + s0])])  # j < i: (a, b) = (j, i)
            keep = np.lexsort((best_ij[:, 1], best_ij[:, 0], -best))[:top]
            best, best_raw, best_ij = best[keep], best_raw[keep], best_ij[keep]
    pairs = []
    for v, raw, (a, c) in zip(best, best_raw, best_ij):
        pairs.append({"a": list(ids[a]), "b": list(ids[c]), "K": float(raw), "K_aa": float(diag[a]),
                      "K_bb": float(diag[c]), "K_normalised": float(v), "class": relatedness_class(v)})
    mean = total / m if m else float("nan")
    return {"n": n, "pairs": m, "min": vmin, "max": vmax, "mean": mean,
            "sd": float(np.sqrt(max(total_sq / m - mean ** 2, 0.0))) if m else float("nan"),
            "diag_mean": float(diag.mean()) if n else float("nan"),
            "diag_min": float(diag.min()) if n else float("nan"),
            "diag_max": float(diag.max()) if n else float("nan"),
            "pairs_without_normalised": undefined,
            "edges": edges.tolist(), "counts": counts.tolist(), "top": pairs}


def relatedness_class(normalised: float) -> str:
    """The class of a pair from its normalised relatedness ``K_ij / sqrt(K_ii K_jj)`` ("" below
    the third-degree cut-off)."""
    return next((name for cut, name in RELATEDNESS_CLASSES if normalised >= cut), "")


def _figure_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _log_axis(axis) -> None:
    """Plain numbers (0.5, 2, 10) on a log axis instead of 1.725×10⁰, minor labels only at 2 and 5,
    and none when the axis spans more than three decades (they would overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(fmt)
    axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    lo, hi = sorted(axis.get_view_interval())
    axis.set_minor_formatter(NullFormatter() if lo > 0 and hi / lo > 1e3 else fmt)


def _literal(*texts) -> None:
    """Show user text (phenotype, covariate and label names) as typed: a ``$`` in a name would
    otherwise start matplotlib's mathtext, which fails on e.g. ``a$b`` or renders ``$x_1$`` as math."""
    for t in texts:
        if t is not None:
            t.set_parse_math(False)


def _few_ticks(ax, n: int = 5) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(n))
    ax.yaxis.set_major_locator(MaxNLocator(n))


def make_figures(doc: dict, s, U, ritz, data: ReportData | None = None) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = data or ReportData()
    figs: dict[str, bytes] = {}
    if s is not None and len(s):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        k = min(len(s), 100)
        pos = np.asarray(s[:k], dtype=float)
        ax.plot(np.arange(1, k + 1), np.where(pos > 0, pos, np.nan), "o-", ms=3)
        ax.set_xlabel("eigenvalue index $i$")
        ax.set_ylabel("eigenvalue $s_i$ of $K$")
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_title("Scree plot (top %d)" % k)
        figs["scree"] = _figure_png(fig)
    labels = data.labels
    for a, b in ((0, 1), (2, 3)):
        if U is not None and U.shape[1] > b:
            fig, ax = plt.subplots(figsize=(5, 4.5))
            if labels is not None and len(labels[1]) == U.shape[0]:
                handles = []
                for i, (v, sel) in enumerate(label_groups(labels[1])):
                    style = (dict(color="#c8c8c8", s=4, alpha=0.5, zorder=1) if v in UNLABELLED else
                             dict(color="#555555", marker="x", s=6, alpha=0.75, zorder=2) if v.startswith("other (")
                             else dict(color=_LABEL_COLOURS[i % len(_LABEL_COLOURS)], s=5, alpha=0.75, zorder=2))
                    handles.append(ax.scatter(U[sel, a], U[sel, b], label=f"{v} ({int(sel.sum())})", **style))
                leg = ax.legend(handles=handles, title=str(labels[0]), fontsize=7, markerscale=2,
                                loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
                _literal(leg.get_title(), *leg.get_texts())
            else:
                ax.scatter(U[:, a], U[:, b], s=4, alpha=0.6)
            _few_ticks(ax)
            ax.set_xlabel(f"PC{a + 1}")
            ax.set_ylabel(f"PC{b + 1}")
            ax.set_title(f"PC{a + 1} vs PC{b + 1}")
            figs[f"pc{a + 1}_pc{b + 1}"] = _figure_png(fig)
    profiles = (doc.get("notes") or {}).get("profiles") or {}
    if profiles:
        fits = {p["name"]: p for p in doc.get("phenotypes", [])}
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for idx, (name, prof) in enumerate(list(profiles.items())[:10]):
            ll = np.array([np.nan if v is None else v for v in prof["logl_reml"]], dtype=float)
            line, = ax.plot(prof["h2"], ll - np.nanmax(ll), label=str(name))
            f = fits.get(name) or {}
            h, se = f.get("h2"), f.get("h2_se")
            if h is not None and math.isfinite(h):
                ax.axvline(h, color=line.get_color(), lw=0.8, ls=":")
                if se is not None and math.isfinite(se):
                    ax.axvspan(max(0.0, h - 1.96 * se), min(1.0, h + 1.96 * se), color=line.get_color(),
                               alpha=0.08)
        ax.axhline(-1.92, color="grey", lw=0.8, ls="--", label=r"$-\chi^2_{1,0.95}/2$ (LR 95%)")
        ax.set_ylim(-10, 0.5)
        ax.set_xlabel(r"$h^2$")
        ax.set_ylabel(r"$\ell_R(h^2) - \max\ \ell_R$")
        ax.set_title(r"REML profile (dotted: $\hat h^2$; shaded: $\hat h^2 \pm 1.96\,$SE)")
        leg = ax.legend(fontsize=7)
        shown = {str(name) for name in list(profiles)[:10]}
        _literal(*(t for t in leg.get_texts() if t.get_text() in shown))  # not the χ² cut-off (math)
        figs["reml_profiles"] = _figure_png(fig)
    if ritz is not None and len(ritz):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.semilogy(np.arange(1, len(ritz) + 1), ritz, ".")
        ax.set_xlabel("eigenpair $i$")
        ax.set_ylabel(r"$\|K u_i - s_i u_i\| / s_i$")
        ax.set_title("Ritz residuals of the randomized spectrum")
        figs["ritz_residuals"] = _figure_png(fig)
    if data.phenotypes:
        names = list(data.phenotypes)[:6]
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            v = np.asarray(data.phenotypes[name], dtype=float)
            v = v[np.isfinite(v)]
            ax.hist(v, bins=min(40, max(5, v.size // 10)), color="#4a7fb5")
            _literal(ax.set_title(f"{name} (n = {v.size})", fontsize=9))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        axes[0][0].set_ylabel("samples")
        figs["phenotypes"] = _figure_png(fig)
    if data.relatedness:
        r = data.relatedness
        edges = np.asarray(r["edges"])
        counts = np.asarray(r["counts"])
        nz = np.flatnonzero(counts)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(edges[:-1][nz], counts[nz], width=np.diff(edges)[nz], align="edge", color="#4a7fb5")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        _log_axis(ax.yaxis)
        if nz.size:
            ax.set_xlim(edges[nz[0]] - 0.05, max(0.8, edges[nz[-1] + 1] + 0.05))
        for cut, name in RELATEDNESS_CLASSES:
            ax.axvline(cut, color="grey", lw=0.7, ls="--")
        ax.set_xlabel(r"normalised relatedness $K_{ij} / \sqrt{K_{ii} K_{jj}}$ ($i \neq j$)")
        ax.set_ylabel("pairs")
        ax.set_title("Relatedness (dashed: 3rd degree .. duplicate)")
        figs["relatedness"] = _figure_png(fig)
    if data.maf is not None and data.missing is not None:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
        maf = np.asarray(data.maf, dtype=float)
        a1.hist(maf[np.isfinite(maf)], bins=50, range=(0, 0.5), color="#4a7fb5")
        a1.set_xlabel("minor allele frequency")
        a1.set_ylabel("variants")
        miss = np.asarray(data.missing, dtype=float)
        miss = miss[np.isfinite(miss)]
        if miss.size and miss.max() > 0:
            a2.hist(miss, bins=50, range=(0.0, float(miss.max())), color="#b5804a")
            a2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        else:  # a histogram of zeros would span an arbitrary −0.5..0.5 around its single bar
            a2.text(0.5, 0.5, f"no missing calls\n({miss.size} variants)", ha="center", va="center",
                    transform=a2.transAxes)
            a2.set_xticks([])
            a2.set_yticks([])
        a2.set_xlabel("fraction of calls missing")
        figs["variant_qc"] = _figure_png(fig)
    return figs


#: every figure the report can hold (``report/<name>.png``)
FIGURES = ("scree", "pc1_pc2", "pc3_pc4", "reml_profiles", "ritz_residuals", "phenotypes", "relatedness",
           "variant_qc")

#: the report's sections (``<section id=...>``), in order; a section with nothing to show is left out
SECTIONS = ("summary", "estimates", "fixed-effects", "samples", "phenotypes", "matrix-free", "variants",
            "relatedness", "spectrum", "profiles", "blup", "stages")


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


def write_report(outdir: Path, doc: dict, s, U, ritz=None, data: ReportData | None = None) -> Path:
    """``report.html`` (self-contained: images inline as data URIs) and ``report/*.png``
    (one per :data:`FIGURES` that applies)."""
    import base64
    import html

    outdir = Path(outdir)
    data = data or ReportData()
    figs = make_figures(doc, s, U, ritz, data)
    for name, png in figs.items():
        with atomic_file(outdir / "report" / f"{name}.png", "wb") as fh:
            fh.write(png)
    e = html.escape
    num = _num
    sp = doc.get("spectrum_info") or {}
    phen = doc.get("phenotypes") or []
    mf = [p for p in phen if p.get("reml_method") == "matrix_free"]
    inputs = doc.get("inputs") or {}
    summary = [
        ("bigmm version", doc.get("bigmm_version")), ("created", doc.get("created")),
        ("command line", doc.get("command") or "none recorded (run from Python: bigmm.run)"),
        ("configuration file", doc.get("config_file") or "none (a configuration given in Python)"),
        *((f"{what} input", path) for what, path in inputs.items() if path),
        ("genotyped samples", doc.get("n_genotyped")), ("analysed samples", doc.get("n_samples")),
        ("variants used", doc.get("n_variants")), ("variants in the data", doc.get("n_variants_total")),
        ("variants dropped", ", ".join(f"{k} {v}" for k, v in (doc.get("variants_dropped") or {}).items() if v) or "none"),
        ("standardization", doc.get("standardize")),
        ("REML method", doc.get("reml_method") or "spectral"),
        ("spectrum", (f"{sp.get('method')} (requested {sp.get('requested')}), n = {sp.get('n')}, k = {sp.get('k')}"
                      + (f", {sp.get('passes_over_X')} passes over X, max Ritz residual {num(sp.get('max_ritz_residual'), '{:.2e}')}"
                         if sp.get("passes_over_X") else "")) if sp else "none"),
        ("log-likelihood convention", doc.get("logl_convention")),
        ("config fingerprint", doc.get("config_fingerprint")),
    ]

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
                        "LRT p", "boundary", "missing", "SE method"], rows, e)
    liability = [(p.get("name"), num(p.get("prevalence"), "{:g}"), num(p.get("case_fraction")), num(p.get("h2")),
                  num(p.get("h2_se")), num(p.get("h2_liability")), num(p.get("h2_liability_se")))
                 for p in phen if p.get("h2_liability") is not None]
    if liability:
        estimates += (
            '<h3 id="liability">Liability scale</h3><p>A case/control phenotype (cases: its larger value) '
            'with <code>phenotypes.prevalence</code> K: h² above is on the observed 0/1 scale; on the '
            'liability scale h²<sub>L</sub> = h² K²(1 − K)² / (z² P(1 − P)), z the standard normal density at '
            'the threshold Φ⁻¹(1 − K), P the case fraction of the analysed samples; its SE is the observed '
            'scale SE times the same factor (Lee et al. 2011, as GCTA\'s V(G)/Vp_L).</p>'
            + _table(["phenotype", "prevalence K", "case fraction P", "h² (observed)", "SE",
                      "h²<sub>L</sub> (liability)", "SE"], liability, e))
    fe_rows = [(p.get("name"), fe.get("name"), num(fe.get("estimate"), "{:.6g}"), num(fe.get("se"), "{:.4g}"),
                num(fe["estimate"] / fe["se"], "{:.2f}") if fe.get("se") and fe.get("estimate") is not None else "NA")
               for p in phen for fe in (p.get("fixed_effects") or [])]
    fe_section = "" if not fe_rows else (
        '<section id="fixed-effects"><h2>Fixed effects</h2><p>Generalised least squares at the REML '
        'variances; SE from (ZᵀV⁻¹Z)⁻¹; z = estimate / SE. Categorical covariates are coded against '
        'their reference level.</p>' + _table(["phenotype", "effect", "estimate", "SE", "z"], fe_rows, e)
        + "</section>")

    design = doc.get("design") or {}
    sample_rows = []
    for m in design.get("matches") or []:
        sample_rows.append((m.get("what"), m.get("file"), m.get("rows"), m.get("rows_matched"),
                            m.get("genotyped_without_row"), m.get("rows_matching_if_swapped"),
                            m.get("rows_matching_by_iid_only")))
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
    per_pheno = [(p.get("name"), p.get("n"), p.get("n_missing")) for p in phen]  # n_missing: of the analysed
    samples_section = "" if not (sample_rows or excluded) else (
        '<section id="samples"><h2>Samples</h2>'
        + (f"<p>{n_gen} genotyped samples; each sample left out is counted under the first reason that "
           "applies.</p>" + _table(["samples", "count"], excluded, e) if excluded else "")
        + ("<h3>Input files</h3>" + _table(["table", "file", "rows", "rows matching a genotyped sample",
                                            "genotyped samples without a row", "rows matching if FID/IID swapped",
                                            "rows matching by IID only"], sample_rows, e) if sample_rows else "")
        + ("<h3>Per phenotype</h3>" + _table(["phenotype", "samples with a value", "analysed samples without one"],
                                             per_pheno, e) if per_pheno else "")
        + "".join(f'<p class="warn">{e(w)}</p>' for w in design.get("warnings") or []) + "</section>")

    mf_rows = [(p["name"], p.get("lanczos_steps"), p.get("passes_over_X"), "yes" if p.get("converged") else "NO",
                num(p.get("delta_h2"), "{:.1e}"), num(p.get("delta_logl"), "{:.1e}"), p.get("probes"),
                p.get("deflation_rank"), num(p.get("h2_se_stat")), num(p.get("h2_se_mc")), num(p.get("h2_he")))
               for p in mf]
    mf_section = "" if not mf else (
        '<section id="matrix-free"><h2>Matrix-free REML</h2>\n<p>ℓ_R(h²) by block Lanczos quadrature on passes '
        'over the genotypes (no spectrum of K); log det H by stochastic Lanczos quadrature with Rademacher probes. '
        'The reported SE of h² combines the statistical SE and the Monte Carlo SD of ĥ² due to the probes '
        '(delete-one-probe jackknife). Convergence: the change of ĥ² and ℓ_R over the last step. h²_HE is the '
        'Haseman–Elston moment estimate from the first pass: a rough cross-check, far less precise than '
        'REML and not constrained, so it can fall outside [0, 1].</p>'
        + _table(["phenotype", "Lanczos steps", "passes over X", "converged", "|Δh²|", "|Δℓ_R|", "probes",
                  "deflation rank", "SE (statistical)", "SD (Monte Carlo)", "h²<sub>HE</sub>"], mf_rows, e) + "</section>")

    stage_rows = [(name, num(st.get("seconds"), "{:.1f}"), num(st.get("driver_peak_rss_mib"), "{:.0f}"),
                   num(st.get("workers_rss_mib"), "{:.0f}")) for name, st in (doc.get("stages") or {}).items()]

    def img(name, alt):
        if name not in figs:
            return ""
        b64 = base64.b64encode(figs[name]).decode()
        return (f'<figure><img id="fig-{name}" src="data:image/png;base64,{b64}" alt="{e(alt)}">'
                f'<figcaption>{e(alt)}</figcaption></figure>')

    dropped = doc.get("variants_dropped") or {}
    filters = (doc.get("config") or {}).get("variants") or {}
    variant_section = "" if not (dropped or "variant_qc" in figs) else (
        '<section id="variants"><h2>Variant QC</h2><p>Each dropped variant is counted under the first filter '
        'that applies'
        + (f" (min_maf {filters.get('min_maf')}, max_missing {filters.get('max_missing')})" if filters else "")
        + ". Histograms over all variants of the data, before filtering."
        + (" No genotype call is missing (every variant called in every sample)." if data.missing is not None
           and np.all(np.nan_to_num(np.asarray(data.missing, dtype=float)) == 0) else "") + "</p>"
        + _table(["filter", "variants removed"], [(k, v) for k, v in dropped.items()]
                 + [("kept", doc.get("n_variants"))], e)
        + img("variant_qc", "Minor allele frequency and missingness per variant") + "</section>")

    rel = data.relatedness
    rel_section = ""
    if rel:
        top = [(f"{a['a'][0]}/{a['a'][1]}", f"{a['b'][0]}/{a['b'][1]}", num(a["K"]), num(a.get("K_aa")),
                num(a.get("K_bb")), num(a.get("K_normalised")), a.get("class") or "-") for a in rel["top"]]
        undefined = rel.get("pairs_without_normalised") or 0
        rel_section = (
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
            + img("relatedness", "Distribution of the normalised off-diagonal K (log scale)")
            + f"<h3>The {len(top)} most related pairs</h3>"
            + _table(["sample i", "sample j", "K<sub>ij</sub>", "K<sub>ii</sub>", "K<sub>jj</sub>",
                      "K<sub>ij</sub> / √(K<sub>ii</sub> K<sub>jj</sub>)", "class (normalised)"], top, e)
            + "</section>")

    pheno_section = "" if "phenotypes" not in figs else (
        '<section id="phenotypes"><h2>Phenotype distributions</h2><p>Values of the analysed samples, '
        'before covariates are fitted.</p>' + img("phenotypes", "Phenotype histograms") + "</section>")

    blup_rows = []
    for name, (g, y) in (data.blup or {}).items():
        acc = (data.blup_accuracy or {}).get(name) or {}
        blup_rows.append((name, acc.get("n"), num(acc.get("in_sample"), "{:.3f}"), num(acc.get("loo"), "{:.3f}"),
                          num(acc.get("loo_genetic"), "{:.3f}"), num(acc.get("gv"), "{:.3f}"),
                          int((~np.isfinite(np.asarray(y, dtype=float))).sum())))
    has_loo = any("loo" in (a or {}) for a in (data.blup_accuracy or {}).values())
    blup_section = "" if not blup_rows else (
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
                 blup_rows, e)
        + "</section>")

    pc_caption = pc_text = ""
    if data.labels is not None and figs.keys() & {"pc1_pc2", "pc3_pc4"}:
        entries = [f"{v} ({int(sel.sum())})" for v, sel in label_groups(data.labels[1])]
        pc_caption = f", coloured by {data.labels[0]}: " + ", ".join(entries)
        src = data.label_source
        if src:
            pc_text = (f'<p id="pc-labels">The PC plots are coloured by column <b>{e(src["column"])}</b> of '
                       f'<code>{e(src["file"])}</code>: {src["samples_labelled"]} of {src["samples"]} samples '
                       f'labelled ({src["levels"]} distinct labels; at most {MAX_LABELS} legend entries, the rarer '
                       f'labels grouped as "other"), {src["samples_without_label"]} without a row or value shown '
                       f'as "no label"; {src["rows_matched"]} of the file\'s {src["rows"]} rows match a sample.</p>')
        else:
            pc_text = (f'<p id="pc-labels">The PC plots are coloured by the categorical covariate '
                       f'<b>{e(str(data.labels[0]))}</b> (set <code>report.labels</code> to colour them by a '
                       f'column of your own, e.g. population).</p>')
    spectrum_section = (
        '<section id="spectrum"><h2>Spectrum and principal components</h2>'
        + _spectrum_extras(sp, e)
        + pc_text
        + img("scree", "Eigenvalues of the GRM") + img("pc1_pc2", "PC1 vs PC2" + pc_caption)
        + img("pc3_pc4", "PC3 vs PC4" + pc_caption)
        + img("ritz_residuals", "Ritz residuals") + "</section>") if (sp or figs.keys() & {"scree", "pc1_pc2"}) else ""
    profiles_section = "" if "reml_profiles" not in figs else (
        '<section id="profiles"><h2>REML profile likelihood</h2>'
        + img("reml_profiles", "Restricted log-likelihood over h² (first phenotypes), relative to its maximum; "
              "dotted: the estimate, shaded: its 95% Wald interval, dashed: the likelihood-ratio 95% cut-off")
        + "</section>")

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bigmm report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
th {{ background: #f0f0f0; }}
section {{ overflow-x: auto; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: min(560px, 95vw); height: auto; }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 520px; }}
.warn {{ color: #a33; }}
nav a {{ margin-right: 0.8em; }}
</style></head><body>
<h1>bigmm report</h1>
<nav>{{nav}}</nav>
<section id="summary"><h2>Run summary</h2>{_table(["", ""], summary, e).replace("<tr><th></th><th></th></tr>", "")}</section>
<section id="estimates"><h2>Estimates</h2>
<p>h² = σ²<sub>g</sub> / Vp with Vp = σ²<sub>g</sub> + σ²<sub>e</sub> (its SE from the covariance of the two); 95% confidence interval
h² ± 1.96 SE, clipped to [0, 1]. LRT p-value for h² = 0 from ½χ²₀ + ½χ²₁.</p>
{estimates}</section>
{fe_section}
{samples_section}
{pheno_section}
{mf_section}
{variant_section}
{rel_section}
{spectrum_section}
{profiles_section}
{blup_section}
<section id="stages"><h2>Stages</h2>
{_table(["stage", "seconds", "driver peak RSS (MiB)", "workers RSS (MiB)"], stage_rows, e)}
</section>
<script>
window.addEventListener("load", function () {{
  for (const im of document.images) im.dataset.loaded = (im.complete && im.naturalWidth > 0) ? "yes" : "no";
}});
</script>
</body></html>
"""
    present = [sid for sid in SECTIONS if f'<section id="{sid}">' in page]
    titles = {"fixed-effects": "fixed effects", "matrix-free": "matrix-free", "blup": "BLUP"}
    page = page.replace("{nav}", "".join(f'<a href="#{sid}">{titles.get(sid, sid)}</a>' for sid in present))
    path = outdir / "report.html"
    atomic_write_text(path, page)
    return path
