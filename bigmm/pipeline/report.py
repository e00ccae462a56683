"""Result files (``results.json``, ``results.tsv``), peer formats (.hsq, .eigenvec) and
``report.html``, each written atomically; ``results.json`` last of all."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..reml import MATRIX_FREE_COLUMNS, TABLE_COLUMNS
from ..store import atomic_file, atomic_write_text
from .outputs import json_safe as _clean

#: results.tsv's columns after ``phenotype`` (the library's fits table: RemlResult.to_pandas() has the same)
TSV_COLUMNS = TABLE_COLUMNS


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
    columns = TSV_COLUMNS + (MATRIX_FREE_COLUMNS if fits and "h2_se_mc" in fits[0] else ())
    header = ["phenotype", *columns]
    for name in fe_names:
        header += [f"beta_{name}", f"se_{name}"]
    rows = ["\t".join(header)]
    for fit in fits:
        vals = [fit["name"]] + [_fmt(fit[c]) for c in columns]
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

def write_hsq(outdir: Path, reml: dict) -> list[Path]:
    """A GCTA ``.hsq``-style table per phenotype (``<name>.hsq``).

    GCTA's logL is its REML log-likelihood; bigmm writes its own (Harville, no
    ½ log det ZᵀZ) and says so in a trailing comment line.
    """
    import numpy as np

    def val(key):  # JSON null (NaN, ±inf) as NaN, in float64 arithmetic: no OverflowError
        v = fit.get(key)
        return np.float64("nan") if v is None else np.float64(v)

    paths = []
    for fit in reml["phenotypes"]:
        with np.errstate(over="ignore", invalid="ignore"):
            vp = val("sigma2_g") + val("sigma2_e")
            var_vp = val("sigma2_g_se") ** 2 + val("sigma2_e_se") ** 2 + 2 * val("sigma2_g_sigma2_e_cov")
            se_vp = float(np.sqrt(var_vp)) if var_vp > 0 else float("nan")
        rows = [("Source", "Variance", "SE"),
                ("V(G)", _fmt(fit["sigma2_g"]), _fmt(fit["sigma2_g_se"])),
                ("V(e)", _fmt(fit["sigma2_e"]), _fmt(fit["sigma2_e_se"])),
                ("Vp", _fmt(float(vp)), _fmt(se_vp)),
                ("V(G)/Vp", _fmt(fit["h2"]), _fmt(fit["h2_se"])),
                ("logL", _fmt(fit["logl_reml"]), ""),
                ("logL0", _fmt(fit["logl_reml_h2_0"]), ""),
                ("LRT", _fmt(fit["lrt_stat"]), ""),
                ("df", "1", ""),
                ("Pval", _fmt(fit["lrt_pvalue"]), ""),
                ("n", str(fit["n"]), "")]
        text = "\n".join("\t".join(r).rstrip("\t") for r in rows)
        text += "\n# bigmm: logL is Harville's REML log-likelihood without ½ log det(Z'Z); Pval from ½χ²₀+½χ²₁\n"
        path = Path(outdir) / f"{_safe_name(fit['name'])}.hsq"
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


# ---------------------------------------------------------------------------------------
# report.html
# ---------------------------------------------------------------------------------------

def _figure_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def make_figures(doc: dict, s, U, ritz) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figs: dict[str, bytes] = {}
    if s is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        k = min(len(s), 100)
        ax.plot(np.arange(1, k + 1), s[:k], "o-", ms=3)
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("eigenvalue of K")
        ax.set_yscale("log")
        ax.set_title("Scree plot (top %d)" % k)
        figs["scree"] = _figure_png(fig)
    for a, b in ((0, 1), (2, 3)):
        if U is not None and U.shape[1] > b:
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            ax.scatter(U[:, a], U[:, b], s=4, alpha=0.6)
            ax.set_xlabel(f"PC{a + 1}")
            ax.set_ylabel(f"PC{b + 1}")
            ax.set_title(f"PC{a + 1} vs PC{b + 1}")
            figs[f"pc{a + 1}_pc{b + 1}"] = _figure_png(fig)
    profiles = doc.get("notes", {}).get("profiles", {})
    if profiles:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, prof in profiles.items():
            ll = np.array([np.nan if v is None else v for v in prof["logl_reml"]], dtype=float)
            ax.plot(prof["h2"], ll - np.nanmax(ll), label=name)
        ax.set_ylim(-10, 0.5)
        ax.set_xlabel("h²")
        ax.set_ylabel("ℓ_R(h²) − max")
        ax.set_title("REML profile log-likelihood")
        if len(profiles) <= 10:
            ax.legend(fontsize=7)
        figs["reml_profiles"] = _figure_png(fig)
    if ritz is not None and len(ritz):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.semilogy(np.arange(1, len(ritz) + 1), ritz, ".")
        ax.set_xlabel("eigenpair")
        ax.set_ylabel("‖K u − s u‖ / s")
        ax.set_title("Ritz residuals of the randomized spectrum")
        figs["ritz_residuals"] = _figure_png(fig)
    return figs


#: every figure the report can hold (``report/<name>.png``)
FIGURES = ("scree", "pc1_pc2", "pc3_pc4", "reml_profiles", "ritz_residuals")


def write_report(outdir: Path, doc: dict, s, U, ritz=None) -> Path:
    """``report.html`` (self-contained: images inline as data URIs) and ``report/*.png``
    (one per :data:`FIGURES` that applies)."""
    import base64
    import html
    import math

    outdir = Path(outdir)
    figs = make_figures(doc, s, U, ritz)
    for name, png in figs.items():
        with atomic_file(outdir / "report" / f"{name}.png", "wb") as fh:
            fh.write(png)
    e = html.escape
    sp = doc.get("spectrum_info") or {}
    mf = [p for p in doc["phenotypes"] if p.get("reml_method") == "matrix_free"]
    summary = [
        ("bigmm version", doc.get("bigmm_version")), ("created", doc.get("created")),
        ("genotyped samples", doc.get("n_genotyped")), ("analysed samples", doc.get("n_samples")),
        ("variants used", doc.get("n_variants")), ("variants in the data", doc.get("n_variants_total")),
        ("variants dropped", ", ".join(f"{k} {v}" for k, v in (doc.get("variants_dropped") or {}).items() if v) or "none"),
        ("standardization", doc.get("standardize")),
        ("REML method", doc.get("reml_method") or "spectral"),
        ("spectrum", (f"{sp.get('method')} (requested {sp.get('requested')}), n = {sp.get('n')}, k = {sp.get('k')}"
                      + (f", {sp.get('passes_over_X')} passes over X, max Ritz residual {sp.get('max_ritz_residual'):.2e}"
                         if sp.get("passes_over_X") else "")) if sp else "none"),
        ("log-likelihood convention", doc.get("logl_convention")),
        ("config fingerprint", doc.get("config_fingerprint")),
    ]

    def num(v, f="{:.4f}"):
        return "NA" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)

    rows = []
    for p in doc["phenotypes"]:
        h, se = p["h2"], p["h2_se"]
        ci = "NA" if se is None else f"[{max(0.0, h - 1.96 * se):.3f}, {min(1.0, h + 1.96 * se):.3f}]"
        rows.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in (
            p["name"], p["n"], num(h), num(se), ci, num(p["sigma2_g"]), num(p["sigma2_g_se"]),
            num(p["sigma2_e"]), num(p["sigma2_e_se"]), num(p["pve"]), num(p["lrt_pvalue"], "{:.3g}"),
            p["boundary"] or "-", p["missing_method"], p["h2_se_method"])) + "</tr>")
    mf_rows = []
    for p in mf:
        mf_rows.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in (
            p["name"], p["lanczos_steps"], p["passes_over_X"], "yes" if p["converged"] else "NO",
            num(p["delta_h2"], "{:.1e}"), num(p["delta_logl"], "{:.1e}"), p["probes"], p["deflation_rank"],
            num(p["h2_se_stat"]), num(p["h2_se_mc"]), num(p["h2_he"]))) + "</tr>")
    mf_section = "" if not mf else f"""<section id="matrix-free"><h2>Matrix-free REML</h2>
<p>ℓ_R(h²) by block Lanczos quadrature on passes over the genotypes (no spectrum of K); log det H by stochastic
Lanczos quadrature with Rademacher probes. The reported SE of h² combines the statistical SE and the Monte Carlo SD
of ĥ² due to the probes (delete-one-probe jackknife). Convergence: the change of ĥ² and ℓ_R over the last step.
h²_HE is the Haseman–Elston moment estimate from the first pass, a cross-check.</p>
<table><tr><th>phenotype</th><th>Lanczos steps</th><th>passes over X</th><th>converged</th><th>|Δh²|</th><th>|Δℓ_R|</th><th>probes</th><th>deflation rank</th><th>SE (statistical)</th><th>SD (Monte Carlo)</th><th>h²_HE</th></tr>
{''.join(mf_rows)}
</table></section>"""
    stage_rows = []
    for name, st in (doc.get("stages") or {}).items():
        stage_rows.append(f"<tr><td>{e(name)}</td><td>{num(st.get('seconds'), '{:.1f}')}</td>"
                          f"<td>{num(st.get('driver_peak_rss_mib'), '{:.0f}')}</td>"
                          f"<td>{num(st.get('workers_rss_mib'), '{:.0f}')}</td></tr>")

    def img(name, alt):
        if name not in figs:
            return ""
        data = base64.b64encode(figs[name]).decode()
        return f'<figure><img id="fig-{name}" src="data:image/png;base64,{data}" alt="{e(alt)}"><figcaption>{e(alt)}</figcaption></figure>'

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bigmm report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f0f0f0; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 520px; }}
</style></head><body>
<h1>bigmm report</h1>
<section id="summary"><h2>Run summary</h2><table>
{''.join(f'<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>' for k, v in summary)}
</table></section>
<section id="estimates"><h2>Estimates</h2>
<p>h² = σ²_g / (σ²_g + σ²_e); 95% confidence interval h² ± 1.96 SE, clipped to [0, 1]. LRT p-value for h² = 0 from ½χ²₀ + ½χ²₁.</p>
<table><tr><th>phenotype</th><th>n</th><th>h²</th><th>SE</th><th>95% CI</th><th>σ²_g</th><th>SE</th><th>σ²_e</th><th>SE</th><th>pve</th><th>LRT p</th><th>boundary</th><th>missing</th><th>SE method</th></tr>
{''.join(rows)}
</table></section>
{mf_section}
<section id="spectrum"><h2>Spectrum and principal components</h2>
{img('scree', 'Eigenvalues of the GRM')}{img('pc1_pc2', 'PC1 vs PC2')}{img('pc3_pc4', 'PC3 vs PC4')}{img('ritz_residuals', 'Ritz residuals')}
</section>
<section id="profiles"><h2>REML profile likelihood</h2>
{img('reml_profiles', 'Restricted log-likelihood over h² (first phenotypes), relative to its maximum')}
</section>
<section id="stages"><h2>Stages</h2>
<table><tr><th>stage</th><th>seconds</th><th>driver peak RSS (MiB)</th><th>workers RSS (MiB)</th></tr>
{''.join(stage_rows)}
</table></section>
</body></html>
"""
    path = outdir / "report.html"
    atomic_write_text(path, page)
    return path
