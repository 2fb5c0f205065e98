"""Which merged region introduced an error: each merged layer against the region it replaced.

The source model is captured and cut into linear regions exactly as the converter does it
(``converter.capture`` / ``regions`` / ``plan``), and the captured graph runs once in float64
on the verification inputs, recording every region's entry and exit tensor. Each merged
region is then judged in isolation, fed the float64 value of its own entry, so an error
upstream cannot leak into a region downstream:

- ``deployed``: the merged layer with the weights found in ``compact.pt2`` (float32, the
  layer that ships), fed the entry rounded to float32, against the region's float64 exit;
- ``algebra``: the merged operator as composed in float64, against the same exit. A large
  ``algebra`` error means the merge itself is not exact (approximate padding); a large
  ``deployed`` error with a small ``algebra`` one means the shipped weights are off.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import fx, nn

from compactify.converter.pipeline.contraction import plan_contraction
from compactify.converter.engine import algebra as A
from compactify.converter.frontends.fx.float64 import run_graph
from compactify.measure.metrics import OutputComparison, compare


@dataclasses.dataclass
class RegionError:
    name: str
    layers: list[str]
    exact: bool
    weights: str  # where the deployed layer's weights came from
    deployed: OutputComparison
    algebra: OutputComparison
    truncation: str | None = None  # what --rank did to this region, from report.json
    energy_kept: float | None = None

    def row(self) -> dict:
        return {
            "region": self.name,
            "layers": len(self.layers),
            "exact": self.exact,
            "weights": self.weights,
            "deployed_max_abs": self.deployed.max_abs,
            "deployed_max_rel_error": self.deployed.max_rel_error,
            "deployed_cosine": self.deployed.cosine,
            "algebra_max_abs": self.algebra.max_abs,
            "algebra_max_rel_error": self.algebra.max_rel_error,
            "truncation": self.truncation,
            "result": "ok" if self.deployed.passed else "OVER TOLERANCE",
        }

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "exact": self.exact, "weights": self.weights,
                "truncation": self.truncation, "energy_kept": self.energy_kept,
                "deployed": self.deployed.to_dict(), "algebra": self.algebra.to_dict()}


def region_errors(
    model: nn.Module,
    input_shape: Sequence[int],
    inputs: Sequence[np.ndarray],
    *,
    compact_pt2: str | Path | None = None,
    allow_approximate: bool = False,
    atol: float,
    rtol: float,
) -> tuple[list[RegionError], list[str]]:
    """Per merged region errors, worst first (by error relative to the region's output scale).

    ``inputs`` are float32 batches of the model's single input. Returns the errors and notes
    (regions whose shipped weights could not be found, a float32 fallback reference, ...).
    """
    notes: list[str] = []
    planned = plan_contraction(model, tuple(int(d) for d in input_shape), allow_approximate)
    gm, plan = planned.captured.gm, planned.decisions
    # A merge with a layer before it folded in (engine.fold) reads a tensor the source graph never
    # computes (its entry without that layer), so it has no recorded input here.
    folded = [d.region.name for d in plan if d.kind == "dense" and d.lead is not None]
    if folded:
        notes.append(f"{', '.join(folded)}: merged with a layer before them folded in, checked with the whole network")
    merged = [d for d in plan if d.kind == "dense" and d.lead is None]
    if not merged:
        nothing = "no other region" if folded else "no region of this model"
        return [], notes + [f"{nothing} is merged: there is nothing to check region by region"]

    shipped = _shipped_state(compact_pt2, notes)
    wanted = {n.name for d in merged for n in (d.region.entry, d.region.exit)}
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    for x in inputs:
        values = _record(gm, torch.from_numpy(np.asarray(x, dtype=np.float32)), wanted, notes)
        for name in wanted:
            captured[name].append(values[name])

    results = []
    for d in merged:
        region = d.region
        entry = torch.cat(captured[region.entry.name])
        exit_ = torch.cat(captured[region.exit.name]).numpy()
        layer, source = _deployed_layer(d, shipped)
        with torch.no_grad():
            got = layer(entry.to(torch.float32)).numpy()
            exact_value = _apply64(d.composition.value, entry.to(torch.float64)).numpy()
        results.append(RegionError(
            name=region.name,
            layers=region.layers,
            exact=d.exact,
            weights=source,
            deployed=compare(got, exit_, atol, rtol, name=region.name, classifier=False),
            algebra=compare(exact_value, exit_, atol, rtol, name=region.name, classifier=False),
        ))
    missing = [r.name for r in results if r.weights != "compact.pt2"]
    if shipped is not None and missing:
        notes.append(f"weights of {', '.join(missing)} not found in compact.pt2: checked the merge recomputed from the source")
    results.sort(key=lambda r: (-_key(r.deployed.max_rel_error), -_key(r.algebra.max_rel_error)))
    return results, notes


def _key(value: float) -> float:
    return float("inf") if value != value else value  # NaN sorts first, as the worst


def _shipped_state(path: str | Path | None, notes: list[str]) -> dict[str, torch.Tensor] | None:
    if path is None:
        notes.append("no compact.pt2: checked the merges recomputed from the source")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.load(str(path))
    state = dict(program.state_dict)
    state.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    return state


def _record(gm: fx.GraphModule, x: torch.Tensor, wanted: set[str], notes: list[str]) -> dict[str, torch.Tensor]:
    """The wanted nodes' values from one float64 run of the captured graph (its constants cast as
    they are read: no float64 copy of the model), or float32 where it does not run in float64."""
    try:
        return run_graph(gm, x, torch.float64, wanted)[1]
    except Exception:  # constants that refuse float64: fall back, and say so
        note = "the captured graph does not run in float64: regions were compared with a float32 reference"
        if note not in notes:
            notes.append(note)
        return run_graph(gm, x, torch.float32, wanted)[1]


def _deployed_layer(decision, shipped: dict[str, torch.Tensor] | None) -> tuple[nn.Module, str]:
    """The merged layer with the weights compact.pt2 ships, else as recomputed from the source."""
    layer = copy.deepcopy(decision.module).float().eval()
    if shipped is None:
        return layer, "recomputed"
    prefix = f"merged_{decision.region.exit.name}."
    found = {k[len(prefix):]: v for k, v in shipped.items() if k.startswith(prefix)}
    expected = layer.state_dict()
    if set(found) != set(expected) or any(found[k].shape != v.shape for k, v in expected.items()):
        return layer, "recomputed"
    layer.load_state_dict({k: v.to(torch.float32) for k, v in found.items()})
    return layer, "compact.pt2"


def _apply64(op, x: torch.Tensor) -> torch.Tensor:
    return A.apply(op, x)


def annotate_truncation(regions: list[RegionError], truncation: dict | None) -> list[RegionError]:
    """Mark the regions that ``convert --rank`` truncated or pruned (from report.json), and put
    them first, least energy kept first: their error is by design and is where to look."""
    rows = {row.get("region"): row for row in (truncation or {}).get("layers", []) if isinstance(row, dict)}
    for r in regions:
        row = rows.get(r.name)
        if row is None:
            continue
        parts = []
        if row.get("rank_after") is not None and row.get("rank_after") != row.get("full_rank"):
            parts.append(f"rank {row['rank_after']}/{row.get('full_rank')} ({row.get('form')}), "
                         f"{100 * float(row.get('energy_kept', 1.0)):.1f}% energy")
            r.energy_kept = float(row.get("energy_kept", 1.0))
        if row.get("units_removed"):
            parts.append(f"{row['units_removed']} units pruned")
        r.truncation = "; ".join(parts) or None
    changed = sorted((r for r in regions if r.truncation), key=lambda r: (r.energy_kept if r.energy_kept is not None
                                                                          else 1.0))
    return changed + [r for r in regions if not r.truncation]


def truncated_elsewhere(regions: list[RegionError], truncation: dict | None) -> list[str]:
    """Layers --rank changed that are not merged regions (single layers kept as they were)."""
    names = {r.name for r in regions}
    out = []
    for row in (truncation or {}).get("layers", []):
        if not isinstance(row, dict) or row.get("region") in names:
            continue
        if row.get("rank_after") != row.get("full_rank") or row.get("units_removed"):
            out.append(str(row.get("region")))
    return out
