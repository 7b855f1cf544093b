"""Nothing an engine starts outlives it: a watcher process kills what its parent leaves behind.

vLLM starts processes of its own (an engine-core process, tensor-parallel
workers). When an engine actor dies without closing its engine (SIGKILL, an
out-of-memory kill), such a child keeps running and keeps its GPU memory, so
the restarted engine fails vLLM's free-memory check. The watcher notes the
parent's descendants every half second and kills them once the parent is
gone. It runs in a session of its own, so whatever kills the actor's process
group spares it.
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCH = r"""
import os, sys, time
import psutil

parent, me, seen = int(sys.argv[1]), os.getpid(), {}
try:
    p = psutil.Process(parent)
    while p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
        for c in p.children(recursive=True):
            if c.pid != me:
                seen.setdefault(c.pid, c)
        time.sleep(0.5)
except psutil.NoSuchProcess:
    pass
for c in seen.values():
    try:
        c.kill()  # psutil refuses a pid that now names another process
    except psutil.Error:
        pass
"""


def watch(pid: int | None = None) -> subprocess.Popen:
    """Start the watcher of ``pid`` (this process by default); it exits once it has cleaned up after it."""
    return subprocess.Popen([sys.executable, "-c", _WATCH, str(pid or os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
