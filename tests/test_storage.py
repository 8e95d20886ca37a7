import pytest

from tasks.settings import load_settings
from tasks.storage import content_hash, filesystem, read_bytes, write_bytes


def test_local_write_is_atomic_and_readable(tmp_path):
    uri = (tmp_path / "a" / "scan.jpg").as_uri()
    write_bytes(uri, b"\xff\xd8data")
    assert read_bytes(uri) == b"\xff\xd8data"
    assert not (tmp_path / "a" / "scan.jpg.part").exists()


def test_content_hash_is_sha256():
    assert content_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.s3
def test_s3_round_trip_against_seaweedfs(cifras_env, s3_bucket):
    settings = load_settings()
    uri = f"s3://{s3_bucket}/scans/2100100001X.jpg"
    write_bytes(uri, b"scan-bytes", settings)
    assert read_bytes(uri, settings) == b"scan-bytes"
    fs, path = filesystem(f"s3://{s3_bucket}/scans", settings)
    assert fs.ls(path, detail=False) == [f"{s3_bucket}/scans/2100100001X.jpg"]
