import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process: the golden run (tests/e2e/golden.py) keeps one of the machine's cores busy
# while the other tests run, and OpenMP threads spinning on a shared core slow both several-fold. Set before
# torch is imported; the processes the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Every Ray the tests start (and the processes it starts) stays on loopback: see orchestrator/cli.py. Set
# before any test module imports ray, which reads it at import.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from tests.refusals import case  # noqa: E402,F401 (the bad-input tests' fixture, imported once the environment is set)


@pytest.fixture(scope="module")
def local_ray():
    """A private 2-CPU Ray on loopback for the tests of one module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path():
    """The bundled SmolLM2-135M-Instruct as a local HF folder (converted once into the cache)."""
    from orchestrator.models import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    """The bundled model's tokenizer (with its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="session")
def tiny_random_model_path(tmp_path_factory, tiny_model_path):
    """A randomly initialised 2-layer Llama with the bundled tokenizer (and its chat template): for mechanics
    tests, where the numbers do not matter but the code paths do."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_path, trust_remote_code=False)
    # Heads of 64 dimensions: vLLM's CPU attention kernels support no smaller head.
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-random-model")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# --- the golden run (tests/e2e/golden.py) ------------------------------------------------------------------------------
def _reads_golden(item) -> bool:
    return "golden" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items):
    """The tests that read the golden run go last: everything else runs while it runs."""
    items[:] = [i for i in items if not _reads_golden(i)] + [i for i in items if _reads_golden(i)]


def pytest_collection_finish(session):
    """Start the golden run as soon as the tests are known, when any of them reads it."""
    if session.config.option.collectonly or not any(_reads_golden(i) for i in session.items):
        return
    import tempfile
    from pathlib import Path

    from tests.e2e.golden import Golden

    session.config._golden = Golden(Path(tempfile.mkdtemp(prefix="selfreward-golden-")))
    session.config._golden.start()


def pytest_terminal_summary(terminalreporter):
    golden = getattr(terminalreporter.config, "_golden", None)
    if golden is not None:
        phases = ", ".join(f"{k} at {v:.0f}s" for k, v in golden.timings.items()) or "no phase finished"
        terminalreporter.write_line(f"golden run: {phases}")


def pytest_sessionfinish(session, exitstatus):
    golden = getattr(session.config, "_golden", None)
    if golden is not None:
        import shutil

        golden.stop()
        shutil.rmtree(golden.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def golden(request):
    """The finished golden run (tests/e2e/golden.py). Tests must not change its run directory: one that resumes or
    damages a run works on a copy."""
    return request.config._golden.result()
