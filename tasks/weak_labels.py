"""Digits labelled without anyone labelling them: the official number of a cell says which
digits its segments are, whenever the reader found as many digits as the number has.

Two sources give such digits, both as npz shards (`x` uint8 28x28 model inputs with ink 255,
`y` the digit, `scan` the content hash of the image it came from):
- every ingest run exports them for its telegrams (tasks/exports.py), from the official
  results in the database;
- `harvest_cells` makes them from folders of labelled cell crops (e.g. the Danish register
  rows' training split), the way the source paper built its digit set.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from dataclasses import dataclass

import numpy as np

from tasks.cell_reader import read_cell_versions
from tasks.scoring import digit_pairs
from tasks.segment import Segmentation
from tasks.settings import Settings
from tasks.storage import filesystem, modified_time


@dataclass
class WeakDigits:
    x: np.ndarray  # (n, 28, 28) uint8, ink 255
    y: np.ndarray  # (n,) int64
    scan: np.ndarray  # (n,) content hash of the source image

    def __len__(self) -> int:
        return len(self.y)

    def without(self, hashes: set[str]) -> WeakDigits:
        keep = ~np.isin(self.scan, list(hashes)) if hashes else np.ones(len(self), bool)
        return WeakDigits(self.x[keep], self.y[keep], self.scan[keep])

    @staticmethod
    def concat(parts: list[WeakDigits]) -> WeakDigits:
        parts = [p for p in parts if len(p)]
        if not parts:
            return WeakDigits(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), np.zeros(0, str))
        return WeakDigits(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                          np.concatenate([p.scan for p in parts]))


# geometric mean of the label's digit probabilities under which a forced alignment is not
# trusted: the label may belong to another row, or the segments may not be digits at all
ALIGN_MIN_PROB = 0.1
MAX_ALIGNMENTS = 512


def align_to_label(seg: Segmentation, probs: np.ndarray, label: int,
                   min_prob: float = ALIGN_MIN_PROB) -> list[int] | None:
    """The segmentation (one hypothesis per blob) with as many digits as the label that gives
    the label's digits the highest probability, or None. This harvests exactly the cells the
    reader gets wrong by splitting touching digits badly, which free reading would skip."""
    truth = [int(c) for c in str(label)]
    groups = seg.groups or [[[i]] for i in range(len(probs))]
    logp = np.log(np.clip(probs, 1e-9, 1.0))
    best, best_score = None, -np.inf
    for combo in itertools.islice(itertools.product(*groups), MAX_ALIGNMENTS):
        idx = [i for h in combo for i in h]
        if len(idx) != len(truth):
            continue
        score = float(sum(logp[i, t] for i, t in zip(idx, truth, strict=True)))
        if score > best_score:
            best, best_score = idx, score
    if best is None or np.exp(best_score / len(truth)) < min_prob:
        return None
    return best


def harvest_cells(images: list[bytes | np.ndarray], labels: list[int], model, max_digits: int,
                  reframe: str = "mnist", batch_size: int = 2048) -> tuple[WeakDigits, dict]:
    """Weakly labelled digits from cell images whose number is known, and how many cells gave
    some (`used`, of which `aligned` by forcing the segmentation to the label's length) or none
    (`skipped`: no segmentation fits the label)."""
    import cv2

    grays, hashes = [], []
    for img in images:
        if isinstance(img, bytes):
            hashes.append(hashlib.sha256(img).hexdigest())
            img = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_GRAYSCALE)
        else:
            hashes.append(hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
        grays.append(img)
    # each cell as the reader sees it: as it is and, when it has underlines, without them;
    # the segmentation of the reading the reader keeps is the one harvested
    kept = read_cell_versions(grays, model, max_digits, 0.0, reframe, batch_size)
    xs, ys, scans = [], [], []
    used = skipped = aligned = 0
    for version, label, h in zip(kept, labels, hashes, strict=True):
        if version is None or not version.seg.digits:
            skipped += 1
            continue
        seg, x, p, reading = version.seg, version.inputs, version.probs, version.reading
        pairs = digit_pairs(label, reading.digits)
        chosen = x[reading.chosen] if reading.chosen else x
        if not pairs or len(chosen) != len(pairs):
            forced = align_to_label(seg, p, label)
            if forced is None:
                skipped += 1
                continue
            chosen, aligned = x[forced], aligned + 1
            pairs = [(int(c), int(c)) for c in str(label)]
        used += 1
        xs.append((chosen[:, :, :, 0] * 255).round().astype(np.uint8))
        ys.extend(t for t, _ in pairs)
        scans.extend([h] * len(pairs))
    if not xs:
        return WeakDigits.concat([]), {"cells": len(labels), "used": 0, "aligned": 0,
                                       "skipped": skipped, "digits": 0}
    weak = WeakDigits(np.concatenate(xs), np.array(ys, np.int64), np.array(scans))
    return weak, {"cells": len(labels), "used": used, "aligned": aligned, "skipped": skipped,
                  "digits": len(weak)}


def shard_bytes(weak: WeakDigits) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=weak.x, y=weak.y, scan=weak.scan)
    return buf.getvalue()


def load_shards(uris: list[str], settings: Settings | None,
                newest_per_scan: bool = False) -> tuple[WeakDigits, list[str]]:
    """Every digit shard (`*.npz` holding x and y) at or under the given URLs, with the files
    read. Shards from before scan hashes were exported are refused: they could hold
    validation telegrams and nothing could tell.

    `newest_per_scan`: a scan read by several runs (a forced re-read) has its digits in each
    run's shards; keep only those of its newest shard file. Off by default: the documented
    model chain (deploy/rebuild-models.sh) was fine-tuned on both copies of its first 900
    telegrams. A file given twice is still loaded twice (a deliberate weight)."""
    parts, files, stamps = [], [], []
    for uri in uris:
        fs, root = filesystem(uri, settings)
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        listing = ({root: fs.info(root)} if fs.isfile(root) else
                   {p: i for p, i in fs.find(root, detail=True).items() if p.endswith(".npz")})
        for path in sorted(listing):
            with np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) as d:
                if "x" not in d or "y" not in d or d["x"].shape[1:] != (28, 28):
                    continue  # e.g. a numbers shard: cell crops, not digits
                if "scan" not in d:
                    raise ValueError(f"{protocol}://{path} has no scan hashes; re-export it")
                parts.append(WeakDigits(d["x"].astype(np.uint8), d["y"].astype(np.int64),
                                        d["scan"].astype(str)))
            files.append(f"{protocol}://{path}")
            if newest_per_scan:
                stamps.append(modified_time(listing[path]))
    if newest_per_scan:
        parts = _newest_per_scan(parts, files, stamps)
    return WeakDigits.concat(parts), files


def _newest_per_scan(parts: list[WeakDigits], files: list[str], stamps: list) -> list[WeakDigits]:
    """Each scan's digits from the newest file that holds it (by modification time, then name)."""
    owner: dict[str, str] = {}
    newest_first = sorted(range(len(files)), key=lambda i: (stamps[i] is not None, stamps[i] or 0, files[i]),
                          reverse=True)
    for i in newest_first:
        for h in set(parts[i].scan.tolist()):
            owner.setdefault(h, files[i])
    out = []
    for part, f in zip(parts, files, strict=True):
        keep = np.array([owner[h] == f for h in part.scan.tolist()], bool)
        out.append(WeakDigits(part.x[keep], part.y[keep], part.scan[keep]))
    return out
