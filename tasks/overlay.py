"""Drawing a template over a scan, so a person can check the geometry at a glance."""

from __future__ import annotations

import cv2
import numpy as np

from tasks.template import Template

COLOURS = {"header": (0, 140, 255), "senadores": (0, 0, 220), "diputados": (200, 0, 160)}


def draw_template(scan: np.ndarray, template: Template, warp: np.ndarray | None = None) -> np.ndarray:
    """BGR copy of the scan with every cell box, sub-box edge and registration rule drawn.

    `warp` is an optional 2x3 template-to-scan affine (from registration); without it the
    template is drawn in its own coordinates.
    """
    img = cv2.cvtColor(scan, cv2.COLOR_GRAY2BGR) if scan.ndim == 2 else scan.copy()
    m = np.eye(3)[:2] if warp is None else np.asarray(warp, dtype=np.float64)

    def pt(x: float, y: float) -> tuple[int, int]:
        p = m @ np.array([x, y, 1.0])
        return round(p[0]), round(p[1])

    reg = template.registration
    x0, y0, w, h = reg.table_box
    for y in reg.horizontal_rules:
        cv2.line(img, pt(x0, y), pt(x0 + w, y), (0, 200, 0), 1, cv2.LINE_AA)
    for x in reg.vertical_rules:
        cv2.line(img, pt(x, y0), pt(x, y0 + h), (0, 200, 0), 1, cv2.LINE_AA)
    for cell in template.cells:
        x, y, cw, ch = cell.box
        colour = COLOURS.get(cell.category, (255, 0, 0))
        corners = np.array([pt(x, y), pt(x + cw, y), pt(x + cw, y + ch), pt(x, y + ch)], np.int32)
        cv2.polylines(img, [corners], True, colour, 2, cv2.LINE_AA)
        for edge in cell.subbox_edges:
            cv2.line(img, pt(edge, y), pt(edge, y + ch), colour, 1, cv2.LINE_AA)
        cv2.putText(img, cell.id, pt(x + 3, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return img
