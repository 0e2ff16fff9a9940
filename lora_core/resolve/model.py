"""A model's parameter names, grouped into modules and components.

``model_shapes`` arrives in any naming (ComfyUI's ``diffusion_model.…``, a full
checkpoint's ``model.diffusion_model.…`` / ``cond_stage_model.…``, ComfyUI text
encoders ``clip_l.transformer.…``, a diffusers folder, a bare module).  Here
each parameter key is split into

* a **container** prefix that only says where the weights live
  (``diffusion_model.``, ``clip_g.transformer.``, …) and a **path** inside it;
* a **module** (the path without ``.weight`` / ``.bias`` / ``.scale``), which
  is what LoRA files name.

Each module belongs to a **component**: ``"diffusion"`` (the denoiser), a
text encoder identified as ``clip_l``/``clip_g``/``clip_h``/``t5`` (or
``text_encoder`` when unknown), or ``"other"`` (VAE, schedules), which only
answers to its exact name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

DIFFUSION = "diffusion"
TEXT_ENCODER = "text_encoder"
OTHER = "other"
TE_IDENTITIES = ("clip_l", "clip_g", "clip_h", "t5")

# (container prefix, component or text-encoder identity); longest prefixes first
# at lookup time.  None = decide the identity from the path and the shapes.
CONTAINERS: tuple[tuple[str, Optional[str]], ...] = (
    ("model.diffusion_model.", DIFFUSION),
    ("diffusion_model.", DIFFUSION),
    ("model.", DIFFUSION),  # some DiT checkpoints: model.blocks.0…
    ("unet.", DIFFUSION),  # sd-mecha's kohya SDXL naming
    ("transformer.", DIFFUSION),
    ("cond_stage_model.transformer.", "clip_l"),
    ("conditioner.embedders.0.transformer.", "clip_l"),
    ("text_encoders.clip_l.transformer.", "clip_l"),
    ("text_encoders.clip_g.transformer.", "clip_g"),
    ("text_encoders.clip_h.transformer.", "clip_h"),
    ("text_encoders.t5xxl.transformer.", "t5"),
    ("text_encoders.t5base.transformer.", "t5"),
    ("clip_l.transformer.", "clip_l"),
    ("clip_g.transformer.", "clip_g"),
    ("clip_h.transformer.", "clip_h"),
    ("t5xxl.transformer.", "t5"),
    ("t5base.transformer.", "t5"),
    ("te1.", "clip_l"), ("te2.", "clip_g"), ("te.", None),
    # OpenCLIP towers of original checkpoints (SDXL's G, SD2's H): resblocks naming
    ("conditioner.embedders.1.model.", "clip_g"),
    ("cond_stage_model.model.", "clip_h"),
    ("text_encoder.", None), ("text_encoder_2.", None), ("text_encoder_3.", None),
    ("text_encoders.", TEXT_ENCODER),
    ("first_stage_model.", OTHER), ("vae.", OTHER), ("conditioner.", OTHER),
    ("cond_stage_model.", OTHER),
)
_CONTAINERS_BY_LENGTH = sorted(CONTAINERS, key=lambda c: len(c[0]), reverse=True)
# A container prefix only counts when what follows looks like the component.
_TE_PATH_STARTS = ("text_model.", "encoder.block.", "text_projection", "shared.")
# Parameter suffixes that name a module's weight (first match wins).
WEIGHT_SUFFIXES = (".weight", ".scale")
BIAS_SUFFIX = ".bias"


@dataclass
class Module:
    """One patchable module: its weight (and bias) keys and shapes."""
    name: str  # full module name in the model's own spelling (container included)
    path: str  # name without the container
    component: str
    weight_key: Optional[str] = None
    weight_shape: Optional[tuple[int, ...]] = None
    bias_key: Optional[str] = None
    bias_shape: Optional[tuple[int, ...]] = None


@dataclass
class ModelIndex:
    modules: dict[str, Module]  # full name → module
    by_component: dict[str, dict[str, Module]] = field(default_factory=dict)  # component → path → module

    def component(self, name: str) -> dict[str, Module]:
        return self.by_component.get(name, {})

    @property
    def text_encoders(self) -> list[str]:
        return [c for c in self.by_component if c not in (DIFFUSION, OTHER)]

    @property
    def has_diffusion(self) -> bool:
        return bool(self.by_component.get(DIFFUSION))


def _split_param(key: str) -> tuple[str, str]:
    """(module, role) with role "weight", "bias" or "param" (the key is its own module)."""
    # nn.MultiheadAttention's fused q/k/v (OpenCLIP): module "….attn.in_proj"
    if key.endswith(".in_proj_weight"):
        return key[: -len("_weight")], "weight"
    if key.endswith(".in_proj_bias"):
        return key[: -len("_bias")], "bias"
    if key.endswith(BIAS_SUFFIX):
        return key[: -len(BIAS_SUFFIX)], "bias"
    for s in WEIGHT_SUFFIXES:
        if key.endswith(s):
            return key[: -len(s)], "weight"
    return key, "param"


def _split_container(module: str) -> tuple[str, Optional[str], str]:
    """(container, component-or-identity, path)."""
    for prefix, comp in _CONTAINERS_BY_LENGTH:
        if module.startswith(prefix) and len(module) > len(prefix):
            path = module[len(prefix):]
            if comp in TE_IDENTITIES or comp is None or comp == TEXT_ENCODER:
                if comp == TEXT_ENCODER or comp is None:
                    return prefix, _te_identity_from_path(path), path
                return prefix, comp, path
            if comp == DIFFUSION and prefix in ("model.", "transformer.", "unet.") and _looks_te(path):
                return prefix, _te_identity_from_path(path), path
            return prefix, comp, path
    m = _COMFY_TE.match(module)
    if m and m.group(1) not in _NOT_TE_NAMES:
        # Any other ComfyUI text encoder: "<name>.transformer.…" (gemma3_12b, umt5xxl, qwen25_7b…)
        path = module[m.end():]
        return module[: m.end()], _te_identity_from_path(path), path
    if _looks_te(module):
        return "", _te_identity_from_path(module), module
    return "", DIFFUSION, module


_COMFY_TE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\.transformer\.")
_NOT_TE_NAMES = frozenset({"model", "diffusion_model", "unet", "net"})


def _looks_te(path: str) -> bool:
    return path.startswith(_TE_PATH_STARTS)


def _te_identity_from_path(path: str) -> str:
    if path.startswith("encoder.block.") or path.startswith("shared."):
        return "t5"
    if path.startswith("text_model.") or path.startswith("text_projection"):
        return "clip"  # told apart by hidden size below
    return TEXT_ENCODER


_CLIP_BY_HIDDEN = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}


def build_index(model_shapes: Mapping[str, tuple[int, ...]]) -> ModelIndex:
    modules: dict[str, Module] = {}
    for key, shape in model_shapes.items():
        name, role = _split_param(key)
        mod = modules.get(name)
        if mod is None:
            _, comp, path = _split_container(name)
            mod = modules[name] = Module(name=name, path=path, component=comp or DIFFUSION)
        shape = tuple(int(s) for s in shape)
        if role == "bias":
            mod.bias_key, mod.bias_shape = key, shape
        elif mod.weight_key is None or role == "weight":
            mod.weight_key, mod.weight_shape = key, shape
    # Plain CLIP towers: identity from the hidden size of their final norm or
    # first layer.
    clip_hidden: dict[str, int] = {}
    for m in modules.values():
        if m.component == "clip" and m.weight_shape and m.path.endswith("layer_norm1"):
            container = m.name[: len(m.name) - len(m.path)]
            clip_hidden.setdefault(container, m.weight_shape[0])
    # Bare keys next to a real diffusion container are checkpoint bookkeeping
    # (model_ema.*, schedules such as alphas_cumprod), not denoiser modules.
    if any(m.component == DIFFUSION and m.name != m.path for m in modules.values()):
        for m in modules.values():
            if m.component == DIFFUSION and m.name == m.path:
                m.component = OTHER
    # Loose keys inside a text encoder's container (ComfyUI's
    # ``clip_l.logit_scale``) are encoder bookkeeping too; left as "diffusion"
    # they would make every CLIP look like it also holds a denoiser.
    te_roots = {m.name.split(".", 1)[0] for m in modules.values()
                if m.component not in (DIFFUSION, OTHER) and m.name != m.path}
    for m in modules.values():
        if m.component == DIFFUSION and m.name == m.path and m.name.split(".", 1)[0] in te_roots:
            m.component = OTHER
    by_component: dict[str, dict[str, Module]] = {}
    for m in modules.values():
        if m.component == "clip":
            container = m.name[: len(m.name) - len(m.path)]
            m.component = _CLIP_BY_HIDDEN.get(clip_hidden.get(container, 0), "clip_l")
        by_component.setdefault(m.component, {})[m.path] = m
    return ModelIndex(modules=modules, by_component=by_component)
