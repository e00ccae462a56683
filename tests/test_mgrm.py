"""Several precomputed GRMs over the same samples (GCTA ``--mgrm``, GEMMA ``-mk``):
:func:`bigmm.io.gcta.open_mgrm` reads a list of GCTA and PLINK 2 GRM prefixes, aligns every GRM to
the first one's sample order, and refuses lists it cannot use before any value is read."""

from __future__ import annotations

import numpy as np
import pytest

from bigmm.errors import InputError
from bigmm.io.gcta import open_mgrm, write_gcta_grm

IDS = [(f"F{i}", f"I{i}") for i in range(6)]


def _grm(seed: int) -> np.ndarray:
    """A positive definite 6 x 6 matrix with GRM-like scale (diagonal ~1)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((6, 40))
    return X @ X.T / 40


def _write_plink2_square(prefix, K, ids):
    """PLINK 2's ``--make-rel bin``: the square float64 matrix and a ``#FID IID`` header."""
    np.asarray(K, dtype="<f8").tofile(f"{prefix}.rel.bin")
    with open(f"{prefix}.rel.id", "w") as fh:
        fh.write("#FID\tIID\n" + "".join(f"{f}\t{i}\n" for f, i in ids))


@pytest.fixture
def three(tmp_path):
    """Three GRMs of the same samples in three orders: GCTA (store order), GCTA (reversed), PLINK 2
    (shuffled); the list file names them relatively, absolutely, with a comment and a blank line."""
    Ks = [_grm(s) for s in (1, 2, 3)]
    write_gcta_grm(tmp_path / "grms" / "a", Ks[0], IDS, n_variants=40)
    rev = np.arange(6)[::-1]
    write_gcta_grm(tmp_path / "grms" / "b", Ks[1][np.ix_(rev, rev)], [IDS[i] for i in rev], n_variants=40)
    perm = np.array([2, 0, 5, 1, 4, 3])
    _write_plink2_square(tmp_path / "grms" / "c", Ks[2][np.ix_(perm, perm)], [IDS[i] for i in perm])
    lst = tmp_path / "grms" / "mgrm.txt"
    lst.write_text(f"# three GRMs\na\n\nb\n{tmp_path / 'grms' / 'c'}\n")
    return lst, Ks


def test_every_grm_is_aligned_to_the_first_ones_samples(three):
    lst, Ks = three
    grms = open_mgrm(lst)
    assert grms.names[:2] == ("a", "b") and grms.ids == IDS
    got = grms.read()
    # GCTA stores float32: K rounded to float32 and back, exactly; PLINK 2's square is float64
    np.testing.assert_array_equal(got[0], Ks[0].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(got[1], Ks[1].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(got[2], Ks[2])


def test_a_subset_of_samples_is_read_in_the_order_asked(three):
    lst, Ks = three
    rows = np.array([4, 1, 3])
    got = open_mgrm(lst).read(rows)
    np.testing.assert_array_equal(got[2], Ks[2][np.ix_(rows, rows)])
    np.testing.assert_array_equal(got[1], Ks[1].astype(np.float32).astype(np.float64)[np.ix_(rows, rows)])


def test_prefixes_may_be_given_as_a_sequence(three):
    lst, _ = three
    grms = open_mgrm([lst.parent / "a", lst.parent / "c"])
    assert len(grms.grms) == 2 and grms.ids == IDS


def test_grms_of_other_samples_are_refused_naming_files_and_a_sample(tmp_path):
    write_gcta_grm(tmp_path / "a", _grm(1), IDS, n_variants=40)
    write_gcta_grm(tmp_path / "b", _grm(2)[:5, :5], IDS[:5], n_variants=40)
    (tmp_path / "m.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match=r"m.txt line 2: the GRMs are over different samples .*F5 I5 is in "
                                         r".*a.grm.id but not in .*b.grm.id"):
        open_mgrm(tmp_path / "m.txt")


@pytest.mark.parametrize("text, match", [
    ("a\na\n", r"line 2: .*a.grm.bin is already listed \(.*line 1\)"),
    ("a\nnone\n", r"line 2: .*none.*(does not exist|neither)"),
    ("a b\n", r"line 1: 'a b'; expected one GRM prefix per line"),
    ("# nothing\n\n", r"names no GRM"),
])
def test_a_list_that_cannot_be_used_is_refused_with_its_line(tmp_path, text, match):
    write_gcta_grm(tmp_path / "a", _grm(1), IDS, n_variants=40)
    (tmp_path / "m.txt").write_text(text)
    with pytest.raises(InputError, match=match):
        open_mgrm(tmp_path / "m.txt")


def test_a_sample_listed_twice_in_one_grm_is_refused(tmp_path):
    write_gcta_grm(tmp_path / "a", _grm(1), IDS, n_variants=40)
    _write_plink2_square(tmp_path / "b", _grm(2), IDS[:5] + [IDS[0]])
    (tmp_path / "m.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match=r"line 2: .*b.rel.id lists sample F0 I0 twice"):
        open_mgrm(tmp_path / "m.txt")
