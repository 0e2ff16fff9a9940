"""JSON from untrusted files with a bound on nesting.

A safetensors header or a metadata string can nest arrays hundreds of
thousands deep: ``json.loads`` then raises ``RecursionError``, and text that
still parses (a few hundred levels) can overflow any later recursive walk
(``json.dumps``, ``repr``).  No LoRA header or metadata value nests deeper
than a handful of levels (safetensors' own reader stops at 128), so deeper
text is refused as malformed JSON.
"""
from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64


class JsonNestingError(ValueError):
    """The text nests arrays or objects deeper than the bound."""


def loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises ``json.JSONDecodeError`` on bad syntax and
    ``JsonNestingError`` (never ``RecursionError``) on nesting past ``max_depth``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonNestingError(f"nested deeper than {max_depth} levels") from None
    # Iterative walk: a recursive one is what this module guards against.
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise JsonNestingError(f"nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children
                           if isinstance(child, (dict, list)))
    return value
