"""The plan (:mod:`bigmm.pipeline.plan`): the model chosen once, the stages a run needs, and the
fingerprints that decide what a rerun skips.

What it must do: keep one declaration per stage name for each REML model and refuse a model the
registry does not hold; chain the fingerprints (a stage's hashes its upstream stages', so a change
reruns that stage and everything downstream of it, and nothing upstream); choose ``auto`` methods at
the boundary ``spectrum.exact_max_n``; and count each stage's passes and flops from its declaration.
"""

from __future__ import annotations

import pytest

from bigmm.errors import InputError
from bigmm.pipeline import plan, registry
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.stage import Stage

DOWNSTREAM_OF_VARIANTS = ["variant_stats", "grm", "spectrum", "rotate", "reml", "blup", "report"]


@pytest.fixture
def files(tmp_path):
    """Small input files: a PLINK fileset, a phenotype table, a labels table, a given GRM."""
    (tmp_path / "cohort.bed").write_bytes(bytes([0x6C, 0x1B, 0x01]) + bytes(range(256)) * 4)
    (tmp_path / "cohort.bim").write_text("1\trs1\t0\t100\tA\tG\n1\trs2\t0\t200\tC\tT\n")
    (tmp_path / "cohort.fam").write_text("F1 I1 0 0 1 -9\nF2 I2 0 0 2 -9\n")
    (tmp_path / "pheno.tsv").write_text("FID\tIID\ttrait1\nF1\tI1\t1.0\nF2\tI2\t0.5\n")
    (tmp_path / "labels.tsv").write_text("FID\tIID\tpop\nF1\tI1\tEUR\nF2\tI2\tAFR\n")
    for name, data in (("given.grm.bin", bytes(range(12))), ("given.grm.N.bin", bytes(range(12))),
                       ("given.grm.id", b"F1\tI1\nF2\tI2\n")):
        (tmp_path / name).write_bytes(data)
    return tmp_path


def config(base, **changes):
    raw = {"genotypes": {"plink": "cohort"}, "phenotypes": {"file": "pheno.tsv"}, "output": "out",
           "predict": {"blup": True}}
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_config(raw, base=base)


def fingerprints(cfg, method="exact", rmethod="spectral") -> dict[str, str]:
    return {name: e["fingerprint"] for name, e in plan.stage_plan(cfg, method, None, rmethod).items()}


def changed(a: dict, b: dict) -> list[str]:
    assert list(a) == list(b)
    return [name for name in a if a[name] != b[name]]


# --------------------------------------------------------------------------------------------
# choose: one model, chosen once
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", registry.MODELS)
def test_choose_keeps_one_declaration_per_stage_for_each_model(model):
    chosen = plan.choose(model)
    names = [s.name for s in chosen]
    assert len(names) == len(set(names))  # one declaration per stage name
    assert all(s.model in (None, model) for s in chosen)
    assert names == [n for n in registry.STAGES if n in names]  # in the registry's order
    # every stage that has a declaration for every model, or for this one, is there
    for name in registry.STAGES:
        for_model = [s for s in registry.REGISTRY if s.name == name and s.model in (None, model)]
        assert (name in names) == bool(for_model), name


def test_the_models_are_spectral_and_matrix_free_and_rotate_belongs_to_spectral():
    assert registry.MODELS == ("spectral", "matrix_free", "components", "components_matrix_free")
    assert "rotate" in [s.name for s in plan.choose("spectral")]
    assert "rotate" not in [s.name for s in plan.choose("matrix_free")]


def test_choose_refuses_an_unknown_model():
    with pytest.raises(InputError, match="reml.method 'bogus': not a REML model; models are spectral, matrix_free"):
        plan.choose("bogus")


def test_choose_keeps_every_stage_of_a_registry_without_models():
    toy = (Stage(name="a", outputs=("a",), body=None, inputs=lambda f: {}),
           Stage(name="b", outputs=("b",), body=None, inputs=lambda f: {}))
    assert plan.choose("anything", toy) == toy


# --------------------------------------------------------------------------------------------
# stage_plan: fingerprints chain
# --------------------------------------------------------------------------------------------

def test_a_changed_variant_filter_changes_every_downstream_fingerprint(files):
    before = fingerprints(config(files))
    after = fingerprints(config(files, variants={"min_maf": 0.05}))
    assert list(before) == ["ingest", *DOWNSTREAM_OF_VARIANTS]
    assert changed(before, after) == DOWNSTREAM_OF_VARIANTS  # ingest's is upstream: kept


def test_a_changed_report_setting_changes_only_the_reports_fingerprint(files):
    before = fingerprints(config(files))
    assert changed(before, fingerprints(config(files, report={"labels": "labels.tsv"}))) == ["report"]


def test_a_changed_blup_setting_changes_blup_and_report_only(files):
    before = fingerprints(config(files))
    assert changed(before, fingerprints(config(files, predict={"snp_effects": True}))) == ["blup", "report"]


def test_an_edited_phenotype_file_changes_the_fit_and_after_not_the_genotype_stages(files):
    before = fingerprints(config(files))
    (files / "pheno.tsv").write_text("FID\tIID\ttrait1\nF1\tI1\t1.5\nF2\tI2\t0.5\n")
    assert changed(before, fingerprints(config(files))) == ["rotate", "reml", "blup", "report"]


