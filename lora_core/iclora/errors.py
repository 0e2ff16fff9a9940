"""Errors raised by the IC-LoRA maths and nodes."""
from __future__ import annotations

from ..errors import PatchbayError


class ICLoraError(PatchbayError, ValueError):
    """An IC-LoRA guide or panel cannot be built from the given inputs.

    The message says what is wrong and ``fix`` says what to change.  Raised
    before anything is encoded or appended, so nothing is half-applied.
    """
