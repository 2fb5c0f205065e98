"""What a conversion costs, as a multiple of one torch.export of the same model, from 0.6M to 557M parameters.

For each model of the curve (SmallNet-7 CL, MobileNetV2-CL at 224, ResNet-18-CL at rates 2, 4 and 7:
0.56M to 557M parameters, a 2.2 GB checkpoint), three kinds of fresh process run in the same
session, interleaved (export, convert, convert --no-onnx; then again), and each is timed from the
parent as a whole process (interpreter start, imports, loading included):

- **export**: load the checkpoint, build the model, one ``torch.export`` (dynamic batch), exit;
- **convert**: ``compactify convert CKPT -o OUT`` (compact.pt2 and compact.onnx, onnxsim, checks);
- **convert --no-onnx**: the same without compact.onnx.

The ratios convert / export are what the conversion adds to the one capture it cannot avoid;
medians of ``--repeats`` (3). The export process is what a user writes: build the model, load the
state_dict into it, export. Memory is each process's peak resident set (``ru_maxrss``, interpreter
and torch included) as a multiple of the export process's; each child also reports that peak above
its resident memory right after ``import torch``, against the checkpoint's size, and the
conversions report.json's ``stages`` (their share of the time); a separate child measures what
importing onnx, onnxruntime and onnxsim adds on its own.

    python benchmarks/conversion_cost.py           # the curve, 0.56M to 557M parameters: about 20 minutes
    python benchmarks/conversion_cost.py --all     # every registry model and expansion at its input size
    python benchmarks/conversion_cost.py --quick   # MobileNetV2-CL at 224 and SmallNet-7 CK+FC: a few minutes
Results: benchmarks/results/conversion_cost.{json,md}. Run on a quiet machine: times taken while
other work runs measure the other work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from _common import machine, machine_line, print_table, write_results  # puts the repository on sys.path

# (arch, expansion, arch kwargs, rate), each at its registry input size.
CURVE = [("smallnet7", "cl", {}, 4), ("mobilenetv2", "cl", {}, 4), ("resnet18", "cl", {}, 2),
         ("resnet18", "cl", {}, 4), ("resnet18", "cl", {}, 7)]
MODELS = [
    ("smallnet3", "cl+fc", {}, 4), ("smallnet7", "cl", {}, 4), ("smallnet7", "ck", {}, 4), ("smallnet7", "ck+fc", {}, 4),
    ("mobilenetv1", "cl", {}, 4), ("mobilenetv2", "cl", {}, 4), ("repvgg", None, {}, 4), ("resnet18", "cl", {}, 4),
    ("shufflenetv2", "cl", {}, 4), ("widevgg", "cl", {}, 4),
]
QUICK_MODELS = [("smallnet7", "ck+fc", {}, 4), ("mobilenetv2", "cl", {}, 4)]
KINDS = ("export", "convert", "convert_no_onnx")
STAGES = ("load", "capture", "regions", "plan", "check", "rewrite", "export")


def _name(arch: str, mode: str | None, rate: int = 4) -> str:
    return arch + (f"-{mode}" if mode else "") + (f"-r{rate}" if mode and rate != 4 else "")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- children


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process, right after ``import torch``: one export or one conversion."""
    import warnings

    base = _rss_mb()
    warnings.simplefilter("ignore")
    if spec["kind"] == "libraries":  # what the ONNX libraries alone add to the baseline
        import importlib

        for name in ("onnx", "onnxruntime", "onnxsim"):
            importlib.import_module(name)

        return {"rss_before_mb": base, "libraries_mb": _rss_mb() - base}
    if spec["kind"] == "export":
        import torch

        from compactify.converter.load.checkpoint import load_checkpoint
        from compactify.models import build_model

        ckpt = load_checkpoint(spec["checkpoint"])
        model = build_model(ckpt.meta)
        model.load_state_dict(ckpt.state_dict)
        model.eval()
        shape = list(ckpt.meta["input_shape"])
        x = torch.randn(max(2, shape[0]), *shape[1:])
        torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
        out: dict[str, Any] = {}
    else:
        from compactify.cli import main

        args = ["convert", spec["checkpoint"], "-o", spec["out"], "--force", "--no-progress"]
        if spec["kind"] == "convert_no_onnx":
            args.append("--no-onnx")
        try:
            main.main(args, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
        report = json.loads((Path(spec["out"]) / "report.json").read_text())
        out = {"stages": report.get("stages", {}), "params_after": report["params_after"],
               "merged": sum(r["decision"] == "dense" for r in report["regions"]),
               "exporter": (report.get("onnx") or {}).get("exporter"), "max_rel_error": report["max_rel_error"]}
    return {**out, "rss_before_mb": base, "peak_mb": _peak_mb(), "extra_mb": max(0.0, _peak_mb() - base)}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh process for ``spec``; its wall time as the parent sees it."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{spec['kind']} of {spec['checkpoint']} failed in the child: {tail}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


# --------------------------------------------------------------------------- measuring


def make_checkpoint(arch: str, mode: str | None, kwargs: dict, folder: Path, rate: int = 4) -> tuple[Path, int]:
    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import build_model, default_input_shape

    meta = {"arch": arch, "arch_kwargs": dict(kwargs), "expand": mode, "rate": rate}
    meta["input_shape"] = list(default_input_shape(meta))
    model = build_model(meta)
    path = save_checkpoint(folder / "model.safetensors", model.state_dict(), meta)
    params = sum(p.numel() for p in model.parameters())
    del model
    return Path(path), params


def measure(arch: str, mode: str | None, kwargs: dict, folder: Path, repeats: int, kinds=KINDS, log=print,
            rate: int = 4) -> dict:
    ckpt, params = make_checkpoint(arch, mode, kwargs, folder, rate)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(repeats):  # interleaved, so that a slow spell of the machine hits every kind alike
        for kind in kinds:
            runs[kind].append(run_child({"kind": kind, "checkpoint": str(ckpt), "out": str(folder / f"out-{kind}")}))
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    ckpt_mb = ckpt.stat().st_size / 2**20
    row: dict[str, Any] = {"model": _name(arch, mode, rate), "params": params, "checkpoint_mb": ckpt_mb,
                           "export_s": med.get("export")}
    peak = {k: statistics.median(r["peak_mb"] for r in v) for k, v in runs.items()}
    row["export_peak_mb"] = peak.get("export")
    for kind in kinds:
        if kind == "export":
            continue
        key = "onnx" if kind == "convert" else "no_onnx"
        row[f"{key}_s"] = med[kind]
        row[f"{key}_ratio"] = med[kind] / med["export"] if med.get("export") else None
        row[f"{key}_extra_mb"] = statistics.median(r["extra_mb"] for r in runs[kind])
        row[f"{key}_memory_x"] = row[f"{key}_extra_mb"] / ckpt_mb
        row[f"{key}_peak_x"] = peak[kind] / peak["export"] if peak.get("export") else None
        stages = {s: statistics.median(r["stages"].get(s, 0.0) for r in runs[kind]) for s in STAGES}
        total = sum(stages.values()) or 1.0
        row[f"{key}_stages"] = {s: v / total for s, v in stages.items()}
        row["params_after"] = runs[kind][0]["params_after"]
        row["merged"] = runs[kind][0]["merged"]
        if kind == "convert":
            row["exporter"] = runs[kind][0]["exporter"]
    if "export" in runs:
        row["export_extra_mb"] = statistics.median(r["extra_mb"] for r in runs["export"])
        row["export_memory_x"] = row["export_extra_mb"] / ckpt_mb
    row["runs"] = runs
    log(f"{row['model']}: " + ", ".join(f"{k.replace('_', ' ')} {med[k]:.1f} s, {peak[k]:.0f} MB" for k in kinds))
    return row


def _columns():
    from compactify.harness.report import Column

    return [Column("model"), Column("params", "params", ",d"), Column("checkpoint_mb", "ckpt MB", ".0f"),
            Column("export_s", "export s", ".1f"), Column("onnx_s", "convert s", ".1f"),
            Column("onnx_ratio", "convert / export", ".2f"), Column("no_onnx_s", "--no-onnx s", ".1f"),
            Column("no_onnx_ratio", "--no-onnx / export", ".2f"), Column("export_peak_mb", "export peak MB", ".0f"),
            Column("onnx_peak_x", "convert peak / export", ".2f"),
            Column("no_onnx_peak_x", "--no-onnx peak / export", ".2f"), Column("shares", "stages (convert)")]


def _shares(stages: dict[str, float] | None) -> str:
    if not stages:
        return ""
    return " ".join(f"{s} {100 * v:.0f}%" for s, v in stages.items() if v >= 0.005)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2-CL (224x224) and SmallNet-7 CK+FC only")
    parser.add_argument("--all", action="store_true", help="every registry model and expansion instead of the curve")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind per model (median; default 3)")
    parser.add_argument("--models", help="comma-separated model names (e.g. smallnet7-cl,mobilenetv2-cl)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    models = QUICK_MODELS if args.quick else MODELS if args.all else CURVE
    if args.models:
        wanted = {m.strip() for m in args.models.split(",")}
        models = [m for m in MODELS + CURVE if _name(m[0], m[1], m[3]) in wanted]
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="compactify-cost-") as tmp:
        libraries = run_child({"kind": "libraries", "checkpoint": "-", "out": "-"})
        for i, (arch, mode, kwargs, rate) in enumerate(models):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            rows.append(measure(arch, mode, kwargs, folder, args.repeats, rate=rate))
            shutil.rmtree(folder)  # a 2 GB checkpoint and its outputs
    wall = time.perf_counter() - t
    for r in rows:
        r["shares"] = _shares(r.get("onnx_stages"))
    title = (f"one conversion as a multiple of one torch.export (fresh processes, medians of {args.repeats}); memory = "
             "each process's peak RSS over the export process's")
    print_table(rows, _columns(), title)
    info_after = machine()
    print(f"importing onnx + onnxruntime + onnxsim adds {libraries['libraries_mb']:.0f} MB of that baseline's kind; "
          f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "all": args.all, "repeats": args.repeats}
    md = "\n".join([
        "## Conversion cost", "", f"Machine: {machine_line(info)}", "", f"Settings: {settings}.", "",
        markdown_table(rows, _columns()), "",
        f"Importing onnx, onnxruntime and onnxsim alone adds {libraries['libraries_mb']:.0f} MB to the baseline.",
    ])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, "libraries": libraries,
               "models": rows, "wall_s": wall}
    written = write_results("conversion_cost", payload, md, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:  # torch first, so that the baseline is the interpreter and torch
        __import__("torch")
    raise SystemExit(main())
