"""How far registration puts each cell from where it really is, on generated scans whose true
placement is known. Changes to registration (speed-ups above all) are judged by this figure as
well as by the readings, which move with any sub-pixel shift of a crop."""

from __future__ import annotations

import time

import numpy as np

from flows.generate import render_scan
from tasks.decode import decode_scan
from tasks.digit_pools import load_pool
from tasks.register import register
from tasks.scan_effects import apply_matrix
from tasks.settings import load_settings
from tasks.template import load_template


def registration_error(count: int = 200, seed: int = 777, digits: str = "usps:train") -> dict:
    """Worst cell-centre error (px) of each scan: mean, 90th percentile and max over `count`
    scans, scans over 2 px, and registration time per scan (decoding excluded)."""
    settings = load_settings()
    template = load_template(settings.template)
    mnist = settings.mnist_path if digits.startswith("mnist") else None
    pool = load_pool(digits, settings.shared_data, mnist)
    centres = np.array([[c.box[0] + c.box[2] / 2, c.box[1] + c.box[3] / 2] for c in template.cells])
    errors, seconds, refused = [], 0.0, 0
    for i in range(count):
        _, _, jpeg, truth = render_scan(template, pool, seed, i)
        gray = decode_scan(jpeg).gray
        t0 = time.perf_counter()
        a = register(gray, template)
        seconds += time.perf_counter() - t0
        if not a.ok:
            refused += 1
            continue
        errors.append(float(np.abs(apply_matrix(a.matrix, centres) - apply_matrix(truth, centres)).max()))
    e = np.array(errors) if errors else np.array([np.nan])
    return {"scans": count, "refused": refused, "mean_worst_px": round(float(e.mean()), 3),
            "p90_worst_px": round(float(np.percentile(e, 90)), 3), "max_worst_px": round(float(e.max()), 3),
            "over_2px": int((e > 2).sum()), "ms_per_scan": round(seconds / count * 1000, 1),
            "seed": seed, "digits": digits}
