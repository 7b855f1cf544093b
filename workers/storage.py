"""Files and folders by local path, ``file://`` or any ``pyarrow.fs`` URI (shared storage): the one file layer of the
driver (a run directory) and of the workers (the adapters they read and write).

``Storage`` addresses files by paths relative to its root and goes through
``pyarrow.fs`` for every access, so the loop never assumes a local disk: a
multi-node run points every node at the same URI (an NFS mount via
``file://``, or an object store). Writes are atomic where the file system
allows it: a temporary sibling, fsynced on local disks, then moved into
place (a rename on local and POSIX shared file systems; object stores give
whole-object visibility instead).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers import faults


class StorageError(OSError):
    """A storage location cannot be used; the message names it."""


def _fsync_local(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a directory; a file must be fsynced
            raise
    finally:
        os.close(fd)


class Storage:
    """A directory tree on a pyarrow file system.

    ``location``: a local path (relative ones are made absolute), a
    ``file://`` URI, or any URI ``pyarrow.fs.FileSystem.from_uri`` accepts.
    ``filesystem``: use this file system with ``location`` as its path
    (e.g. pyarrow's in-memory mock file system in tests).
    Raises StorageError for a URI pyarrow cannot open.
    """

    def __init__(self, location: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
        text = str(location)
        self.scheme: str | None = None
        if filesystem is not None:
            self.fs, self.root = filesystem, text.rstrip("/")
        elif "://" in text:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(text)
            except (pa.ArrowException, ValueError) as e:
                raise StorageError(f"cannot open URI {text!r}: {e}") from e
            self.root = self.root.rstrip("/") or "/"
            self.scheme = text.split("://", 1)[0]
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(text)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # --- naming -------------------------------------------------------------------
    def inside(self, rel: str) -> str | None:
        """Why ``rel`` does not name a place inside the root (None when it does).

        A path read from a run directory (state.json's artifacts) is data, not
        a command: it must be relative, without ``..``, and on a local disk it
        must resolve inside the root with every symbolic link followed, so
        nothing outside the run directory is ever read, written or deleted.
        """
        if not isinstance(rel, str):
            return f"not a path ({type(rel).__name__})"
        if rel.startswith("/") or "\\" in rel or "\0" in rel:
            return "not a relative path"
        if rel and any(part in ("", ".", "..") for part in rel.split("/")):
            return "has an empty, '.' or '..' component"
        if self.local and rel:
            root = os.path.realpath(self.root)
            real = os.path.realpath(f"{self.root}/{rel}")
            if os.path.commonpath([root, real]) != root:
                return f"resolves to {real}, outside the run directory {root}"
        return None

    def path(self, rel: str = "") -> str:
        """The file system path of ``rel``; StorageError when ``rel`` leads outside the root (``inside``)."""
        if not rel:
            return self.root
        why = self.inside(rel)
        if why is not None:
            raise StorageError(f"refusing {rel!r} under {self.root}: {why}")
        return f"{self.root}/{rel}"

    def uri(self, rel: str = "") -> str:
        """How another process (a Ray worker, an engine) opens ``rel``: a local path, or a URI."""
        if self.local:
            return self.path(rel)
        if self.scheme is None:
            raise StorageError(f"{self.path(rel)} is on an in-process file system that other processes cannot open")
        return f"{self.scheme}://{self.path(rel)}"

    def __str__(self) -> str:
        return self.uri() if self.local or self.scheme else self.root

    # --- queries ------------------------------------------------------------------
    def _type(self, rel: str) -> pafs.FileType:
        return self.fs.get_file_info(self.path(rel)).type

    def exists(self, rel: str = "") -> bool:
        return self._type(rel) != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self._type(rel) == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        return self._type(rel) == pafs.FileType.Directory

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly inside ``rel``, sorted ([] when it does not exist)."""
        if not self.is_dir(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(i.base_name for i in infos)

    def files(self, rel: str) -> list[str]:
        """Every file under directory ``rel``, as paths relative to it, sorted."""
        base = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)

    # --- reading ------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def digests(self, rel: str) -> dict[str, str]:
        """sha256 of every file under directory ``rel``, by path relative to it."""
        return {name: self.sha256(f"{rel}/{name}") for name in self.files(rel)}

    @staticmethod
    def tree_sha256(digests: dict[str, str]) -> str:
        """A directory's sha256 from its files' (``digests``): relative names and file digests, sorted."""
        h = hashlib.sha256()
        for name in sorted(digests):
            h.update(name.encode() + b"\0")
            h.update(bytes.fromhex(digests[name]))
        return h.hexdigest()

    def sha256(self, rel: str) -> str:
        """sha256 of a file, or of a directory (``tree_sha256`` of its files)."""
        if self.is_dir(rel):
            return self.tree_sha256(self.digests(rel))
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    # --- writing ------------------------------------------------------------------
    def mkdir(self, rel: str = "") -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def _parent(self, rel: str) -> str:
        return rel.rsplit("/", 1)[0] if "/" in rel else ""

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically: temporary sibling, fsync (local disks), move."""
        parent = self._parent(rel)
        self.mkdir(parent)
        name = rel.rsplit("/", 1)[-1]
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(self.path(tmp)) as f:
                if faults.write_fails(rel):
                    f.write(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device (fault injection)", self.path(rel))
                f.write(data)
            if self.local:
                _fsync_local(self.path(tmp))
            self.fs.move(self.path(tmp), self.path(rel))
        except BaseException as e:
            # The committed file (if any) is untouched; do not leave the partial temporary behind.
            self.delete(tmp)
            if isinstance(e, OSError):
                # Name the file being written (a full disk's error from the stream names none).
                raise OSError(e.errno, f"cannot write {self.path(rel)}: {e.strerror or e}") from e
            raise
        if self.local:
            _fsync_local(self.path(parent), directory=True)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Commit a Parquet file atomically."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    def delete(self, rel: str) -> None:
        """Remove a file or a directory tree (nothing when it does not exist)."""
        kind = self._type(rel)
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif kind != pafs.FileType.NotFound:
            self.fs.delete_file(self.path(rel))

    def staging_dir(self, rel: str) -> str:
        """A fresh empty directory beside ``rel`` to build a directory artifact in (relative path).

        Staging directories left by an attempt that died are removed first.
        """
        parent, name = self._parent(rel), rel.rsplit("/", 1)[-1]
        for stale in self.listdir(parent):
            if stale.startswith(f".{name}.tmp-"):
                self.delete(f"{parent}/{stale}" if parent else stale)
        tmp = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp = f"{parent}/{tmp}" if parent else tmp
        self.mkdir(tmp)
        return tmp

    def commit_dir(self, staged: str, rel: str) -> None:
        """Move a fully written staging directory to ``rel``, replacing what an earlier, dead attempt left there."""
        if self.local:
            for name in self.files(staged):
                _fsync_local(self.path(f"{staged}/{name}"))
        self.delete(rel)
        self.fs.move(self.path(staged), self.path(rel))
        if self.local:
            _fsync_local(self.path(self._parent(rel)), directory=True)

    def share_from(self, source: Storage, rel: str) -> str:
        """Put ``source``'s file or directory ``rel`` at ``rel`` here, replacing what is there; returns how.

        "linked": hard links to the same files, nothing copied (both on one
        local file system); "copied" otherwise (another disk, an object store).
        Committed artifacts are never written in place (every write is a new
        file moved over the old), so a linked file stays what it was in both
        run dirs. Built beside ``rel``, then moved into place.
        """
        names = source.files(rel) if source.is_dir(rel) else None
        staged = self.staging_dir(rel)
        how = "linked"
        for name in names if names is not None else [""]:
            src, dst = (f"{rel}/{name}", f"{staged}/{name}") if name else (rel, f"{staged}/file")
            self.mkdir(self._parent(dst))
            if self.local and source.local:
                try:
                    os.link(source.path(src), self.path(dst))
                    continue
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
            pafs.copy_files(source.path(src), self.path(dst), source_filesystem=source.fs, destination_filesystem=self.fs)
            how = "copied"
        if names is not None:
            self.commit_dir(staged, rel)
        else:
            self.delete(rel)
            self.fs.move(self.path(f"{staged}/file"), self.path(rel))
            self.delete(staged)
            if self.local:
                _fsync_local(self.path(self._parent(rel)), directory=True)
        return how

    def upload_dir(self, local: str | Path, rel: str) -> None:
        """Copy a local directory tree into ``rel``."""
        self.mkdir(rel)
        pafs.copy_files(str(local), self.path(rel), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def download_dir(self, rel: str, local: str | Path) -> None:
        """Copy directory ``rel`` into a local directory."""
        Path(local).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path(rel), str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())


# --- folders as the workers need them -----------------------------------------------------------------------------
# vLLM and PEFT read adapters from local folders; a trainer builds one locally and publishes it to its location.


def cache_dir() -> Path:
    return Path(os.environ.get("SELFREWARD_CACHE", Path.home() / ".cache" / "selfreward"))


def local_copy(location: str | Path, digest: str = "") -> str:
    """A local folder with the contents of folder ``location`` (itself when local; else a cached download).

    Remote folders are downloaded once per (location, ``digest``) into ``$SELFREWARD_CACHE/remote/``:
    ``digest``, the committed folder's sha256, makes a folder re-written at the same location (an
    adapter trained again after ``--redo``) a new download, never the stale one.
    """
    source = Storage(location)
    if source.local:
        return source.root
    target = cache_dir() / "remote" / hashlib.sha256(f"{location}\0{digest}".encode()).hexdigest()[:24]
    if not target.is_dir():
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        source.download_dir("", tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def read_text(location: str) -> str:
    """The text of file ``location`` (a local path or a URI)."""
    folder, _, name = str(location).rstrip("/").rpartition("/")
    return Storage(folder or ".").read_text(name)


def publish(build: Callable[[Path], None], location: str | Path) -> None:
    """Run ``build(local_folder)`` and make ``location`` hold what it wrote (written in place when local)."""
    target = Storage(location)
    if target.local:
        Path(target.root).mkdir(parents=True, exist_ok=True)
        build(Path(target.root))
        return
    with tempfile.TemporaryDirectory(prefix="selfreward-publish-") as tmp:
        build(Path(tmp))
        target.upload_dir(tmp, "")
