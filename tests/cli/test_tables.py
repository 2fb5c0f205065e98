"""Tables fit the terminal they are printed in (80 and 100 columns here): text wraps, numbers stay
whole, nothing is widened past the terminal; --wide shows every column, --json - is for machines."""

from __future__ import annotations

import json

import pytest

from compactify.harness.bench import BENCH_COLUMNS
from compactify.harness.verify import VERIFY_COLUMNS

from clihelp import run, tiny_checkpoint
import user_models


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    ckpt = tiny_checkpoint(root / "net.safetensors")
    out = root / "out"
    r = run("convert", ckpt, "-o", out)
    assert r.exit_code == 0, r.output
    return ckpt, out


def _fits(text: str, width: int) -> None:
    lines = text.splitlines()
    assert lines, text
    too_long = [line for line in lines if len(line.rstrip()) > width]
    assert not too_long, "\n".join(too_long)
    assert "…" not in text  # no cell cut short with an ellipsis


BENCH = ["--iters", "3", "--warmup", "1", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("wide", [False, True])
def test_verify_and_bench_tables_fit_the_terminal(converted, width, wide):
    ckpt, out = converted
    env = {"COLUMNS": str(width)}
    extra = ["--wide"] if wide else []
    v = run("verify", out, "--batches", "1", *extra, env=env)
    assert v.exit_code == 0, v.output
    _fits(v.stdout, width)
    b = run("bench", ckpt, out / "compact.pt2", out / "compact.onnx", "--batch", "1,2", *BENCH, *extra, env=env)
    assert b.exit_code == 0, b.output
    _fits(b.stdout, width)
    for table, columns in ((v.stdout, VERIFY_COLUMNS), (b.stdout, BENCH_COLUMNS)):
        flat = " ".join(table.split())
        for c in columns:
            if c.key in ("top1", "accuracy"):  # classifier columns: shown only when a row has them
                continue
            words_there = all(w in flat for w in c.title.split())
            assert words_there == (wide or not c.wide), (c, table)
    for number in ("compact.pt2", "compact.onnx", "net.safetensors"):
        assert number in b.stdout or number.split(".")[0] in b.stdout


@pytest.mark.parametrize("width", [80, 100])
def test_convert_and_models_fit_the_terminal(converted, tmp_path, width):
    ckpt, _ = converted
    env = {"COLUMNS": str(width)}
    c = run("convert", ckpt, "-o", tmp_path / "o", "--no-onnx", env=env)
    assert c.exit_code == 0, c.output
    _fits(c.stdout, width)
    assert "merged exactly" in " ".join(c.stdout.split())
    m = run("models", env=env)
    assert m.exit_code == 0, m.output
    _fits(m.stdout, width)
    assert "11,689,512" in m.stdout  # resnet18's parameter count, whole


def _table_header(text: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == ["region"])


def _long_named_onnx(path):
    """user_models.expanded exported to ONNX at 64x64 (FLOPs in the billions), its nodes renamed the
    way deep nets' exports name them: a merged region's layers are longer together than 80 columns."""
    import warnings

    import onnx
    import torch

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation
        torch.onnx.export(user_models.expanded(64).eval(), (torch.randn(1, 3, 64, 64),), str(path), dynamo=False,
                          input_names=["x"])
    model = onnx.load(str(path))
    for i, node in enumerate(model.graph.node):
        node.name = f"/backbone/stages.{i}/blocks.{i}.0/conv_kxk/{node.op_type}"
    onnx.save(model, str(path))
    return path


def test_an_onnx_source_prints_the_pytorch_sources_region_table_at_80_columns(converted, tmp_path):
    """The ONNX path printed a block of 5 lines per region (115 for RepVGG-A0), its numbers too wide for
    the table; both sources print one table now, counts shortened, report.md keeping everything whole."""
    env = {"COLUMNS": "80"}
    o = run("convert", _long_named_onnx(tmp_path / "deep.onnx"), "-o", tmp_path / "o", env=env)
    assert o.exit_code == 0, o.output
    _fits(o.stdout, 80)
    p = run("convert", converted[0], "-o", tmp_path / "p", "--no-onnx", env=env)
    assert p.exit_code == 0, p.output
    assert _table_header(o.stdout) == _table_header(p.stdout) == ["region", "decision", "params", "FLOPs", "reason"]
    assert not any(line.lstrip().startswith(("region:", "decision:")) for line in o.stdout.splitlines())
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    merged = next(r for r in report["regions"] if r["decision"] == "dense")
    assert f"{report['flops_before']:,}" in o.stdout  # the totals whole under the table
    assert "1.21G -> " in o.stdout  # the region's counts shortened in it
    layers = ", ".join(merged["layers"])
    assert len(layers) > 80 and f"| {layers} |" in (tmp_path / "o" / "report.md").read_text()


def test_a_table_too_wide_for_any_squeeze_is_turned_or_printed_as_blocks():
    from rich.console import Console

    from compactify.harness.report import Column, print_table

    columns = [Column("name")] + [Column(f"v{i}", f"value {i}", ",.3f") for i in range(12)]
    one = [{"name": "a", **{f"v{i}": 123456.789 + i for i in range(12)}}]
    console = Console(width=40, record=True)
    print_table(console, one, columns, title="many numbers")
    text = console.export_text()
    _fits(text, 40)
    assert "value 11  123,467.789" in text  # few rows: one column per row, the headers down the side
    many = [{"name": n, **{f"v{i}": 123456.789 + i for i in range(12)}} for n in "abcdef"]
    console = Console(width=40, record=True)
    print_table(console, many, columns)
    text = console.export_text()
    _fits(text, 40)
    assert "name: f" in text and text.count("value 11: 123,467.789") == 6


def test_json_to_stdout_is_only_json(converted):
    ckpt, out = converted
    v = run("verify", out, "--batches", "1", "--json", "-")
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["passed"] is True
    b = run("bench", out / "compact.onnx", *BENCH, "--json", "-")
    assert b.exit_code == 0, b.output
    assert json.loads(b.stdout)["rows"][0]["model"] == "compact.onnx"
