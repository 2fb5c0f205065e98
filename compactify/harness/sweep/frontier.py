"""The accuracy-latency frontier of a sweep and the point it recommends.

A point's *quality* is its accuracy on the held-out labels, or, without labels, its top-1
agreement with the untruncated model; its *drop* is how many percentage points it loses against
its own checkpoint's untruncated network (the source's accuracy, or 100% agreement). At each batch
size a point is on the Pareto frontier when no other point is at least as fast and at least as
good, and strictly one of them. The recommendation is the fastest point whose drop is within the
stated ``max_drop``; ties go to fewer FLOPs.
"""

from __future__ import annotations

from typing import Any, Sequence

from compactify.converter.lowrank.rule_syntax import UNTRUNCATED


def quality(point: dict[str, Any]) -> float | None:
    """Accuracy when labels were given, else top-1 agreement (a fraction), None for a failed point."""
    if point.get("status") != "ok":
        return None
    return point["accuracy"] if point.get("accuracy") is not None else point.get("agreement")


def drop_points(point: dict[str, Any]) -> float | None:
    """Percentage points lost against the untruncated network of the same checkpoint."""
    if point.get("status") != "ok":
        return None
    if point.get("accuracy") is not None and point.get("source_accuracy") is not None:
        return 100.0 * (point["source_accuracy"] - point["accuracy"])
    return 100.0 * (1.0 - point["agreement"])


def pareto(points: Sequence[dict[str, Any]], batch: str) -> set[str]:
    """Keys of the points on the frontier at ``batch`` (those with a latency there)."""
    timed = [(p["key"], p["latency"][batch]["p50_ms"], quality(p)) for p in points
             if quality(p) is not None and batch in (p.get("latency") or {})]
    front = set()
    for key, ms, q in timed:
        dominated = any(o_ms <= ms and o_q >= q and (o_ms < ms or o_q > q) for _, o_ms, o_q in timed)
        if not dominated:
            front.add(key)
    return front


def recommend(points: Sequence[dict[str, Any]], batch: str, max_drop: float) -> dict[str, Any] | None:
    """The fastest point at ``batch`` losing at most ``max_drop`` points, or None."""
    eligible = [p for p in points if drop_points(p) is not None and drop_points(p) <= max_drop + 1e-9
                and batch in (p.get("latency") or {})]
    if not eligible:
        return None
    return min(eligible, key=lambda p: (p["latency"][batch]["p50_ms"], p["flops"]))


def speedups(points: Sequence[dict[str, Any]], batch: str) -> dict[str, float]:
    """Each point's speedup over its checkpoint's untruncated fp32 point at ``batch`` (p50 over p50, both
    from the same interleaved run)."""
    base = {p["checkpoint"]: p["latency"][batch]["p50_ms"] for p in points
            if p.get("budget") == UNTRUNCATED and p.get("precision") == "fp32" and batch in (p.get("latency") or {})}
    return {p["key"]: base[p["checkpoint"]] / p["latency"][batch]["p50_ms"] for p in points
            if p["checkpoint"] in base and batch in (p.get("latency") or {}) and p["latency"][batch]["p50_ms"] > 0}
