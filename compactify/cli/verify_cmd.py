"""``compactify verify``: the same inputs through the float64 reference and every artifact."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from compactify.arguments import (
    CONVERT_FOLDER_HINT,
    existing_file,
    existing_path,
    parse_arch_kwargs,
    parse_input_shape,
)
from compactify.cli.api_defaults import ApiDefault, resolve
from compactify.cli.kinds_help import KindsHelpCommand
from compactify.errors import BadInputError
from compactify.outputs import check_output_file

if TYPE_CHECKING:
    from compactify.harness.verify import VerifyResult


@click.command("verify", cls=KindsHelpCommand)
@click.argument("outdir", required=False, type=click.Path(path_type=Path))
@click.option("--reference", "reference", type=click.Path(path_type=Path), default=None,
              help="Instead of OUTDIR: the reference model (checkpoint, .pt2, .onnx or engine).")
@click.option("--candidate", "candidate", type=click.Path(path_type=Path), default=None,
              help="With --reference: the model to check against it.")
@click.option("--runtime-a", default=None, metavar="torch|ort|trt|openvino|executorch|litert",
              help="Runtime of --reference (default: from its suffix).")
@click.option("--runtime-b", default=None, metavar="torch|ort|trt|openvino|executorch|litert",
              help="Runtime of --candidate (default: from its suffix).")
@click.option("--reference-dtype", default="float64", show_default=True, type=click.Choice(["float64", "float32"]),
              help="Precision of a PyTorch --reference.")
@click.option("--inputs", "inputs", type=click.Path(path_type=Path), default=None,
              help="An .npz with one array per input, keyed by input name: (N,...) is one batch, (B,N,...) B batches.")
@click.option("--batches", type=click.IntRange(min=1), default=None,
              help="Number of seeded batches (default 2 of 8 inputs, or 16 inputs at a model's fixed batch); with "
                   "--inputs, at most this many.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Rows per seeded batch (default 8, or the model's fixed batch).")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the generated inputs.")
@click.option("--atol", type=float, cls=ApiDefault, api="compactify.measure.metrics:DEFAULT_ATOL", show_default="1e-05",
              help="Absolute tolerance (allclose rule).")
@click.option("--rtol", type=float, cls=ApiDefault, api="compactify.measure.metrics:DEFAULT_RTOL", show_default="0.0001",
              help="Relative tolerance (allclose rule).")
@click.option("--fp16-atol", type=float, cls=ApiDefault, api="compactify.harness.verify:FP16_ATOL", show_default="0.01",
              help="Absolute tolerance for fp16 artifacts.")
@click.option("--fp16-rtol", type=float, cls=ApiDefault, api="compactify.harness.verify:FP16_RTOL", show_default="0.01",
              help="Relative tolerance for fp16 artifacts.")
@click.option("--int8-tol", type=float, cls=ApiDefault, api="compactify.harness.verify:INT8_TOL", show_default="0.1",
              help="Tolerance of an int8 artifact, as a fraction of each output's largest reference value (it is "
                   "judged on the held-out inputs of its calibration set unless --inputs is given).")
@click.option("--bf16", is_flag=True,
              help="Also run every artifact whose runtime can compute in bf16 (OpenVINO) at bf16: a row of its own, "
                   "judged with the bf16 tolerance (atol/rtol 5e-2); the others run at fp32.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Device of the PyTorch and ONNX Runtime candidates (TensorRT always runs on cuda, OpenVINO on cpu).")
@click.option("--per-region", is_flag=True, help="Also check each merged region on its own, worst first.")
@click.option("--input-shape", default=None, metavar="N,C,H,W", help="With --reference: input shape when no model declares it.")
@click.option("--arch", default=None, help="With --reference: architecture of a bare state_dict checkpoint.")
@click.option("--arch-kwargs", default=None, help="With --reference: JSON keyword arguments for --arch.")
@click.option("--trust-pickle", is_flag=True, help="With --reference: allow checkpoints holding pickled objects.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
              help="Write the full results as JSON to a file, or to stdout with '-' (then no table is printed).")
@click.option("--wide", is_flag=True, help="Show every column (mean abs, cosine, min atol/rtol, tolerances), "
                                           "however wide the table gets; rows wrap to fit the terminal.")
def verify(outdir, reference, candidate, runtime_a, runtime_b, reference_dtype, inputs, batches, batch_size, seed,
           atol, rtol, fp16_atol, fp16_rtol, int8_tol, bf16, device, per_region, input_shape, arch, arch_kwargs, trust_pickle,
           json_path, wide) -> None:
    """Check that the compact models in OUTDIR (from `compactify convert`) compute what the source computes.

    Runs the same inputs through the source model in float64 (the reference), the source in
    float32 (shown as the baseline), compact.pt2, compact.onnx, the TensorRT engine and the
    OpenVINO IR (at fp32; --bf16 adds a bf16 run), and compact.int8.onnx on the held-out
    inputs of its calibration set within --int8-tol, and
    prints per output: the max abs error and the max rel error (max|y - ref| / max|ref|, as
    convert and report.json give it); --wide adds the max elementwise relative error, the mean
    abs error, cosine similarity and the smallest atol/rtol that would pass. Exit 1 when an
    artifact fails the tolerance or outputs NaN/Inf.

    With --reference A --candidate B, compares any two models instead.

    {kinds}
    """
    warnings.simplefilter("ignore", FutureWarning)  # torch.export.load's deprecation chatter, not the user's concern

    pair = reference is not None or candidate is not None
    if pair and outdir is not None:
        raise BadInputError("give either OUTDIR or --reference/--candidate, not both")
    if pair and (reference is None or candidate is None):
        raise BadInputError("--reference and --candidate go together: give both")
    if not pair and outdir is None:
        raise BadInputError("give the output folder of `compactify convert`, or --reference A --candidate B")
    pair_only = {"--runtime-a": runtime_a, "--runtime-b": runtime_b, "--input-shape": input_shape, "--arch": arch,
                 "--arch-kwargs": arch_kwargs}
    if not pair:
        used = [k for k, v in pair_only.items() if v is not None] + (["--trust-pickle"] if trust_pickle else [])
        if used:
            raise BadInputError(f"{', '.join(used)} apply to --reference/--candidate; OUTDIR knows its models")
    elif per_region:
        raise BadInputError("--per-region needs a conversion folder (OUTDIR): it reads the regions from report.json")
    elif bf16:
        raise BadInputError("--bf16 adds a bf16 run of a conversion folder's artifacts (OUTDIR); --candidate runs at "
                            "fp32")

    shape = parse_input_shape(input_shape)
    kwargs = parse_arch_kwargs(arch_kwargs) or None
    if pair:
        existing_path(reference, "model file")
        existing_path(candidate, "model file")
    else:
        existing_path(outdir, "folder", CONVERT_FOLDER_HINT)
    existing_file(inputs, "inputs file")
    to_stdout = json_path is not None and str(json_path) == "-"
    if json_path is not None and not to_stdout:
        check_output_file(json_path, inputs=[reference, candidate, inputs,
                                             *(outdir.glob("*") if outdir is not None and outdir.is_dir() else [])],
                          what="--json file")

    from compactify.harness.report import to_jsonable, write_json
    from compactify.harness.verify import verify_conversion, verify_models

    tol = resolve(click.get_current_context(), atol=atol, rtol=rtol, fp16_atol=fp16_atol, fp16_rtol=fp16_rtol,
                  int8_tol=int8_tol)
    if pair:
        result = verify_models(
            reference, candidate, runtime_a=runtime_a, runtime_b=runtime_b, device=device,
            reference_dtype=reference_dtype, inputs=inputs, batches=batches, batch_size=batch_size, seed=seed,
            atol=tol["atol"], rtol=tol["rtol"], input_shape=shape, arch=arch, arch_kwargs=kwargs,
            trust_pickle=trust_pickle,
        )
    else:
        result = verify_conversion(outdir, inputs=inputs, batches=batches, batch_size=batch_size, seed=seed,
                                   device=device, per_region=per_region, precisions=("bf16",) if bf16 else (),
                                   **tol)
    if to_stdout:
        click.echo(json.dumps(to_jsonable(result.to_dict()), indent=2, allow_nan=False))
    else:
        print_result(result, wide=wide)
    if json_path and not to_stdout:
        write_json(json_path, result.to_dict())
        click.echo(f"wrote {json_path}")
    result.raise_if_failed()
    click.echo(f"verification passed: {len(result.judged)} model(s) within tolerance", err=to_stdout)


def print_result(result: VerifyResult, wide: bool = False) -> None:
    """The comparison table (and the per-region table), fitted to the terminal (``wide``: every column)."""
    from rich.console import Console

    from compactify.harness.report import print_table
    from compactify.harness.verify import REGION_COLUMNS, VERIFY_COLUMNS

    d = result.inputs
    what = d.get("source", "")
    if "seed" in d:
        what += f", seed {d['seed']}, {d['batches']} batch(es) of {d['batch_size']}"
    else:
        what += f", {d['batches']} batch(es)"
    rows = result.rows()
    optional = {"top1", "accuracy"}  # classifier-only columns: hidden when no row has them
    columns = [c for c in VERIFY_COLUMNS if c.key not in optional or any(r.get(c.key) is not None for r in rows)]
    console = Console()
    print_table(console, rows, columns, title=f"reference: {result.reference}; inputs: {what}", wide=wide)
    if result.regions is not None:
        region_rows = result.region_rows()
        region_columns = [c for c in REGION_COLUMNS if c.key != "truncation" or any(r["truncation"] for r in region_rows)]
        print_table(console, region_rows, region_columns, wide=wide,
                    title="merged regions, each fed its float64 input, "
                          + ("truncated first, then " if any(r["truncation"] for r in region_rows) else "")
                          + "worst first")
    for w in result.warnings:
        click.echo(f"note: {w}", err=True)
