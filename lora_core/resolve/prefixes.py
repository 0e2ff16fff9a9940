"""File prefixes: the one list of how LoRA files spell the part of a model they address.

Each row is (prefix, style, components, label):

* ``style``: ``dotted`` (the rest of the name is a dotted module path:
  ``unet.``, ``transformer.``, ``diffusion_model.``…) or ``flat`` (``lora_unet_``,
  ``lycoris_``…: the path with ``.`` → ``_``, only ever matched against flattened
  aliases, never reversed);
* ``components``: which parts of a pipeline the prefix may address;
* ``label``: the tool family that writes it, for ``formats.describe_format``.

Used by ``resolve.table`` (lookup) and ``formats`` (the format label); longest
prefix first, and a prefix that matches but finds nothing falls through to the
next one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .model import DIFFUSION, TEXT_ENCODER

DOTTED = "dotted"
FLAT = "flat"
ALL_TE = ("clip_l", "clip_g", "clip_h", "t5", TEXT_ENCODER)


@dataclass(frozen=True)
class FilePrefix:
    prefix: str
    style: str
    components: tuple[str, ...]
    label: str


FILE_PREFIXES: tuple[FilePrefix, ...] = tuple(sorted((FilePrefix(*row) for row in (
    ("lora_unet__", FLAT, (DIFFUSION,), "kohya"),  # Wan-Fun's double underscore
    ("lora_unet_", FLAT, (DIFFUSION,), "kohya"),
    ("lora_prior_unet_", FLAT, (DIFFUSION,), "kohya"),
    ("lora_transformer_", FLAT, (DIFFUSION,), "onetrainer"),
    ("lycoris_", FLAT, (DIFFUSION,) + ALL_TE, "lycoris"),
    ("oft_unet_", FLAT, (DIFFUSION,), "kohya-oft"),
    ("lora_te_", FLAT, ("clip_l", "clip_h", "clip_g"), "kohya"),
    ("lora_te1_", FLAT, ("clip_l", "t5"), "kohya"),
    ("lora_te2_", FLAT, ("clip_g", "t5"), "kohya"),
    ("lora_te3_", FLAT, ("t5",), "kohya"),
    ("lora_prior_te_", FLAT, ("clip_g",), "kohya"),
    ("model.diffusion_model.", DOTTED, (DIFFUSION,), "comfy"),
    ("diffusion_model.", DOTTED, (DIFFUSION,), "comfy"),
    ("unet.base_model.model.", DOTTED, (DIFFUSION,), "diffusers"),
    ("base_model.model.", DOTTED, (DIFFUSION,) + ALL_TE, "peft"),
    ("unet.", DOTTED, (DIFFUSION,), "diffusers"),
    ("transformer.", DOTTED, (DIFFUSION,), "diffusers"),
    ("model.", DOTTED, (DIFFUSION,), "bare"),
    ("text_encoder.", DOTTED, ("clip_l", "clip_h", TEXT_ENCODER), "diffusers"),
    ("text_encoder_2.", DOTTED, ("clip_g", "t5", TEXT_ENCODER), "diffusers"),
    ("text_encoder_3.", DOTTED, ("t5", TEXT_ENCODER), "diffusers"),
    ("text_encoders.clip_l.transformer.", DOTTED, ("clip_l",), "comfy"),
    ("text_encoders.clip_g.transformer.", DOTTED, ("clip_g",), "comfy"),
    ("text_encoders.clip_h.transformer.", DOTTED, ("clip_h",), "comfy"),
    ("text_encoders.t5xxl.transformer.", DOTTED, ("t5",), "comfy"),
    ("text_encoders.t5base.transformer.", DOTTED, ("t5",), "comfy"),
    ("text_encoders.", DOTTED, ALL_TE, "comfy"),  # other encoders: the model's own keys
    ("", DOTTED, (DIFFUSION,) + ALL_TE, "bare"),
)), key=lambda r: len(r.prefix), reverse=True))

# Names that address a text encoder whatever follows.
TE_FILE_PREFIXES = ("lora_te", "lora_prior_te_", "text_encoder", "text_encoders.")


def prefix_label(name: str) -> str:
    """The label of the longest known prefix of a module name ("kohya", "peft", …; "bare" if none)."""
    for row in FILE_PREFIXES:
        if name.startswith(row.prefix):
            return row.label
    return "bare"
