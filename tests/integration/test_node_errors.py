"""What a user sees when a LoRA file is bad, in a real ComfyUI (every installed version).

* A corrupt file queued through our loader fails the node with an exception
  type that reads ``lora_patchbay.<Name>`` (ComfyUI shows ``module.qualname``,
  which would otherwise carry the custom-node folder).
* A file with damaged modules (up/down ranks that disagree) applies what fits
  and names the damaged keys in its one coverage log line.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import Graph

Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
K2 = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"


@pytest.fixture(scope="session")
def bad_loras(comfy, tmp_path_factory):
    d = tmp_path_factory.mktemp("patchbay-bad-loras")
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    g = torch.Generator().manual_seed(7)
    save_file({f"{Q}.lora_up.weight": torch.randn(320, 4, generator=g) * 0.05,
               f"{Q}.lora_down.weight": torch.randn(4, 320, generator=g) * 0.05,
               f"{K2}.lora_up.weight": torch.randn(320, 8, generator=g) * 0.05,   # rank 8 ...
               f"{K2}.lora_down.weight": torch.randn(4, 768, generator=g) * 0.05},  # ... meets rank 4
              str(d / "damaged.safetensors"))
    return {n: comfy.add_model("loras", d / f"{n}.safetensors", f"pb-errors/{n}.safetensors")
            for n in ("corrupt", "damaged")}


def _loader(g, model, clip, name):
    return g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=name, strength_model=1.0,
                  strength_clip=0.0, enabled=True, mode="merge")


def test_corrupt_file_error_type_is_short(comfy, tiny_sd15_checkpoint, bad_loras):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    m = _loader(g, model, clip, bad_loras["corrupt"])
    g.node("PatchbayTestModelProbe", model=m[0], key_filter="attn1.to_q.weight", max_keys=1)
    res = comfy.client.queue(g, check=False)
    assert not res.ok and res.error["node_type"] == "PatchbayLoraLoader"
    assert res.error["exception_type"] == "lora_patchbay.LoraFileError", res.error["exception_type"]
    assert "corrupt.safetensors" in res.error["exception_message"]


def test_damaged_modules_are_named_in_the_log_line(comfy, tiny_sd15_checkpoint, bad_loras):
    mark = comfy.log_mark()
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    m = _loader(g, model, clip, bad_loras["damaged"])
    p = g.node("PatchbayTestModelProbe", model=m[0], key_filter="attn1.to_q.weight,attn2.to_k.weight",
               max_keys=8)
    res = comfy.client.queue(g, timeout=240)
    assert [k for k in res.ui(p.id)["patch_keys"][0] if "attn1.to_q" in k]  # the good module applies
    lines = [l for l in comfy.read_log(mark).splitlines() if "damaged.safetensors" in l]
    assert len(lines) == 1, lines
    assert "damaged keys" in lines[0] and f"{K2}.lora_up.weight" in lines[0] and "rank" in lines[0], lines[0]
