"""`cifras generate` end to end: files, labels in the database, S3 and PostgreSQL."""

import hashlib

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from flows.generate import generate_flow
from tasks.db import OfficialResult, Telegram, session_scope
from tasks.official_results import parse_results_csv
from tasks.storage import filesystem, read_bytes


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_same_seed_same_files_and_labels_obey_the_form(cifras_env, mnist_npz, prefect_server,
                                                      monkeypatch, tmp_path, template):
    monkeypatch.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
    a, b = tmp_path / "a", tmp_path / "b"
    db_a, db_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    ra = generate_flow(count=4, out=str(a), seed=11, db=db_a)
    generate_flow(count=4, out=str(b), seed=11, db=db_b)
    assert ra["telegrams"] == 4 and ra["labels"] == 4 * len(template.cells)
    assert digests(a) == digests(b)
    generate_flow(count=2, out=str(tmp_path / "c"), seed=12, db=db_b)
    assert set(digests(tmp_path / "c")).isdisjoint(digests(a))  # new seed, new mesas

    scans = sorted(a.glob("*.jpg"))
    assert len(scans) == 4
    for scan in scans:
        img = cv2.imread(str(scan), cv2.IMREAD_GRAYSCALE)
        assert img.shape == (template.page.height, template.page.width)
    with session_scope(db_a) as s:
        tels = s.scalars(select(Telegram)).all()
        assert sorted(t.mesa_code + ".jpg" for t in tels) == [p.name for p in scans]
        assert all(t.content_hash == hashlib.sha256((a / f"{t.mesa_code}.jpg").read_bytes()).hexdigest()
                   for t in tels)
        for t in tels:
            values = dict(s.execute(select(OfficialResult.cell_id, OfficialResult.value)
                                    .where(OfficialResult.telegram_id == t.id)).all())
            assert set(values) == set(template.cell_ids)
            assert template.violations(values) == []
            assert values["header/sobres"] <= 350
    # the labels CSV written next to the scans parses back to the same labels
    labels = parse_results_csv((a / "labels-seed11.csv").read_text(), template)
    assert len(labels) == 4 * len(template.cells)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.postgres
def test_generate_to_s3_with_labels_in_postgres(cifras_env, mnist_npz, prefect_server, monkeypatch,
                                               s3_bucket, pg_url, template):
    monkeypatch.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
    out = f"s3://{s3_bucket}/scans"
    generate_flow(count=3, out=out, seed=5, db=pg_url)
    from tasks.settings import load_settings

    settings = load_settings()
    fs, path = filesystem(out, settings)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    assert names == ["2110500001X.jpg", "2110500002X.jpg", "2110500003X.jpg", "labels-seed5.csv"]
    data = read_bytes(f"{out}/2110500001X.jpg", settings)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (2800, 1700)
    with session_scope(pg_url) as s:
        assert s.scalar(select(func.count()).select_from(OfficialResult)) == 3 * len(template.cells)
        assert s.scalar(select(Telegram.scan_uri).where(Telegram.mesa_code == "2110500001X")) == \
            f"{out}/2110500001X.jpg"
