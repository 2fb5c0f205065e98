import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from compactify.errors import BadInputError
from compactify.measure.metrics import REL_FLOOR, compare, compare_all, relative_error, top1_agreement


def _passes(cand, ref, atol, rtol):
    a = np.asarray(cand, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    with np.errstate(over="ignore"):
        return bool(np.all(np.abs(a - r) <= atol + rtol * np.abs(r)))


def test_hand_computed_case():
    ref = np.array([1.0, -2.0, 4.0, 0.5])
    cand = np.array([1.1, -2.0, 3.0, 0.5])
    c = compare(cand, ref, atol=0.0, rtol=0.0, name="y")
    assert c.name == "y" and c.shape == (4,) and c.size == 4
    assert c.max_abs == pytest.approx(1.0)
    assert c.mean_abs == pytest.approx((0.1 + 1.0) / 4)
    assert c.max_elementwise_rel == pytest.approx(0.25)  # 1.0 / 4.0 beats 0.1 / 1.0
    assert c.max_rel_error == pytest.approx(1.0 / 4.0)  # the error over the largest |ref|
    expected_cos = np.dot(cand, ref) / (np.linalg.norm(cand) * np.linalg.norm(ref))
    assert c.cosine == pytest.approx(expected_cos)
    assert c.min_atol == pytest.approx(1.0)
    assert c.min_rtol == pytest.approx(0.25)
    assert not c.passed and c.failing == 2
    assert c.nonfinite == 0 and c.reference_nonfinite == 0
    assert c.top1 is None


def test_combined_tolerances_hand_computed():
    ref = np.array([10.0, 1.0])
    cand = np.array([10.5, 1.2])
    # with rtol = 0.01: needs atol >= max(0.5 - 0.1, 0.2 - 0.01) = 0.4
    c = compare(cand, ref, atol=0.1, rtol=0.01)
    assert c.min_atol_at_rtol == pytest.approx(0.4)
    # with atol = 0.1: needs rtol >= max((0.5 - 0.1) / 10, (0.2 - 0.1) / 1) = 0.1
    assert c.min_rtol_at_atol == pytest.approx(0.1)
    assert not c.passed
    assert compare(cand, ref, atol=0.4 + 1e-12, rtol=0.01).passed
    assert compare(cand, ref, atol=0.1, rtol=0.1 + 1e-12).passed


def test_exact_match_passes_with_zero_tolerance():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    c = compare(x, x.astype(np.float64), atol=0, rtol=0)
    assert c.passed and c.failing == 0
    assert c.max_abs == 0 and c.min_atol == 0 and c.min_rtol == 0
    assert c.cosine == pytest.approx(1.0)
    assert c.top1 == 1.0


def test_float32_candidate_is_compared_in_float64():
    ref = np.array([1.0 + 1e-9])  # not representable in float32
    cand = np.array([1.0], dtype=np.float32)
    c = compare(cand, ref, atol=0, rtol=0)
    assert c.max_abs == pytest.approx(1e-9, rel=1e-6)


def test_zero_reference_relative_error():
    ref = np.array([0.0, 1.0])
    cand = np.array([1e-6, 1.0])
    c = compare(cand, ref, atol=0, rtol=0)
    assert c.max_elementwise_rel == pytest.approx(1e-6 / REL_FLOOR) and c.max_elementwise_rel > 1e300
    assert c.min_rtol == math.inf  # no rtol passes a nonzero error on a zero reference
    assert c.min_rtol_at_atol == math.inf
    c2 = compare(cand, ref, atol=1e-5, rtol=0)
    assert c2.passed and c2.min_rtol_at_atol == 0.0


def test_nan_and_inf_in_candidate_fail():
    ref = np.array([1.0, 2.0, math.inf])
    cand = np.array([1.0, math.nan, math.inf])  # inf == inf would be "close" for numpy
    c = compare(cand, ref, atol=1.0, rtol=1.0)
    assert not c.passed
    assert c.nonfinite == 2 and c.reference_nonfinite == 1
    assert c.failing == 2
    assert c.min_atol == math.inf and c.min_rtol == math.inf
    assert c.max_abs == 0.0  # statistics only over the finite elements
    assert "nonfinite=2" in c.summary()


def test_nonfinite_reference_fails():
    c = compare(np.array([1.0]), np.array([math.nan]), atol=1, rtol=1)
    assert not c.passed and c.reference_nonfinite == 1


def test_shape_mismatch_is_bad_input():
    with pytest.raises(BadInputError, match="shape"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)), name="logits")


def test_bad_tolerance_is_bad_input():
    with pytest.raises(BadInputError):
        compare(np.zeros(2), np.zeros(2), atol=-1.0)
    with pytest.raises(BadInputError):
        compare(np.zeros(2), np.zeros(2), rtol=math.nan)


def test_cosine_edge_cases():
    assert compare(np.zeros(3), np.zeros(3)).cosine == 1.0
    assert compare(np.zeros(3), np.ones(3)).cosine == 0.0
    assert compare(-np.ones(3), np.ones(3)).cosine == pytest.approx(-1.0)
    big = np.full(4, 1e300)
    assert compare(big, big).cosine == pytest.approx(1.0)  # no overflow


def test_max_rel_error_zero_reference():
    assert compare(np.zeros(2), np.zeros(2)).max_rel_error == 0.0
    assert compare(np.ones(2), np.zeros(2)).max_rel_error == math.inf


