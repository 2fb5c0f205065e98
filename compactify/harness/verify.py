"""Prove that a conversion computes what its source computes, on every runtime it was exported to.

``verify_conversion(OUTDIR)`` rebuilds the source model from ``report.json`` and runs the same
inputs (seeded, or arrays from an ``.npz`` file) through the expanded model in float64 (the
reference), the expanded model in float32 (the baseline: how close float32 can get), and every
artifact of the folder: ``compact.pt2`` on PyTorch, ``compact.onnx`` (and ``compact.fp16.onnx``)
on ONNX Runtime, ``compact.engine`` on TensorRT where TensorRT is installed (else it is listed
as skipped, with the reason). ``verify_models(A, B)`` does the same for any two models.

Outputs of several batches are concatenated and compared once with ``harness.metrics``
(allclose rule, NaN/Inf fail). The verdict concerns the artifacts: the float32 baseline is
shown but does not fail a verification. Runners follow the Polygraphy split: runtimes only run,
this module compares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compactify.errors import BadInputError, CompactifyError, VerificationError
from compactify.measure.metrics import DEFAULT_ATOL, DEFAULT_RTOL, OutputComparison, compare_all
from compactify.harness.inputs import DEFAULT_SEED, Inputs, inputs_for
from compactify.harness.report import Column

# An fp16 model is judged with fp16-sized tolerances: half precision keeps ~3 decimal digits.
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2
# An int8 model is judged per output against the output's scale: |int8 - ref| <= INT8_TOL * max|ref|.
# Every int8 activation is rounded to 1/255 of its calibrated range, and the roundings of a whole
# network add up to a few percent of the output scale; it is judged on the inputs it was calibrated
# for (the held-out part of its calibration set), since outside that range int8 clips.
INT8_TOL = 0.1
INT8_BATCH = 64

# Without --wide the terminal shows what a person decides by: which model, how far off, pass or fail.
VERIFY_COLUMNS = [
    Column("candidate"),
    Column("output"),
    Column("max_abs", "max abs", ".3g"),
    Column("max_rel", "max rel", ".3g"),
    Column("mean_abs", "mean abs", ".3g", wide=True),
    Column("cosine", "cosine", ".9f", wide=True),
    Column("min_atol", "min atol", ".3g", wide=True),
    Column("min_rtol", "min rtol", ".3g", wide=True),
    Column("top1", "top-1 agree", ".4f"),
    Column("accuracy", "digits acc", ".4f"),
    Column("tolerance", "atol / rtol", wide=True),
    Column("result"),
]

REGION_COLUMNS = [
    Column("region"),
    Column("layers", "ops"),
    Column("exact", wide=True),
    Column("weights", wide=True),
    Column("deployed_max_abs", "max abs (fp32 layer)", ".3g"),
    Column("deployed_scale_rel", "rel to scale", ".3g"),
    Column("deployed_cosine", "cosine", ".9f", wide=True),
    Column("algebra_max_abs", "max abs (fp64 algebra)", ".3g", wide=True),
    Column("truncation", "--rank"),
    Column("result"),
]


@dataclasses.dataclass
class CandidateResult:
    """One model run against the reference. ``skipped`` holds the reason when it could not run."""

    label: str
    runtime: str
    path: str | None
    atol: float
    rtol: float
    comparisons: dict[str, OutputComparison] | None = None
    skipped: str | None = None
    baseline: bool = False  # shown for context, never fails the verification
    accuracy: float | None = None
    tolerance: str | None = None  # how atol/rtol were chosen, when not given directly (int8)
    inputs: str | None = None  # the candidate's own inputs, when not the verification's (int8)

    @property
    def passed(self) -> bool | None:
        if self.comparisons is None:
            return None
        return all(c.passed for c in self.comparisons.values())

    def rows(self) -> list[dict[str, Any]]:
        tol = self.tolerance or f"{self.atol:g} / {self.rtol:g}"
        if self.comparisons is None:
            return [{"candidate": self.label, "output": "-", "tolerance": tol, "result": f"skipped: {self.skipped}"}]
        rows = []
        for name, c in self.comparisons.items():
            verdict = "PASS" if c.passed else "FAIL"
            if not c.passed and c.nonfinite:
                verdict += f" ({c.nonfinite} NaN/Inf)"
            elif not c.passed:
                verdict += f" ({c.failing}/{c.size} outside)"
            if self.baseline:
                verdict = f"{verdict.split()[0].lower()} (baseline)"
            rows.append({
                "candidate": self.label, "output": name, "max_abs": c.max_abs, "max_rel": c.max_rel,
                "mean_abs": c.mean_abs, "cosine": c.cosine, "min_atol": c.min_atol, "min_rtol": c.min_rtol,
                "top1": c.top1, "accuracy": self.accuracy, "tolerance": tol, "result": verdict,
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "runtime": self.runtime, "path": self.path, "atol": self.atol, "rtol": self.rtol,
            "passed": self.passed, "skipped": self.skipped, "baseline": self.baseline, "accuracy": self.accuracy,
            "tolerance": self.tolerance, "inputs": self.inputs,
            "outputs": {k: c.to_dict() for k, c in (self.comparisons or {}).items()},
        }


@dataclasses.dataclass
class VerifyResult:
    reference: str
    candidates: list[CandidateResult]
    inputs: dict[str, Any]
    reference_accuracy: float | None = None
    regions: list | None = None  # list[RegionError] with --per-region
    warnings: list[str] = dataclasses.field(default_factory=list)
    truncation: dict[str, Any] | None = None  # what --rank did to the source (truncation_effect), never judged

    @property
    def judged(self) -> list[CandidateResult]:
        return [c for c in self.candidates if not c.baseline and c.comparisons is not None]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.judged)

    @property
    def failures(self) -> list[CandidateResult]:
        return [c for c in self.judged if not c.passed]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        if self.reference_accuracy is not None:
            rows.append({"candidate": self.reference, "output": "(reference)", "accuracy": self.reference_accuracy,
                         "result": "reference"})
        for c in self.candidates:
            rows.extend(c.rows())
        return rows

    def region_rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.regions or []]

    def failure_message(self) -> str:
        parts = []
        for c in self.failures:
            worst = max(c.comparisons.values(), key=lambda o: (o.nonfinite, o.failing, o.max_abs))
            what = f"{worst.nonfinite} NaN/Inf values" if worst.nonfinite else f"max abs error {worst.max_abs:.3g}"
            parts.append(f"{c.label} {worst.name}: {what} (atol {c.atol:g}, rtol {c.rtol:g})")
        floats = [c for c in self.failures if c.tolerance is None]
        hint = "; run with --per-region to find the region that introduced it" if self.regions is None and floats \
            else ""
        if len(floats) < len(self.failures):
            hint += ("; report.json lists the int8 layers adding the most error (int8.layers): convert with "
                     "--int8-keep LAYER,... to keep them in float")
        return f"verification failed for {len(parts)} of {len(self.judged)} model(s): " + "; ".join(parts) + hint

    def raise_if_failed(self) -> None:
        if not self.judged:  # "passed" with nothing compared would be a lie
            skipped = [f"{c.label}: {c.skipped}" for c in self.candidates if not c.baseline and c.skipped]
            raise BadInputError("nothing was verified: every artifact was skipped (" + "; ".join(skipped or ["none ran"])
                                + "); install what they need, or convert with the artifacts this machine can run")
        if not self.passed:
            raise VerificationError(self.failure_message())

    def to_dict(self) -> dict[str, Any]:
        from compactify import __version__

        return {
            "compactify_version": __version__,
            "passed": self.passed,
            "reference": self.reference,
            "reference_accuracy": self.reference_accuracy,
            "inputs": self.inputs,
            "candidates": [c.to_dict() for c in self.candidates],
            "regions": [r.to_dict() for r in self.regions] if self.regions is not None else None,
            "warnings": list(self.warnings),
            "truncation": self.truncation,
        }


# ---------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class _Model:
    """Something that runs a batch of float32 feeds (by position) and returns its outputs (by position)."""

    label: str
    runtime: str
    path: str | None
    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    input_specs: list | None = None  # TensorSpecs when known
    close: Callable[[], None] = lambda: None


def _torch_model(module, label: str, dtype: str, path: str | None = None) -> _Model:
    import torch
    from torch.utils import _pytree as pytree

    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.asarray(a)).to(tdtype) for a in arrays))
        return [t.detach().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]

    return _Model(label, "torch", path, run)


def _runner_model(runner, label: str, path: str | None) -> _Model:
    specs = runner.inputs
    names = [s.name for s in specs]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(names):
            raise BadInputError(f"{label} takes {len(names)} input(s) {names}, got {len(arrays)}")
        feeds = {}
        for spec, a in zip(specs, arrays):
            feeds[spec.name] = np.ascontiguousarray(a, dtype=np.dtype(spec.dtype)) if spec.dtype.startswith("float") else a
        out = runner.infer(feeds)
        return [np.asarray(v) for v in out.values()]

    return _Model(label, runner.name, path, run, specs, runner.close)


def _run_all(model: _Model, inputs: Inputs, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Outputs of every batch, concatenated along the batch axis, named by the reference's names."""
    per_batch = [model.run([feeds[n] for n in inputs.names]) for feeds in inputs.batches]
    if any(len(outs) != len(output_names) for outs in per_batch):
        got = len(per_batch[0])
        raise BadInputError(f"{model.label} returns {got} output(s), but the reference returns {len(output_names)} "
                            f"({', '.join(output_names)})")
    joined = {}
    for i, name in enumerate(output_names):
        parts = [outs[i] for outs in per_batch]
        joined[name] = np.concatenate(parts, axis=0) if parts[0].ndim else np.stack(parts)
    return joined


