"""Engine and training specs for tests, derived as a run derives them (``orchestrator.specs``).

From the shipped defaults plus dotted config overrides, so a test serves and trains what a run with that
config would: the same LoRA target modules, adapter serving and checkpoint interval.
"""

from __future__ import annotations

from orchestrator.config import load_config
from orchestrator.specs import engine_spec, train_spec
from workers.training.trainer import TrainSpec
from workers.types import AdapterRef, EngineSpec


def engine(model_path: object, *overrides: str) -> EngineSpec:
    """The engine spec of a run with these overrides, serving ``model_path``, on one thread (tests/conftest.py) unless
    they say otherwise."""
    return engine_spec(load_config(None, [ONE_THREAD, *overrides]), str(model_path))


# The tests run beside the golden run, one compute thread per process (tests/conftest.py).
ONE_THREAD = "resources.engine_threads=1"


def training(model_path: object, *overrides: str, seed: int = 0, init_adapter: object = None, digest: str = "",
             pairs: object = "", out: object = "") -> TrainSpec:
    """The train spec of a run with these overrides, continuing from ``init_adapter`` (a folder; None: the base)."""
    policy = None if init_adapter is None else AdapterRef("policy", str(init_adapter), digest)
    return train_spec(load_config(None, overrides), str(model_path), seed, policy, str(pairs), str(out))
