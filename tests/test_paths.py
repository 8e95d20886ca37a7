"""Storage keys and paths: nothing read or written outside the configured roots, odd and
over-long names recorded with a reason, symlinks not followed out of a local scans root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.errors import CifrasError
from tasks.storage import join, key_problem, printable, within_root

BAD_KEYS = {
    "../etc/passwd.jpg": "traversal",
    "scans/../../x.jpg": "traversal",
    "./a.jpg": "traversal",
    "%2e%2e/%2e%2e/x.jpg": "traversal",
    "%252e%252e/x.jpg": "traversal",  # double-encoded
    "a%2f..%2fb.jpg": "traversal",
    "a%2Fb.jpg": "percent-encoded '/'",
    "/etc/passwd.jpg": "absolute",
    "C:/x.jpg": "absolute",
    "a\\..\\b.jpg": "backslash",
    "a//b.jpg": "empty path segment",
    "line\nbreak.jpg": "control character",
    "nul\x00.jpg": "control character",
    "bell%07.jpg": "control character",
    "bad-\udcff.jpg": "not valid UTF-8",  # an undecodable byte in a local file name
    "x" * 300 + ".jpg": "over 255 bytes",
    "/".join(["d" * 200] * 6) + ".jpg": "too long: 1209 bytes",
    "": "empty",
}
GOOD_KEYS = ["2100100001X.jpg", "lote 3/mesa (1) ñandú #2 100%.jpg", "a/b/c..d.tif", "...jpg",
             "ü" * 100 + ".pdf", "2100100001X_2100100002X.tif"]


@pytest.mark.parametrize("key", list(BAD_KEYS))
def test_bad_keys_have_a_reason(key):
    problem = key_problem(key)
    assert problem is not None and BAD_KEYS[key] in problem, problem
    with pytest.raises(CifrasError, match="refused storage name"):
        join("s3://bucket/exports", key)


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_ordinary_odd_keys_are_fine(key):
    assert key_problem(key) is None
    assert join("s3://bucket/scans/", key) == f"s3://bucket/scans/{key}"


def test_printable_escapes_what_a_database_refuses():
    assert printable("a\x00b\ndc\udcff.jpg") == "a\\x00b\\x0adc\\xff.jpg"
    assert printable("ñandú.jpg") == "ñandú.jpg"


def test_within_root(tmp_path: Path):
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "escape")
    assert within_root(root.as_uri(), (root / "sub" / "a.jpg").as_uri())
    assert within_root(root.as_uri(), root.as_uri())
    assert not within_root(root.as_uri(), f"{root.as_uri()}/../elsewhere")
    assert not within_root(root.as_uri(), f"{root.as_uri()}/escape/a.jpg")  # through a symlink
    assert not within_root(root.as_uri(), (tmp_path / "scans-other").as_uri())  # prefix, not parent
    assert not within_root(root.as_uri(), "s3://bucket/scans")
    assert within_root("s3://bucket/scans", "s3://bucket/scans/2021/a.jpg")
    assert not within_root("s3://bucket/scans", "s3://bucket/scans-old/a.jpg")
    assert not within_root("s3://bucket/scans", "s3://bucket/scans/../exports")
    assert not within_root("s3://bucket/scans", "s3://bucket/scans/%2e%2e/exports")
    assert not within_root("s3://bucket/scans", "s3://other/scans")


def hostile_tree(scans: Path, outside: Path) -> dict[str, str]:
    """Objects in a scans folder that must be recorded as refused, never read: name -> reason."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(b"not yours")
    (outside / "deep").mkdir(exist_ok=True)
    (outside / "deep" / "x.jpg").write_bytes(b"not yours either")
    os.symlink(outside / "secret.jpg", scans / "link-out.jpg")
    os.symlink(outside / "deep", scans / "dir-out")  # never descended
    os.symlink(scans / "gone.jpg", scans / "dangling.jpg")
    (scans / "new\nline.jpg").write_bytes(b"odd")
    (scans / "%2e%2e%2fescape.jpg").write_bytes(b"odd")
    with open(os.path.join(os.fsencode(scans), b"latin1-\xf1.jpg"), "wb") as f:
        f.write(b"odd")
    deep = scans / "/".join(["d" * 250] * 5)  # a 1,263-byte key
    deep.mkdir(parents=True)
    (deep / "long.jpg").write_bytes(b"odd")
    return {"link-out.jpg": "symlink pointing outside", "dangling.jpg": "not a regular file",
            "new\\x0aline.jpg": "control character", "%2e%2e%2fescape.jpg": "traversal",
            "latin1-\\xf1.jpg": "not valid UTF-8", "long.jpg": "name too long"}