def _classifier_output(outputs: Mapping[str, np.ndarray]) -> str | None:
    for name, value in outputs.items():
        if value.ndim == 2 and value.shape[1] >= 2:
            return name
    return None


def _digits_accuracy(model: _Model, meta: Mapping[str, Any], input_shape: Sequence[int],
                     fixed_batch: int | None, output_index: int) -> float:
    """Top-1 accuracy on the digits test split the checkpoint was trained against."""
    from compactify.models.data import load_digits_data

    training = meta.get("training") or {}
    data = load_digits_data(input_shape, seed=int(training.get("data_seed", 0)),
                            test_fraction=float(training.get("test_fraction", 0.2)))
    x = data.x_test.numpy()
    y = data.y_test.numpy()
    size = fixed_batch or 256
    preds = []
    for i in range(0, len(x), size):
        chunk = x[i:i + size]
        n = len(chunk)
        if fixed_batch and n < fixed_batch:  # a fixed-batch model: pad the last chunk, keep n rows
            chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
        logits = model.run([chunk])[output_index]
        preds.append(np.argmax(logits[:n], axis=1))
    return float(np.mean(np.concatenate(preds) == y))


def _trained_on_digits(meta: Mapping[str, Any] | None) -> bool:
    training = (meta or {}).get("training") or {}
    return isinstance(training, Mapping) and str(training.get("dataset", "")).lower() == "digits"


