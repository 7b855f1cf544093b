"""One driver session against the stand-in backend, run in a process of its own by tests/orchestrator/test_driver.py.

Imported once by the fork server those processes are forked from, with what a session would otherwise import
lazily (transformers' auto classes for the model and adapter checks, Ray for the engines' host facts, pandas), so each session starts in milliseconds.
"""

from __future__ import annotations

import os

import pandas  # noqa: F401
import ray  # noqa: F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
from transformers.models.llama import modeling_llama  # noqa: F401

from orchestrator import loop
from orchestrator.config import load_config
from tests.e2e.helpers import CONFIG
from tests.orchestrator.standins import StandInBackend
from workers import faults


def session(overrides: list[str], run_dir: str, kill_at: str | None, redo: str | None,
            branch_from: str | None = None) -> None:
    """The run dir's next session; ``kill_at``: where the driver SIGKILLs itself (``workers.faults``)."""
    if kill_at:
        os.environ[faults.KILL_AT_ENV] = kill_at
    loop.run(load_config(CONFIG, overrides), run_dir, redo=redo, backend=StandInBackend(), branch_from=branch_from)
