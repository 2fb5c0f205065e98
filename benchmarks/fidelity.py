"""How close a contracted model stays to the exact function, compared with the expanded model itself.

For each registry model and each expansion that applies to it (and RepVGG's own training-time
branches), the expanded model run in float64 is the reference. Next to each other:

- the expanded model's own float32 error (what running the training-time model costs),
- the contracted model's float32 error (contraction folds in float64 and rounds once),

and their ratio, contracted / expanded (target: <= 1, the contracted model at least as close).
Both max-abs and mean-abs errors, over seeded N(0, 1) batches. Weights are random with
non-trivial BatchNorm statistics. ImageNet-layout models run at 3x64x64 (--quick: 3x32x32).

    python benchmarks/fidelity.py            # every registry model and expansion
    python benchmarks/fidelity.py --quick    # < 2 minutes: SmallNet-3/7 (all expansions), ResNet-18, RepVGG
Results: benchmarks/results/fidelity.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import machine, machine_line, print_table, randomize_batchnorm, write_results

BATCHES = 3
BATCH_SIZE = 4
SEED = 4321
QUICK_MODELS = ("smallnet3", "smallnet7", "resnet18", "repvgg")
# Expansions of the ImageNet nets in --quick: one each, the most common.
QUICK_MODES = {"resnet18": ("cl",), "repvgg": (None,)}


def configurations(models: Sequence[str] | None = None, quick: bool = False) -> list[tuple[str, str | None, dict]]:
    from compactify.models import applicable_modes, list_models

    size = 32 if quick else 64
    out = []
    for base in models or list_models():
        kw = {} if base.startswith("smallnet") else {"input_size": size}
        modes: Sequence[str | None] = applicable_modes(base, **kw)
        if base == "repvgg":
            modes = [None, *modes]  # its branches already over-parameterize it
        if quick and base in QUICK_MODES:
            modes = QUICK_MODES[base]
        out += [(base, m, kw) for m in modes]
    return out


def measure(base: str, mode: str | None, kwargs: dict, *, batches: int = BATCHES, batch_size: int = BATCH_SIZE,
            seed: int = 0) -> dict[str, Any]:
    import torch

    from compactify.converter.pipeline.contraction import contract

    from compactify.converter.frontends.fx.check import reference_float64
    from compactify.measure.metrics import compare
    from compactify.models import create_model, model_entry

    torch.manual_seed(seed)
    name = base + (f"-{mode}" if mode else "")
    expanded = create_model(name, **kwargs).eval()
    randomize_batchnorm(expanded, seed)
    shape = model_entry(base).input_shape(**kwargs)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = contract(expanded, shape)
    contract_s = time.perf_counter() - t
    reference = reference_float64(expanded)
    xs = [torch.randn((batch_size, *shape[1:]), generator=torch.Generator().manual_seed(SEED + b)) for b in range(batches)]
    with torch.no_grad():
        ref = torch.cat([reference(x.double()) for x in xs]).numpy()
        exp32 = torch.cat([expanded(x) for x in xs]).numpy()
        con32 = torch.cat([result.compact(x) for x in xs]).numpy()
    e = compare(exp32, ref, name=name)
    c = compare(con32, ref, name=name)
    return {
        "model": name + (f" @{kwargs['input_size']}" if "input_size" in kwargs else ""),
        "params": result.params_before, "params_after": result.params_after,
        "merged": sum(d.kind == "dense" for d in result.decisions), "contract_s": contract_s,
        "expanded_max_abs": e.max_abs, "contracted_max_abs": c.max_abs,
        "max_ratio": c.max_abs / e.max_abs if e.max_abs > 0 else float("inf"),
        "expanded_mean_abs": e.mean_abs, "contracted_mean_abs": c.mean_abs,
        "mean_ratio": c.mean_abs / e.mean_abs if e.mean_abs > 0 else float("inf"),
        "expanded_max_rel_error": e.max_rel_error, "contracted_max_rel_error": c.max_rel_error,
        "at_least_as_close": c.max_abs <= e.max_abs,
    }


def run(configs, *, log=print, **kwargs) -> list[dict[str, Any]]:
    rows = []
    for base, mode, kw in configs:
        row = measure(base, mode, kw, **kwargs)
        log(f"{row['model']}: contracted/expanded max-abs error {row['max_ratio']:.3f} ({row['contract_s']:.1f} s)")
        rows.append(row)
    return rows


def _columns():
    from compactify.harness.report import Column

    return [
        Column("model"), Column("params", "params", ",d"), Column("params_after", "params after", ",d"),
        Column("expanded_max_abs", "expanded fp32 max abs", ".3g"),
        Column("contracted_max_abs", "contracted fp32 max abs", ".3g"),
        Column("max_ratio", "ratio (max)", ".3f"),
        Column("expanded_mean_abs", "expanded mean abs", ".3g"),
        Column("contracted_mean_abs", "contracted mean abs", ".3g"),
        Column("mean_ratio", "ratio (mean)", ".3f"),
        Column("contracted_max_rel_error", "contracted max rel error", ".3g"),
        Column("at_least_as_close", "contracted <= expanded"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmallNet-3/7 with every expansion, ResNet-18-CL, RepVGG")
    parser.add_argument("--models", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else None)
    configs = configurations(models, quick=args.quick)
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    rows = run(configs)
    wall = time.perf_counter() - t
    print_table(rows, _columns(), "float32 error against the float64 expanded model; ratio = contracted / expanded")
    ratios = [r["max_ratio"] for r in rows]
    worse = [r["model"] for r in rows if not r["at_least_as_close"]]
    summary = (f"median ratio (max-abs) {statistics.median(ratios):.3f}, worst {max(ratios):.3f}; "
               f"contracted at least as close in {len(rows) - len(worse)} of {len(rows)}"
               + (f"; not in: {', '.join(worse)}" if worse else ""))
    print(summary)
    print(f"wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "batches": BATCHES, "batch_size": BATCH_SIZE, "seed": SEED,
                "threads": args.threads}
    md = "\n".join(["## Fidelity of contraction", "", f"Machine: {machine_line(info)}", "",
                    f"Settings: {settings}.", "", markdown_table(rows, _columns()), "", summary, ""])
    written = write_results("fidelity", {"machine": info, "settings": settings, "rows": rows, "summary": summary,
                                         "wall_s": wall}, md, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
