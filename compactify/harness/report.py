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
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from rich import box
from rich.table import Table
from rich.text import Text

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
    wide: bool = False  # shown only with --wide: the terminal table keeps the columns a person decides by
    # At most this many lines of a text cell in the terminal, cut at a word with "…" (markdown keeps it whole).
    max_lines: int | None = None

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


def short_count(n: float) -> str:
    """A count in three significant digits and a unit, for a terminal: 950, 1.54k, 23.1k, 737k, 2.36M."""
    if abs(n) < 1000:
        return f"{n:.0f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        text = f"{n / scale:.3g}"
        if abs(float(text)) < 1000 or unit == "T":
            return text + unit
    raise AssertionError("unreachable")


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _is_numpy_number(value)


def _is_numpy_number(value: Any) -> bool:
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


_GAP = 2  # spaces between two columns
ELLIPSIS = "…"
# Where a text cell may break: after a space, and after a "/" (a path, an ONNX node name), never inside
# a word, so a name is never cut in the middle ("compact.int8.onnx" stays whole).
_PIECE = re.compile(r"[^\s/]*/+\s*|[^\s/]+\s*|\s+")


def text_pieces(text: str) -> list[str]:
    """The unbreakable pieces of one line of text, each with the space or "/" that ends it."""
    return _PIECE.findall(text)


def wrap_text(text: str, width: int, max_lines: int | None = None) -> list[str]:
    """``text`` in lines of at most ``width``, broken only between pieces (``text_pieces``; a piece
    longer than ``width`` gets a line of its own); with ``max_lines``, the lines beyond are dropped
    and the last kept one ends with an ellipsis."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in text_pieces(paragraph):
            if line and len((line + piece).rstrip()) > width:
                lines.append(line.rstrip())
                line = piece.lstrip()
            else:
                line += piece
        lines.append(line.rstrip())
    if max_lines is None or len(lines) <= max_lines:
        return lines
    kept, last = lines[:max_lines - 1], ""
    for piece in text_pieces(lines[max_lines - 1]):
        if len((last + piece).rstrip()) + len(ELLIPSIS) > width:
            break
        last += piece
    return kept + [last.rstrip() + ELLIPSIS]


def _layout(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str], wide: bool):
    """The columns shown, their cells, and per column (justify, narrowest, natural width)."""
    cols = [c for c in _columns(columns) if wide or not c.wide]
    cells = [[format_cell(row.get(c.key), c) for c in cols] for row in rows]
    specs = []
    for i, c in enumerate(cols):
        justify = _alignment(rows, c)
        texts = [r[i] for r in cells]
        longest = max((len(t) for t in texts), default=1)
        header_word = max((len(w) for w in c.title.split()), default=1)
        if justify == "right":  # never narrower than its widest number; only a header can wrap
            specs.append(("right", max(longest, header_word), max(longest, len(c.title))))
        else:  # wraps between its pieces, never narrower than its longest one: no word is cut
            piece = max((len(p.rstrip()) for t in texts for line in t.split("\n") for p in text_pieces(line)),
                        default=1)
            specs.append(("left", max(piece, header_word), max(longest, len(c.title))))
    return cols, cells, specs


def fit_widths(specs, width: int) -> list[int] | None:
    """Column widths that fit ``width``: natural widths, shrunk down to their narrowest, the widest
    first; number columns first, whose headers alone make them wider than their numbers (a header
    on two lines reads better than a name on two); None when even the narrowest do not fit."""
    widths = [natural for _, _, natural in specs]
    lows = [low for _, low, _ in specs]
    room = width - _GAP * max(len(specs) - 1, 0)
    if sum(lows) > room:
        return None
    for justified in ("right", None):
        while sum(widths) > room:
            slack = [j for j in range(len(widths)) if widths[j] > lows[j] and justified in (None, specs[j][0])]
            if not slack:
                break
            i = max(slack, key=lambda j: (widths[j], j))  # on a tie the later column: names come first
            widths[i] -= 1
    return widths


def rich_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str], title: str | None = None,
               wide: bool = True, width: int | None = None):
    """The same table as a ``rich.table.Table`` for the terminal.

    With ``width``, the columns are sized to fit it (``fit_widths``): text columns wrap at their
    words and long headers wrap, numbers are never broken. Without ``wide``, columns marked
    ``wide`` are left out."""
    cols, cells, specs = _layout(rows, columns, wide)
    widths = fit_widths(specs, width) if width is not None else None
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  title_justify="left")
    for i, (c, (justify, _, _)) in enumerate(zip(cols, specs)):
        fixed = widths[i] if widths else None
        table.add_column(c.title, justify=justify, width=fixed, overflow="fold")
    for r in cells:
        if widths:  # wrapped here, between pieces: rich would cut a word longer than the column
            r = [cell if justify == "right" else "\n".join(wrap_text(cell, widths[i], c.max_lines))
                 for i, (cell, c, (justify, _, _)) in enumerate(zip(r, cols, specs))]
        table.add_row(*r)
    return table


def table_min_width(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str], wide: bool = False) -> int:
    """The narrowest the table can be printed without breaking a number or a short word."""
    _, _, specs = _layout(rows, columns, wide)
    return sum(low for _, low, _ in specs) + _GAP * max(len(specs) - 1, 0)


def print_table(console, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str],
                title: str | None = None, wide: bool = False) -> None:
    """Print a table that fits ``console``'s width, never wider: text columns and headers wrap; when
    even that cannot fit, each row is printed as a block of ``header: value`` lines."""
    if table_min_width(rows, columns, wide) <= console.width:
        console.print(rich_table(rows, columns, title=title, wide=wide, width=console.width))
        return

    cols = [c for c in _columns(columns) if wide or not c.wide]
    # Few rows: one column per row instead (the headers down the side) fits where the row did not.
    first, *rest = cols
    flipped_cols = [Column("field", first.title)] + [Column(f"r{i}", format_cell(r.get(first.key), first), align="right")
                                            for i, r in enumerate(rows)]
    flipped = [{"field": c.title, **{f"r{i}": format_cell(r.get(c.key), c) for i, r in enumerate(rows)}} for c in rest]
    if rows and table_min_width(flipped, flipped_cols, True) <= console.width:
        console.print(rich_table(flipped, flipped_cols, title=title, width=console.width))
        return
    if title:
        console.print(Text(title, style="italic"))
    for row in rows:
        first, *rest = cols
        console.print(Text(f"{first.title}: {format_cell(row.get(first.key), first)}", style="bold"), overflow="fold")
        for c in rest:
            console.print(Text(f"  {c.title}: {format_cell(row.get(c.key), c)}"), overflow="fold")


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
    if not rows:
        raise BadInputError("nothing to plot: no latency results")
    for row in rows:
        missing = [k for k in (model_key, batch_key, "p50_ms", "p90_ms", "p99_ms") if k not in row]
        if missing:
            raise BadInputError(f"latency row lacks {missing}: {dict(row)}")
    batches = _unique(r[batch_key] for r in rows)
    models = _unique(str(r[model_key]) for r in rows)
    colors = [f"C{i % 10}" for i in range(len(models))]

    # Here, not at the top: every report and table comes through this module, and matplotlib adds
    # 0.25 s and 30 MB to a conversion that plots nothing.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
