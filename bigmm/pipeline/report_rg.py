"""The genetic correlations in ``results.json`` (its ``rg`` block) and on ``report.html`` (the
r_g matrix as a heat map with the SEs written in its cells, drawn by
:func:`bigmm.pipeline.report_figures.rg_figure`, and the pairs ordered by |r_g|)."""

from __future__ import annotations

import html
import math

import numpy as np

from .outputs import json_safe

#: the heat map shows at most this many phenotypes (those of the first pairs); the table all pairs
#: up to MAX_TABLE_PAIRS (rg.tsv has every pair)
MAX_HEATMAP_PHENOTYPES = 40
MAX_TABLE_PAIRS = 500


def rg_results(result, hsq_names: dict) -> dict:
    """results.json's ``rg`` block, as ``{"rg": block}``: the result's ``to_dict()`` (method, notes,
    one entry per pair, and on the matrix-free path the Monte Carlo SDs and builds), each pair with
    its ``hsq_file``, the table's name and the number of pairs."""
    doc = json_safe(result.to_dict())
    for p in doc["pairs"]:
        p["hsq_file"] = f"rg/{hsq_names[(p['trait_a'], p['trait_b'])]}"
    doc.update(table="rg.tsv", n_pairs=len(doc["pairs"]))
    return {"rg": doc}


def rg_matrix(pairs: list) -> tuple[list, np.ndarray, np.ndarray]:
    """The phenotypes of ``pairs`` (first seen first), and the r_g matrix and its SEs (1 and 0 on the
    diagonal, NaN for a pair not fitted)."""
    names: list = []
    for p in pairs:
        for x in (p["trait_a"], p["trait_b"]):
            if x not in names:
                names.append(x)
    names = names[:MAX_HEATMAP_PHENOTYPES]
    at = {x: i for i, x in enumerate(names)}
    R = np.full((len(names), len(names)), np.nan)
    S = np.full_like(R, np.nan)
    np.fill_diagonal(R, 1.0)
    np.fill_diagonal(S, 0.0)
    for p in pairs:
        i, j = at.get(p["trait_a"]), at.get(p["trait_b"])
        if i is not None and j is not None and i != j:
            for a, b in ((i, j), (j, i)):
                R[a, b] = np.nan if p["rg"] is None else p["rg"]
                S[a, b] = np.nan if p["rg_se"] is None else p["rg_se"]
    return names, R, S


def _n(v, f="{:.4f}") -> str:
    return "NA" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)


#: the heat map's caption
RG_CAPTION = "Genetic correlations r_g of the pairs fitted (heat map; blank: not fitted)"


def rg_section(doc: dict, image: str) -> str:
    """Genetic correlations: the heat map (``image``, its HTML), and the pairs ordered by |r_g|
    with SE, r_e, h² and the LRT p-values ("" without an rg block)."""
    rg = doc.get("rg")
    if not rg:
        return ""
    pairs = sorted(rg["pairs"], key=lambda p: -abs(p["rg"]) if p["rg"] is not None else 0.0)
    mc = {(p["trait_a"], p["trait_b"]): m.get("rg") for p, m in zip(rg["pairs"], rg.get("mc_sd") or [])}
    head = ["phenotype a", "phenotype b", "n", "left out", "r_g", "SE", "r_e", "SE", "h² a", "SE", "h² b", "SE",
            "p (r_g = 0)", "p (|r_g| = 1)", "note"] + (["MC SD of r_g"] if mc else [])
    rows = []
    for p in pairs[:MAX_TABLE_PAIRS]:
        note = "; ".join(x for x in (p.get("boundary"), "" if p.get("converged", True) else "not converged",
                                     p.get("note")) if x)
        rows.append([p["trait_a"], p["trait_b"], p["n"], p["n_left_out"], _n(p["rg"]), _n(p["rg_se"]), _n(p["re"]),
                     _n(p["re_se"]), _n(p["h2_a"]), _n(p["h2_a_se"]), _n(p["h2_b"]), _n(p["h2_b_se"]),
                     _n(p["p_rg0"], "{:.3g}"), _n(p["p_rg1"], "{:.3g}"), note]
                    + ([_n(mc.get((p["trait_a"], p["trait_b"])), "{:.2g}")] if mc else []))
    table = ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
             + "</table>")
    more = (f"<p>{len(pairs) - MAX_TABLE_PAIRS} more pairs in rg.tsv.</p>" if len(pairs) > MAX_TABLE_PAIRS else "")
    constrained = (rg.get("notes") or {}).get("constrained")
    how = ("Bivariate REML of each pair (n: its samples; left out: those with a value of only one of the two, "
           "unless the note says they were fitted, rg.samples union), "
           + ("from the univariate matrix-free build (Monte Carlo SD of the probes by a delete-one-probe "
              "jackknife)" if rg.get("method") == "matrix-free" else f"on the {html.escape(str(rg.get('method')))}")
           + ("; G0 kept positive semi-definite (|r_g| ≤ 1, GCTA's default)" if constrained else "; G0 unconstrained")
           + ". p (r_g = 0): χ²₁; p (|r_g| = 1): ½χ²₀ + ½χ²₁. Every pair in rg.tsv, GCTA's table per pair "
           "in rg/.")
    if not pairs:
        return '<section id="rg"><h2>Genetic correlations</h2><p>No pairs (fewer than two phenotypes).</p></section>'
    return ('<section id="rg"><h2>Genetic correlations</h2>'
            + image
            + f"<p>{how}</p><h3>Pairs by |r_g|</h3>" + table + more + "</section>")
