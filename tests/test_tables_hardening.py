"""Phenotype and covariate tables: cases that used to give a silently wrong result.

Each test builds tiny tables in ``tmp_path`` and passes a hand-written list of
genotyped (FID, IID) pairs straight to ``build_design`` / ``align_rows``, so no
genotype files are needed:

* missing values written as R and pandas write them (``-9.0``, ``-9.00``, ``NaN``)
* a UTF-8 byte-order mark at the start of the file
* sample IDs in another Unicode normalisation (NFD vs NFC)
* tables that match the genotyped samples only in part (FID/IID swapped, FID differs)
* gzip-compressed tables and quoted headers
"""

import gzip
import logging
import unicodedata

import numpy as np
import pytest

from bigmm.errors import InputError
from bigmm.io.tables import align_rows, build_design, read_table

N = 40


def ids(n=N):
    return [(f"F{i}", f"I{i}") for i in range(1, n + 1)]


def values(n=N, seed=1):
    return np.random.default_rng(seed).normal(size=n).round(4)


def write(path, rows, header="FID\tIID\ttrait"):
    path.write_text("".join(r + "\n" for r in ([header] if header else []) + rows))
    return path


def pheno_rows(sample_ids=None, y=None):
    sample_ids = ids() if sample_ids is None else sample_ids
    y = values(len(sample_ids)) if y is None else y
    return [f"{f}\t{i}\t{v}" for (f, i), v in zip(sample_ids, y)]


def table_warnings(design):
    return design.notes.get("warnings", [])


# ---------------------------------------------------------------------------
# 1. missing codes are decided numerically
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["-9", "-9.0", "-9.00", "-9e0", "-9.000E+00", "NA", "na", "NaN", "nan",
                                  "NAN", "N/A", ".", ""])
def test_missing_phenotype_codes(tmp_path, code):
    rows = pheno_rows()
    rows[4] = f"F5\tI5\t{code}"
    d = build_design(ids(), write(tmp_path / "p.tsv", rows), ["trait"])
    assert np.isnan(d.Y[4, 0]), f"{code!r} was fitted as {d.Y[4, 0]}"
    assert not d.analysed[4]
    assert d.analysed.sum() == N - 1


@pytest.mark.parametrize("code", ["-9.5", "-90", "9", "-8.999", "0"])
def test_values_near_minus_nine_are_values(tmp_path, code):
    rows = pheno_rows()
    rows[4] = f"F5\tI5\t{code}"
    d = build_design(ids(), write(tmp_path / "p.tsv", rows), ["trait"])
    assert d.Y[4, 0] == float(code)


def test_missing_codes_in_covariates(tmp_path):
    pheno = write(tmp_path / "p.tsv", pheno_rows())
    age = values(seed=2) + 50
    sex = ["M", "F"] * (N // 2)
    cov = [f"F{i + 1}\tI{i + 1}\t{a}\t{s}" for i, (a, s) in enumerate(zip(age, sex))]
    cov[2] = "F3\tI3\t-9.0\tM"    # numeric covariate missing as R writes it
    cov[6] = "F7\tI7\t51.5\t-9"   # categorical level -9: missing, as before
    cov[8] = "F9\tI9\t52.5\t-9.0"  # ... in any numeric spelling
    cov[10] = "F11\tI11\tNaN\tF"
    covf = write(tmp_path / "c.tsv", cov, header="FID\tIID\tage\tsex")
    d = build_design(ids(), pheno, ["trait"], covf, ["age", "sex"], ["sex"])
    assert d.covariate_names == ["intercept", "age", "sex=M"]
    assert not d.analysed[[2, 6, 8, 10]].any()
    assert d.analysed.sum() == N - 4
    t = read_table(covf)
    assert t.text("sex")[6] is None and t.text("sex")[8] is None and t.text("sex")[0] == "M"
    assert np.isnan(t.numeric("age")[[2, 10]]).all()


def test_text_that_is_not_a_number_is_still_refused(tmp_path):
    rows = pheno_rows()
    rows[4] = "F5\tI5\tabc"
    with pytest.raises(InputError, match=r"p\.tsv line 6: value 'abc' .* F5/I5 is not a number"):
        build_design(ids(), write(tmp_path / "p.tsv", rows), ["trait"])
    rows[4] = "F5\tI5\tinf"
    with pytest.raises(InputError, match="is not a number"):
        build_design(ids(), write(tmp_path / "p.tsv", rows), ["trait"])


# ---------------------------------------------------------------------------
# 2. a UTF-8 byte-order mark
# ---------------------------------------------------------------------------

def test_bom_headerless_keeps_first_row(tmp_path):
    y = values()
    path = tmp_path / "p.phen"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(r + "\n" for r in pheno_rows(y=y)).replace("\t", " ").encode())
    t = read_table(path)
    assert t.columns == ["1"] and t.fid[0] == "F1"
    d = build_design(ids(), path, ["1"])
    assert d.analysed.all()
    np.testing.assert_array_equal(d.Y[:, 0], y)


