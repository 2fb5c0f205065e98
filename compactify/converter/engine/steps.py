"""The affine steps a front-end turns a graph's ops into: what the engine reasons about.

A step is one op of the source graph that is affine in its data inputs: a conv-like
operator (``AffineConv``), a scalar scale and shift, a sum or a channel concatenation of
several tensors, or an identity. Nodes are opaque handles of the front-end's graph (a
``torch.fx.Node``, an ONNX tensor name); the engine only compares and hashes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

from compactify.converter.engine import algebra as A


@dataclass
class Scalar:
    """``y = a * x + b`` with Python scalars: fits any layout."""

    a: float = 1.0
    b: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.a == 1.0 and self.b == 0.0


@dataclass
class Step:
    node: Hashable
    kind: str
    data: tuple[Hashable, ...]
    # None for a sum or a concat; a function that builds it for a layer with weights, so that a
    # graph's float64 weights are made region by region, when composed (``operator``).
    op: A.AffineConv | Scalar | Callable[[], A.AffineConv] | None = None
    family: tuple[int, int] | None = None  # (spatial dims, channel axis); None: any layout
    coeffs: tuple[float, ...] = (1.0, 1.0)  # a sum computes sum(c_i * x_i)
    params: frozenset[str] = field(default_factory=frozenset)
    # Nodes that belong to this step and go with it when it is merged away: the slice views
    # and copy_ writes of DBB's BN-and-pad, the stack of a stacked sum.
    absorbs: tuple[Hashable, ...] = ()
    # Why the operator holds only at the traced input size (a crop measured from both ends
    # of an axis, say); None when it holds at every size.
    size_specific: str | None = None

    def operator(self) -> A.AffineConv | Scalar | None:
        """The step's operator, built anew on each call where the front-end gave a builder."""
        return self.op() if callable(self.op) else self.op

    @property
    def merges(self) -> bool:
        """Whether the step combines several tensors (a sum or a channel concatenation)."""
        return self.kind in ("sum", "concat")


@dataclass(frozen=True)
class Layout:
    """A node that only moves data (transpose, permute, a reshape, a contiguous copy): not a
    step, but a per-channel affine before it is the same affine after it on the axis the
    channels went to, and so can be folded past it (Next-ViT's ``merge_pre_bn``).

    ``axes[i]`` is the output axis that holds input axis ``i`` whole and in order, or None where
    the op splits it or merges it with a neighbour."""

    data: Hashable
    axes: tuple[int | None, ...]
