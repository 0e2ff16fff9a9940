"""Real LoRA files written by peft, diffusers and lycoris-lora, with golden deltas.

Each fixture writes one file (or a directory) into a session temp dir and
returns a :class:`Golden`: the file path, the original weight of every
adapted module (keyed by the module name *as the file spells it*), and the
library's own answer: ΔW at strength 1 (``get_delta_weight``,
``get_diff_weight``) or, for DoRA, ``W_merged − W`` from the library's merge.
Names are mapped with small local tables here, not through ``resolve/``.

Import the fixtures into a test module (``from lora_files import ...``).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

RTOL = 1e-5


@dataclass
class Golden:
    path: str
    base: dict[str, torch.Tensor]                 # module name → original fp32 weight
    delta: dict[str, torch.Tensor]                # module name → library ΔW at strength 1
    bias: dict[str, torch.Tensor] = field(default_factory=dict)  # module name → library Δbias
    extra: dict = field(default_factory=dict)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-30))


def max_rel_err(lora, golden: Golden, scale_fix: float = 1.0) -> float:
    """Worst relative error of our ΔW over every golden module; every golden module must be parsed."""
    from lora_core.kinds import delta_weight
    by_name = {p.name: p for p in lora.patches}
    missing = sorted(set(golden.delta) - set(by_name))
    assert not missing, f"modules not parsed: {missing[:5]}"
    worst = 0.0
    for name, ref in golden.delta.items():
        ours = delta_weight(by_name[name], golden.base[name].float())
        assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
        worst = max(worst, rel_err(ours, ref * scale_fix))
    for name, ref in golden.bias.items():
        p = by_name[name]
        assert p.bias is not None, f"{name}: bias delta not parsed"
        worst = max(worst, rel_err(p.bias.float() * p.bias_scale, ref * scale_fix))
    return worst


def perturb(module: nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------- tiny models

class SmallNet(nn.Module):
    """Linear + conv layers of distinct shapes (so a name mix-up cannot pass)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 8)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.conv1d = nn.Conv1d(3, 5, 3)  # LyCORIS presets below pick it up too (".*conv")

    def forward(self, x):
        return self.fc2(self.fc1(x))


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = SmallNet()


def tiny_unet():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8)


def _peft_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _peft_goldens(model: nn.Module, rename) -> tuple[dict, dict, dict]:
    base, delta, bias = {}, {}, {}
    for name, layer in _peft_layers(model).items():
        key = rename(name)
        base[key] = layer.get_base_layer().weight.detach().float().clone()
        with torch.no_grad():
            delta[key] = layer.get_delta_weight("default").float().clone()
            b = layer.lora_B["default"].bias
            if b is not None:
                bias[key] = (b * layer.scaling["default"]).detach().float().clone()
    return base, delta, bias


# ---------------------------------------------------------------- PEFT

PEFT_LORA_CONFIG = dict(r=4, lora_alpha=8, target_modules=["fc1", "fc2", "conv"], init_lora_weights=False,
                        rank_pattern={"fc2": 2}, alpha_pattern={"conv": 3}, use_rslora=True, lora_bias=True)


@pytest.fixture(scope="session")
def peft_lora(tmp_path_factory) -> Golden:
    """PEFT save_pretrained dir: adapter_model.safetensors + adapter_config.json (rsLoRA, patterns, bias)."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1)
    model = get_peft_model(SmallNet(), LoraConfig(**PEFT_LORA_CONFIG))
    out = tmp_path_factory.mktemp("peft_lora")
    model.save_pretrained(str(out))
    base, delta, bias = _peft_goldens(model, lambda n: n)
    scaling = {n: layer.scaling["default"] for n, layer in _peft_layers(model).items()}
    return Golden(str(out / "adapter_model.safetensors"), base, delta, bias, extra={"scaling": scaling})


@pytest.fixture(scope="session")
def peft_lora_without_config(peft_lora, tmp_path_factory) -> Golden:
    """The same tensors copied away from their adapter_config.json: scale is unknown → 1."""
    out = tmp_path_factory.mktemp("peft_lora_alone")
    path = str(out / "adapter_model.safetensors")
    shutil.copy(peft_lora.path, path)
    scaling = peft_lora.extra["scaling"]
    delta = {n: d / scaling[n] for n, d in peft_lora.delta.items()}
    bias = {n: b / scaling[n] for n, b in peft_lora.bias.items()}
    return Golden(path, peft_lora.base, delta, bias)


@pytest.fixture(scope="session")
def peft_dora(tmp_path_factory) -> Golden:
    """PEFT DoRA (use_dora): golden is merge_and_unload() − W."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(2)
    net = SmallNet()
    original = {n: m.weight.detach().clone() for n, m in net.named_modules() if hasattr(m, "weight")}
    model = get_peft_model(net, LoraConfig(r=4, lora_alpha=6, target_modules=["fc1", "conv"],
                                           init_lora_weights=False, use_dora=True))
    with torch.no_grad():  # a trained magnitude, not the initial ‖W‖
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.2 * torch.rand(p.shape))
    out = tmp_path_factory.mktemp("peft_dora")
    model.save_pretrained(str(out))
    merged = model.merge_and_unload()
    base, delta = {}, {}
    for short in ("fc1", "conv"):
        key = f"base_model.model.{short}"
        w = original[short].float()
        base[key] = w
        delta[key] = getattr(merged, short).weight.detach().float() - w
    return Golden(str(out / "adapter_model.safetensors"), base, delta)


