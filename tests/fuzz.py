"""Fuzzing harness over the scan decoder and the full read of one scan (Hypothesis-driven).

    python -m tests.fuzz --seconds 60 [--target decode|read|all] [--seed-scan PATH]

Hypothesis draws structured mutations (byte flips, truncations, insertions, header rewrites,
size fields set to extremes, splices, magic bytes followed by noise) of a seed corpus: small
JPEG, PNG (8 and 16 bit), single- and multi-page TIFF and PDF images, plus a real telegram
scan when the shared data is present (for the deep path: registration, segmentation,
inference). Every input must end as a status with a reason, never an exception; an input
that runs longer than --hang-seconds aborts the process with a traceback (faulthandler), so a
hang in C code is caught too. Prints one JSON object: inputs tried, outcomes, slowest input.
tests/test_fuzz.py runs a short bounded version in the test suite.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import re
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

READ_STATUSES = {"ok", "unreadable", "unaligned"}
CELL_STATUSES = {"ok", "review", "empty", "unreadable"}
MAGIC = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"%PDF-1.7\n", b"GIF89a",
         b"BM", b"RIFF\x00\x00\x00\x00WEBP"]


def seed_corpus(scan: Path | None = None) -> list[bytes]:
    """Small valid files of every accepted kind (and the real telegram scan, if given)."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.full((240, 180), 235, np.uint8)
    img[40:200:20, 20:160] = 30  # ruled lines, so that decoders have structure to chew on
    img[rng.integers(0, 240, 300), rng.integers(0, 180, 300)] = 0
    out = [cv2.imencode(".jpg", img)[1].tobytes(), cv2.imencode(".png", img)[1].tobytes(),
           cv2.imencode(".png", img.astype(np.uint16) * 257)[1].tobytes(),
           cv2.imencode(".tif", img)[1].tobytes()]
    pages = [Image.fromarray(img), Image.fromarray(255 - img), Image.fromarray(img[::-1].copy())]
    for fmt, kw in (("TIFF", {"compression": "tiff_deflate"}), ("TIFF", {}), ("PDF", {"resolution": 72})):
        buf = io.BytesIO()
        pages[0].save(buf, format=fmt, save_all=True, append_images=pages[1:], **kw)
        out.append(buf.getvalue())
    if scan is not None and scan.is_file():
        out.append(scan.read_bytes())
    return out


