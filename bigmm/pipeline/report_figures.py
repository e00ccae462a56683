"""The plots of ``report.html``, one function per figure, each returning PNG bytes (matplotlib,
Agg backend): :func:`make_figures` draws those the run's outputs allow."""

from __future__ import annotations

import math

import numpy as np

from .report_data import RELATEDNESS_CLASSES, UNLABELLED, ReportData, is_components, label_groups
from .report_rg import rg_matrix

#: every figure the report can hold (``report/<name>.png``)
FIGURES = ("scree", "pc1_pc2", "pc3_pc4", "reml_profiles", "ritz_residuals", "phenotypes", "relatedness",
           "variant_qc", "components", "rg")
#: the r_g heat map writes r_g and its SE in its cells up to this many phenotypes
MAX_ANNOTATED = 12
#: the variance-components figure shows at most this many phenotypes and components (the first ones)
MAX_COMPONENT_PHENOTYPES = 6
MAX_COMPONENTS_SHOWN = 40
_LABEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                  "#17becf", "#393b79", "#637939", "#000000")  # not grey: "other" and "no label" are


def make_figures(doc: dict, s, U, ritz, data: ReportData | None = None) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by name."""
    _pyplot()
    data = data or ReportData()
    figs: dict[str, bytes] = {}
    if s is not None and len(s):
        figs["scree"] = scree_figure(s)
    for a, b in ((0, 1), (2, 3)):
        if U is not None and U.shape[1] > b:
            figs[f"pc{a + 1}_pc{b + 1}"] = pc_figure(U, a, b, data.labels)
    profiles = (doc.get("notes") or {}).get("profiles") or {}
    if profiles:
        figs["reml_profiles"] = reml_profiles_figure(profiles, doc.get("phenotypes", []))
    if ritz is not None and len(ritz):
        figs["ritz_residuals"] = ritz_figure(ritz)
    if data.phenotypes:
        figs["phenotypes"] = phenotypes_figure(data.phenotypes)
    if data.relatedness:
        figs["relatedness"] = relatedness_figure(data.relatedness)
    if data.maf is not None and data.missing is not None:
        figs["variant_qc"] = variant_qc_figure(data.maf, data.missing)
    if is_components(doc.get("phenotypes") or []):
        figs["components"] = components_figure(doc["phenotypes"])
    if (doc.get("rg") or {}).get("pairs"):
        figs["rg"] = rg_figure(doc["rg"])
    return figs


def scree_figure(s) -> bytes:
    """The top 100 eigenvalues of K on a log scale (non-positive ones left out)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    k = min(len(s), 100)
    pos = np.asarray(s[:k], dtype=float)
    ax.plot(np.arange(1, k + 1), np.where(pos > 0, pos, np.nan), "o-", ms=3)
    ax.set_xlabel("eigenvalue index $i$")
    ax.set_ylabel("eigenvalue $s_i$ of $K$")
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_title("Scree plot (top %d)" % k)
    return _figure_png(fig)


def pc_figure(U, a: int, b: int, labels=None) -> bytes:
    """PC ``a + 1`` against PC ``b + 1``, coloured by ``labels`` (column name, label per sample) if
    given for every sample (legend from :func:`label_groups`)."""
    plt = _pyplot()
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
    return _figure_png(fig)


def reml_profiles_figure(profiles: dict, fits: list) -> bytes:
    """ℓ_R(h²) − max ℓ_R of the first 10 phenotypes, with each estimate, its 95% Wald interval and
    the likelihood-ratio 95% cut-off."""
    plt = _pyplot()
    fits = {p["name"]: p for p in fits}
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
    return _figure_png(fig)


def ritz_figure(ritz) -> bytes:
    """The relative Ritz residual of each eigenpair of a randomized spectrum (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(np.arange(1, len(ritz) + 1), ritz, ".")
    ax.set_xlabel("eigenpair $i$")
    ax.set_ylabel(r"$\|K u_i - s_i u_i\| / s_i$")
    ax.set_title("Ritz residuals of the randomized spectrum")
    return _figure_png(fig)


def phenotypes_figure(phenotypes: dict) -> bytes:
    """A histogram of the observed values of each of the first 6 phenotypes."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    names = list(phenotypes)[:6]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        v = np.asarray(phenotypes[name], dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=min(40, max(5, v.size // 10)), color="#4a7fb5")
        _literal(ax.set_title(f"{name} (n = {v.size})", fontsize=9))
        ax.xaxis.set_major_locator(MaxNLocator(4))
    axes[0][0].set_ylabel("samples")
    return _figure_png(fig)


def relatedness_figure(r: dict) -> bytes:
    """The histogram of the normalised off-diagonal K (:func:`relatedness_summary`'s counts, log
    scale) with the cut-offs of :data:`RELATEDNESS_CLASSES`."""
    plt = _pyplot()
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
    return _figure_png(fig)


