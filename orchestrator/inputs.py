"""What every input check shares: the limits on what an input may cost, values shown short in messages, text that
cannot be written, and paths the operating system refuses (too long, unreadable, not a folder), each found before
any work and named.

The limits (docs/RELIABILITY.md lists them) bound the time and memory a check can take before a run starts; none
is near what a real run uses.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

INT_MAX = 2**31 - 1  # the largest count torch, numpy and vLLM all take
MAX_CONFIG_BYTES = 1 << 20  # a config file (real ones are a few KB)
MAX_OVERRIDE_CHARS = 1 << 16  # one dotted override on the command line
MAX_MODEL_CONFIG_BYTES = 1 << 20  # a model's config.json (real ones are a few KB)
MAX_PROMPT_FILE_BYTES = 1 << 30  # a prompt file (JSONL, CSV or Parquet)
MAX_PROMPTS = 1_000_000  # prompts in one file
MAX_PROMPT_CHARS = 1_000_000  # characters in one prompt (or answer, or id)


def shown(value: object, limit: int = 100) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long it was (a message never echoes a whole file)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate, from a JSON ``\\ud800`` escape or from bytes that
    were not UTF-8 in a file name or argument), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return (f"not valid Unicode text: a lone surrogate {text[e.start]!r} at character {e.start + 1} "
                "(it cannot be written to any file)")


def os_problem(e: OSError) -> str:
    """An operating-system error as a reason: "File name too long", "Input/output error", ..."""
    return e.strerror or str(e)


PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds orchestrator/, workers/ and jobs/ (checkout or wheel)


def located(path: str | Path) -> Path:
    """An input path as the user gave it, except a relative ``jobs/...`` path that does not exist from the working
    directory: that names a file shipped with the package (the configs and prompt sets under ``jobs/``), found
    beside the installed package, so ``selfreward run jobs/configs/srlm.yaml`` works from any directory."""
    p = Path(path)
    if p.is_absolute() or not p.parts or p.parts[0] != "jobs" or os.path.lexists(p):
        return p
    shipped = PACKAGE_ROOT / p
    return shipped if shipped.exists() else p


def check_input_path(path: str | Path, what: str, error: type[Exception], allow_missing: bool = False) -> os.stat_result | None:
    """Stat an input path, refusing what the OS refuses (a name too long, a loop of links, a component that is a
    file, no permission): ``error`` naming ``what`` and the path. None when it does not exist and ``allow_missing``."""
    problem = unicode_problem(str(path))
    if problem:
        raise error(f"{what} {shown(str(path))}: {problem}")
    try:
        return os.stat(path)
    except FileNotFoundError:
        if allow_missing:
            return None
        raise error(f"{what} {shown(str(path))}: not found") from None
    except OSError as e:
        raise error(f"{what} {shown(str(path))}: {os_problem(e)}") from None


def writable_folder(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (its nearest existing ancestor, when it is to be created), or None."""
    existing = folder
    try:
        while not existing.exists() and not existing.is_symlink():
            existing = existing.parent
        if existing.is_symlink() and not existing.exists():
            return f"{existing} is a symbolic link to {os.readlink(existing)}, which does not exist"
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
    except OSError as e:
        return f"{shown(str(existing))}: {os_problem(e)}"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_output_file(path: str | Path, what: str, error: type[Exception]) -> None:
    """A file to be written at ``path``: not a folder or anything but a regular file, in a folder files can be created
    in; ``error`` naming ``what`` and the path otherwise."""
    p = Path(path)
    st = check_input_path(p, what, error, allow_missing=True)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p}: {'a folder' if stat.S_ISDIR(st.st_mode) else 'not a regular file'}; "
                    "give the path of a file to write")
    reason = writable_folder(p.absolute().parent)
    if reason:
        raise error(f"{what} {p}: cannot be written: {reason}")