def test_bom_header_is_recognised(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(r + "\n" for r in ["FID\tIID\ttrait"] + pheno_rows()).encode())
    assert read_table(path).columns == ["trait"]
    assert build_design(ids(), path, ["trait"]).analysed.all()


# ---------------------------------------------------------------------------
# 3. Unicode normalisation of sample IDs
# ---------------------------------------------------------------------------

def nfd(s):
    return unicodedata.normalize("NFD", s)


def nfc(s):
    return unicodedata.normalize("NFC", s)


@pytest.mark.parametrize("table_form,genotype_form", [(nfd, nfc), (nfc, nfd)])
def test_ids_match_across_unicode_normalisation(tmp_path, table_form, genotype_form):
    names = [f"Jos\u00e9{i}" for i in range(N)]  # é: one code point in NFC, two in NFD
    geno = [(genotype_form("Fam\u00edlia"), genotype_form(s)) for s in names]
    table = [(table_form("Fam\u00edlia"), table_form(s)) for s in names]
    assert geno[0] != table[0]
    y = values()
    path = write(tmp_path / "p.tsv", pheno_rows(table, y))
    rows = align_rows(read_table(path), geno)
    np.testing.assert_array_equal(rows, np.arange(N))
    d = build_design(geno, path, ["trait"])
    assert d.analysed.all()
    np.testing.assert_array_equal(d.Y[:, 0], y)


def test_ids_equal_after_normalisation_are_duplicates(tmp_path):
    rows = pheno_rows([("F", nfc("Jos\u00e9")), ("F", nfd("Jos\u00e9")), ("F", "X")], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match=r"p\.tsv line 3: duplicate sample .*first on line 2"):
        read_table(write(tmp_path / "p.tsv", rows))


# ---------------------------------------------------------------------------
# 4. partial matches are reported
# ---------------------------------------------------------------------------

def test_full_match_is_logged_without_warning(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bigmm")
    d = build_design(ids(), write(tmp_path / "p.tsv", pheno_rows()), ["trait"])
    (m,) = d.notes["matches"]
    assert m == {"what": "phenotype", "file": str(tmp_path / "p.tsv"), "rows": N, "rows_matched": N,
                 "genotyped_without_row": 0, "rows_matching_if_swapped": 0, "rows_matching_by_iid_only": 0}
    assert table_warnings(d) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "p.tsv" in r.getMessage()]
    assert info and f"{N} of {N} rows match" in info[0]


