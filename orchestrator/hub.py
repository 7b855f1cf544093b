"""Hugging Face Hub names where a local path is expected: ``model.path: org/name[@revision]`` (or
``hf://org/name``) and a prompt file ``hf://datasets/org/name[@revision]/path/in/repo.jsonl``.

Resolved with ``huggingface_hub`` into its cache (``HF_HUB_CACHE``), which a later run reads without the network;
``HF_HUB_OFFLINE=1`` reads the cache only and never connects. A local path that exists always wins over a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MODEL = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
_DATASET_FILE = re.compile(r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.-]+))?"
                           r"/(?P<file>[^@]+)$")
# The files of a model folder the engines and the trainer read (weights, config, tokenizer, chat template).
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "tokenizer*"]


def is_model_id(text: str) -> bool:
    """Whether ``text`` reads as a Hub model id (and is to be resolved as one when no local folder has its name)."""
    return bool(_MODEL.match(text)) and (text.startswith("hf://") or not Path(text).expanduser().exists())


def is_dataset_file(text: str) -> bool:
    return bool(_DATASET_FILE.match(text))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache() -> str | None:
    """The cache as the environment says now (huggingface_hub reads it once, when it is imported)."""
    return os.environ.get("HF_HUB_CACHE") or None


def _why(e: Exception, what: str) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(e, LocalEntryNotFoundError) or _offline():
        return (f"{what} is not in the Hugging Face cache ({_cache() or 'HF_HOME/hub'}) and "
                f"{'HF_HUB_OFFLINE is set' if _offline() else 'the Hub cannot be reached'}: download it once where "
                "the Hub is reachable, or give a local folder")
    return f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def model_snapshot(text: str, error: type[Exception]) -> Path:
    """The local folder of Hub model ``text`` (downloaded once into the cache); ``error`` naming the id otherwise."""
    from huggingface_hub import snapshot_download

    m = _MODEL.match(text)
    if m is None:
        raise error(f"model.path {text!r}: not a Hub model id (org/name[@revision])")
    try:
        return Path(snapshot_download(m["repo"], revision=m["revision"], allow_patterns=MODEL_FILES,
                                      local_files_only=_offline(), cache_dir=_cache()))
    except Exception as e:  # huggingface_hub's errors for an id it cannot resolve are this input's
        local = "" if text.startswith("hf://") else "no local folder has that name, and as a Hub model id "
        raise error(f"model.path {text!r}: {local}{_why(e, 'the model')}") from None


def dataset_file(text: str, what: str, error: type[Exception]) -> Path:
    """The local copy of file ``hf://datasets/org/name[@revision]/file`` (downloaded once into the cache)."""
    from huggingface_hub import hf_hub_download

    m = _DATASET_FILE.match(text)
    if m is None:
        raise error(f"{what} {text!r}: not of the form hf://datasets/org/name[@revision]/path/in/repo.jsonl")
    try:
        return Path(hf_hub_download(m["repo"], m["file"], repo_type="dataset", revision=m["revision"],
                                    local_files_only=_offline(), cache_dir=_cache()))
    except Exception as e:
        raise error(f"{what} {text!r}: {_why(e, 'the file')}") from None
