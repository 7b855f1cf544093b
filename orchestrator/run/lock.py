"""One run process per run directory at a time.

On a local or POSIX shared file system (NFS) the lock is ``flock`` on
``RUN_DIR/.lock``: the kernel releases it when the holder exits, however it
dies (SIGKILL included), so a crashed run never blocks its own resume. On
other ``pyarrow.fs`` stores (object stores have no locks) it is a lease: the
holder rewrites ``.lock`` with a heartbeat at every state commit, and a lease
whose heartbeat is older than ``LEASE_S`` counts as abandoned. The lease is
best effort: two processes starting within the same instant can both win it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from typing import Any, TextIO

from workers.storage import Storage

LOCK_FILE = ".lock"
LEASE_S = 300.0


class RunLockedError(RuntimeError):
    """Another process holds the run directory; the message names it."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "heartbeat": time.time()}


class RunLock:
    """The lock of one run directory (``acquire`` before touching it, ``release`` at the end)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._file: TextIO | None = None
        self._held = False

    def acquire(self) -> None:
        """Take the lock, or raise RunLockedError naming the process that holds it."""
        if self.storage.local:
            import fcntl

            self.storage.mkdir()
            f = open(self.storage.path(LOCK_FILE), "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise RunLockedError(self._message(holder)) from None
            try:
                f.seek(0)
                f.truncate()
                f.write(json.dumps(_holder()))
                f.flush()
            except OSError as e:  # a full disk: name the file
                with contextlib.suppress(OSError):
                    f.close()  # flushes what did not fit again
                raise OSError(e.errno, f"cannot write {self.storage.path(LOCK_FILE)}: {e.strerror or e}") from e
            self._file = f
        else:
            self.check()
            self.storage.write_text(LOCK_FILE, json.dumps(_holder()))
        self._held = True

    def check(self) -> None:
        """RunLockedError when another process holds the lock; creates and changes nothing."""
        if self._held or not self.storage.is_file(LOCK_FILE):
            return
        if self.storage.local:
            import fcntl

            with open(self.storage.path(LOCK_FILE), encoding="utf-8") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunLockedError(self._message(f.read().strip() or "another process")) from None
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return
        try:
            lease = json.loads(self.storage.read_text(LOCK_FILE))
            fresh = time.time() - float(lease["heartbeat"]) < LEASE_S
        except (ValueError, KeyError, TypeError):
            lease, fresh = {}, False
        if fresh:
            raise RunLockedError(self._message(json.dumps(lease)))

    def _message(self, holder: str) -> str:
        return (f"{self.storage} is in use by another run ({holder}); two runs on one run directory would overwrite "
                "each other's work. Wait for it to finish, or stop it first.")

    def refresh(self) -> None:
        """Renew the lease (stores without locks); nothing to do for flock."""
        if self._held and not self.storage.local:
            self.storage.write_text(LOCK_FILE, json.dumps(_holder()))

    def release(self) -> None:
        if not self._held:
            return
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None
        else:
            self.storage.delete(LOCK_FILE)
        self._held = False
