"""LoRA tools: reshape LoRA files without a host.

* :mod:`.merge` — a stack → one LoRA (exact rank concatenation, or an SVD to a rank);
* :mod:`.resize` — one LoRA → a lower rank (SVD, by rank or kept energy);
* :mod:`.extract` — base + fine-tuned state dicts → a LoRA;
* :mod:`.convert` — kohya ↔ PEFT/diffusers ↔ ComfyUI module names;
* :mod:`.svd` — the low-rank maths (pure functions of tensors);
* :mod:`.naming` — the three target namings, from a model's module index;
* :mod:`.writer` — the one atomic safetensors writer (also used by ``api.apply``);
* :mod:`.cli` — the ``merge``/``resize``/``extract``/``convert`` subcommands.

Every tool returns a :class:`~.result.ToolResult`: the tensors to write, one
:class:`~.result.LayerReport` per output module (rank, relative error, energy
kept) and notes; nothing is written until :func:`.writer.write_lora`.
"""
