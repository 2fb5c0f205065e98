"""Render results: JSON files, Markdown and rich tables, PNG plots.

Everything here is generic: a result is a list of rows (dicts) plus a column spec saying which
keys to show, under which header, formatted how. Files are written atomically so a crash never
leaves half a report.

JSON has no Infinity or NaN, so non-finite floats are written as the strings "inf", "-inf"
and "nan" (a min_rtol that no value can satisfy is ``inf``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from compactify.errors import BadInputError
from compactify.outputs import atomic_file

MISSING = "-"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: ``key`` in each row, its ``header``, and how to format the value.

    ``fmt`` is a format spec (``".3f"``, ``",d"``) or a callable returning the cell text.
    ``align`` is "left" or "right"; None means right for numbers and left otherwise, decided
    from the first row that has the key.
    """

    key: str
    header: str | None = None
    fmt: str | Callable[[Any], str] | None = None
    align: str | None = None

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.key


def _columns(columns: Sequence[Column | str]) -> list[Column]:
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def format_cell(value: Any, column: Column) -> str:
    """The text of one cell; None becomes "-" and non-finite floats "inf"/"-inf"/"nan"."""
    if value is None:
        return MISSING
    if callable(column.fmt):
        return str(column.fmt(value))
    if isinstance(value, float) and not math.isfinite(value):
        return _nonfinite(value)
    if column.fmt and not isinstance(value, (str, bool)):
        return format(value, column.fmt)
    return str(value)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _is_numpy_number(value)


def _is_numpy_number(value: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, np.number)


def _alignment(rows: Sequence[Mapping[str, Any]], column: Column) -> str:
    if column.align is not None:
        if column.align not in ("left", "right"):
            raise ValueError(f"column {column.key!r}: align must be 'left' or 'right'")
        return column.align
    for row in rows:
        if row.get(column.key) is not None:
            return "right" if _is_number(row[column.key]) else "left"
    return "left"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str]) -> str:
    """A GitHub-flavoured Markdown table, one line per row, ending with a newline."""
    cols = _columns(columns)
    if not cols:
        raise ValueError("a table needs at least one column")
    header = "| " + " | ".join(_md_escape(c.title) for c in cols) + " |"
    rule = "|" + "|".join("---:" if _alignment(rows, c) == "right" else ":---" for c in cols) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(format_cell(row.get(c.key), c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str], title: str | None = None):
    """The same table as a ``rich.table.Table`` for the terminal."""
    from rich.table import Table

    cols = _columns(columns)
    table = Table(title=title)
    for c in cols:
        table.add_column(c.title, justify=_alignment(rows, c))
    for row in rows:
        table.add_row(*(format_cell(row.get(c.key), c) for c in cols))
    return table


def _nonfinite(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return "inf" if x > 0 else "-inf"


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from dataclasses (their ``to_dict`` if any), numpy values, paths, tuples."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else _nonfinite(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return to_jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return to_jsonable(float(obj))
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, payload: Any, force: bool = True) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n"
    return write_text(path, text, force=force)


def write_text(path: str | os.PathLike, text: str, force: bool = True) -> Path:
    """Write a text file atomically."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _unique(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def latency_plot(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    model_key: str = "model",
    batch_key: str = "batch",
    title: str | None = None,
    force: bool = True,
) -> Path:
    """PNG of latency: one panel per batch size, one bar per model at its p50, and a whisker
    from p90 to p99 (the tail that the median hides). Rows need p50_ms, p90_ms, p99_ms."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise BadInputError("nothing to plot: no latency results")
    for row in rows:
        missing = [k for k in (model_key, batch_key, "p50_ms", "p90_ms", "p99_ms") if k not in row]
        if missing:
            raise BadInputError(f"latency row lacks {missing}: {dict(row)}")
    batches = _unique(r[batch_key] for r in rows)
    models = _unique(str(r[model_key]) for r in rows)
    colors = [f"C{i % 10}" for i in range(len(models))]

    width = max(4.0, 1.2 + 0.6 * len(models)) * len(batches)
    fig = Figure(figsize=(min(width, 24.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    axes[0].set_ylabel("latency (ms): bar p50, whisker p90 to p99")
    for ax, batch in zip(axes, batches):
        for i, model in enumerate(models):
            row = next((r for r in rows if r[batch_key] == batch and str(r[model_key]) == model), None)
            if row is None:
                continue
            ax.bar(i, row["p50_ms"], color=colors[i], label=model)
            ax.vlines(i, row["p90_ms"], row["p99_ms"], color="black", linewidth=1.2)
            ax.plot([i, i], [row["p90_ms"], row["p99_ms"]], linestyle="none", marker="_", markersize=10, color="black")
        ax.set_title(f"batch {batch}")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    with atomic_file(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)
