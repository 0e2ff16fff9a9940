"""Batch rendering against running ComfyUI servers (standard library only, no ComfyUI import).

``workflow`` edits an API-format workflow (stack rows, seeds), ``comfy`` talks
to one server (HTTP + the ``ws`` websocket client), ``runner`` spreads the
prompts over servers and collects images, ``index`` keeps the resumable
JSON/HTML index, ``cli`` is ``python -m lora_core render``.
"""
