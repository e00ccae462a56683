"""A given GRM (``genotypes.grm``) whose values cannot be a GRM: refused, or warned about with numbers.

On main an all-zero GRM and one scaled by 1e30 ran to exit 0 with a meaningless h², and a GRM with
negative eigenvalues was clipped to positive semi-definite without a word.
"""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from bigmm.io.gcta import open_grm, write_gcta_grm
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.stages import run
from bigmm.pipeline.validate import check_config

DATA = Path(__file__).parent / "data" / "plink2_grm"


def _config(tmp_path, prefix) -> dict:
    return {"genotypes": {"grm": str(prefix)}, "phenotypes": {"file": str(DATA / "pheno.tsv")},
            "output": str(tmp_path / "out")}


def _problems(tmp_path, prefix) -> str:
    return "\n".join(check_config(parse_config(_config(tmp_path, prefix)), contact_cluster=False))


@pytest.fixture()
def grm():
    gf = open_grm(DATA / "cohort.grm.bin")
    return gf.read(), gf.ids


def test_all_zero_grm_is_refused(tmp_path, grm):
    K, ids = grm
    write_gcta_grm(tmp_path / "z", np.zeros_like(K), ids, 400)
    msg = _problems(tmp_path, tmp_path / "z")
    assert "z.grm.bin: every value of K is 0" in msg and "cannot be all zeros" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e4])
def test_absurdly_scaled_grm_is_refused_with_its_mean_diagonal(tmp_path, grm, scale):
    K, ids = grm
    # .rel.bin float64 square: the scaled values are written exactly (1e30 overflows float32)
    (tmp_path / "s.rel.bin").write_bytes((K * scale).astype("<f8").tobytes())
    shutil.copy(DATA / "cohort.rel.id", tmp_path / "s.rel.id")
    msg = _problems(tmp_path, tmp_path / "s")
    # the mean diagonal over the analysed samples, computed here from the file's K
    assert "the mean diagonal of K is" in msg and "outside [0.001, 1000]" in msg, msg
    shown = float(msg.split("the mean diagonal of K is ")[1].split()[0].rstrip(","))
    # every sample of pheno.tsv is analysed: the mean of the scaled file's diagonal (4 digits shown)
    assert shown == pytest.approx(np.diag(K).mean() * scale, rel=1e-3)
    assert not (tmp_path / "out").exists()


def test_plausible_scales_are_accepted(tmp_path, grm):
    K, ids = grm
    for scale in (0.5, 0.01, 50.0):  # a kinship matrix, a rare-variant centred GRM, a sum over 50 variants
        (tmp_path / "a.rel.bin").write_bytes((K * scale).astype("<f8").tobytes())
        shutil.copy(DATA / "cohort.rel.id", tmp_path / "a.rel.id")
        assert _problems(tmp_path, tmp_path / "a") == "", scale


def test_non_psd_grm_is_warned_with_the_numbers(tmp_path, grm, caplog):
    K, ids = grm
    rng = np.random.default_rng(5)
    V = np.linalg.qr(rng.standard_normal((K.shape[0], 3)))[0]
    Kb = K - V @ np.diag([2.0, 1.5, 1.0]) @ V.T  # three directions pushed below zero
    (tmp_path / "b.rel.bin").write_bytes(Kb.astype("<f8").tobytes())
    shutil.copy(DATA / "cohort.rel.id", tmp_path / "b.rel.id")
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        run(parse_config(_config(tmp_path, tmp_path / "b")))
    msgs = [r.getMessage() for r in caplog.records if "not positive semi-definite" in r.getMessage()]
    assert len(msgs) == 1, [r.getMessage() for r in caplog.records]
    # the reference: eigenvalues of K over the analysed samples (the run's order: the file's)
    from bigmm.pipeline.validate import validate

    inp = validate(parse_config(_config(tmp_path, tmp_path / "b")), force=True)
    s = np.linalg.eigvalsh(inp.grm_K)
    tol = s.size * np.finfo(float).eps * s.max()
    m = int((s < -tol).sum())
    assert m >= 1
    assert f"{m} of its {s.size} eigenvalues are negative" in msgs[0], msgs[0]
    assert f"the most negative {s.min():.4g}" in msgs[0] and "set to 0" in msgs[0]
    # the unaltered GRM runs without the warning (its eigenvalues are ≥ 0 up to round-off)
    caplog.clear()
    shutil.copy(DATA / "cohort.rel.bin", tmp_path / "c.rel.bin")
    shutil.copy(DATA / "cohort.rel.id", tmp_path / "c.rel.id")
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        run(parse_config({**_config(tmp_path, tmp_path / "c"), "output": str(tmp_path / "out2")}))
    assert not any("not positive semi-definite" in r.getMessage() for r in caplog.records)
