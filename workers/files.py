"""Directories named by a local path or a pyarrow.fs URI, as the workers need them.

vLLM and PEFT read adapters from local folders: ``local_copy`` returns a
local folder for any location (a download into the cache for remote URIs).
``publish`` writes a locally built folder to its location.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs


def _split(location: str | Path) -> tuple[pafs.FileSystem, str]:
    location = str(location)
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def is_local(location: str) -> bool:
    return isinstance(_split(location)[0], pafs.LocalFileSystem)


def local_path(location: str) -> str:
    """The local path of a local location (plain path or file:// URI); ValueError otherwise."""
    fs, path = _split(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        raise ValueError(f"{location} is not on the local file system")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SELFREWARD_CACHE", Path.home() / ".cache" / "selfreward"))


def local_copy(location: str | Path, digest: str = "") -> str:
    """A local folder with the contents of folder ``location`` (itself when local; else a cached download).

    Remote folders are downloaded once per (location, ``digest``) into ``$SELFREWARD_CACHE/remote/``:
    ``digest``, the committed folder's sha256, makes a folder re-written at the same location (an
    adapter trained again after ``--redo``) a new download, never the stale one.
    """
    fs, path = _split(location)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    target = cache_dir() / "remote" / hashlib.sha256(f"{location}\0{digest}".encode()).hexdigest()[:24]
    if not target.is_dir():
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def read_text(location: str) -> str:
    """The text of file ``location`` (a local path or a URI)."""
    fs, path = _split(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def publish(build: Callable[[Path], None], location: str | Path) -> None:
    """Run ``build(local_folder)`` and make ``location`` hold what it wrote (written in place when local)."""
    fs, path = _split(location)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).mkdir(parents=True, exist_ok=True)
        build(Path(path))
        return
    with tempfile.TemporaryDirectory(prefix="selfreward-publish-") as tmp:
        build(Path(tmp))
        fs.create_dir(path, recursive=True)
        pafs.copy_files(tmp, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
