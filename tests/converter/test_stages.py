"""The stage timer: silent on short conversions, a line per finished stage on long ones; and the
thread count a conversion gives torch."""

from __future__ import annotations

import io

import pytest

from compactify.converter import threads
from compactify.converter.stages import Stages


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(progress=True, quiet_for=3.0):
    clock, out = Clock(), io.StringIO()
    return Stages(progress=progress, quiet_for=quiet_for, stream=out, clock=clock), clock, out


def test_short_conversion_prints_nothing_and_times_every_stage():
    stages, clock, out = make()
    with stages("capture"):
        clock.now += 1.0
    with stages("plan"):
        clock.now += 0.5
    assert out.getvalue() == ""
    assert stages.seconds == {"capture": 1.0, "plan": 0.5}


def test_long_conversion_prints_held_lines_then_one_per_stage():
    stages, clock, out = make()
    with stages("load"):
        clock.now += 2.0
    assert out.getvalue() == ""
    with stages("capture"):
        clock.now += 2.0  # past 3 s: both lines now
    assert out.getvalue().splitlines() == ["load          2.00 s", "capture       2.00 s"]
    with stages("check"):
        clock.now += 0.25
    assert out.getvalue().splitlines()[-1] == "check         0.25 s"


def test_a_stage_entered_twice_adds_up_and_gets_a_line_each_time():
    stages, clock, out = make(quiet_for=0.0)
    for took in (1.0, 0.5):
        with stages("check"):
            clock.now += took
    assert stages.seconds == {"check": 1.5}
    assert out.getvalue().splitlines() == ["check         1.00 s", "check         0.50 s"]


def test_a_failed_stage_is_timed_but_not_announced():
    stages, clock, out = make(quiet_for=0.0)
    with pytest.raises(RuntimeError):
        with stages("capture"):
            clock.now += 5.0
            raise RuntimeError("boom")
    assert out.getvalue() == "" and stages.seconds == {"capture": 5.0}


def test_progress_off_never_prints():
    stages, clock, out = make(progress=False, quiet_for=0.0)
    with stages("export"):
        clock.now += 10.0
    assert out.getvalue() == "" and stages.rounded() == {"export": 10.0}


@pytest.mark.parametrize("cores, running, current, expected", [
    (2, [1, 1, 1], 2, 2),   # quiet: this thread alone runs, every core of the affinity mask
    (2, [2, 1, 2], 2, 1),   # one core busy with other work (the median of the samples)
    (2, [8, 7, 9], 2, 1),   # 7 others on 2 cores: never below one
    (8, [3, 3, 3], 4, 4),   # never more than torch was set to
    (4, [1, 9, 1], None, 4),  # a passing spike is not the load
])
def test_conversion_threads(monkeypatch, cores, running, current, expected):
    samples = iter(running)
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "runnable_threads", lambda: next(samples))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: pytest.fail("the 1-minute average is the fallback"))
    assert threads.conversion_threads(current) == expected


@pytest.mark.parametrize("load, expected", [(0.3, 2), (1.6, 1)])
def test_without_a_runnable_count_the_load_average_stands_in(monkeypatch, load, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "runnable_threads", lambda: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    assert threads.conversion_threads(2) == expected


def test_the_runnable_count_is_read_off_this_machine():
    count = threads.runnable_threads()
    assert count is None or count >= 1  # this test's own thread is running


def test_thread_limit_is_restored(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "conversion_threads", lambda current=None: 1)
    before = torch.get_num_threads()
    with threads.conversion_thread_limit() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
