import math
import types

import numpy as np
import pytest
import torch

from compactify.errors import BadInputError
from compactify.measure import latency
from compactify.measure.latency import (
    HIGH_CV,
    Candidate,
    compare_latency,
    cv_warning,
    make_timer,
    measure,
    pinned_threads,
    summarize,
)


class FakeClock:
    """Replaces the module's clock: time advances only when a fake model runs."""

    def __init__(self):
        self.ns = 0

    def advance_ms(self, ms):
        self.ns += int(round(ms * 1e6))

    def perf_counter_ns(self):
        return self.ns

    def perf_counter(self):
        return self.ns / 1e9


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter_ns=c.perf_counter_ns, perf_counter=c.perf_counter))
    return c


def test_summarize_known_samples():
    s = summarize([4.0, 1.0, 3.0, 2.0], batch=8, label="m")
    assert (s.label, s.batch, s.n) == ("m", 8, 4)
    assert s.p50_ms == pytest.approx(2.5)
    assert s.p90_ms == pytest.approx(3.7)  # linear interpolation: 1 + 0.9 * 3
    assert s.p99_ms == pytest.approx(3.97)
    assert s.mean_ms == pytest.approx(2.5)
    assert s.std_ms == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof = 1
    assert s.cv == pytest.approx(math.sqrt(5 / 3) / 2.5)
    assert (s.min_ms, s.max_ms) == (1.0, 4.0)
    assert s.throughput == pytest.approx(8 * 1000 / 2.5)
    assert s.samples_ms == [4.0, 1.0, 3.0, 2.0]
    assert "samples_ms" not in s.to_dict() and s.to_dict(samples=True)["samples_ms"] == s.samples_ms


def test_summarize_single_sample_and_bad_input():
    s = summarize([5.0])
    assert s.std_ms == 0 and s.cv == 0 and s.p99_ms == 5.0 and s.throughput == pytest.approx(200.0)
    with pytest.raises(BadInputError):
        summarize([])
    with pytest.raises(BadInputError):
        summarize([1.0], batch=0)


def test_measure_iterations_and_sync(clock):
    calls = {"fn": 0, "sync": 0}

    def fn():
        calls["fn"] += 1
        clock.advance_ms(3.0)

    def sync():
        calls["sync"] += 1
        clock.advance_ms(0.5)  # waiting for the device is part of the latency

    s = measure(fn, sync=sync, warmup=4, iters=7, batch=2, progress=False)
    assert calls == {"fn": 11, "sync": 11}
    assert s.n == 7 and s.samples_ms == [3.5] * 7
    assert s.p50_ms == 3.5 and s.std_ms == 0 and s.cv == 0
    assert s.throughput == pytest.approx(2 * 1000 / 3.5)


def test_measure_time_budget(clock):
    s = measure(lambda: clock.advance_ms(10.0), warmup=0, seconds=0.095, progress=False)
    assert s.n == 10  # the 10th run crosses 95 ms; then the budget check stops the loop


def test_time_budget_runs_at_least_once(clock):
    s = measure(lambda: clock.advance_ms(50.0), warmup=1, seconds=0.001, progress=False)
    assert s.n == 1


def test_interleaved_order_plays_each_rotation_forward_and_backward(clock):
    seen = []
    cands = [Candidate(x, (lambda x=x: seen.append(x))) for x in "ABC"]
    compare_latency(cands, warmup=1, iters=3, rotate=True, progress=False)
    assert "".join(seen) == "ABC" + "CBA" + "BCA" + "ACB"
    seen.clear()
    compare_latency(cands, warmup=1, iters=2, rotate=False, progress=False)
    assert "".join(seen) == "ABC" * 3


