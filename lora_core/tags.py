"""A1111 prompt tags: ``<lora:name:strength>`` and ``<lora:name:model:clip>``.

The one parser of tags in the pack: the stack nodes (pasted tags), the
prompt-tag node and the ``render`` CLI all call :func:`parse_prompt_tags`.

* ``<lora:name>`` means strength 1 (as in A1111); ``<lora:name:s>`` sets the
  model and text-encoder strengths to ``s``; ``<lora:name:m:c>`` sets them
  apart.  ``<lyco:…>`` is read the same way.  The tag word is case-blind.
* A tag that does not parse (empty name, a strength that is not a finite
  number, more than three fields, no closing ``>``) is one problem naming that
  tag; every problem is reported, not only the first.
* The clean prompt is the text with the tags removed and the whitespace they
  leave collapsed (``"a, <lora:x:1>, b"`` → ``"a, b"``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from .errors import StackError

# The opening of a tag; its body runs to the next ">" (or is unclosed).
_OPEN = re.compile(r"<\s*(lora|lyco)\s*:", re.IGNORECASE)
_MAX_TAG_CHARS = 512  # a tag body longer than this is not a tag but an unclosed one


@dataclass(frozen=True)
class TagRow:
    """One parsed tag: a stack row."""
    lora: str
    strength_model: float
    strength_clip: float
    text: str  # the tag as written

    def as_row(self) -> dict:
        return {"on": True, "lora": self.lora, "strength": self.strength_model,
                "strength_clip": self.strength_clip}


@dataclass(frozen=True)
class PromptTags:
    prompt: str                 # the prompt without its tags
    rows: tuple[TagRow, ...]
    problems: tuple[str, ...]   # one message per malformed tag

    def raise_problems(self) -> None:
        if self.problems:
            raise StackError("; ".join(self.problems),
                             fix="write tags as <lora:name:strength> or <lora:name:model_strength:clip_strength>")


def _shown(tag: str) -> str:
    return tag if len(tag) <= 80 else tag[:77] + "..."


def _strength(text: str, tag: str, what: str) -> tuple[Optional[float], Optional[str]]:
    try:
        value = float(text.strip())
    except ValueError:
        return None, f"tag {_shown(tag)!r}: {what} {text.strip()!r} is not a number"
    if not math.isfinite(value):
        return None, f"tag {_shown(tag)!r}: {what} must be finite, got {text.strip()!r}"
    return value, None


def _parse_body(body: str, tag: str) -> tuple[Optional[TagRow], Optional[str]]:
    fields = body.split(":")
    name = fields[0].strip()
    if not name:
        return None, f"tag {_shown(tag)!r} has no LoRA name"
    if len(fields) > 3:
        return None, (f"tag {_shown(tag)!r} has {len(fields)} fields; "
                      "a tag is <lora:name:strength> or <lora:name:model:clip>")
    model = clip = 1.0
    if len(fields) >= 2:
        model, err = _strength(fields[1], tag, "strength")
        if err:
            return None, err
        clip = model
    if len(fields) == 3:
        clip, err = _strength(fields[2], tag, "clip strength")
        if err:
            return None, err
    return TagRow(lora=name, strength_model=model, strength_clip=clip, text=tag), None


def _tidy(text: str) -> str:
    lines = []
    for line in text.splitlines():
        line = re.sub(r"[ \t]+", " ", line)
        line = re.sub(r"\s+([,.;])", r"\1", line)        # space left before a comma
        line = re.sub(r"([,;])(\s*[,;])+", r"\1", line)  # ", ," left by a removed tag
        lines.append(line.strip().strip(",;").strip())
    return "\n".join(lines).strip()


def parse_prompt_tags(text: str) -> PromptTags:
    """Split ``text`` into the clean prompt and the tags' stack rows (see the module doc)."""
    text = text or ""
    rows: list[TagRow] = []
    problems: list[str] = []
    kept: list[str] = []
    pos = 0
    while True:
        m = _OPEN.search(text, pos)
        if m is None:
            kept.append(text[pos:])
            break
        kept.append(text[pos:m.start()])
        close = text.find(">", m.end())
        nxt = _OPEN.search(text, m.end())
        if close < 0 or (nxt is not None and nxt.start() < close) or close - m.end() > _MAX_TAG_CHARS:
            end = nxt.start() if nxt is not None else len(text)
            tag = text[m.start():end].rstrip()
            problems.append(f"tag {_shown(tag)!r} is not closed with '>'")
            pos = end
            continue
        tag = text[m.start():close + 1]
        row, err = _parse_body(text[m.end():close], tag)
        if err:
            problems.append(err)
        else:
            rows.append(row)
        pos = close + 1
    return PromptTags(prompt=_tidy("".join(kept)), rows=tuple(rows),
                      problems=tuple(problems))


def has_tags(text: str) -> bool:
    return _OPEN.search(text or "") is not None


def lora_stem(name: str) -> str:
    """The name shown in tags and labels: the file name without folder and extension."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".safetensors", ".pt", ".ckpt", ".bin", ".pth"):
        if stem.lower().endswith(ext):
            return stem[: -len(ext)]
    return stem


def format_tag(name: str, strength: float, strength_clip: Optional[float] = None) -> str:
    """``<lora:stem:s>``, or ``<lora:stem:s:c>`` when the clip strength differs."""
    s = f"{strength:g}"
    if strength_clip is not None and strength_clip != strength:
        return f"<lora:{lora_stem(name)}:{s}:{strength_clip:g}>"
    return f"<lora:{lora_stem(name)}:{s}>"


__all__ = ["TagRow", "PromptTags", "parse_prompt_tags", "has_tags", "lora_stem", "format_tag"]
