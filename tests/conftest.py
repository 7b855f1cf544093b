import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path():
    """The bundled SmolLM2-135M-Instruct as a local HF folder (converted once into the cache)."""
    from orchestrator.models import ensure_default_model

    return ensure_default_model()
