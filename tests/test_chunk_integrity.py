"""Each stored chunk is tied to its place and its store, and a store rewritten in place is seen.

The CRC32C of a chunk proves it intact, not that it belongs where it lies: on main two swapped GRM
chunks, or a genotype chunk copied from another cohort's store of the same shape, passed every
check (h² 0.49 -> 0.31 with no warning), and an input Zarr store edited in place left every stage
"up to date". bigmm now records each chunk file's digest, keyed by its place, when it writes a
store (ingest, the GRM stage, the other stage outputs), checks it before a stage reuses or reads
the store, and fingerprints the stored bytes of a given cohort or VCF Zarr store in run.json.
"""

import json
import logging
import shutil

import numpy as np
import pytest
import zarr
from conftest import local_cluster, random_genotypes
from distributed import Client

import bigmm
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.stages import run, status
from bigmm.pipeline.validate import check_config
CHUNK_DIGESTS = "bigmm_chunk_digests"  # the record bigmm keeps in each store it writes

N, P = 60, 200


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity")
    sim = bigmm.simulate(N, P, h2=0.6, seed=11, out_plink=d / "c")
    bigmm.write_tables(sim, d / "c.pheno.tsv", d / "c.covar.tsv")
    return d


@pytest.fixture(scope="module")
def client():
    with local_cluster(1, 1) as cluster, Client(cluster) as c:
        yield c


