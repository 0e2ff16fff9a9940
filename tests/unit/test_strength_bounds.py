"""Strengths that could overflow a weight are refused where they are parsed (issue 8).

Plain row lists, A1111 tags and other packs' tuples: finite and within
±ROW_STRENGTH_LIMIT (core LoraLoader's range); the editor's v2 rows: the
sliders' ±4; schedule keyframes: ±SCHEDULE_LIMIT.  Each error names the row
or keyframe and the field.
"""
from __future__ import annotations

import math

import pytest

from lora_core.errors import StackError
from lora_core.schedule import SCHEDULE_LIMIT, make_schedule, parse_schedule
from lora_core.stack import ROW_STRENGTH_LIMIT, V2_STRENGTH_LIMIT, parse_rows


@pytest.mark.parametrize("value", [1e30, -1e38, 1e300, math.inf, math.nan, ROW_STRENGTH_LIMIT * 1.01])
@pytest.mark.parametrize("field", ["strength", "strength_clip", "strengthTwo"])
def test_plain_rows_refuse_huge_and_non_finite_strengths(value, field):
    rows = [{"lora": "a.safetensors", "strength": 1.0}, {"lora": "b.safetensors", field: value}]
    with pytest.raises(StackError, match=rf"row 2: {field}"):
        parse_rows(rows)


def test_plain_rows_accept_the_documented_range():
    stack = parse_rows([{"lora": "a", "strength": ROW_STRENGTH_LIMIT, "strength_clip": -ROW_STRENGTH_LIMIT}])
    assert stack.entries[0].strength_model == ROW_STRENGTH_LIMIT
    assert parse_rows('[{"lora": "a", "strength": 7.5}]').entries[0].strength_model == 7.5  # beyond the sliders


def test_json_text_with_a_huge_number_is_refused():
    with pytest.raises(StackError, match=r"row 1: strength 1e\+300 is outside the range rows accept ±100"):
        parse_rows('[{"lora": "a", "strength": 1e300}]')


def test_v2_rows_keep_the_slider_range():
    value = {"version": 2, "rows": [{"lora": "a", "strength": V2_STRENGTH_LIMIT + 1}]}
    with pytest.raises(StackError, match="row 1: strength .* editor's range"):
        parse_rows(value)


@pytest.mark.parametrize("text", ["0:1, 0.5:1e30", "0:-1e38, 1:0", f"0:{SCHEDULE_LIMIT * 2}"])
def test_schedule_multipliers_are_bounded(text):
    with pytest.raises(StackError, match=r"keyframe \d: multiplier .* outside ±10"):
        parse_schedule(text)


def test_schedule_bounds_are_inclusive_and_non_finite_refused():
    assert make_schedule([(0.0, SCHEDULE_LIMIT), (1.0, -SCHEDULE_LIMIT)]).keyframes[0].value == SCHEDULE_LIMIT
    with pytest.raises(StackError, match="finite"):
        make_schedule([(0.0, math.nan)])