def _fixed_batch(models: Sequence[_Model]) -> tuple[int, str] | None:
    for m in models:
        for spec in m.input_specs or []:
            if spec.shape and spec.shape[0] is not None:
                return int(spec.shape[0]), m.label
    return None


def _compare(candidate: _Model, inputs: Inputs, reference: dict[str, np.ndarray], atol: float, rtol: float,
             baseline: bool = False) -> CandidateResult:
    result = CandidateResult(candidate.label, candidate.runtime, candidate.path, atol, rtol, baseline=baseline)
    outputs = _run_all(candidate, inputs, list(reference))
    result.comparisons = compare_all(outputs, reference, atol, rtol)
    return result


def _compare_int8(candidate: _Model, report: dict, reference: _Model, shape: Sequence[int], data: Inputs | None,
                  fixed: tuple[int, str] | None, tol: float, notes: list[str]) -> CandidateResult:
    """An int8 model against the reference, each output within ``tol`` of its largest reference value, on
    ``data`` (the user's --inputs) or else on the held-out inputs the conversion measured it on."""
    from compactify.targets.calibration import held_out_inputs
    from compactify.measure.metrics import compare

    what = "the given inputs"
    rule = f"{tol:g} x max|ref| / 0"
    if data is None:
        held = (report.get("int8") or {}).get("held_out") or {}
        try:
            x, _ = held_out_inputs(held, shape)
        except BadInputError as exc:
            return CandidateResult(candidate.label, candidate.runtime, candidate.path, tol, 0.0, tolerance=rule,
                                   skipped=f"{exc}; pass --inputs")
        size = fixed[0] if fixed else INT8_BATCH
        stop = len(x) - len(x) % size if fixed else len(x)
        if stop == 0:
            return CandidateResult(candidate.label, candidate.runtime, candidate.path, tol, 0.0, tolerance=rule,
                                   skipped=f"its {len(x)} held-out inputs do not fill its fixed batch of {size}; "
                                           "pass --inputs")
        what = held.get("held_out_what") or "its held-out inputs"
        data = Inputs(list(report.get("input_names") or ["x"]),
                      [{(report.get("input_names") or ["x"])[0]: x[i:i + size]} for i in range(0, stop, size)],
                      {"source": what})
    ref_out = _run_all(reference, data, report["output_names"])
    outputs = _run_all(candidate, data, report["output_names"])
    comparisons, atols = {}, []
    for name, ref in ref_out.items():
        atols.append(tol * float(np.max(np.abs(ref))) if ref.size else 0.0)
        comparisons[name] = compare(outputs[name], ref, atols[-1], 0.0, name=name)
    result = CandidateResult(candidate.label, candidate.runtime, candidate.path, max(atols), 0.0, comparisons,
                             tolerance=f"{tol:g} x max|ref| = {max(atols):.3g} / 0", inputs=what)
    notes.append(f"{candidate.label} is int8: judged on {what}, each output within {tol:g} x its largest reference "
                 f"value (atol {max(atols):.3g}, rtol 0; --int8-tol), not with the float tolerances")
    return result


