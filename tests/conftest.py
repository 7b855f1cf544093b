import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray the tests start (and the processes it starts) stays on loopback: see orchestrator/cli.py. Set
# before any test module imports ray, which reads it at import.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="session")
def tiny_model_path():
    """The bundled SmolLM2-135M-Instruct as a local HF folder (converted once into the cache)."""
    from orchestrator.models import ensure_default_model

    return ensure_default_model()
