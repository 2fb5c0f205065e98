"""The Pareto frontier, the recommendation and the speedups on hand-made points, and the grid's checks."""

from __future__ import annotations

import pytest

from compactify.errors import BadInputError
from compactify.harness.sweep import frontier as F
from compactify.converter.lowrank.rule_syntax import parse_budgets
from compactify.harness.sweep.layout import SweepFolder


def point(key, budget, ms, accuracy, flops=100, precision="fp32", source=0.98, status="ok"):
    return {"key": key, "checkpoint": "a.pt", "budget": budget, "precision": precision, "status": status,
            "accuracy": accuracy, "agreement": 1.0, "source_accuracy": source, "flops": flops,
            "latency": {"1": {"p50_ms": ms}}}


POINTS = [
    point("full", "none", 2.0, 0.98, flops=100),
    point("half", "flops:0.5", 1.2, 0.975, flops=50),  # loses 0.5 points: within 1
    point("third", "flops:0.3", 0.8, 0.90, flops=30),  # fastest, loses 8 points
    point("slow", "energy:0.99", 2.5, 0.97, flops=100),  # slower and worse than full: dominated
    {"key": "bad", "checkpoint": "a.pt", "budget": "flops:0.1", "precision": "fp32", "status": "failed",
     "error": "out of reach"},
]


def test_frontier_holds_exactly_the_undominated_points():
    assert F.pareto(POINTS, "1") == {"full", "half", "third"}


def test_the_recommendation_is_the_fastest_point_within_the_drop():
    assert F.recommend(POINTS, "1", 1.0)["key"] == "half"
    assert F.recommend(POINTS, "1", 10.0)["key"] == "third"
    assert F.recommend(POINTS, "1", 0.0)["key"] == "full"
    assert F.recommend(POINTS[3:], "1", 0.5) is None  # only a point losing 1 point and a failure


def test_drop_without_labels_is_the_disagreement():
    p = dict(point("x", "flops:0.5", 1.0, None), agreement=0.97)
    assert F.quality(p) == 0.97 and F.drop_points(p) == pytest.approx(3.0)


def test_speedups_are_against_the_untruncated_fp32_point():
    s = F.speedups(POINTS, "1")
    assert s["full"] == 1.0 and s["half"] == pytest.approx(2.0 / 1.2) and "bad" not in s


@pytest.mark.parametrize("text, message", [("flops:2", "fraction"), ("", "commas"), ("flops:0.5,flops:0.5", "twice"),
                                           ("bogus:1", "unknown")])
def test_bad_budgets_are_refused(text, message):
    with pytest.raises(BadInputError, match=message):
        parse_budgets(text)


def test_the_untruncated_budget_always_comes_first():
    assert parse_budgets("energy:0.99,none") == ["none", "energy:0.99"]


def test_a_folder_that_is_not_a_sweeps_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="not a sweep's folder"):
        SweepFolder(tmp_path).check()
    assert SweepFolder(tmp_path / "new").check() == "new"