# ---------------------------------------------------------------------------------------
# A conversion folder


def load_report(outdir: str | Path) -> dict:
    outdir = Path(outdir)
    if not outdir.exists():
        raise BadInputError(f"{outdir} does not exist; give the output folder of `compactify convert`")
    if not outdir.is_dir():
        raise BadInputError(f"{outdir} is not a folder; give the output folder of `compactify convert`")
    path = outdir / "report.json"
    if not path.is_file():
        raise BadInputError(f"{outdir} has no report.json: is it the output folder of `compactify convert`?")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc}); convert again") from None
    for key in ("source", "input_shape", "output_names"):
        if key not in report:
            raise BadInputError(f"{path} lacks {key!r}; it was not written by `compactify convert` (convert again)")
    if not isinstance(report["source"], dict) or not report["source"].get("checkpoint"):
        raise BadInputError(f"{path} does not name its source checkpoint; convert again")
    return report


def rebuild_source(report: dict):
    """The source model (eval, float32) exactly as the conversion saw it, and its input shape."""
    from compactify.converter.frontends.fx.capture import select_outputs
    from compactify.converter.load.checkpoint import load_checkpoint
    from compactify.converter.contract import example_input
    from compactify.converter.load.ingest import build_source

    src = report["source"]
    path = Path(src["checkpoint"])
    if not path.exists():
        raise BadInputError(f"the source checkpoint {path} named in report.json no longer exists; "
                            "verification needs it as the reference")
    ckpt = load_checkpoint(path, trust_pickle=bool(src.get("trust_pickle")))
    if src.get("sha256") and ckpt.sha256 != src["sha256"]:
        raise BadInputError(f"the source checkpoint {path} changed since the conversion (sha256 differs); "
                            "convert it again before verifying")
    if ckpt.format in ("state_dict", "safetensors") and isinstance(src.get("meta"), dict) and src["meta"].get("arch"):
        ckpt.meta = dict(src["meta"])  # what the conversion used, --arch/--arch-kwargs included
    shape = tuple(int(d) for d in report["input_shape"])
    source = build_source(ckpt, None, None, shape)
    model = select_outputs(source.model, src.get("outputs"), example_input(shape))
    return model.eval(), shape, source.meta


