"""``compactify convert``: a checkpoint in, its compact network and a report out."""

from __future__ import annotations

import sys
import warnings

import click

from compactify.arguments import (
    existing_file,
    parse_arch_kwargs,
    parse_input_shape,
    parse_size,
)
from compactify.converter.load.sniff import is_onnx
from compactify.converter.pipeline.options import ConvertOptions
from compactify.errors import BadInputError


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=str))
@click.option("--arch", help="Registered model name (see `compactify models`) or package.module:factory.")
@click.option("--arch-kwargs", help="JSON object of keyword arguments for the architecture factory.")
@click.option("--input-shape", help="N,C,H,W of the model input (default: from the checkpoint or registry).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=str),
              help="Output folder (written atomically); for an ONNX model, a name ending in .onnx writes the "
                   "compact model to that file, with NAME.report.json and NAME.report.md beside it.")
@click.option("--outputs", help="Keep only these model outputs (comma-separated tuple indices or dict keys).")
@click.option("--allow-approximate", is_flag=True, help="Also merge regions whose borders are not exact; report the error.")
@click.option("--dynamic-hw", is_flag=True,
              help="Merge only what is exact at every input height and width (default: exact at the traced size; "
                   "the compact module then refuses other sizes).")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder (or -o FILE.onnx and its reports).")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a pickled whole module (can run code).")
@click.option("--no-onnx", is_flag=True, help="Skip compact.onnx (and everything built from it).")
@click.option("--static", is_flag=True, help="Fix the ONNX batch size instead of keeping it dynamic.")
@click.option("--no-simplify", is_flag=True, help="Do not run onnxsim on compact.onnx.")
@click.option("--fp16", is_flag=True, help="Also write compact.fp16.onnx (fp32 inputs/outputs, casts inside).")
@click.option("--trt", is_flag=True, help="Also build compact.engine with TensorRT (needs TensorRT and CUDA).")
@click.option("--openvino", is_flag=True,
              help="Also write an OpenVINO IR, compact.xml and compact.bin, from compact.onnx (fp32 weights; run at "
                   "fp32 on the CPU plugin; needs pip install compactify[edge]).")
@click.option("--executorch", is_flag=True,
              help="Also write compact.pte: an ExecuTorch program with XNNPACK, lowered at the input shape "
                   "(needs a PyTorch source and pip install compactify[edge]).")
@click.option("--litert", is_flag=True,
              help="Also write compact.tflite: a LiteRT model converted by litert-torch at the input shape (needs a "
                   "PyTorch source and pip install compactify[edge]).")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest batch of the TensorRT optimization profile.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache reused across builds.")
@click.option("--rank", "rank_rule", metavar="RULE",
              help="Prune all-zero units and truncate ranks: energy:F, nuclear:F, threshold:T, rank:N, "
                   "flops:F (global FLOPs budget) or error:E (measured output error bound), e.g. energy:0.99.")
@click.option("--rank-multiple", default="1", show_default=True, metavar="N",
              help="Round truncated ranks up to a multiple of N (e.g. 8 for tensor cores).")
@click.option("--cost", default="flops", show_default=True, metavar="flops|latency",
              help="Factor a layer when it needs fewer FLOPs, or (latency) only when it also measures faster.")
@click.option("--int8", is_flag=True,
              help="Also write compact.int8.onnx: QDQ int8 (per-channel symmetric weights, calibrated activations) "
                   "with onnxruntime.quantization, measured on held-out inputs (agreement, accuracy, error, worst layers).")
@click.option("--calibration", "calibration", type=click.Path(dir_okay=False, path_type=str), metavar="FILE.npz",
              help="--int8 calibration inputs: an array x shaped like the model input (N,C,H,W) and optionally labels; "
                   "a fifth is held out to measure. Default for checkpoints trained on digits: digits.")
@click.option("--calibration-method", default="minmax", show_default=True, metavar="minmax|entropy|percentile",
              help="How --int8 turns the calibration activations into ranges.")
@click.option("--int8-keep", metavar="LAYER,...",
              help="Keep these layers in float in compact.int8.onnx (ONNX node names as report.json lists them, or "
                   "their weights' names).")
@click.option("--int8-min-agreement", type=float, metavar="A",
              help="Keep the most sensitive layers in float, fewest first, until the int8 model's top-1 agreement "
                   "with the fp32 compact model on the held-out inputs is at least A (e.g. 0.99); fail (exit 1, "
                   "nothing written) when even every layer in float misses it.")
@click.option("--int8-max-accuracy-drop", type=float, metavar="D",
              help="The same bar as accuracy: at most D percentage points lost on the held-out inputs (needs labels).")
@click.option("--int8-equalize", is_flag=True,
              help="Cross-layer equalization before quantizing: an exact rescaling of each Conv -> ReLU -> Conv pair "
                   "that evens out the channel ranges merging spread apart.")
@click.option("--int8-bias-correction", is_flag=True,
              help="Subtract from each quantized layer's bias the mean shift int8 rounding gives its outputs, "
                   "measured on the calibration inputs.")