def _swap(a, b):
    tmp = a.with_name(a.name + ".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _h2(outcome):
    return outcome.result.fits[0].h2


def test_swapped_grm_chunks_and_a_foreign_genotype_chunk_in_a_run(cohort, tmp_path, client, caplog):
    cfg = parse_config({"genotypes": {"plink": str(cohort / "c"), "chunks": [32, 64]},
                        "phenotypes": {"file": str(cohort / "c.pheno.tsv")}, "grm": {"block_size": 16},
                        "output": str(tmp_path / "out")})
    out = tmp_path / "out"
    first = run(cfg, client=client)
    h2 = _h2(first)
    kc = out / "grm.zarr" / "K" / "c"
    a, b = kc / "0" / "0", kc / "1" / "1"
    assert a.read_bytes() != b.read_bytes()
    # two diagonal blocks of K swapped: each passes its CRC; the GRM stage runs again
    _swap(a, b)
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        again = run(cfg, client=client)
    assert "grm" in again.stages_run, again.stages_run
    assert any("K/c/0/0 holds the data bigmm wrote for chunk c/1/1" in r.getMessage() for r in caplog.records)
    assert _h2(again) == h2  # the same computation as the first run
    # swapped again, then a stage that reads K reruns (on main: K read with the blocks swapped)
    _swap(a, b)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        third = run(cfg, client=client, from_stage="spectrum")
    assert "grm" in third.stages_run and _h2(third) == h2

    # a genotype chunk of another cohort's store of the same shape, copied into the run's store
    other = bigmm.simulate(N, P, h2=0.6, seed=12, out_plink=tmp_path / "o")
    bigmm.ingest_plink(tmp_path / "o", tmp_path / "o.zarr", chunks=(32, 64))
    src, dst = tmp_path / "o.zarr" / "genotypes" / "c" / "0" / "1", out / "genotypes.zarr" / "genotypes" / "c" / "0" / "1"
    assert src.read_bytes() != dst.read_bytes() and other is not None
    shutil.copy(src, dst)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        fourth = run(cfg, client=client, from_stage="variant_stats")
    assert fourth.stages_run[0] == "ingest", fourth.stages_run
    assert any("genotypes/c/0/1 is a valid chunk but not the one bigmm wrote there" in r.getMessage() for r in caplog.records)
    assert _h2(fourth) == h2


def test_foreign_chunk_in_an_input_store_is_refused(cohort, tmp_path):
    bigmm.ingest_plink(cohort / "c", tmp_path / "in.zarr", chunks=(32, 64))
    bigmm.simulate(N, P, seed=13, out_plink=tmp_path / "o")
    bigmm.ingest_plink(tmp_path / "o", tmp_path / "o.zarr", chunks=(32, 64))
    shutil.copy(tmp_path / "o.zarr" / "genotypes" / "c" / "1" / "2", tmp_path / "in.zarr" / "genotypes" / "c" / "1" / "2")
    cfg = parse_config({"genotypes": {"zarr": str(tmp_path / "in.zarr")},
                        "phenotypes": {"file": str(cohort / "c.pheno.tsv")}, "output": str(tmp_path / "out")})
    problems = check_config(cfg, contact_cluster=False)
    assert len(problems) == 1 and f"genotype store {tmp_path / 'in.zarr'}: chunk file" in problems[0], problems
    assert "in.zarr/genotypes/c/1/2 is a valid chunk but not the one bigmm wrote there" in problems[0]
    assert not (tmp_path / "out").exists()


def _write_vcf_zarr(path, G):
    """A VCF Zarr store (the layout of bio2zarr) written with Zarr's default codecs (no CRC32C)."""
    g = zarr.open_group(str(path), mode="w")
    n, p = G.shape
    gt = np.zeros((p, n, 2), dtype=np.int8)
    gt[..., 0] = (G.T >= 1)
    gt[..., 1] = (G.T == 2)
    gt[G.T < 0] = -1
    g.create_array("call_genotype", data=gt, chunks=(64, 32, 2))
    g.create_array("sample_id", data=np.array([f"S{i + 1}" for i in range(n)]))
    g.create_array("contig_id", data=np.array(["1"]))
    g.create_array("variant_contig", data=np.zeros(p, dtype=np.int8))
    g.create_array("variant_position", data=np.arange(1, p + 1, dtype=np.int32) * 100)
    g.create_array("variant_allele", data=np.array([["A", "G"]] * p))
    g.create_array("variant_id", data=np.array([f"rs{j}" for j in range(p)]))


def test_vcf_zarr_rewritten_in_place_reruns_and_old_runs_are_kept(cohort, tmp_path, client, caplog):
    rng = np.random.default_rng(4)
    G = random_genotypes(rng, N, P, missing=0.01)
    vcz = tmp_path / "c.vcz"
    _write_vcf_zarr(vcz, G)
    X = np.where(G < 0, 0, G) - np.where(G < 0, 0, G).mean(axis=0)
    y = X @ rng.normal(size=P) / np.sqrt(P) + rng.normal(size=N)
    (tmp_path / "y.tsv").write_text("FID\tIID\ty\n" + "".join(f"S{i + 1}\tS{i + 1}\t{v}\n" for i, v in enumerate(y)))
    raw = {"genotypes": {"vcf_zarr": str(vcz)}, "phenotypes": {"file": str(tmp_path / "y.tsv")},
           "output": str(tmp_path / "out")}
    cfg = parse_config(raw)
    first = run(cfg, client=client)
    assert run(cfg, client=client).stages_run == ()
    # call_genotype rewritten in place (one chunk's calls changed), as a user's tool would
    cg = zarr.open_group(str(vcz), mode="r+")["call_genotype"]
    block = np.asarray(cg[0:64, 0:32, :])
    cg[0:64, 0:32, :] = np.where(block >= 0, 1 - block, block)
    assert any(r["rerun"].startswith("yes (genotype store changed)") for r in status(tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        again = run(cfg, client=client)
    assert again.stages_run[0] == "variant_stats", again.stages_run
    assert any("changed since the stages that read it ran" in r.getMessage() for r in caplog.records)
    # the same result as a fresh run on the edited store
    fresh = run(parse_config({**raw, "output": str(tmp_path / "fresh")}), client=client)
    assert _h2(again) == _h2(fresh) and _h2(again) != _h2(first)

    # a run made before bigmm kept fingerprints and chunk digests is not rerun: they are recorded
    out = tmp_path / "out"
    doc = json.loads((out / "run.json").read_text())
    assert doc["genotype_content"]["files"] >= 4 * 2  # call_genotype's chunks and the other arrays'
    doc.pop("genotype_content")
    (out / "run.json").write_text(json.dumps(doc))
    for store in ("variants.zarr", "grm.zarr", "spectrum.zarr"):
        shutil.rmtree(out / store / CHUNK_DIGESTS)
    assert run(cfg, client=client).stages_run == ()
    assert all((out / s / CHUNK_DIGESTS).exists() for s in ("variants.zarr", "grm.zarr", "spectrum.zarr"))
    assert "genotype_content" in json.loads((out / "run.json").read_text())