def verify_conversion(
    outdir: str | Path,
    *,
    inputs: str | Path | None = None,
    batches: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    fp16_atol: float = FP16_ATOL,
    fp16_rtol: float = FP16_RTOL,
    device: str = "cpu",
    per_region: bool = False,
    accuracy: bool = True,
    int8_tol: float = INT8_TOL,
) -> VerifyResult:
    """Verify every artifact in a `compactify convert` folder against the float64 source."""
    from compactify.converter.contract import reference_float64
    from compactify.runtimes import open_runner
    from compactify.runtimes.devices import tensorrt_missing

    _check_tolerances(atol, rtol, fp16_atol, fp16_rtol, int8_tol)
    outdir = Path(outdir)
    report = load_report(outdir)
    if report["source"].get("format") == "onnx":
        from compactify.harness.verify_onnx import verify_onnx_conversion

        return verify_onnx_conversion(outdir, report, inputs=inputs, batches=batches, batch_size=batch_size, seed=seed,
                                      atol=atol, rtol=rtol, fp16_atol=fp16_atol, fp16_rtol=fp16_rtol, device=device,
                                      per_region=per_region)
    artifacts = report.get("artifacts") or {}
    if not artifacts:
        raise BadInputError(f"{outdir / 'report.json'} lists no artifacts (compact.pt2, compact.onnx): nothing to "
                            "verify; convert again")
    model, shape, meta = rebuild_source(report)
    warnings: list[str] = []
    ref_module = reference_float64(model)
    ref_dtype = "float64"
    if ref_module is None:
        ref_module, ref_dtype = model, "float32"
        warnings.append("the source model does not run in float64: the reference is its float32 run")
    reference = _torch_model(ref_module, f"expanded {ref_dtype} (reference)", ref_dtype, report["source"]["checkpoint"])
    baseline = _torch_model(model, "expanded float32", "float32", report["source"]["checkpoint"])
    source = reference
    truncated = report.get("truncation") is not None and "pt2" in artifacts
    if truncated:
        # --rank changed the network on purpose: the artifacts are judged against the truncated network
        # itself (compact.pt2's weights run in float64), which checks the export; what truncation did to
        # the source is measured apart (truncation_effect) and never fails the verification.
        runner = open_runner(outdir / artifacts["pt2"], runtime="torch", dtype="float64")
        reference = _runner_model(runner, f"truncated {artifacts['pt2']} float64 (reference)",
                                  str(outdir / artifacts["pt2"]))
        warnings.append(f"this conversion truncated ranks (--rank {report['truncation'].get('rule')}): the artifacts "
                        "are checked against the truncated network in float64 (the exactness of the export); the "
                        "truncation's own effect on the source is reported apart")

    fp16 = "onnx_fp16" in artifacts
    int8 = "onnx_int8" in artifacts  # convert builds the engine from the int8 model then
    plan = [  # (artifact key, runtime, tolerances; None: int8, judged by _compare_int8)
        ("pt2", "torch", (atol, rtol)),
        ("onnx", "ort", (atol, rtol)),
        ("onnx_fp16", "ort", (fp16_atol, fp16_rtol)),
        ("onnx_int8", "ort", None),
        ("engine", "trt", None if int8 else (fp16_atol, fp16_rtol) if fp16 else (atol, rtol)),
    ]
    plan += [(k, None, (atol, rtol)) for k in artifacts if k not in {p[0] for p in plan}]
    candidates: list[tuple[_Model | None, CandidateResult | None, tuple[float, float]]] = []
    with contextlib.ExitStack() as stack:
        for key, runtime, tol in plan:
            if key not in artifacts:
                continue
            path = outdir / artifacts[key]
            if not path.is_file():
                raise BadInputError(f"report.json lists {artifacts[key]} but {outdir} has no such file; convert again")
            label = f"{path.name} ({runtime or '?'})"
            if runtime is None:
                candidates.append((None, CandidateResult(path.name, "-", str(path), *tol,
                                                         skipped="unknown artifact kind"), tol))
                continue
            if runtime == "trt" and tensorrt_missing():
                candidates.append((None, CandidateResult(label, runtime, str(path), *(tol or (int8_tol, 0.0)),
                                                         skipped=tensorrt_missing()), tol))
                continue
            runner = open_runner(path, runtime=runtime, device="cuda" if runtime == "trt" else device)
            stack.callback(runner.close)
            candidates.append((_runner_model(runner, label, str(path)), None, tol))

        runnable = [m for m, _, _ in candidates if m is not None]
        names = list(report.get("input_names") or ["x"])
        if len(names) != 1:
            raise BadInputError(f"report.json names {len(names)} inputs; compactify models take one input")
        for m in runnable:
            if m.input_specs is not None and len(m.input_specs) != len(names):
                raise BadInputError(f"{m.label} takes {len(m.input_specs)} inputs, the source takes {len(names)}")
        fixed = _fixed_batch(runnable)
        data = inputs_for(names, [shape[1:]], inputs_file=inputs, batches=batches, batch_size=batch_size,
                       seed=seed, fixed_batch=fixed)
        ref_out = _run_all(reference, data, report["output_names"])
        # Against a truncated reference the source's own float32 run is no baseline: it is another network.
        results = [] if truncated else [_compare(baseline, data, ref_out, atol, rtol, baseline=True)]
        for m, skipped, tol in candidates:
            if m is None:
                results.append(skipped)
            elif tol is None:
                results.append(_compare_int8(m, report, reference, shape, data if inputs is not None else None, fixed,
                                             int8_tol, warnings))
            else:
                results.append(_compare(m, data, ref_out, *tol))

        ref_accuracy = None
        if accuracy and _trained_on_digits(meta):
            cls = _classifier_output(ref_out)
            if cls is None:
                warnings.append("the checkpoint was trained on digits but has no [N, classes] output: no accuracy")
            else:
                index = list(ref_out).index(cls)
                ref_accuracy = _digits_accuracy(reference, meta, shape, None, index)
                models = {baseline.label: baseline, **{m.label: m for m in runnable}}
                for r in results:
                    if r.label in models:
                        r.accuracy = _digits_accuracy(models[r.label], meta, shape, fixed[0] if fixed else None,
                                                      index)
        effect = truncation_effect(source, reference, data, report, meta, shape) if truncated else None
        if effect is not None:
            warnings.append(effect["note"])

    regions = None
    if per_region:
        from compactify.harness.region_errors import region_errors

        pt2 = outdir / artifacts["pt2"] if "pt2" in artifacts else None
        if len(data.names) != 1:
            raise BadInputError("--per-region needs a model with one input")
        regions, notes = region_errors(model, shape, [f[data.names[0]] for f in data.batches], compact_pt2=pt2,
                                       allow_approximate=bool(report.get("allow_approximate")), atol=atol, rtol=rtol)
        warnings.extend(notes)
        if report.get("truncation") is not None:
            from compactify.harness.region_errors import annotate_truncation, truncated_elsewhere

            others = truncated_elsewhere(regions, report["truncation"])
            regions = annotate_truncation(regions, report["truncation"])
            if others:
                warnings.append(f"--rank also changed single layers that are not merged regions: {', '.join(others)} "
                                "(see report.md)")
            warnings.append("this conversion truncated ranks or pruned units (--rank): the regions it changed are "
                            "listed first; their errors here are those of the exact merge, the truncation's own are "
                            "in report.md")
    result = VerifyResult(reference.label, results, data.description, ref_accuracy, regions, warnings)
    result.truncation = effect
    return result