def mutations(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    """Inputs: a seed with up to four structured mutations, or magic bytes plus noise."""
    def mutate(seed: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
        data = bytearray(seed)
        for kind, pos, value, blob in ops:
            if not data:
                data = bytearray(blob)
                continue
            at = pos % len(data)
            if kind == 0:  # flip bits of a byte
                data[at] ^= value & 0xFF or 1
            elif kind == 1:  # truncate
                del data[at:]
            elif kind == 2:  # insert
                data[at:at] = blob
            elif kind == 3:  # overwrite (header-biased)
                at = pos % min(len(data), 512)
                data[at : at + len(blob)] = blob
            elif kind == 4:  # a 2- or 4-byte size field set to an extreme
                fmt = (">I", "<I", ">H", "<H")[value % 4]
                big = (0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 100_000)[value % 6]
                packed = struct.pack(fmt, big & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
                at = pos % min(len(data), 1024)
                data[at : at + len(packed)] = packed
            elif kind == 5:  # duplicate a stretch (repeated chunks, IFD loops)
                data[at:at] = data[at : at + 1 + value % 2048]
            else:  # delete a stretch
                del data[at : at + 1 + value % 256]
        return bytes(data)

    op = st.tuples(st.integers(0, 6), st.integers(0, 2**31), st.integers(0, 2**16),
                   st.binary(min_size=1, max_size=64))
    mutated = st.builds(mutate, st.sampled_from(corpus), st.lists(op, min_size=1, max_size=4))
    spliced = st.builds(lambda a, b, i, j: a[: i % (len(a) + 1)] + b[j % (len(b) + 1):],
                        st.sampled_from(corpus), st.sampled_from(corpus), st.integers(0, 2**31),
                        st.integers(0, 2**31))
    noise = st.builds(lambda m, rest: m + rest, st.sampled_from(MAGIC), st.binary(max_size=2048))
    return st.one_of(mutated, mutated, mutated, spliced, noise, st.binary(max_size=512))


@dataclass
class Tally:
    inputs: int = 0
    pages: int = 0
    outcomes: Counter = field(default_factory=Counter)
    slowest_s: float = 0.0
    slowest_size: int = 0

    def note(self, seconds: float, size: int) -> None:
        self.inputs += 1
        if seconds > self.slowest_s:
            self.slowest_s, self.slowest_size = seconds, size


def reason_kind(reason: str) -> str:
    """"corrupt TIFF page: OSError" -> "corrupt TIFF page"; digits and sizes dropped."""
    head = re.sub(r"\(.*?\)|\d+x\d+|\d+", "", reason.split(":")[0])
    return " ".join(head.split())[:60]


def check_decode(data: bytes, tally: Tally, max_pixels: int = 40_000_000) -> None:
    """Decoder contract: one or more pages, each a 2-D uint8 image xor a non-empty reason."""
    from tasks.decode import decode_pages, decode_scan

    t0 = time.perf_counter()
    single = decode_scan(data, max_pixels=max_pixels)
    pages = decode_pages(data, max_pixels=max_pixels, max_pages=20)
    tally.note(time.perf_counter() - t0, len(data))
    assert (single.gray is None) != (single.reason is None)
    assert pages and all(1 <= d.page <= d.pages for d in pages)
    for d in pages:
        assert (d.gray is None) != (d.reason is None), d
        if d.gray is not None:
            assert d.gray.dtype == np.uint8 and d.gray.ndim == 2 and min(d.gray.shape) >= 1
            tally.outcomes["decoded"] += 1
        else:
            assert isinstance(d.reason, str) and d.reason.strip()
            tally.outcomes[reason_kind(d.reason)] += 1
    tally.pages += len(pages)


class Reader:
    """The full read of one scan file: every page decoded, registered, segmented, inferred."""

    def __init__(self) -> None:
        from tasks.model import build_mnist_convnet
        from tasks.read import ReadOptions
        from tasks.template import load_template

        self.template = load_template("telegrama_nacional_2021")
        self.model = build_mnist_convnet(seed=0)  # weights do not matter for robustness
        self.opt = ReadOptions(max_pixels=40_000_000, max_pages=20)

    def check(self, data: bytes, tally: Tally) -> None:
        from tasks.read import infer_and_compose, prepare_pages
        from tasks.storage import content_hash

        t0 = time.perf_counter()
        prepared = prepare_pages(data, "file:///fuzz/2100100001X.jpg", content_hash(data), self.template,
                                 self.opt)
        readings, _ = infer_and_compose(prepared, self.template, self.model, self.opt)
        tally.note(time.perf_counter() - t0, len(data))
        assert len(readings) == len(prepared) >= 1
        for r in readings:
            assert r.status in READ_STATUSES, r.status
            if r.status == "ok":
                assert set(r.cells) == {c.id for c in self.template.cells}
                assert all(c.status in CELL_STATUSES for c in r.cells.values())
                tally.outcomes["read ok"] += 1
            else:
                assert isinstance(r.reason, str) and r.reason.strip(), r
                tally.outcomes[f"{r.status}: {reason_kind(r.reason)}"] += 1
        tally.pages += len(readings)


def fuzz(target: str, seconds: float, corpus: list[bytes], hang_s: float = 30.0,
         batch: int = 200) -> dict:
    """Run Hypothesis batches until `seconds` have passed; any failing input is shrunk by
    Hypothesis and re-raised (a crash); a hang aborts the process."""
    tally = Tally()
    reader = Reader() if target == "read" else None
    if reader is not None and len(corpus) > 7:  # the real scan: the deep path wants it most
        corpus = corpus + [corpus[-1]] * 6
    strategy = mutations(corpus)

    @settings(max_examples=batch, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(data: bytes) -> None:
        faulthandler.dump_traceback_later(hang_s, exit=True)
        try:
            if reader is None:
                check_decode(data, tally)
            else:
                reader.check(data, tally)
        finally:
            faulthandler.cancel_dump_traceback_later()

    started = time.monotonic()
    one()  # at least one batch
    while time.monotonic() - started < seconds:
        one()
    return {"target": target, "inputs": tally.inputs, "pages": tally.pages,
            "seconds": round(time.monotonic() - started, 1), "crashes": 0, "hangs": 0,
            "slowest_input_s": round(tally.slowest_s, 3), "slowest_input_bytes": tally.slowest_size,
            "outcomes": dict(tally.outcomes.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--target", choices=["decode", "read", "all"], default="all")
    parser.add_argument("--seed-scan", type=Path, default=None,
                        help="a real scan for the corpus (default: the shared reference telegram)")
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    scan = args.seed_scan
    if scan is None:
        from tests.conftest import shared_data_dir

        shared = shared_data_dir()
        scan = shared / "telegram_reference" / "santa_fe_2021_mesa_0001.jpg" if shared else None
    corpus = seed_corpus(scan)
    targets = ["decode", "read"] if args.target == "all" else [args.target]
    results = [fuzz(t, args.seconds, corpus, args.hang_seconds) for t in targets]
    print(json.dumps({"corpus_files": len(corpus), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
