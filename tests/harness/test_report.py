import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from compactify.errors import BadInputError
from compactify.measure.metrics import compare
from compactify.harness.report import (
    Column,
    format_cell,
    latency_plot,
    markdown_table,
    print_table,
    rich_table,
    short_count,
    to_jsonable,
    wrap_text,
    write_json,
    write_text,
)


ROWS = [
    {"model": "expanded", "batch": 1, "p50_ms": 1.23456, "ratio": 1.0, "note": None},
    {"model": "a|b", "batch": 32, "p50_ms": 10.5, "ratio": math.inf, "note": "x"},
]


def test_markdown_table_text():
    cols = [Column("model"), Column("batch", "Batch"), Column("p50_ms", "p50 (ms)", ".2f"), Column("ratio", fmt=".2f"), "note"]
    assert markdown_table(ROWS, cols) == (
        "| model | Batch | p50 (ms) | ratio | note |\n"
        "|:---|---:|---:|---:|:---|\n"
        "| expanded | 1 | 1.23 | 1.00 | - |\n"
        "| a\\|b | 32 | 10.50 | inf | x |\n"
    )


def test_markdown_alignment_and_callable_format():
    cols = [Column("model", align="right"), Column("p50_ms", fmt=lambda v: f"{v * 1000:.0f} us", align="left")]
    text = markdown_table(ROWS[:1], cols)
    assert text.splitlines()[1] == "|---:|:---|"
    assert text.splitlines()[2] == "| expanded | 1235 us |"
    assert markdown_table([], ["a"]) == "| a |\n|:---|\n"
    with pytest.raises(ValueError):
        markdown_table(ROWS, [])


def test_format_cell():
    assert format_cell(None, Column("x", fmt=".2f")) == "-"
    assert format_cell(float("nan"), Column("x", fmt=".2f")) == "nan"
    assert format_cell(-math.inf, Column("x")) == "-inf"
    assert format_cell(True, Column("x", fmt=".2f")) == "True"
    assert format_cell(np.float32(0.5), Column("x", fmt=".1%")) == "50.0%"
    assert format_cell(1234567, Column("x", fmt=",d")) == "1,234,567"


def test_rich_table_renders():
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(rich_table(ROWS, [Column("model"), Column("p50_ms", "p50", ".2f")], title="latency"))
    text = console.export_text()
    assert "latency" in text and "expanded" in text and "10.50" in text and "a|b" in text


def test_wrap_text_breaks_between_words_and_after_slashes_never_inside_a_name():
    assert wrap_text("compact.int8.onnx (ort)", 16) == ["compact.int8.onnx", "(ort)"]  # longer than 16, yet whole
    assert wrap_text("/stages/stages.1/stages.1.3/Add_1", 18) == ["/stages/stages.1/", "stages.1.3/Add_1"]
    assert wrap_text("one two\nthree", 20) == ["one two", "three"]
    long = "merged exactly; factored: energy:0.9 keeps rank 14 of 16 (91.0% of the energy)"
    assert wrap_text(long, 22, max_lines=2) == ["merged exactly;", "factored: energy:0.9…"]
    assert wrap_text(long, 22, max_lines=9) == wrap_text(long, 22)


def test_short_count_keeps_three_significant_digits():
    assert [short_count(n) for n in (0, 950, 1536, 23136, 737280, 999999, 2949120, 4_231_976_000)] == \
        ["0", "950", "1.54k", "23.1k", "737k", "1M", "2.95M", "4.23G"]


def test_an_80_column_table_keeps_names_whole_and_wraps_number_headers_first():
    from rich.console import Console

    rows = [{"candidate": "compact.int8.onnx (ort)", "output": "output0", "max_abs": 0.0123, "max_rel_error": 0.00456,
             "top1": 0.99, "result": "pass (baseline)", "reason": "word " * 40}]
    columns = [Column("candidate"), Column("output"), Column("max_abs", "max abs", ".3g"),
               Column("max_rel_error", "max rel error", ".3g"), Column("top1", "top-1 agree", ".4f"),
               Column("result"), Column("reason", max_lines=2)]
    console = Console(width=80, record=True)
    print_table(console, rows, columns)
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    assert any("compact.int8.onnx" in line for line in lines)  # never "compact.int8.onn" / "x (ort)"
    assert any("max rel" in line and "error" not in line for line in lines)  # the number's header wrapped instead
    reason_lines = [line for line in lines if "word" in line]
    assert len(reason_lines) == 2 and reason_lines[-1].rstrip().endswith("…")


@dataclasses.dataclass
class Plain:
    x: float
    path: Path


def test_to_jsonable():
    data = {
        "a": np.float32(1.5),
        "b": np.arange(3),
        "c": (1, math.inf),
        "d": Plain(-math.inf, Path("/tmp/x")),
        "e": np.bool_(True),
        "f": float("nan"),
        3: {"g"},
    }
    assert to_jsonable(data) == {
        "a": 1.5, "b": [0, 1, 2], "c": [1, "inf"], "d": {"x": "-inf", "path": "/tmp/x"},
        "e": True, "f": "nan", "3": ["g"],
    }
    # dataclasses with their own to_dict use it
    assert to_jsonable(compare(np.ones((2, 2)), np.ones((2, 2))))["shape"] == [2, 2]
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_write_json_atomic(tmp_path):
    target = tmp_path / "sub" / "r.json"
    write_json(target, {"min_rtol": math.inf, "v": np.int64(3)})
    assert json.loads(target.read_text()) == {"min_rtol": "inf", "v": 3}
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text())["v"] == 3  # the failed write left the old file alone
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]  # no temporary left over
    with pytest.raises(BadInputError):
        write_json(target, {}, force=False)
    write_text(tmp_path / "t.md", "# hi\n")
    assert (tmp_path / "t.md").read_text() == "# hi\n"


def test_latency_plot_png(tmp_path):
    rows = [
        {"model": m, "batch": b, "p50_ms": p, "p90_ms": p * 1.1, "p99_ms": p * 1.3}
        for b in (1, 8) for m, p in (("expanded", 2.0 * b), ("compact", 1.0 * b))
    ]
    rows.pop()  # a missing (model, batch) cell is left empty, not an error
    out = latency_plot(rows, tmp_path / "lat.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["lat.png"]
    with pytest.raises(BadInputError):
        latency_plot([], tmp_path / "empty.png")
    with pytest.raises(BadInputError, match="p99_ms"):
        latency_plot([{"model": "a", "batch": 1, "p50_ms": 1, "p90_ms": 1}], tmp_path / "bad.png")