def truncation_effect(source: _Model, truncated: _Model, data: Inputs, report: dict, meta: Mapping[str, Any],
                      shape: Sequence[int]) -> dict[str, Any]:
    """What --rank did to the network, both in float64 on the same inputs: its error against the source, the
    top-1 agreement, and for digits-trained checkpoints the accuracy before and after. Reported, not judged."""
    names = report["output_names"]
    src_out, trunc_out = _run_all(source, data, names), _run_all(truncated, data, names)
    comparisons = compare_all(trunc_out, src_out, 0.0, 0.0)
    worst = max(comparisons.values(), key=lambda c: c.scale_rel)
    effect: dict[str, Any] = {"rule": report["truncation"].get("rule"), "max_abs": worst.max_abs,
                              "max_rel": worst.scale_rel, "top1_agreement": worst.top1,
                              "accuracy_source": None, "accuracy_truncated": None}
    cls = _classifier_output(src_out)
    if _trained_on_digits(meta) and cls is not None:
        index = list(src_out).index(cls)
        effect["accuracy_source"] = _digits_accuracy(source, meta, shape, None, index)
        effect["accuracy_truncated"] = _digits_accuracy(truncated, meta, shape, None, index)
    text = f"truncation (--rank {effect['rule']}) against the source, both float64: max rel error {worst.scale_rel:.3g}"
    if worst.top1 is not None:
        text += f", top-1 agreement {100 * worst.top1:.1f}%"
    if effect["accuracy_source"] is not None:
        text += (f", digits accuracy {100 * effect['accuracy_source']:.2f}% -> "
                 f"{100 * effect['accuracy_truncated']:.2f}%")
    effect["note"] = text + " (what --rank changed on purpose; not an export error)"
    return effect


