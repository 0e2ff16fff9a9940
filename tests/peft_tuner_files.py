"""Real PEFT non-LoRA adapter files, written by PEFT itself.

``get_peft_model`` on :class:`Small` (two Linears and a 3×3 conv) with
``init_weights=False`` (IA3: ``init_ia3_weights=False``) so nothing is an
identity, then ``save_pretrained``: ``adapter_model.safetensors`` (keys
``base_model.model.<module>.…``, produced by ``get_peft_model_state_dict``) and
``adapter_config.json`` side by side, exactly as users receive them.

The oracle is PEFT's own merge: ``merge_and_unload()`` on a deep copy.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn as nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)


LINEARS = ["fc1", "fc2"]
ALL = ["fc1", "fc2", "conv"]


def _configs():
    from peft import BOFTConfig, IA3Config, LoHaConfig, LoKrConfig, OFTConfig
    return {
        "oft": OFTConfig(target_modules=ALL, oft_block_size=8, r=0, init_weights=False),
        "oft_exact": OFTConfig(target_modules=ALL, oft_block_size=8, r=0, init_weights=False,
                               use_cayley_neumann=False),
        "oft_terms3": OFTConfig(target_modules=LINEARS, oft_block_size=4, r=0, init_weights=False,
                                num_cayley_neumann_terms=3),
        "oft_share": OFTConfig(target_modules=LINEARS, oft_block_size=8, r=0, init_weights=False,
                               block_share=True, use_cayley_neumann=False),
        "oft_coft": OFTConfig(target_modules=LINEARS, oft_block_size=8, r=0, init_weights=False,
                              coft=True, eps=0.5, use_cayley_neumann=False),
        "boft": BOFTConfig(target_modules=LINEARS, boft_block_size=4, boft_n_butterfly_factor=2,
                           init_weights=False),
        "boft_conv": BOFTConfig(target_modules=["conv"], boft_block_size=4, boft_n_butterfly_factor=1,
                                init_weights=False),
        "boft_plain": BOFTConfig(target_modules=LINEARS, boft_block_size=8, boft_n_butterfly_factor=0,
                                 init_weights=False),
        "ia3": IA3Config(target_modules=ALL, feedforward_modules=["fc2"], init_ia3_weights=False),
        "ia3_conv_ff": IA3Config(target_modules=["conv", "fc1"], feedforward_modules=["conv"],
                                 init_ia3_weights=False),
        "loha": LoHaConfig(r=4, alpha=8, target_modules=ALL, init_weights=False),
        "loha_effective": LoHaConfig(r=4, alpha=2, target_modules=["conv"], init_weights=False,
                                     use_effective_conv2d=True, rank_pattern={"conv": 2}),
        "lokr": LoKrConfig(r=4, alpha=2, target_modules=ALL, init_weights=False),
        "lokr_both": LoKrConfig(r=2, alpha=3, target_modules=LINEARS, init_weights=False,
                                decompose_both=True, decompose_factor=4),
        "lokr_effective": LoKrConfig(r=2, alpha=4, target_modules=["conv"], init_weights=False,
                                     use_effective_conv2d=True),
    }


# Every config above, in a stable order (parametrize ids).
VARIANTS = [
    "oft", "oft_exact", "oft_terms3", "oft_share", "oft_coft", "boft", "boft_conv", "boft_plain",
    "ia3", "ia3_conv_ff", "loha", "loha_effective", "lokr", "lokr_both", "lokr_effective"]


@dataclass
class PeftGenerated:
    path: str          # adapter_model.safetensors (adapter_config.json beside it)
    originals: dict    # module name → (weight, bias) before the adapter
    merged: dict       # module name → (weight, bias) after PEFT's merge_and_unload
    model: object      # the live PeftModel


def _perturb_extra(peft_model, seed: int) -> None:
    """init_weights=False already randomises; also move PEFT's unit-ish scales."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "boft_s" in name or "ia3_l" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
            elif "hada_" in name or "lokr_" in name:
                # PEFT's kaiming init makes Tucker products tiny; make ΔW count.
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def peft_file(variant: str, directory: str) -> PeftGenerated:
    from peft import get_peft_model
    config = _configs()[variant]
    torch.manual_seed(7)
    base = Small()
    originals = {n: (m.weight.detach().clone(), m.bias.detach().clone())
                 for n, m in base.named_children()}
    model = get_peft_model(base, config)
    _perturb_extra(model, seed=len(variant))
    out = os.path.join(directory, variant)
    model.save_pretrained(out)
    merged_model = copy.deepcopy(model).merge_and_unload()
    merged = {n: (m.weight.detach().clone(), m.bias.detach().clone())
              for n, m in merged_model.named_children()}
    return PeftGenerated(path=os.path.join(out, "adapter_model.safetensors"), originals=originals,
                         merged=merged, model=model)


def module_of(file_module: str) -> str:
    """The tiny local name map: PEFT file names → :class:`Small` children."""
    prefix = "base_model.model."
    assert file_module.startswith(prefix), file_module
    return file_module[len(prefix):]


def unsupported_file(kind: str, directory: str) -> str:
    """A VeRA or FourierFT save (tuners we report as unsupported)."""
    from peft import FourierFTConfig, VeraConfig, get_peft_model
    config = {"vera": VeraConfig(r=4, target_modules=LINEARS, save_projection=True, init_weights=False),
              "fourierft": FourierFTConfig(n_frequency=16, target_modules=LINEARS, init_weights=False)}[kind]
    torch.manual_seed(3)
    model = get_peft_model(Small(), config)
    out = os.path.join(directory, kind)
    model.save_pretrained(out)
    return os.path.join(out, "adapter_model.safetensors")
