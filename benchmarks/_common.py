"""What every benchmark script shares: where results go, the machine and its load, table output."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """Machine information plus the load average: these machines are shared, the numbers say how much."""
    from compactify.harness.machine import machine_info

    info = machine_info()
    info["loadavg_1_5_15"] = list(os.getloadavg())
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return info


def machine_line(info: dict[str, Any]) -> str:
    from compactify.harness.machine import machine_summary

    load = ", ".join(f"{v:.1f}" for v in info["loadavg_1_5_15"])
    return f"{machine_summary(info)}; load average {load} (1/5/15 min) on {os.cpu_count()} cores; {info['date']}"


def print_table(rows: Sequence[dict], columns, title: str) -> None:
    from rich.console import Console
    from rich.measure import Measurement

    from compactify.harness.report import rich_table

    table = rich_table(rows, columns, title=title)
    console = Console()
    natural = Measurement.get(console, console.options.update_width(1000), table).maximum
    (Console(width=natural) if natural > console.width else console).print(table)


def write_results(name: str, payload: dict, markdown: str, out_dir: Path | None = None) -> list[Path]:
    from compactify.harness.report import write_json, write_text

    out = Path(out_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    return [write_json(out / f"{name}.json", payload), write_text(out / f"{name}.md", markdown)]


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, as a trained net would have."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
