"""Each benchmark's core on its smallest configuration: structure and exactness, never timings."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ("contraction", "conversion_cost", "fidelity")}
    finally:
        sys.path.remove(str(BENCHMARKS))


TINY = (("input_size", 8), ("width", 0.25), ("hidden", 8))


def test_contraction_builds_three_models_and_times_them(bench_modules, tmp_path):
    m = bench_modules["contraction"]
    built = m.build(m.Config("smallnet7", "ck+fc", TINY), tmp_path, exporter="torchscript")
    # The contracted graph is the hand-written one: same node count after onnxsim, fewer than expanded.
    assert built["nodes"]["contracted"] == built["nodes"]["hand-written"] < built["nodes"]["expanded"]
    assert built["params"]["contracted"] < built["params"]["expanded"]
    assert built["max_rel_error"] < 1e-5
    rows = m.time_models(built["paths"], built["input_shape"], (1,), seconds=0.01, threads=1, warmup=1,
                         min_rounds=2)
    assert len(rows) == 1 and rows[0]["rounds"] >= 2 and rows[0]["rounds2"] >= 2
    assert rows[0]["speedup"] > 0 and rows[0]["vs_hand"] > 0
    assert m.plot([{"model": "tiny", **rows[0]}], tmp_path / "c.png").stat().st_size > 0


def test_conversion_cost_times_a_conversion_against_one_export(bench_modules, tmp_path):
    m = bench_modules["conversion_cost"]
    row = m.measure("smallnet7", "cl", dict(TINY), tmp_path, repeats=1, kinds=("export", "convert"), log=lambda _: None)
    assert row["params_after"] < row["params"] and row["merged"] == 3 and row["exporter"] == "fx"
    assert row["export_s"] > 0 and row["onnx_ratio"] == pytest.approx(row["onnx_s"] / row["export_s"])
    shares = row["onnx_stages"]
    assert set(shares) == set(m.STAGES) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["capture"] > 0 and shares["check"] > 0 and shares["export"] > 0
    assert row["onnx_extra_mb"] > 0 and row["onnx_memory_x"] == pytest.approx(row["onnx_extra_mb"] / row["checkpoint_mb"])
    assert len(row["runs"]["convert"]) == 1 and row["runs"]["export"][0]["rss_before_mb"] > 0
    assert row["onnx_peak_x"] == pytest.approx(row["runs"]["convert"][0]["peak_mb"] / row["export_peak_mb"])
    assert [m._name(*c[:2], c[3]) for c in m.CURVE] == ["smallnet7-cl", "mobilenetv2-cl", "resnet18-cl-r2",
                                                        "resnet18-cl", "resnet18-cl-r7"]


def test_fidelity_measures_both_errors(bench_modules):
    m = bench_modules["fidelity"]
    row = m.measure("smallnet7", "ck+fc", dict(TINY), batches=1, batch_size=2)
    assert 0 < row["expanded_max_abs"] < 1e-5 and 0 <= row["contracted_max_abs"] < 1e-5
    assert row["max_ratio"] == pytest.approx(row["contracted_max_abs"] / row["expanded_max_abs"])
    configs = m.configurations(["smallnet7", "repvgg"], quick=True)
    assert ("repvgg", None, {"input_size": 32}) in configs
    assert [c[1] for c in configs if c[0] == "smallnet7"] == ["fc", "cl", "ck", "cl+fc", "ck+fc"]


def test_families_contracts_as_small_as_each_family_deploy(bench_modules, tmp_path):
    import importlib.util

    import numpy as np

    from compactify.runtimes import open_runner

    # By path, under its own name: `families` may already be tests/families in sys.modules.
    spec = importlib.util.spec_from_file_location("bench_families", BENCHMARKS / "families.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m
    try:
        spec.loader.exec_module(m)
        from tests.families.catalog import FAMILIES

        assert set(m.CATALOG) <= set(FAMILIES)
        quick = m.configs(quick=True)
        assert {c.source for c in quick} == {"timm", "catalog"} and all(c.size in (None, 32) for c in quick)
        assert [c.name for c in m.configs(models=["dbb-resnet18", "repvgg_a0"])] == ["repvgg_a0 @64", "dbb-resnet18"]
        with pytest.raises(ValueError):
            m.configs(models=["resnet50"])

        for config in (m.Config("acnet-rc", "catalog"), m.Config("repvgg_a0", "timm", 32)):
            folder = tmp_path / config.model
            folder.mkdir()
            built = m.build(config, folder)
            params, nodes = built["params"], built["onnx_nodes"]
            assert params["ours"] <= params["theirs"] < params["training"], config
            assert built["onnx_weights"]["ours"] <= built["onnx_weights"]["theirs"], config
            assert nodes["ours"] <= nodes["theirs"], config
            assert built["exporters"]["ours"] == built["exporters"]["theirs"]
            assert built["max_rel_error"] <= 1e-6 and built["deploy_max_rel_error"] <= 1e-5, config
            outputs = {}
            for side in m.SIDES:
                runner = open_runner(built["paths"][side], runtime="ort", intra_op_threads=1)
                try:
                    for batch in (1, 8):
                        x = np.random.default_rng(batch).standard_normal((batch, *built["input_shape"][1:]))
                        out = runner.infer({runner.inputs[0].name: x.astype(np.float32)})
                        outputs[side, batch] = next(iter(out.values()))
                finally:
                    runner.close()
            for batch in (1, 8):
                ours, theirs = outputs["ours", batch], outputs["theirs", batch]
                assert ours.shape == theirs.shape == (batch, 10)
                assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max()), config
    finally:
        sys.modules.pop(spec.name, None)


def test_int8_quantizes_four_ways_and_times_int8_against_fp32(bench_modules, tmp_path):
    import importlib.util

    # By path, under its own name, as the families benchmark above.
    spec = importlib.util.spec_from_file_location("bench_int8", BENCHMARKS / "int8.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m
    try:
        spec.loader.exec_module(m)
        assert [c.meta["arch"] for c in m.QUICK] == [c.meta["arch"] for c in m.FULL] == ["repvgg", "smallnet7"]
        config = m.Config("tiny", {"arch": "smallnet7", "arch_kwargs": dict(TINY), "expand": "cl", "rate": 2,
                                   "input_shape": [1, 3, 8, 8]}, 1)
        ckpt, accuracy = m.train_checkpoint(config, tmp_path)
        assert 0 <= accuracy <= 1
        built = m.quantize_variants(ckpt, tmp_path, exporter="torchscript")
        rows = {r["variant"]: r for r in built["rows"]}
        assert list(rows) == list(m.VARIANTS)
        for r in rows.values():
            assert 0 <= r["agreement"] <= 1 and 0 <= r["accuracy"] <= 1 and r["max_abs"] > 0
            assert r["accuracy_fp32"] == rows["merged per-channel"]["accuracy_fp32"]  # all against one fp32 model
        # The merged network has fewer layers to quantize than the unmerged one.
        assert rows["merged per-channel"]["int8_layers"] < rows["unmerged per-channel"]["int8_layers"]
        timed = m.time_pair(Path(built["fp32"]), Path(built["paths"]["merged per-channel"]), built["input_shape"],
                            (1, 4), seconds=0.02, threads=1, warmup=1)
        assert [t["batch"] for t in timed] == [1, 4]
        assert all(t["speedup"] > 0 and t["speedup_paired"] > 0 and t["rounds"] >= 1 for t in timed)
    finally:
        sys.modules.pop(spec.name, None)


def test_edge_targets_builds_every_variant_on_every_runtime_exactly(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_edge_targets", BENCHMARKS / "edge_targets.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m
    try:
        spec.loader.exec_module(m)
        runtimes = m.available_runtimes(m.RUNTIMES, lambda line: None)
        config = m.Config("tiny", "registry", "smallnet7", "cl", 8)
        built = m.build_all(config, tmp_path, runtimes)
        assert set(built["paths"]) == {(v, r) for v in ("expanded", "compact") for r in runtimes}
        # Every artifact, expanded or compact, on every runtime, computes the source's function.
        assert max(built["errors"].values()) < 1e-5, built["errors"]
        assert built["params"]["compact"] < built["params"]["expanded"]
        p50 = m.time_all(built, runtimes, seconds=0.01, threads=1, warmup=1)
        rows = m.rows_of(config, built, p50, runtimes)
        assert [r["runtime"] for r in rows] == [m.RUNTIME_NAMES[r] for r in runtimes]
        assert all(r["speedup"] > 0 and r["deploy_ratio"] is None for r in rows)
    finally:
        sys.modules.pop(spec.name, None)
