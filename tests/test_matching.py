"""C-FIND attribute matching (PS3.4 C.2.2.2): the parser, the Python evaluator, and the SQL
translation checked against the evaluator on a real SQLite index connection."""
from __future__ import annotations

import pytest
from pydicom.multival import MultiValue
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

from ihecli.archive import matching
from ihecli.archive.index import make_engine
from ihecli.archive.ingest import fold, normalize_time
from ihecli.archive.matching import matches, parse, to_sql


# -- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, vr, kind", [
    (None, "LO", "universal"),
    ("", "LO", "universal"),
    ("  ", "PN", "universal"),
    ("*", "PN", "universal"),
    ("**", "LO", "universal"),
    ('""', "LO", "empty"),
    ('""', "DA", "empty"),
    ("SMITH", "PN", "single"),
    ("SM?TH", "PN", "wild"),
    ("SMITH*", "PN", "wild"),
    ("CT*", "CS", "wild"),
    ("1.2*", "UI", "single"),  # no wildcards in UIDs
    ("1.2.3\\1.2.4", "UI", "list"),
    (["1.2.3", "1.2.4"], "UI", "list"),
    ("20240101", "DA", "single"),
    ("20240101-20240131", "DA", "range"),
    ("-20240131", "DA", "range"),
    ("20240101-", "DA", "range"),
    ("0800-1200", "TM", "range"),
    ("20240101120000+0100", "DT", "single"),  # a UTC offset, not a range
    ("20240101-20240102", "DT", "range"),
    ("2024-2025", "DT", "range"),
    ("20240101120000-0500", "DT", "single"),
    ("20240101120000-0500-20240102", "DT", "range"),
    ("12-34", "LO", "single"),  # ranges only for DA, TM, DT
    ("2*", "DA", "single"),  # no wildcards in dates
])
def test_parse_kinds(value, vr, kind):
    assert parse(value, vr).kind == kind


def test_parse_normalises_range_bounds():
    assert parse("0800-1200", "TM").values == ("080000.000000", "120059.999999")
    assert parse("08-12", "TM").values == ("080000.000000", "125959.999999")
    assert parse("080000.25-115959.5", "TM").values == ("080000.250000", "115959.500000")
    assert parse("08:00-12:00:30", "TM").values == ("080000.000000", "120030.999999")
    assert parse("2024.01.01-2024.01.31", "DA").values == ("20240101", "20240131")
    assert parse("-20240131", "DA").values == (None, "20240131")
    assert parse("20240101-", "DA").values == ("20240101", None)
    assert parse("2024-2024", "DT").values == ("2024", "20241231235959.999999")


def test_parse_list_empty_and_universal_parts():
    m = parse("CT\\\\MR", "CS")  # an empty value between two is left out
    assert m.kind == "list" and [sub.values[0] for sub in m.values] == ["CT", "MR"]
    assert parse("\\", "CS").kind == "universal"
    assert parse("SMITH\\*", "PN").kind == "universal"  # one value matches everything: the list does too
    assert matches(parse("SMITH\\*", "PN"), "JONES", "ci")


def test_parse_multivalue():
    m = parse(MultiValue(str, ["CT", "MR"]), "CS")
    assert m.kind == "list"


# -- the Python evaluator ------------------------------------------------------------------------
def test_universal_matches_anything_even_missing():
    m = parse("", "LO")
    assert matches(m, None) and matches(m, "") and matches(m, "X")


def test_empty_value_matching():
    m = parse('""', "LO")
    assert matches(m, None)
    assert matches(m, "")
    assert matches(m, "  ")
    assert matches(m, [])
    assert not matches(m, "X")


def test_single_value_is_case_sensitive_except_pn():
    assert matches(parse("CHEST", "LO"), "CHEST")
    assert not matches(parse("chest", "LO"), "CHEST")
    assert not matches(parse("CHEST", "LO"), "CHEST2")
    assert matches(parse("smith^john", "PN"), "SMITH^JOHN", "ci")
    assert not matches(parse("smith^john", "PN"), "SMITH^JOHN", "exact")


def test_wildcards():
    assert matches(parse("SM?TH*", "PN"), "SMYTH^JANE", "ci")
    assert not matches(parse("SM?TH", "PN"), "SMYTH^JANE", "ci")
    assert matches(parse("*^JANE", "PN"), "SMYTH^JANE", "ci")
    assert matches(parse("C?", "CS"), "CT")
    assert not matches(parse("C?", "CS"), "C")
    assert not matches(parse("C?", "CS"), "CTX")
    # regex and LIKE metacharacters are literals
    assert matches(parse("A.B*", "LO"), "A.BC")
    assert not matches(parse("A.B*", "LO"), "AXBC")
    assert matches(parse("50%*", "LO"), "50% DOSE")
    assert not matches(parse("50%*", "LO"), "500 DOSE")


