"""Production parameter names (and shapes) of real models, for resolver tests.

Sources:

* sd-mecha 1.1.8's model configs (``sd_mecha/extensions/builtin/model_configs``):
  SD1.5 (``sd1-ldm``, and ``sd1-kohya`` for the same model in diffusers names),
  SDXL (``sdxl-sgm``, ``sdxl-kohya`` for HF text-encoder names,
  ``sdxl-diffusers_unet_only``), SD3 (``sd3-comfyui``), Flux.1 (``flux-flux``).
  Keys are renamed to the containers ComfyUI uses at run time
  (``diffusion_model.…``, ``clip_l.transformer.…``, ``t5xxl.transformer.…``).
* diffusers 0.42 models built on the meta device with small configs (Wan,
  LTX-2, Qwen-Image, Z-Image, UNet2DConditionModel) for diffusers names.
* hand-written original-checkpoint names where no package ships them, each
  with its source named (Wan: ComfyUI ``comfy/ldm/wan/model.py`` module tree).

LoRA module names are generated the way trainers spell them (see the
``*_names`` helpers) and patches are built with meta tensors of the right
shapes, so nothing here allocates real weights.
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Mapping, Optional

import torch
import yaml

from lora_core.ir import LoraFile, LoraWeights, ModulePatch

Shapes = dict[str, tuple[int, ...]]


def _mecha_dir() -> str:
    # Located without importing sd_mecha (its import is slow and not needed).
    import importlib.util
    spec = importlib.util.find_spec("sd_mecha")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sd-mecha is not installed (pip install sd-mecha==1.1.8)")
    return os.path.join(list(spec.submodule_search_locations)[0], "extensions", "builtin", "model_configs")


@functools.lru_cache(maxsize=None)
def mecha_config(identifier: str) -> dict[str, Shapes]:
    """component → {key: shape} of one sd-mecha model config."""
    with open(os.path.join(_mecha_dir(), f"{identifier}.yaml"), "r", encoding="utf-8") as f:
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {comp: {k: tuple(v["shape"]) for k, v in keys.items()}
            for comp, keys in data["components"].items()}


def _renamed(shapes: Mapping[str, tuple[int, ...]], old: str, new: str) -> Shapes:
    return {new + k[len(old):]: v for k, v in shapes.items() if k.startswith(old)}


# ---------------------------------------------------------------- ComfyUI-named models

def sd15_unet() -> Shapes:
    return _renamed(mecha_config("sd1-ldm")["diffuser"], "model.diffusion_model.", "diffusion_model.")


def sd15_clip() -> Shapes:
    return _renamed(mecha_config("sd1-ldm")["clip_l"], "cond_stage_model.transformer.", "clip_l.transformer.")


def sdxl_unet() -> Shapes:
    return _renamed(mecha_config("sdxl-sgm")["diffuser"], "model.diffusion_model.", "diffusion_model.")


def sdxl_clip() -> Shapes:
    cfg = mecha_config("sdxl-kohya")
    out = _renamed(cfg["clip_l"], "te1.", "clip_l.transformer.")
    out.update(_renamed(cfg["clip_g"], "te2.", "clip_g.transformer."))
    return out


def sd3_diffusion() -> Shapes:
    return _renamed(mecha_config("sd3-comfyui")["diffuser"], "model.diffusion_model.", "diffusion_model.")


def flux_diffusion() -> Shapes:
    return _renamed(mecha_config("flux-flux")["diffuser"], "model.diffusion_model.", "diffusion_model.")


def flux_clip() -> Shapes:
    cfg = mecha_config("flux-flux")
    out = _renamed(cfg["clip_l"], "text_encoders.clip_l.transformer.", "clip_l.transformer.")
    out.update(_renamed(cfg["t5xxl"], "text_encoders.t5xxl.transformer.", "t5xxl.transformer."))
    return out


def sd15_unet_diffusers() -> Shapes:
    """The same SD1.5 UNet in a diffusers folder's names (``down_blocks.0…``)."""
    return _renamed(mecha_config("sd1-kohya")["diffuser"], "unet.", "")


