"""The stack value v2 (the row editor's JSON) and the legacy forms it must not change."""
import json

import pytest

from lora_core.errors import StackError
from lora_core.stack import STACK_VERSION, V2_STRENGTH_LIMIT, LoraStack, StackEntry, parse_rows, stack_value


def v2(rows, separate=False, **extra):
    return json.dumps({"version": 2, "options": {"separate_clip": separate}, "rows": rows, **extra})


def row(i, lora, s=1.0, clip=None, on=True, **extra):
    return {"id": f"r-{i:08x}", "on": on, "lora": lora, "strength": s, "strength_clip": clip, **extra}


def test_v2_single_strength_drives_clip():
    stack = parse_rows(v2([row(1, "sub/a.safetensors", 0.7, clip=0.2), row(2, "b.safetensors", -1.5)]))
    a, b = stack.entries
    assert (a.lora, a.strength_model, a.strength_clip, a.enabled) == ("sub/a.safetensors", 0.7, 0.7, True)
    assert (b.strength_model, b.strength_clip) == (-1.5, -1.5)
    assert (a.row_id, b.row_id) == ("r-00000001", "r-00000002")


def test_v2_separate_clip_uses_its_column_and_null_means_same():
    stack = parse_rows(v2([row(1, "a.safetensors", 0.7, clip=0.2), row(2, "b.safetensors", 0.9, clip=None)],
                          separate=True))
    assert [(e.strength_model, e.strength_clip) for e in stack.entries] == [(0.7, 0.2), (0.9, 0.9)]


def test_v2_keeps_hash_iclora_off_rows_and_ignores_unknown_fields():
    stack = parse_rows(v2([row(1, "a.safetensors", hash="ab" * 32, iclora=True, color="red", notes={"x": 1}),
                           row(2, "b.safetensors", on=False)], future_option=True))
    a, b = stack.entries
    assert a.file_hash == "ab" * 32 and a.iclora and a.enabled and not b.enabled


def test_v2_skips_empty_rows_and_missing_options():
    value = json.dumps({"version": 2, "rows": [row(1, ""), {"id": "r-2", "on": True, "lora": None},
                                               row(3, "c.safetensors", 2.0, clip=0.5)]})
    (c,) = parse_rows(value).entries
    assert (c.lora, c.strength_model, c.strength_clip) == ("c.safetensors", 2.0, 2.0)
    assert parse_rows(json.dumps({"version": 2})).entries == ()


def test_ids_do_not_change_stack_equality():
    a = parse_rows(v2([row(1, "a.safetensors")]))
    b = parse_rows(v2([row(9, "a.safetensors")]))
    assert a == b and hash(a) == hash(b) and a.entries[0].row_id != b.entries[0].row_id


@pytest.mark.parametrize("bad,match", [
    ({"version": 3, "rows": []}, "version 3"),
    ({"version": 2, "rows": {"a": 1}}, "rows must be a list"),
    ({"version": 2, "options": [], "rows": []}, "options must be an object"),
    ({"version": 2, "rows": [row(1, "a.safetensors", s="lots")]}, "row 1: strength must be a number"),
    ({"version": 2, "rows": [row(1, "a.safetensors", on="yes")]}, "row 1: on must be true or false"),
    ({"version": 2, "rows": [row(1, "a.safetensors", s=V2_STRENGTH_LIMIT + 0.5)]}, "row 1: strength"),
    ({"version": 2, "options": {"separate_clip": True},
      "rows": [row(1, "a.safetensors", clip=-99)]}, "row 1: strength_clip"),
    ({"version": 2, "rows": [row(1, 5)]}, "row 1: lora must be a file name"),
    ({"version": 2, "rows": [row(1, "a.safetensors", hash=1234)]}, "row 1: hash must be"),
])
def test_v2_bad_values_name_the_row(bad, match):
    with pytest.raises(StackError, match=match):
        parse_rows(json.dumps(bad))


def test_legacy_arrays_unchanged():
    legacy = [{"on": True, "lora": "a.safetensors", "strength": 6.0, "strength_clip": 0.25, "iclora": False},
              {"on": False, "lora": "b.safetensors", "strength": 1.0},
              {"lora": "c.safetensors", "strengthTwo": 0.5}]
    stack = parse_rows(json.dumps(legacy))
    assert [(e.lora, e.strength_model, e.strength_clip, e.enabled) for e in stack.entries] == [
        ("a.safetensors", 6.0, 0.25, True), ("b.safetensors", 1.0, 1.0, False), ("c.safetensors", 1.0, 0.5, True)]
    assert all(e.row_id is None for e in stack.entries)
    assert parse_rows(legacy) == stack
    assert parse_rows({"rows": legacy}) == stack  # v1 object form


def test_stack_value_round_trips_through_the_parser():
    stack = LoraStack((StackEntry("a.safetensors", 0.5, 0.25, row_id="r-00000001", file_hash="cd" * 32),
                       StackEntry("b.safetensors", 1.0, 1.0, enabled=False)))
    value = stack_value(stack)
    assert value["version"] == STACK_VERSION and value["options"] == {"separate_clip": True}
    assert parse_rows(json.dumps(value)) == stack
    assert value["rows"][0]["id"] == "r-00000001" and value["rows"][1]["id"].startswith("r-")
    same = stack_value(LoraStack((StackEntry("a.safetensors", 0.5, 0.5),)))
    assert same["options"] == {"separate_clip": False} and same["rows"][0]["strength_clip"] is None
