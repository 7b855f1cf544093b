"""Fault injection for the failure tests; inert unless one of the variables below is set.

``SELFREWARD_KILL_AT=<point>[@n]``: the driver SIGKILLs itself the n-th time
(default: the first) it reaches ``point``:

- ``iter_001/judge``: right after the stage is recorded in state.json;
- ``iter_001/judge:part``: right after a part of the stage is committed;
- ``iter_001/train:step``: right after a training checkpoint is committed.

``SELFREWARD_KILL_ENGINE_AT=<point>[@n]``: at that point the driver SIGKILLs
the process of engine 0 instead (an engine crash in the middle of a stage).

``SELFREWARD_KILL_TRAIN_WORKER_AT=step@<k>``: train worker rank 0 exits
abruptly right after the checkpoint of step k is committed (a worker crash
that Ray Train recovers from). Ray workers see the variable when it was set
before the cluster started.

``SELFREWARD_FAIL_WRITE=<path in the run dir>``: writing that file fails
half-way with "No space left on device" (a full disk).

``SELFREWARD_NAN_AT=step@<k>``: the training loss of step k is NaN (a
numerical blow-up).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT_ENV = "SELFREWARD_KILL_AT"
KILL_ENGINE_AT_ENV = "SELFREWARD_KILL_ENGINE_AT"
KILL_TRAIN_WORKER_AT_ENV = "SELFREWARD_KILL_TRAIN_WORKER_AT"
FAIL_WRITE_ENV = "SELFREWARD_FAIL_WRITE"
NAN_AT_ENV = "SELFREWARD_NAN_AT"
_reached: Counter[tuple[str, str]] = Counter()


def _due(env: str, point_name: str) -> bool:
    spec = os.environ.get(env)
    if not spec:
        return False
    target, _, nth = spec.partition("@")
    if target != point_name:
        return False
    _reached[(env, point_name)] += 1
    return _reached[(env, point_name)] == int(nth or 1)


def point(name: str) -> None:
    """The driver reached ``name``: die here if SELFREWARD_KILL_AT says so."""
    if _due(KILL_AT_ENV, name):
        os.kill(os.getpid(), signal.SIGKILL)


def engine_point(name: str) -> bool:
    """Whether an engine should be killed at ``name`` (SELFREWARD_KILL_ENGINE_AT)."""
    return _due(KILL_ENGINE_AT_ENV, name)


def train_worker_point(step: int) -> None:
    """A train worker committed the checkpoint of ``step``: exit here if SELFREWARD_KILL_TRAIN_WORKER_AT says so."""
    if os.environ.get(KILL_TRAIN_WORKER_AT_ENV) == f"step@{step}":
        os._exit(1)


def write_fails(rel: str) -> bool:
    """Whether writing run-dir file ``rel`` should fail half-way (SELFREWARD_FAIL_WRITE)."""
    return os.environ.get(FAIL_WRITE_ENV) == rel


def nan_at(step: int) -> bool:
    """Whether the loss of optimizer step ``step`` should be NaN (SELFREWARD_NAN_AT)."""
    return os.environ.get(NAN_AT_ENV) == f"step@{step}"