def test_listing_refuses_escapes_and_odd_names(tmp_path: Path, cifras_env: Path):
    from tasks.ingest_tasks import list_objects
    from tasks.settings import load_settings

    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "ok.jpg").write_bytes(b"fine")
    (scans / "ñandú 1.jpg").write_bytes(b"fine")
    os.symlink(scans / "ok.jpg", scans / "link-in.jpg")
    expected = hostile_tree(scans, tmp_path / "outside")
    refs = {r.uri.rsplit("/", 1)[-1]: r for r in list_objects(scans.as_uri(), load_settings())}
    assert {k for k, r in refs.items() if not r.refused} == {"ok.jpg", "ñandú 1.jpg", "link-in.jpg"}
    for name, reason in expected.items():
        assert refs[name].refused and reason in refs[name].refused, (name, refs[name])
    assert "x.jpg" not in refs  # the linked-to directory is not listed


@pytest.mark.slow
def test_ingest_records_refused_objects_and_stays_in_its_root(trained_registry: Path, tmp_path: Path,
                                                              monkeypatch, mnist_npz: Path):
    from sqlalchemy import select

    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from tasks.db import Reading, Scan, session_scope
    from tasks.settings import load_settings

    data = tmp_path / "night"
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(data))
    monkeypatch.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
    monkeypatch.setenv("CIFRAS_MLFLOW__TRACKING_URI", f"sqlite:///{trained_registry / 'mlflow.db'}")
    generate_flow(count=1, seed=43)
    scans = data / "scans"
    expected = hostile_tree(scans, tmp_path / "outside")
    db_url = load_settings().db_url

    result = ingest_flow()
    assert result["scans"] == 1 + len(expected) and result["read"] == 1
    with session_scope(db_url) as s:
        rows = {u.rsplit("/", 1)[-1]: (st, why) for u, st, why in
                s.execute(select(Scan.uri, Scan.status, Scan.reason))}
        assert s.scalar(select(Reading.id).where(Reading.scan_uri.like("%outside%"))) is None
    for name, reason in expected.items():
        status, why = rows[name]
        assert status == "unreadable" and why.startswith("refused: ") and reason in why, (name, why)
    assert ingest_flow()["scans"] == 0  # refused objects are recorded once, like any scan

    # a run parameter cannot point the reader outside the scans root
    for source in [(tmp_path / "outside").as_uri(), f"{scans.as_uri()}/../../outside"]:
        with pytest.raises(CifrasError, match="outside the configured root"):
            ingest_flow(source=source)


def test_a_scans_folder_that_is_not_there_is_an_error_not_an_empty_night(tmp_path: Path, cifras_env: Path):
    """A typo or an unmounted share must not look like a night with no new scans."""
    from tasks.errors import CifrasError
    from tasks.ingest_tasks import list_objects
    from tasks.settings import load_settings

    with pytest.raises(CifrasError, match="does not exist"):
        list_objects((tmp_path / "not-mounted").as_uri(), load_settings())
    (tmp_path / "empty").mkdir()
    assert list_objects((tmp_path / "empty").as_uri(), load_settings()) == []


@pytest.mark.s3
def test_an_empty_prefix_has_no_scans_but_a_missing_bucket_is_an_error(cifras_env: Path, s3_bucket: str):
    from tasks.errors import CifrasError
    from tasks.ingest_tasks import list_objects
    from tasks.settings import load_settings

    assert list_objects(f"s3://{s3_bucket}/nothing-yet", load_settings()) == []
    with pytest.raises(CifrasError, match="does not exist"):
        list_objects(f"s3://{s3_bucket}-missing/scans", load_settings())


def test_a_backfill_whose_period_is_empty_is_refused():
    from datetime import date

    from flows.ingest import backfill_flow
    from tasks.errors import CifrasError

    with pytest.raises(CifrasError, match="not before"):
        backfill_flow.fn(since=date(2026, 1, 1), until=date(2025, 1, 1))


def test_a_user_mistake_inside_a_flow_is_one_error_line_with_no_traceback(tmp_path: Path, cifras_env: Path):
    """Prefect logged the flow's CifrasError with a 20-line traceback before the CLI's `error:`
    line; the log line stays, the traceback goes."""
    import subprocess
    import sys

    env = {**os.environ, "CIFRAS_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([str(Path(sys.executable).parent / "cifras"), "ingest", "--source", "/etc"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: source /etc is outside the configured root" in done.stderr
    assert "Encountered exception during execution: CifrasError" in done.stderr  # still logged
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
