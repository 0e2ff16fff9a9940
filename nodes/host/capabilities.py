"""What this ComfyUI can do, probed once at import."""
from __future__ import annotations

import comfy.model_patcher


def host_version() -> tuple[int, ...]:
    try:
        import comfyui_version
        return tuple(int(x) for x in comfyui_version.__version__.split(".")[:3])
    except Exception:  # pragma: no cover - very old installs have no version file
        return (0, 0, 0)


HOST_VERSION = host_version()
# Bypass side paths need ModelPatcher injections (ComfyUI ≥ 0.3.x); without them everything merges.
HAS_INJECTIONS = hasattr(comfy.model_patcher.ModelPatcher, "set_injections")
