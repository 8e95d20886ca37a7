"""Run exports: the readings as Parquet, the labelled crops as the source paper's two
datasets (numbers and digits, ready for fine-tuning), and a gallery of misread cells."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.read import ScanReading
from tasks.scoring import digit_pairs, effective_value

NUMBER_SHAPE = (96, 256)  # every cell crop padded to this (h, w) so shards stack


@dataclass
class Misread:
    crop: np.ndarray
    cell_id: str
    label: int
    read: str
    status: str


@dataclass
class Shards:
    numbers_x: list[np.ndarray] = field(default_factory=list)  # the crops as read, fitted when stored
    numbers_y: list[int] = field(default_factory=list)
    numbers_cell: list[str] = field(default_factory=list)
    numbers_hash: list[str] = field(default_factory=list)
    digits_x: list[np.ndarray] = field(default_factory=list)
    digits_y: list[int] = field(default_factory=list)
    digits_scan: list[str] = field(default_factory=list)  # content hash: what fine-tuning excludes
    misread: list[Misread] = field(default_factory=list)


def _fit(crop: np.ndarray) -> np.ndarray:
    return _fit_all([crop])[0]


def _fit_all(crops: list[np.ndarray]) -> np.ndarray:
    """The crops, each cut or padded with paper to NUMBER_SHAPE, in one array: written in place,
    so that a chunk's shard holds its crops once (a padded copy of each, then their stack, held
    1.5 MB a telegram in the flow's process)."""
    h, w = NUMBER_SHAPE
    out = np.full((len(crops), h, w), 255, np.uint8)
    for dst, crop in zip(out, crops, strict=True):
        c = crop[:h, :w]
        dst[: c.shape[0], : c.shape[1]] = c
    return out


def collect(readings: list[ScanReading], labels: dict[str, dict[str, int]], max_misread: int = 48) -> Shards:
    """Labelled number crops, weakly labelled digit inputs, and misread examples of a chunk."""
    sh = Shards()
    for r in readings:
        truth = labels.get(r.page_uri, {})
        for cell_id, c in r.cells.items():
            if cell_id not in truth:
                continue
            label = truth[cell_id]
            crop = r.crops.get(cell_id)
            if crop is not None and c.status != "empty":
                sh.numbers_x.append(crop)
                sh.numbers_y.append(label)
                sh.numbers_cell.append(cell_id)
                sh.numbers_hash.append(r.content_hash)
            pairs = digit_pairs(label, c.digits)
            inputs = r.digit_inputs.get(cell_id)
            if inputs is not None and c.chosen:
                inputs = inputs[c.chosen]
            if pairs and inputs is not None and len(inputs) == len(pairs):
                sh.digits_x.extend((inputs[:, :, :, 0] * 255).round().astype(np.uint8))
                sh.digits_y.extend(t for t, _ in pairs)
                sh.digits_scan.extend([r.content_hash] * len(pairs))
            if effective_value(c.value, c.status) != label and crop is not None \
                    and len(sh.misread) < max_misread:
                sh.misread.append(Misread(crop, cell_id, label, c.digits or c.status, c.status))
    return sh


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """A compressed .npz (as `np.savez_compressed`, which `np.load` reads) at level 1: 4x
    faster than zlib's default level for 8 % more bytes. The deflate stream comes from ISA-L
    when installed (`isal`): the same format and about the same size, 5x faster than zlib's
    level 1 here (it was most of `persist`'s time, in the flow's process)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            array = np.ascontiguousarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"{name}: object arrays are not stored (they would need pickle)")
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                _fast_deflate(fh)
                # the .npy bytes `np.lib.format.write_array` writes, but the data in one write
                # from the array's own buffer: write_array copies a file-like target's data in
                # 16 MB pieces first, a third of a shard's time
                np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
                fh.write(array.reshape(-1).view(np.uint8).data)
    return buf.getvalue()


def _fast_deflate(fh) -> None:
    """Swap the zip entry's zlib compressor (raw deflate, level 1) for ISA-L's, before any byte
    is written; zipfile still writes the CRC and sizes. Without isal, or with a zipfile that
    has no such compressor, zlib stays."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency
        return
    if getattr(fh, "_compressor", None) is not None and getattr(fh, "_compress_size", 1) == 0:
        fh._compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)


def shard_payloads(sh: Shards) -> dict[str, bytes]:
    out = {}
    if sh.numbers_x:
        out["numbers"] = npz_bytes(x=_fit_all(sh.numbers_x), y=np.array(sh.numbers_y),
                                   cell=np.array(sh.numbers_cell), scan=np.array(sh.numbers_hash))
    if sh.digits_x:
        out["digits"] = npz_bytes(x=np.stack(sh.digits_x), y=np.array(sh.digits_y),
                                  scan=np.array(sh.digits_scan))
    return out


READINGS_SCHEMA = pa.schema([("cell_id", pa.string()), ("label", pa.int64()), ("digits", pa.string()),
                             ("value", pa.int64()), ("status", pa.string()), ("scan_uri", pa.string())])


class ReadingsParquet:
    """The run's readings written to a Parquet file batch by batch (one row group each), so
    the export of a large run never sits in memory whole."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.writer = pq.ParquetWriter(path, READINGS_SCHEMA)
        self.rows = 0

    def write(self, rows: list[tuple]) -> None:
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in READINGS_SCHEMA]
        self.writer.write_table(pa.table([pa.array(c, f.type) for c, f in zip(columns, READINGS_SCHEMA,
                                                                             strict=True)],
                                         schema=READINGS_SCHEMA))
        self.rows += len(rows)

    def close(self) -> None:
        self.writer.close()


def parquet_bytes(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    return buf.getvalue()


def gallery_png(items: list[Misread], columns: int = 4) -> bytes | None:
    """A grid of misread cells, each captioned with the truth and what was read."""
    if not items:
        return None
    tiles = []
    for m in items:
        tile = cv2.cvtColor(_fit(m.crop), cv2.COLOR_GRAY2BGR)
        tile = cv2.copyMakeBorder(tile, 22, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(tile, f"{m.cell_id} true {m.label} read {m.read}", (4, 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 200), 1, cv2.LINE_AA)
        tiles.append(tile)
    blank = np.full_like(tiles[0], 255)
    while len(tiles) % columns:
        tiles.append(blank)
    grid = np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])
    ok, png = cv2.imencode(".png", grid)
    return png.tobytes() if ok else None
