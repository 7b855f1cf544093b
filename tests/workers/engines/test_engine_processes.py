"""No engine process outlives its actor: vLLM's engine-core child is killed with a SIGKILLed engine actor.

The CPU build runs vLLM's engine core in a child process when asked to (``engine_core_process``, the
multiprocessing path GPU engines would otherwise take); the watcher of ``workers.engines.reaper`` must kill it, and
itself exit, once the actor is gone.
"""

import subprocess
import sys
import time
from dataclasses import replace

import psutil
import pytest

from tests import ROOT, specs
from workers.engines.pool import EnginePool, PoolResources


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def test_the_watcher_kills_what_a_killed_parent_left_behind():
    code = ("import subprocess, sys, time; from workers.engines import reaper; reaper.watch(); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(c.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    orphan = int(parent.stdout.readline())
    time.sleep(1.5)  # the watcher looks every half second
    assert not _dead(orphan)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while not _dead(orphan) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _dead(orphan)


@pytest.mark.integration
def test_no_engine_process_outlives_its_killed_actor(local_ray, tiny_random_model_path):
    spec = specs.engine(tiny_random_model_path, "model.max_model_len=1024", "resources.kv_cache_gib=1")
    pool = EnginePool(replace(spec, engine_core_process=True), PoolResources(1, 1, 0, max_restarts=0))
    actor = psutil.Process(pool.infos[0].pid)
    children = actor.children(recursive=True)
    commands = [" ".join(c.cmdline()) for c in children]
    assert any("workers.engines.reaper" in c or "psutil" in c for c in commands)  # the watcher
    assert len(children) >= 2, commands  # ... and vLLM's engine core
    pool.kill_engine(0)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    pool.shutdown()