def test_matrix_free_fingerprints_chain_through_its_own_declarations(files):
    before = fingerprints(config(files), rmethod="matrix_free")
    assert list(before) == ["ingest", "variant_stats", "reml", "blup", "report"]
    after = fingerprints(config(files, reml={"probes": 20}), rmethod="matrix_free")
    assert changed(before, after) == ["reml", "blup", "report"]


def test_the_plan_records_each_declarations_upstream_and_inputs(files):
    cfg = config(files, grm={"export_gcta": True})
    f = plan.facts(cfg, "exact", "spectral")
    for name, entry in plan.stage_plan(cfg, "exact").items():
        stage = plan.declarations(cfg, "exact")[name]
        assert entry["upstream"] == [u.name for u in stage.upstream(f)]
        assert entry["inputs"] == stage.inputs(f)
    assert plan.stage_plan(cfg, "exact")["report"]["upstream"] == ["reml", "blup", "grm"]


def test_a_new_version_changes_every_fingerprint(files, monkeypatch):
    before = fingerprints(config(files))
    monkeypatch.setattr(plan, "__version__", "0.0.0-test")
    assert changed(before, fingerprints(config(files))) == list(before)


# --------------------------------------------------------------------------------------------
# auto methods at the boundary exact_max_n
# --------------------------------------------------------------------------------------------

def test_auto_methods_switch_above_exact_max_n(files):
    cfg = config(files, spectrum={"method": "auto", "exact_max_n": 100}, reml={"method": "auto"})
    assert plan.spectrum_method(cfg, 100) == "exact" and plan.reml_method(cfg, 100) == "spectral"
    assert plan.spectrum_method(cfg, 101) == "randomized" and plan.reml_method(cfg, 101) == "matrix_free"


def test_a_named_method_is_kept_whatever_n(files):
    cfg = config(files, spectrum={"method": "randomized", "exact_max_n": 100}, reml={"method": "matrix_free"})
    assert plan.spectrum_method(cfg, 10) == "randomized" and plan.reml_method(cfg, 10) == "matrix_free"
    cfg = config(files, spectrum={"method": "exact", "exact_max_n": 100}, reml={"method": "spectral"})
    assert plan.spectrum_method(cfg, 1000) == "exact" and plan.reml_method(cfg, 1000) == "spectral"


def test_a_given_grm_is_always_exact_and_spectral(files):
    cfg = parse_config({"genotypes": {"grm": "given"}, "phenotypes": {"file": "pheno.tsv"}, "output": "out",
                        "spectrum": {"method": "auto", "exact_max_n": 100}, "reml": {"method": "auto"}},
                       base=files)
    assert plan.spectrum_method(cfg, 101) == "exact" and plan.reml_method(cfg, 101) == "spectral"
    assert list(plan.declarations(cfg, "exact")) == ["spectrum", "rotate", "reml", "report"]


def test_needs_grm_and_needs_spectrum(files):
    cfg = config(files)
    assert plan.needs_spectrum(cfg, "spectral") and not plan.needs_spectrum(cfg, "matrix_free")
    assert plan.needs_spectrum(config(files, covariates={"pcs": 2}), "matrix_free")
    assert plan.needs_spectrum(config(files, reml={"deflate": 2}), "matrix_free")
    assert plan.needs_grm(cfg, "exact") and not plan.needs_grm(cfg, "randomized")
    assert plan.needs_grm(config(files, grm={"export_gcta": True}), "randomized")
    assert not plan.needs_grm(cfg, "exact", "matrix_free")  # no spectrum needed: no GRM


# --------------------------------------------------------------------------------------------
# passes and flops of the plan
# --------------------------------------------------------------------------------------------

def test_stage_passes_of_a_plan(files):
    cfg = config(files)
    assert plan.stage_passes(cfg, 100, "exact", "spectral", 25, {}) == {
        "ingest": 1.0, "variant_stats": 1.0, "grm": 4.0, "spectrum": 0.0, "rotate": 0.0, "reml": 0.0,
        "blup": 0.0, "report": 0.0}
    mf = plan.stage_passes(config(files, reml={"max_steps": 40}), 100, "exact", "matrix_free", None, {})
    assert mf == {"ingest": 1.0, "variant_stats": 1.0, "reml": 40.0, "blup": 1.0, "report": 0.0}
    assert plan.passes_at_most("matrix_free") and not plan.passes_at_most("spectral")
    # a stage asked for that the plan does not run makes no pass
    assert plan.stage_passes(cfg, 100, "exact", "matrix_free", None, {}, stages=["grm"]) == {"grm": 0.0}


def test_stage_flops_leave_out_stages_without_arithmetic(files):
    cfg = config(files)
    passes = plan.stage_passes(cfg, 100, "exact", "spectral", 25, {})
    flops = plan.stage_flops(cfg, 100, 1000, "exact", "spectral", {}, passes, 1)
    assert flops == {"grm": 100 * 100 * 1000, "spectrum": 5 * 100 ** 3}  # n²p, 5n³