def _check_tolerances(*values: float) -> None:
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise BadInputError(f"tolerances must be finite and >= 0, got {v}")


# ---------------------------------------------------------------------------------------
# Any two models


def _is_checkpoint(path: Path) -> bool:
    from compactify.targets import target_for as kind_of

    return kind_of(path).name == "checkpoint"


def _open_model(path: str | Path, runtime: str | None, device: str, dtype: str, *, arch: str | None,
                arch_kwargs: dict | None, input_shape: tuple[int, ...] | None, trust_pickle: bool,
                stack: contextlib.ExitStack, warnings: list[str]) -> tuple[_Model, tuple[int, ...] | None, dict]:
    """Open a checkpoint, .pt2, .onnx or engine on its runtime; returns the model, its input shape and meta."""
    from compactify.runtimes import open_runner
    from compactify.targets import runtime_for as guess_runtime

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"model file {path} does not exist")
    if _is_checkpoint(path):
        if runtime not in (None, "torch"):
            raise BadInputError(f"{path.name} is a checkpoint and runs on --runtime torch, not {runtime}; "
                                "export it to ONNX first")
        from compactify.converter.load.checkpoint import load_checkpoint
        from compactify.converter.load.ingest import build_source

        source = build_source(load_checkpoint(path, trust_pickle=trust_pickle), arch, arch_kwargs, input_shape)
        module = source.model
        if dtype == "float64":
            from compactify.converter.contract import reference_float64

            double = reference_float64(module)
            if double is None:
                warnings.append(f"{path.name} does not run in float64: it runs in float32")
                dtype = "float32"
            else:
                module = double
        label = f"{path.name} (torch {dtype})"
        return _torch_model(module, label, dtype, str(path)), source.input_shape, dict(source.meta)
    chosen = runtime or guess_runtime(path)
    native = guess_runtime(path)
    if chosen != native:
        raise BadInputError(f"{path.name} runs on --runtime {native}, not --runtime {chosen}")
    if chosen == "ort" and dtype == "float64":  # an ONNX reference: the graph itself, evaluated in float64
        from compactify.harness.verify_onnx import onnx_float64_model

        model, shape = onnx_float64_model(path)
        return model, shape, {}
    opts: dict[str, Any] = {}
    if chosen == "torch":
        opts["dtype"] = dtype
    if chosen == "trt":
        device = "cuda"
    try:
        runner = open_runner(path, runtime=chosen, device=device, **opts)
    except CompactifyError:
        raise
    except Exception as exc:  # a .pt2 whose graph refuses float64: run it in float32, and say so
        if chosen != "torch" or dtype != "float64":
            raise
        warnings.append(f"{path.name} does not run in float64 ({type(exc).__name__}): it runs in float32")
        runner = open_runner(path, runtime=chosen, device=device, dtype="float32")
        dtype = "float32"
    stack.callback(runner.close)
    label = f"{path.name} ({chosen}{' ' + dtype if chosen == 'torch' else ''})"
    model = _runner_model(runner, label, str(path))
    specs = model.input_specs or []
    shape = None
    if len(specs) == 1 and specs[0].shape is not None and all(d is not None for d in specs[0].shape[1:]):
        shape = (specs[0].shape[0] or 1, *specs[0].shape[1:])
    return model, shape, {}