def test_multi_valued_stored_value_matches_any_value():
    assert matches(parse("PRIMARY", "CS"), MultiValue(str, ["ORIGINAL", "PRIMARY"]))
    assert not matches(parse("SECONDARY", "CS"), ["ORIGINAL", "PRIMARY"])


def test_list_matching():
    m = parse("1.2.3\\1.2.5", "UI")
    assert matches(m, "1.2.3") and matches(m, "1.2.5") and not matches(m, "1.2.4")


def test_date_range():
    m = parse("20240101-20240131", "DA")
    assert matches(m, "20240101") and matches(m, "20240131") and matches(m, "2024.01.15")
    assert not matches(m, "20231231") and not matches(m, "20240201")
    assert not matches(m, None)
    assert matches(parse("-20240131", "DA"), "19000101")
    assert matches(parse("20240101-", "DA"), "29991231")


@pytest.mark.parametrize("query, inside, outside", [
    ("0800-1200", ["080000", "0800", "08", "115959.999", "1200", "120059.5"], ["075959.999999", "1201", "13"]),
    ("080000.5-115959.25", ["080000.5", "080001", "115959.25"], ["080000.49", "115959.26", "0800"]),
    ("-0800", ["000000", "0800", "080059"], ["0801"]),
    ("1200-", ["1200", "235959.999999"], ["115959.999999"]),
    ("08:00-12:00", ["09:15:00", "1200"], ["12:01"]),
])
def test_time_range(query, inside, outside):
    m = parse(query, "TM")
    for v in inside:
        assert matches(m, v), (query, v)
    for v in outside:
        assert not matches(m, v), (query, v)


def test_time_single_value_ignores_form():
    assert matches(parse("0800", "TM"), "080000.000")
    assert not matches(parse("0800", "TM"), "080001")


def test_datetime_range_upper_bound_covers_the_whole_period():
    m = parse("20240101-20240102", "DT")
    assert matches(m, "20240102235959")
    assert matches(m, "20240101")
    assert not matches(m, "20240103")


# -- person names ----------------------------------------------------------------------------
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


@pytest.mark.parametrize("query, expected", [
    ("Yamada^Tarou", True),  # the alphabetic group of a three-group name
    ("yamada*", True),
    ("山田^太郎", True),  # the ideographic group alone
    ("山田*", True),
    ("やまだ*", True),
    ("=山田^太郎", True),
    ("Yamada*=山田*", True),
    ("==やまだ^たろう", True),
    ("Yamada^Tarou=", True),
    ("Tarou*", False),
    ("Yamada^Tarou=山田^花子", False),
    ("=やまだ*", False),  # the phonetic name in the ideographic group
    ("太郎", False),
])
def test_pn_component_groups(query, expected):
    assert matches(parse(query, "PN"), JAPANESE, "ci") is expected


def test_pn_fold_is_accent_insensitive():
    assert matches(parse("muller*", "PN"), "Müller^Hans", "fold")
    assert not matches(parse("muller*", "PN"), "Müller^Hans", "ci")
    assert matches(parse("MÜLLER*", "PN"), "müller^hans", "ci")
    assert not matches(parse("MÜLLER*", "PN"), "Mueller=Müller", "ci")  # not an East Asian value: alphabetic only
    assert fold("Müller") == "MULLER"


# -- SQL against the evaluator -------------------------------------------------------------------
STORED = {
    "PN": ["Smith^John", "SMYTH^JANE", "smith", "Smithers^Wayland", "Müller^Hans", "O_Brien^Pat", "O%Brien^Pat",
           "OXBrien^Pat", "O%Brien^Pat=X", "O!Brien", "50%", "50%=X", JAPANESE, "Hong^Gildong=洪^吉洞=홍^길동", "=山田^花子", "Wang^XiaoDong=王^小東", "", None],
    "LO": ["CHEST", "chest", "CHEST CT", "HEAD", "A_B", "AXB", "100%", "1000", "!x", "", None],
    "CS": ["CT", "MR", "SR", "C", "CTX", "", None],
    "UI": ["1.2.3", "1.2.33", "1.2.4", None],
    "DA": ["20231231", "20240101", "20240115", "20240131", "20240201", None],
    "IS": [0, 1, 2, 7, 12, None],
    "TM": [normalize_time(t) for t in ("000000", "075959.999999", "0800", "083000", "115959.5", "120000",
                                       "120059.999999", "1201", "235959")] + [None],
}
QUERIES = {
    "PN": ["", "*", '""', "smith", "SMITH*", "sm?th*", "*^J*", "O_Brien*", "O%Brien^Pat", "o_brien^pat", "Yamada^Tarou",
           "山田*", "*山田*", "=山田*", "=山田^花子", "Yamada*=*", "洪^吉洞", "muller*", "Müller*", "*^HANS",
           "smith\\smyth^jane", "Wang^XiaoDong", "王^小東", "O%Brien*", "O!Brien*", "*%", "50%"],
    "LO": ["", '""', "CHEST", "chest", "CHEST*", "*CT", "A_B", "A?B", "100%", "1*%", "!x", "CHEST\\HEAD", "*"],
    "CS": ["CT", "C?", "C*", "CT\\MR", '""', "*"],
    "UI": ["1.2.3", "1.2.3\\1.2.4", "1.2.3*", ""],
    "DA": ["20240115", "20240101-20240131", "-20240101", "20240131-", '""', "20240101\\20240201", "2024.01.15"],
    "IS": ["7", "007", "+7", "7.0", "7.5", "abc", "1\\2", '""', ""],
    "TM": ["0800-1200", "080000-115959", "-0800", "1200-", "083000", "115959.5-120000", '""', "0800\\1200"],
}


