"""Strength schedules: interpolation maths, text forms, sigma → sampling fraction."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_core.errors import StackError
from lora_core.schedule import (INTERPOLATIONS, format_schedule, is_constant, make_schedule, parse_schedule,
                                percent_for_sigma, percent_from_step, ramp, strength_at)
from lora_core.stack import Keyframe, Schedule


def test_linear_between_keyframes():
    s = parse_schedule("0:1.0, 0.5:0.3, 1:0")
    assert [strength_at(s, p) for p in (0, 0.25, 0.5, 0.75, 1)] == pytest.approx([1, 0.65, 0.3, 0.15, 0])


@pytest.mark.parametrize("interp, f", [
    ("linear", lambda t: t),
    ("ease_in", lambda t: t ** 2),
    ("ease_out", lambda t: 1 - (1 - t) ** 2),
    ("ease_in_out", lambda t: 3 * t ** 2 - 2 * t ** 3),
])
def test_easing_closed_forms(interp, f):
    # from 2 at 0.2 to -1 at 0.7: v(p) = 2 + (−3)·f((p − 0.2)/0.5)
    s = make_schedule([(0.2, 2.0), (0.7, -1.0)], interp)
    for p in (0.2, 0.3, 0.45, 0.6, 0.7):
        assert strength_at(s, p) == pytest.approx(2 + (-3) * f((p - 0.2) / 0.5), abs=1e-12), p


def test_easing_shapes():
    lin, ein, eout = (make_schedule([(0, 0), (1, 1)], i) for i in ("linear", "ease_in", "ease_out"))
    assert strength_at(ein, 0.25) < strength_at(lin, 0.25) < strength_at(eout, 0.25)
    sm = make_schedule([(0, 0), (1, 1)], "ease_in_out")
    assert strength_at(sm, 0.5) == pytest.approx(0.5)
    assert strength_at(sm, 0.1) < 0.1 and strength_at(sm, 0.9) > 0.9


def test_hold_is_a_step_function():
    s = parse_schedule("0:1, 0.5:0.3, 0.8:0", "hold")
    assert strength_at(s, 0.0) == 1 and strength_at(s, 0.4999) == 1
    assert strength_at(s, 0.5) == 0.3 and strength_at(s, 0.79) == 0.3
    assert strength_at(s, 0.8) == 0 and strength_at(s, 1.0) == 0


def test_outside_and_unsorted_keyframes():
    s = make_schedule([(0.9, 0.0), (0.3, 2.0)])
    assert s.keyframes[0].start == 0.3  # sorted
    assert strength_at(s, 0.0) == 2.0  # before the first keyframe: first value
    assert strength_at(s, 1.0) == 0.0  # after the last: last value
    assert strength_at(s, 0.6) == pytest.approx(1.0)


def test_jump_at_equal_starts():
    s = parse_schedule("0:1, 0.5:1, 0.5:0, 1:0")
    assert strength_at(s, 0.49) == pytest.approx(1.0)
    assert strength_at(s, 0.5) == 0.0  # the later keyframe wins from its start on


def test_none_and_single_keyframe():
    assert strength_at(None, 0.3) == 1.0
    assert parse_schedule("") is None and parse_schedule("  \n") is None
    one = parse_schedule("0.4:0.7")
    assert strength_at(one, 0) == strength_at(one, 1) == 0.7
    assert is_constant(one) and is_constant(None) and not is_constant(parse_schedule("0:1,1:0"))


def test_text_forms():
    a = parse_schedule("0:1, 50%:0.2, 1:0")
    b = parse_schedule("1@0, 0.2@50%, 0@1")
    c = parse_schedule("0:1\n0.5:0.2;1:0")
    assert a == b == c
    assert parse_schedule("0:1, 1:0, ease_in_out").interpolation == "ease_in_out"
    for s in (a, parse_schedule("0:1, 0.25:-0.5, 1:3e-05, hold")):
        assert parse_schedule(format_schedule(s)) == s


@pytest.mark.parametrize("text", ["0:1, 1.5:0", "0:1, x", "0-1", "0:nan", "1@2"])
def test_bad_text_raises(text):
    with pytest.raises(StackError):
        parse_schedule(text)


def test_bad_interpolation_and_ramp():
    with pytest.raises(StackError):
        make_schedule([(0, 1)], "cubic")
    with pytest.raises(StackError):
        ramp(1, 0, 0.8, 0.2)
    r = ramp(1.0, 0.0, 0.2, 0.6, "linear")
    assert strength_at(r, 0.1) == 1.0 and strength_at(r, 0.4) == pytest.approx(0.5) and strength_at(r, 0.9) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-5, 5)), min_size=1, max_size=6),
       st.sampled_from(INTERPOLATIONS), st.floats(-0.5, 1.5))
def test_values_stay_between_neighbouring_keyframes(frames, interp, p):
    s = make_schedule(frames, interp)
    v = strength_at(s, p)
    lo = min(k.value for k in s.keyframes)
    hi = max(k.value for k in s.keyframes)
    assert lo - 1e-9 <= v <= hi + 1e-9


def _sigma(p: float) -> float:
    # A decreasing noise schedule like a model's percent_to_sigma (14.6 → 0.03).
    return 0.03 + 14.57 * (1.0 - p) ** 3


@pytest.mark.parametrize("p", [0.0, 0.1, 0.37, 0.5, 0.93, 1.0])
def test_percent_for_sigma_inverts_percent_to_sigma(p):
    assert percent_for_sigma(_sigma(p), _sigma) == pytest.approx(p, abs=1e-9)


def test_percent_for_sigma_clamps():
    assert percent_for_sigma(100.0, _sigma) == 0.0
    assert percent_for_sigma(0.0, _sigma) == 1.0


def test_percent_from_step():
    sigmas = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert [percent_from_step(s, sigmas) for s in sigmas[:-1]] == [0.0, 0.25, 0.5, 0.75]
    assert percent_from_step(5.0, sigmas) is None
    assert percent_from_step(1.0, [1.0]) is None


def test_schedule_is_hashable_stack_value():
    s = parse_schedule("0:1, 1:0")
    assert isinstance(s, Schedule) and hash(s) == hash(make_schedule([Keyframe(0, 1), Keyframe(1, 0)]))
    assert not math.isnan(strength_at(s, float("nan")))
