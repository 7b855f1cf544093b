"""A PEFT LoRA adapter merged into its base model's weights: for an engine that serves adapters merged
(``workers.engines.vllm``) and for ``selfreward export`` (a plain Hugging Face folder of M(t))."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def merged_weights(model_path: str, adapter_folder: str | None) -> Iterator[tuple[str, Any]]:
    """The base model's checkpoint tensors, by checkpoint name, with a PEFT LoRA adapter's update merged in:
    W + scale * B @ A for each adapted module (scale = alpha / r, or alpha / sqrt(r) with rsLoRA); the base
    tensors alone when ``adapter_folder`` is None. Checks everything before the first tensor is read: ValueError
    for an adapter this cannot merge exactly, or one that adapts a module the base model lacks."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"merged adapter serving reads the base weights from safetensors files: none in {model_path}; "
                         "set resources.adapter_serving=lora")
    names: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            names.update(dict.fromkeys(h.keys(), f))
    updates: dict[str, tuple[Any, Any]] = {}  # checkpoint name -> (A, B)
    scale = 0.0
    if adapter_folder is not None:
        cfg = json.loads((Path(adapter_folder) / "adapter_config.json").read_text())
        for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "target_parameters"):
            if cfg.get(key):
                raise ValueError(f"adapter {adapter_folder}: {key}={cfg[key]!r} cannot be merged here; "
                                 "set resources.adapter_serving=lora")
        if cfg.get("bias", "none") != "none":
            raise ValueError(f"adapter {adapter_folder}: bias={cfg['bias']!r} cannot be merged here; "
                             "set resources.adapter_serving=lora")
        r = cfg["r"]
        scale = cfg["lora_alpha"] / (r ** 0.5 if cfg.get("use_rslora") else r)
        tensors = load_file(str(Path(adapter_folder) / "adapter_model.safetensors"))
        odd = next((k for k in tensors if ".lora_A." not in k and ".lora_B." not in k), None)
        if odd is not None:
            raise ValueError(f"adapter {adapter_folder}: {odd} is not a LoRA A/B matrix of a linear layer and cannot "
                             "be merged here; set resources.adapter_serving=lora")
        for key, a in tensors.items():
            if ".lora_A." in key:
                name = key.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
                if name not in names:
                    raise ValueError(f"adapter {adapter_folder} adapts {name}, which the base model in {model_path} "
                                     "does not have")
                updates[name] = (a, tensors[key.replace(".lora_A.", ".lora_B.")])

    def weights() -> Iterator[tuple[str, Any]]:
        for f in files:
            with safe_open(str(f), "pt") as h:
                for name in h.keys():
                    w = h.get_tensor(name)
                    if name in updates:
                        a, b = updates[name]
                        w = w.float() + scale * (b.float() @ a.float())
                    yield name, w

    return weights()


def save_merged(model_path: str | Path, adapter_folder: str | None, out: Path) -> None:
    """Write into the folder ``out`` a Hugging Face model folder of the base model with the adapter merged into its
    weights: each safetensors shard of ``model_path`` written again under its name, every tensor in its own dtype,
    and every other file of the folder (config, tokenizer, chat template, generation config, shard index) copied."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    base = Path(model_path)
    out.mkdir(parents=True, exist_ok=True)
    shard_of, dtype = {}, {}
    for f in sorted(base.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for name in h.keys():
                shard_of[name], dtype[name] = f.name, h.get_slice(name).get_dtype()
    merged = merged_weights(str(base), adapter_folder)  # checks the adapter before any tensor is read
    shards: dict[str, dict[str, Any]] = {}
    for name, w in merged:
        shards.setdefault(shard_of[name], {})[name] = w.to(dtypes[dtype[name]]).contiguous()
    for shard, tensors in shards.items():
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("selfreward-"):
            shutil.copyfile(f, out / f.name)