def sdxl_unet_diffusers() -> Shapes:
    return dict(mecha_config("sdxl-diffusers_unet_only")["diffuser"])


# ---------------------------------------------------------------- diffusers models on meta

def meta_named_parameters(model_cls, **config) -> Shapes:
    with torch.device("meta"):
        model = model_cls(**config)
    return {k: tuple(v.shape) for k, v in model.named_parameters()}


@functools.lru_cache(maxsize=None)
def wan_diffusers(i2v: bool = False) -> Shapes:
    from diffusers import WanTransformer3DModel
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
               out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
               cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    if i2v:
        cfg.update(image_dim=24, added_kv_proj_dim=16)
    return meta_named_parameters(WanTransformer3DModel, **cfg)


def wan_original(*, dim: int = 16, ffn: int = 32, layers: int = 2, text_dim: int = 16, freq_dim: int = 16,
                 in_dim: int = 4, out_dim: int = 4, patch=(1, 2, 2), i2v: bool = False,
                 image_dim: int = 24) -> Shapes:
    """Wan 2.1 checkpoint names as ComfyUI's ``comfy/ldm/wan/model.py`` (and the
    official ``WanModel``) lay them out: ``blocks.N.self_attn.{q,k,v,o,norm_q,norm_k}``,
    ``cross_attn`` likewise (+ ``k_img``/``v_img``/``norm_k_img`` for I2V),
    ``norm3`` (cross-attention norm), ``ffn.0``/``ffn.2``, ``modulation``;
    ``patch_embedding``, ``text_embedding.0/2``, ``time_embedding.0/2``,
    ``time_projection.1``, ``head.head``, ``head.modulation``, ``img_emb.proj.*``."""
    s: Shapes = {}

    def linear(name, out, inp, bias=True):
        s[f"{name}.weight"] = (out, inp)
        if bias:
            s[f"{name}.bias"] = (out,)

    k = patch[0] * patch[1] * patch[2]
    s["patch_embedding.weight"] = (dim, in_dim, *patch)
    s["patch_embedding.bias"] = (dim,)
    linear("text_embedding.0", dim, text_dim)
    linear("text_embedding.2", dim, dim)
    linear("time_embedding.0", dim, freq_dim)
    linear("time_embedding.2", dim, dim)
    linear("time_projection.1", dim * 6, dim)
    for n in range(layers):
        b = f"blocks.{n}"
        for attn in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                linear(f"{b}.{attn}.{p}", dim, dim)
            s[f"{b}.{attn}.norm_q.weight"] = (dim,)
            s[f"{b}.{attn}.norm_k.weight"] = (dim,)
        if i2v:
            linear(f"{b}.cross_attn.k_img", dim, dim)
            linear(f"{b}.cross_attn.v_img", dim, dim)
            s[f"{b}.cross_attn.norm_k_img.weight"] = (dim,)
        s[f"{b}.norm3.weight"] = (dim,)
        s[f"{b}.norm3.bias"] = (dim,)
        linear(f"{b}.ffn.0", ffn, dim)
        linear(f"{b}.ffn.2", dim, ffn)
        s[f"{b}.modulation"] = (1, 6, dim)
    linear("head.head", out_dim * k, dim)
    s["head.modulation"] = (1, 2, dim)
    if i2v:
        s["img_emb.proj.0.weight"] = (image_dim,)
        s["img_emb.proj.0.bias"] = (image_dim,)
        linear("img_emb.proj.1", image_dim, image_dim)
        linear("img_emb.proj.3", dim, image_dim)
        s["img_emb.proj.4.weight"] = (dim,)
        s["img_emb.proj.4.bias"] = (dim,)
    return s