# ---------------------------------------------------------------- diffusers

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "proj_in"]
UNET_ALPHA_PATTERN = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2}


@pytest.fixture(scope="session")
def diffusers_unet_lora(tmp_path_factory) -> Golden:
    """StableDiffusion pipeline save: ``unet.`` keys + ``lora_adapter_metadata`` packed as ``unet.r``…"""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    unet = tiny_unet()
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS, init_lora_weights=False,
                     alpha_pattern=dict(UNET_ALPHA_PATTERN))
    unet.add_adapter(cfg)
    layers = get_peft_model_state_dict(unet)
    out = tmp_path_factory.mktemp("diffusers_unet")
    StableDiffusionLoraLoaderMixin.save_lora_weights(str(out), unet_lora_layers=layers,
                                                     unet_lora_adapter_metadata=cfg.to_dict())
    # The model-level save: bare keys and a flat config.
    out2 = tmp_path_factory.mktemp("diffusers_unet_adapter")
    unet.save_lora_adapter(str(out2))
    base, delta, _ = _peft_goldens(unet, lambda n: "unet." + n)
    bare = {k[len("unet."):]: v for k, v in delta.items()}
    bare_base = {k[len("unet."):]: v for k, v in base.items()}
    # diffusers' kohya conversion of the same layers (writes alpha = rank, see the test)
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    kohya = convert_state_dict_to_kohya({"unet." + k: v for k, v in layers.items()})
    kohya_path = str(tmp_path_factory.mktemp("diffusers_kohya") / "kohya.safetensors")
    save_file({k: v.contiguous() for k, v in kohya.items()}, kohya_path)
    scaling = {"unet." + n: layer.scaling["default"] for n, layer in _peft_layers(unet).items()}
    return Golden(str(out / "pytorch_lora_weights.safetensors"), base, delta,
                  extra={"adapter_path": str(out2 / "pytorch_lora_weights.safetensors"),
                         "bare_delta": bare, "bare_base": bare_base, "kohya_path": kohya_path,
                         "scaling": scaling})


# ---------------------------------------------------------------- LyCORIS

def _lycoris_golden(network, path: str, dora: bool) -> Golden:
    base, delta = {}, {}
    for lora in network.loras:
        w = lora.org_weight.detach().float().clone()
        with torch.no_grad():
            if dora:
                merged = lora.get_merged_weight(multiplier=1)[0]
                d = merged.float().reshape(w.shape) - w
            else:
                d = lora.get_diff_weight(multiplier=1)[0].float().reshape(w.shape)
        base[lora.lora_name] = w
        delta[lora.lora_name] = d.clone()
    return Golden(path, base, delta)


def _standalone(tmp_path_factory, tag: str, seed: int, dora: bool = False, **options) -> Golden:
    from lycoris import LycorisNetwork, create_lycoris
    torch.manual_seed(seed)
    net = Wrapped()
    LycorisNetwork.apply_preset({"target_name": [".*fc1", ".*fc2", ".*conv"]})
    network = create_lycoris(net, 1.0, **options)
    network.apply_to()
    perturb(network, seed=seed)
    sd = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    path = str(tmp_path_factory.mktemp(f"lycoris_{tag}") / f"{tag}.safetensors")
    save_file(sd, path)
    golden = _lycoris_golden(network, path, dora)
    golden.extra["network"] = network
    golden.extra["model"] = net
    return golden


