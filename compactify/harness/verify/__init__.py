"""Prove that a conversion computes what its source computes, on every runtime it was exported to.

``verify_conversion(OUTDIR)`` (``conversion``) judges every artifact of a `compactify convert` folder
against the source in float64; ``verify_models(A, B)`` (``pair``) compares any two models. The
modules, one job each: ``results`` (what was found, and its tables), ``folder`` (report.json and the
source rebuilt), ``references`` (the float64 reference of a PyTorch or an ONNX source), ``candidates``
(the artifacts, opened through the target registry), ``runnable`` (running any of them on the same
inputs), ``judging`` (tolerances and int8), ``accuracy`` (digits accuracy), ``truncation`` (what --rank
did, reported apart).
"""

from compactify.harness.verify.conversion import verify_conversion
from compactify.harness.verify.folder import load_report, rebuild_source
from compactify.harness.verify.pair import verify_models
from compactify.harness.verify.results import (
           REGION_COLUMNS,
           VERIFY_COLUMNS,
           CandidateResult,
           VerifyResult,
)
from compactify.harness.verify.tolerances import FP16_ATOL, FP16_RTOL, INT8_TOL

__all__ = ["FP16_ATOL", "FP16_RTOL", "INT8_TOL", "REGION_COLUMNS", "VERIFY_COLUMNS", "CandidateResult",
           "VerifyResult", "load_report", "rebuild_source", "verify_conversion", "verify_models"]