def test_half_swapped_fid_iid_warns(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bigmm")
    n = 1500
    sid = ids(n)
    table = [(i, f) if k % 2 else (f, i) for k, (f, i) in enumerate(sid)]
    y = values(n)
    d = build_design(sid, write(tmp_path / "p.tsv", pheno_rows(table, y)), ["trait"])
    assert d.analysed.sum() == 750  # the result itself is unchanged; but it is no longer silent
    (m,) = d.notes["matches"]
    assert (m["rows"], m["rows_matched"], m["genotyped_without_row"], m["rows_matching_if_swapped"]) \
        == (1500, 750, 750, 750)
    (w,) = table_warnings(d)
    assert "p.tsv" in w and "750 of 1500 rows" in w and "750 rows match if FID and IID are swapped" in w
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert w in logged


def test_iid_only_matches_warn(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bigmm")
    sid = ids()
    table = [("0", i) if k < 5 else (f, i) for k, (f, i) in enumerate(sid)]  # FID 0 for 5 rows
    d = build_design(sid, write(tmp_path / "p.tsv", pheno_rows(table)), ["trait"])
    (m,) = d.notes["matches"]
    assert (m["rows_matched"], m["rows_matching_by_iid_only"], m["rows_matching_if_swapped"]) == (N - 5, 5, 0)
    (w,) = table_warnings(d)
    assert "5 rows match a genotyped sample by IID alone" in w and "0/I1" in w and "F1/I1" in w
    assert w in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_family_style_iids_do_not_count_as_iid_only(tmp_path):
    # IID 1, 2 in every family: an extra family in the table shares IIDs with many genotyped samples
    sid = [(f"FAM{f}", str(i)) for f in range(10) for i in range(1, 5)]
    table = sid + [("FAMX", "1"), ("FAMX", "2")]
    d = build_design(sid, write(tmp_path / "p.tsv", pheno_rows(table, values(len(table)))), ["trait"])
    (m,) = d.notes["matches"]
    assert m["rows_matching_by_iid_only"] == 0 and m["rows_matched"] == len(sid)
    assert table_warnings(d) == []  # 40 of 42 rows match: above 90%


def test_many_genotyped_samples_without_row_warn(tmp_path):
    sid = ids()
    d = build_design(sid, write(tmp_path / "p.tsv", pheno_rows(sid[:30])), ["trait"])
    (m,) = d.notes["matches"]
    assert (m["rows"], m["rows_matched"], m["genotyped_without_row"]) == (30, 30, 10)
    (w,) = table_warnings(d)
    assert "10 of 40 genotyped samples have no row" in w


def test_covariate_file_match_reported(tmp_path):
    sid = ids()
    pheno = write(tmp_path / "p.tsv", pheno_rows())
    covrows = [f"{i}\t{f}\t{a}" for (f, i), a in zip(sid, values(seed=3))]  # every row swapped
    covrows[:4] = [f"{f}\t{i}\t{a}" for (f, i), a in zip(sid[:4], values(4, seed=4))]
    covf = write(tmp_path / "c.tsv", covrows, header="FID\tIID\tage")
    d = build_design(sid, pheno, ["trait"], covf, ["age"])
    assert [m["what"] for m in d.notes["matches"]] == ["phenotype", "covariate"]
    m = d.notes["matches"][1]
    assert (m["rows_matched"], m["rows_matching_if_swapped"]) == (4, N - 4)
    (w,) = table_warnings(d)
    assert "c.tsv" in w and f"{N - 4} rows match if FID and IID are swapped" in w


def test_gcta_covariate_files_reported(tmp_path):
    sid = ids()
    pheno = write(tmp_path / "p.phen", [r.replace("\t", " ") for r in pheno_rows()], header=None)
    q = write(tmp_path / "q.qcovar", [f"{f} {i} {a}" for (f, i), a in zip(sid[:20], values(seed=5))],
              header=None)
    d = build_design(sid, pheno, ["1"], qcovar_path=q)
    m = d.notes["matches"][1]
    assert (m["what"], m["rows"], m["genotyped_without_row"]) == ("covariate", 20, 20)
    assert any("q.qcovar" in w and "20 of 40 genotyped samples have no row" in w for w in table_warnings(d))


def test_no_overlap_error_mentions_swap(tmp_path):
    sid = ids()
    with pytest.raises(InputError, match=f"no sample of phenotype file .*FID and IID.*{N} rows match "
                                         f"if FID and IID are swapped"):
        build_design(sid, write(tmp_path / "p.tsv", pheno_rows([(i, f) for f, i in sid])), ["trait"])


def test_notes_are_json(tmp_path):
    import json

    sid = ids()
    d = build_design(sid, write(tmp_path / "p.tsv", pheno_rows(sid[:30])), ["trait"])
    assert json.loads(json.dumps(d.notes)) == d.notes


# ---------------------------------------------------------------------------
# 5. gzip and quoted headers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p.phen.gz", "p.phen"])
def test_gzip_table(tmp_path, name):
    y = values()
    path = tmp_path / name
    with gzip.open(path, "wt") as fh:
        fh.write("".join(r + "\n" for r in ["FID\tIID\ttrait"] + pheno_rows(y=y)))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    t = read_table(path)
    assert t.columns == ["trait"]
    d = build_design(ids(), path, ["trait"])
    np.testing.assert_array_equal(d.Y[:, 0], y)


def test_gzip_with_bom_headerless(tmp_path):
    path = tmp_path / "p.phen.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + "".join(r + "\n" for r in pheno_rows()).encode()))
    assert read_table(path).fid[0] == "F1"
    assert build_design(ids(), path, ["1"]).analysed.all()


def test_truncated_gzip_is_refused(tmp_path):
    path = tmp_path / "p.phen.gz"
    path.write_bytes(gzip.compress("".join(r + "\n" for r in pheno_rows()).encode() * 20)[:60])
    with pytest.raises(InputError, match=r"cannot read phenotype file .*p\.phen\.gz"):
        build_design(ids(), path, ["1"])


def test_unreadable_path_is_refused(tmp_path):
    (tmp_path / "d.phen").mkdir()
    with pytest.raises(InputError, match=r"cannot read phenotype file .*d\.phen as a text table"):
        read_table(tmp_path / "d.phen", "phenotype")


def test_quoted_header_and_ids(tmp_path):
    # R's write.table(quote = TRUE): header and character columns in double quotes
    y = values()
    rows = [f'"{f}"\t"{i}"\t{v}' for (f, i), v in zip(ids(), y)]
    path = write(tmp_path / "p.tsv", rows, header='"FID"\t"IID"\t"trait"')
    t = read_table(path)
    assert t.columns == ["trait"] and t.fid[0] == "F1" and t.iid[0] == "I1"
    d = build_design(ids(), path, ["trait"])
    np.testing.assert_array_equal(d.Y[:, 0], y)


@pytest.mark.parametrize("second", [nfd("Jos\u00e9"), nfc("Jos\u00e9")])
def test_genotype_ids_equal_after_normalisation_are_refused(tmp_path, second):
    geno = [("F", nfc("Jos\u00e9")), ("F", second), ("F", "X")]
    path = write(tmp_path / "p.tsv", pheno_rows([("F", nfc("Jos\u00e9")), ("F", "X")], [1.0, 2.0]))
    with pytest.raises(InputError, match=r"the genotype data have sample.* line 2 of .*p\.tsv"):
        align_rows(read_table(path), geno)
