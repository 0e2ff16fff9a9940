"""ComfyUI nodes of LoRA Patchbay: merges the mappings of every node module.

Core modules (loaders, stack) must import; optional ones (IC-LoRA, blocks,
info, schedule) are imported defensively, and a failure is LOGGED with its
traceback rather than hiding the pack's other nodes.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("lora-patchbay")

CORE_MODULES = ("loaders", "stack", "stack_loader")
OPTIONAL_MODULES = ("iclora", "blocks", "info", "schedule", "sweep", "grid", "prompt_tags", "lora_tools")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
FAILED_MODULES: dict[str, str] = {}


def _merge(module) -> None:
    for node_id, cls in getattr(module, "NODE_CLASS_MAPPINGS", {}).items():
        if node_id in NODE_CLASS_MAPPINGS and NODE_CLASS_MAPPINGS[node_id] is not cls:
            log.error("[LoRA Patchbay] node id %s defined twice (%s); keeping the first", node_id, module.__name__)
            continue
        NODE_CLASS_MAPPINGS[node_id] = cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))


for _name in CORE_MODULES:
    _merge(importlib.import_module(f".{_name}", __name__))

for _name in OPTIONAL_MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except ModuleNotFoundError as _e:
        if _e.name == f"{__name__}.{_name}":
            continue  # not written (yet): nothing to register
        FAILED_MODULES[_name] = repr(_e)
        log.exception("[LoRA Patchbay] optional node module %r failed to import; its nodes are missing", _name)
        continue
    except Exception as _e:
        FAILED_MODULES[_name] = repr(_e)
        log.exception("[LoRA Patchbay] optional node module %r failed to import; its nodes are missing", _name)
        continue
    _merge(_module)

# The /patchbay/... routes the web editor reads; nothing happens without a running server.
try:
    importlib.import_module(".routes", __name__).register()
except Exception:  # the nodes work without their routes; the editor then shows raw JSON
    log.exception("[LoRA Patchbay] the /patchbay routes could not be registered")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "FAILED_MODULES"]
