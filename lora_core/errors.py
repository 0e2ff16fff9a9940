"""Exception types of the engine.

Every error names the file and, where there is one, the tensor key, and says
what the user can do about it.  Nodes and the CLI show ``str(error)`` as is.

ComfyUI shows a failed node's exception type as ``module.qualname``; for a
custom node the module path starts with its install folder
(``/…/custom_nodes/lora-patchbay.lora_core.errors.LoraFileError``).  Every
error type here and in subclasses elsewhere therefore reports the module
``lora_patchbay``, so users see ``lora_patchbay.LoraFileError`` wherever the
pack is installed.
"""
from __future__ import annotations


PUBLIC_MODULE = "lora_patchbay"


class PatchbayError(Exception):
    """Base class: ``file`` and ``key`` locate the problem, ``fix`` says what to do."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = PUBLIC_MODULE

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


PatchbayError.__module__ = PUBLIC_MODULE  # subclasses get it from __init_subclass__


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
