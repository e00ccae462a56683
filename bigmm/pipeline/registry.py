"""The stages of a run, in the order they run: the only place their names are written.

    ingest → variant_stats → grm → spectrum → (ld_scores → component_grms) → rotate → reml → blup → rg → report

Each entry is a declaration (:class:`bigmm.pipeline.stage.Stage`) made by its stage file, which is
handed the declarations it reads. A stage with one declaration per REML model (``reml``, ``blup``;
``rotate`` belongs to the spectral model alone) lists each; the plan keeps those of the model it
chose (:func:`bigmm.pipeline.plan.choose`). A new model is a library fit function, its stage file
and its lines here.
"""

from __future__ import annotations

from .stage import (component_grms, components_blup, grm, ingest, ld_scores, reml_components, reml_components_mf,
                    reml_matrix_free, reml_spectral, report, rg, rotate, spectrum, variant_stats)

INGEST = ingest.declare("ingest")
VARIANT_STATS = variant_stats.declare("variant_stats", INGEST)
GRM = grm.declare("grm", INGEST, VARIANT_STATS)
SPECTRUM = spectrum.declare("spectrum", INGEST, VARIANT_STATS, GRM)
LD_SCORES = ld_scores.declare("ld_scores", INGEST, VARIANT_STATS)
COMPONENT_GRMS = component_grms.declare("component_grms", INGEST, VARIANT_STATS, LD_SCORES)
ROTATE = rotate.declare("rotate", SPECTRUM, reml_spectral.MODEL)
REML = (reml_spectral.declare_reml("reml", ROTATE),
        reml_matrix_free.declare_reml("reml", INGEST, VARIANT_STATS, SPECTRUM),
        reml_components.declare_reml("reml", COMPONENT_GRMS, SPECTRUM),
        reml_components_mf.declare_reml("reml", INGEST, VARIANT_STATS, LD_SCORES, SPECTRUM))
BLUP = (reml_spectral.declare_blup("blup", REML[0], ROTATE, SPECTRUM, INGEST, VARIANT_STATS),
        reml_matrix_free.declare_blup("blup", REML[1], INGEST, VARIANT_STATS),
        components_blup.declare_exact("blup", REML[2], COMPONENT_GRMS, SPECTRUM),
        components_blup.declare_matrix_free("blup", REML[3], INGEST, VARIANT_STATS, LD_SCORES, SPECTRUM))
# genetic correlations (bivariate REML): the single-component models only
RG = (rg.declare_spectral("rg", REML[0], ROTATE, SPECTRUM),
      rg.declare_matrix_free("rg", REML[1], INGEST, VARIANT_STATS, SPECTRUM))
REPORT = report.declare("report", VARIANT_STATS, GRM, SPECTRUM, REML, BLUP, RG)

#: every declaration, in the order the stages run
REGISTRY = (INGEST, VARIANT_STATS, GRM, SPECTRUM, LD_SCORES, COMPONENT_GRMS, ROTATE, *REML, *BLUP, *RG, REPORT)
#: the stage names, in order
STAGES = tuple(dict.fromkeys(s.name for s in REGISTRY))
#: the REML models, by ``reml.method``
MODELS = tuple(dict.fromkeys(s.model for s in REGISTRY if s.model is not None))
