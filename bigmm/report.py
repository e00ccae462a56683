"""Result files: ``results.json`` and ``results.tsv``, each written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .store import atomic_write_text

TSV_COLUMNS = ("n", "h2", "h2_se", "h2_se_curvature", "pve", "mean_diag_K", "sigma2_g", "sigma2_g_se", "sigma2_e",
               "sigma2_e_se", "logl_reml", "logl_ml", "lrt_stat", "lrt_pvalue", "boundary",
               "n_missing", "missing_method", "h2_se_method")


def _clean(obj):
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_results(outdir: Path, reml: dict, run_info: dict) -> tuple[Path, Path]:
    """Write results.tsv then results.json (the latter marks a finished run).

    ``reml`` is :meth:`RemlResult.to_dict` (as stored in ``reml.json``).
    """
    outdir = Path(outdir)
    doc = dict(run_info)
    doc.update(reml)
    doc = _clean(doc)
    fits = reml["phenotypes"]
    fe_names = [fe["name"] for fe in fits[0]["fixed_effects"]] if fits else []
    header = ["phenotype", *TSV_COLUMNS]
    for name in fe_names:
        header += [f"beta_{name}", f"se_{name}"]
    rows = ["\t".join(header)]
    for fit in fits:
        vals = [fit["name"]] + [_fmt(fit[c]) for c in TSV_COLUMNS]
        for fe in fit["fixed_effects"]:
            vals += [_fmt(fe["estimate"]), _fmt(fe["se"])]
        rows.append("\t".join(vals))
    tsv = outdir / "results.tsv"
    js = outdir / "results.json"
    atomic_write_text(tsv, "\n".join(rows) + "\n")
    atomic_write_text(js, json.dumps(doc, indent=2) + "\n")
    return js, tsv


def _fmt(v) -> str:
    if isinstance(v, float):
        return "NA" if not math.isfinite(v) else f"{v:.10g}"
    if v == "" or v is None:
        return "."
    return str(v)
