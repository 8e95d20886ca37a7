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


def test_a_shard_member_is_byte_for_byte_what_np_save_writes():
    """The shard's .npy members are written from the array's buffer, not by
    `np.lib.format.write_array`: the bytes must still be the ones `np.save` gives, for a
    strided view, strings, booleans and an empty array alike; object arrays are refused."""
    import io
    import zipfile

    import numpy as np
    import pytest

    from tasks.exports import npz_bytes

    rng = np.random.default_rng(1)
    arrays = {"x": rng.integers(0, 256, (7, 96, 256), dtype=np.uint8)[:, ::2, 1::3],
              "cell": np.array(["diputados/501", "x"]), "flag": np.array([True, False]),
              "none": np.zeros((0, 28, 28), np.uint8), "f": rng.random((3, 4)).T}
    with zipfile.ZipFile(io.BytesIO(npz_bytes(**arrays))) as zf:
        for name, value in arrays.items():
            expected = io.BytesIO()
            np.save(expected, np.ascontiguousarray(value), allow_pickle=False)
            assert zf.read(f"{name}.npy") == expected.getvalue(), name
    with pytest.raises(ValueError, match="object"):
        npz_bytes(o=np.array([{"a": 1}], dtype=object))


def test_the_numbers_shard_holds_each_labelled_crop_cut_or_padded_with_paper():
    import io

    import numpy as np

    from tasks.compose import CellReading
    from tasks.exports import NUMBER_SHAPE, collect, shard_payloads
    from tasks.read import ScanReading

    small = np.full((40, 100), 7, np.uint8)
    big = np.arange(120 * 300, dtype=np.uint32).reshape(120, 300).astype(np.uint8)
    cells = {"a": CellReading(12, "12", 1.0, "ok"), "b": CellReading(3, "3", 1.0, "ok"),
             "c": CellReading(None, "", 1.0, "empty")}
    reading = ScanReading("file:///s/2100100001X.jpg", "h1", "ok", None, 1.0, [], cells,
                          crops={"a": small, "b": big, "c": small})
    shards = collect([reading], {"file:///s/2100100001X.jpg": {"a": 12, "b": 3, "c": 0}})
    with np.load(io.BytesIO(shard_payloads(shards)["numbers"])) as d:
        x, y = d["x"], d["y"]
    assert x.shape == (2, *NUMBER_SHAPE) and list(y) == [12, 3]  # the empty cell is left out
    assert (x[0, :40, :100] == 7).all() and (x[0, 40:] == 255).all() and (x[0, :, 100:] == 255).all()
    assert np.array_equal(x[1], big[: NUMBER_SHAPE[0], : NUMBER_SHAPE[1]])
    assert small.shape == (40, 100) and (small == 7).all()  # the reading's crops are untouched
