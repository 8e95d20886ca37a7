"""Secrets only from the environment or a private secrets file outside the repository, never
echoed in errors or logs; servers published on 127.0.0.1 only."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from tasks.errors import CifrasError
from tasks.settings import REPO_DIR, load_secrets_file, load_settings

PASSWORD = "pw-7f3a-never-shown"


def write_secrets(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def clean_secret_env(monkeypatch, cifras_env):
    for key in ("CIFRAS_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        # set, then delete: monkeypatch records a variable only when it exists, and the
        # secrets file sets these in os.environ, so an unrecorded one would outlive the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)  # restored (removed, if it was absent) after the test
    return monkeypatch


def test_secrets_file_feeds_settings_and_the_environment(tmp_path, clean_secret_env):
    db = f"postgresql+psycopg://cifras:{PASSWORD}@127.0.0.1:1/cifras"
    secrets = write_secrets(tmp_path / "secrets.env", f"# cifras\nCIFRAS_DATABASE_URL={db}\n"
                            "export AWS_ACCESS_KEY_ID='ak-from-file'\nAWS_SECRET_ACCESS_KEY=\"sk-file\"\n")
    clean_secret_env.setenv("AWS_ACCESS_KEY_ID", "ak-from-env")  # the environment wins
    clean_secret_env.setenv("CIFRAS_SECRETS_FILE", str(secrets))
    settings = load_settings()
    import os

    assert settings.db_url == db
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "sk-file"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "ak-from-env"
    assert PASSWORD not in repr(settings.model_dump(exclude={"database_url"}))


def test_secrets_file_must_be_private_and_outside_the_repo(tmp_path, clean_secret_env):
    loose = write_secrets(tmp_path / "loose.env", f"AWS_SECRET_ACCESS_KEY={PASSWORD}\n", 0o644)
    with pytest.raises(CifrasError, match="readable by other users") as exc:
        load_secrets_file(loose)
    assert PASSWORD not in str(exc.value)
    bad = write_secrets(tmp_path / "bad.env", f"OK=1\n{PASSWORD}\n")
    with pytest.raises(CifrasError, match="line 2: expected NAME=value") as exc:
        load_secrets_file(bad)
    assert PASSWORD not in str(exc.value)
    inside = REPO_DIR / "conf" / "secrets-test.env"
    try:
        write_secrets(inside, "AWS_SECRET_ACCESS_KEY=x\n")
        with pytest.raises(CifrasError, match="inside the repository"):
            load_secrets_file(inside)
    finally:
        inside.unlink(missing_ok=True)
    with pytest.raises(CifrasError, match="not found"):
        load_secrets_file(tmp_path / "missing.env")


def test_database_password_is_masked_when_the_server_is_unreachable(caplog):
    from tasks.db import wait_for_database

    url = f"postgresql+psycopg://cifras:{PASSWORD}@127.0.0.1:1/cifras"  # nothing listens on :1
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CifrasError, match="unreachable after") as exc:
        wait_for_database(url, wait_s=0.5)
    assert "***" in str(exc.value) and PASSWORD not in str(exc.value)
    assert PASSWORD not in caplog.text and "unreachable" in caplog.text


def test_published_ports_bind_to_localhost():
    compose = yaml.safe_load((REPO_DIR / "deploy" / "docker-compose.yml").read_text())
    published = [(name, p) for name, svc in compose["services"].items() for p in svc.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for _, p in published), published
    docs = "\n".join(p.read_text() for p in [REPO_DIR / "README.md", *(REPO_DIR / "docs").glob("*.md")])
    checked = 0
    for cmd in re.findall(r"(?:prefect server start|mlflow (?:server|ui)|weed server)[^\n`]*", docs):
        if re.search(r"(--host|-ip\.bind)[= ]\S", cmd):  # states an address (not prose)
            assert re.search(r"(--host|-ip\.bind=?)\s*=?\s*127\.0\.0\.1", cmd), cmd
            checked += 1
    assert checked >= 3  # the Prefect, MLflow and SeaweedFS commands of docs/operations.md
