"""PatchbayStackFromText: a prompt with ``<lora:name:strength>`` tags → the clean prompt + a LORA_STACK.

Tags are parsed by the pack's one parser (``lora_core.tags``); each tag's
name resolves like a stack row's (``files``: the exact name, else a unique
file with that name or stem in another subfolder), so ``<lora:ink:0.8>``
finds ``styles/ink.safetensors``.  Every malformed tag and every unknown
name is reported at queue time, each in one message naming its tag.
"""
from __future__ import annotations

from ..lora_core.errors import StackError
from ..lora_core.stack import LoraStack, StackEntry
from ..lora_core.tags import PromptTags, parse_prompt_tags
from . import files
from .common import CATEGORY, as_stack


def tag_problems(tags: PromptTags) -> list[str]:
    problems = list(tags.problems)
    for row in tags.rows:
        err = files.validation_error(row.lora)
        if err:
            problems.append(f"tag {row.text!r}: {err}")
    return problems


def stack_from_tags(tags: PromptTags) -> LoraStack:
    problems = tag_problems(tags)
    if problems:
        raise StackError("; ".join(problems),
                         fix="write tags as <lora:name:strength> or <lora:name:model:clip> with installed LoRAs")
    return LoraStack(tuple(StackEntry(lora=files.resolve_name(r.lora), strength_model=r.strength_model,
                                      strength_clip=r.strength_clip) for r in tags.rows))


class PatchbayStackFromText:
    DESCRIPTION = ("Reads A1111-style <lora:name:strength> / <lora:name:model:clip> tags out of a prompt: "
                   "outputs the prompt without them and a LoRA stack of the tagged LoRAs (names found like "
                   "the stack's: exact, or the same file name in another folder). Bad tags are named.")
    CATEGORY = CATEGORY
    FUNCTION = "parse"
    RETURN_TYPES = ("STRING", "LORA_STACK")
    RETURN_NAMES = ("prompt", "stack")
    OUTPUT_TOOLTIPS = ("The prompt with the tags removed.", "The incoming stack followed by the tagged LoRAs.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "default": "a photo of a cat <lora:example:0.8>",
                                    "tooltip": "A prompt with <lora:name:strength> or <lora:name:model:clip> tags."}),
            },
            "optional": {
                "stack": ("LORA_STACK", {"tooltip": "Optional stack to extend (its rows come first)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, text=None):
        if text is None:  # linked from another node: checked when it runs
            return True
        problems = tag_problems(parse_prompt_tags(text))
        return True if not problems else "; ".join(problems)

    def parse(self, text, stack=None):
        tags = parse_prompt_tags(text)
        return (tags.prompt, as_stack(stack) + stack_from_tags(tags))


NODE_CLASS_MAPPINGS = {"PatchbayStackFromText": PatchbayStackFromText}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayStackFromText": "LoRA Stack from Prompt Tags"}
