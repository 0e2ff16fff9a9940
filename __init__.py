"""LoRA Patchbay: ComfyUI entry point.

Inside ComfyUI this package registers the nodes of ``nodes/`` and the web
extension in ``web/``.  Outside ComfyUI (pytest, the CLI) there is no
``comfy`` / ``folder_paths`` to import, so the mappings stay empty instead of
failing the import.
"""
import importlib.util
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("folder_paths") is not None and importlib.util.find_spec("comfy") is not None \
        and __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
else:
    logging.getLogger("lora-patchbay").debug("ComfyUI not importable: no nodes registered")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
