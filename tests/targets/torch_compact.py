"""A CompactModel made from PyTorch modules, as the converter hands one to the targets: the compact
module (exported to a program and to ONNX here) and the source, run in float64 as the reference."""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from compactify.targets import OnnxGraph
from compactify.tensors import flatten_outputs


class TorchCompact:
    def __init__(self, compact: nn.Module, source: nn.Module, input_shape: tuple[int, ...],
                 source_meta: Mapping[str, Any] | None = None, dynamic_batch: bool = True):
        self.compact = compact.eval()
        self.source = copy.deepcopy(source).eval().double()
        self.input_shape = tuple(input_shape)
        self.source_meta = dict(source_meta or {})
        self.dynamic_batch = dynamic_batch
        self.example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(1))
        self.input_names = ["x"]
        self.output_names = [f"output{i}" for i in range(len(flatten_outputs(self.compact(self.example))))]
        self.metadata = {"compactify.version": "test", "compactify.source_arch": "tiny"}
        self.check_feeds = [{"x": self.example.numpy()}]
        self.regions: list[dict] = []
        self._onnx: OnnxGraph | None = None

    def program(self):
        batch = {0: torch.export.Dim.AUTO} if self.dynamic_batch else {}
        return torch.export.export(self.compact, (self.example,), dynamic_shapes=(batch,))

    def onnx(self) -> OnnxGraph:
        if self._onnx is None:
            buffer = io.BytesIO()
            axes = {name: {0: "batch"} for name in self.input_names + self.output_names} if self.dynamic_batch else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.compact, (self.example,), buffer, input_names=self.input_names,
                                  output_names=self.output_names, dynamic_axes=axes, opset_version=17, dynamo=False)
            model = onnx.load_from_string(buffer.getvalue())
            self._onnx = OnnxGraph(model, {"exporter": "torchscript", "opset": 17,
                                           "dynamic_batch": self.dynamic_batch})
        return self._onnx

    def reference(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.source(torch.from_numpy(np.asarray(feeds["x"])).double())
        return [t.numpy() for t in flatten_outputs(out)]
