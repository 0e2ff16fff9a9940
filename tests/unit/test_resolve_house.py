"""The shape of resolve/ and formats/ (issue 7): entry types in their own module, the
family registry where the families are collected, one prefix list for resolve and
the format label, one fused-slice helper and one "splitting" hint, shared parser
helpers in formats/_common.py, no maths in the parser layer."""
from __future__ import annotations

import ast
import os

import torch

import lora_core
from lora_core.formats import parse_state_dict
from lora_core.resolve import DIFFUSION_FAMILIES, TEXT_ENCODER_FAMILIES, build_table, flux, qwen, sd3
from lora_core.resolve.entries import Hint, Target
from lora_core.resolve.model import Module
from lora_core.resolve.prefixes import FILE_PREFIXES, prefix_label
from lora_core.resolve.rules import SPLIT_UNSUPPORTED, fused_slices
from lora_core.resolve.table import split_prefix

ROOT = os.path.dirname(lora_core.__file__)


def _tree(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return ast.parse(fh.read())


def _imports(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
    return out


def test_one_prefix_list_serves_lookup_and_labels():
    prefixes = [r.prefix for r in FILE_PREFIXES]
    assert prefixes == sorted(prefixes, key=len, reverse=True) and len(set(prefixes)) == len(prefixes)
    assert split_prefix("lora_unet_down_blocks_0")[0][0] == "down_blocks_0"
    assert prefix_label("lora_te1_text_model_encoder") == "kohya"
    assert prefix_label("base_model.model.fc1") == "peft"
    assert prefix_label("diffusion_model.blocks.0.attn") == "comfy"
    assert prefix_label("text_encoders.gemma.layers.0") == "comfy"
    assert prefix_label("blocks.0.attn") == "bare"
    sd = {"lycoris_fc.lora_up.weight": torch.zeros(4, 2), "lycoris_fc.lora_down.weight": torch.zeros(2, 4)}
    assert parse_state_dict(sd).format == "lycoris/lora"
    # formats keeps no prefix list of its own
    names = {t.id for n in ast.walk(_tree("formats", "__init__.py")) if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name)}
    assert "PREFIX_LABELS" not in names


def test_fused_slices_lay_parts_end_to_end():
    mod = Module(name="qkv", path="qkv", component="diffusion", weight_key="qkv.weight", weight_shape=(96, 32))
    thirds = fused_slices(mod, 3)
    assert [(t.slice.start, t.slice.length) for t in thirds] == [(0, 32), (32, 32), (64, 32)]
    parts = fused_slices(mod, (48, 24, 24))
    assert [(t.slice.start, t.slice.length) for t in parts] == [(0, 48), (48, 24), (72, 24)]
    assert all(isinstance(t, Target) and t.module is mod for t in parts)


def test_one_splitting_hint_for_every_family():
    assert isinstance(SPLIT_UNSUPPORTED, Hint) and "splitting" in SPLIT_UNSUPPORTED.detail
    for family in (flux, sd3, qwen):
        assert getattr(family, "SPLIT_UNSUPPORTED") is SPLIT_UNSUPPORTED
        assert "FUSED_ON_SPLIT" not in vars(family)


def test_registry_lives_in_the_package_and_table_imports_no_family():
    assert callable(build_table)
    assert len(DIFFUSION_FAMILIES) == 6 and len(TEXT_ENCODER_FAMILIES) == 1
    table = _tree("resolve", "table.py")
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "build_table" for n in table.body)
    assert _imports(table) <= {".entries", ".model", ".prefixes", "__future__", "typing"}
    for family in ("clip", "flux", "ltx", "qwen", "sd3", "unet", "wan", "rules"):
        assert ".table" not in _imports(_tree("resolve", f"{family}.py")), family


def test_parsers_share_one_helper_module():
    for name in ("lycoris.py", "peft_tuners.py", "lora.py"):
        tree = _tree("formats", name)
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert not defined & {"_bad", "_keys", "coft_project", "tuner_config_scale", "scalar", "bias_delta"}, name
        imports = _imports(tree)
        assert ".lora" not in imports and ".peft_tuners" not in imports, name
