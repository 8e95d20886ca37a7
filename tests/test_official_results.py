import pytest
from sqlalchemy import func, inspect, select

from tasks.db import OfficialResult, Telegram, get_engine, session_scope
from tasks.errors import CifrasError
from tasks.official_results import (
    ROW_VOTE_TYPE,
    Label,
    MesaId,
    labels_for,
    labels_to_csv,
    parse_results_csv,
    store_labels,
    upsert_telegram,
)

HEAD = "distrito_id,seccion_id,circuito_id,mesa_id,cargo_nombre,agrupacion_id,votos_tipo,votos_cantidad\n"
MESA = MesaId(21, 1, "402", 1)


def test_mesa_code_matches_the_printed_telegram_code():
    assert MESA.code == "2100100001X"


def test_csv_rows_map_to_cells_and_totals_are_derived_from_complete_categories(template):
    senadores = {r: 10 + i for i, r in enumerate(template.rows("senadores")) if r != "total"}
    text = HEAD + "".join(
        f"21,1,402,1,SENADORES NACIONALES,{r},POSITIVO,{v}\n" if r.isdigit() else
        f"21,1,402,1,SENADORES NACIONALES,,{ROW_VOTE_TYPE[r]},{v}\n"
        for r, v in senadores.items()) + (
        "21,1,402,1,DIPUTADOS NACIONALES,87,POSITIVO,4\n"
        "21,1,402,1,,,SOBRES,140\n"
    )
    labels = {lab.cell_id: lab.value for lab in parse_results_csv(text, template)}
    assert labels == {**{f"senadores/{r}": v for r, v in senadores.items()}, "diputados/87": 4,
                      "header/sobres": 140, "senadores/total": sum(senadores.values())}
    # diputados has one row of its several: its TOTAL is not made up from it


def test_a_correction_of_one_row_keeps_the_stored_total(db_url, template):
    """Before, a one-row correction file replaced senadores/total (296) with that row (50)."""
    full = [Label(MESA, "senadores/503", 246), Label(MESA, "senadores/total", 296)]
    store_labels(db_url, full, template, source="results.csv", create_mesas=True)
    fix = parse_results_csv(HEAD + "21,1,402,1,SENADORES NACIONALES,503,POSITIVO,50\n", template)
    assert [(lab.cell_id, lab.value) for lab in fix] == [("senadores/503", 50)]
    store_labels(db_url, fix, template, source="fix.csv")
    with session_scope(db_url) as s:
        tel = s.scalar(select(Telegram).where(Telegram.mesa_code == MESA.code))
        assert labels_for(s, [tel.id])[tel.id] == {"senadores/503": 50, "senadores/total": 296}


def test_csv_round_trip(template):
    labels = [Label(MESA, "senadores/503", 135), Label(MESA, "senadores/total", 135),
              Label(MESA, "header/diferencia", 0)]
    again = parse_results_csv(labels_to_csv(labels), template)
    assert sorted((lab.cell_id, lab.value) for lab in again) == sorted(
        (lab.cell_id, lab.value) for lab in labels)


@pytest.mark.parametrize("row, message", [
    ("21,1,402,1,SENADORES NACIONALES,503,POSITIVO,doce", "line 3: votos_cantidad 'doce'"),
    ("21,1,402,1,SENADORES NACIONALES,999,POSITIVO,1", "line 3: no cell senadores/999"),
    ("21,1,402,1,GOBERNADOR,503,POSITIVO,1", "line 3: unknown cargo_nombre"),
    ("21,1,402,1,SENADORES NACIONALES,503,POSITIVO,-4", "line 3"),
    ("21,1,402,1,SENADORES NACIONALES,503,POSITIVO,4000", "does not fit"),
    ("x,1,402,1,SENADORES NACIONALES,503,POSITIVO,4", "line 3"),
])
def test_bad_rows_name_their_line(template, row, message):
    text = HEAD + "21,1,402,1,SENADORES NACIONALES,501,POSITIVO,15\n" + row + "\n"
    with pytest.raises(CifrasError, match=message):
        parse_results_csv(text, template)


