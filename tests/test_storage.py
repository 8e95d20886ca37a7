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


def test_dataset_shards_are_npz_files_that_np_load_reads_back_exactly():
    """The shards' deflate stream comes from ISA-L (when installed): still a .npz that np.load
    and any zip tool read, with the same arrays."""
    import io
    import zipfile

    import numpy as np

    from tasks.exports import npz_bytes

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 96, 256), dtype=np.uint8)
    x[:, 60:] = 255
    arrays = {"x": x, "y": np.arange(40), "cell": np.array(["diputados/501"] * 40)}
    payload = npz_bytes(**arrays)
    with np.load(io.BytesIO(payload)) as d:
        assert set(d.files) == set(arrays)
        for k, v in arrays.items():
            assert d[k].dtype == v.dtype and np.array_equal(d[k], v)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        assert zf.testzip() is None  # CRCs check out
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert len(payload) < x.nbytes / 1.5  # compressed, not stored
