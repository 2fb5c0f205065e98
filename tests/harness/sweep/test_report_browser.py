"""report.html opened in a real headless Chromium: its screenshot must show the frontier plot above the
table. The page is built from hand-made points (the Ray test checks the real sweep writes it)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from compactify.harness.sweep.html_report import HEADER_COLOR, sweep_html
from compactify.harness.sweep.plot import FRONTIER_COLOR, frontier_png
from .test_frontier import POINTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _summary():
    return {"checkpoints": ["a.pt"], "budgets": ["none", "flops:0.5", "flops:0.3", "energy:0.99", "flops:0.1"],
            "batches": ["1"], "labels": True, "data": "the digits test split (360 images)",
            "quality_name": "accuracy", "runtime": "ort", "threads": 1, "max_accuracy_drop": 1.0,
            "machine_summary": "test machine", "warnings": [],
            "recommended": {"1": {"checkpoint": "a.pt", "budget": "flops:0.5", "precision": "fp32",
                                  "quality": 0.975, "drop": 0.5, "p50_ms": 1.2, "speedup": 1.67, "flops": 50}}}


def _points():
    from compactify.harness.sweep import frontier as F

    points = [dict(p, params=1000, flops_ratio=p.get("flops", 100) / 100, speedup={}, frontier=[], recommended=[])
              for p in POINTS]
    front = F.pareto(points, "1")
    for p in points:
        if p["key"] in front:
            p["frontier"] = ["1"]
        if p["key"] == "half":
            p["recommended"] = ["1"]
    return points


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


def _rows_with(image: np.ndarray, color: str, tol: int) -> np.ndarray:
    close = (np.abs(image[:, :, :3].astype(int) - _rgb(color)) <= tol).all(axis=2)
    return np.nonzero(close.sum(axis=1) > 0)[0]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="needs headless Chromium (Debian package chromium; .ci/run installs it)")
def test_the_screenshot_shows_the_plot_above_the_table(tmp_path):
    assert CHROMIUM is not None, "CI must have Chromium: .ci/run installs the Debian package chromium"
    points = _points()
    png = frontier_png(points, ["1"], "ort", "accuracy")
    page = tmp_path / "report.html"
    page.write_text(sweep_html(_summary(), points, png))
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1400",
           f"--screenshot={shot}", page.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    import matplotlib.image

    image = (matplotlib.image.imread(shot) * 255).round().astype(int)
    plot_rows = _rows_with(image, FRONTIER_COLOR, tol=25)  # the frontier's step line and rings
    table_rows = _rows_with(image, HEADER_COLOR, tol=2)  # the table header's solid background
    assert len(plot_rows) > 20, "no frontier drawn in the screenshot"
    assert len(table_rows) > 10, "no table header in the screenshot"
    # The table's rows are tinted (and a failed one's text is red), so only the plot's own rows are counted.
    assert (plot_rows < table_rows.min()).sum() > 20, "the plot should come above the table"