def test_interleaved_ratios(clock):
    durations = {"slow": [2.0, 4.0, 2.0, 4.0], "fast": [1.0, 1.0, 1.0, 1.0]}
    it = {k: iter(v) for k, v in durations.items()}
    cands = [Candidate(k, (lambda k=k: clock.advance_ms(next(it[k]))), batch=4) for k in durations]
    res = compare_latency(cands, warmup=0, iters=4, progress=False)
    assert res.rounds == 4 and res.baseline == "slow"
    slow, fast = res.by_label("slow"), res.by_label("fast")
    assert slow.p50_ms == 3.0 and fast.p50_ms == 1.0
    assert res.ratios_p50 == {"slow": 1.0, "fast": pytest.approx(1 / 3)}
    # paired: per-round ratios 1/2, 1/4, 1/2, 1/4 -> median 0.375
    assert res.ratios_paired["fast"] == pytest.approx(0.375)
    assert res.ratios_paired["slow"] == 1.0
    assert slow.throughput == pytest.approx(4 * 1000 / 3.0)
    d = res.to_dict()
    assert d["baseline"] == "slow" and len(d["stats"]) == 2 and "samples_ms" not in d["stats"][0]


def test_baseline_choice(clock):
    cands = [Candidate("a", lambda: clock.advance_ms(2)), Candidate("b", lambda: clock.advance_ms(1))]
    res = compare_latency(cands, warmup=0, iters=3, baseline=1, progress=False)
    assert res.baseline == "b" and res.ratios_p50["a"] == pytest.approx(2.0)


def test_high_cv_warning(clock):
    vals = iter([1.0, 3.0] * 10)
    res = compare_latency([Candidate("noisy", lambda: clock.advance_ms(next(vals)))], warmup=0, iters=20, progress=False)
    s = res.stats[0]
    assert s.cv > HIGH_CV and s.high_cv
    assert len(res.warnings) == 1 and "noisy" in res.warnings[0] and "coefficient of variation" in res.warnings[0]
    assert cv_warning(summarize([1.0, 1.01, 0.99])) is None


def test_bad_budgets():
    c = [Candidate("a", lambda: None)]
    with pytest.raises(BadInputError, match="not both"):
        compare_latency(c, iters=3, seconds=1.0)
    for kwargs in ({"iters": 0}, {"seconds": 0.0}, {"warmup": -1}):
        with pytest.raises(BadInputError):
            compare_latency(c, **kwargs)
    with pytest.raises(BadInputError, match="distinct"):
        compare_latency(c * 2, iters=1)
    with pytest.raises(BadInputError):
        compare_latency([], iters=1)
    with pytest.raises(BadInputError):
        make_timer("tpu")


def test_default_iterations(clock):
    s = measure(lambda: clock.advance_ms(1), warmup=0, progress=False)
    assert s.n == latency.DEFAULT_ITERS


def test_real_clock_structure():
    # the real clock: only the structure is checked, never the speed
    x = np.random.default_rng(0).standard_normal((16, 16))
    s = measure(lambda: x @ x, warmup=2, iters=5, progress=False)
    assert s.n == 5 and all(v >= 0 for v in s.samples_ms)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms


def test_progress_bar_runs(clock, capsys):
    s = measure(lambda: clock.advance_ms(1), warmup=0, iters=3, progress=True)
    assert s.n == 3
    s = measure(lambda: clock.advance_ms(1), warmup=0, seconds=0.002, progress=True)
    assert s.n == 2


def test_auto_progress_is_off_without_a_terminal(monkeypatch):
    monkeypatch.setattr(latency.sys, "stderr", types.SimpleNamespace(isatty=lambda: False))
    assert not latency._progress_wanted(None, 1e9)
    monkeypatch.setattr(latency.sys, "stderr", types.SimpleNamespace(isatty=lambda: True))
    assert latency._progress_wanted(None, 1e9)
    assert not latency._progress_wanted(None, 0.1)  # short runs get no bar
    assert not latency._progress_wanted(False, 1e9)


def test_pinned_threads_restores():
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pinned_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(BadInputError):
        with pinned_threads(0):
            pass


def test_gc_restored_after_timing(clock):
    import gc

    assert gc.isenabled()
    measure(lambda: clock.advance_ms(1), warmup=0, iters=2, progress=False)
    assert gc.isenabled()


def test_cuda_without_device_is_missing_runtime():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from compactify.errors import MissingRuntimeError

    with pytest.raises(MissingRuntimeError):
        make_timer("cuda", sync=lambda: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_event_timing():
    x = torch.randn(256, 256, device="cuda")
    s = measure(lambda: x @ x, device="cuda", warmup=3, iters=10, progress=False)
    assert s.n == 10 and s.min_ms > 0