def test_relative_error_is_the_error_over_the_largest_reference_value_for_arrays_and_tensors():
    import torch

    ref = np.array([[1.0, -8.0], [0.5, 2.0]])
    got = ref + np.array([[0.0, 0.0], [0.5, 0.0]])  # elementwise 100% off where |ref| is 0.5
    assert relative_error(got, ref) == (0.5, 0.5 / 8.0)
    assert relative_error(torch.tensor(got, dtype=torch.float32), torch.tensor(ref)) == (0.5, 0.5 / 8.0)
    assert compare(got, ref).max_rel_error == relative_error(got, ref)[1]
    assert compare(got, ref).max_elementwise_rel == 1.0
    assert relative_error(np.array([np.nan, 1.0]), np.ones(2)) == (math.inf, math.inf)
    assert relative_error(np.zeros(0), np.zeros(0)) == (0.0, 0.0)


def test_top1_agreement():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    cand = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    assert top1_agreement(cand, ref) == pytest.approx(0.75)
    assert compare(cand, ref).top1 == pytest.approx(0.75)
    assert compare(cand, ref, classifier=False).top1 is None
    assert compare(cand.ravel(), ref.ravel()).top1 is None  # not logits-shaped
    assert compare(cand[:, :1], ref[:, :1]).top1 is None  # a single column has no argmax to agree on


def test_compare_all_by_name():
    ref = {"a": np.ones(2), "b": np.zeros(3)}
    out = compare_all({"b": np.zeros(3), "a": np.ones(2) * 1.5}, ref, atol=0.1, rtol=0)
    assert list(out) == ["a", "b"]
    assert not out["a"].passed and out["b"].passed
    with pytest.raises(BadInputError, match="missing"):
        compare_all({"a": np.ones(2)}, ref)


def test_to_dict_round_trip_keys():
    d = compare(np.ones((2, 2)), np.ones((2, 2))).to_dict()
    assert d["shape"] == [2, 2] and d["passed"] is True and "min_rtol_at_atol" in d


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
pairs = st.integers(1, 12).flatmap(
    lambda n: st.tuples(arrays(np.float64, n, elements=finite), arrays(np.float64, n, elements=finite))
)
tols = st.floats(0, 10, allow_nan=False, allow_infinity=False)


def _prev(x):
    return float(np.nextafter(x, 0.0))


@settings(max_examples=200, deadline=None)
@given(pairs, tols, tols)
def test_reported_smallest_tolerances_are_exact(pair, atol, rtol):
    cand, ref = pair
    c = compare(cand, ref, atol=atol, rtol=rtol)
    assert c.passed == _passes(cand, ref, atol, rtol) == bool(np.allclose(cand, ref, atol=atol, rtol=rtol))
    assert c.failing == int(np.sum(~np.isclose(cand, ref, atol=atol, rtol=rtol)))
    # each reported tolerance passes and the next smaller float64 fails
    checks = [
        (c.min_atol, lambda t: _passes(cand, ref, t, 0.0)),
        (c.min_rtol, lambda t: _passes(cand, ref, 0.0, t)),
        (c.min_atol_at_rtol, lambda t: _passes(cand, ref, t, rtol)),
        (c.min_rtol_at_atol, lambda t: _passes(cand, ref, atol, t)),
    ]
    for value, passes in checks:
        if math.isinf(value):
            assert not passes(1e300)
            continue
        assert value >= 0 and passes(value)
        if value > 0:
            assert not passes(_prev(value))
    # a case passes iff both given tolerances are at least the smallest ones for the other
    assert c.passed == (atol >= c.min_atol_at_rtol) == (rtol >= c.min_rtol_at_atol)


@settings(max_examples=100, deadline=None)
@given(pairs)
def test_statistics_properties(pair):
    cand, ref = pair
    c = compare(cand, ref)
    diff = np.abs(cand - ref)
    assert c.max_abs == diff.max()
    assert c.mean_abs <= c.max_abs * (1 + 1e-12)
    assert -1.0 <= c.cosine <= 1.0
    assert c.max_elementwise_rel >= c.max_rel_error * (1 - 1e-12) or np.any(np.abs(ref) < REL_FLOOR)
    swapped = compare(ref, cand)
    assert swapped.max_abs == c.max_abs
    assert swapped.cosine == pytest.approx(c.cosine, abs=1e-12)


def test_subnormal_reference_boundary_is_exact():
    # t * 2e-313 rounds coarsely: the closed form 1 - 7e-15 is far from the float64 boundary
    cand, ref = np.array([0.0]), np.array([2.22507386e-313])
    c = compare(cand, ref, atol=0, rtol=0)
    assert _passes(cand, ref, 0.0, c.min_rtol)
    assert not _passes(cand, ref, 0.0, _prev(c.min_rtol))


def test_realistic_float32_error_against_float64():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((64, 10))
    cand = ref.astype(np.float32)
    c = compare(cand, ref, atol=0, rtol=1e-6)
    assert c.passed  # a float32 rounding is within 2**-24 relative
    assert 0 < c.max_elementwise_rel <= 2.0**-24
    assert c.min_rtol <= 2.0**-24 and c.min_atol_at_rtol == 0.0
    assert c.top1 == 1.0 and c.cosine == pytest.approx(1.0)