def test_missing_columns(template):
    with pytest.raises(CifrasError, match="lacks column"):
        parse_results_csv("distrito_id,mesa_id\n1,2\n", template)


def roundtrip(url: str, template) -> None:
    with session_scope(url) as s:
        upsert_telegram(s, MESA, template.name, scan_uri="s3://b/x.jpg", content_hash="ab" * 32)
    labels = [Label(MESA, "senadores/503", 135), Label(MESA, "header/sobres", 283)]
    assert store_labels(url, labels, template, source="t.csv") == {"labels": 2, "mesas": 1}
    # re-loading the same file is idempotent; a corrected value replaces the old one
    store_labels(url, [*labels[:1], Label(MESA, "header/sobres", 284)], template, source="fix.csv")
    with session_scope(url) as s:
        tel = s.scalar(select(Telegram).where(Telegram.mesa_code == MESA.code))
        assert tel.scan_uri == "s3://b/x.jpg"
        assert labels_for(s, [tel.id]) == {tel.id: {"senadores/503": 135, "header/sobres": 284}}
        assert s.scalar(select(func.count()).select_from(OfficialResult)) == 2


def unknown_mesa_writes_nothing(url: str, template) -> None:
    with session_scope(url) as s:
        upsert_telegram(s, MESA, template.name)
    other = MesaId(21, 1, "402", 2)
    labels = [Label(MESA, "senadores/503", 135), Label(other, "senadores/503", 10)]
    with pytest.raises(CifrasError, match=r"mesa 2100100002X .* is unknown; nothing was loaded"):
        store_labels(url, labels, template, source="t.csv")
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(OfficialResult)) == 0
    assert store_labels(url, labels, template, source="t.csv", create_mesas=True)["mesas"] == 2


def test_sqlite_round_trip(db_url, template):
    roundtrip(db_url, template)


def test_sqlite_unknown_mesa_is_all_or_nothing(db_url, template):
    unknown_mesa_writes_nothing(db_url, template)


@pytest.mark.postgres
def test_postgres_round_trip(pg_url, template):
    assert set(inspect(get_engine(pg_url)).get_table_names()) >= {
        "telegrams", "official_results", "readings", "runs", "alembic_version"}
    roundtrip(pg_url, template)


@pytest.mark.postgres
def test_postgres_unknown_mesa_is_all_or_nothing(pg_url, template):
    unknown_mesa_writes_nothing(pg_url, template)


def test_a_chunk_links_its_scans_to_telegrams_in_one_pass(db_url, template):
    from datetime import UTC, datetime

    from tasks.persist import link_telegrams
    from tasks.read import ScanReading

    with session_scope(db_url) as s:
        known = upsert_telegram(s, MESA, template.name).id
    t1, t2 = datetime(2021, 11, 14, 20, tzinfo=UTC), datetime(2021, 11, 15, 9, tzinfo=UTC)
    uris = ["file:///s/a/2100100001X.jpg", "file:///s/b/2100100001X.jpg",  # the same mesa twice
            "file:///s/2100100005X.jpg", "file:///s/no-code.jpg"]
    readings = [ScanReading(u, f"{i}" * 64, "ok", None, 1.0, [], {}) for i, u in enumerate(uris)]
    listing = {uris[0]: {"modified": t1}, uris[1]: {"modified": t2}, uris[2]: {"modified": t2}}
    with session_scope(db_url) as s:
        linked = link_telegrams(s, readings, template.name, listing)
    assert set(linked) == set(uris[:3])  # a name without a code links nothing
    assert linked[uris[0]] == linked[uris[1]] == known
    with session_scope(db_url) as s:
        tel = s.get(Telegram, known)
        assert (tel.scan_uri, tel.content_hash) == (uris[1], "1" * 64)  # the later page of the chunk
        assert tel.received_at.replace(tzinfo=UTC) == t1  # the first receipt is kept
        new = s.get(Telegram, linked[uris[2]])
        assert (new.mesa_code, new.mesa, new.scan_uri) == ("2100100005X", 5, uris[2])
        assert s.scalar(select(func.count()).select_from(Telegram)) == 2
