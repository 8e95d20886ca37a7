"""The fixed validation set of telegram cells that decides promotions.

A folder (any fsspec URL) of telegram scans named by their mesa code, with the official
results of those mesas in one or more `labels*.csv` files (the authority's CSV format, as
`cifras generate` writes beside its scans). Each candidate model reads the same prepared cells
through the whole pipeline (segmentation, reframing, composition and checksum decoding), so
the comparison measures what an operator would get, not digit accuracy on clean crops.

It must never overlap the data a model is trained or fine-tuned on: `fingerprint` and the
scan hashes let the fine-tuning flow exclude these telegrams from its training digits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tasks.official_results import parse_results_csv
from tasks.read import PreparedScan, ReadOptions, infer_and_compose, mesa_code_from_uri, prepare_scan
from tasks.scoring import Scored, score_cells
from tasks.settings import Settings
from tasks.storage import content_hash, filesystem, read_bytes
from tasks.template import Template


@dataclass
class ValidationSet:
    uri: str
    prepared: list[PreparedScan]
    labels: dict[str, dict[str, int]]  # scan uri -> cell id -> official value
    unreadable: list[str]  # scans that could not be registered (kept out of the score)

    @property
    def hashes(self) -> set[str]:
        return {p.content_hash for p in self.prepared}

    @property
    def fingerprint(self) -> str:
        """Identifies the exact scans and labels, so comparisons name what they were made on."""
        h = hashlib.sha256()
        for p in sorted(self.prepared, key=lambda p: p.content_hash):
            h.update(p.content_hash.encode())
            h.update(repr(sorted(self.labels[p.uri].items())).encode())
        return h.hexdigest()[:16]

    @property
    def cells(self) -> int:
        return sum(len(v) for v in self.labels.values())


def validation_listing(uri: str, settings: Settings) -> tuple[tuple[str, int], ...]:
    """(path, size) of every file under `uri`: what decides whether a prepared set is stale."""
    fs, root = filesystem(uri, settings)
    if not fs.exists(root):
        return ()
    return tuple(sorted((p, int(i.get("size") or 0)) for p, i in fs.find(root, detail=True).items()))


def load_validation_set(uri: str, settings: Settings, template: Template, opt: ReadOptions
                        ) -> ValidationSet | None:
    """Prepare every labelled scan under `uri` once; None when there is no such set."""
    fs, root = filesystem(uri, settings)
    if not fs.exists(root):
        return None
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    paths = sorted(fs.find(root))
    by_code: dict[str, dict[str, int]] = {}
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.startswith("labels") and name.endswith(".csv"):
            for lab in parse_results_csv(fs.cat_file(path).decode("utf-8-sig"), template):
                by_code.setdefault(lab.mesa.code, {})[lab.cell_id] = lab.value
    suffixes = tuple(settings.read.suffixes)
    prepared: list[PreparedScan] = []
    labels: dict[str, dict[str, int]] = {}
    unreadable: list[str] = []
    for path in paths:
        if not path.lower().endswith(suffixes):
            continue
        scan_uri = f"{protocol}://{path}"
        code = mesa_code_from_uri(scan_uri)
        if code is None or code not in by_code:
            continue
        data = read_bytes(scan_uri, settings)
        p = prepare_scan(data, scan_uri, content_hash(data), template, opt)
        if p.status != "ok":
            unreadable.append(f"{scan_uri}: {p.reason}")
            continue
        prepared.append(p)
        labels[scan_uri] = by_code[code]
    if not prepared:
        return None
    return ValidationSet(uri, prepared, labels, unreadable)


def score_on_validation(vs: ValidationSet, model, template: Template, opt: ReadOptions) -> dict:
    """Number and digit metrics of one model on the validation telegrams."""
    readings, _ = infer_and_compose(vs.prepared, template, model, opt)
    cells = []
    for r in readings:
        truth = vs.labels[r.uri]
        for cell_id, c in r.cells.items():
            if cell_id in truth:
                cells.append(Scored(cell_id, truth[cell_id], c.value, c.digits, c.status))
    report = score_cells(cells)
    report.pop("confusion_matrix")
    report["telegrams"] = len(vs.prepared)
    return report


THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


def reliability(vs: ValidationSet, model, template: Template, opt: ReadOptions,
                thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict]:
    """For each `ok_threshold`: how many cells are marked ok, how many of those are right,
    and how many numbers are right overall: what an operator trades when choosing it."""
    from dataclasses import replace

    rows = []
    for t in thresholds:
        report = score_on_validation(vs, model, template, replace(opt, ok_threshold=t))
        counts = report["status_counts"]
        rows.append({"ok_threshold": t, "ok_share": counts.get("ok", 0) / report["cells_scored"],
                     "accuracy_when_ok": report["accuracy_when_ok"],
                     "review_share": report["review_share"],
                     "number_accuracy": report["number_accuracy"]})
    return rows


def recommend_threshold(rows: list[dict], target: float) -> dict | None:
    """The lowest threshold whose ok cells are right at least `target` of the time."""
    good = [r for r in rows if (r["accuracy_when_ok"] or 0) >= target]
    return min(good, key=lambda r: r["ok_threshold"]) if good else None
