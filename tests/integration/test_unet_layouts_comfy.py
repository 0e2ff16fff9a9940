"""ComfyUI's own UNet configs off the standard layout, as a cross-check of lora_core/resolve/unet.py.

For each UNet config ComfyUI's model detection knows (SSD-1B, Segmind Vega,
KOALA-700M/1B without or with a short middle block, SD-XS; SD1.5 and SDXL as
baselines), a child process with the install's Python builds ComfyUI's
``UNetModel`` on the meta device (its real ldm key names and shapes) and asks
``comfy.utils.unet_to_diffusers`` for core's diffusers → ldm key map.  Oracle:
a kohya LoRA in diffusers naming must land where core's map puts each module
(on every key the model has), and the model family is the one its context
width names.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from fixtures import model_keys as mk
from lora_core.resolve import detect_model_family, resolve_targets

CONFIGS = ("SD15", "SDXL", "SSD_1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B", "SD09_XS", "SD_XS")
FAMILY_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}

CHILD = textwrap.dedent(r'''
import ast, json, os, sys
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, os.getcwd())
import comfy.options; comfy.options.enable_args_parsing()
import torch
import comfy.ops, comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
wanted = set(json.loads(os.environ["PATCHBAY_UNET_CONFIGS"]))
tree = ast.parse(open(os.path.join("comfy", "model_detection.py")).read())
fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "unet_config_from_diffusers_unet")
out = {}
for st in fn.body:
    if not (isinstance(st, ast.Assign) and isinstance(st.value, ast.Dict) and isinstance(st.targets[0], ast.Name)
            and st.targets[0].id in wanted):
        continue
    cfg = {ast.literal_eval(k): (None if isinstance(v, ast.Name) else ast.literal_eval(v))
           for k, v in zip(st.value.keys, st.value.values)}
    cfg["dtype"] = torch.float32
    model = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    out[st.targets[0].id] = {"context_dim": cfg["context_dim"],
                             "keys": {k: list(v.shape) for k, v in model.state_dict().items()},
                             "map": comfy.utils.unet_to_diffusers(cfg)}
print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="session")
def comfy_unets(comfy_install):
    env = dict(os.environ, PATCHBAY_UNET_CONFIGS=json.dumps(CONFIGS))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([comfy_install.python, "-c", CHILD], cwd=str(comfy_install.path), env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("name", CONFIGS)
def test_kohya_lora_lands_where_core_maps_it(comfy_unets, name):
    if name not in comfy_unets:
        pytest.skip(f"this ComfyUI has no {name} config")
    unet = comfy_unets[name]
    model = {"diffusion_model." + k: tuple(s) for k, s in unet["keys"].items()}
    # core's map may give one ldm weight two diffusers names (label_emb: add_ and
    # class_embedding); a file uses one, so each spelling goes in its own file.
    files: list[dict[str, tuple[str, tuple]]] = []
    for dkey, ldm in sorted(unet["map"].items()):
        shape = unet["keys"].get(ldm)
        if dkey.endswith(".weight") and shape is not None and len(shape) >= 2:
            kohya = "lora_unet_" + dkey[: -len(".weight")].replace(".", "_")
            slot = next((f for f in files if all(t != ldm for t, _ in f.values())), None)
            if slot is None:
                files.append(slot := {})
            slot[kohya] = (ldm, tuple(shape))
    assert sum(len(f) for f in files) > 50
    for f in files:
        report = resolve_targets(mk.lora_file([mk.lora_patch(k, s) for k, (_, s) in f.items()]), model)
        assert not report.unmatched, sorted({u.name for u in report.unmatched})[:8]
        assert {r.patch.name: r.weight_key for r in report.matched} == {
            k: "diffusion_model." + ldm for k, (ldm, _) in f.items()}
        assert report.family_warning is None
    family = FAMILY_BY_CONTEXT.get(unet["context_dim"], "unet")
    assert detect_model_family(model) == family
