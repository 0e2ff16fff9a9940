"""Sweep specifications (lora_core.sweep) and prompt tags (lora_core.tags)."""
from __future__ import annotations

import pytest

from lora_core.errors import StackError, SweepError
from lora_core.stack import LoraStack, StackEntry
from lora_core.sweep import MAX_CELLS, MAX_VALUES, SweepAxis, SweepSpec, axis, parse_values, range_values
from lora_core.tags import format_tag, parse_prompt_tags

STACK = LoraStack((StackEntry("styles/ink.safetensors", 1.0, 1.0), StackEntry("detail.safetensors", 0.5, 0.5)))


def test_values_from_list_and_range():
    assert parse_values("0, 0.25, 0.5, 1") == (0.0, 0.25, 0.5, 1.0)
    assert parse_values("0 0.5\n1") == (0.0, 0.5, 1.0)
    assert parse_values("0:1:5") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert range_values(1, 0, 3) == (1.0, 0.5, 0.0)
    assert range_values(0.3, 9, 1) == (0.3,)
    assert parse_values("1, 2, 3", "seed") == (1, 2, 3)
    assert parse_values("a.safetensors, sub/b c.safetensors", "lora") == ("a.safetensors", "sub/b c.safetensors")


@pytest.mark.parametrize("text", ["", " , ", "0:1:0"])
def test_no_values_refused(text):
    with pytest.raises(SweepError, match="no values"):
        parse_values(text)


def test_ten_thousand_values_refused_naming_the_limit():
    with pytest.raises(SweepError, match=f"10000 values; the limit is {MAX_VALUES}"):
        parse_values(", ".join(["0.5"] * 10000))
    with pytest.raises(SweepError, match=f"limit is {MAX_VALUES}"):
        range_values(0, 1, 10000)
    with pytest.raises(SweepError, match=f"limit is {MAX_VALUES}"):
        parse_values("0:1:10000")


def test_too_many_cells_refused():
    x = axis("strength", f"0:1:{MAX_VALUES}")
    y = axis("seed", "0:100:10", row=0)
    with pytest.raises(SweepError, match=f"limit is {MAX_CELLS}"):
        SweepSpec(x, y)


@pytest.mark.parametrize("text, what", [("0, abc", "'abc' is not a number"), ("0, nan", "finite"),
                                        ("0, inf", "finite")])
def test_bad_values_named(text, what):
    with pytest.raises(SweepError, match=what):
        parse_values(text)


def test_bad_seed():
    with pytest.raises(SweepError, match="whole number"):
        parse_values("1.5", "seed")
    with pytest.raises(SweepError, match="whole number"):
        parse_values("-1", "seed")


def test_cells_row_major_with_labels():
    spec = SweepSpec(axis("strength", "0, 0.5, 1", row=0), axis("seed", "7, 8"))
    cells = spec.cells(STACK, seed=3)
    assert len(cells) == len(spec) == 6
    assert [(c.ix, c.iy) for c in cells] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert [c.stack.entries[0].strength_model for c in cells] == [0.0, 0.5, 1.0] * 2
    assert [c.stack.entries[0].strength_clip for c in cells] == [0.0, 0.5, 1.0] * 2
    assert [c.seed for c in cells] == [7, 7, 7, 8, 8, 8]
    assert cells[0].label_x == "0" and cells[4].label_y == "seed 8"
    assert spec.titles(STACK) == ("ink strength", "seed")
    # the other row is untouched
    assert all(c.stack.entries[1] == STACK.entries[1] for c in cells)


def test_model_part_only_and_lora_axis():
    spec = SweepSpec(axis("strength", "0.2", row=1, part="model"),
                     axis("lora", "a.safetensors, b.safetensors", row=0, labels="A, B"))
    cells = spec.cells(STACK)
    assert cells[0].stack.entries[1].strength_model == 0.2 and cells[0].stack.entries[1].strength_clip == 0.5
    assert [c.stack.entries[0].lora for c in cells] == ["a.safetensors", "b.safetensors"]
    assert [c.label_y for c in cells] == ["A", "B"]
    assert spec.titles(STACK) == ("detail strength (model)", "LoRA of row 1")


def test_row_that_does_not_exist():
    with pytest.raises(SweepError, match="row 5 but the stack has 2"):
        SweepSpec(axis("strength", "1", row=4)).cells(STACK)


def test_axes_changing_the_same_thing_refused():
    with pytest.raises(SweepError, match="same thing"):
        SweepSpec(axis("strength", "0, 1"), axis("strength", "0, 1"))
    with pytest.raises(SweepError, match="same thing"):
        SweepSpec(axis("seed", "0, 1"), axis("seed", "0, 1"))
    SweepSpec(axis("strength", "0, 1", part="model"), axis("strength", "0, 1", part="clip"))


def test_labels_count_must_match():
    with pytest.raises(SweepError, match="3 values but 2 labels"):
        SweepAxis("strength", (0.0, 0.5, 1.0), labels=("a", "b"))


def test_spec_is_frozen_and_hashable():
    spec = SweepSpec(axis("strength", "0, 1"))
    with pytest.raises(Exception):
        spec.x = None  # type: ignore[misc]
    assert hash(spec) == hash(SweepSpec(axis("strength", "0, 1")))


# ----------------------------------------------------------------- prompt tags

def test_tags_give_rows_and_a_clean_prompt():
    t = parse_prompt_tags("a cat, <lora:styles/ink:0.8>, on a mat <LORA:detail:0.5:0.25> <lyco:glow>")
    assert t.prompt == "a cat, on a mat"
    assert [(r.lora, r.strength_model, r.strength_clip) for r in t.rows] == [
        ("styles/ink", 0.8, 0.8), ("detail", 0.5, 0.25), ("glow", 1.0, 1.0)]
    assert t.problems == ()
    assert t.rows[1].as_row() == {"on": True, "lora": "detail", "strength": 0.5, "strength_clip": 0.25}


def test_each_malformed_tag_gets_one_message_naming_it():
    t = parse_prompt_tags("x <lora::1> <lora:a:abc> <lora:b:1:2:3> <lora:c:nan> <lora:ok:1> <lora:d:0.5")
    assert [r.lora for r in t.rows] == ["ok"]
    assert len(t.problems) == 5
    assert "'<lora::1>' has no LoRA name" in t.problems[0]
    assert "'<lora:a:abc>': strength 'abc' is not a number" in t.problems[1]
    assert "'<lora:b:1:2:3>' has 4 fields" in t.problems[2]
    assert "'<lora:c:nan>': strength must be finite" in t.problems[3]
    assert "'<lora:d:0.5' is not closed" in t.problems[4]
    with pytest.raises(StackError, match="has no LoRA name.*is not closed"):
        t.raise_problems()


def test_unclosed_tag_before_another_tag():
    t = parse_prompt_tags("<lora:a:1 <lora:b:0.5>")
    assert [r.lora for r in t.rows] == ["b"]
    assert t.problems == ("tag '<lora:a:1' is not closed with '>'",)


def test_no_tags_prompt_unchanged():
    t = parse_prompt_tags("a photo of a cat\nsecond line")
    assert t.prompt == "a photo of a cat\nsecond line" and t.rows == () and t.problems == ()


def test_format_tag():
    assert format_tag("sub/x.safetensors", 0.5) == "<lora:x:0.5>"
    assert format_tag("x.pt", 1, 0.25) == "<lora:x:1:0.25>"
