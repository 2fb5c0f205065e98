"""``compactify sweep``: the accuracy-latency frontier of rank budgets and precisions, on Ray.

grid (jobs and points), evaluation (held-out data, top-1 scores), conversion_job (one conversion,
in a worker), latency_job (all points of a target timed together), ray_backend (local or cluster
Ray), layout (the resumable OUT folder), frontier (Pareto and the recommendation), tables, plot
and html_report (sweep.md, frontier.png, report.html), run (the whole sweep).
"""

from compactify.harness.sweep.run import SweepOptions, run_sweep

__all__ = ["SweepOptions", "run_sweep"]
