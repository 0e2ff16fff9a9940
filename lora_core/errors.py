"""Exception types of the engine.

Every error names the file and, where there is one, the tensor key, and says
what the user can do about it.  Nodes and the CLI show ``str(error)`` as is.
"""
from __future__ import annotations


class PatchbayError(Exception):
    """Base class: ``file`` and ``key`` locate the problem, ``fix`` says what to do."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(f"file {self.file!r}")
        if self.key:
            where.append(f"key {self.key!r}")
        text = self.message
        if where:
            text = f"{text} ({', '.join(where)})"
        if self.fix:
            text = f"{text}. Fix: {self.fix}"
        return text


class LoraFileError(PatchbayError):
    """The file cannot be read: missing, truncated, corrupt, a pickle, bad tensors."""


class UnsafeFileError(LoraFileError):
    """The file needs arbitrary unpickling, which we refuse."""


class FormatError(PatchbayError):
    """The tensors were read but do not form a LoRA we understand."""


class ShapeMismatchError(PatchbayError):
    """A patch does not fit the parameter it targets."""


class ModelMismatchError(PatchbayError):
    """The LoRA was made for another architecture than the model it meets."""


class NonFiniteError(LoraFileError):
    """A tensor holds NaN or Inf."""


class StackError(PatchbayError):
    """A stack entry is invalid (unknown name, path traversal, bad strength)."""


class SweepError(StackError):
    """A sweep specification is invalid: no values, too many, a bad value or axis."""


class RenderError(PatchbayError):
    """Batch rendering against ComfyUI servers failed: unreachable server, failed prompt, bad workflow."""