def variant_qc_figure(maf, missing) -> bytes:
    """Histograms of the minor allele frequency and the missing-call fraction per variant."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
    maf = np.asarray(maf, dtype=float)
    a1.hist(maf[np.isfinite(maf)], bins=50, range=(0, 0.5), color="#4a7fb5")
    a1.set_xlabel("minor allele frequency")
    a1.set_ylabel("variants")
    miss = np.asarray(missing, dtype=float)
    miss = miss[np.isfinite(miss)]
    if miss.size and miss.max() > 0:
        a2.hist(miss, bins=50, range=(0.0, float(miss.max())), color="#b5804a")
        a2.xaxis.set_major_locator(MaxNLocator(4))
    else:  # a histogram of zeros would span an arbitrary −0.5..0.5 around its single bar
        a2.text(0.5, 0.5, f"no missing calls\n({miss.size} variants)", ha="center", va="center",
                transform=a2.transAxes)
        a2.set_xticks([])
        a2.set_yticks([])
    a2.set_xlabel("fraction of calls missing")
    return _figure_png(fig)


def components_figure(fits: list) -> bytes:
    """Each component's share of h² and its enrichment (share of h² / share of variants) with
    95% Wald intervals (estimate ± 1.96 SE), one panel each (the enrichment panel only where the
    components have variant counts), the first :data:`MAX_COMPONENT_PHENOTYPES` phenotypes side by
    side and the first :data:`MAX_COMPONENTS_SHOWN` components."""
    plt = _pyplot()
    fits = fits[:MAX_COMPONENT_PHENOTYPES]
    names = [str(c["name"]) for c in fits[0]["components"]][:MAX_COMPONENTS_SHOWN]
    m, q = len(names), len(fits)

    def values(key):  # (q, m) estimates and SEs, NaN where null
        est = np.array([[np.nan if c.get(key) is None else c[key] for c in f["components"][:m]] for f in fits], float)
        se = np.array([[np.nan if c.get(f"{key}_se") is None else c[f"{key}_se"] for c in f["components"][:m]]
                       for f in fits], float)
        return est, se

    panels = [("share", "share of $h^2$", None)]
    if np.isfinite(values("enrichment")[0]).any():
        panels.append(("enrichment", "enrichment (share of $h^2$ / share of variants)", 1.0))
    height_in = min(16.0, 1.6 + 0.22 * m * q ** 0.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, height_in), squeeze=False, sharey=True)
    fig.subplots_adjust(top=1.0 - 0.55 / height_in, bottom=0.6 / height_in)  # margins in inches, not in fractions
    ypos = np.arange(m)
    height = 0.8 / q
    for ax, (key, label, ref) in zip(axes[0], panels):
        est, se = values(key)
        a, b = _interval_axis(est, se, key)
        for i, f in enumerate(fits):
            y = ypos - 0.4 + height * (i + 0.5)
            half = np.where(np.isfinite(se[i]), 1.96 * se[i], 0.0)
            x = np.nan_to_num(est[i])
            lo, hi = np.clip(x - half, a, b), np.clip(x + half, a, b)
            ax.barh(y, x, height=height * 0.9, xerr=[x - lo, hi - x], capsize=2,
                    color=_LABEL_COLOURS[i % len(_LABEL_COLOURS)], error_kw=dict(lw=0.8), label=str(f["name"]))
            cut_lo, cut_hi = x - half < a, x + half > b  # intervals beyond the panel: an arrow head at its edge
            ax.plot(np.full(cut_lo.sum(), a), y[cut_lo], "<", color="black", ms=4, clip_on=False)
            ax.plot(np.full(cut_hi.sum(), b), y[cut_hi], ">", color="black", ms=4, clip_on=False)
        ax.set_xlim(a, b)
        if ref is not None:
            ax.axvline(ref, color="grey", lw=0.8, ls="--")
        ax.axvline(0.0, color="black", lw=0.6)
        ax.set_xlabel(label)
    axes[0][0].set_yticks(ypos)
    _literal(*axes[0][0].set_yticklabels(names, fontsize=8))
    axes[0][0].set_ylim(m - 0.5, -0.5)  # the first component on top
    if q > 1:
        leg = axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        _literal(*leg.get_texts())
    fig.suptitle("Variance components (bars: estimate; lines: 95% interval, ±1.96 SE; "
                 "arrow: it goes beyond the panel)", fontsize=10)
    return _figure_png(fig)


def rg_figure(rg: dict) -> bytes:
    """The r_g matrix as a heat map (blue −1 .. red +1), r_g and its SE in each cell when the
    phenotypes are few."""
    plt = _pyplot()
    names, R, S = rg_matrix(rg["pairs"])
    m = len(names)
    size = min(12.0, 2.5 + 0.45 * m)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(np.ma.masked_invalid(R), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(m))
    ax.set_yticks(range(m))
    _literal(*ax.set_xticklabels(names, rotation=90, fontsize=8), *ax.set_yticklabels(names, fontsize=8))
    if m <= MAX_ANNOTATED:
        for i in range(m):
            for j in range(m):
                if i != j and np.isfinite(R[i, j]):
                    se = f"\n({S[i, j]:.2f})" if np.isfinite(S[i, j]) else ""
                    ax.text(j, i, f"{R[i, j]:.2f}{se}", ha="center", va="center", fontsize=7,
                            color="white" if abs(R[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="genetic correlation $r_g$")
    ax.set_title("Genetic correlations" + (" (SE in brackets)" if m <= MAX_ANNOTATED else ""))
    return _figure_png(fig)


def _interval_axis(est, se, key: str) -> tuple[float, float]:
    """The x range of a components panel: the estimates and their intervals, with the intervals
    cut where they run far beyond the estimates (a phenotype with a total h² near 0 has shares
    with SEs in the tens): shares within [−1, 2] (always showing [0, 1]), enrichments within
    ±(2 × the largest estimate + 1) (always showing [0, 1])."""
    with np.errstate(invalid="ignore"):
        lo, hi = est - 1.96 * np.nan_to_num(se), est + 1.96 * np.nan_to_num(se)
    fin = np.isfinite(est)
    if not fin.any():
        return -0.05, 1.05
    if key == "share":
        a, b = max(-1.0, min(0.0, float(np.nanmin(lo[fin])))), min(2.0, max(1.0, float(np.nanmax(hi[fin]))))
    else:
        top = 2.0 * max(1.0, float(np.nanmax(est[fin]))) + 1.0
        a, b = max(-top, min(0.0, float(np.nanmin(lo[fin])))), min(top, max(1.0, float(np.nanmax(hi[fin]))))
    pad = 0.04 * (b - a)
    return a - pad, b + pad


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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