def _table(engine):
    md = MetaData()
    t = Table("t", md, Column("id", Integer, primary_key=True), Column("vr", String(2)),
              Column("v", String), Column("v_ci", String), Column("v_fold", String), Column("n", Integer))
    md.create_all(engine)
    rows = []
    for vr, values in STORED.items():
        for v in values:
            if vr == "IS":
                rows.append({"vr": vr, "v": None, "v_ci": None, "v_fold": None, "n": v})
            else:
                rows.append({"vr": vr, "v": v, "v_ci": v.upper() if v else v, "v_fold": fold(v) if v else v,
                             "n": None})
    with engine.begin() as conn:
        conn.execute(insert(t), rows)
    return t


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('m') / 'm.db'}")  # the index's own pragmas
    yield engine, _table(engine)
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_db(request, tmp_path_factory):
    """The same table in SQLite and in PostgreSQL (both index back ends)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("db")
        return
    engine = make_engine(request.getfixturevalue("pg_server").new_database())
    yield engine, _table(engine)
    engine.dispose()


@pytest.mark.parametrize("vr, mode", [(vr, "exact") for vr in sorted(QUERIES)] + [("PN", "ci"), ("PN", "fold")])
def test_sql_agrees_with_the_evaluator(any_db, vr, mode):
    engine, t = any_db
    col = {"exact": t.c.v, "ci": t.c.v_ci, "fold": t.c.v_fold}[mode]
    if vr == "IS":
        col = t.c.n
    with engine.connect() as conn:
        for q in QUERIES[vr]:
            m = parse(q, vr)
            stmt = select(t.c.id, col).where(t.c.vr == vr)
            cond = to_sql(m, col, mode)
            if cond is not None:
                stmt = stmt.where(cond)
            by_sql = {(i, v) for i, v in conn.execute(stmt)}
            expected = {(i, v) for i, v in conn.execute(select(t.c.id, col).where(t.c.vr == vr))
                        if matches(m, v, mode)}
            if vr == "PN":  # candidates, checked by the caller
                assert by_sql >= expected, (q, mode)
                assert {r for r in by_sql if matches(m, r[1], mode)} == expected
            else:
                assert by_sql == expected, (q, mode)


def test_sql_expectations_on_names(db):
    """Spot checks, so the comparison above is not only self-consistent."""
    engine, t = db

    def found(q, mode="ci"):
        col = {"exact": t.c.v, "ci": t.c.v_ci, "fold": t.c.v_fold}[mode]
        m = parse(q, "PN")
        with engine.connect() as conn:
            rows = conn.execute(select(t.c.v).where(t.c.vr == "PN", to_sql(m, col, mode))).scalars()
            return sorted((v for v in rows if matches(m, v, mode)), key=str)

    assert found("SMITH*") == ["Smith^John", "Smithers^Wayland", "smith"]
    assert found("smith") == ["smith"]
    assert found("o_brien*") == ["O_Brien^Pat"]  # _ is a literal, not a LIKE wildcard
    assert found("o?brien*") == ["O!Brien", "O%Brien^Pat", "O%Brien^Pat=X", "OXBrien^Pat", "O_Brien^Pat"]
    assert found("50%") == ["50%", "50%=X"]
    assert found("山田*") == ["=山田^花子", JAPANESE]
    assert found("Yamada^Tarou") == [JAPANESE]
    assert found("muller*") == []
    assert found("muller*", "fold") == ["Müller^Hans"]
    assert found('""') == ["", None]


def test_sql_for_single_ascii_name_uses_index(db):
    """A plain or prefix name query stays an index range/equality (no leading wildcard)."""
    engine, t = db
    from sqlalchemy import Index, text

    with engine.begin() as conn:
        Index("ix_t_ci", t.c.v_ci).create(conn, checkfirst=True)
        for q in ("SMITH*", "SMITH^JOHN", "SMITH\\JONES*", "MÜLLER*", "ΔΙΟΝ*", "ЛЮК*", "Müller^Hans"):
            stmt = select(t.c.id).where(to_sql(parse(q, "PN"), t.c.v_ci, "ci"))
            sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "USING COVERING INDEX ix_t_ci" in plan and "SCAN" not in plan, (q, plan)


def test_like_escaping_helper():
    assert matching._like("a%b_c!d*e?") == "a!%b!_c!!d%e_"
