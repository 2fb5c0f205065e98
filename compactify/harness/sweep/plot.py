"""frontier.png: accuracy against latency, one panel per batch size, the frontier drawn through its
points and the recommended point starred."""

from __future__ import annotations

import io
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from compactify.harness.sweep.frontier import quality

FRONTIER_COLOR = "#d62728"
RECOMMENDED_COLOR = "#ffbf00"
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}


def frontier_png(points: Sequence[dict[str, Any]], batches: Sequence[str], runtime: str, quality_name: str) -> bytes:
    """The plot as PNG bytes (written to frontier.png and inlined in report.html)."""
    checkpoints = list(dict.fromkeys(p["checkpoint"] for p in points))
    colors = {c: f"C{i % 10}" for i, c in enumerate(checkpoints)}
    fig = Figure(figsize=(min(6.0 * len(batches), 18.0), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        timed = [p for p in points if quality(p) is not None and batch in (p.get("latency") or {})]
        for p in timed:
            x, y = p["latency"][batch]["p50_ms"], 100 * quality(p)
            ax.scatter(x, y, color=colors[p["checkpoint"]], marker=MARKERS.get(p["precision"], "o"), s=40, zorder=3)
            ax.annotate(p["budget"] if p["precision"] == "fp32" else f"{p['budget']} {p['precision']}", (x, y),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = sorted((p for p in timed if batch in p.get("frontier", ())), key=lambda p: p["latency"][batch]["p50_ms"])
        if front:  # a step through the frontier's points, each ringed (a one-point frontier is only a ring)
            xs, ys = [p["latency"][batch]["p50_ms"] for p in front], [100 * quality(p) for p in front]
            ax.step(xs, ys, where="post", color=FRONTIER_COLOR, linewidth=2, zorder=2)
            ax.scatter(xs, ys, s=170, facecolors="none", edgecolors=FRONTIER_COLOR, linewidths=2, zorder=2,
                       label="Pareto frontier")
        for p in timed:
            if batch in p.get("recommended", ()):
                ax.scatter(p["latency"][batch]["p50_ms"], 100 * quality(p), marker="*", s=360, color=RECOMMENDED_COLOR,
                           edgecolors="black", zorder=4, label="recommended")
        ax.set_title(f"{runtime}, batch {batch}")
        ax.set_xlabel("latency p50 (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{quality_name} (%)")
    labelled = dict(zip(*reversed(axes[0].get_legend_handles_labels())))  # label -> handle, once each
    handles = [axes[0].scatter([], [], color=colors[c], label=c) for c in checkpoints] + list(labelled.values())
    axes[0].legend(handles=handles, fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