def verify_models(
    reference: str | Path,
    candidate: str | Path,
    *,
    runtime_a: str | None = None,
    runtime_b: str | None = None,
    device: str = "cpu",
    reference_dtype: str = "float64",
    inputs: str | Path | None = None,
    batches: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    trust_pickle: bool = False,
) -> VerifyResult:
    """Compare ``candidate`` against ``reference``: checkpoints, .pt2, .onnx or TensorRT engines.

    The reference runs in ``reference_dtype`` where it is a PyTorch model (checkpoint or .pt2);
    ``input_shape`` (N,C,H,W) is needed only when neither model declares its input dims.
    """
    _check_tolerances(atol, rtol)
    if reference_dtype not in ("float32", "float64"):
        raise BadInputError(f"--reference-dtype must be float32 or float64, got {reference_dtype!r}")
    shape_arg = tuple(int(d) for d in input_shape) if input_shape else None
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        ref, ref_shape, ref_meta = _open_model(reference, runtime_a, device, reference_dtype, arch=arch,
                                               arch_kwargs=arch_kwargs, input_shape=shape_arg,
                                               trust_pickle=trust_pickle, stack=stack, warnings=warnings)
        cand, cand_shape, _ = _open_model(candidate, runtime_b, device, "float32", arch=arch, arch_kwargs=arch_kwargs,
                                          input_shape=shape_arg, trust_pickle=trust_pickle, stack=stack,
                                          warnings=warnings)
        if ref.label == cand.label:
            cand.label = f"{cand.label} [candidate]"
        shape = shape_arg or ref_shape or cand_shape
        if shape is None:
            raise BadInputError("neither model declares its input dims; pass --input-shape N,C,H,W")
        for m, s in ((ref, ref_shape), (cand, cand_shape)):
            if s is not None and tuple(s[1:]) != tuple(shape[1:]):
                raise BadInputError(f"{m.label} takes input dims {tuple(s[1:])}, not {tuple(shape[1:])}")
        counts = {m.label: len(m.input_specs) for m in (ref, cand) if m.input_specs is not None}
        if any(c != 1 for c in counts.values()):
            raise BadInputError(f"verify compares single-input models; input counts: {counts}")
        fixed = _fixed_batch([ref, cand])
        data = inputs_for(["x"], [shape[1:]], inputs_file=inputs, batches=batches, batch_size=batch_size, seed=seed,
                       fixed_batch=fixed)
        per_batch = [ref.run([f["x"]]) for f in data.batches]
        out_names = [f"output{i}" for i in range(len(per_batch[0]))]
        ref_out = {n: np.concatenate([outs[i] for outs in per_batch], axis=0) for i, n in enumerate(out_names)}
        result = _compare(cand, data, ref_out, atol, rtol)
        ref_accuracy = None
        if _trained_on_digits(ref_meta):
            cls = _classifier_output(ref_out)
            if cls is not None:
                index = out_names.index(cls)
                fb = fixed[0] if fixed else None
                ref_accuracy = _digits_accuracy(ref, ref_meta, shape, fb, index)
                result.accuracy = _digits_accuracy(cand, ref_meta, shape, fb, index)
    return VerifyResult(ref.label, [result], data.description, ref_accuracy, None, warnings)
