"""Stack rows arrive from workflow JSON and API prompts: hostile nesting is a StackError, never a RecursionError."""
import pytest

from lora_core.errors import StackError
from lora_core.stack import parse_rows


@pytest.mark.parametrize("depth", [100, 200_000])
def test_deeply_nested_rows_are_a_stack_error(depth):
    with pytest.raises(StackError, match="nested"):
        parse_rows("[" * depth + "]" * depth)