@pytest.fixture(scope="session")
def lycoris_locon(tmp_path_factory) -> Golden:
    return _standalone(tmp_path_factory, "locon", 3, linear_dim=4, linear_alpha=2, algo="lora",
                       conv_dim=4, conv_alpha=3)


@pytest.fixture(scope="session")
def lycoris_tucker(tmp_path_factory) -> Golden:
    return _standalone(tmp_path_factory, "tucker", 4, linear_dim=4, linear_alpha=8, algo="lora",
                       conv_dim=3, conv_alpha=1, use_tucker=True)


@pytest.fixture(scope="session")
def lycoris_dora_out(tmp_path_factory) -> Golden:
    return _standalone(tmp_path_factory, "dora_out", 5, dora=True, linear_dim=4, linear_alpha=2,
                       algo="lora", conv_dim=4, conv_alpha=4, use_tucker=True, dora_wd=True)


@pytest.fixture(scope="session")
def lycoris_dora_in(tmp_path_factory) -> Golden:
    """Old-style DoRA (``wd_on_output=False``): dora_scale (1, in, …), norm per input column."""
    return _standalone(tmp_path_factory, "dora_in", 6, dora=True, linear_dim=4, linear_alpha=2,
                       algo="lora", conv_dim=4, conv_alpha=2, dora_wd=True, wd_on_output=False)


@pytest.fixture(scope="session")
def lycoris_dylora(tmp_path_factory) -> Golden:
    """DyLoRA (block_size 4, rank 8) at full rank.

    The file is an ordinary lora_up/lora_down/alpha triple; every loader
    (LyCORIS' own ``create_lycoris_from_weights`` included) applies it as
    ``alpha/rank · up·down``.  LyCORIS' training-time ``get_diff_weight(rank=8)``
    uses ``alpha/(blocks+1)`` instead; the test records that separately.
    """
    g = _standalone(tmp_path_factory, "dylora", 7, linear_dim=8, linear_alpha=2, algo="dylora",
                    block_size=4)
    for lora in g.extra["network"].loras:
        down, up, _ = lora.get_weight(lora.lora_dim)
        w = g.base[lora.lora_name]
        g.delta[lora.lora_name] = ((up @ down) * float(lora.alpha) / lora.lora_dim).reshape(w.shape).detach()
    return g


KOHYA_METADATA = {
    "ss_network_module": "lycoris.kohya",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_network_args": json.dumps({"algo": "locon", "conv_dim": "4", "conv_alpha": "1",
                                   "preset": "attn-mlp"}),
    "ss_base_model_version": "sd_v1",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_tag_frequency": json.dumps({"10_ohwx dog": {"ohwx": 12, "dog": 12, "grass": 3, "sky": 5}}),
    "ss_output_name": "tiny-dog",
}


@pytest.fixture(scope="session")
def lycoris_kohya(tmp_path_factory) -> Golden:
    """LyCORIS kohya wrapper (``lora_unet_…``) LoCon on the tiny UNet, saved in fp16 like a trainer."""
    from lycoris.kohya import create_network
    unet = tiny_unet()
    network = create_network(1.0, 4, 2.0, None, [], unet, algo="lora", conv_dim=4, conv_alpha=1,
                             preset="attn-mlp")
    network.apply_to([], unet, False, True)
    perturb(network, seed=8)
    with torch.no_grad():  # round to what an fp16 save keeps, so the oracle sees the same factors
        for p in network.parameters():
            p.copy_(p.half().float())
    path = str(tmp_path_factory.mktemp("lycoris_kohya") / "kohya_locon.safetensors")
    network.save_weights(path, torch.float16, dict(KOHYA_METADATA))
    golden = _lycoris_golden(network, path, dora=False)
    golden.extra["network"] = network
    # lora_name → the UNet module path it adapts (each LyCORIS module knows its org_module)
    paths = {id(m): n for n, m in unet.named_modules()}
    golden.extra["module_paths"] = {l.lora_name: paths[id(l.org_module[0])] for l in network.loras}
    return golden


def write(tmp_path_factory, tag: str, tensors: dict[str, torch.Tensor],
          metadata: dict[str, str] | None = None) -> str:
    path = str(tmp_path_factory.mktemp(tag) / f"{tag}.safetensors")
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path