@click.option("--data", "rank_data", type=click.Path(dir_okay=False, path_type=str), metavar="FILE.npz",
              help="--rank: held-out inputs x and their labels on which the accuracy before and after truncation is "
                   "measured (default for checkpoints trained on digits: the digits test split).")
@click.option("--max-accuracy-drop", type=float, metavar="D",
              help="--rank: fail (exit 1, nothing written) when truncation lowers the held-out accuracy by more than "
                   "D percentage points (without it, more than 1 point is a warning).")
@click.option("--max-memory", metavar="SIZE",
              help="Refuse, before any allocation, an input shape whose estimated activations exceed SIZE "
                   "(e.g. 8GB; default: the memory available).")
@click.option("--progress/--no-progress", default=None,
              help="A line per stage (load, capture, regions, plan, check, export) on stderr once the conversion has "
                   "taken a few seconds (default: when stderr is a terminal).")
def convert(checkpoint, arch, arch_kwargs, input_shape, out_dir, outputs, allow_approximate, dynamic_hw, force, trust_pickle,
            no_onnx, static, no_simplify, fp16, trt, openvino, executorch, litert, max_batch, timing_cache, rank_rule,
            rank_multiple, cost, int8, calibration, calibration_method, int8_keep, int8_min_agreement,
            int8_max_accuracy_drop, int8_equalize, int8_bias_correction, rank_data, max_accuracy_drop,
            max_memory, progress):
    """Contract CHECKPOINT into its compact network.

    Writes OUTDIR/compact.pt2, compact.onnx, report.json and report.md (plus
    compact.fp16.onnx with --fp16, compact.int8.onnx with --int8, compact.engine with --trt,
    built from the int8 model when --int8 is given, compact.xml + compact.bin with --openvino
    (and compact.int8.xml + .bin, the IR of the int8 model, with --openvino --int8),
    compact.pte with --executorch and compact.tflite with --litert), atomically: nothing
    appears until everything is complete. An existing OUTDIR is replaced (with --force)
    only if it is a previous compactify output holding nothing else and no input.
    The file's format is read from its content, whatever its suffix.

    CHECKPOINT may also be an ONNX model (from any exporter): then no --arch or source code is
    needed, and OUTDIR gets compact.onnx (+ fp16, TensorRT) and the report, checked against the
    source graph evaluated in float64. With -o NAME.onnx (onnxsim's `in.onnx out.onnx`) the compact
    model is that file, and the report is NAME.report.json and NAME.report.md beside it, written
    atomically, never over the source, an existing file only with --force; --fp16, --int8 and
    --trt need the folder form.
    """
    source_format = "onnx" if is_onnx(checkpoint) else "pytorch"  # by content; by its name when it is missing
    existing_file(checkpoint, "ONNX model" if source_format == "onnx" else "checkpoint")
    existing_file(calibration, "calibration file")
    existing_file(rank_data, "--data file")
    options = ConvertOptions(
        arch=arch,
        arch_kwargs=parse_arch_kwargs(arch_kwargs),
        input_shape=parse_input_shape(input_shape),
        allow_approximate=allow_approximate,
        dynamic_hw=dynamic_hw,
        force=force,
        trust_pickle=trust_pickle,
        outputs=outputs,
        onnx=not no_onnx,
        static=static,
        simplify=not no_simplify,
        fp16=fp16,
        trt=trt,
        openvino=openvino,
        executorch=executorch,
        litert=litert,
        max_batch=max_batch,
        timing_cache=timing_cache,
        rank=rank_rule,
        rank_multiple=_whole_number(rank_multiple, "--rank-multiple"),
        cost=cost,
        int8=int8,
        int8_calibration=calibration,
        int8_method=calibration_method,
        int8_keep=tuple(k for k in (int8_keep or "").split(",") if k.strip()),
        int8_min_agreement=int8_min_agreement,
        int8_equalize=int8_equalize,
        int8_bias_correction=int8_bias_correction,
        int8_max_accuracy_drop=int8_max_accuracy_drop,
        rank_data=rank_data,
        max_accuracy_drop=max_accuracy_drop,
        progress=sys.stderr.isatty() if progress is None else progress,
        max_memory=parse_size(max_memory) if max_memory is not None else None,
    )
    options.check(source_format)  # the flags, before torch is imported

    from compactify.converter.pipeline.convert import convert_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report's own warnings are printed below, once
        report = convert_checkpoint(checkpoint, out_dir, options)
    for message in report["warnings"]:
        click.echo(f"warning: {message}", err=True)
    _print_summary(report, out_dir)


def _whole_number(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"{option} must be a whole number >= 1, got {text!r}") from None


def _print_summary(report: dict, out_dir: str) -> None:
    from rich.console import Console

    from compactify.harness.conversion_summary import print_conversion_summary

    print_conversion_summary(Console(), report, out_dir)  # fitted to the terminal, for every source format
