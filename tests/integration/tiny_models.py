"""Tiny random-weight models in ComfyUI's native (single-file) key layouts.

Every builder returns a plain ``{key: tensor}`` state dict whose key names and
shapes are what the public checkpoints of that family use, so ComfyUI's
``model_detection`` recognises the family from the state dict alone.  Nothing
here imports ComfyUI.

Families and the smallest sizes ComfyUI accepts (checked on v0.3.64 and
v0.14.x):

* Flux (BFL layout, ``UNETLoader``).  Newer ComfyUI (>= ~0.3.7x, incl.
  v0.14) reads ``hidden_size`` / ``context_in_dim`` from ``img_in`` /
  ``txt_in`` and sets ``num_heads = hidden_size // sum(axes_dim)`` with
  ``axes_dim = [16, 56, 56]``, so hidden 128 (1 head of 128) works:
  ~1.6 M parameters.  **v0.3.64 hard-codes hidden 3072, 24 heads and
  context 4096**, so the smallest Flux it loads is full width with one double
  block and no single block (~394 M parameters, ~790 MB in fp16).  Use
  :func:`flux_config_for` to pick.
* LTX-Video (``UNETLoader``): 32 heads are fixed; ``attention_head_dim`` is
  ``attn2.to_k.out // 32`` and ``in_channels`` (128) / ``caption_channels``
  (4096) are fixed, so head dim 4 (inner dim 128), one layer: ~1 M params.
* SD1.5 UNet (``UNETLoader`` or inside a checkpoint): ComfyUI matches SD15 on
  ``model_channels == 320`` and ``context_dim == 768`` only, so one level with
  one res block and one transformer keeps it at ~26 M params (~100 MB fp32).
* CLIP-L text encoder (``CLIPLoader`` type ``stable_diffusion``): ComfyUI
  builds the fixed 12-layer 768-wide config, so all 123 M params must be
  present (~246 MB in fp16); missing keys would stay uninitialised.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

Shape = Tuple[int, ...]
StateDict = Dict[str, torch.Tensor]

# --------------------------------------------------------------------------
# generic filler
# --------------------------------------------------------------------------


def _fill(spec: List[Tuple[str, Shape]], *, seed: int, dtype: torch.dtype,
          std: float = 0.02) -> StateDict:
    """Deterministic values for a (key, shape) list.

    Norm scales/weights (1-D keys containing 'norm' or ending in '.scale')
    are 1 + small noise, biases small noise, everything else N(0, std).
    """
    g = torch.Generator().manual_seed(seed)
    out: StateDict = {}
    gen_dtype = dtype if dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) else torch.float32
    for key, shape in spec:
        t = torch.randn(shape, generator=g, dtype=gen_dtype)  # in place below: fast for 100M+
        leaf = key.rsplit(".", 1)[-1]
        is_norm = len(shape) == 1 and ("norm" in key or leaf == "scale" or ".ln" in key)
        if is_norm and leaf in ("weight", "scale"):
            t.mul_(0.01).add_(1.0)
        elif leaf == "bias":
            t.mul_(std * 0.5)
        else:
            t.mul_(std)
        out[key] = t if t.dtype == dtype else t.to(dtype)
    return out


def _linear(spec, name, fan_out, fan_in, bias=True):
    spec.append((f"{name}.weight", (fan_out, fan_in)))
    if bias:
        spec.append((f"{name}.bias", (fan_out,)))


def _conv(spec, name, c_out, c_in, k, bias=True):
    spec.append((f"{name}.weight", (c_out, c_in, k, k)))
    if bias:
        spec.append((f"{name}.bias", (c_out,)))


def _norm(spec, name, dim, bias=True):
    spec.append((f"{name}.weight", (dim,)))
    if bias:
        spec.append((f"{name}.bias", (dim,)))


def parameter_count(sd: StateDict) -> int:
    return sum(t.numel() for t in sd.values())


# --------------------------------------------------------------------------
# Flux (Black Forest Labs single-file layout)
# --------------------------------------------------------------------------

FLUX_AXES_DIM_SUM = 16 + 56 + 56  # = 128, ComfyUI's head dim for Flux.1


@dataclass(frozen=True)
class FluxConfig:
    hidden_size: int = 128
    depth: int = 1
    depth_single_blocks: int = 1
    in_channels: int = 16           # latent channels; patch 2x2 -> img_in fan-in 64
    context_in_dim: int = 4096      # text feature width (T5-XXL in real Flux)
    vec_in_dim: Optional[int] = 768  # pooled CLIP width; None = no vector_in
    mlp_ratio: float = 4.0
    guidance_embed: bool = False    # True = Flux-dev-like guidance_in

    @property
    def num_heads(self) -> int:
        return self.hidden_size // FLUX_AXES_DIM_SUM


# Smallest Flux each ComfyUI generation can load (see module doc).
FLUX_TINY = FluxConfig()
FLUX_V0364_MIN = FluxConfig(hidden_size=3072, depth=1, depth_single_blocks=0,
                            context_in_dim=4096, vec_in_dim=768)


def flux_keys(cfg: FluxConfig) -> List[Tuple[str, Shape]]:
    h = cfg.hidden_size
    assert h % FLUX_AXES_DIM_SUM == 0, "Flux hidden_size must be a multiple of 128"
    head = FLUX_AXES_DIM_SUM
    mlp = int(h * cfg.mlp_ratio)
    s: List[Tuple[str, Shape]] = []
    _linear(s, "img_in", h, cfg.in_channels * 4)
    _linear(s, "time_in.in_layer", h, 256)
    _linear(s, "time_in.out_layer", h, h)
    if cfg.vec_in_dim:
        _linear(s, "vector_in.in_layer", h, cfg.vec_in_dim)
        _linear(s, "vector_in.out_layer", h, h)
    if cfg.guidance_embed:
        _linear(s, "guidance_in.in_layer", h, 256)
        _linear(s, "guidance_in.out_layer", h, h)
    _linear(s, "txt_in", h, cfg.context_in_dim)
    for i in range(cfg.depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            _linear(s, f"{p}_mod.lin", 6 * h, h)
            _linear(s, f"{p}_attn.qkv", 3 * h, h)
            s.append((f"{p}_attn.norm.query_norm.scale", (head,)))
            s.append((f"{p}_attn.norm.key_norm.scale", (head,)))
            _linear(s, f"{p}_attn.proj", h, h)
            _linear(s, f"{p}_mlp.0", mlp, h)
            _linear(s, f"{p}_mlp.2", h, mlp)
    for i in range(cfg.depth_single_blocks):
        p = f"single_blocks.{i}"
        _linear(s, f"{p}.linear1", 3 * h + mlp, h)
        _linear(s, f"{p}.linear2", h, h + mlp)
        s.append((f"{p}.norm.query_norm.scale", (head,)))
        s.append((f"{p}.norm.key_norm.scale", (head,)))
        _linear(s, f"{p}.modulation.lin", 3 * h, h)
    _linear(s, "final_layer.linear", cfg.in_channels * 4, h)
    _linear(s, "final_layer.adaLN_modulation.1", 2 * h, h)
    return s


def flux_state_dict(cfg: FluxConfig = FLUX_TINY, *, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> StateDict:
    """Flux.1 transformer, bare keys (``img_in.weight`` ...), for UNETLoader."""
    return _fill(flux_keys(cfg), seed=seed, dtype=dtype)


def flux_shape_detection_supported(comfy_dir: os.PathLike) -> bool:
    """True if this ComfyUI infers Flux width from ``img_in``/``txt_in``."""
    try:
        src = (Path(comfy_dir) / "comfy" / "model_detection.py").read_text()
    except OSError:
        return False
    return '"{}txt_in.weight".format(key_prefix)' in src or "txt_in_key" in src


def flux_config_for(comfy_dir: os.PathLike) -> FluxConfig:
    return FLUX_TINY if flux_shape_detection_supported(comfy_dir) else FLUX_V0364_MIN


# --------------------------------------------------------------------------
# LTX-Video (Lightricks, ComfyUI single-file layout)
# --------------------------------------------------------------------------

LTXV_HEADS = 32  # fixed by ComfyUI's detection (to_k.out // 32)


@dataclass(frozen=True)
class LTXVConfig:
    attention_head_dim: int = 4     # inner dim = 32 * 4 = 128
    num_layers: int = 1
    in_channels: int = 128          # fixed by ComfyUI (LTXV latent channels)
    caption_channels: int = 4096    # fixed by ComfyUI (T5-XXL width)

    @property
    def inner_dim(self) -> int:
        return LTXV_HEADS * self.attention_head_dim


LTXV_TINY = LTXVConfig()


def ltxv_keys(cfg: LTXVConfig) -> List[Tuple[str, Shape]]:
    d = cfg.inner_dim
    s: List[Tuple[str, Shape]] = [("scale_shift_table", (2, d))]
    _linear(s, "patchify_proj", d, cfg.in_channels)
    _linear(s, "adaln_single.emb.timestep_embedder.linear_1", d, 256)
    _linear(s, "adaln_single.emb.timestep_embedder.linear_2", d, d)
    _linear(s, "adaln_single.linear", 6 * d, d)
    _linear(s, "caption_projection.linear_1", d, cfg.caption_channels)
    _linear(s, "caption_projection.linear_2", d, d)
    for i in range(cfg.num_layers):
        p = f"transformer_blocks.{i}"
        s.append((f"{p}.scale_shift_table", (6, d)))
        for attn in ("attn1", "attn2"):
            s.append((f"{p}.{attn}.q_norm.weight", (d,)))
            s.append((f"{p}.{attn}.k_norm.weight", (d,)))
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                _linear(s, f"{p}.{attn}.{proj}", d, d)
        _linear(s, f"{p}.ff.net.0.proj", 4 * d, d)
        _linear(s, f"{p}.ff.net.2", d, 4 * d)
    _linear(s, "proj_out", cfg.in_channels, d)
    return s


def ltxv_state_dict(cfg: LTXVConfig = LTXV_TINY, *, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> StateDict:
    """LTX-Video transformer, bare keys, for UNETLoader."""
    return _fill(ltxv_keys(cfg), seed=seed, dtype=dtype)


# --------------------------------------------------------------------------
# SD1.5-style UNet (original LDM layout) and CLIP-L text encoder
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SD15Config:
    model_channels: int = 320       # ComfyUI's SD15 match needs 320
    context_dim: int = 768          # ... and 768
    channel_mult: Tuple[int, ...] = (1,)
    num_res_blocks: int = 1
    num_head_channels: int = 64     # SD1.5 uses 8 heads x 40; irrelevant to keys
    in_channels: int = 4


SD15_TINY = SD15Config()


def _resblock(s, p, c_in, c_out, emb):
    _norm(s, f"{p}.in_layers.0", c_in)
    _conv(s, f"{p}.in_layers.2", c_out, c_in, 3)
    _linear(s, f"{p}.emb_layers.1", c_out, emb)
    _norm(s, f"{p}.out_layers.0", c_out)
    _conv(s, f"{p}.out_layers.3", c_out, c_out, 3)
    if c_in != c_out:
        _conv(s, f"{p}.skip_connection", c_out, c_in, 1)


def _spatial_transformer(s, p, c, ctx):
    _norm(s, f"{p}.norm", c)
    _conv(s, f"{p}.proj_in", c, c, 1)  # SD1.x: 1x1 conv (use_linear_in_transformer False)
    b = f"{p}.transformer_blocks.0"
    for a, kv_in in (("attn1", c), ("attn2", ctx)):
        _linear(s, f"{b}.{a}.to_q", c, c, bias=False)
        _linear(s, f"{b}.{a}.to_k", c, kv_in, bias=False)
        _linear(s, f"{b}.{a}.to_v", c, kv_in, bias=False)
        _linear(s, f"{b}.{a}.to_out.0", c, c)
    _linear(s, f"{b}.ff.net.0.proj", 8 * c, c)  # GEGLU: 2 x 4c
    _linear(s, f"{b}.ff.net.2", c, 4 * c)
    for n in ("norm1", "norm2", "norm3"):
        _norm(s, f"{b}.{n}", c)
    _conv(s, f"{p}.proj_out", c, c, 1)


def sd15_unet_keys(cfg: SD15Config = SD15_TINY, prefix: str = "") -> List[Tuple[str, Shape]]:
    mc = cfg.model_channels
    emb = 4 * mc
    s: List[Tuple[str, Shape]] = []
    _linear(s, "time_embed.0", emb, mc)
    _linear(s, "time_embed.2", emb, emb)
    _conv(s, "input_blocks.0.0", mc, cfg.in_channels, 3)
    chans = [mc]
    ch = mc
    idx = 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            _resblock(s, f"input_blocks.{idx}.0", ch, mult * mc, emb)
            ch = mult * mc
            _spatial_transformer(s, f"input_blocks.{idx}.1", ch, cfg.context_dim)
            chans.append(ch)
            idx += 1
        if level != len(cfg.channel_mult) - 1:
            _conv(s, f"input_blocks.{idx}.0.op", ch, ch, 3)
            chans.append(ch)
            idx += 1
    _resblock(s, "middle_block.0", ch, ch, emb)
    _spatial_transformer(s, "middle_block.1", ch, cfg.context_dim)
    _resblock(s, "middle_block.2", ch, ch, emb)
    idx = 0
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
        for i in range(cfg.num_res_blocks + 1):
            skip = chans.pop()
            _resblock(s, f"output_blocks.{idx}.0", ch + skip, mult * mc, emb)
            ch = mult * mc
            _spatial_transformer(s, f"output_blocks.{idx}.1", ch, cfg.context_dim)
            if level and i == cfg.num_res_blocks:
                _conv(s, f"output_blocks.{idx}.2.conv", ch, ch, 3)
            idx += 1
    _norm(s, "out.0", ch)
    _conv(s, "out.2", cfg.in_channels, ch, 3)
    return [(prefix + k, v) for k, v in s]


def sd15_unet_state_dict(cfg: SD15Config = SD15_TINY, *, seed: int = 0,
                         dtype: torch.dtype = torch.float32, prefix: str = "") -> StateDict:
    """SD1.x LDM UNet.  prefix "" for UNETLoader, "model.diffusion_model." for a checkpoint."""
    return _fill(sd15_unet_keys(cfg, prefix), seed=seed, dtype=dtype)


def clip_l_keys(prefix: str = "", layers: int = 12) -> List[Tuple[str, Shape]]:
    """HF ``CLIPTextModel`` (ViT-L/14 text tower) layout, as in clip_l.safetensors."""
    d, ff = 768, 3072
    s: List[Tuple[str, Shape]] = [
        ("text_model.embeddings.token_embedding.weight", (49408, d)),
        ("text_model.embeddings.position_embedding.weight", (77, d)),
    ]
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(s, f"{p}.self_attn.{proj}", d, d)
        _norm(s, f"{p}.layer_norm1", d)
        _norm(s, f"{p}.layer_norm2", d)
        _linear(s, f"{p}.mlp.fc1", ff, d)
        _linear(s, f"{p}.mlp.fc2", d, ff)
    _norm(s, "text_model.final_layer_norm", d)
    s.append(("text_projection.weight", (d, d)))
    return [(prefix + k, v) for k, v in s]


def clip_l_state_dict(*, seed: int = 0, dtype: torch.dtype = torch.float16,
                      prefix: str = "") -> StateDict:
    """Random CLIP-L.  prefix "" for CLIPLoader, "cond_stage_model.transformer." in an SD1 checkpoint."""
    sd = _fill(clip_l_keys(prefix), seed=seed, dtype=dtype)
    # layer norms named layer_norm1/2 / final_layer_norm are caught by _fill's
    # 'norm' rule; make the projection near-identity so pooled output is sane.
    k = prefix + "text_projection.weight"
    sd[k] = (torch.eye(768) + sd[k].float()).to(dtype)
    return sd


# --------------------------------------------------------------------------
# file cache
# --------------------------------------------------------------------------


@dataclass
class TinyModelFile:
    """A generated model file and how to load it in ComfyUI."""
    family: str          # "flux", "ltxv", "sd15", "clip_l", "sd15_checkpoint"
    folder: str          # ComfyUI folder name: diffusion_models / text_encoders / checkpoints
    path: Path           # absolute path of the .safetensors file
    config: object = None
    params: int = 0

    @property
    def filename(self) -> str:
        return self.path.name


def _save(sd: StateDict, path: Path, metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


class TinyModelCache:
    """Generates model files once into ``root`` (deterministic names)."""

    # bump when a builder's output changes, so persistent caches regenerate
    LAYOUT_VERSION = "2"

    def __init__(self, root: os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, family: str, folder: str, tag: dict, build: Callable[[], StateDict],
              config=None) -> TinyModelFile:
        key = json.dumps({"v": self.LAYOUT_VERSION, **tag}, sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        path = self.root / f"patchbay-tiny-{family}-{digest}.safetensors"
        params = 0
        if not path.exists():
            sd = build()
            params = parameter_count(sd)
            _save(sd, path, {"patchbay_tiny": key})
            del sd
        return TinyModelFile(family, folder, path, config, params)

    def flux(self, cfg: FluxConfig = FLUX_TINY, *, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> TinyModelFile:
        if cfg.hidden_size >= 1024 and dtype == torch.float32:
            dtype = torch.float16  # keep the full-width v0.3.64 variant at ~790 MB
        return self._file("flux", "diffusion_models",
                          {"f": "flux", "cfg": cfg.__dict__, "seed": seed, "dtype": str(dtype)},
                          lambda: flux_state_dict(cfg, seed=seed, dtype=dtype), cfg)

    def ltxv(self, cfg: LTXVConfig = LTXV_TINY, *, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> TinyModelFile:
        return self._file("ltxv", "diffusion_models",
                          {"f": "ltxv", "cfg": cfg.__dict__, "seed": seed, "dtype": str(dtype)},
                          lambda: ltxv_state_dict(cfg, seed=seed, dtype=dtype), cfg)

    def sd15_unet(self, cfg: SD15Config = SD15_TINY, *, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> TinyModelFile:
        return self._file("sd15", "diffusion_models",
                          {"f": "sd15", "cfg": cfg.__dict__, "seed": seed, "dtype": str(dtype)},
                          lambda: sd15_unet_state_dict(cfg, seed=seed, dtype=dtype), cfg)

    def clip_l(self, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> TinyModelFile:
        return self._file("clip_l", "text_encoders",
                          {"f": "clip_l", "seed": seed, "dtype": str(dtype)},
                          lambda: clip_l_state_dict(seed=seed, dtype=dtype))

    def sd15_checkpoint(self, cfg: SD15Config = SD15_TINY, *, seed: int = 0,
                        dtype: torch.dtype = torch.float32,
                        clip_dtype: torch.dtype = torch.float16) -> TinyModelFile:
        """UNet + CLIP-L in one file (no VAE), for CheckpointLoaderSimple."""
        def build():
            sd = sd15_unet_state_dict(cfg, seed=seed, dtype=dtype, prefix="model.diffusion_model.")
            sd.update(clip_l_state_dict(seed=seed + 1, dtype=clip_dtype,
                                        prefix="cond_stage_model.transformer."))
            return sd
        return self._file("sd15_checkpoint", "checkpoints",
                          {"f": "sd15ckpt", "cfg": cfg.__dict__, "seed": seed,
                           "dtype": str(dtype), "clip": str(clip_dtype)}, build, cfg)


def kohya_lora(mods: Dict[str, Tuple[int, int]], seed: int, rank: int, alpha: Optional[float] = None,
               scale: float = 0.05) -> Dict[str, torch.Tensor]:
    """A kohya-named plain LoRA state dict, as kohya's sd-scripts write it (``<module>.lora_up/lora_down.weight`` and
    ``.alpha``), with seeded random factors: ``mods`` maps kohya module names to (out, in); alpha defaults to rank."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (out, inp) in mods.items():
        sd[f"{name}.lora_up.weight"] = torch.randn(out, rank, generator=g) * scale
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, inp, generator=g) * scale
        sd[f"{name}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    return sd
