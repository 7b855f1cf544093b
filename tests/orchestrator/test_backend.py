"""The Ray backend's operations that no run of the test suite reaches otherwise: MC-dropout passes as a Ray task
give what the same function gives in this process, with the base model or an adapter as the reference."""

import os

import pytest

from orchestrator.backend import RayBackend
from orchestrator.config import load_config
from tests import specs
from tests.workers.pairs_table import PAIRS, trained_adapter
from workers.training.mc_dropout import mc_dropout_logprobs
from workers.types import AdapterRef, ScoreRequest

pytestmark = pytest.mark.integration

OVERRIDES = ("selection.mc_dropout.passes=3", "selection.mc_dropout.p=0.1")
REQUESTS = [ScoreRequest(p, c, "stop") for p, c, _ in PAIRS]


def test_mc_dropout_as_a_ray_task_equals_the_pass_in_process(local_ray, tiny_random_model_path, tmp_path):
    cfg = load_config(None, list(OVERRIDES))
    spec = specs.training(tiny_random_model_path, *OVERRIDES, seed=5)
    # A reference adapter, trained one step on PAIRS.
    adapter = tmp_path / "reference"
    trained_adapter(tiny_random_model_path, adapter, 2e-2)

    backend = RayBackend()
    passes, base, (process,) = backend.mc_dropout(cfg, spec, REQUESTS, None, None)
    assert process.role == "MC-dropout" and process.node_id and process.pid != os.getpid()  # the task's process
    want_passes, want_base = mc_dropout_logprobs(spec, REQUESTS, 3, 0.1)
    assert len(passes) == len(REQUESTS) and all(len(row) == 3 for row in passes)
    assert [v for row in passes for v in row] == pytest.approx([v for row in want_passes for v in row], abs=1e-5)
    assert base == pytest.approx(want_base, abs=1e-5)

    ref = AdapterRef("reference", str(adapter))
    _, reference, _ = backend.mc_dropout(cfg, spec, REQUESTS, ref, None)
    _, want_reference = mc_dropout_logprobs(spec, REQUESTS, 3, 0.1, reference=ref)
    assert reference == pytest.approx(want_reference, abs=1e-5)
    assert reference != pytest.approx(base, abs=1e-4)  # the adapter was loaded as the reference


def test_mc_dropout_on_borrowed_gpus_runs_pinned_to_the_engines_node_in_a_process_that_exits(local_ray):
    """On colocated GPU engines the MC-dropout task runs on the first engine's node, and its worker process exits
    after it (max_calls=1), so the hand-over can wait for its GPU memory to be given back. A light function stands
    in for the passes (they need the GPU the task borrows)."""
    import ray

    from orchestrator.backend import mc_dropout_remote
    from workers.handover import this_process, wait_exited

    cfg = load_config(None, list(OVERRIDES))
    node = ray.get_runtime_context().get_node_id()
    task, device, gpu = mc_dropout_remote(this_process, cfg, {node: [3, 5]})
    assert (device, gpu) == ("cuda", 3)
    process = ray.get(task.remote("MC-dropout (stand-in)", gpu))
    assert process.node_id == node and process.pid != os.getpid()
    wait_exited([process], timeout_s=60)  # the worker exited after its one task (HandoverError if not)
