"""Duplicate variant IDs: refused wherever bigmm reads a variant table, naming the IDs and where.

On main a .bim with two variants of one ID was accepted; ``bigmm score`` then looked each
training effect up by ID, so both effects of the ID went to the last variant with it (scores off
by 0.06-0.08 where 1.5e-6 was right) while every variant was reported used.
"""

import shutil

import numpy as np
import pytest
import yaml

import bigmm
from bigmm.blup import match_alleles
from bigmm.errors import InputError
from bigmm.io.plink import read_plink
from bigmm.pipeline.config import load_config
from bigmm.pipeline.validate import check_config


@pytest.fixture(scope="module")
def fileset(tmp_path_factory):
    d = tmp_path_factory.mktemp("dup")
    sim = bigmm.simulate(40, 60, h2=0.5, seed=3, out_plink=d / "c")
    bigmm.write_tables(sim, d / "c.pheno.tsv", d / "c.covar.tsv")
    return d


def with_duplicate(src, dest, line_from=2, line_to=5):
    """A copy of fileset ``src/c`` whose .bim line ``line_to`` carries the ID of ``line_from``."""
    dest.mkdir(parents=True, exist_ok=True)
    for ext in ("bed", "fam"):
        shutil.copy(src / f"c.{ext}", dest / f"c.{ext}")
    rows = (src / "c.bim").read_text().splitlines()
    dup = rows[line_from - 1].split()[1]
    f = rows[line_to - 1].split()
    f[1] = dup
    rows[line_to - 1] = "\t".join(f)
    (dest / "c.bim").write_text("\n".join(rows) + "\n")
    return dest / "c", dup


def test_bim_with_a_duplicated_id_is_refused_naming_the_id_and_lines(fileset, tmp_path):
    prefix, dup = with_duplicate(fileset, tmp_path / "d")
    with pytest.raises(InputError) as e:
        read_plink(prefix)
    msg = str(e.value)
    assert f"{prefix}.bim" in msg and f"{dup} (lines 2, 5)" in msg
    assert "--set-all-var-ids" in msg and "--rm-dup" in msg and "\n" not in msg
    # bigmm ingest (and so bigmm score --bfile, which ingests its target) refuses it too
    with pytest.raises(InputError, match="occur more than once"):
        bigmm.ingest_plink(prefix, tmp_path / "d.zarr")
    assert not (tmp_path / "d.zarr").exists()


def test_run_on_a_store_with_duplicated_ids_is_refused(fileset, tmp_path):
    G = bigmm.open_store(bigmm.ingest_plink(fileset / "c", tmp_path / "ok.zarr").path).genotypes[...]
    table = bigmm.open_store(tmp_path / "ok.zarr").variant_table()
    table["id"] = table["id"].copy()
    table["id"][7] = table["id"][3]
    st = bigmm.open_store(tmp_path / "ok.zarr")
    bigmm.create_store(tmp_path / "dup.zarr", G, fid=st.sample_fid, iid=st.sample_iid, variants=table)
    cfg = {"genotypes": {"zarr": str(tmp_path / "dup.zarr")}, "phenotypes": {"file": str(fileset / "c.pheno.tsv")},
           "output": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    problems = check_config(load_config(tmp_path / "run.yaml"), contact_cluster=False)
    assert any(f"{table['id'][3]} (variants 4, 8)" in p and str(tmp_path / "dup.zarr") in p for p in problems), problems


def test_scoring_a_target_with_duplicated_ids_is_refused(fileset, tmp_path):
    """The library's allele matching refuses an ambiguous table instead of choosing one variant.

    On main the training effect of variant 2 was applied to target variant 5 (the last with
    its ID) and variant 5's own effect too, and all 60 variants were counted "used"."""
    train = bigmm.ingest_plink(fileset / "c", tmp_path / "t.zarr").variant_table()
    target = {k: np.array(v, copy=True) for k, v in train.items()}
    target["id"][4] = target["id"][1]
    with pytest.raises(InputError, match=rf"the target variants: 1 variant ID\(s\) occur more than once: "
                                         rf"{target['id'][1]} \(variants 2, 5\)"):
        match_alleles(train, target)
    with pytest.raises(InputError, match="training variants"):
        match_alleles(target, train)
