"""What this ComfyUI can do, probed once at import."""
from __future__ import annotations

import inspect

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


def ltx_drops_filler_tokens() -> bool:
    """True if the host's LTX model drops tokens with a negative noise mask (needed for IC-LoRA k > 1)."""
    try:
        import comfy.ldm.lightricks.model as ltx
        return "denoise_mask" in inspect.signature(ltx.LTXVModel.forward).parameters
    except Exception:  # pragma: no cover - host without LTX support
        return False


def ltx_positions_are_intervals() -> bool:
    """True if the host's LTX positions are [start, end) intervals (v0.4+), False for starts only."""
    try:
        from comfy.ldm.lightricks.symmetric_patchifier import Patchifier
        return "start_end" in inspect.signature(Patchifier.__init__).parameters
    except Exception:  # pragma: no cover
        return True