@functools.lru_cache(maxsize=None)
def ltx2_diffusers() -> Shapes:
    from diffusers import LTX2VideoTransformer3DModel
    return meta_named_parameters(
        LTX2VideoTransformer3DModel, in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4,
        audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=2, caption_channels=16)


@functools.lru_cache(maxsize=None)
def qwen_image_diffusers() -> Shapes:
    from diffusers import QwenImageTransformer2DModel
    return meta_named_parameters(QwenImageTransformer2DModel, patch_size=2, in_channels=16, out_channels=4,
                                 num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                 joint_attention_dim=16, axes_dims_rope=(2, 2, 4))


@functools.lru_cache(maxsize=None)
def z_image_diffusers() -> Shapes:
    from diffusers import ZImageTransformer2DModel
    return meta_named_parameters(ZImageTransformer2DModel, all_patch_size=(2,), all_f_patch_size=(1,),
                                 in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
                                 n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])


def prefixed(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> Shapes:
    return {prefix + k: v for k, v in shapes.items()}


# ---------------------------------------------------------------- patches

def module_shapes(shapes: Mapping[str, tuple[int, ...]], container: str = "",
                  dims: Iterable[int] = (2, 4, 5)) -> dict[str, tuple[int, ...]]:
    """module path (container stripped) → weight shape, for weights of the given ranks."""
    out = {}
    for k, v in shapes.items():
        if k.startswith(container) and k.endswith(".weight") and len(v) in tuple(dims):
            out[k[len(container):-len(".weight")]] = tuple(v)
    return out


def lora_patch(name: str, weight_shape: tuple[int, ...], rank: int = 4,
               keys: Optional[tuple[str, ...]] = None) -> ModulePatch:
    """A plain LoRA patch for ``weight_shape`` with meta tensors (linear or conv)."""
    out, inp = weight_shape[0], weight_shape[1]
    kernel = tuple(weight_shape[2:])
    up = torch.empty((out, rank) + (1,) * len(kernel), device="meta")
    down = torch.empty((rank, inp) + kernel, device="meta")
    return ModulePatch(name=name, weight=LoraWeights(up=up, down=down), scale=1.0,
                       keys=keys or (f"{name}.lora_up.weight", f"{name}.lora_down.weight"))


def lora_file(patches: Iterable[ModulePatch], path: str = "<test>") -> LoraFile:
    return LoraFile(path=path, format="test", patches=tuple(patches))


# ---------------------------------------------------------------- oracles

def row_tagged(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> tuple[list[str], dict]:
    """Small stand-in tensors for a checkpoint: key #i becomes a (rows, 1) float64
    tensor whose row r holds i·2²⁴ + r, so after a converter renames, splits or
    swaps rows, :func:`decode_rows` tells where every output row came from."""
    keys = sorted(shapes)
    out = {}
    for i, k in enumerate(keys):
        shape = shapes[k]
        rows = shape[0] if len(shape) else 1
        t = torch.arange(rows, dtype=torch.float64) + i * 2 ** 24
        out[prefix + k] = t.reshape(rows, 1) if len(shape) > 1 else t
    return keys, out


def decode_rows(keys: list[str], converted: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, int, int, bool]]:
    """converted key → (source key, first row, row count, rows are contiguous)."""
    res = {}
    for new_key, t in converted.items():
        v = t.reshape(-1).to(torch.int64)
        src = int(v[0]) >> 24
        start = int(v[0]) & (2 ** 24 - 1)
        contiguous = bool(torch.equal(v - v[0], torch.arange(v.numel())))
        res[new_key] = (keys[src], start, v.numel(), contiguous)
    return res


def diffusers_oracle(convert, original: Mapping[str, tuple[int, ...]], *args) -> dict[str, tuple[str, int, int, bool]]:
    """diffusers' own single-file converter as the oracle of original → diffusers names."""
    keys, sd = row_tagged(original, "model.diffusion_model.")
    return decode_rows(keys, convert(dict(sd), *args))
