"""The real reference telegram's hand transcription as official results.

A dash means a dash was written (no number): the form counts it as 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.errors import CifrasError
from tasks.official_results import MesaId

REFERENCE_MESA = MesaId(21, 1, "402", 1)  # Santa Fe, sección 1 Belgrano, circuito 402, mesa 1


def reference_values(transcription: dict) -> dict[str, int]:
    header = transcription["header"]
    values = {"header/sobres": int(header["sobres"]), "header/electores": int(header["electores"])}
    if "diferencia" in header:
        values["header/diferencia"] = int(header["diferencia"])
    elif "diferencia_written" in header:
        values["header/diferencia"] = int(header["diferencia_written"])
    for category in ("senadores", "diputados"):
        for row, v in transcription[category].items():
            values[f"{category}/{row}"] = 0 if v == "-" else int(v)
    return values


def transcribed_values(scan: Path) -> dict[str, int]:
    """A scan's values from its hand transcription beside it (the same name, `.json`)."""
    path = scan.with_suffix(".json")
    if not path.is_file():
        raise CifrasError(f"no transcription {path.name} beside {scan.name}")
    return reference_values(json.loads(path.read_text()))


def load_reference(folder: Path) -> tuple[Path, dict[str, int]] | None:
    """(scan, values) of the reference telegram in a shared-data folder, if present."""
    scans = sorted(folder.glob("*.jpg"))
    if not scans:
        return None
    return scans[0], transcribed_values(scans[0])
